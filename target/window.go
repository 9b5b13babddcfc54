package target

import (
	"fmt"
	"sync"
)

// Window bounds one connection's requests in flight by count and payload
// bytes: the connection's reader Acquires before it reads the next
// request's payload (so a full window is TCP backpressure), the reply path
// Releases. Used by the front ends and the node RPC alike. Init it before
// use; its methods are safe for concurrent use.
type Window struct {
	mu       sync.Mutex
	cond     sync.Cond
	count    int
	bytes    int
	countMax int
	bytesMax int
}

// Init sets the bounds.
func (w *Window) Init(countMax, bytesMax int) {
	w.cond.L = &w.mu
	w.countMax, w.bytesMax = countMax, bytesMax
}

// Acquire waits until one more request of n bytes fits; n ≤ bytesMax
// always fits into an empty window (a larger n is a programmer error).
func (w *Window) Acquire(n int) {
	if n > w.bytesMax {
		panic(fmt.Sprintf("target: request of %d bytes exceeds the connection window of %d", n, w.bytesMax))
	}
	w.mu.Lock()
	for w.count >= w.countMax || w.bytes+n > w.bytesMax {
		w.cond.Wait()
	}
	w.count++
	w.bytes += n
	w.mu.Unlock()
}

// TryAcquire takes one more request of n bytes if it fits now, without
// waiting, and reports whether it did.
func (w *Window) TryAcquire(n int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.count >= w.countMax || w.bytes+n > w.bytesMax {
		return false
	}
	w.count++
	w.bytes += n
	return true
}

// Release returns a request of n bytes.
func (w *Window) Release(n int) {
	w.mu.Lock()
	w.count--
	w.bytes -= n
	if w.count < 0 || w.bytes < 0 {
		panic(fmt.Sprintf("target: connection window below zero: %d requests, %d bytes", w.count, w.bytes))
	}
	w.mu.Unlock()
	w.cond.Broadcast()
}

// Count returns the requests in flight.
func (w *Window) Count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

// Wait waits until nothing is in flight.
func (w *Window) Wait() {
	w.mu.Lock()
	for w.count > 0 {
		w.cond.Wait()
	}
	w.mu.Unlock()
}
