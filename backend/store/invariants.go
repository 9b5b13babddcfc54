package store

import (
	"fmt"
	"sync"
)

// calls is the invariants build's record of the calls inside the store per
// volume and of the volumes dropped: the volume layer promises no call on a
// volume while it is being dropped, and no write or zero after (its id is
// never reused), because such a call races the drop's range deletions or
// leaves orphaned keys. A broken promise panics with the facts. (Reads of a
// dropped volume are harmless and read zeros.)
type calls struct {
	sync.Mutex
	inside  map[uint64]int
	dropped map[uint64]bool
}

func (s *Store) volEnter(vol uint64, write bool) {
	if !invariants {
		return
	}
	c := &s.calls
	c.Lock()
	defer c.Unlock()
	if write && c.dropped[vol] {
		panic(fmt.Sprintf("store: write on volume %d, which is dropped or being dropped", vol))
	}
	if c.inside == nil {
		c.inside = make(map[uint64]int)
	}
	c.inside[vol]++
}

func (s *Store) volExit(vol uint64) {
	if !invariants {
		return
	}
	c := &s.calls
	c.Lock()
	defer c.Unlock()
	if c.inside[vol]--; c.inside[vol] == 0 {
		delete(c.inside, vol)
	}
}

// dropBegin marks vol dropped; it panics if a call on vol is inside the
// store.
func (s *Store) dropBegin(vol uint64) {
	if !invariants {
		return
	}
	c := &s.calls
	c.Lock()
	defer c.Unlock()
	if n := c.inside[vol]; n > 0 {
		panic(fmt.Sprintf("store: drop of volume %d with %d calls on it in flight", vol, n))
	}
	if c.dropped == nil {
		c.dropped = make(map[uint64]bool)
	}
	c.dropped[vol] = true
}
