package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"cairn/target"
	"cairn/target/reservation"
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

// outPDU is one PDU for the writer. The writer fills in StatSN, ExpCmdSN
// and MaxCmdSN when it sends it.
type outPDU struct {
	hdr        header
	data       []byte
	advance    bool    // consumes a StatSN (a status-bearing PDU)
	release    *[]byte // returned to the pool once written
	budget     int64   // returned to Options.Budget once written (with release)
	closeAfter bool    // logout response: signal logoutFlushed once written
}

// Errors that end a connection.
var (
	errLogout      = errors.New("iscsi: logged out")
	errNopTimeout  = errors.New("iscsi: NOP-In ping not answered")
	errProtocol    = errors.New("iscsi: protocol error")
	errLoginFailed = errors.New("iscsi: login failed")
	// errLoginRedirected: the login was sent to another portal.
	errLoginRedirected = errors.New("iscsi: login redirected")
	// errRequestTimeout: a PDU or a WRITE's Data-Out did not arrive within
	// RequestTimeout.
	errRequestTimeout = errors.New("iscsi: request not finished in time")
	// errAbandoned: the reader gave up waiting for the shared budget
	// because the connection is being dropped.
	errAbandoned = errors.New("iscsi: connection dropped")
)

// Reject reasons (RFC 7143 §11.17.1).
const (
	rejectDataDigest    = 0x02
	rejectProtocolError = 0x04
	rejectNotSupported  = 0x05
	rejectInvalidField  = 0x09
)

// session is one connection and, as MaxConnections is 1, its session. Its
// goroutine (serve) logs in and then reads PDUs; a writer goroutine sends
// PDUs; a pool of worker goroutines, started as commands need them (at
// most window+immediateMax) and kept until the session stops, executes
// the commands; task management and logout waits run on helper
// goroutines. serve owns and waits for them all.
type session struct {
	srv *Server
	nc  net.Conn
	br  *bufio.Reader
	bw  *bufio.Writer // the writer goroutine's, after login
	log *slog.Logger

	// Set during login, constant afterwards.
	p                         params
	d                         digests
	lun                       *lun // nil for discovery sessions
	targetName, initiatorName string
	isid                      [6]byte
	nexus                     reservation.Nexus // of initiatorName and isid
	nx                        *nexus            // what the SCSI layer sees of it; nil for discovery
	tsih                      uint16
	discovery                 bool
	window                    int

	ip      string // initiator IP, as counted by the server's ConnLimit
	refused string // why the connection is past the server's limits; "" if admitted

	// quit is closed (once, by abandon) to wake a reader waiting for the
	// shared budget: the connection is being dropped.
	quit          chan struct{}
	quitOnce      sync.Once
	killed        atomic.Bool  // dropped by the server (Close, Disconnect, reinstatement)
	replyTimedOut atomic.Bool  // the writer hit ReplyTimeout
	collecting    atomic.Int32 // tasks in taskCollecting state
	writeDeadline time.Time    // writer-owned

	ctx      context.Context // parent of every task's context
	cancel   context.CancelFunc
	out      chan outPDU
	stopping chan struct{} // closed when teardown starts
	finished chan struct{} // closed when teardown is complete
	flushed  chan struct{} // closed when the logout response is written

	tasksWG, auxWG, writerWG, workersWG sync.WaitGroup

	// work hands a dispatched task to an idle worker (unbuffered: a send
	// succeeds only when one is waiting). Workers live until the session
	// stops, so a command runs on a goroutine whose stack has already grown
	// to what the device needs: a goroutine per command spent a third of
	// the daemon's CPU copying stacks under an iSCSI load. There are never
	// more workers than tasks ever in flight at once, which the command
	// window and immediateMax bound.
	work    chan *task
	workers int // reader-owned

	// Per-PDU scratch kept in the session so that it does not escape to
	// the heap per PDU: the reader's header and pad, the writer's PDU and
	// digest.
	rh   header
	rpad [4 + digestBytes]byte
	wp   outPDU
	wd   [digestBytes]byte

	statSN uint32 // writer-owned once in full feature phase
	// cmdWindow packs ExpCmdSN<<32 | MaxCmdSN so that the writer reads a
	// consistent pair.
	cmdWindow atomic.Uint64

	mu struct {
		sync.Mutex
		tasks     map[uint32]*task
		window    cmdWindow // CmdSN numbering and the counted commands in flight
		immediate int       // immediate commands in flight
		bytes     int       // data buffer bytes reserved
		nextTTT   uint32
	}

	// Reader-owned state.
	hdrAHS          [ahsBytesMax]byte
	pingOutstanding bool
	pingTTT         uint32
	pingSent        time.Time
	lastData        time.Time // the last Data-Out, or the WRITE that started collecting
	text            struct {
		request []byte // accumulated Text Request data (C bit)
		reply   []byte // rest of a long Text Response
		ttt     uint32
	}
	loggedOut bool
}

func newSession(srv *Server, nc net.Conn) *session {
	s := &session{
		srv:      srv,
		nc:       nc,
		br:       bufio.NewReaderSize(nc, 64<<10),
		log:      srv.log.With("remote", nc.RemoteAddr().String()),
		stopping: make(chan struct{}),
		finished: make(chan struct{}),
		flushed:  make(chan struct{}),
		out:      make(chan outPDU, outQueuePDUs),
		work:     make(chan *task),
		window:   srv.opts.CommandsInFlightMax,
		ip:       target.AddrIP(nc.RemoteAddr()),
		quit:     make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(ctxBackground)
	s.mu.tasks = make(map[uint32]*task)
	return s
}

// serve runs the connection to its end.
func (s *session) serve() {
	defer close(s.finished)
	defer s.srv.untrack(s)
	if ok, why := s.srv.limit.Admit(s.ip); ok {
		defer s.srv.limit.Leave(s.ip)
	} else {
		s.refused = why
	}
	err := s.login()
	if err == nil {
		s.bw = bufio.NewWriterSize(s.nc, 64<<10)
		s.writerWG.Add(1)
		go s.writeLoop()
		err = s.readLoop()
	}
	s.teardown(err)
}

// login runs the login phase on the connection.
func (s *session) login() error {
	deadline := time.Now().Add(s.srv.opts.LoginTimeout)
	s.nc.SetDeadline(deadline)
	cfg := s.srv.loginConfig()
	cfg.refuse = s.refused
	l := newLogin(cfg)
	var buf []byte
	for {
		req, err := s.readLoginPDU(&buf)
		if err != nil {
			return err
		}
		step := l.step(&req)
		if step.done {
			step = s.attachLogin(l, step)
		}
		out := appendPDU(nil, &step.resp, digests{})
		if _, err := s.nc.Write(out); err != nil {
			return fmt.Errorf("%w: write: %w", errLoginFailed, err)
		}
		if step.redirect {
			s.log.Info("iscsi: login redirected", "initiator", l.initiatorName, "target", l.targetName,
				"to", l.redirectAddr, "reason", l.failReason)
			return fmt.Errorf("%w: %s", errLoginRedirected, l.failReason)
		}
		if step.fail {
			s.log.Warn("iscsi: login refused", "initiator", l.initiatorName, "target", l.targetName,
				"status", fmt.Sprintf("%#04x", step.resp.hdr.u16(36)), "reason", l.failReason)
			return fmt.Errorf("%w: %s", errLoginFailed, l.failReason)
		}
		if step.done {
			s.enterFullFeature(l)
			return nil
		}
	}
}

// readLoginPDU reads one Login Request (no digests yet) into *buf.
func (s *session) readLoginPDU(buf *[]byte) (PDU, error) {
	var h header
	if _, err := io.ReadFull(s.br, h[:]); err != nil {
		return PDU{}, fmt.Errorf("%w: read: %w", errLoginFailed, err)
	}
	n := wireBytes(h.ahsBytes(), h.dataBytes(), digests{}) - bhsBytes
	if h.dataBytes() > loginDataMax {
		return PDU{}, fmt.Errorf("%w: login PDU of %d data bytes", errLoginFailed, h.dataBytes())
	}
	b := append((*buf)[:0], h[:]...)
	b = append(b, make([]byte, n)...)
	*buf = b
	if _, err := io.ReadFull(s.br, b[bhsBytes:]); err != nil {
		return PDU{}, fmt.Errorf("%w: read: %w", errLoginFailed, err)
	}
	req, _, err := parsePDU(b, digests{}, loginDataMax)
	if err != nil {
		return PDU{}, fmt.Errorf("%w: %w", errLoginFailed, err)
	}
	return req, nil
}

// attachLogin takes the negotiated parameters of a login that succeeded
// and attaches the session to its target and to the server: the final
// step, or a redirection or refusal if the target moved or went away or
// the server refuses the session.
func (s *session) attachLogin(l *login, step loginStep) loginStep {
	s.p, s.d = l.params, l.params.digests()
	s.initiatorName, s.isid = l.initiatorName, l.isid
	s.nexus = reservation.NewNexus(l.initiatorName, l.isid)
	s.discovery = l.sessionType == sessionDiscovery
	if !s.discovery {
		dev, ok := s.srv.opts.Targets.Lookup(l.targetName)
		if !ok {
			if node, addr, moved := s.srv.locate(l.targetName); moved {
				l.redirectAddr = addr
				return l.redirect(addr, fmt.Sprintf("target %s moved to node %s at %s during login", l.targetName, node, addr))
			}
			return l.reject(statusNotFound, "target went away during login")
		}
		s.targetName = l.targetName
		s.lun = s.srv.lunFor(l.targetName, dev)
	}
	if step.fail {
		return step
	}
	if err := s.srv.register(s); err != nil {
		return l.reject(statusTargetError, err.Error())
	}
	step.resp.hdr.setU16(14, s.tsih)
	return step
}

// enterFullFeature starts the full feature phase of a session that
// logged in: the command window opens and, on a normal session, the I_T
// nexus attaches to its unit.
func (s *session) enterFullFeature(l *login) {
	s.statSN = l.statSN
	s.mu.window = newCmdWindow(l.cmdSN, s.window)
	s.cmdWindow.Store(s.mu.window.packed())
	s.nc.SetDeadline(time.Time{})
	// Every device call of the session's commands carries its I_T
	// nexus: the device checks reservations against it.
	s.ctx = reservation.WithNexus(s.ctx, s.nexus)
	s.log = s.log.With("initiator", s.initiatorName, "target", s.targetName, "tsih", s.tsih)
	if s.lun != nil {
		s.nx = newNexus(s.nexus, s.tsih, s.lun.dev.Info().Size, s.log, s)
		s.lun.attach(s.nx)
	}
	s.log.Info("iscsi: login", "discovery", s.discovery, "params", s.p.String())
}

// kill drops the connection from outside its goroutines: the reader sees
// the closed socket (or its abandoned budget wait) and tears down.
func (s *session) kill() {
	s.killed.Store(true)
	s.abandon()
	s.nc.Close()
}

// abandon wakes the reader if it waits for the shared budget; idempotent.
func (s *session) abandon() {
	s.quitOnce.Do(func() { close(s.quit) })
}

// disconnectKind classifies why the connection ended (a target.Disconnect*
// label).
func (s *session) disconnectKind(err error) string {
	switch {
	case s.refused != "":
		return target.DisconnectLimit
	case s.killed.Load():
		return target.DisconnectServer
	case s.replyTimedOut.Load():
		return target.DisconnectReplyTimeout
	case errors.Is(err, errLoginRedirected):
		return target.DisconnectRedirected
	case errors.Is(err, errLoginFailed):
		return target.DisconnectHandshake
	case err == nil, errors.Is(err, errLogout), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return target.DisconnectClientClosed
	case errors.Is(err, errRequestTimeout), errors.Is(err, os.ErrDeadlineExceeded):
		return target.DisconnectRequestTimeout
	case errors.Is(err, errNopTimeout):
		return target.DisconnectPingTimeout
	case errors.Is(err, errProtocol), errors.Is(err, errHeaderDigest), errors.Is(err, errDataDigest):
		return target.DisconnectProtocolError
	}
	return target.DisconnectIOError
}

// teardown ends the session: stop the writer, abort and wait for every
// task, release buffers and budget, unregister.
func (s *session) teardown(err error) {
	kind := s.disconnectKind(err)
	s.srv.disconnects.Add(kind)
	switch {
	case kind == target.DisconnectLimit, kind == target.DisconnectRedirected:
		// login logged the refusal or the redirection
	case err == nil, errors.Is(err, errLogout):
		if s.tsih != 0 {
			s.log.Info("iscsi: logout")
		}
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed) && kind != target.DisconnectReplyTimeout:
		if s.tsih != 0 {
			s.log.Info("iscsi: connection closed", "kind", kind)
		}
	default:
		if s.tsih != 0 || !errors.Is(err, errLoginFailed) {
			s.log.Warn("iscsi: connection failed", "kind", kind, "err", err)
		}
	}
	close(s.stopping)
	s.cancel()
	s.nc.Close()
	s.mu.Lock()
	for _, t := range s.mu.tasks {
		t.state.CompareAndSwap(taskRunning, taskAborted)
		t.ctx.cancel()
	}
	s.mu.Unlock()
	s.tasksWG.Wait()
	s.workersWG.Wait()
	s.auxWG.Wait()
	s.writerWG.Wait()
	s.mu.Lock()
	for itt, t := range s.mu.tasks {
		if t.state.Load() == taskCollecting && t.buf != nil {
			target.PutBuffer(t.buf)
			t.buf = nil
		}
		s.releaseBudget(t)
		delete(s.mu.tasks, itt)
	}
	s.mu.Unlock()
	// PDUs queued after the writer stopped: nobody sends them now.
	for len(s.out) > 0 {
		p := <-s.out
		s.releasePDU(&p)
	}
	if s.lun != nil {
		if s.nx != nil {
			s.lun.detach(s.nx)
		}
		if s.tsih != 0 {
			s.lun.releaseSPC2(s.nexus, false) // I_T nexus loss
		}
	}
}

// releaseBudget returns what t holds of the shared budget; idempotent.
func (s *session) releaseBudget(t *task) {
	if n := t.budget.Swap(0); n > 0 {
		s.srv.opts.Budget.Release(n)
	}
}

// releasePDU returns what a sent or dropped PDU holds.
func (s *session) releasePDU(p *outPDU) {
	if p.release != nil {
		target.PutBuffer(p.release)
		p.release = nil
	}
	if p.budget > 0 {
		s.srv.opts.Budget.Release(p.budget)
		p.budget = 0
	}
}

// send queues a PDU for the writer; false if the session is ending (the
// caller then releases what the PDU holds).
func (s *session) send(p outPDU) bool {
	select {
	case s.out <- p:
		return true
	case <-s.stopping:
		return false
	}
}

// writeLoop is the writer goroutine: the only one writing to the socket
// after login.
func (s *session) writeLoop() {
	defer s.writerWG.Done()
	for {
		p := &s.wp
		select {
		case *p = <-s.out:
		case <-s.stopping:
			return
		}
		s.armWrite()
		err := s.writePDU(p)
		s.releasePDU(p)
		if err == nil && (len(s.out) == 0 || p.closeAfter) {
			err = s.bw.Flush()
		}
		if err != nil {
			s.log.Debug("iscsi: write", "err", err)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.replyTimedOut.Store(true)
			}
			s.abandon()
			s.nc.Close() // the reader sees it and tears down
			return
		}
		if p.closeAfter {
			close(s.flushed)
		}
	}
}

// armWrite gives what is written next ReplyTimeout to drain, give or take
// an eighth: the deadline moves only when it comes closer than that, which
// keeps the per-PDU cost at one clock read. Writer goroutine only.
func (s *session) armWrite() {
	now, t := time.Now(), s.srv.opts.ReplyTimeout
	if s.writeDeadline.Sub(now) < t-t/8 {
		s.writeDeadline = now.Add(t)
		s.nc.SetWriteDeadline(s.writeDeadline)
	}
}

// writePDU encodes p onto the buffered writer with the current sequence
// numbers.
func (s *session) writePDU(p *outPDU) error {
	h := &p.hdr
	h.setU32(24, s.statSN)
	if p.advance {
		s.statSN++
	}
	w := s.cmdWindow.Load()
	h.setU32(28, uint32(w>>32))
	h.setU32(32, uint32(w))
	h[4] = 0
	h.setDataBytes(len(p.data))
	if _, err := s.bw.Write(h[:]); err != nil {
		return err
	}
	d := &s.wd
	if s.d.header {
		binary.LittleEndian.PutUint32(d[:], crc32c(h[:]))
		if _, err := s.bw.Write(d[:]); err != nil {
			return err
		}
	}
	if len(p.data) == 0 {
		return nil
	}
	// Renew the deadline as the data goes out, so that ReplyTimeout cuts
	// off an initiator that stops reading, not one with a large
	// MaxRecvDataSegmentLength that reads slowly.
	for d := p.data; len(d) > 0; {
		n := min(len(d), writeChunkBytes)
		if _, err := s.bw.Write(d[:n]); err != nil {
			return err
		}
		d = d[n:]
		if len(d) > 0 {
			s.armWrite()
		}
	}
	padN := pad4(len(p.data))
	if _, err := s.bw.Write(zeroPad[:padN]); err != nil {
		return err
	}
	if s.d.data {
		c := crc32.Update(0, castagnoli, p.data)
		c = crc32.Update(c, castagnoli, zeroPad[:padN])
		binary.LittleEndian.PutUint32(d[:], c)
		if _, err := s.bw.Write(d[:]); err != nil {
			return err
		}
	}
	return nil
}

// zeroPad pads data segments to 4 bytes; never written to.
var zeroPad [4]byte

// acceptCmdSN admits a non-immediate PDU's CmdSN: false (drop it
// silently, RFC 7143 §4.2.2.1) if it is outside [ExpCmdSN, MaxCmdSN].
// counted commands stay in flight until finishCounted or forget.
func (s *session) acceptCmdSN(sn uint32, counted bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mu.window.accept(sn, counted) {
		s.log.Debug("iscsi: CmdSN outside the window", "cmdsn", sn, "exp", s.mu.window.exp, "max", s.mu.window.maxSN())
		return false
	}
	s.cmdWindow.Store(s.mu.window.packed())
	return true
}

// finishCountedLocked frees a counted command's slot in the window.
func (s *session) finishCountedLocked() {
	s.mu.window.finish()
	s.cmdWindow.Store(s.mu.window.packed())
}

// finishCounted ends a non-immediate command that was counted in flight:
// its slot in the window opens.
func (s *session) finishCounted() {
	s.mu.Lock()
	s.finishCountedLocked()
	s.mu.Unlock()
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

// readLoop reads PDUs until the connection ends.
func (s *session) readLoop() error {
	for {
		if err := s.waitReadable(); err != nil {
			return err
		}
		s.nc.SetReadDeadline(time.Now().Add(s.srv.opts.RequestTimeout))
		h := &s.rh
		if _, err := io.ReadFull(s.br, h[:]); err != nil {
			return pduErr(err)
		}
		ahs := s.hdrAHS[:h.ahsBytes()]
		if _, err := io.ReadFull(s.br, ahs); err != nil {
			return pduErr(err)
		}
		if s.d.header {
			var d [digestBytes]byte
			if _, err := io.ReadFull(s.br, d[:]); err != nil {
				return pduErr(err)
			}
			c := crc32.Update(crc32c(h[:]), castagnoli, ahs)
			if binary.LittleEndian.Uint32(d[:]) != c {
				return errHeaderDigest // ERL 0: the PDU boundary is lost
			}
		}
		if h.dataBytes() > s.p.recvDataSegmentMax {
			return fmt.Errorf("%w: %s with %d data bytes > MaxRecvDataSegmentLength %d",
				errProtocol, opName(h.opcode()), h.dataBytes(), s.p.recvDataSegmentMax)
		}
		if err := s.handle(h, ahs); err != nil {
			return pduErr(err)
		}
	}
}

// pduErr marks a read deadline hit in the middle of a PDU as a request
// timeout.
func pduErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", errRequestTimeout, err)
	}
	return err
}

// waitReadable waits for the next PDU, pinging an idle initiator with
// NOP-In and dropping it when the ping goes unanswered, or when a WRITE
// waits for Data-Out that does not come within RequestTimeout.
func (s *session) waitReadable() error {
	interval, timeout := s.srv.opts.NopInInterval, s.srv.opts.NopInTimeout
	for {
		if s.br.Buffered() > 0 {
			return nil
		}
		var deadline time.Time // none while pings are disabled
		switch {
		case interval >= 0 && s.pingOutstanding:
			deadline = s.pingSent.Add(timeout)
		case interval >= 0:
			deadline = time.Now().Add(interval)
		}
		collecting := s.collecting.Load() > 0
		if d := s.lastData.Add(s.srv.opts.RequestTimeout); collecting && (deadline.IsZero() || d.Before(deadline)) {
			deadline = d
		}
		s.nc.SetReadDeadline(deadline)
		_, err := s.br.Peek(1)
		if err == nil {
			return nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
		if collecting && s.collecting.Load() > 0 && time.Since(s.lastData) >= s.srv.opts.RequestTimeout {
			return fmt.Errorf("%w: no Data-Out for %v", errRequestTimeout, s.srv.opts.RequestTimeout)
		}
		if interval < 0 {
			continue
		}
		if s.pingOutstanding {
			if time.Since(s.pingSent) >= timeout {
				return fmt.Errorf("%w within %v", errNopTimeout, timeout)
			}
			continue
		}
		s.ping()
	}
}

// newTTTLocked returns a fresh target transfer tag.
func (s *session) newTTTLocked() uint32 {
	s.mu.nextTTT++
	if s.mu.nextTTT == reservedTag || s.mu.nextTTT == 0 {
		s.mu.nextTTT = 1
	}
	return s.mu.nextTTT
}

// readData reads a data segment of len(dst) bytes with padding and digest
// into dst.
func (s *session) readData(dst []byte) error {
	if len(dst) == 0 {
		return nil
	}
	if _, err := io.ReadFull(s.br, dst); err != nil {
		return err
	}
	pad := &s.rpad
	n := pad4(len(dst))
	tail := pad[:n]
	if s.d.data {
		tail = pad[:n+digestBytes]
	}
	if _, err := io.ReadFull(s.br, tail); err != nil {
		return err
	}
	if s.d.data {
		c := crc32.Update(crc32c(dst), castagnoli, pad[:n])
		if binary.LittleEndian.Uint32(pad[n:]) != c {
			return errDataDigest
		}
	}
	return nil
}

// discard skips a data segment of n bytes.
func (s *session) discard(n int) error {
	if n == 0 {
		return nil
	}
	n += pad4(n)
	if s.d.data {
		n += digestBytes
	}
	_, err := s.br.Discard(n)
	return err
}

// readSmall reads a data segment into a new slice.
func (s *session) readSmall(h *header) ([]byte, error) {
	b := make([]byte, h.dataBytes())
	return b, s.readData(b)
}

// handle processes one PDU whose header (and AHS) has been read; it reads
// or skips the data segment.
func (s *session) handle(h *header, ahs []byte) error {
	if s.loggedOut {
		return s.discard(h.dataBytes())
	}
	switch h.opcode() {
	case opNOPOut:
		return s.nopOut(h)
	case opSCSICmd:
		return s.scsiCommand(h, ahs)
	case opDataOut:
		return s.dataOut(h)
	case opTaskMgmt:
		return s.taskMgmt(h)
	case opText:
		return s.textRequest(h)
	case opLogout:
		return s.logout(h)
	case opLogin:
		s.reject(h, rejectProtocolError)
		return s.discard(h.dataBytes())
	}
	s.reject(h, rejectNotSupported)
	return s.discard(h.dataBytes())
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
