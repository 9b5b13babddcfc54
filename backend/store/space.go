package store

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Free space. Data writes are refused with ErrNoSpace while the file
// system's available bytes are below the reserve, so that pebble (whose
// commit pipeline treats ENOSPC as fatal), zero records and the cleaner
// always find room; a write that hits ENOSPC anyway fails the same way. The
// available bytes are sampled at most every spaceCheckInterval or
// spaceCheckBytes appended, and the low state is logged when it starts and
// ends, not per request.
//
// The low state has hysteresis, so that it does not flap with the sizes of
// the writes (a 16 MiB write finds no room where a 4 KiB one still does):
// it starts when a write is refused, and while it lasts every write is
// refused until the available bytes are a quarter of the reserve (16 MiB by
// default) above what the write needs.
var (
	spaceCheckInterval       = 100 * time.Millisecond
	spaceCheckBytes    int64 = 4 << 20
)

type space struct {
	since atomic.Int64 // bytes appended since the last sample
	low   atomic.Bool
	mu    sync.Mutex
	last  time.Time
	avail uint64
	total uint64
	known bool // the file system reports its usage
}

// setLow records the low state, logging a change.
func (sp *space) setLow(s *Store, low bool, avail uint64) {
	if sp.low.Swap(low) == low {
		return
	}
	if low {
		s.log.Warn("store low on space: writes fail with ENOSPC until space is freed", "avail_bytes", avail, "reserve_bytes", s.reserve)
	} else {
		s.log.Info("store has space again", "avail_bytes", avail, "reserve_bytes", s.reserve)
	}
}

// checkSpace returns an error wrapping ErrNoSpace when n more bytes would
// leave less than reserve available (or, while low with the store's
// reserve, less than reserve*5/4).
func (s *Store) checkSpace(n, reserve int64) error {
	sp := &s.space
	if sp.since.Add(n) < spaceCheckBytes && !sp.low.Load() {
		sp.mu.Lock()
		fresh := time.Since(sp.last) < spaceCheckInterval
		sp.mu.Unlock()
		if fresh {
			return nil
		}
	}
	sp.mu.Lock()
	if time.Since(sp.last) >= spaceCheckInterval || sp.since.Load() >= spaceCheckBytes {
		du, err := s.fs.GetDiskUsage(s.dir)
		sp.last = time.Now()
		sp.since.Store(0)
		sp.known = err == nil
		sp.avail, sp.total = du.AvailBytes, du.TotalBytes
	}
	known, avail := sp.known, sp.avail
	sp.mu.Unlock()
	if !known {
		return nil
	}
	need := reserve + n
	if avail < uint64(need+reserve/4) {
		// Spare segment files hold space the log would reuse: give it
		// back first (pebble and a write outside the log need it too).
		if freed, _, err := s.seg.dropSpares(true, 0); freed > 0 && err == nil {
			sp.mu.Lock()
			sp.last = time.Time{}
			sp.mu.Unlock()
			return s.checkSpace(n, reserve)
		}
	}
	if reserve == s.reserve {
		if sp.low.Load() {
			need += reserve / 4
		}
		sp.setLow(s, avail < uint64(need), avail)
	}
	low := avail < uint64(need)
	if low {
		return fmt.Errorf("%w: %d bytes available, %d reserved", ErrNoSpace, avail, reserve)
	}
	return nil
}

// spacePressure returns how short of space the file system is, from 0
// (the available bytes are at least an eighth of the file system, and at
// least six times the reserve) to 1 (at most twice the reserve: the
// cleaner's copies need half of it, and below that writes soon fail). The
// cleaner raises its busy threshold and rate with it. The sample is the
// last one checkSpace took; a file system that does not report its usage
// is under no pressure.
func (s *Store) spacePressure() float64 {
	sp := &s.space
	sp.mu.Lock()
	known, avail, total := sp.known, sp.avail, sp.total
	sp.mu.Unlock()
	if !known {
		return 0
	}
	lo := uint64(2 * s.reserve)
	hi := max(lo+uint64(4*s.reserve), total/8)
	switch {
	case avail <= lo:
		return 1
	case avail >= hi:
		return 0
	}
	return float64(hi-avail) / float64(hi-lo)
}
