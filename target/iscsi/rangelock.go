package iscsi

import "sync"

// rangeLock serializes COMPARE AND WRITE against writes to the same blocks:
// writes hold their range shared, COMPARE AND WRITE exclusive. Ranges are
// half-open [lo, hi) in logical blocks. Held ranges are few (at most the
// commands in flight), so a slice scan is cheap.
type rangeLock struct {
	mu struct {
		sync.Mutex
		cond    *sync.Cond
		held    []heldRange
		waiters int
	}
}

type heldRange struct {
	lo, hi uint64
	excl   bool
	id     uint64
}

func newRangeLock() *rangeLock {
	l := &rangeLock{}
	l.mu.cond = sync.NewCond(&l.mu.Mutex)
	return l
}

// lock waits until [lo, hi) can be held in the given mode and returns a
// token for unlock.
func (l *rangeLock) lock(lo, hi uint64, excl bool, id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.conflicts(lo, hi, excl) {
		l.mu.waiters++
		l.mu.cond.Wait()
		l.mu.waiters--
	}
	l.mu.held = append(l.mu.held, heldRange{lo, hi, excl, id})
}

func (l *rangeLock) conflicts(lo, hi uint64, excl bool) bool {
	for _, h := range l.mu.held {
		if lo < h.hi && h.lo < hi && (excl || h.excl) {
			return true
		}
	}
	return false
}

// unlock releases the range locked with id.
func (l *rangeLock) unlock(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, h := range l.mu.held {
		if h.id == id {
			last := len(l.mu.held) - 1
			l.mu.held[i] = l.mu.held[last]
			l.mu.held = l.mu.held[:last]
			if l.mu.waiters > 0 {
				l.mu.cond.Broadcast()
			}
			return
		}
	}
	panic("iscsi: unlock of a range not held")
}
