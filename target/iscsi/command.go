// SCSI commands: admission of a SCSI Command PDU, its Data-Out and R2Ts
// (with transfer), the worker pool that executes it, and its response.

package iscsi

import (
	"encoding/binary"
	"sync/atomic"
	"time"

	"cairn/target"
)

// Task states. A task is collecting while its Data-Out arrives (owned by
// the reader), running while a worker executes it, responding once the
// worker claimed the right to answer, and aborted once a task management
// function (or the end of the session) claimed it: an aborted task is never
// answered.
const (
	taskCollecting int32 = iota
	taskRunning
	taskResponding
	taskAborted
)

// task is one SCSI command of a session.
type task struct {
	itt       uint32
	immediate bool
	lunField  uint64
	cdb       [16]byte
	write     bool
	edtl      int
	reserved  int      // bytes counted against InFlightBytesMax
	buf       *[]byte  // Data-Out buffer
	data      []byte   // (*buf)[:edtl]
	xfer      transfer // Data-Out and R2Ts, reader-owned
	state     atomic.Int32
	ctx       taskCtx
	finished  event // fired when the worker is done with the task
	forgotten bool  // guarded by session.mu
	// budget is what the task holds of Options.Budget, returned once with
	// its data buffer (releaseBudget).
	budget atomic.Int64
}

// releaseBudget returns what t holds of the shared budget; idempotent.
func (s *session) releaseBudget(t *task) {
	if n := t.budget.Swap(0); n > 0 {
		s.srv.opts.Budget.Release(n)
	}
}

// forgetLocked removes t from the task table and releases its window slot
// and budget; idempotent.
func (s *session) forgetLocked(t *task) {
	if t.forgotten {
		return
	}
	t.forgotten = true
	if s.mu.tasks[t.itt] == t {
		delete(s.mu.tasks, t.itt)
		s.tasks.Add(-1)
	}
	s.mu.bytes -= t.reserved
	if t.immediate {
		s.mu.immediate--
	} else {
		s.finishCountedLocked()
	}
}

func (s *session) forget(t *task) {
	s.mu.Lock()
	s.forgetLocked(t)
	s.mu.Unlock()
}

// respondStatus sends a SCSI Response without data.
func (s *session) respondStatus(itt uint32, status byte, sn sense, spdtl, edtl int) {
	var p outPDU
	p.hdr.setOpcode(opSCSIResp)
	p.hdr[1] = flagFinal | residualFlags(spdtl, edtl)
	p.hdr[3] = status
	p.hdr.setITT(itt)
	p.hdr.setU32(44, residual(spdtl, edtl))
	if status == statusCheckCondition {
		d := make([]byte, 2, 2+fixedSenseBytes)
		binary.BigEndian.PutUint16(d, fixedSenseBytes)
		p.data = sn.appendFixed(d)
	}
	p.advance = true
	s.send(p)
}

// residualFlags returns the O/U bits for a command that wanted spdtl bytes
// when the initiator expected edtl.
func residualFlags(spdtl, edtl int) byte {
	switch {
	case spdtl > edtl:
		return 0x04
	case spdtl < edtl:
		return 0x02
	}
	return 0
}

func residual(spdtl, edtl int) uint32 {
	if spdtl > edtl {
		return uint32(spdtl - edtl)
	}
	return uint32(edtl - spdtl)
}

// scsiCommand admits a SCSI Command PDU.
func (s *session) scsiCommand(h *header, ahs []byte) error {
	n := h.dataBytes()
	if s.discovery {
		s.reject(h, rejectProtocolError)
		return s.discard(n)
	}
	immediate := h.immediate()
	if !immediate && !s.acceptCmdSN(h.cmdSN(), true) {
		return s.discard(n)
	}
	t := &task{itt: h.itt(), immediate: immediate, lunField: h.lun(), edtl: int(h.u32(20))}
	copy(t.cdb[:], h[32:48])
	flags := h[1]
	t.write = flags&0x20 != 0
	final := flags&0x80 != 0
	if sn, bad := s.commandFault(t, flags, n, len(ahs)); bad {
		return s.failCommand(t, n, statusCheckCondition, sn)
	}
	reserve := min(t.edtl, s.lun.xferMax*2+4096)
	if reserve > 0 {
		ok, err := s.acquireBudget(reserve)
		if err != nil {
			return err
		}
		if !ok {
			return s.failCommand(t, n, statusTaskSetFull, sense{})
		}
		t.budget.Store(int64(reserve))
	}
	if status, sn, ok := s.addTask(t, reserve); !ok {
		s.releaseBudget(t)
		return s.failCommand(t, n, status, sn)
	}
	t.ctx.parent = s.ctx
	if t.write && t.edtl > 0 {
		t.buf = target.GetBuffer(t.edtl)
		t.data = (*t.buf)[:t.edtl]
		if err := s.readData(t.data[:n]); err != nil {
			return err
		}
		t.xfer.start(t.edtl, n, final, s.p.firstBurst)
	} else if err := s.discard(n); err != nil {
		return err
	}
	if !t.write || t.xfer.complete() {
		s.dispatch(t)
		return nil
	}
	s.lastData = time.Now()
	s.solicit(t)
	return nil
}

// commandFault checks a SCSI Command PDU with flags, n bytes of immediate
// data and ahs bytes of AHS against what the session negotiated; bad
// means it fails at once with CHECK CONDITION and sense sn.
func (s *session) commandFault(t *task, flags byte, n, ahs int) (sn sense, bad bool) {
	final := flags&0x80 != 0
	switch {
	case ahs > 0: // extended CDB or bidirectional: not supported
		return senseInvalidOpcode, true
	case flags&0x40 != 0 && t.write:
		return senseInvalidFieldCDB, true
	case t.write && t.edtl > s.lun.xferMax*2+4096:
		return senseInvalidFieldCDB, true
	case n > 0 && (!t.write || !s.p.immediateData || n > t.edtl || n > s.p.firstBurst):
		return senseInvalidFieldIU, true
	case t.write && !final && s.p.initialR2T:
		return senseInvalidFieldIU, true
	}
	return sense{}, false
}

// failCommand answers a command that was not added to the task table at
// once, frees its window slot and skips its n bytes of data.
func (s *session) failCommand(t *task, n int, status byte, sn sense) error {
	if !t.immediate {
		s.finishCounted()
	}
	s.respondStatus(t.itt, status, sn, 0, 0)
	return s.discard(n)
}

// addTask enters t, collecting, in the task table with reserve bytes of
// the session's data bound; if it cannot (its tag is in use, or the
// session is full) it returns the status to answer with.
func (s *session) addTask(t *task, reserve int) (byte, sense, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.mu.tasks[t.itt] != nil:
		return statusCheckCondition, senseOverlapped, false
	case t.immediate && s.mu.immediate >= immediateMax,
		s.mu.bytes+reserve > s.srv.opts.InFlightBytesMax && s.mu.bytes > 0:
		return statusTaskSetFull, sense{}, false
	}
	s.collecting.Add(1)
	t.reserved = reserve
	s.mu.bytes += reserve
	if t.immediate {
		s.mu.immediate++
	}
	s.mu.tasks[t.itt] = t
	s.tasks.Add(1)
	return 0, sense{}, true
}

// acquireBudget takes n bytes of the shared budget for a new command. It
// waits (the reader stops reading: TCP backpressure) unless one of the
// session's WRITEs is still receiving data, whose Data-Out only this reader
// can read: then it does not wait, and false means TASK SET FULL. An error
// means the connection is being dropped.
func (s *session) acquireBudget(n int) (bool, error) {
	b := s.srv.opts.Budget
	if b.TryAcquire(int64(n)) {
		return true, nil
	}
	if s.collecting.Load() > 0 {
		return false, nil
	}
	if !b.Acquire(s.quit, int64(n)) {
		return false, errAbandoned
	}
	// The wait does not count against the rest of the PDU.
	s.nc.SetReadDeadline(time.Now().Add(s.srv.opts.RequestTimeout))
	return true, nil
}

// solicit sends R2Ts for t's missing data, up to MaxOutstandingR2T.
func (s *session) solicit(t *task) {
	for t.xfer.wantsR2T(s.p.maxOutstandingR2T) {
		s.mu.Lock()
		ttt := s.newTTTLocked()
		s.mu.Unlock()
		r := t.xfer.solicit(ttt, s.p.maxBurst)
		var p outPDU
		p.hdr.setOpcode(opR2T)
		p.hdr[1] = flagFinal
		p.hdr.setLUN(t.lunField)
		p.hdr.setITT(t.itt)
		p.hdr.setU32(20, r.ttt)
		p.hdr.setU32(36, r.r2tSN)
		p.hdr.setU32(40, uint32(r.off))
		p.hdr.setU32(44, uint32(r.n))
		s.send(p)
	}
}

// dataOut places a Data-Out PDU's data in its task's buffer.
func (s *session) dataOut(h *header) error {
	n := h.dataBytes()
	s.mu.Lock()
	t := s.mu.tasks[h.itt()]
	s.mu.Unlock()
	if t == nil || t.state.Load() != taskCollecting || !t.write {
		return s.discard(n) // answered or aborted already (ERL 0)
	}
	ttt, off, dsn := h.u32(20), int(h.u32(40)), h.u32(36)
	v := t.xfer.data(ttt, dsn, off, n, h.final())
	if v == dataRefused {
		s.log.Debug("iscsi: bad Data-Out", "itt", t.itt, "ttt", ttt, "datasn", dsn, "offset", off, "bytes", n)
		s.failCollecting(t, senseDataPhaseError)
		return s.discard(n)
	}
	if err := s.readData(t.data[off : off+n]); err != nil {
		return err
	}
	s.lastData = time.Now()
	switch {
	case v == dataShort:
		s.failCollecting(t, senseDataPhaseError)
	case t.xfer.complete():
		s.dispatch(t)
	default:
		s.solicit(t)
	}
	return nil
}

// failCollecting answers a task still receiving data with CHECK CONDITION.
func (s *session) failCollecting(t *task, sn sense) {
	if !t.state.CompareAndSwap(taskCollecting, taskResponding) {
		return
	}
	s.collecting.Add(-1)
	s.forget(t)
	if t.buf != nil {
		target.PutBuffer(t.buf)
		t.buf, t.data = nil, nil
	}
	s.releaseBudget(t)
	t.ctx.cancel()
	t.finished.fire()
	s.respondStatus(t.itt, statusCheckCondition, sn, 0, 0)
}

// dispatch hands t to an idle worker, or starts one. Only the reader
// calls it.
func (s *session) dispatch(t *task) {
	if !t.state.CompareAndSwap(taskCollecting, taskRunning) {
		return
	}
	s.collecting.Add(-1)
	s.tasksWG.Add(1)
	select {
	case s.work <- t:
		return
	default:
	}
	if s.workers < s.window+immediateMax {
		s.workers++
		s.workersWG.Add(1)
		go s.worker(t)
		return
	}
	// Unreachable while the window holds (every worker has a task), but
	// wait rather than exceed the bound.
	select {
	case s.work <- t:
	case <-s.stopping:
		s.tasksWG.Done()
	}
}

// worker runs tasks until the session stops.
func (s *session) worker(t *task) {
	defer s.workersWG.Done()
	for {
		s.run(t)
		select {
		case t = <-s.work:
		case <-s.stopping:
			return
		}
	}
}

// run is a task's worker.
func (s *session) run(t *task) {
	defer s.tasksWG.Done()
	defer t.finished.fire()
	defer t.ctx.cancel()
	var r scsiResult
	c := scsiCmd{cdb: t.cdb[:cdbLen(t.cdb[0])], lun: t.lunField, data: t.data, edtl: t.edtl}
	s.lun.exec(&t.ctx, s.nx, &c, &r)
	if t.buf != nil {
		target.PutBuffer(t.buf)
		t.buf, t.data = nil, nil
	}
	if !t.state.CompareAndSwap(taskRunning, taskResponding) {
		r.release() // aborted: no response
		s.releaseBudget(t)
		return
	}
	s.forget(t)
	s.respond(t, &r)
}

// respond sends a command's result: Data-In with the status collapsed into
// the last PDU when it is GOOD, else a SCSI Response.
func (s *session) respond(t *task, r *scsiResult) {
	sent := min(len(r.dataIn), t.edtl)
	if r.status != statusGood || sent == 0 {
		r.release()
		s.releaseBudget(t)
		s.respondStatus(t.itt, r.status, r.sense, r.spdtl, t.edtl)
		return
	}
	seg := s.p.sendDataSegmentMax
	var dataSN uint32
	for off := 0; off < sent; {
		burstEnd := (off/s.p.maxBurst + 1) * s.p.maxBurst
		n := min(seg, sent-off, burstEnd-off)
		var p outPDU
		p.hdr.setOpcode(opDataIn)
		p.hdr.setLUN(t.lunField)
		p.hdr.setITT(t.itt)
		p.hdr.setU32(20, reservedTag)
		p.hdr.setU32(36, dataSN)
		p.hdr.setU32(40, uint32(off))
		p.data = r.dataIn[off : off+n]
		last := off+n == sent
		if last || off+n == burstEnd {
			p.hdr[1] |= flagFinal
		}
		if last {
			p.hdr[1] |= 0x01 | residualFlags(r.spdtl, t.edtl) // S
			p.hdr[3] = statusGood
			p.hdr.setU32(44, residual(r.spdtl, t.edtl))
			p.advance = true
			p.release = r.buf
			p.budget = t.budget.Swap(0) // the writer returns it with the buffer
		}
		if !s.send(p) {
			r.release()
			if p.budget > 0 {
				s.srv.opts.Budget.Release(p.budget)
			}
			s.releaseBudget(t)
			return
		}
		off += n
		dataSN++
	}
}
