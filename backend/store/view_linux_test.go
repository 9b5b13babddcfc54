package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestViewReads: on the OS file system every segment is mapped, reads of
// blocks stored apart come out of the mapping, a byte changed in the file
// under the store shows there (the mapping is the page cache the file is
// written through) and fails its CRC, and a segment cut short under the
// store is an error wrapping ErrIO and ErrCorrupt, never a crash.
func TestViewReads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	s, err := Open(dir, Options{FS: vfs.Default, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	const blocks = 8
	buf := make([]byte, BlockSize)
	// One record per block, in reverse: no two blocks are neighbours on
	// disk, so each is its own run of one page.
	for b := uint64(blocks); b > 0; b-- {
		fill(buf, byte(b), b-1)
		if err := s.Write(ctx, 1, b-1, buf, Stamp{1, 10 - b}, false); err != nil {
			t.Fatal(err)
		}
	}
	segs := *s.seg.tab.Load()
	if len(segs) != 1 {
		t.Fatalf("%d segments, want 1", len(segs))
	}
	var sg *segment
	for _, sg = range segs {
	}
	if sg.view == nil {
		t.Fatal("segment on the OS file system has no view")
	}
	got := make([]byte, blocks*BlockSize)
	if err := s.Read(ctx, 1, 0, got, 1); err != nil {
		t.Fatal(err)
	}
	for b := range uint64(blocks) {
		fill(buf, byte(b+1), b)
		if !bytes.Equal(got[b*BlockSize:(b+1)*BlockSize], buf) {
			t.Fatalf("block %d read wrong: %x...", b, got[b*BlockSize:b*BlockSize+16])
		}
	}

	// Block 7 was written first: its record is the first, its data at
	// recAlign.
	path := filepath.Join(dir, "segments", segName(sg.id))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{0xee}, recAlign+100); err != nil {
		t.Fatal(err)
	}
	err = s.Read(ctx, 1, 0, got, 1)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read over a changed byte: %v, want ErrCorrupt", err)
	}
	if id := readID(t, s, 1, 0, 1); id != 1 {
		t.Fatalf("block 0 = %d after block 7 was damaged", id)
	}

	// Cut the file: the view faults past the new end, ReadAt reads short.
	if err := f.Truncate(recAlign); err != nil {
		t.Fatal(err)
	}
	err = s.Read(ctx, 1, 0, got[:BlockSize], 1)
	if !errors.Is(err, ErrIO) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read past the end of a cut segment: %v, want ErrIO and ErrCorrupt", err)
	}
}

// TestViewReadFault: a page of a mapping past the end of its file faults;
// viewRead reports it (ReadAt then reads) instead of crashing, and never
// reads outside the mapping.
func TestViewReadFault(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(BlockSize); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("cairn"), 0); err != nil {
		t.Fatal(err)
	}
	v, err := syscall.Mmap(int(f.Fd()), 0, 4*BlockSize, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unmapView(v) }()
	p := make([]byte, BlockSize)
	if !viewRead(v, p, 0) || string(p[:5]) != "cairn" {
		t.Fatalf("read in the file: %q", p[:5])
	}
	if viewRead(v, p, 2*BlockSize) {
		t.Fatal("read past the end of the file succeeded")
	}
	if viewRead(v, p, 4*BlockSize) || viewRead(v, p, 3*BlockSize+1) || viewRead(v, p, -1) {
		t.Fatal("read outside the mapping succeeded")
	}
}
