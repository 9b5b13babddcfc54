package store

import (
	"bytes"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// gateFS counts the writes into segment files and can hold one of them
// until released.
type gateFS struct {
	vfs.FS
	writes  atomic.Int64
	hold    atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (g *gateFS) OpenReadWrite(name string, cat vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := g.FS.OpenReadWrite(name, cat, opts...)
	if err != nil || !strings.HasSuffix(name, ".seg") {
		return f, err
	}
	return &gateFile{File: f, g: g}, nil
}

type gateFile struct {
	vfs.File
	g *gateFS
}

func (f *gateFile) WriteAt(p []byte, off int64) (int, error) {
	f.g.writes.Add(1)
	if f.g.hold.CompareAndSwap(true, false) {
		f.g.entered <- struct{}{}
		<-f.g.release
	}
	return f.File.WriteAt(p, off)
}

// TestGroupAppend: small records appended while another append is being
// written are written together, with one write call, and read back, before
// and after a reopen, as if written one by one.
func TestGroupAppend(t *testing.T) {
	g := &gateFS{FS: vfs.NewMem(), entered: make(chan struct{}), release: make(chan struct{})}
	s, err := Open("db", Options{FS: g, Logger: quiet, CacheBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	block := func(b uint64) []byte {
		p := make([]byte, BlockSize)
		fill(p, byte(b), b)
		return p
	}
	write := func(b uint64) error { return s.Write(ctx, 1, b, block(b), Stamp{Epoch: 1, Seq: b + 1}, false) }
	if err := write(0); err != nil {
		t.Fatal(err)
	}

	// The append of block 1 holds the segment; eight more queue behind it.
	g.hold.Store(true)
	var wg sync.WaitGroup
	errs := make(chan error, 9)
	wg.Add(1)
	go func() { defer wg.Done(); errs <- write(1) }()
	<-g.entered
	const queued = 8
	for b := uint64(2); b < 2+queued; b++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- write(b) }()
	}
	for deadline := time.Now().Add(30 * time.Second); ; runtime.Gosched() {
		s.seg.group.Lock()
		n := len(s.seg.group.pending)
		s.seg.group.Unlock()
		if n == queued {
			break
		}
		if time.Now().After(deadline) { // a bound on a hang, not a timing assertion
			t.Fatalf("%d appends queued, want %d", n, queued)
		}
	}
	before := g.writes.Load()
	close(g.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := g.writes.Load() - before; n != 1 {
		t.Errorf("%d queued appends took %d write calls, want 1", queued, n)
	}

	// Many writers at once, some blocks written twice.
	var wg2 sync.WaitGroup
	for w := range uint64(16) {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			for i := range uint64(40) {
				b := 10 + (w*40+i)%500
				if err := s.Write(ctx, 1, b, block(b), Stamp{Epoch: 1, Seq: 100 + w*40 + i}, false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg2.Wait()

	check := func(s *Store, when string) {
		t.Helper()
		got := make([]byte, BlockSize)
		for b := range uint64(510) {
			if err := s.Read(ctx, 1, b, got, 1); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, block(b)) {
				t.Fatalf("%s: block %d differs", when, b)
			}
		}
	}
	check(s, "before reopen")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open("db", Options{FS: g, Logger: quiet, CacheBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s, "after reopen")
}
