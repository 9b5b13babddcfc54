package volume

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// The gate is where a snapshot cuts the volume without stopping its I/O
// (DESIGN.md §3). Hold switches the write epoch from e to e+1 atomically
// with respect to stamping: every write-class request stamped after the
// switch carries e+1. From then until Release, the acknowledgements of
// those requests, and of flushes admitted after the switch, wait at the
// request's exit; their data has already gone to the nodes. Requests
// stamped e go on and are acknowledged as usual. Drained(e) reports when
// none of them is left in flight, which is when snapshot e is complete.
//
// Every hold ends: at Release, at its deadline (the coordinator may have
// died), or when the held requests exceed their bounds; past a deadline or
// a bound the hold is failed, everything is released and no request errs.

// Bounds of one hold.
const (
	// heldRequestsMax and heldBytesMax bound the acknowledgements one hold
	// keeps waiting; past either the hold fails and releases them all.
	heldRequestsMax = 4096
	heldBytesMax    = 256 << 20
	// holdTimeoutMax bounds a hold's deadline.
	holdTimeoutMax = time.Minute
)

// Errors of the gate.
var (
	// ErrHoldBusy: a hold is in progress, or requests stamped with the
	// epoch before the current one are still in flight.
	ErrHoldBusy = errors.New("volume: hold busy")
	// ErrHoldFailed: the hold ended before Release, at its deadline or
	// past a bound; the snapshot it served must be failed.
	ErrHoldFailed = errors.New("volume: hold failed")
)

// Hold failure reasons, as HoldResult.Reason says.
const (
	HoldReleased = "released"
	HoldDeadline = "deadline"
	HoldBound    = "bound"
	HoldClosed   = "closed"
)

// gate is the volume's epoch and its hold. Stamping holds mu shared; a
// switch holds it exclusively.
type gate struct {
	mu    sync.RWMutex
	epoch uint64 // guarded by mu; v.epoch mirrors it for lock-free reads
	// inflight counts the write-class requests stamped with an epoch of
	// each parity that have not exited. Hold refuses to switch while the
	// parity of e+1 still counts requests of e-1, so after a switch to e+1
	// inflight[e&1] counts requests of e only.
	inflight [2]atomic.Int64
	// seq numbers the switches; a request remembers it at admission.
	seq  atomic.Uint64
	hold atomic.Pointer[hold] // the hold in progress, or nil
}

// hold is one epoch switch's held acknowledgements.
type hold struct {
	cut     uint64 // the epoch before the switch: the snapshot's
	seq     uint64 // the gate's seq at the switch
	start   time.Time
	release chan struct{} // closed when the hold ends
	once    sync.Once
	reason  atomic.Pointer[string]
	timer   *time.Timer // ends the hold at its deadline; set before the hold is published

	held, heldBytes atomic.Int64 // now
	heldMax         atomic.Int64 // most at once
}

// end ends the hold once, for reason, and reports it to onEnd when set.
func (h *hold) end(reason string, onEnd func(HoldResult)) {
	h.once.Do(func() {
		h.reason.Store(&reason)
		close(h.release)
		if onEnd != nil {
			onEnd(HoldResult{Window: time.Since(h.start), Held: h.heldMax.Load(), Reason: reason, Epoch: h.cut})
		}
	})
}

// HoldResult describes a hold that ended.
type HoldResult struct {
	Window  time.Duration // from the switch to the release
	Held    int64         // most acknowledgements held at once
	Reason  string        // HoldReleased, HoldDeadline, HoldBound or HoldClosed
	Epoch   uint64        // the epoch cut: the snapshot's
	Drained bool          // no request stamped ≤ Epoch was in flight at the release
}

// Hold switches the volume's write epoch to next (> the current one) and
// holds the acknowledgements of write-class requests from then on, until
// Release or timeout (at most holdTimeoutMax), whichever comes first.
func (v *Volume) Hold(next uint64, timeout time.Duration) error {
	if timeout <= 0 || timeout > holdTimeoutMax {
		return fmt.Errorf("volume %d: hold timeout %v outside (0, %v]", v.id, timeout, holdTimeoutMax)
	}
	g := &v.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	if v.life.Load()&lifeClosed != 0 {
		return ErrClosed
	}
	if h := g.hold.Load(); h != nil {
		return fmt.Errorf("volume %d: hold of epoch %d in progress: %w", v.id, h.cut, ErrHoldBusy)
	}
	if next <= g.epoch {
		return fmt.Errorf("volume %d: hold to epoch %d, already at %d", v.id, next, g.epoch)
	}
	if n := g.inflight[next&1].Load(); n != 0 {
		return fmt.Errorf("volume %d: %d requests of epoch %d still in flight: %w", v.id, n, g.epoch-1, ErrHoldBusy)
	}
	h := &hold{cut: g.epoch, seq: g.seq.Add(1), start: time.Now(), release: make(chan struct{})}
	h.timer = time.AfterFunc(timeout, func() { h.end(HoldDeadline, v.onHoldEnd) })
	g.epoch = next
	v.epoch.Store(next)
	g.hold.Store(h)
	return nil
}

// Release lets the held acknowledgements go and ends the hold. It returns
// ErrHoldFailed (with the result) if the hold had already ended at its
// deadline or a bound, and an error if no hold is in progress.
func (v *Volume) Release() (HoldResult, error) {
	g := &v.gate
	g.mu.Lock()
	h := g.hold.Load()
	g.hold.Store(nil)
	g.mu.Unlock()
	if h == nil {
		return HoldResult{}, fmt.Errorf("volume %d: release without a hold", v.id)
	}
	h.timer.Stop()
	h.end(HoldReleased, v.onHoldEnd)
	r := HoldResult{Window: time.Since(h.start), Held: h.heldMax.Load(), Reason: *h.reason.Load(), Epoch: h.cut, Drained: v.Drained(h.cut)}
	if r.Reason != HoldReleased {
		return r, fmt.Errorf("volume %d: hold of epoch %d ended by %s: %w", v.id, h.cut, r.Reason, ErrHoldFailed)
	}
	return r, nil
}

// Drained reports whether no write-class request stamped with epoch (or
// before) is still inside the volume. Meaningful for the epoch cut by the
// last Hold and the current one.
func (v *Volume) Drained(epoch uint64) bool {
	g := &v.gate
	g.mu.RLock()
	defer g.mu.RUnlock()
	if epoch >= g.epoch {
		return g.inflight[0].Load() == 0 && g.inflight[1].Load() == 0
	}
	return g.inflight[epoch&1].Load() == 0
}

// Epoch returns the epoch new writes are stamped with.
func (v *Volume) Epoch() uint64 { return v.epoch.Load() }

// stampEpoch stamps a request with the gate's epoch and counts it in
// flight for that epoch.
func (v *Volume) stampEpoch() uint64 {
	g := &v.gate
	g.mu.RLock()
	e := g.epoch
	g.inflight[e&1].Add(1)
	g.mu.RUnlock()
	return e
}

// holdAck is the gate at a request's exit: a write-class request stamped
// after the switch, or a flush admitted after it, waits here until the
// hold ends. It never fails the request.
func (v *Volume) holdAck(r *request) {
	if r.stamped {
		v.gate.inflight[r.st.Epoch&1].Add(-1)
	}
	h := v.gate.hold.Load()
	if h == nil || !r.writeClass {
		return
	}
	if r.stamped && r.st.Epoch <= h.cut || !r.stamped && r.admitSeq < h.seq {
		return
	}
	n := h.held.Add(1)
	b := h.heldBytes.Add(r.bytes)
	for {
		m := h.heldMax.Load()
		if n <= m || h.heldMax.CompareAndSwap(m, n) {
			break
		}
	}
	if n > heldRequestsMax || b > heldBytesMax {
		h.end(HoldBound, v.onHoldEnd)
	}
	<-h.release // closed at release, deadline, bound or Close: bounded
	h.held.Add(-1)
	h.heldBytes.Add(-r.bytes)
}
