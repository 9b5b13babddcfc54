package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// ctx is the context of the tests' store calls.
var ctx = context.Background()

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openMem(t testing.TB, fs vfs.FS) *Store {
	t.Helper()
	if fs == nil {
		fs = vfs.NewMem()
	}
	s, err := Open("db", Options{FS: fs, Logger: quiet, CacheBytes: 8 << 20})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// fill writes the content op id leaves in block: the block number, then id.
func fill(buf []byte, id byte, block uint64) {
	for i := range buf {
		buf[i] = id
	}
	binary.BigEndian.PutUint64(buf, block)
}

// op is one Write or Zero in a model history.
type op struct {
	zero     bool
	block, n uint64
	st       Stamp
	sync     bool
	id       byte // content of a write (see fill); ids are non-zero
}

func (o op) String() string {
	kind := "write"
	if o.zero {
		kind = "zero"
	}
	return fmt.Sprintf("%s[%d,+%d)@(%d,%d)#%d", kind, o.block, o.n, o.st.Epoch, o.st.Seq, o.id)
}

func apply(t testing.TB, s *Store, vol uint64, o op) {
	t.Helper()
	if err := applyErr(s, vol, o); err != nil {
		t.Fatal(err)
	}
}

func applyErr(s *Store, vol uint64, o op) error {
	var err error
	if o.zero {
		err = s.Zero(ctx, vol, o.block, o.n, o.st, o.sync)
	} else {
		data := make([]byte, o.n*BlockSize)
		for i := range o.n {
			fill(data[i*BlockSize:(i+1)*BlockSize], o.id, o.block+i)
		}
		err = s.Write(ctx, vol, o.block, data, o.st, o.sync)
	}
	if err != nil {
		return fmt.Errorf("%v: %w", o, err)
	}
	return nil
}

// applyBatch applies ops[0] and, when it is a plain write (no zero, no
// sync), the plain writes right after it, at most k in all, with one
// WriteBatch. It returns how many ops it applied.
func applyBatch(t testing.TB, s *Store, vol uint64, ops []op, k int) int {
	t.Helper()
	n := 0
	for n < min(k, len(ops)) && !ops[n].zero && !ops[n].sync {
		n++
	}
	if n < 2 {
		apply(t, s, vol, ops[0])
		return 1
	}
	ws := make([]BatchWrite, n)
	for i, o := range ops[:n] {
		data := make([]byte, o.n*BlockSize)
		for j := range o.n {
			fill(data[j*BlockSize:(j+1)*BlockSize], o.id, o.block+j)
		}
		ws[i] = BatchWrite{Block: o.block, Data: data, Stamp: o.st, Err: errors.New("not set")}
		if i%2 == 0 { // half of them with their CRCs given, as the node RPC gives them
			for j := range o.n {
				ws[i].CRCs = append(ws[i].CRCs, blockCRC(data[j*BlockSize:(j+1)*BlockSize]))
			}
		}
	}
	s.WriteBatch(ctx, vol, ws)
	for i, w := range ws {
		if w.Err != nil {
			t.Fatalf("batch of %d: %v: %v", n, ops[i], w.Err)
		}
	}
	return n
}

// expect returns the id of the write visible in block at epoch, 0 for zeros:
// the op with the greatest stamp among those covering block with epoch <=
// epoch.
func expect(ops []op, block, epoch uint64) byte {
	var best *op
	for i := range ops {
		o := &ops[i]
		if block < o.block || block >= o.block+o.n || o.st.Epoch > epoch {
			continue
		}
		if best == nil || newer(o.st.Epoch, o.st.Seq, best.st.Epoch, best.st.Seq) {
			best = o
		}
	}
	if best == nil || best.zero {
		return 0
	}
	return best.id
}

// mustRetain sets the retained epochs of vol.
func mustRetain(t testing.TB, s *Store, vol uint64, epochs []uint64) {
	t.Helper()
	if err := s.SetRetained(vol, epochs); err != nil {
		t.Fatalf("set retained of vol %d: %v", vol, err)
	}
}

// readID reads one block and returns the id of its content, 0 for zeros.
func readID(t testing.TB, s *Store, vol, block, epoch uint64) byte {
	t.Helper()
	got := make([]byte, BlockSize)
	if err := s.Read(ctx, vol, block, got, epoch); err != nil {
		t.Fatalf("read vol %d block %d @%d: %v", vol, block, epoch, err)
	}
	if bytes.Equal(got, make([]byte, BlockSize)) {
		return 0
	}
	want := make([]byte, BlockSize)
	fill(want, got[8], block)
	if !bytes.Equal(got, want) {
		t.Fatalf("read vol %d block %d @%d: garbage %x...", vol, block, epoch, got[:16])
	}
	return got[8]
}

type check struct {
	block, epoch uint64
	want         byte
}

func TestSemantics(t *testing.T) {
	w := func(block, n, epoch, seq uint64, id byte) op {
		return op{block: block, n: n, st: Stamp{epoch, seq}, id: id}
	}
	z := func(block, n, epoch, seq uint64) op {
		return op{zero: true, block: block, n: n, st: Stamp{epoch, seq}}
	}
	cases := []struct {
		name   string
		ops    []op
		checks []check
	}{
		{
			name:   "newest epoch at or below the read epoch",
			ops:    []op{w(5, 1, 1, 1, 'a'), w(5, 1, 3, 2, 'b')},
			checks: []check{{5, 0, 0}, {5, 1, 'a'}, {5, 2, 'a'}, {5, 3, 'b'}, {5, 9, 'b'}, {4, 9, 0}, {6, 9, 0}},
		},
		{
			name:   "highest seq wins within an epoch",
			ops:    []op{w(0, 2, 1, 5, 'a'), w(1, 2, 1, 3, 'b')},
			checks: []check{{0, 1, 'a'}, {1, 1, 'a'}, {2, 1, 'b'}},
		},
		{
			name:   "epoch beats seq",
			ops:    []op{w(0, 1, 2, 1, 'a'), w(0, 1, 1, 9, 'b')},
			checks: []check{{0, 1, 'b'}, {0, 2, 'a'}},
		},
		{
			name:   "zero range masks an older write",
			ops:    []op{w(0, 100, 1, 1, 'a'), z(10, 80, 1, 2)},
			checks: []check{{9, 1, 'a'}, {10, 1, 0}, {50, 1, 0}, {89, 1, 0}, {90, 1, 'a'}},
		},
		{
			name:   "write after zero range",
			ops:    []op{z(0, 100, 1, 1), w(50, 1, 1, 2, 'c')},
			checks: []check{{49, 1, 0}, {50, 1, 'c'}, {51, 1, 0}},
		},
		{
			name:   "straggler write with lower seq stays masked",
			ops:    []op{z(0, 128, 2, 5), w(7, 1, 2, 3, 'x'), w(8, 1, 1, 9, 'y')},
			checks: []check{{7, 2, 0}, {8, 2, 0}, {8, 1, 'y'}, {7, 1, 0}},
		},
		{
			name:   "snapshot epoch sees data under a later zero",
			ops:    []op{w(3, 1, 1, 1, 'a'), z(0, 128, 2, 2)},
			checks: []check{{3, 1, 'a'}, {3, 2, 0}, {3, 3, 0}},
		},
		{
			name:   "small zero as points",
			ops:    []op{w(0, 8, 1, 1, 'a'), z(2, 3, 1, 2), w(3, 1, 1, 3, 'b')},
			checks: []check{{1, 1, 'a'}, {2, 1, 0}, {3, 1, 'b'}, {4, 1, 0}, {5, 1, 'a'}},
		},
		{
			name:   "small zero with lower seq loses",
			ops:    []op{w(0, 8, 1, 4, 'a'), z(2, 3, 1, 2)},
			checks: []check{{2, 1, 'a'}, {4, 1, 'a'}},
		},
		{
			name: "overlapping ranges in one epoch",
			ops: []op{z(0, 200, 1, 1), w(150, 1, 1, 2, 'w'), z(100, 200, 1, 3), w(120, 1, 1, 4, 'q'),
				w(50, 1, 1, 0, 'o')},
			checks: []check{{50, 1, 0}, {120, 1, 'q'}, {150, 1, 0}, {299, 1, 0}, {300, 1, 0}},
		},
		{
			name:   "covered lower-seq range is redundant",
			ops:    []op{z(0, 200, 1, 5), z(10, 90, 1, 3), w(20, 1, 1, 4, 'k'), w(21, 1, 1, 6, 'm')},
			checks: []check{{20, 1, 0}, {21, 1, 'm'}},
		},
		{
			name:   "ranges across epochs",
			ops:    []op{w(0, 4, 1, 1, 'a'), z(0, 100, 2, 2), w(1, 1, 3, 3, 'b'), z(0, 64, 4, 4), w(2, 1, 4, 5, 'c')},
			checks: []check{{0, 1, 'a'}, {0, 2, 0}, {1, 3, 'b'}, {1, 4, 0}, {2, 4, 'c'}, {2, 3, 0}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The model and the store must agree with the table.
			for _, c := range tc.checks {
				if got := expect(tc.ops, c.block, c.epoch); got != c.want {
					t.Fatalf("model: block %d @%d = %q, table says %q", c.block, c.epoch, got, c.want)
				}
			}
			// Every arrival order gives the same result. Reclaiming is off
			// (epoch 0 retained) because it assumes stamp order.
			perm := slices.Clone(tc.ops)
			permute(perm, 0, func(order []op) {
				s := openMem(t, nil)
				mustRetain(t, s, 1, []uint64{0})
				for _, o := range order {
					apply(t, s, 1, o)
				}
				for _, c := range tc.checks {
					if got := readID(t, s, 1, c.block, c.epoch); got != c.want {
						t.Fatalf("order %v: block %d @%d = %q, want %q", order, c.block, c.epoch, got, c.want)
					}
				}
				_ = s.Close()
			})
			// In stamp order with reclaiming on, reads at the newest epoch
			// are the same.
			s := openMem(t, nil)
			inOrder := slices.SortedFunc(slices.Values(tc.ops), func(a, b op) int {
				if newer(a.st.Epoch, a.st.Seq, b.st.Epoch, b.st.Seq) {
					return 1
				}
				return -1
			})
			for _, o := range inOrder {
				apply(t, s, 1, o)
			}
			for _, c := range tc.checks {
				if c.epoch < inOrder[len(inOrder)-1].st.Epoch {
					continue
				}
				if got := readID(t, s, 1, c.block, c.epoch); got != c.want {
					t.Fatalf("reclaiming: block %d @%d = %q, want %q", c.block, c.epoch, got, c.want)
				}
			}
		})
	}
}

// permute calls fn with every permutation of ops[k:] (ops[:k] fixed).
func permute(ops []op, k int, fn func([]op)) {
	if k == len(ops) {
		fn(ops)
		return
	}
	for i := k; i < len(ops); i++ {
		ops[k], ops[i] = ops[i], ops[k]
		permute(ops, k+1, fn)
		ops[k], ops[i] = ops[i], ops[k]
	}
}

// randomOps returns n ops on blocks [0, blocks) with unique seqs; epochs
// grow with seq. Zeros are small (points) or large (ranges).
func randomOps(rng *rand.Rand, n int, blocks uint64, firstSeq uint64, epoch *uint64) []op {
	ops := make([]op, 0, n)
	for i := range n {
		if rng.IntN(8) == 0 {
			*epoch++
		}
		o := op{st: Stamp{*epoch, firstSeq + uint64(i)}, sync: rng.IntN(5) == 0, id: byte(1 + rng.IntN(255))}
		if rng.IntN(4) == 0 {
			o.zero = true
			if rng.IntN(2) == 0 {
				o.n = 1 + rng.Uint64N(zeroRangeBlocksMin-1)
			} else {
				o.n = zeroRangeBlocksMin + rng.Uint64N(blocks)
			}
		} else {
			o.n = 1 + rng.Uint64N(8)
		}
		o.n = min(o.n, blocks)
		o.block = rng.Uint64N(blocks - o.n + 1)
		ops = append(ops, o)
	}
	return ops
}

// checkModel compares every block at the given epochs, Extents and
// Allocated against the model.
func checkModel(t *testing.T, s *Store, vol uint64, ops []op, blocks uint64, epochs []uint64) {
	t.Helper()
	for _, e := range epochs {
		var alloc uint64
		want := make([]bool, blocks)
		for b := range blocks {
			id := expect(ops, b, e)
			if got := readID(t, s, vol, b, e); got != id {
				t.Fatalf("block %d @%d = %d, want %d", b, e, got, id)
			}
			want[b] = id != 0
			if want[b] {
				alloc++
			}
		}
		// Extents: consecutive, covering, maximal runs matching the model.
		next := uint64(0)
		var prev *bool
		err := s.Extents(ctx, vol, 0, blocks, e, func(start, count uint64, allocated bool) bool {
			if start != next || count == 0 {
				t.Fatalf("@%d: extent (%d,+%d) after %d", e, start, count, next)
			}
			if prev != nil && *prev == allocated {
				t.Fatalf("@%d: extent (%d,+%d) not maximal", e, start, count)
			}
			for b := start; b < start+count; b++ {
				if want[b] != allocated {
					t.Fatalf("@%d: extent (%d,+%d,%v) but block %d allocated=%v", e, start, count, allocated, b, want[b])
				}
			}
			next = start + count
			prev = &allocated
			return true
		})
		if err != nil || next != blocks {
			t.Fatalf("@%d: extents: %v, covered %d of %d", e, err, next, blocks)
		}
		if got, err := s.Allocated(ctx, vol, e); err != nil || got != alloc {
			t.Fatalf("@%d: allocated = %d, %v; want %d", e, got, err, alloc)
		}
	}
}

// TestModelAnyOrder applies random histories in random order without
// reclaiming and checks every block at every epoch, then again after a
// reopen.
func TestModelAnyOrder(t *testing.T) {
	const blocks = 200
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			epoch := uint64(1)
			ops := randomOps(rng, 120, blocks, 1, &epoch)
			order := slices.Clone(ops)
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			fs := vfs.NewMem()
			s := openMem(t, fs)
			mustRetain(t, s, 7, []uint64{0})
			for _, o := range order {
				apply(t, s, 7, o)
			}
			epochs := []uint64{0, 1, epoch / 2, epoch, epoch + 1}
			checkModel(t, s, 7, ops, blocks, epochs)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openMem(t, fs)
			checkModel(t, s, 7, ops, blocks, epochs)
		})
	}
}

// TestModelReclaim applies random histories in stamp order with reclaiming
// and retained epochs, checking the live epoch and the retained ones.
func TestModelReclaim(t *testing.T) {
	const blocks = 200
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 2))
			s := openMem(t, nil)
			epoch := uint64(1)
			var ops []op
			var retained []uint64
			for round := range 4 {
				more := randomOps(rng, 40, blocks, uint64(len(ops)+1), &epoch)
				for _, o := range more {
					apply(t, s, 3, o)
				}
				ops = append(ops, more...)
				if round%2 == 1 {
					retained = append(retained, epoch)
					mustRetain(t, s, 3, retained)
				}
				epoch++
				checkModel(t, s, 3, ops, blocks, append(slices.Clone(retained), epoch))
			}
			if n := s.lookup(3).ranges.Load().len(); n > len(ops) {
				t.Fatalf("%d ranges after %d ops", n, len(ops))
			}
		})
	}
}

func TestExtentsStopsEarly(t *testing.T) {
	s := openMem(t, nil)
	buf := make([]byte, BlockSize)
	for _, b := range []uint64{3, 4, 10} {
		if err := s.Write(ctx, 1, b, buf, Stamp{1, b}, false); err != nil {
			t.Fatal(err)
		}
	}
	type ext struct {
		start, count uint64
		alloc        bool
	}
	var got []ext
	err := s.Extents(ctx, 1, 2, 20, 1, func(start, count uint64, alloc bool) bool {
		got = append(got, ext{start, count, alloc})
		return len(got) < 3
	})
	want := []ext{{2, 1, false}, {3, 2, true}, {5, 5, false}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("extents = %v, %v; want %v", got, err, want)
	}
	// Epoch 0 sees nothing: one hole.
	got = nil
	if err := s.Extents(ctx, 1, 0, 100, 0, func(start, count uint64, alloc bool) bool {
		got = append(got, ext{start, count, alloc})
		return true
	}); err != nil || !slices.Equal(got, []ext{{0, 100, false}}) {
		t.Fatalf("extents @0 = %v, %v", got, err)
	}
}

func TestZero1TiB(t *testing.T) {
	const blocks = 1 << 28 // 1 TiB
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quiet, SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	buf := make([]byte, 4*BlockSize)
	rng := rand.New(rand.NewPCG(1, 1))
	seq := uint64(0)
	var allocated uint64
	for range 500 {
		seq++
		b := rng.Uint64N(blocks/4) * 4
		if err := s.Write(ctx, 9, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	allocated, err = s.Allocated(ctx, 9, 1)
	if err != nil || allocated < 4*400 {
		t.Fatalf("allocated = %d, %v", allocated, err)
	}
	start := time.Now()
	if err := s.Zero(ctx, 9, 0, blocks, Stamp{1, seq + 1}, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("zero of 1 TiB with %d blocks allocated: %v", allocated, time.Since(start))
	if got, err := s.Allocated(ctx, 9, 1); err != nil || got != 0 {
		t.Fatalf("allocated after zero = %d, %v", got, err)
	}
	var runs int
	if err := s.Extents(ctx, 9, 0, blocks, 1, func(start, count uint64, alloc bool) bool {
		runs++
		if start != 0 || count != blocks || alloc {
			t.Fatalf("extent (%d,+%d,%v)", start, count, alloc)
		}
		return true
	}); err != nil || runs != 1 {
		t.Fatalf("extents: %d runs, %v", runs, err)
	}
	if n := s.lookup(9).ranges.Load().len(); n != 1 {
		t.Fatalf("%d range records", n)
	}
	// Reclaimed: no block of the volume is live any more, and once a
	// checkpoint ran, the sealed segments are deleted; only the active one
	// (at most SegmentBytes) is left.
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.LiveBytes != 0 || st.SegmentBytes > 2<<20 || st.SegmentsRemoved == 0 {
		t.Fatalf("after zero+checkpoint: %+v", st)
	}
}

func TestRetainedBlocksReclaim(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	buf := make([]byte, BlockSize)
	fill(buf, 'a', 5)
	if err := s.Write(ctx, 1, 5, buf, Stamp{1, 1}, false); err != nil {
		t.Fatal(err)
	}
	mustRetain(t, s, 1, []uint64{1})
	// Retained epochs survive a reopen.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openMem(t, fs)
	if err := s.Zero(ctx, 1, 0, 1000, Stamp{2, 2}, false); err != nil {
		t.Fatal(err)
	}
	if got := readID(t, s, 1, 5, 1); got != 'a' {
		t.Fatalf("snapshot @1 lost its data: %q", got)
	}
	if got := readID(t, s, 1, 5, 2); got != 0 {
		t.Fatalf("live @2 = %q", got)
	}
	// Without retained epochs the next zero reclaims.
	mustRetain(t, s, 1, nil)
	if err := s.Zero(ctx, 1, 0, 1000, Stamp{3, 3}, false); err != nil {
		t.Fatal(err)
	}
	if got := readID(t, s, 1, 5, 1); got != 0 {
		t.Fatalf("@1 after reclaim = %q", got)
	}
	if n := s.lookup(1).ranges.Load().len(); n != 1 {
		t.Fatalf("%d range records, want the older one dropped", n)
	}
}

func TestSeqGuardSkipsReclaim(t *testing.T) {
	s := openMem(t, nil)
	buf := make([]byte, BlockSize)
	fill(buf, 'n', 5)
	// A newer write already stored, then a zero with a lower seq (contract
	// violation): the guard keeps the newer write.
	if err := s.Write(ctx, 1, 5, buf, Stamp{1, 10}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Zero(ctx, 1, 0, 100, Stamp{1, 5}, false); err != nil {
		t.Fatal(err)
	}
	if got := readID(t, s, 1, 5, 1); got != 'n' {
		t.Fatalf("block 5 = %q, want n", got)
	}
}

func TestDropVolume(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	buf := make([]byte, 2*BlockSize)
	for _, vol := range []uint64{1, 2, ^uint64(0)} {
		if err := s.Write(ctx, vol, 10, buf[:BlockSize], Stamp{1, 1}, false); err != nil {
			t.Fatal(err)
		}
		fill(buf[:BlockSize], 'v', 0)
		fill(buf[BlockSize:], 'v', 1)
		if err := s.Write(ctx, vol, 0, buf, Stamp{1, 2}, false); err != nil {
			t.Fatal(err)
		}
		if err := s.Zero(ctx, vol, 100, 1000, Stamp{1, 3}, false); err != nil {
			t.Fatal(err)
		}
		mustRetain(t, s, vol, []uint64{1})
	}
	for _, vol := range []uint64{1, ^uint64(0)} {
		if err := s.DropVolume(vol); err != nil {
			t.Fatal(err)
		}
	}
	check := func(s *Store) {
		for vol, want := range map[uint64]uint64{1: 0, 2: 3, ^uint64(0): 0} {
			if got, err := s.Allocated(ctx, vol, 1); err != nil || got != want {
				t.Fatalf("vol %d: allocated %d, %v; want %d", vol, got, err, want)
			}
		}
		if got := readID(t, s, 2, 1, 1); got != 'v' {
			t.Fatalf("vol 2 block 1 = %q", got)
		}
		if v := s.lookup(1); v != nil && v.ranges.Load().len() != 0 {
			t.Fatal("vol 1 still has ranges")
		}
		if v := s.lookup(2); v == nil || v.ranges.Load().len() != 1 || len(v.retained) != 1 {
			t.Fatal("vol 2 lost its ranges or retained epochs")
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check(openMem(t, fs))
}

func TestInvalidAndClosed(t *testing.T) {
	s := openMem(t, nil)
	buf := make([]byte, BlockSize)
	for name, err := range map[string]error{
		"write empty":      s.Write(ctx, 1, 0, nil, Stamp{}, false),
		"write partial":    s.Write(ctx, 1, 0, buf[:100], Stamp{}, false),
		"write too large":  s.Write(ctx, 1, 0, make([]byte, RequestBytesMax+BlockSize), Stamp{}, false),
		"write past end":   s.Write(ctx, 1, BlocksMax, buf, Stamp{}, false),
		"read partial":     s.Read(ctx, 1, 0, buf[:4095], 0),
		"read wraps":       s.Read(ctx, 1, ^uint64(0), buf, 0),
		"zero empty":       s.Zero(ctx, 1, 0, 0, Stamp{}, false),
		"zero past end":    s.Zero(ctx, 1, 1, BlocksMax, Stamp{}, false),
		"extents overflow": s.Extents(ctx, 1, 5, ^uint64(0), 0, func(_, _ uint64, _ bool) bool { return true }),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := Open("x", Options{FS: vfs.NewMem(), CacheBytes: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("open with negative cache: %v, want ErrInvalid", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	for name, err := range map[string]error{
		"write": s.Write(ctx, 1, 0, buf, Stamp{}, false),
		"read":  s.Read(ctx, 1, 0, buf, 0),
		"zero":  s.Zero(ctx, 1, 0, 1, Stamp{}, false),
		"sync":  s.Sync(ctx),
		"drop":  s.DropVolume(1),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after close: %v, want ErrClosed", name, err)
		}
	}
	if err := s.SetRetained(1, []uint64{1}); !errors.Is(err, ErrClosed) {
		t.Errorf("set retained after close: %v, want ErrClosed", err)
	}
	if err := s.SetLineage(1, Lineage{Parent: 2}); !errors.Is(err, ErrClosed) {
		t.Errorf("set lineage after close: %v, want ErrClosed", err)
	}
}

func TestRangeLimit(t *testing.T) {
	s := openMem(t, nil)
	mustRetain(t, s, 1, []uint64{0}) // no reclaim: ranges of different epochs pile up
	v := s.volume(1)
	// Pretend the volume is at its bound.
	full := make([]zrange, rangesPerVolumeMax)
	for i := range full {
		full[i] = zrange{epoch: 1, seq: uint64(i + 1), start: uint64(i) * 1000, end: uint64(i)*1000 + 100}
	}
	v.ranges.Store(newRangeSet(full))
	big := uint64(zeroPointsBlocksMax + 1)
	if err := s.Zero(ctx, 1, 1<<40, big, Stamp{2, 1 << 20}, false); !errors.Is(err, ErrLimit) {
		t.Fatalf("zero past the bound: %v, want ErrLimit", err)
	}
	// A small-enough range falls back to zero points.
	buf := make([]byte, BlockSize)
	fill(buf, 'x', 1<<40)
	if err := s.Write(ctx, 1, 1<<40, buf, Stamp{2, 1<<20 + 1}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Zero(ctx, 1, 1<<40, 100, Stamp{2, 1<<20 + 2}, false); err != nil {
		t.Fatal(err)
	}
	if got := readID(t, s, 1, 1<<40, 2); got != 0 {
		t.Fatalf("after fallback zero: %q", got)
	}
	if n := v.ranges.Load().len(); n != rangesPerVolumeMax {
		t.Fatalf("%d ranges", n)
	}
	// A dominating zero at the same epoch may shrink the set again.
	if err := s.Zero(ctx, 1, 0, 1000*rangesPerVolumeMax, Stamp{1, 1 << 19}, false); err != nil {
		t.Fatal(err)
	}
	if n := v.ranges.Load().len(); n != 1 {
		t.Fatalf("%d ranges after a dominating zero", n)
	}
}

func TestAllocsPerIO(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	s := openMem(t, nil)
	buf := make([]byte, BlockSize)
	seq := uint64(0)
	for b := range uint64(64) {
		seq++
		if err := s.Write(ctx, 1, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Zero(ctx, 1, 1000, 100, Stamp{1, seq + 1}, false); err != nil {
		t.Fatal(err)
	}
	seq++
	reads := testing.AllocsPerRun(200, func() {
		if err := s.Read(ctx, 1, 7, buf, 1); err != nil {
			t.Fatal(err)
		}
	})
	writes := testing.AllocsPerRun(200, func() {
		seq++
		if err := s.Write(ctx, 1, 7, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	})
	ws := make([]BatchWrite, 8)
	batch := testing.AllocsPerRun(200, func() {
		for i := range ws {
			seq++
			ws[i] = BatchWrite{Block: uint64(i), Data: buf, Stamp: Stamp{1, seq}}
		}
		s.WriteBatch(ctx, 1, ws)
		for _, w := range ws {
			if w.Err != nil {
				t.Fatal(w.Err)
			}
		}
	})
	t.Logf("allocs: read 4K %.1f, write 4K %.1f, batch of 8 4K writes %.1f", reads, writes, batch)
	if reads > 2 || writes > 2 || batch > 2 {
		t.Fatalf("allocs per 4K I/O: read %.1f, write %.1f, batch of 8 %.1f; want <= 2", reads, writes, batch)
	}
}

func TestPlanRange(t *testing.T) {
	r := func(e, s, a, b uint64) zrange { return zrange{epoch: e, seq: s, start: a, end: b} }
	cases := []struct {
		name    string
		cur     []zrange
		n       zrange
		reclaim bool
		add     bool
		deletes []zrange
		trims   []zrange
		next    int
	}{
		{"empty", nil, r(1, 1, 0, 100), false, true, nil, nil, 1},
		{"covers same epoch lower seq", []zrange{r(1, 1, 10, 20)}, r(1, 2, 0, 100), false, true, []zrange{r(1, 1, 10, 20)}, nil, 1},
		{"covers same epoch higher seq", []zrange{r(1, 3, 10, 20)}, r(1, 2, 0, 100), false, true, nil, nil, 2},
		{"older epoch kept without reclaim", []zrange{r(1, 1, 10, 20)}, r(2, 2, 0, 100), false, true, nil, nil, 2},
		{"older epoch dropped with reclaim", []zrange{r(1, 1, 10, 20)}, r(2, 2, 0, 100), true, true, []zrange{r(1, 1, 10, 20)}, nil, 1},
		{"newer epoch kept with reclaim", []zrange{r(3, 1, 10, 20)}, r(2, 2, 0, 100), true, true, nil, nil, 2},
		{"trim tail", []zrange{r(1, 1, 0, 100)}, r(1, 2, 50, 150), false, true, nil, []zrange{r(1, 1, 0, 50)}, 2},
		{"trim head", []zrange{r(1, 1, 100, 300)}, r(1, 2, 50, 150), false, true, nil, []zrange{r(1, 1, 150, 300)}, 2},
		{"inside: no split", []zrange{r(1, 1, 0, 300)}, r(1, 2, 50, 150), false, true, nil, nil, 2},
		{"disjoint", []zrange{r(1, 1, 0, 50)}, r(1, 2, 50, 150), false, true, nil, nil, 2},
		{"redundant under higher seq", []zrange{r(1, 5, 0, 300)}, r(1, 2, 50, 150), true, false, nil, nil, 1},
		{"replay", []zrange{r(1, 2, 50, 150)}, r(1, 2, 50, 150), true, false, nil, nil, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ed := planRange(tc.cur, tc.n, tc.reclaim)
			if ed.add != tc.add || !slices.Equal(ed.deletes, tc.deletes) || !slices.Equal(ed.trims, tc.trims) || len(ed.next) != tc.next {
				t.Fatalf("plan = %+v", ed)
			}
		})
	}
}

// TestConcurrent runs writers on disjoint block ranges of one volume and on
// other volumes, with Sync, Extents and SetRetained alongside; each writer
// checks its own blocks against its model.
func TestConcurrent(t *testing.T) {
	s := openMem(t, nil)
	const workers, span = 6, 128
	errc := make(chan error, workers+1)
	done := make(chan struct{})
	for w := range workers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			vol, base := uint64(1), uint64(w)*span*2
			if w%2 == 1 {
				vol, base = uint64(100+w), 0
			}
			epoch := uint64(1)
			ops := randomOps(rng, 100, span, uint64(w)<<32, &epoch)
			for i, o := range ops {
				o.block += base
				ops[i] = o
				if err := applyErr(s, vol, o); err != nil {
					errc <- err
					return
				}
				if i%10 == 0 {
					b := base + rng.Uint64N(span)
					got := make([]byte, BlockSize)
					if err := s.Read(ctx, vol, b, got, epoch); err != nil {
						errc <- err
						return
					}
					want := make([]byte, BlockSize)
					if id := expect(ops[:i+1], b, epoch); id != 0 {
						fill(want, id, b)
					}
					if !bytes.Equal(got, want) {
						errc <- fmt.Errorf("worker %d: block %d after %d ops differs", w, b, i+1)
						return
					}
				}
			}
			errc <- nil
		}()
	}
	go func() {
		defer func() { errc <- nil }()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if err := s.Sync(ctx); err != nil {
				errc <- err
				return
			}
			if err := s.Extents(ctx, 1, 0, workers*span*2, 5, func(_, _ uint64, _ bool) bool { return true }); err != nil {
				errc <- err
				return
			}
			if err := s.SetRetained(99, []uint64{uint64(i)}); err != nil {
				errc <- err
				return
			}
			// GC runs beside the writers: the workers read at their
			// current epoch, which it keeps.
			if err := s.SetRetained(1, nil); err != nil {
				errc <- err
				return
			}
			if _, err := s.gc(ctx); err != nil {
				errc <- err
				return
			}
		}
	}()
	for range workers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestWriteNotBehindCheckpoint: a checkpoint in progress (which holds its
// lock across a sync and a commit) does not stall writes. Every Write asks
// whether a checkpoint is due; that question used to take the checkpoint's
// lock, so each checkpoint stopped every write of the store for as long as
// it ran (issue 8).
func TestWriteNotBehindCheckpoint(t *testing.T) {
	s := openMem(t, nil)
	buf := make([]byte, BlockSize)
	if err := s.Write(ctx, 1, 0, buf, Stamp{Epoch: 1, Seq: 1}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	s.ck.Lock() // as a checkpoint does from start to end
	done := make(chan error, 1)
	go func() {
		for i := range uint64(64) {
			if err := s.Write(ctx, 1, i, buf, Stamp{Epoch: 1, Seq: 2 + i}, false); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	// A bound on a hang, not a timing assertion: the writes need no lock
	// the checkpoint holds.
	select {
	case err := <-done:
		s.ck.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		s.ck.Unlock()
		<-done
		t.Fatal("writes waited for the checkpoint lock")
	}
}

// TestWriteSummed: WriteSummed stores the CRCs it is given: right ones
// read back as Write's would, across a reopen; a count that does not match
// the data is ErrInvalid and stores nothing; a wrong CRC makes its block
// fail on read (ErrCorrupt), never read as data; the invariants build
// (the one make test runs) panics on it instead, and stores nothing.
func TestWriteSummed(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	data := make([]byte, 4*BlockSize)
	for i := range data {
		data[i] = byte(i * 5)
	}
	crcs := make([]uint32, 4)
	for i := range crcs {
		crcs[i] = blockCRC(data[i*BlockSize : (i+1)*BlockSize])
	}
	if err := s.WriteSummed(ctx, 1, 0, data, crcs, Stamp{1, 1}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteSummed(ctx, 1, 8, data, crcs[:3], Stamp{1, 2}, true); !errors.Is(err, ErrInvalid) {
		t.Fatalf("3 crcs for 4 blocks: %v, want ErrInvalid", err)
	}
	bad := append([]uint32(nil), crcs...)
	bad[2] ^= 1
	writeBad := func() (panicked any, err error) {
		defer func() { panicked = recover() }()
		return nil, s.WriteSummed(ctx, 1, 16, data, bad, Stamp{1, 3}, true)
	}
	panicked, err := writeBad()
	if invariants != (panicked != nil) || err != nil {
		t.Fatalf("a wrong crc given (invariants build %v): err %v, panic %v", invariants, err, panicked)
	}
	check := func(s *Store) {
		t.Helper()
		got := make([]byte, len(data))
		if err := s.Read(ctx, 1, 0, got, 1); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("blocks written with their crcs: %v, equal %v", err, bytes.Equal(got, data))
		}
		if err := s.Read(ctx, 1, 8, got, 1); err != nil || !bytes.Equal(got, make([]byte, len(got))) {
			t.Fatalf("the refused write: %v, zeros %v", err, bytes.Equal(got, make([]byte, len(got))))
		}
		one := make([]byte, BlockSize)
		if invariants {
			// The write panicked before its record was appended.
			if err := s.Read(ctx, 1, 16, got, 1); err != nil || !bytes.Equal(got, make([]byte, len(got))) {
				t.Fatalf("the write that panicked: %v, zeros %v", err, bytes.Equal(got, make([]byte, len(got))))
			}
			return
		}
		if err := s.Read(ctx, 1, 17, one, 1); err != nil || !bytes.Equal(one, data[BlockSize:2*BlockSize]) {
			t.Fatalf("block with a right crc beside a wrong one: %v", err)
		}
		if err := s.Read(ctx, 1, 18, one, 1); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("block written with a wrong crc: %v, want ErrCorrupt", err)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openMem(t, fs)
	check(s)
}

// TestWriteBatchCRCs: a batch write with the wrong number of CRCs fails
// on its own with ErrInvalid, and stores nothing; the others are stored.
func TestWriteBatchCRCs(t *testing.T) {
	s := openMem(t, vfs.NewMem())
	data := bytes.Repeat([]byte{7}, 2*BlockSize)
	ws := []BatchWrite{
		{Block: 0, Data: data, CRCs: []uint32{blockCRC(data[:BlockSize]), blockCRC(data[BlockSize:])}, Stamp: Stamp{Epoch: 1, Seq: 1}},
		{Block: 4, Data: data, CRCs: []uint32{blockCRC(data[:BlockSize])}, Stamp: Stamp{Epoch: 1, Seq: 2}},
		{Block: 8, Data: data, Stamp: Stamp{Epoch: 1, Seq: 3}},
	}
	s.WriteBatch(ctx, 1, ws)
	if ws[0].Err != nil || ws[2].Err != nil || !errors.Is(ws[1].Err, ErrInvalid) {
		t.Fatalf("errors %v, %v, %v; want nil, ErrInvalid, nil", ws[0].Err, ws[1].Err, ws[2].Err)
	}
	p := make([]byte, 2*BlockSize)
	for _, blk := range []uint64{0, 8} {
		if err := s.Read(ctx, 1, blk, p, 1); err != nil || !bytes.Equal(p, data) {
			t.Fatalf("block %d: %v, read back equal %v", blk, err, bytes.Equal(p, data))
		}
	}
	var allocated bool
	if err := s.Extents(ctx, 1, 4, 2, 1, func(_, _ uint64, a bool) bool { allocated = allocated || a; return true }); err != nil || allocated {
		t.Fatalf("blocks 4-5 after a refused write: allocated %v, %v", allocated, err)
	}
}
