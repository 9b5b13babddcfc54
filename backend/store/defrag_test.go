package store

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// runsOf returns the runs (blocks stored one after the other) that blocks
// [block, block+n) of vol lie in at epoch.
func runsOf(s *Store, vol, block, n, epoch uint64) int {
	v := s.lookup(vol)
	v.idx.RLock()
	defer v.idx.RUnlock()
	runs := 0
	var prev version
	for i := range n {
		ver, _ := v.idx.lookup(block+i, epoch)
		if i == 0 || ver.seg != prev.seg || ver.page != prev.page+blockUnits {
			runs++
		}
		prev = ver
	}
	return runs
}

// writeScattered writes blocks [0, n) of vol 1 one record each, last block
// first, so that no two are neighbours on disk; block b holds fill(id(b)).
func writeScattered(t *testing.T, s *Store, n uint64, id func(uint64) byte, seq0 uint64) {
	t.Helper()
	buf := make([]byte, BlockSize)
	for i := range n {
		b := n - 1 - i
		fill(buf, id(b), b)
		if err := s.Write(ctx, 1, b, buf, Stamp{1, seq0 + i}, false); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDefragRewritesFragmentedReads: a read of a range whose blocks lie
// apart gets the range rewritten as a few runs in the background, the data
// unchanged, across a reopen (replay of the copy records) too; a read of
// blocks already in one run, or of too few blocks, rewrites nothing.
func TestDefragRewritesFragmentedReads(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	const n = 2 * defragBlocksMax
	id := func(b uint64) byte { return byte(1 + b%200) }
	writeScattered(t, s, n, id, 1)
	if r := runsOf(s, 1, 0, n, 1); r != n {
		t.Fatalf("%d runs before, want %d", r, n)
	}
	got := make([]byte, n*BlockSize)
	small := make([]byte, (defragBlocksMin-1)*BlockSize)
	if err := s.Read(ctx, 1, 0, small, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Read(ctx, 1, 0, got, 1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().DefragBytes < n*BlockSize {
		if time.Now().After(deadline) {
			t.Fatalf("defrag rewrote %d bytes in 10 s, want %d", s.Stats().DefragBytes, n*BlockSize)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Each piece of defragBlocksMax blocks is copy records of at most
	// copyBlocksMax blocks.
	want := 2 * ((defragBlocksMax + copyBlocksMax - 1) / copyBlocksMax)
	if r := runsOf(s, 1, 0, n, 1); r != want {
		t.Fatalf("%d runs after, want %d", r, want)
	}
	check := func() {
		t.Helper()
		for b := range uint64(n) {
			if got := readID(t, s, 1, b, 1); got != id(b) {
				t.Fatalf("block %d = %d, want %d", b, got, id(b))
			}
		}
	}
	check()
	// Now in runs: reading again rewrites nothing.
	before := s.Stats().DefragBytes
	if err := s.Read(ctx, 1, 0, got, 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if after := s.Stats().DefragBytes; after != before {
		t.Fatalf("a read of runs rewrote %d bytes", after-before)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openMem(t, fs)
	check()
}

// TestDefragKeepsNewerWrites: a piece offered for rewriting whose blocks
// were overwritten (or zeroed) before the rewrite ran moves only the
// versions the index still holds; the newer data stays, before and after
// a reopen.
func TestDefragKeepsNewerWrites(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	const n = defragBlocksMin
	writeScattered(t, s, n, func(uint64) byte { return 'o' }, 1)
	// The piece as a read offers it, built by hand so that the rewrite
	// runs when the test says.
	r := &defragReq{vol: 1, block: 0, data: make([]byte, n*BlockSize)}
	v := s.lookup(1)
	v.idx.RLock()
	for i := range uint64(n) {
		ver, _ := v.idx.lookup(i, 1)
		r.vers = append(r.vers, ver)
	}
	v.idx.RUnlock()
	if err := s.Read(ctx, 1, 0, r.data, 1); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, BlockSize)
	fill(buf, 'n', 5)
	if err := s.Write(ctx, 1, 5, buf, Stamp{1, 100}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Zero(ctx, 1, 9, 1, Stamp{1, 101}, false); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, headerBytes(recCopy, copyBlocksMax)+copyBlocksMax*BlockSize)
	s.defrag(r, rec)
	check := func() {
		t.Helper()
		for b := range uint64(n) {
			want := byte('o')
			switch b {
			case 5:
				want = 'n'
			case 9:
				want = 0
			}
			if got := readID(t, s, 1, b, 1); got != want {
				t.Fatalf("block %d = %q, want %q", b, got, want)
			}
		}
	}
	check()
	if r := runsOf(s, 1, 0, 5, 1); r != 1 {
		t.Fatalf("blocks 0-4 in %d runs after the rewrite, want 1", r)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openMem(t, fs)
	check()
}

// TestFragmented: what counts as fragmented.
func TestFragmented(t *testing.T) {
	run := func(n, every int) []version {
		vers := make([]version, n)
		for i := range vers {
			page := i * blockUnits
			if every > 0 {
				page += i / every * 1000 // a new run every every blocks
			}
			vers[i] = version{kind: kindData, seg: 1, page: uint32(page)}
		}
		return vers
	}
	for _, c := range []struct {
		vers []version
		want bool
	}{
		{run(defragBlocksMin-1, 1), false},             // too short
		{run(defragBlocksMin, 1), true},                // every block its own run
		{run(defragBlocksMax, 0), false},               // one run
		{run(defragBlocksMax, defragRunBlocks), false}, // runs of defragRunBlocks
		{run(defragBlocksMax, defragRunBlocks-1), true},
	} {
		if got := fragmented(c.vers); got != c.want {
			t.Errorf("fragmented(%d blocks) = %v, want %v", len(c.vers), got, c.want)
		}
	}
	zeros := run(defragBlocksMin, 1)
	zeros[3].kind = kindZero
	if fragmented(zeros) {
		t.Error("a range with a zero version counts as fragmented")
	}
}
