package volume

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"cairn/target"
)

// changes collects a volume's change extents over [off, off+n) since from.
func changes(t *testing.T, v *Volume, off, n int64, from uint64) []target.ChangeExtent {
	t.Helper()
	var out []target.ChangeExtent
	if err := v.Changed(ctx, off, n, from, func(e target.ChangeExtent) bool {
		out = append(out, e)
		return true
	}); err != nil {
		t.Fatalf("changed [%d, +%d) since %d: %v", off, n, from, err)
	}
	return out
}

// TestChanged: the volume reports, over its chunks, the blocks written
// since an epoch, as contiguous byte extents that cover the range asked
// (clipped to it when it is not block-aligned), on the live volume and on
// a read-only volume at a later epoch; an epoch not below the volume's is
// ErrInvalid; a node that cannot report changes is ErrNoChanges.
func TestChanged(t *testing.T) {
	const K, M = 4 << 10, 1 << 20
	s := openStore(t)
	v := openVolume(t, s, 8*M) // 8 chunks of 1 MiB
	fill := func(off, n int64, b byte) {
		t.Helper()
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{b}, int(n)), off, 0); err != nil {
			t.Fatal(err)
		}
	}
	fill(0, 8*M, 0x11) // epoch 1: everything
	if err := s.SetRetained(7, []uint64{1, 2}); err != nil {
		t.Fatal(err)
	}
	v.SetEpoch(2)
	fill(M-K, 2*K, 0x22) // across the first chunk boundary
	if err := v.Zero(ctx, 5*M, M, target.ZeroDiscard); err != nil {
		t.Fatal(err)
	}
	v.SetEpoch(3)
	fill(7*M, K, 0x33) // after epoch 2

	ext := func(l int64, c bool) target.ChangeExtent { return target.ChangeExtent{Length: l, Changed: c} }
	at2 := []target.ChangeExtent{ext(M-K, false), ext(2*K, true), ext(4*M-K, false), ext(M, true), ext(2*M, false)}
	live := []target.ChangeExtent{ext(M-K, false), ext(2*K, true), ext(4*M-K, false), ext(M, true), ext(M, false), ext(K, true), ext(M-K, false)}
	if got := changes(t, v, 0, 8*M, 1); !slices.Equal(got, live) {
		t.Fatalf("live since 1:\n got %v\nwant %v", got, live)
	}
	if got := changes(t, v, 0, 8*M, 2); !slices.Equal(got, []target.ChangeExtent{ext(7*M, false), ext(K, true), ext(M-K, false)}) {
		t.Fatalf("live since 2: %v", got)
	}
	// An unaligned range is reported from its first byte to its last.
	if got := changes(t, v, M-K-100, 300, 1); !slices.Equal(got, []target.ChangeExtent{ext(100, false), ext(200, true)}) {
		t.Fatalf("unaligned: %v", got)
	}
	// fn returning false stops the walk.
	calls := 0
	if err := v.Changed(ctx, 0, 8*M, 1, func(target.ChangeExtent) bool { calls++; return false }); err != nil || calls != 1 {
		t.Fatalf("stopped walk: %d calls, %v", calls, err)
	}

	ro, err := Open(Options{ID: 7, Size: 8 * M, Generation: 1, Epoch: 2, ReadOnly: true, Placement: NewLocal(s)})
	if err != nil {
		t.Fatal(err)
	}
	if got := changes(t, ro, 0, 8*M, 1); !slices.Equal(got, at2) {
		t.Fatalf("epoch 2 since 1:\n got %v\nwant %v", got, at2)
	}
	for _, from := range []uint64{2, 3} {
		if err := ro.Changed(ctx, 0, 8*M, from, func(target.ChangeExtent) bool { return true }); !errors.Is(err, target.ErrInvalid) {
			t.Fatalf("epoch 2 since %d: %v, want ErrInvalid", from, err)
		}
	}
	if err := v.Changed(ctx, 8*M, K, 1, func(target.ChangeExtent) bool { return true }); err == nil {
		t.Fatal("changes past the end: no error")
	}

	nop, err := Open(Options{ID: 1, Size: M, Generation: 1, Epoch: 2, Placement: NewLocal(nopNode{})})
	if err != nil {
		t.Fatal(err)
	}
	if err := nop.Changed(ctx, 0, M, 1, func(target.ChangeExtent) bool { return true }); !errors.Is(err, ErrNoChanges) {
		t.Fatalf("a node without changes: %v, want ErrNoChanges", err)
	}
}
