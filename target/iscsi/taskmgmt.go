// Task management (RFC 7143 §11.5): aborts, task set and unit resets.

package iscsi

import (
	"cairn/target"
	"cairn/target/reservation"
)

// Task management functions and responses (RFC 7143 §11.5, §11.6).
const (
	tmfAbortTask        = 1
	tmfAbortTaskSet     = 2
	tmfClearACA         = 3
	tmfClearTaskSet     = 4
	tmfLUNReset         = 5
	tmfTargetWarmReset  = 6
	tmfTargetColdReset  = 7
	tmfTaskReassign     = 8
	tmfRespComplete     = 0
	tmfRespNoTask       = 1
	tmfRespNoLUN        = 2
	tmfRespNoReassign   = 4
	tmfRespNotSupported = 5
	tmfRespRejected     = 255
)

// taskMgmt executes a task management function. Tasks still receiving
// data are dropped here, on the reader; running tasks are cancelled and
// waited for on a helper goroutine, which then answers.
func (s *session) taskMgmt(h *header) error {
	if err := s.discard(h.dataBytes()); err != nil {
		return err
	}
	if s.discovery {
		s.reject(h, rejectProtocolError)
		return nil
	}
	counted := !h.immediate()
	if counted && !s.acceptCmdSN(h.cmdSN(), true) {
		return nil
	}
	resp, wait := s.taskFunction(h)
	s.answerTaskMgmt(h.itt(), counted, resp, wait)
	return nil
}

// taskFunction runs the function of a task management request and returns
// its response and the tasks to wait for before answering.
func (s *session) taskFunction(h *header) (byte, []*task) {
	fn, itt := h[1]&0x7f, h.itt()
	switch fn {
	case tmfAbortTask:
		s.mu.Lock()
		t := s.mu.tasks[h.u32(20)] // Referenced Task Tag
		s.mu.Unlock()
		if t == nil || t.lunField != h.lun() {
			return tmfRespNoTask, nil
		}
		if w, ok := s.abort(t, true); ok {
			return tmfRespComplete, w
		}
		return tmfRespNoTask, nil
	case tmfAbortTaskSet, tmfClearTaskSet:
		if h.lun() != 0 {
			return tmfRespNoLUN, nil
		}
		return tmfRespComplete, s.abortAll(true, itt)
	case tmfLUNReset, tmfTargetWarmReset:
		if fn == tmfLUNReset && h.lun() != 0 {
			return tmfRespNoLUN, nil
		}
		ua := uaLUNReset
		if fn == tmfTargetWarmReset {
			ua = uaBusReset
		}
		return tmfRespComplete, s.reset(itt, ua)
	case tmfClearACA, tmfTargetColdReset:
		return tmfRespNotSupported, nil
	case tmfTaskReassign:
		return tmfRespNoReassign, nil
	}
	return tmfRespRejected, nil
}

// reset aborts every task of the unit but the request itt, raises ua on
// every other I_T nexus, and restores the unit's defaults (write cache
// on, no SPC-2 reservation). It returns the tasks to wait for.
func (s *session) reset(itt uint32, ua sense) []*task {
	wait := s.abortAll(true, itt)
	for _, o := range s.lun.others(s.nx) {
		wait = append(wait, o.tasks.abortAll(false, reservedTag)...)
		o.addUA(ua)
	}
	s.lun.wce.Store(true)
	s.lun.releaseSPC2(reservation.Nexus{}, true)
	return wait
}

// answerTaskMgmt sends the response of task management request itt on a
// helper goroutine, once the tasks in wait are done (RFC 7143 §4.2.3.2:
// the aborted tasks' responses go first); counted frees its window slot.
func (s *session) answerTaskMgmt(itt uint32, counted bool, resp byte, wait []*task) {
	s.auxWG.Add(1)
	go func() {
		defer s.auxWG.Done()
		for _, t := range wait {
			select {
			case <-t.finished.wait():
			case <-s.stopping:
				return
			}
		}
		if counted {
			s.finishCounted()
		}
		var p outPDU
		p.hdr.setOpcode(opTaskMgmtResp)
		p.hdr[1] = flagFinal
		p.hdr[2] = resp
		p.hdr.setITT(itt)
		p.advance = true
		s.send(p)
	}()
}

// abort claims t so that it is never answered. owner is true on t's
// session's reader, which alone may free a collecting task's buffer. It
// returns the tasks to wait for and whether t was claimed.
func (s *session) abort(t *task, owner bool) ([]*task, bool) {
	switch {
	case t.state.CompareAndSwap(taskCollecting, taskAborted):
		s.collecting.Add(-1)
		s.forget(t)
		t.ctx.cancel()
		t.finished.fire()
		if owner && t.buf != nil {
			target.PutBuffer(t.buf)
			t.buf, t.data = nil, nil
		}
		// Returned here even when another session's reader aborts the
		// task: the owner forgets its buffer (the GC takes it).
		s.releaseBudget(t)
		return nil, true
	case t.state.CompareAndSwap(taskRunning, taskAborted):
		s.forget(t)
		t.ctx.cancel()
		return []*task{t}, true
	}
	return []*task{t}, false // answering already: wait for its response to go first
}

// abortAll aborts every task of the session but the task management
// request except.
func (s *session) abortAll(owner bool, except uint32) []*task {
	s.mu.Lock()
	ts := make([]*task, 0, len(s.mu.tasks))
	for _, t := range s.mu.tasks {
		if t.itt != except {
			ts = append(ts, t)
		}
	}
	s.mu.Unlock()
	var wait []*task
	for _, t := range ts {
		w, _ := s.abort(t, owner)
		wait = append(wait, w...)
	}
	return wait
}
