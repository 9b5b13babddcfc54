package store

import (
	"context"
	"math"
	"runtime"
	"slices"
	"sync/atomic"
	"time"
)

// GC drops the block versions no reader can see.
//
// The readers of a volume are its live volume (a read at math.MaxUint64
// sees what a read at the current epoch sees, and later writes), its
// retained epochs (SetRetained), and the ParentEpoch of every fork of it
// whose lineage this store holds. A version is kept if a read of the
// volume at one of these epochs, through its rollbacks (Lineage), sees it;
// every other version, data or zeros, is dropped from the index, its pebble
// key deleted at the next checkpoint, and its block no longer live in its
// segment, whose space the cleaner and the checkpoint give back. A version
// masked by a rollback {From, To} is seen only by reads in (From, To]: it
// is garbage once no retained epoch lies there.
//
// Guard: GC leaves a volume alone until SetRetained was called since Open
// and after the first Write or Zero stamped with the volume's newest epoch
// arrived (a list pushed before that may lack a snapshot being taken:
// the catalog raises the epoch, then pushes). It narrows the window of a
// lagging list; it cannot fix a list computed from stale state.
//
// Caller contract: a reader at any other epoch may find dropped versions
// gone (it reads an older version or zeros). So the retained list of a
// volume must hold every epoch that may still be read: each snapshot that
// is sealed or may still be sealed, before any write stamped above its
// epoch reaches this store, and the ParentEpoch of each fork, also on
// nodes that do not hold the fork's lineage (the catalog includes fork
// base epochs in the retained list it pushes). A version dropped stays
// dropped if the list grows later; one that a crash brings back before the
// next checkpoint is still garbage and is dropped again.
//
// The pass runs in the background goroutine every gcInterval, throttled to
// Options.GCBytesPerSec of blocks examined (a block examined counts
// BlockSize bytes), and skips volumes where nothing changed since its last
// look (no new versions at new epochs, zero ranges, retained epochs or
// lineages). It holds the volume's mu (which Zero, SetRetained, SetLineage
// and DropVolume take) and index lock for gcBatchPages pages at a time,
// fewer when the volume has many readers (gcLookupsMax), and yields the
// processor after each hold: a foreground Write waits on the index lock
// for one hold at most, not a pass.
// Zero ranges themselves are not collected (they are bounded per volume
// and cost no block space).

// GC settings.
const (
	// gcBytesPerSecDefault: 1 GiB/s of blocks examined, about 262144
	// blocks a second.
	gcBytesPerSecDefault = 1 << 30
	// gcLookupsMax is the most (block, reader epoch) visibility lookups
	// one lock hold makes (at least one page; see gcBatchPages): it
	// bounds how long a foreground Write waits on the index lock while
	// GC runs. A lookup takes about 57 ns on the bench host (a pass over
	// a 1 GiB volume with 9 snapshots: 2.6 M lookups in 149 ms of holds),
	// so a hold takes about 60 µs; at 1 << 16 holds took up to 5.2 ms and
	// the writes that waited behind them were most of the write p99
	// shift with a snapshot every 100 ms (cairn issue 10).
	gcLookupsMax = 1 << 10
)

// gcPagesPerHold returns how many index pages one lock hold examines for
// a volume that readers epochs see (the live volume counts): at most
// gcBatchPages, at most gcLookupsMax lookups, at least one page.
func gcPagesPerHold(readers int) int {
	return max(1, min(gcBatchPages, gcLookupsMax/(pageBlocks*max(readers, 1))))
}

// gcBatchPages is the most index pages one lock hold examines (a variable
// so that tests can make it small).
var gcBatchPages = 64

// gcInterval is how often the background goroutine runs a GC pass (a
// variable so that tests can change it).
var gcInterval = 10 * time.Second

// gcMark is what a volume looked like at its last GC pass.
type gcMark struct {
	gen, lin, adds uint64
	ranges         *rangeSet
	done           bool
}

// gcResult counts what one pass did.
type gcResult struct {
	examined, dropped uint64
	dataBytes         int64
}

// gc runs one pass over every volume. It stops early with ErrClosed when
// the store closes, or with ctx's error.
func (s *Store) gc(ctx context.Context) (gcResult, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	var res gcResult
	th := throttle{bytesPerSec: s.gcRate, start: time.Now()}
	s.vols.RLock()
	vols := make([]*volume, 0, len(s.vols.m))
	forks := map[uint64][]uint64{} // parent -> fork epochs
	for _, v := range s.vols.m {
		vols = append(vols, v)
		if l := v.lin.Load(); l != nil && l.Parent != 0 {
			forks[l.Parent] = append(forks[l.Parent], l.ParentEpoch)
		}
	}
	s.vols.RUnlock()
	slices.SortFunc(vols, func(a, b *volume) int { return cmpU64(a.id, b.id) })
	lin := s.linGen.Load()
	for _, v := range vols {
		if err := s.gcVolume(ctx, v, forks[v.id], lin, &res, &th); err != nil {
			return res, err
		}
	}
	s.stats.gcPasses.Add(1)
	if res.dropped > 0 {
		s.log.Debug("gc pass", "examined", res.examined, "dropped", res.dropped, "data_bytes", res.dataBytes)
	}
	return res, nil
}

// gcVolume collects v, gcBatchPages pages at a time.
func (s *Store) gcVolume(ctx context.Context, v *volume, forkEpochs []uint64, lin uint64, res *gcResult, th *throttle) error {
	v.mu.Lock()
	mark := s.gcMarkOf(v, lin)
	skip := v.gcLast == mark || s.lookup(v.id) != v || !v.retainedFresh()
	// Bound the lookups one lock hold makes: blocks x readers.
	per := gcPagesPerHold(len(v.retained) + len(forkEpochs) + 2) // + live, + through
	v.mu.Unlock()
	if skip {
		return nil
	}
	// The blocks that may hold garbage: with rollbacks or zero ranges
	// any block; otherwise only blocks with versions of several epochs.
	v.idx.RLock()
	l := v.lin.Load()
	var keys []uint64
	if len(l.rollbacks()) > 0 || v.ranges.Load().len() > 0 {
		keys = make([]uint64, 0, len(v.idx.pages))
		for k := range v.idx.pages {
			keys = append(keys, k)
		}
	} else {
		for b := range v.idx.older {
			keys = append(keys, b>>pageShift)
		}
	}
	v.idx.RUnlock()
	slices.Sort(keys)
	keys = slices.Compact(keys)
	for len(keys) > 0 {
		batch := keys[:min(len(keys), per)]
		keys = keys[len(batch):]
		select {
		case <-s.done:
			return ErrClosed
		default:
		}
		examined, ok := s.gcPages(v, batch, forkEpochs, res)
		if !ok {
			return nil // dropped meanwhile, or its list is stale
		}
		// A Write woken at the unlock runs before the next hold (it
		// would otherwise find the lock taken again).
		runtime.Gosched()
		if err := th.wait(ctx, s.done, int64(examined)*BlockSize); err != nil {
			return err
		}
	}
	v.mu.Lock()
	// What the pass saw; a change during it leaves the mark behind, and
	// the next pass looks again.
	v.gcLast = mark
	v.mu.Unlock()
	return nil
}

// retainedFresh reports whether the retained list was set since Open
// and since the newest epoch written to v appeared. Caller holds v.mu.
func (v *volume) retainedFresh() bool {
	return v.retainedSet && (v.through != 0 || v.epochHigh.Load() <= v.retainedAt)
}

// mayDrop reports whether a version stamped epoch may be dropped at all:
// not when a reader the retained list does not know of yet may see it
// (see SetRetainedThrough). Caller holds v.mu.
func (v *volume) mayDrop(epoch uint64) bool {
	return v.through == 0 || epoch <= v.through
}

// gcMarkOf returns v's state for the skip test. Caller holds v.mu.
func (s *Store) gcMarkOf(v *volume, lin uint64) gcMark {
	v.idx.RLock()
	adds := v.idx.olderAdds
	v.idx.RUnlock()
	return gcMark{gen: v.gcGen.Load(), lin: lin, adds: adds, ranges: v.ranges.Load(), done: true}
}

// gcPages drops the garbage of the blocks of v in pages keys. It returns
// the blocks examined, and false if v was dropped or its retained list is
// no longer fresh (the pass stops there; the next one starts over).
func (s *Store) gcPages(v *volume, keys []uint64, forkEpochs []uint64, res *gcResult) (uint64, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if s.lookup(v.id) != v || !v.retainedFresh() {
		return 0, false
	}
	readers := make([]uint64, 0, len(v.retained)+len(forkEpochs)+1)
	readers = append(append(append(readers, v.retained...), forkEpochs...), math.MaxUint64)
	if v.through != 0 {
		// What an unknown reader at through or above may see: what a read
		// at through sees, and the versions stamped above it (kept by
		// mayDrop).
		readers = append(readers, v.through)
	}
	slices.Sort(readers)
	readers = slices.Compact(readers)
	rbs := v.lin.Load().rollbacks()
	sps := make([][]span, len(readers))
	for i, e := range readers {
		sps[i] = spans(nil, rbs, e)
	}
	lo, hi := keys[0]<<pageShift, keys[len(keys)-1]<<pageShift+pageBlocks
	rs := v.ranges.Load().overlapping(nil, lo, hi, math.MaxUint64)
	// Without rollbacks or zero ranges a block's newest version is the
	// live volume's: a block with no older version holds no garbage,
	// and costs no lookups.
	pointOnly := len(rbs) == 0 && len(rs) == 0
	d := liveDelta{log: s.seg}
	var freed int64
	var examined uint64
	var keep []uint64 // epochs of the versions of one block some reader sees
	var drop []uint64
	x := &v.idx
	x.Lock()
	for _, key := range keys {
		p := x.pages[key]
		if p == nil {
			continue
		}
		for i := range p.v {
			if p.v[i].kind == 0 {
				continue
			}
			block := key<<pageShift + uint64(i)
			older := x.older[block]
			if pointOnly && len(older) == 0 {
				continue
			}
			examined++
			keep = keep[:0]
			for _, sp := range sps {
				if e, ok := seenPoint(x, rs, sp, block); ok {
					keep = append(keep, e)
				}
			}
			drop = drop[:0]
			if !slices.Contains(keep, p.v[i].epoch) && v.mayDrop(p.v[i].epoch) {
				drop = append(drop, p.v[i].epoch)
			}
			for _, o := range older {
				if !slices.Contains(keep, o.epoch) && v.mayDrop(o.epoch) {
					drop = append(drop, o.epoch)
				}
			}
			for _, e := range drop {
				old, ok, f := x.remove(block, e)
				if !ok {
					continue
				}
				freed += f
				res.dropped++
				s.stats.gcVersions.Add(1)
				if old.kind == kindData {
					d.add(old.seg, -1)
					res.dataBytes += BlockSize
					s.stats.gcBytes.Add(BlockSize)
				}
				s.markDirty(x, block, e)
			}
			if x.pages[key] == nil {
				break // the page emptied
			}
		}
	}
	x.Unlock()
	d.flush()
	s.indexBytes.Add(-freed)
	res.examined += examined
	return examined, true
}

// seenPoint returns the epoch of the point version of block that a read
// through sp sees, or false if it sees a zero range or nothing of x.
// Caller holds x's lock.
func seenPoint(x *index, rs []zrange, sp []span, block uint64) (uint64, bool) {
	for _, s := range sp {
		ver, ok := x.lookup(block, s.hi)
		ok = ok && ver.epoch >= s.lo
		for _, r := range rs {
			if r.start <= block && block < r.end && s.lo <= r.epoch && r.epoch <= s.hi && (!ok || newer(r.epoch, r.seq, ver.epoch, ver.seq)) {
				return 0, false // a zero range is newest in this span
			}
		}
		if ok {
			return ver.epoch, true
		}
		// Nothing in this span: a zero range would have been found above.
	}
	return 0, false
}

// gcCounters are GC's statistics (in counters).
type gcCounters struct {
	gcPasses, gcVersions, gcBytes atomic.Uint64
}
