package store

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestModelGC: random histories of forks of forks, rollbacks, writes and
// zeros with everything retained; then each volume keeps a random subset
// of its epochs (the parents' fork epochs left out for some: GC keeps them
// itself), GC runs, and every block of every volume reads as the model says
// at the live epoch and at each retained epoch, and the forks at theirs;
// again after a checkpoint and a crash. GC keeps exactly the point versions
// some reader sees (counted by the model), and the live bytes of the
// segments are those versions' data.
func TestModelGC(t *testing.T) {
	const blocks = 200
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			if seed%2 == 1 {
				// One page per lock hold: the pass resumes between batches.
				old := gcBatchPages
				gcBatchPages = 1
				defer func() { gcBatchPages = old }() // after the stores close
			}
			fs := vfs.NewCrashableMem()
			s, err := Open("db", crashOpts(fs))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			h := newLinHistory(seed + 300)
			for _, vol := range []uint64{1, 2, 3} {
				mustRetain(t, s, vol, []uint64{0})
			}
			for range 400 {
				h.step(t, s, blocks)
			}
			readers := map[uint64][]uint64{}
			for _, vol := range h.vols {
				var rs []uint64
				for e := uint64(0); e <= h.epoch; e++ {
					if h.rng.IntN(4) == 0 {
						rs = append(rs, e)
					}
				}
				mustRetain(t, s, vol, rs)
				readers[vol] = append(readers[vol], rs...)
				readers[vol] = append(readers[vol], math.MaxUint64)
			}
			for _, vol := range h.vols {
				if l := h.m.lin[vol]; l.Parent != 0 {
					readers[l.Parent] = append(readers[l.Parent], l.ParentEpoch)
				}
			}
			before := s.Stats()
			res, err := s.gc(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// What GC must keep, by the model: the point versions (one per
			// block and epoch, the highest seq) some reader sees.
			type key struct{ vol, block, epoch uint64 }
			seen := map[key]bool{}
			var dataBytes int64
			for _, vol := range h.vols {
				for b := range uint64(blocks) {
					for _, e := range readers[vol] {
						o := h.m.find(vol, b, e)
						if o == nil || !ownOp(h.m, vol, o) || (o.zero && o.n >= zeroRangeBlocksMin) {
							continue
						}
						k := key{vol, b, o.st.Epoch}
						if !seen[k] && !o.zero {
							dataBytes += BlockSize
						}
						seen[k] = true
					}
				}
			}
			count := 0
			for _, vol := range h.vols {
				count += versions(s, vol)
			}
			if count != len(seen) {
				t.Fatalf("after gc the index holds %d versions, readers see %d", count, len(seen))
			}
			after := s.Stats()
			if after.LiveBytes != dataBytes {
				t.Fatalf("live bytes %d after gc, the seen versions hold %d", after.LiveBytes, dataBytes)
			}
			if after.GCVersionsDropped-before.GCVersionsDropped != res.dropped || res.dropped == 0 ||
				int64(after.GCBytesDropped-before.GCBytesDropped) != before.LiveBytes-after.LiveBytes {
				t.Fatalf("gc dropped %d versions, stats %+v -> %+v", res.dropped, before, after)
			}
			check := func(s *Store) {
				t.Helper()
				for _, vol := range h.vols {
					checkReads(t, s, h.m, vol, blocks, readers[vol])
				}
			}
			check(s)
			// A second pass finds nothing to do.
			if res, err := s.gc(ctx); err != nil || res.dropped != 0 || res.examined != 0 {
				t.Fatalf("second gc pass: %+v, %v", res, err)
			}
			if err := s.checkpoint(); err != nil {
				t.Fatal(err)
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
			s2, err := Open("db", crashOpts(crashed))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s2.Close() }()
			check(s2)
			count = 0
			for _, vol := range h.vols {
				count += versions(s2, vol)
			}
			if count != len(seen) {
				t.Fatalf("after a crash the index holds %d versions, want %d", count, len(seen))
			}
		})
	}
}

// versions counts the versions in vol's index.
func versions(s *Store, vol uint64) int {
	x := &s.lookup(vol).idx
	x.RLock()
	defer x.RUnlock()
	n := 0
	x.each(func(version) { n++ })
	return n
}

// TestGCSpace: write churn over several epochs with a snapshot retained at
// each; once the snapshots are released, GC and the cleaner bring the
// bytes on disk back to within 10% of the live data, and every block reads
// its newest data.
func TestGCSpace(t *testing.T) {
	const (
		blocks = 1024 // 4 MiB of live data
		epochs = 6
		chunk  = 64 // blocks per write
	)
	opts := Options{FS: vfs.NewMem(), Logger: quiet, SegmentBytes: 512 << 10}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	buf := make([]byte, chunk*BlockSize)
	var retained []uint64
	seq := uint64(0)
	for e := uint64(1); e <= epochs; e++ {
		for b := uint64(0); b < blocks; b += chunk {
			for i := range uint64(chunk) {
				fill(buf[i*BlockSize:(i+1)*BlockSize], byte(e), b+i)
			}
			seq++
			if err := s.Write(ctx, 1, b, buf, Stamp{e, seq}, false); err != nil {
				t.Fatal(err)
			}
		}
		retained = append(retained, e)
		mustRetain(t, s, 1, retained)
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()
	if _, err := s.gc(ctx); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.GCVersionsDropped != 0 {
		t.Fatalf("gc dropped %d versions every snapshot sees", st.GCVersionsDropped)
	}
	mustRetain(t, s, 1, nil)
	if _, err := s.gc(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.clean(0.9); err != nil {
		t.Fatal(err)
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	live := int64(blocks * BlockSize)
	t.Logf("before gc: %d bytes in %d segments, %d live; after gc and cleaning: %d bytes in %d segments, %d live (%.1f%% over the live data); gc dropped %d versions, %d bytes",
		before.SegmentBytes, before.Segments, before.LiveBytes, after.SegmentBytes, after.Segments, after.LiveBytes,
		100*float64(after.SegmentBytes-live)/float64(live), after.GCVersionsDropped, after.GCBytesDropped)
	if after.LiveBytes != live || after.GCVersionsDropped != blocks*(epochs-1) || after.GCBytesDropped != uint64(blocks*(epochs-1)*BlockSize) {
		t.Fatalf("after gc: %+v", after)
	}
	if float64(after.SegmentBytes) > 1.1*float64(live) {
		t.Fatalf("%d bytes on disk for %d live", after.SegmentBytes, live)
	}
	for b := range uint64(blocks) {
		if got := readID(t, s, 1, b, math.MaxUint64); got != epochs {
			t.Fatalf("block %d = %d, want %d", b, got, epochs)
		}
	}
}

// TestGCWaitsForRetained: GC leaves a volume alone while its retained
// list may lag its epochs: after a write of a new epoch, and after a
// reopen, until SetRetained is called again.
func TestGCWaitsForRetained(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	buf := make([]byte, BlockSize)
	write := func(s *Store, e uint64) {
		t.Helper()
		fill(buf, byte(e), 0)
		if err := s.Write(ctx, 1, 0, buf, Stamp{e, e}, false); err != nil {
			t.Fatal(err)
		}
	}
	dropped := func(s *Store) uint64 {
		t.Helper()
		res, err := s.gc(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res.dropped
	}
	write(s, 1)
	mustRetain(t, s, 1, nil)
	// Epoch 2 starts (a snapshot at 1 is being taken, its epoch not
	// pushed yet): version 1 must stay.
	write(s, 2)
	if n := dropped(s); n != 0 {
		t.Fatalf("gc before the retained list saw epoch 2 dropped %d", n)
	}
	if got := readID(t, s, 1, 0, 1); got != 1 {
		t.Fatalf("snapshot at 1 reads %d", got)
	}
	mustRetain(t, s, 1, []uint64{1})
	write(s, 3) // version 2 is garbage once the list is pushed again
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openMem(t, fs)
	if n := dropped(s); n != 0 {
		t.Fatalf("gc after a reopen, before SetRetained, dropped %d", n)
	}
	mustRetain(t, s, 1, []uint64{1})
	if n := dropped(s); n != 1 {
		t.Fatalf("gc dropped %d versions, want 1 (epoch 2)", n)
	}
	for _, c := range []check{{0, 1, 1}, {0, 2, 1}, {0, 3, 3}, {0, math.MaxUint64, 3}} {
		if got := readID(t, s, 1, c.block, c.epoch); got != c.want {
			t.Fatalf("block %d @%d = %d, want %d", c.block, c.epoch, got, c.want)
		}
	}
}

// TestGCRetainedThrough: a retained list bounded by the catalog's epoch
// keeps what a snapshot the list does not know of yet may read, even when
// it is pushed after that snapshot's next epoch reached the store (the
// case the epoch guard of SetRetained cannot see), and gives the space
// back once a list that knows the snapshot is gone arrives.
func TestGCRetainedThrough(t *testing.T) {
	s := openMem(t, vfs.NewMem())
	buf := make([]byte, BlockSize)
	write := func(block, e, seq uint64) {
		t.Helper()
		fill(buf, byte(e), block)
		if err := s.Write(ctx, 1, block, buf, Stamp{e, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	gc := func() uint64 {
		t.Helper()
		res, err := s.gc(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res.dropped
	}
	write(0, 1, 1)
	write(1, 1, 3)
	// A snapshot at 1 is reserved (the catalog is at epoch 2 now) and
	// writes of epoch 2 arrive; this node's catalog replica lags: it
	// pushes its list, with no snapshot, as of epoch 1.
	write(0, 2, 4)
	if err := s.SetRetainedThrough(1, nil, 1); err != nil {
		t.Fatal(err)
	}
	if n := gc(); n != 0 {
		t.Fatalf("gc with the list through epoch 1 dropped %d versions, want 0", n)
	}
	// A Zero of epoch 2 must not reclaim what the snapshot at 1 reads.
	if err := s.Zero(ctx, 1, 1, 1, Stamp{2, 5}, false); err != nil {
		t.Fatal(err)
	}
	gc()
	for _, c := range []check{{0, 1, 1}, {1, 1, 1}, {0, 2, 2}, {1, math.MaxUint64, 0}} {
		if got := readID(t, s, 1, c.block, c.epoch); got != c.want {
			t.Fatalf("block %d @%d = %d, want %d", c.block, c.epoch, got, c.want)
		}
	}
	// The snapshot is deleted: a list through epoch 2 without it frees
	// epoch 1's version of block 0.
	if err := s.SetRetainedThrough(1, nil, 2); err != nil {
		t.Fatal(err)
	}
	if n := gc(); n == 0 {
		t.Fatal("gc with the snapshot gone dropped nothing")
	}
	if got := readID(t, s, 1, 0, math.MaxUint64); got != 2 {
		t.Fatalf("live block 0 reads %d after gc", got)
	}
}

// TestGCClose: Close while a throttled GC pass waits ends the pass with
// ErrClosed instead of waiting out the throttle.
func TestGCClose(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quiet, GCBytesPerSec: 1})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, BlockSize)
	for vol := uint64(1); vol <= 2; vol++ {
		for e := uint64(1); e <= 2; e++ {
			if err := s.Write(ctx, vol, 0, buf, Stamp{e, e}, false); err != nil {
				t.Fatal(err)
			}
		}
		mustRetain(t, s, vol, nil)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := s.gc(ctx)
		errc <- err
	}()
	// The pass drops volume 1's garbage, then waits a long time.
	for s.Stats().GCVersionsDropped == 0 {
		runtime.Gosched()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("gc across close: %v, want ErrClosed", err)
	}
}

// TestGCPagesPerHold: one lock hold makes at most gcLookupsMax visibility
// lookups, examines at least one page and at most gcBatchPages.
func TestGCPagesPerHold(t *testing.T) {
	for _, readers := range []int{0, 1, 2, 3, 9, 11, 16, 17, 100, 4097} {
		per := gcPagesPerHold(readers)
		switch {
		case per < 1 || per > gcBatchPages:
			t.Fatalf("%d readers: %d pages per hold, want [1, %d]", readers, per, gcBatchPages)
		case per > 1 && per*pageBlocks*max(readers, 1) > gcLookupsMax:
			t.Fatalf("%d readers: %d pages per hold make %d lookups, at most %d", readers, per, per*pageBlocks*readers, gcLookupsMax)
		case per < gcBatchPages && (per+1)*pageBlocks*max(readers, 1) <= gcLookupsMax:
			t.Fatalf("%d readers: %d pages per hold, one more would still be within %d lookups", readers, per, gcLookupsMax)
		}
	}
}

// TestGCSkipsSingleVersionBlocks: with no rollback or zero range, GC
// examines only the blocks written in several epochs (a block's one
// version is the live volume's), drops exactly the versions no reader
// sees, and every block reads as before at the live and retained epochs,
// in pages with few such blocks and many.
func TestGCSkipsSingleVersionBlocks(t *testing.T) {
	s := openMem(t, nil)
	const vol, blocks = 1, 3 * pageBlocks
	mustRetain(t, s, vol, nil)
	var ops []op
	do := func(o op) { apply(t, s, vol, o); ops = append(ops, o) }
	do(op{block: 0, n: blocks, st: Stamp{1, 1}, id: 1})
	// Page 0: blocks 3 and 5 rewritten in epochs 2 and 3; page 1: every
	// block rewritten in epoch 2; page 2: nothing.
	for _, b := range []uint64{3, 5} {
		do(op{block: b, n: 1, st: Stamp{2, 2}, id: 2})
		do(op{block: b, n: 1, st: Stamp{3, 3}, id: 3})
	}
	do(op{block: pageBlocks, n: pageBlocks, st: Stamp{2, 4}, id: 4})
	readers := []uint64{1, math.MaxUint64}
	mustRetain(t, s, vol, readers[:1])
	before := versions(s, vol)
	res, err := s.gc(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Examined: blocks 3 and 5 and page 1. Dropped: the epoch 2 versions
	// of blocks 3 and 5 (the reader at 1 sees epoch 1's, the live one 3's).
	if want := uint64(2 + pageBlocks); res.examined != want {
		t.Fatalf("gc examined %d blocks, want %d", res.examined, want)
	}
	if res.dropped != 2 || versions(s, vol) != before-2 {
		t.Fatalf("gc dropped %d versions (%d -> %d), want 2", res.dropped, before, versions(s, vol))
	}
	for b := range uint64(blocks) {
		for _, e := range readers {
			if got, want := readID(t, s, vol, b, e), expect(ops, b, e); got != want {
				t.Fatalf("block %d at epoch %d reads write %d, want %d", b, e, got, want)
			}
		}
	}
}

// TestRetainedShrinkUnsynced: a retained list that adds an epoch is synced
// before SetRetained returns; one that only drops epochs is written
// without a sync, so a crash leaves the list before it or after it — each
// holds every epoch of the new one — and the next list that adds an epoch
// makes both durable.
func TestRetainedShrinkUnsynced(t *testing.T) {
	const vol = 1
	loaded := func(fs *vfs.MemFS, unsynced int) []uint64 {
		t.Helper()
		s, err := Open("db", crashOpts(fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsynced, RNG: rand.New(rand.NewPCG(1, uint64(unsynced)))})))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = s.Close() }()
		v := s.lookup(vol)
		if v == nil {
			return nil
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		return slices.Clone(v.retained)
	}
	fs := vfs.NewCrashableMem()
	s, err := Open("db", crashOpts(fs))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	steps := []struct {
		set    []uint64
		synced bool // the list a crash with no unsynced data keeps is this one
	}{
		{[]uint64{1, 2, 3}, true},
		{[]uint64{2, 3}, false},   // drops 1
		{[]uint64{3}, false},      // drops 2
		{[]uint64{3, 4}, true},    // adds 4
		{[]uint64{3, 4}, true},    // the same: nothing to sync
		{nil, false},              // drops all
		{[]uint64{5}, true},       // adds 5
		{[]uint64{7, 5, 5}, true}, // adds 7, unsorted and repeated
		{[]uint64{7}, false},      // drops 5: kept by a clean close, below
	}
	durable := []uint64(nil)
	for i, st := range steps {
		mustRetain(t, s, vol, st.set)
		want := slices.Compact(slices.Sorted(slices.Values(st.set)))
		if st.synced {
			durable = want
		}
		got := loaded(fs, 0)
		if !slices.Equal(got, durable) {
			t.Fatalf("step %d (set %v): a crash keeps %v, want %v", i, st.set, got, durable)
		}
		if !subsetSorted(want, got) {
			t.Fatalf("step %d (set %v): a crash keeps %v, which lacks some of them", i, st.set, got)
		}
		// With the unsynced data kept: the list before or this one (the
		// unsynced write may not have left pebble's buffer).
		if got := loaded(fs, 100); !slices.Equal(got, want) && !slices.Equal(got, durable) {
			t.Fatalf("step %d (set %v): with unsynced data kept a crash leaves %v, want %v or %v", i, st.set, got, want, durable)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := loaded(fs, 0); !slices.Equal(got, []uint64{7}) {
		t.Fatalf("after a clean close the store keeps %v, want [7]", got)
	}
}

func TestSubsetSorted(t *testing.T) {
	for _, c := range []struct {
		a, b []uint64
		want bool
	}{
		{nil, nil, true},
		{nil, []uint64{1}, true},
		{[]uint64{1}, nil, false},
		{[]uint64{1, 3}, []uint64{1, 2, 3}, true},
		{[]uint64{1, 4}, []uint64{1, 2, 3}, false},
		{[]uint64{0}, []uint64{1}, false},
		{[]uint64{2, 3}, []uint64{2, 3}, true},
		{[]uint64{1, 2, 3}, []uint64{2, 3}, false},
	} {
		if got := subsetSorted(c.a, c.b); got != c.want {
			t.Errorf("subsetSorted(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}
