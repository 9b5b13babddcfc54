package store

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// linModel is the model of several volumes with lineages: per volume its
// ops and its lineage.
type linModel struct {
	ops map[uint64][]op
	lin map[uint64]Lineage
}

func newLinModel() *linModel {
	return &linModel{ops: map[uint64][]op{}, lin: map[uint64]Lineage{}}
}

// expect returns the id a read of vol's block at epoch sees (0: zeros),
// by the rule of Lineage's doc, written independently of the store's code.
func (m *linModel) expect(vol, block, epoch uint64) byte {
	o := m.find(vol, block, epoch)
	if o == nil || o.zero {
		return 0
	}
	return o.id
}

// find returns the op a read of vol's block at epoch sees, nil for none.
func (m *linModel) find(vol, block, epoch uint64) *op {
	for range lineageDepthMax + 1 {
		l := m.lin[vol]
		e := epoch
		for {
			// the rollback with the greatest To below e
			var rb *Rollback
			for i := range l.Rollbacks {
				if l.Rollbacks[i].To < e && (rb == nil || l.Rollbacks[i].To > rb.To) {
					rb = &l.Rollbacks[i]
				}
			}
			lo := uint64(0)
			if rb != nil {
				lo = rb.To + 1
			}
			var best *op
			for i := range m.ops[vol] {
				o := &m.ops[vol][i]
				if block < o.block || block >= o.block+o.n || o.st.Epoch > e || o.st.Epoch < lo {
					continue
				}
				if best == nil || newer(o.st.Epoch, o.st.Seq, best.st.Epoch, best.st.Seq) {
					best = o
				}
			}
			if best != nil {
				return best
			}
			if rb == nil {
				break
			}
			e = rb.From
		}
		if l.Parent == 0 {
			return nil
		}
		vol, epoch = l.Parent, l.ParentEpoch
	}
	panic("model lineage too deep")
}

// differs reports whether reads of vol's block at from and at to see
// different writes (zeros count as one and the same).
func (m *linModel) differs(vol, block, from, to uint64) bool {
	a, b := m.find(vol, block, from), m.find(vol, block, to)
	if a == nil || a.zero {
		return b != nil && !b.zero
	}
	return a != b
}

// check compares every block of vol at every epoch of epochs, and Extents,
// against the model.
func (m *linModel) check(t *testing.T, s *Store, vol, blocks uint64, epochs []uint64) {
	t.Helper()
	for _, e := range epochs {
		want := make([]bool, blocks)
		var alloc uint64
		for b := range blocks {
			id := m.expect(vol, b, e)
			if got := readID(t, s, vol, b, e); got != id {
				t.Fatalf("vol %d block %d @%d = %d, want %d (lineage %+v)", vol, b, e, got, id, m.lin[vol])
			}
			want[b] = id != 0
			if want[b] {
				alloc++
			}
		}
		next := uint64(0)
		var prev *bool
		err := s.Extents(ctx, vol, 0, blocks, e, func(start, count uint64, allocated bool) bool {
			if start != next || count == 0 {
				t.Fatalf("vol %d @%d: extent (%d,+%d) after %d", vol, e, start, count, next)
			}
			if prev != nil && *prev == allocated {
				t.Fatalf("vol %d @%d: extent (%d,+%d) not maximal", vol, e, start, count)
			}
			for b := start; b < start+count; b++ {
				if want[b] != allocated {
					t.Fatalf("vol %d @%d: extent (%d,+%d,%v) but block %d allocated=%v", vol, e, start, count, allocated, b, want[b])
				}
			}
			next = start + count
			prev = &allocated
			return true
		})
		if err != nil || next != blocks {
			t.Fatalf("vol %d @%d: extents: %v, covered %d of %d", vol, e, err, next, blocks)
		}
		// Past the written blocks the volume reads as its parent does,
		// which reads as nothing: one hole to BlocksMax.
		if got, err := s.Allocated(ctx, vol, e); err != nil || got != alloc {
			t.Fatalf("vol %d @%d: allocated = %d, %v; want %d", vol, e, got, err, alloc)
		}
	}
}

// linHistory drives a random history over a chain of forks: volume 1, 2
// forked from 1, 3 forked from 2; writes and zeros on all three, forks
// made at the current epoch, and rollbacks, each followed by a new epoch.
type linHistory struct {
	rng   *rand.Rand
	m     *linModel
	epoch uint64
	seq   uint64
	vols  []uint64
}

func newLinHistory(seed uint64) *linHistory {
	return &linHistory{rng: rand.New(rand.NewPCG(seed, 0x11e)), m: newLinModel(), epoch: 1, vols: []uint64{1}}
}

// step applies one random event to s and the model.
func (h *linHistory) step(t *testing.T, s *Store, blocks uint64) {
	t.Helper()
	switch r := h.rng.IntN(40); {
	case r == 0 && len(h.vols) < 3:
		parent := h.vols[len(h.vols)-1]
		vol := parent + 1
		l := Lineage{Parent: parent, ParentEpoch: h.epoch}
		if err := s.SetLineage(vol, l); err != nil {
			t.Fatal(err)
		}
		h.m.lin[vol] = l
		h.vols = append(h.vols, vol)
		h.epoch++
	case r == 1:
		vol := h.vols[h.rng.IntN(len(h.vols))]
		l := h.m.lin[vol]
		l.Rollbacks = append(slices.Clone(l.Rollbacks), Rollback{From: h.rng.Uint64N(h.epoch), To: h.epoch})
		if err := s.SetLineage(vol, l); err != nil {
			t.Fatal(err)
		}
		h.m.lin[vol] = l
		h.epoch++
	case r < 6:
		h.epoch++
	default:
		vol := h.vols[h.rng.IntN(len(h.vols))]
		h.seq++
		o := op{st: Stamp{h.epoch, h.seq}, id: byte(1 + h.rng.IntN(255))}
		if h.rng.IntN(4) == 0 {
			o.zero = true
			o.n = 1 + h.rng.Uint64N(8)
			if h.rng.IntN(2) == 0 {
				o.n = zeroRangeBlocksMin + h.rng.Uint64N(blocks-zeroRangeBlocksMin)
			}
		} else {
			o.n = 1 + h.rng.Uint64N(8)
		}
		o.block = h.rng.Uint64N(blocks - o.n + 1)
		apply(t, s, vol, o)
		h.m.ops[vol] = append(h.m.ops[vol], o)
	}
}

func (h *linHistory) epochs() []uint64 {
	es := make([]uint64, 0, h.epoch+2)
	for e := range h.epoch + 1 {
		es = append(es, e)
	}
	return append(es, math.MaxUint64)
}

// TestModelLineage runs random histories of forks of forks, rollbacks,
// writes and zeros, and checks every block of every volume at every epoch,
// and Extents, against the model; again after a reopen. Reclaiming is off
// (epoch 0 retained) and GC waits (the retained list is set before the
// first write, see gc.go): reads at every epoch are checked.
func TestModelLineage(t *testing.T) {
	const blocks = 160
	for seed := range uint64(12) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			fs := vfs.NewMem()
			s := openMem(t, fs)
			h := newLinHistory(seed)
			for _, vol := range []uint64{1, 2, 3} {
				mustRetain(t, s, vol, []uint64{0})
			}
			for range 300 {
				h.step(t, s, blocks)
			}
			for _, vol := range h.vols {
				h.m.check(t, s, vol, blocks, h.epochs())
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openMem(t, fs)
			for _, vol := range h.vols {
				if got := s.GetLineage(vol); fmt.Sprint(got) != fmt.Sprint(h.m.lin[vol]) {
					t.Fatalf("vol %d lineage after reopen %+v, want %+v", vol, got, h.m.lin[vol])
				}
				h.m.check(t, s, vol, blocks, h.epochs())
			}
		})
	}
}

// TestRollbackSemantics pins the rollback rule with a table.
func TestRollbackSemantics(t *testing.T) {
	s := openMem(t, nil)
	mustRetain(t, s, 1, []uint64{0})
	w := func(block uint64, epoch, seq uint64, id byte) {
		apply(t, s, 1, op{block: block, n: 1, st: Stamp{epoch, seq}, id: id})
	}
	w(0, 1, 1, 'a') // snapshot at 1 sees a
	w(0, 3, 2, 'b') // snapshot at 3 sees b
	w(1, 3, 3, 'c')
	w(0, 5, 4, 'd')
	// Rollback at 6 to the snapshot at 3, then writes at 7.
	if err := s.SetLineage(1, Lineage{Rollbacks: []Rollback{{From: 3, To: 6}}}); err != nil {
		t.Fatal(err)
	}
	w(1, 7, 5, 'e')
	// Rollback at 8 to the snapshot at 1: its From lies inside the first
	// rollback's hidden range, and still reads what the snapshot at 1 saw.
	if err := s.SetLineage(1, Lineage{Rollbacks: []Rollback{{From: 3, To: 6}, {From: 1, To: 8}}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []check{
		{0, 1, 'a'}, {0, 3, 'b'}, {0, 5, 'd'}, {0, 6, 'd'}, // before each rollback: unchanged
		{0, 7, 'b'}, {1, 7, 'e'}, {1, 6, 'c'}, // after the first
		{0, 9, 'a'}, {1, 9, 0}, {0, math.MaxUint64, 'a'}, // after the second
	} {
		if got := readID(t, s, 1, c.block, c.epoch); got != c.want {
			t.Errorf("block %d @%d = %q, want %q", c.block, c.epoch, got, c.want)
		}
	}
	// The crossing case: rollback at 6 to 3, then at 8 to the snapshot at
	// 4, taken before the first rollback: the live volume reads what the
	// snapshot at 4 read (b), which hiding (3, 6] and (4, 8] would lose.
	w(2, 4, 6, 'f')
	if err := s.SetLineage(1, Lineage{Rollbacks: []Rollback{{From: 3, To: 6}, {From: 4, To: 8}}}); err != nil {
		t.Fatal(err)
	}
	if got := readID(t, s, 1, 2, 9); got != 'f' {
		t.Errorf("crossing rollback: block 2 @9 = %q, want f", got)
	}
}

func TestLineageInvalid(t *testing.T) {
	s := openMem(t, nil)
	for name, l := range map[string]Lineage{
		"own parent":     {Parent: 1},
		"from above to":  {Rollbacks: []Rollback{{From: 5, To: 5}}},
		"not ascending":  {Rollbacks: []Rollback{{From: 1, To: 5}, {From: 2, To: 5}}},
		"descending":     {Rollbacks: []Rollback{{From: 1, To: 5}, {From: 2, To: 4}}},
		"too many":       {Rollbacks: make([]Rollback, rollbacksMax+1)},
		"from above to2": {Rollbacks: []Rollback{{From: 9, To: 5}}},
	} {
		err := s.SetLineage(1, l)
		if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrLimit) {
			t.Errorf("%s: %v, want ErrInvalid or ErrLimit", name, err)
		}
	}
	if got := s.GetLineage(1); !got.isZero() {
		t.Fatalf("a refused lineage was set: %+v", got)
	}
	if err := s.SetRetained(1, make([]uint64, retainedEpochsMax+1)); err != nil {
		t.Fatalf("duplicates count once: %v", err)
	}
	many := make([]uint64, retainedEpochsMax+1)
	for i := range many {
		many[i] = uint64(i)
	}
	if err := s.SetRetained(1, many); !errors.Is(err, ErrLimit) {
		t.Fatalf("too many retained epochs: %v, want ErrLimit", err)
	}
}

// TestLineageDepth: a chain of forks reads through up to lineageDepthMax
// parents; one more, or a cycle, fails with ErrLimit instead of looping.
func TestLineageDepth(t *testing.T) {
	s := openMem(t, nil)
	buf := make([]byte, BlockSize)
	fill(buf, 'p', 0)
	if err := s.Write(ctx, 1, 0, buf, Stamp{1, 1}, false); err != nil {
		t.Fatal(err)
	}
	for vol := uint64(2); vol <= lineageDepthMax+2; vol++ {
		if err := s.SetLineage(vol, Lineage{Parent: vol - 1, ParentEpoch: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if got := readID(t, s, lineageDepthMax+1, 0, 1); got != 'p' {
		t.Fatalf("fork %d deep = %q", lineageDepthMax, got)
	}
	err := s.Read(ctx, lineageDepthMax+2, 0, buf, 1)
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("read %d deep: %v, want ErrLimit", lineageDepthMax+1, err)
	}
	if err := s.Extents(ctx, lineageDepthMax+2, 0, 10, 1, func(_, _ uint64, _ bool) bool { return true }); !errors.Is(err, ErrLimit) {
		t.Fatalf("extents %d deep: %v, want ErrLimit", lineageDepthMax+1, err)
	}
	// A cycle.
	if err := s.SetLineage(100, Lineage{Parent: 101}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLineage(101, Lineage{Parent: 100}); err != nil {
		t.Fatal(err)
	}
	if err := s.Read(ctx, 100, 0, buf, 1); !errors.Is(err, ErrLimit) {
		t.Fatalf("read of a cycle: %v, want ErrLimit", err)
	}
	if err := s.Extents(ctx, 100, 0, 1<<40, 1, func(_, _ uint64, _ bool) bool { return true }); !errors.Is(err, ErrLimit) {
		t.Fatalf("extents of a cycle: %v, want ErrLimit", err)
	}
}

// TestForkOfLargeVolume: a fork of a sparse 1 TiB volume reports its
// parent's allocation over the whole range from the pages written, not per
// block, and reads its parent's data.
func TestForkOfLargeVolume(t *testing.T) {
	const blocks = 1 << 28
	s := openMem(t, nil)
	buf := make([]byte, BlockSize)
	want := map[uint64]bool{}
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range uint64(200) {
		b := rng.Uint64N(blocks)
		fill(buf, 'p', b)
		if err := s.Write(ctx, 1, b, buf, Stamp{1, i + 1}, false); err != nil {
			t.Fatal(err)
		}
		want[b] = true
	}
	// The parent writes on after the fork; the fork sees epoch 1 only.
	fill(buf, 'p', 7)
	if err := s.Write(ctx, 1, 7, buf, Stamp{2, 1000}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLineage(2, Lineage{Parent: 1, ParentEpoch: 1}); err != nil {
		t.Fatal(err)
	}
	// The fork zeroes a large range and writes a few blocks of its own.
	if err := s.Zero(ctx, 2, 0, blocks/2, Stamp{1, 1}, false); err != nil {
		t.Fatal(err)
	}
	for b := range want {
		if b < blocks/2 {
			delete(want, b)
		}
	}
	fill(buf, 'c', 3)
	if err := s.Write(ctx, 2, 3, buf, Stamp{1, 2}, false); err != nil {
		t.Fatal(err)
	}
	want[3] = true
	got := map[uint64]bool{}
	if err := s.Extents(ctx, 2, 0, blocks, math.MaxUint64, func(start, count uint64, alloc bool) bool {
		if alloc {
			for b := start; b < start+count; b++ {
				got[b] = true
			}
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fork allocation %v, want %v", got, want)
	}
	for b := range want {
		id := readID(t, s, 2, b, math.MaxUint64)
		if w := map[bool]byte{true: 'c', false: 'p'}[b == 3]; id != w {
			t.Fatalf("fork block %d = %q, want %q", b, id, w)
		}
	}
	if id := readID(t, s, 2, 7, math.MaxUint64); id != 0 {
		t.Fatalf("fork sees the parent's write after the fork: %q", id)
	}
}

// TestLineageCrash: SetLineage and SetRetained are durable when they
// return: a crash right after keeps them; DropVolume removes them.
func TestLineageCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := Open("db", crashOpts(fs))
	if err != nil {
		t.Fatal(err)
	}
	want := Lineage{Parent: 1, ParentEpoch: 4, Rollbacks: []Rollback{{From: 2, To: 9}}}
	if err := s.SetLineage(2, want); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRetained(1, []uint64{4, 6}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLineage(3, Lineage{Parent: 1, ParentEpoch: 6}); err != nil {
		t.Fatal(err)
	}
	if err := s.DropVolume(3); err != nil {
		t.Fatal(err)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	_ = s.Close()
	s, err = Open("db", crashOpts(crashed))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if got := s.GetLineage(2); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lineage after crash %+v, want %+v", got, want)
	}
	if got := s.lookup(1).retained; !slices.Equal(got, []uint64{4, 6}) {
		t.Fatalf("retained after crash %v", got)
	}
	if got := s.GetLineage(3); !got.isZero() {
		t.Fatalf("dropped volume kept its lineage: %+v", got)
	}
	// Clearing is durable too.
	if err := s.SetLineage(2, Lineage{}); err != nil {
		t.Fatal(err)
	}
	crashed = crashed.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	s2, err := Open("db", crashOpts(crashed))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s2.Close() }()
	if got := s2.GetLineage(2); !got.isZero() {
		t.Fatalf("cleared lineage after crash %+v", got)
	}
}

// changedRuns collects Changed over [0, blocks) as one bool per block and
// checks that the runs cover the range in order and are maximal.
func changedRuns(t *testing.T, changed func(fn func(start, count uint64, changed bool) bool) error, blocks uint64) []bool {
	t.Helper()
	got := make([]bool, blocks)
	next := uint64(0)
	var prev *bool
	if err := changed(func(start, count uint64, ch bool) bool {
		if start != next || count == 0 || start+count > blocks {
			t.Fatalf("changed run (%d,+%d) after %d", start, count, next)
		}
		if prev != nil && *prev == ch {
			t.Fatalf("changed run (%d,+%d) not maximal", start, count)
		}
		for b := start; b < start+count; b++ {
			got[b] = ch
		}
		next, prev = start+count, &ch
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if next != blocks {
		t.Fatalf("changed covered %d of %d blocks", next, blocks)
	}
	return got
}

// TestModelChanged: over random histories of forks, rollbacks, writes and
// zeros, Changed between every pair of epochs reports exactly the blocks
// whose reads see different writes: it never misses a changed block (a
// block not reported reads the same at both epochs), and reports no block
// whose reads see the same write.
func TestModelChanged(t *testing.T) {
	const blocks = 400
	for seed := range uint64(6) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			s := openMem(t, nil)
			h := newLinHistory(seed + 100)
			for _, vol := range []uint64{1, 2, 3} {
				mustRetain(t, s, vol, []uint64{0})
			}
			for range 300 {
				h.step(t, s, blocks)
			}
			es := h.epochs()
			for _, vol := range h.vols {
				for i, from := range es {
					for _, to := range es[i+1:] {
						if h.rng.IntN(6) != 0 {
							continue
						}
						got := changedRuns(t, func(fn func(uint64, uint64, bool) bool) error {
							return s.Changed(ctx, vol, 0, blocks, from, to, fn)
						}, blocks)
						for b := range uint64(blocks) {
							want := h.m.differs(vol, b, from, to)
							if got[b] != want {
								t.Fatalf("vol %d block %d from %d to %d: changed=%v, model says %v (reads %d, %d; lineage %+v)",
									vol, b, from, to, got[b], want, h.m.expect(vol, b, from), h.m.expect(vol, b, to), h.m.lin[vol])
							}
							if !got[b] && b%7 == 0 && readID(t, s, vol, b, from) != readID(t, s, vol, b, to) {
								t.Fatalf("vol %d block %d from %d to %d: not reported changed but reads differ", vol, b, from, to)
							}
						}
					}
				}
			}
		})
	}
}

func TestChangedInvalid(t *testing.T) {
	s := openMem(t, nil)
	nop := func(_, _ uint64, _ bool) bool { return true }
	for name, err := range map[string]error{
		"from = to":    s.Changed(ctx, 1, 0, 10, 3, 3, nop),
		"from > to":    s.Changed(ctx, 1, 0, 10, 4, 3, nop),
		"empty":        s.Changed(ctx, 1, 0, 0, 1, 3, nop),
		"past the end": s.Changed(ctx, 1, BlocksMax-1, 2, 1, 3, nop),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// A large volume: the walk costs the pages written, and stops when fn
	// says so.
	buf := make([]byte, BlockSize)
	for i, b := range []uint64{5, 1 << 30, 1 << 40} {
		if err := s.Write(ctx, 1, b, buf, Stamp{2, uint64(i + 1)}, false); err != nil {
			t.Fatal(err)
		}
	}
	var runs []uint64
	if err := s.Changed(ctx, 1, 0, BlocksMax, 1, math.MaxUint64, func(start, count uint64, ch bool) bool {
		runs = append(runs, start)
		return len(runs) < 4
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(runs, []uint64{0, 5, 6, 1 << 30}) {
		t.Fatalf("runs start at %v", runs)
	}
}
