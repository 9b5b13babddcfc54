package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"cairn/target"
)

// Returning memory after a burst. The Go runtime keeps freed heap mapped
// until a collection notices it and its scavenger, paced at about 1% of a
// CPU, hands the pages back; an idle daemon collects only every two
// minutes. After a burst of large requests (tens of clients filling the
// in-flight budget), RSS would stay at the burst's peak for minutes. The
// daemon watches the budget instead: once a burst that took a large part
// of it is over, it returns the free heap to the OS at once.
const (
	memoryCheckInterval = 500 * time.Millisecond
	// memoryQuietChecks: the budget has been nearly idle for this many
	// checks in a row before the release (a pause between two waves of a
	// burst is not its end).
	memoryQuietChecks = 2
	// memoryReleaseGap: at most one release per gap (each is two full GCs).
	memoryReleaseGap = 10 * time.Second
	// memoryBurstBytesMin: a burst below this is not worth a full GC.
	memoryBurstBytesMin = 16 << 20
)

// memoryReleaser decides when a burst is over. It is driven by a clock
// the caller passes, so that it can be tested without sleeping.
type memoryReleaser struct {
	budget   *target.Budget
	burst    int64 // bytes a high water must reach to count as a burst
	inBurst  bool
	quiet    int
	last     time.Time
	releases atomic.Uint64 // metric cairn_memory_releases_total
}

func newMemoryReleaser(b *target.Budget) *memoryReleaser {
	return &memoryReleaser{budget: b, burst: max(b.Max()/8, memoryBurstBytesMin)}
}

// check samples the budget at now and reports whether the free heap should
// be returned now.
func (m *memoryReleaser) check(now time.Time) bool {
	if m.budget.HighWater() >= m.burst {
		m.inBurst, m.quiet = true, 0
		return false
	}
	if !m.inBurst {
		return false
	}
	if m.budget.InUse() > m.burst/4 {
		m.quiet = 0
		return false
	}
	if m.quiet++; m.quiet < memoryQuietChecks || now.Sub(m.last) < memoryReleaseGap {
		return false
	}
	m.inBurst, m.quiet, m.last = false, 0, now
	return true
}

// run checks the budget until ctx ends, releasing the free heap after each
// burst. The daemon owns it (d.wg).
func (m *memoryReleaser) run(ctx context.Context) {
	t := time.NewTicker(memoryCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if m.check(now) {
				// sync.Pool keeps items for one collection in its victim
				// cache: the first GC moves the burst's buffers there, the
				// one in FreeOSMemory frees them and returns the pages.
				runtime.GC()
				debug.FreeOSMemory()
				m.releases.Add(1)
			}
		}
	}
}
