package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// flattenHistory builds a random history of forks of forks (volumes 1, 2,
// 3), rollbacks, writes and zeros; every epoch of the fork vol is retained
// with probability 1/3 (and epoch 0, so that no Zero reclaims). It returns
// the history and the reader epochs of vol: its retained epochs and live.
func flattenHistory(t *testing.T, s *Store, seed, blocks uint64, vol uint64) (*linHistory, []uint64) {
	t.Helper()
	h := newLinHistory(seed)
	for _, v := range []uint64{1, 2, 3} {
		mustRetain(t, s, v, []uint64{0})
	}
	for range 400 {
		h.step(t, s, blocks)
	}
	if len(h.vols) < 3 {
		// Make sure the chain exists: fork at the current epoch.
		for v := uint64(len(h.vols)) + 1; v <= 3; v++ {
			l := Lineage{Parent: v - 1, ParentEpoch: h.epoch}
			if err := s.SetLineage(v, l); err != nil {
				t.Fatal(err)
			}
			h.m.lin[v] = l
			h.vols = append(h.vols, v)
		}
		for range 100 {
			h.step(t, s, blocks)
		}
	}
	retained := []uint64{0}
	for e := uint64(1); e <= h.epoch; e++ {
		if h.rng.IntN(3) == 0 {
			retained = append(retained, e)
		}
	}
	mustRetain(t, s, vol, retained)
	return h, append(retained, math.MaxUint64)
}

// checkReads compares every block of vol at each epoch with the model.
func checkReads(t *testing.T, s *Store, m *linModel, vol, blocks uint64, epochs []uint64) {
	t.Helper()
	for _, e := range epochs {
		for b := range blocks {
			if got, want := readID(t, s, vol, b, e), m.expect(vol, b, e); got != want {
				t.Fatalf("vol %d block %d @%d = %d, want %d", vol, b, e, got, want)
			}
		}
	}
}

// TestFlatten: after Flatten of a fork of a fork (with rollbacks, zeros and
// its own writes) and clearing its Parent, every block reads as before at
// the live epoch and at each retained epoch; Flatten copied only blocks
// that read through the parent's data, and a second Flatten copies nothing.
// The copies and the cleared lineage survive a crash right after.
func TestFlatten(t *testing.T) {
	const blocks = 300
	for seed := range uint64(6) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			s, err := Open("db", crashOpts(fs))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			const vol = 3
			h, readers := flattenHistory(t, s, seed+200, blocks, vol)
			checkReads(t, s, h.m, vol, blocks, readers)
			// The blocks a flatten must copy, by the model: the parent's data
			// seen through the fork at some reader epoch.
			want := 0
			for b := range uint64(blocks) {
				for _, e := range readers {
					o := h.m.find(vol, b, e)
					if o != nil && !o.zero && !ownOp(h.m, vol, o) {
						want++
						break
					}
				}
			}
			var last [2]uint64
			calls := 0
			if err := s.Flatten(ctx, vol, func(done, total uint64) {
				if done > total || (calls > 0 && (done < last[0] || total != last[1])) {
					t.Fatalf("progress (%d, %d) after %v", done, total, last)
				}
				last = [2]uint64{done, total}
				calls++
			}); err != nil {
				t.Fatal(err)
			}
			if last[0] != uint64(want) || last[1] != uint64(want) {
				t.Fatalf("flatten copied %v blocks, the model says %d", last, want)
			}
			if got := s.Stats().FlattenedBlocks; got != uint64(want) {
				t.Fatalf("FlattenedBlocks = %d, want %d", got, want)
			}
			l := h.m.lin[vol]
			l.Parent, l.ParentEpoch = 0, 0
			if err := s.SetLineage(vol, l); err != nil {
				t.Fatal(err)
			}
			checkReads(t, s, h.m, vol, blocks, readers)
			if err := s.Flatten(ctx, vol, func(done, total uint64) { last = [2]uint64{done, total} }); err != nil || last != [2]uint64{} {
				t.Fatalf("flatten without a parent: %v, progress %v", err, last)
			}
			// A crash right after: the copies were synced by Flatten, the
			// lineage by SetLineage.
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
			s2, err := Open("db", crashOpts(crashed))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s2.Close() }()
			if got := s2.GetLineage(vol); got.Parent != 0 {
				t.Fatalf("lineage after crash %+v", got)
			}
			checkReads(t, s2, h.m, vol, blocks, readers)
		})
	}
}

// ownOp reports whether o is one of vol's own ops.
func ownOp(m *linModel, vol uint64, o *op) bool {
	ops := m.ops[vol]
	for i := range ops {
		if &ops[i] == o {
			return true
		}
	}
	return false
}

// TestFlattenResume: a Flatten canceled part way (here from its progress
// callback, while its throttle waits) returns the cancel; a crash then
// keeps what was synced, and a new Flatten copies only what is left and
// completes; the fork then reads as before without its parent.
func TestFlattenResume(t *testing.T) {
	const blocks = 2000
	fs := vfs.NewCrashableMem()
	opts := crashOpts(fs)
	opts.FlattenBytesPerSec = 1 // the first chunk's wait would last hours
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	m := newLinModel()
	buf := make([]byte, BlockSize)
	for b := uint64(0); b < blocks; b++ {
		fill(buf, 'p', b)
		if err := s.Write(ctx, 1, b, buf, Stamp{1, b + 1}, false); err != nil {
			t.Fatal(err)
		}
		m.ops[1] = append(m.ops[1], op{block: b, n: 1, st: Stamp{1, b + 1}, id: 'p'})
	}
	mustRetain(t, s, 1, []uint64{1})
	m.lin[2] = Lineage{Parent: 1, ParentEpoch: 1}
	if err := s.SetLineage(2, m.lin[2]); err != nil {
		t.Fatal(err)
	}
	fill(buf, 'c', 7)
	if err := s.Write(ctx, 2, 7, buf, Stamp{2, 1}, true); err != nil {
		t.Fatal(err)
	}
	m.ops[2] = append(m.ops[2], op{block: 7, n: 1, st: Stamp{2, 1}, id: 'c'})
	cctx, cancel := context.WithCancel(ctx)
	var first [2]uint64
	err = s.Flatten(cctx, 2, func(done, total uint64) {
		first = [2]uint64{done, total}
		if done > 0 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled flatten: %v", err)
	}
	if first[0] == 0 || first[0] >= first[1] || first[1] != blocks-1 {
		t.Fatalf("canceled flatten got to %v", first)
	}
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	_ = s.Close()
	opts.FS = crashed
	opts.FlattenBytesPerSec = 0
	s, err = Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	var again [2]uint64
	if err := s.Flatten(ctx, 2, func(done, total uint64) { again = [2]uint64{done, total} }); err != nil {
		t.Fatal(err)
	}
	if again[1] != first[1]-first[0] || again[0] != again[1] {
		t.Fatalf("resumed flatten %v after %v", again, first)
	}
	if err := s.SetLineage(2, Lineage{}); err != nil {
		t.Fatal(err)
	}
	// The fork retains no epoch: its live reads are what must not change.
	checkReads(t, s, m, 2, blocks, []uint64{2, math.MaxUint64})
}

// TestFlattenClose: Close while a throttled Flatten waits ends it with
// ErrClosed instead of waiting out the throttle.
func TestFlattenClose(t *testing.T) {
	opts := Options{FS: vfs.NewMem(), Logger: quiet, FlattenBytesPerSec: 1}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4*BlockSize)
	if err := s.Write(ctx, 1, 0, buf, Stamp{1, 1}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLineage(2, Lineage{Parent: 1, ParentEpoch: 1}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		errc <- s.Flatten(ctx, 2, func(done, _ uint64) {
			if done > 0 {
				close(started)
			}
		})
	}()
	<-started
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("flatten across close: %v, want ErrClosed", err)
	}
}
