package iscsi

import "fmt"

// serialLess compares sequence numbers in serial arithmetic (RFC 1982).
func serialLess(a, b uint32) bool { return a != b && int32(a-b) < 0 }

// cmdWindow is a session's command numbering (RFC 7143 §4.2.2.1) as a
// pure state machine: ExpCmdSN, the window's size and the counted
// commands in flight, from which MaxCmdSN follows. A command whose CmdSN
// is outside [ExpCmdSN, MaxCmdSN] is dropped; an accepted one moves
// ExpCmdSN past it (a gap cannot be filled on one connection at ERL 0,
// so it is skipped); a counted one holds a slot until finish. It does no
// I/O and is not safe for concurrent use (the session holds its mu).
//
// Invariants: 0 ≤ inFlight ≤ size, and MaxCmdSN = ExpCmdSN - 1 + size -
// inFlight, so a full window admits nothing.
type cmdWindow struct {
	exp      uint32 // ExpCmdSN
	size     int    // commands in flight at most
	inFlight int    // counted commands accepted and not finished
}

// newCmdWindow returns the window after a login whose last request
// carried CmdSN exp, of size slots (size ≥ 1).
func newCmdWindow(exp uint32, size int) cmdWindow {
	if size < 1 || size > 1<<30 {
		panic(fmt.Sprintf("iscsi: command window of %d", size))
	}
	return cmdWindow{exp: exp, size: size}
}

// maxSN returns MaxCmdSN.
func (w *cmdWindow) maxSN() uint32 { return w.exp - 1 + uint32(w.size-w.inFlight) }

// packed returns ExpCmdSN<<32 | MaxCmdSN, which the session publishes so
// that its writer reads a consistent pair.
func (w *cmdWindow) packed() uint64 { return uint64(w.exp)<<32 | uint64(w.maxSN()) }

// accept admits the CmdSN of a non-immediate PDU, or reports false if the
// PDU must be dropped. A counted command takes a slot until finish.
func (w *cmdWindow) accept(sn uint32, counted bool) bool {
	if serialLess(sn, w.exp) || serialLess(w.maxSN(), sn) {
		return false
	}
	if counted {
		w.inFlight++
	}
	w.exp = sn + 1
	if invariants {
		w.check()
	}
	return true
}

// check panics if an invariant is broken (-tags invariants).
func (w *cmdWindow) check() {
	if w.inFlight < 0 || w.inFlight > w.size {
		panic(fmt.Sprintf("iscsi: command window: %d of %d slots in flight", w.inFlight, w.size))
	}
}

// finish frees the slot of a counted command that was accepted.
func (w *cmdWindow) finish() {
	if w.inFlight == 0 {
		panic("iscsi: command window: finish without a command in flight")
	}
	w.inFlight--
}
