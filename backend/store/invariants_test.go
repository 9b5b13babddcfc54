//go:build invariants

package store

import (
	"strings"
	"testing"
)

// TestInvariantDrop: the invariants build catches the volume layer
// dropping a volume with calls on it in flight, and writing to it after.
func TestInvariantDrop(t *testing.T) {
	s := openMem(t, nil)
	buf := make([]byte, BlockSize)
	if err := s.Write(ctx, 1, 0, buf, Stamp{1, 1}, false); err != nil {
		t.Fatal(err)
	}
	mustPanic := func(what, want string, fn func()) {
		t.Helper()
		defer func() {
			r := recover()
			if msg, _ := r.(string); !strings.Contains(msg, want) {
				t.Fatalf("%s: recovered %v, want a panic containing %q", what, r, want)
			}
		}()
		fn()
	}
	s.volEnter(1, false) // a call inside the store, as a racing request would be
	mustPanic("drop with a call in flight", "calls on it in flight", func() { _ = s.DropVolume(1) })
	s.volExit(1)
	if err := s.DropVolume(1); err != nil {
		t.Fatal(err)
	}
	mustPanic("write after drop", "dropped", func() { _ = s.Write(ctx, 1, 0, buf, Stamp{1, 2}, false) })
	mustPanic("zero after drop", "dropped", func() { _ = s.Zero(ctx, 1, 0, 1, Stamp{1, 2}, false) })
	if err := s.Read(ctx, 1, 0, buf, 1); err != nil {
		t.Fatalf("read of a dropped volume: %v", err)
	}
}
