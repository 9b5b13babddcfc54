package store

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Flatten settings.
const (
	// flattenBytesPerSecDefault throttles Flatten when
	// Options.FlattenBytesPerSec is 0.
	flattenBytesPerSecDefault = 64 << 20
	// flattenChunkBlocks is the most blocks Flatten reads and writes at once.
	flattenChunkBlocks = 256
)

// Flatten copies into vol every block it reads through its Parent (at the
// blocks this store holds), so that the lineage's Parent can be cleared;
// throttled (bytes/s in Options or an argument), resumable after a crash or
// cancel (the copies already made stay), reporting progress via fn(done, total blocks).
// A copy never overrides a version vol wrote itself (stamp it below any real stamp, e.g. epoch 0).
//
// What it copies: each block the parent (through its own lineage, at the
// fork's ParentEpoch) holds as data, and that vol reads through the parent
// at the live epoch or at one of vol's retained epochs. Blocks the parent
// reads as zeros are not copied (they read as zeros without a parent).
// A copy is a write to vol stamped Stamp{0, 0}: below every version vol
// wrote, so it is visible exactly where the read fell through before, at
// every epoch, whatever writes race with it. The throttle is
// Options.FlattenBytesPerSec. Flatten syncs the copies before it returns
// nil, so the caller may then durably clear Parent (SetLineage with the
// same Rollbacks and Parent 0) and every block of vol reads as before.
// After an error or a cancel (ctx), the copies made so far stay; a new
// Flatten skips them (they are vol's own now) and copies the rest; its
// total counts only what is left. progress, if not nil, is called on the
// calling goroutine after each chunk and once at the end, done <= total.
// A volume without a Parent has nothing to copy.
func (s *Store) Flatten(ctx context.Context, vol uint64, progress func(done, total uint64)) error {
	if progress == nil {
		progress = func(uint64, uint64) {}
	}
	if err := s.enter(ctx); err != nil {
		return fmt.Errorf("store: flatten vol %d: %w", vol, err)
	}
	// Not held: the copies enter the store as Read and Write calls, and a
	// throttled Flatten must not hold Close off.
	s.life.RUnlock()
	v := s.lookup(vol)
	var l *Lineage
	if v != nil {
		l = v.lin.Load()
	}
	if l == nil || l.Parent == 0 {
		progress(0, 0)
		return nil
	}
	var total uint64
	if err := s.flattenWalk(ctx, v, l, func(start, count uint64) error {
		total += count
		return nil
	}); err != nil {
		return fmt.Errorf("store: flatten vol %d: %w", vol, err)
	}
	progress(0, total)
	th := throttle{bytesPerSec: s.flattenRate, start: time.Now()}
	buf := make([]byte, flattenChunkBlocks*BlockSize)
	var done uint64
	err := s.flattenWalk(ctx, v, l, func(start, count uint64) error {
		p := buf[:count*BlockSize]
		if err := s.Read(ctx, l.Parent, start, p, l.ParentEpoch); err != nil {
			return err
		}
		if err := s.Write(ctx, vol, start, p, Stamp{}, false); err != nil {
			return err
		}
		done += count
		progress(min(done, total), max(total, done))
		return th.wait(ctx, s.done, int64(count)*BlockSize)
	})
	if err == nil {
		err = s.Sync(ctx)
	}
	if err != nil {
		return fmt.Errorf("store: flatten vol %d: %w", vol, err)
	}
	s.stats.flattenedBlocks.Add(done)
	progress(max(total, done), max(total, done))
	return nil
}

// flattenWalk calls fn, in block order, for the runs (at most
// flattenChunkBlocks each) of blocks that the parent of v holds as data
// and v reads through it at one of its reader epochs (see Flatten).
func (s *Store) flattenWalk(ctx context.Context, v *volume, l *Lineage, fn func(start, count uint64) error) error {
	// The parent's allocation, as a list of runs, in pieces of a bounded
	// size so that a huge sparse parent costs bounded memory.
	const runsMax = 1 << 12
	for next := uint64(0); next < BlocksMax; {
		var found []iv
		r := runs{fn: func(start, count uint64, alloc bool) bool {
			if alloc {
				found = append(found, iv{start, start + count})
			}
			return len(found) < runsMax
		}}
		if _, err := s.extentsLineage(s.lookup(l.Parent), next, BlocksMax, l.ParentEpoch, 1, &r); err != nil {
			return err
		}
		r.flush()
		if len(found) == 0 {
			return nil
		}
		for _, run := range found {
			for a := run.start; a < run.end; a += flattenChunkBlocks {
				if err := ctx.Err(); err != nil {
					return err
				}
				b := min(a+flattenChunkBlocks, run.end)
				need := s.fallThrough(v, a, b)
				for i := 0; i < len(need); {
					if !need[i] {
						i++
						continue
					}
					j := i + 1
					for j < len(need) && need[j] {
						j++
					}
					if err := fn(a+uint64(i), uint64(j-i)); err != nil {
						return err
					}
					i = j
				}
			}
		}
		if len(found) < runsMax {
			return nil
		}
		next = found[len(found)-1].end
	}
	return nil
}

// fallThrough reports, for each block of [lo, hi), whether a read of v at
// the live epoch or at one of its retained epochs sees none of v's own
// versions (and so reads through its parent).
func (s *Store) fallThrough(v *volume, lo, hi uint64) []bool {
	v.mu.Lock()
	readers := append(append(make([]uint64, 0, len(v.retained)+1), v.retained...), math.MaxUint64)
	v.mu.Unlock()
	l := v.lin.Load()
	need := make([]bool, hi-lo)
	rs := v.ranges.Load().overlapping(nil, lo, hi, math.MaxUint64)
	var sp []span
	v.idx.RLock()
	defer v.idx.RUnlock()
	for _, e := range readers {
		sp = spans(sp[:0], l.rollbacks(), e)
		for b := lo; b < hi; b++ {
			if need[b-lo] {
				continue
			}
			if _, ok := visibleIn(&v.idx, rs, sp, b); !ok {
				need[b-lo] = true
			}
		}
	}
	return need
}

// throttle paces a background copy at bytesPerSec on average.
type throttle struct {
	bytesPerSec int64
	start       time.Time
	bytes       int64
}

// wait accounts n more bytes and sleeps until the average rate is back
// under the bound, or ctx or done ends it (ctx's error; nil for done).
func (t *throttle) wait(ctx context.Context, done <-chan struct{}, n int64) error {
	t.bytes += n
	want := time.Duration(float64(t.bytes) / float64(t.bytesPerSec) * float64(time.Second))
	d := want - time.Since(t.start)
	if d <= 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-done:
		return ErrClosed
	case <-tm.C:
		return nil
	}
}
