package store

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestRelog: overwrites with no sync leave unsynced segments partly live;
// relog moves their live records to the head of the log and reap deletes
// them, with no sync (the segments were never written to the device), and
// every block reads its newest data before and after a reopen. Segments
// holding a partly live record or a zero record are left alone.
func TestRelog(t *testing.T) {
	defer func(b int64, l float64) { relogBytes, relogLiveMax = b, l }(relogBytes, relogLiveMax)
	// The background goroutine relogs nothing: the test calls relogOver
	// once everything is written.
	relogBytes, relogLiveMax = 1<<40, 0.9
	fs := vfs.NewMem()
	opts := Options{FS: fs, Logger: quiet, CacheBytes: 1 << 20, SegmentBytes: 64 << 10}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	const blocks = 64
	want := make([][]byte, blocks)
	buf := make([]byte, BlockSize)
	seq := uint64(0)
	write := func(b uint64, id byte) {
		t.Helper()
		seq++
		fill(buf, id, b)
		if err := s.Write(ctx, 1, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
		want[b] = bytes.Clone(buf)
	}
	// Four passes over the blocks in a scrambled order: a segment
	// (about 14 records) dies partly before the next pass.
	for pass := range 4 {
		for i := range uint64(blocks) {
			write((i*37+uint64(pass)*11)%blocks, byte('a'+pass))
		}
	}
	// A two-block record whose first block is overwritten: its segment
	// cannot be relogged (the copy would not be the whole write).
	seq++
	two := make([]byte, 2*BlockSize)
	fill(two[:BlockSize], 'p', 100)
	fill(two[BlockSize:], 'p', 101)
	if err := s.Write(ctx, 1, 100, two, Stamp{1, seq}, false); err != nil {
		t.Fatal(err)
	}
	v := s.lookup(1)
	v.idx.RLock()
	ver, _ := v.idx.exact(101, 1)
	v.idx.RUnlock()
	partial := ver.seg
	for i := range uint64(blocks) {
		write(i, 'z') // rolls past the partial record's segment
	}
	seq++
	fill(buf, 'q', 100)
	if err := s.Write(ctx, 1, 100, buf, Stamp{1, seq}, false); err != nil {
		t.Fatal(err)
	}
	syncs := s.Stats()
	moved, err := s.relogOver(256 << 10)
	if err != nil {
		t.Fatal(err)
	}
	if !moved {
		t.Fatal("relog moved nothing")
	}
	if err := s.reap(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.SegmentsRelogged == 0 || st.SegmentsReaped == 0 {
		t.Fatalf("relogged %d, reaped %d segments; want both > 0", st.SegmentsRelogged, st.SegmentsReaped)
	}
	if st.Checkpoints != syncs.Checkpoints {
		t.Fatalf("relog checkpointed (%d → %d)", syncs.Checkpoints, st.Checkpoints)
	}
	if s.seg.segment(partial) == nil {
		t.Fatalf("segment %s with a partly live record was relogged", segName(partial))
	}
	check := func(s *Store) {
		t.Helper()
		got := make([]byte, BlockSize)
		for b := range uint64(blocks) {
			if err := s.Read(ctx, 1, b, got, 1); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[b]) {
				t.Fatalf("block %d = %q..., want %q...", b, got[8:12], want[b][8:12])
			}
		}
		if err := s.Read(ctx, 1, 100, got, 1); err != nil || got[8] != 'q' {
			t.Fatalf("block 100: %q, %v; want q", got[8:12], err)
		}
		if err := s.Read(ctx, 1, 101, got, 1); err != nil || got[8] != 'p' {
			t.Fatalf("block 101: %q, %v; want p", got[8:12], err)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s)
}

// TestRelogGroups: a relogged segment holding small records of two
// volumes interleaved and records too large to group, some overwritten
// between the plan and the move, is emptied with every block reading its
// newest data, before and after a reopen.
func TestRelogGroups(t *testing.T) {
	defer func(b int64, l float64) { relogBytes, relogLiveMax = b, l }(relogBytes, relogLiveMax)
	relogBytes, relogLiveMax = 1<<40, 0.95
	fs := vfs.NewMem()
	opts := Options{FS: fs, Logger: quiet, CacheBytes: 1 << 20, SegmentBytes: 1 << 20}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	const big = 20 // blocks of a record too large for a group (80 KiB)
	type key struct{ vol, block uint64 }
	want := map[key][]byte{}
	seq := uint64(0)
	write := func(vol, b uint64, n int, id byte) {
		t.Helper()
		seq++
		buf := make([]byte, n*BlockSize)
		for i := range n {
			fill(buf[i*BlockSize:(i+1)*BlockSize], id, b+uint64(i))
			want[key{vol, b + uint64(i)}] = buf[i*BlockSize : (i+1)*BlockSize]
		}
		if err := s.Write(ctx, vol, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	// One segment's worth: small records of volumes 1 and 2 in runs of
	// three, and a large record of volume 1 now and then.
	for i := range uint64(150) {
		write(1+i/3%2, i, 1, 'a')
		if i%40 == 0 {
			write(1, 1000+i, big, 'b')
		}
	}
	v := s.lookup(1)
	v.idx.RLock()
	ver, _ := v.idx.exact(0, 1)
	v.idx.RUnlock()
	first := ver.seg
	// Kill half of the small records and one large one, then roll on.
	for i := uint64(0); i < 150; i += 2 {
		write(1+i/3%2, i, 1, 'c')
	}
	write(1, 1040, big, 'd')
	for i := range uint64(300) {
		write(3, i, 1, 'e')
	}
	sg := s.seg.segment(first)
	recs, ok, err := s.relogPlan(sg)
	if err != nil || !ok || len(recs) == 0 {
		t.Fatalf("plan: %d records, %v, %v", len(recs), ok, err)
	}
	// Overwritten after the plan: its copy must not be pointed at.
	write(2, 3, 1, 'f')
	var buf []byte
	if _, ok, err := s.relogSegment(sg, &buf); err != nil || !ok {
		t.Fatalf("relog: %v, %v", ok, err)
	}
	if n := sg.live.Load(); n != 0 {
		t.Fatalf("segment %s still holds %d live blocks", segName(first), n)
	}
	check := func(s *Store) {
		t.Helper()
		got := make([]byte, BlockSize)
		for k, w := range want {
			if err := s.Read(ctx, k.vol, k.block, got, 1); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, w) {
				t.Fatalf("vol %d block %d = %q..., want %q...", k.vol, k.block, got[8:12], w[8:12])
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s)
}
