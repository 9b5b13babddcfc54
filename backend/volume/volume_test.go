package volume

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"cairn/backend/store"
	"cairn/target"
)

var ctx = context.Background()

func openStore(t testing.TB) *store.Store {
	t.Helper()
	s, err := store.Open("db", store.Options{FS: vfs.NewMem(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openVolume(t testing.TB, s *store.Store, size int64) *Volume {
	t.Helper()
	v, err := Open(Options{ID: 7, Size: size, Generation: 1, Epoch: 1, Placement: NewLocal(s)})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// model is a plain byte slice the volume must agree with.
type model []byte

func TestAgainstModel(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const size = 8 << 20 // 8 chunks
	v := openVolume(t, openStore(t), size)
	m := make(model, size)
	for i := range 2000 {
		off := rng.Int64N(size)
		n := min(rng.Int64N(300<<10)+1, size-off)
		if rng.IntN(3) == 0 { // aligned
			off &^= 4095
			n = max(n&^4095, 4096)
			n = min(n, size-off)
		}
		switch rng.IntN(11) {
		case 10: // a batch of writes that do not overlap, as from one NBD read
			var ws []target.BatchWrite
			for range 1 + rng.IntN(24) {
				bn := int64(4096 * (1 + rng.IntN(4)))
				boff := rng.Int64N(size-bn+1) &^ 4095
				if rng.IntN(4) == 0 { // unaligned, or FUA: not batched
					boff, bn = rng.Int64N(size-bn+1), bn-int64(rng.IntN(4096))
				}
				overlaps := false
				for _, w := range ws {
					overlaps = overlaps || boff < w.Off+int64(len(w.P)) && w.Off < boff+bn
				}
				if overlaps {
					continue
				}
				p := make([]byte, bn)
				var x uint64
				for j := range p {
					if j%8 == 0 {
						x = rng.Uint64()
					}
					p[j] = byte(x >> (8 * (j % 8)))
				}
				ws = append(ws, target.BatchWrite{P: p, Off: boff, Flags: target.WriteFlags(rng.IntN(4) / 3)})
			}
			v.WriteBatch(ctx, ws)
			for _, w := range ws {
				if w.Err != nil {
					t.Fatalf("op %d: batch write %d+%d: %v", i, w.Off, len(w.P), w.Err)
				}
				copy(m[w.Off:], w.P)
			}
		case 0, 1:
			flags := target.ZeroDiscard
			if rng.IntN(2) == 0 {
				flags = target.ZeroNoHole
			}
			if err := v.Zero(ctx, off, n, flags); err != nil {
				t.Fatalf("op %d: zero %d+%d: %v", i, off, n, err)
			}
			clear(m[off : off+n])
		case 2:
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		default:
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			if err := v.WriteAt(ctx, p, off, target.WriteFlags(rng.IntN(2))); err != nil {
				t.Fatalf("op %d: write %d+%d: %v", i, off, n, err)
			}
			copy(m[off:], p)
		}
		roff := rng.Int64N(size)
		rn := min(rng.Int64N(200<<10)+1, size-roff)
		got := make([]byte, rn)
		if err := v.ReadAt(ctx, got, roff); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, m[roff:roff+rn]) {
			t.Fatalf("op %d: read %d+%d differs from the model (seed %d)", i, roff, rn, seed)
		}
	}
	got := make([]byte, size)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, m) {
		t.Fatalf("final image differs from the model (seed %d)", seed)
	}
	// The allocation map agrees with the model: every non-zero byte is in
	// an allocated extent, and the extents cover the whole volume.
	var pos int64
	err := v.Extents(ctx, 0, size, func(e target.Extent) bool {
		if e.Hole && bytes.ContainsFunc(m[pos:pos+e.Length], func(r rune) bool { return r != 0 }) {
			t.Errorf("hole [%d, +%d) holds data", pos, e.Length)
		}
		pos += e.Length
		return true
	})
	if err != nil || pos != size {
		t.Fatalf("extents covered %d of %d: %v", pos, size, err)
	}
}

// TestWriteBatch: the aligned plain writes of a batch are stored with one
// store batch, each with its own stamp (the later of two writes of one
// block wins) and result; unaligned and FUA ones are written as WriteAt
// writes them; one out of range fails alone; on a volume whose chunks are
// not all on one node every write goes its own way.
func TestWriteBatch(t *testing.T) {
	s := openStore(t)
	v := openVolume(t, s, 1<<20)
	blk := func(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }
	ws := []target.BatchWrite{
		{P: blk(1), Off: 0},
		{P: blk(2), Off: 8192},
		{P: blk(3), Off: 0}, // the same block again: stamped later, wins
		{P: blk(4)[:512], Off: 4096 + 512},
		{P: blk(5), Off: 12288, Flags: target.FUA},
		{P: blk(6), Off: 1 << 20}, // past the end
		{P: append(blk(7), blk(8)...), Off: 16384},
	}
	if !v.BatchWrites() {
		t.Fatal("a volume on one store does not take batches")
	}
	before := s.Stats()
	v.WriteBatch(ctx, ws)
	for i, w := range ws {
		if want := i == 5; (w.Err != nil) != want {
			t.Fatalf("write %d: err %v, want an error: %v", i, w.Err, want)
		}
	}
	if !errors.Is(ws[5].Err, target.ErrOutOfRange) {
		t.Fatalf("write past the end: %v, want ErrOutOfRange", ws[5].Err)
	}
	if st := s.Stats(); st.BatchWrites-before.BatchWrites != 4 || st.BatchTurns-before.BatchTurns != 1 {
		t.Fatalf("store batched %d writes in %d appends, want 4 in 1", st.BatchWrites-before.BatchWrites, st.BatchTurns-before.BatchTurns)
	}
	want := make([]byte, 24576)
	copy(want, blk(3))
	copy(want[4096+512:], blk(4)[:512])
	copy(want[8192:], blk(2))
	copy(want[12288:], blk(5))
	copy(want[16384:], append(blk(7), blk(8)...))
	got := make([]byte, len(want))
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from the batch's writes")
	}
	if st := v.Stats(); st.Writes != 6 {
		t.Fatalf("volume counted %d writes, want 6", st.Writes)
	}

	// Chunks on two nodes: no store batch, every write still done.
	s2 := openStore(t)
	v2, err := Open(Options{ID: 8, Size: 4 << 20, Generation: 1, Epoch: 1, Placement: twoNodes{s, s2}})
	if err != nil {
		t.Fatal(err)
	}
	if v2.BatchWrites() {
		t.Fatal("a volume over two nodes says it takes batches")
	}
	before = s.Stats()
	ws = []target.BatchWrite{{P: blk(9), Off: 0}, {P: blk(10), Off: 1 << 20}}
	v2.WriteBatch(ctx, ws)
	for i, w := range ws {
		if w.Err != nil {
			t.Fatalf("two nodes, write %d: %v", i, w.Err)
		}
	}
	if st := s.Stats(); st.BatchTurns != before.BatchTurns {
		t.Fatalf("a volume over two nodes used a store batch")
	}
	for i, w := range ws {
		if err := v2.ReadAt(ctx, got[:4096], w.Off); err != nil || !bytes.Equal(got[:4096], w.P) {
			t.Fatalf("two nodes, write %d did not read back: %v", i, err)
		}
	}

	// A closed volume refuses the batch, every write of it.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	ws = []target.BatchWrite{{P: blk(1), Off: 0}, {P: blk(2), Off: 4096}}
	v.WriteBatch(ctx, ws)
	for i, w := range ws {
		if !errors.Is(w.Err, ErrClosed) {
			t.Fatalf("closed volume, write %d: %v, want ErrClosed", i, w.Err)
		}
	}
}

// twoNodes places even chunks on a, odd ones on b.
type twoNodes [2]Node

func (p twoNodes) Replicas(c uint64) []Node { return p[c%2 : c%2+1] }
func (p twoNodes) Nodes() []Node            { return p[:] }

// TestConcurrentSectors writes the eight 512-byte sectors of one block
// concurrently, many times: every one survives.
func TestConcurrentSectors(t *testing.T) {
	v := openVolume(t, openStore(t), 1<<20)
	for round := range 200 {
		base := int64(round%16) * 4096
		var wg sync.WaitGroup
		for s := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := bytes.Repeat([]byte{byte(round + s + 1)}, 512)
				if err := v.WriteAt(ctx, p, base+int64(s)*512, 0); err != nil {
					t.Error(err)
				}
			}()
		}
		// A whole-block write to the neighbour block at the same time.
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.WriteAt(ctx, bytes.Repeat([]byte{0xee}, 4096), base+4096*16, 0)
		}()
		wg.Wait()
		got := make([]byte, 4096)
		if err := v.ReadAt(ctx, got, base); err != nil {
			t.Fatal(err)
		}
		for s := range 8 {
			if got[s*512] != byte(round+s+1) || !bytes.Equal(got[s*512:s*512+512], bytes.Repeat([]byte{got[s*512]}, 512)) {
				t.Fatalf("round %d: sector %d lost: %x", round, s, got[s*512:s*512+8])
			}
		}
	}
}

func TestErrors(t *testing.T) {
	s := openStore(t)
	v := openVolume(t, s, 1<<20)
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"read past end", v.ReadAt(ctx, make([]byte, 8192), 1<<20-4096), target.ErrOutOfRange},
		{"write past end", v.WriteAt(ctx, make([]byte, 1), 1<<20, 0), target.ErrOutOfRange},
		{"zero past end", v.Zero(ctx, 0, 1<<20+1, 0), target.ErrOutOfRange},
		{"negative offset", v.ReadAt(ctx, make([]byte, 1), -1), target.ErrInvalid},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
	ro, err := Open(Options{ID: 8, Size: 1 << 20, Generation: 1, Epoch: 1, ReadOnly: true, Placement: NewLocal(s)})
	if err != nil {
		t.Fatal(err)
	}
	if err := ro.WriteAt(ctx, make([]byte, 4096), 0, 0); !errors.Is(err, target.ErrReadOnly) {
		t.Errorf("write to read-only: %v", err)
	}
	v.Close()
	if err := v.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, target.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	for _, o := range []Options{
		{Size: 4096, Generation: 1, Epoch: 1},
		{Size: 4095, Generation: 1, Epoch: 1, Placement: NewLocal(s)},
		{Size: 4096, Generation: 0, Epoch: 1, Placement: NewLocal(s)},
		{Size: 4096, Generation: 1, Epoch: 0, Placement: NewLocal(s)},
		{Size: 4096, ChunkSize: 1000, Generation: 1, Epoch: 1, Placement: NewLocal(s)},
	} {
		if _, err := Open(o); err == nil {
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
}

// TestGenerationOrdersSeq: a later attachment's writes win over an earlier
// one's, whatever order they reach the store in.
func TestGenerationOrdersSeq(t *testing.T) {
	s := openStore(t)
	v1, _ := Open(Options{ID: 9, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: NewLocal(s)})
	v2, _ := Open(Options{ID: 9, Size: 1 << 20, Generation: 2, Epoch: 1, Placement: NewLocal(s)})
	v2.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 0, 0)
	for range 10 {
		v1.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, 0) // stale attachment, arrives later
	}
	got := make([]byte, 4096)
	v2.ReadAt(ctx, got, 0)
	if got[0] != 2 {
		t.Fatalf("stale generation's write won: %d", got[0])
	}
}

func TestZeroWholeTiB(t *testing.T) {
	s := openStore(t)
	const size = 1 << 40
	v := openVolume(t, s, size)
	for _, off := range []int64{0, 1 << 30, size - 4096} {
		v.WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), off, 0)
	}
	if err := v.Zero(ctx, 0, size, target.ZeroDiscard); err != nil {
		t.Fatal(err)
	}
	n, err := s.Allocated(ctx, 7, 1)
	if err != nil || n != 0 {
		t.Fatalf("allocated after whole zero: %d %v", n, err)
	}
	got := make([]byte, 4096)
	v.ReadAt(ctx, got, 1<<30)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("data survived a whole-volume zero")
	}
}

// nopNode is a node that stores nothing, to measure the volume layer alone.
type nopNode struct{}

func (nopNode) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	return nil
}
func (nopNode) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error { return nil }
func (nopNode) Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error {
	return nil
}
func (nopNode) Sync(ctx context.Context) error { return nil }
func (nopNode) Extents(ctx context.Context, vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) error {
	return nil
}

// TestAllocsHotPath pins the volume layer's own cost of aligned I/O at zero
// allocations; what a node costs is the node's budget.
func TestAllocsHotPath(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items; make test runs the Allocs tests without -race")
	}
	v, err := Open(Options{ID: 1, Size: 1 << 30, Generation: 1, Epoch: 1, Placement: NewLocal(nopNode{})})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 128<<10)
	for _, c := range []struct {
		name string
		fn   func()
	}{
		{"read 4k", func() { v.ReadAt(ctx, p[:4096], 0) }},
		{"write 4k", func() { v.WriteAt(ctx, p[:4096], 4096, 0) }},
		{"write 128k across a chunk", func() { v.WriteAt(ctx, p, 1<<20-64<<10, target.FUA) }},
		{"read 512 unaligned", func() { v.ReadAt(ctx, p[:512], 1024) }},
		{"write 512 unaligned", func() { v.WriteAt(ctx, p[:512], 1024, 0) }},
	} {
		if n := testing.AllocsPerRun(200, c.fn); n != 0 {
			t.Errorf("%s: %.1f allocs/op, want 0", c.name, n)
		}
	}
	// A batch of eight 4 KiB writes, stored with one node call.
	bv, err := Open(Options{ID: 1, Size: 1 << 30, Generation: 1, Epoch: 1, Placement: NewLocal(nopBatchNode{})})
	if err != nil {
		t.Fatal(err)
	}
	ws := make([]target.BatchWrite, 8)
	if n := testing.AllocsPerRun(200, func() {
		for i := range ws {
			ws[i] = target.BatchWrite{P: p[:4096], Off: int64(i) * 8192}
		}
		bv.WriteBatch(ctx, ws)
		for _, w := range ws {
			if w.Err != nil {
				t.Fatal(w.Err)
			}
		}
	}); n != 0 {
		t.Errorf("write batch of 8: %.1f allocs/op, want 0", n)
	}
}

// nopBatchNode is a nopNode that takes batches.
type nopBatchNode struct{ nopNode }

func (nopBatchNode) WriteBatch(_ context.Context, _ uint64, ws []store.BatchWrite) {
	for i := range ws {
		ws[i].Err = nil
	}
}

func BenchmarkWrite4K(b *testing.B) {
	v := openVolume(b, openStore(b), 1<<30)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	var i int64
	for b.Loop() {
		v.WriteAt(ctx, p, (i%(1<<18))*4096, 0)
		i++
	}
}

func BenchmarkRead4K(b *testing.B) {
	v := openVolume(b, openStore(b), 1<<30)
	p := make([]byte, 4096)
	for i := range int64(1024) {
		v.WriteAt(ctx, p, i*4096, 0)
	}
	b.SetBytes(4096)
	var i int64
	for b.Loop() {
		v.ReadAt(ctx, p, (i%1024)*4096)
		i++
	}
}

// TestLargeRequests: 32 MiB requests (the NBD maximum) work across chunks.
func TestLargeRequests(t *testing.T) {
	v := openVolume(t, openStore(t), 128<<20)
	p := bytes.Repeat([]byte("cairn-32MiB-request!"), (32<<20)/20+1)[:32<<20]
	if err := v.WriteAt(ctx, p, 3<<20+512, target.FUA); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := v.ReadAt(ctx, got, 3<<20+512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("32 MiB request did not read back")
	}
	if err := v.Zero(ctx, 3<<20+512, 32<<20, target.ZeroNoHole); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(ctx, got, 3<<20+512); err != nil || !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatalf("32 MiB zero did not read back as zeros: %v", err)
	}
}

// TestLatencyPipelines: with 1 ms per node operation, 32 concurrent reads
// overlap instead of queueing (the volume holds no lock across a node call
// that would serialize them). Counted in node calls in flight, not time.
func TestLatencyPipelines(t *testing.T) {
	var peak, cur atomic.Int64
	n := countingNode{Node: nopNode{}, cur: &cur, peak: &peak}
	lat, err := NewLatency(n, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer lat.Close()
	v, err := Open(Options{ID: 1, Size: 1 << 30, Generation: 1, Epoch: 1, Placement: NewLocal(lat)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			for j := range 20 {
				if j%2 == 0 {
					v.ReadAt(ctx, p, int64(i*4096*64+j*4096))
				} else {
					v.WriteAt(ctx, p, int64(i*4096*64+j*4096), 0)
				}
			}
		}()
	}
	wg.Wait()
	if peak.Load() < 8 {
		t.Fatalf("at most %d node calls overlapped with 32 clients; the volume serializes them", peak.Load())
	}
}

// countingNode tracks how many calls are inside the node at once.
type countingNode struct {
	Node
	cur, peak *atomic.Int64
}

func (c countingNode) enter() func() {
	n := c.cur.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	time.Sleep(time.Millisecond)
	return func() { c.cur.Add(-1) }
}

func (c countingNode) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error {
	defer c.enter()()
	return c.Node.Read(ctx, vol, block, p, epoch)
}

func (c countingNode) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	defer c.enter()()
	return c.Node.Write(ctx, vol, block, data, st, sync)
}
