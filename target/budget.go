package target

import (
	"fmt"
	"sync"
)

// Budget bounds the payload bytes in flight across every connection of every
// front end of a daemon: a front end acquires a request's payload bytes when
// it takes the request's buffer and releases them once the reply has been
// written (or the request dropped). A reader that cannot acquire stops
// reading, so a daemon under load pushes back on TCP instead of buffering.
//
// Waiters are served in arrival order, so a large request is not starved by
// small ones. A request larger than the whole budget waits until the budget
// is empty and then takes all of it: it is always served eventually.
//
// A nil *Budget is unlimited: Acquire and TryAcquire succeed at once and
// Release does nothing. Methods are safe for concurrent use.
type Budget struct {
	bytesMax int64
	mu       struct {
		sync.Mutex
		inUse   int64
		peak    int64
		high    int64           // most taken at once since the last HighWater
		waiters []*budgetWaiter // FIFO; bounded by the connections' readers, one each
	}
}

// budgetWaiter is one blocked Acquire. ready is closed once its bytes are
// granted.
type budgetWaiter struct {
	n     int64
	ready chan struct{}
}

// NewBudget returns a budget of bytes; bytes ≤ 0 returns nil (unlimited).
func NewBudget(bytes int64) *Budget {
	if bytes <= 0 {
		return nil
	}
	return &Budget{bytesMax: bytes}
}

// charge is what a request of n bytes takes from the budget.
func (b *Budget) charge(n int64) int64 {
	if n < 0 {
		panic(fmt.Sprintf("target: budget charge of %d bytes", n))
	}
	return min(n, b.bytesMax)
}

// TryAcquire takes n bytes if they are free now and nobody waits before it.
func (b *Budget) TryAcquire(n int64) bool {
	if b == nil {
		return true
	}
	c := b.charge(n)
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.mu.waiters) > 0 || b.mu.inUse+c > b.bytesMax {
		return false
	}
	b.takeLocked(c)
	return true
}

// Acquire takes n bytes, waiting until they are free or done is closed. It
// reports whether the bytes were taken; on false nothing is held.
func (b *Budget) Acquire(done <-chan struct{}, n int64) bool {
	if b == nil {
		return true
	}
	c := b.charge(n)
	b.mu.Lock()
	if len(b.mu.waiters) == 0 && b.mu.inUse+c <= b.bytesMax {
		b.takeLocked(c)
		b.mu.Unlock()
		return true
	}
	w := &budgetWaiter{n: c, ready: make(chan struct{})}
	b.mu.waiters = append(b.mu.waiters, w)
	b.mu.Unlock()

	select {
	case <-w.ready:
		return true
	case <-done:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready: // granted meanwhile: give it back
		b.mu.inUse -= c
	default:
		for i, o := range b.mu.waiters {
			if o == w {
				b.mu.waiters = append(b.mu.waiters[:i], b.mu.waiters[i+1:]...)
				break
			}
		}
	}
	b.grantLocked()
	return false
}

// Release returns n bytes taken by Acquire or TryAcquire with the same n.
func (b *Budget) Release(n int64) {
	if b == nil {
		return
	}
	c := b.charge(n)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mu.inUse -= c
	if b.mu.inUse < 0 {
		panic(fmt.Sprintf("target: budget below zero (%d bytes) after releasing %d", b.mu.inUse, n))
	}
	b.grantLocked()
}

func (b *Budget) takeLocked(c int64) {
	b.mu.inUse += c
	b.mu.peak = max(b.mu.peak, b.mu.inUse)
	b.mu.high = max(b.mu.high, b.mu.inUse)
}

// grantLocked wakes waiters from the head of the queue while they fit.
func (b *Budget) grantLocked() {
	for len(b.mu.waiters) > 0 {
		w := b.mu.waiters[0]
		if b.mu.inUse+w.n > b.bytesMax {
			return
		}
		b.takeLocked(w.n)
		close(w.ready)
		b.mu.waiters[0] = nil
		b.mu.waiters = b.mu.waiters[1:]
	}
}

// InUse returns the bytes taken now (metric cairn_inflight_bytes).
func (b *Budget) InUse() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.inUse
}

// Max returns the size of the budget; 0 for a nil (unlimited) budget
// (metric cairn_inflight_budget_bytes).
func (b *Budget) Max() int64 {
	if b == nil {
		return 0
	}
	return b.bytesMax
}

// HighWater returns the most bytes taken at once since the previous call (or
// since NewBudget) and starts the next interval at the bytes in use now.
func (b *Budget) HighWater() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.mu.high
	b.mu.high = b.mu.inUse
	return h
}

// Peak returns the most bytes ever taken at once: never more than Max.
func (b *Budget) Peak() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.peak
}

// Waiting returns the number of blocked Acquire calls.
func (b *Budget) Waiting() int {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.mu.waiters)
}
