package store

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// capFS is a MemFS of a fixed capacity: writes that would grow the files
// past it fail with ENOSPC, and GetDiskUsage reports what is left.
type capFS struct {
	vfs.FS
	capacity int64
	mu       sync.Mutex
}

func (c *capFS) used() int64 {
	var walk func(dir string) int64
	walk = func(dir string) int64 {
		names, _ := c.FS.List(dir)
		var n int64
		for _, name := range names {
			p := c.FS.PathJoin(dir, name)
			fi, err := c.FS.Stat(p)
			if err != nil {
				continue
			}
			if fi.IsDir() {
				n += walk(p)
			} else {
				n += fi.Size()
			}
		}
		return n
	}
	return walk("")
}

func (c *capFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.used()
	return vfs.DiskUsage{AvailBytes: uint64(max(0, c.capacity-u)), TotalBytes: uint64(c.capacity), UsedBytes: uint64(u)}, nil
}

func (c *capFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := c.FS.Create(name, cat)
	if err != nil {
		return nil, err
	}
	return &capFile{File: f, fs: c}, nil
}

func (c *capFS) OpenReadWrite(name string, cat vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := c.FS.OpenReadWrite(name, cat, opts...)
	if err != nil {
		return nil, err
	}
	return &capFile{File: f, fs: c}, nil
}

type capFile struct {
	vfs.File
	fs *capFS
}

func (f *capFile) room(off int64, n int) error {
	fi, err := f.File.Stat()
	if err != nil {
		return err
	}
	if grow := off + int64(n) - fi.Size(); grow > 0 && f.fs.used()+grow > f.fs.capacity {
		return syscall.ENOSPC
	}
	return nil
}

func (f *capFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.room(off, len(p)); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *capFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	fi, err := f.File.Stat()
	if err != nil {
		return 0, err
	}
	if err := f.room(fi.Size(), len(p)); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

// TestNoSpace fills a small file system: writes past the space fail with
// ErrNoSpace (not ErrIO, not a failed store), reads keep working, a Zero
// frees the space and writes work again without a restart; everything
// written survives a reopen.
func TestNoSpace(t *testing.T) {
	old := spaceCheckInterval
	spaceCheckInterval = 0
	defer func() { spaceCheckInterval = old }()
	fs := &capFS{FS: vfs.NewMem(), capacity: 24 << 20}
	opts := Options{FS: fs, Logger: quiet, SegmentBytes: 1 << 20, ReserveBytes: 4 << 20}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	buf := make([]byte, 16*BlockSize)
	var written uint64
	var werr error
	for seq := uint64(1); seq < 10000; seq++ {
		for i := range uint64(16) {
			fill(buf[i*BlockSize:(i+1)*BlockSize], 'w', written+i)
		}
		if werr = s.Write(ctx, 1, written, buf, Stamp{1, seq}, false); werr != nil {
			break
		}
		written += 16
	}
	if !errors.Is(werr, ErrNoSpace) || errors.Is(werr, ErrIO) || errors.Is(werr, ErrFailed) {
		t.Fatalf("write on a full disk: %v, want ErrNoSpace only", werr)
	}
	t.Logf("filled with %d blocks: %v; stats %+v", written, werr, s.Stats())
	if written < 1000 || !s.Stats().LowSpace {
		t.Fatalf("%d blocks written, stats %+v", written, s.Stats())
	}
	if err := s.Sync(ctx); err != nil {
		t.Fatalf("sync on a full disk: %v", err)
	}
	for _, b := range []uint64{0, written / 2, written - 1} {
		if got := readID(t, s, 1, b, 1); got != 'w' {
			t.Fatalf("block %d on a full disk = %q", b, got)
		}
	}
	// Free the first half: the segments holding it go, writes work again.
	if err := s.Zero(ctx, 1, 0, written/2, Stamp{1, 20000}, true); err != nil {
		t.Fatalf("zero on a full disk: %v", err)
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	fill(buf[:BlockSize], 'n', written)
	if err := s.Write(ctx, 1, written, buf[:BlockSize], Stamp{1, 20001}, true); err != nil {
		t.Fatalf("write after zero freed space: %v (stats %+v)", err, s.Stats())
	}
	if s.Stats().LowSpace {
		t.Fatal("still low on space")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := readID(t, s, 1, written, 1); got != 'n' {
		t.Fatalf("after reopen: block %d = %q", written, got)
	}
	if got := readID(t, s, 1, written-1, 1); got != 'w' {
		t.Fatalf("after reopen: block %d = %q", written-1, got)
	}
	if got := readID(t, s, 1, 0, 1); got != 0 {
		t.Fatalf("after reopen: zeroed block 0 = %q", got)
	}
}

// TestENOSPCFromDisk: a segment write that hits ENOSPC below the reserve
// check (the FS reports no usage) fails with ErrNoSpace and nothing else;
// the store goes on when the space is back.
func TestENOSPCFromDisk(t *testing.T) {
	inj := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpFileWriteAt && len(op.Path) > 4 && op.Path[len(op.Path)-4:] == ".seg" {
			return syscall.ENOSPC
		}
		return nil
	})}
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: errorfs.Wrap(fs, inj), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2*BlockSize)
	fill(buf[:BlockSize], 'a', 0)
	fill(buf[BlockSize:], 'a', 1)
	if err := s.Write(ctx, 1, 0, buf, Stamp{1, 1}, false); err != nil {
		t.Fatal(err)
	}
	inj.On()
	for range 3 {
		err := s.Write(ctx, 1, 4, buf, Stamp{1, 2}, true)
		if !errors.Is(err, ErrNoSpace) || errors.Is(err, ErrFailed) {
			t.Fatalf("write hitting ENOSPC: %v", err)
		}
	}
	if got := readID(t, s, 1, 1, 1); got != 'a' {
		t.Fatalf("read with a full disk: %q", got)
	}
	inj.Off()
	fill(buf[:BlockSize], 'b', 4)
	fill(buf[BlockSize:], 'b', 5)
	if err := s.Write(ctx, 1, 4, buf, Stamp{1, 3}, true); err != nil {
		t.Fatalf("write with space back: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if st := len(mustList(t, fs, "db/segments")); st > 3 {
		t.Fatalf("%d segment files after ENOSPC retries", st)
	}
	s = openMem(t, fs)
	if a, b := readID(t, s, 1, 1, 1), readID(t, s, 1, 5, 1); a != 'a' || b != 'b' {
		t.Fatalf("after reopen: %q %q", a, b)
	}
}

func mustList(t *testing.T, fs vfs.FS, dir string) []string {
	t.Helper()
	names, err := fs.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestLowSpaceHysteresis: once a write is refused, smaller writes that
// would still fit above the reserve are refused too, and the low state is
// logged once however the write sizes alternate; it ends once a quarter of
// the reserve more is free.
func TestLowSpaceHysteresis(t *testing.T) {
	old := spaceCheckInterval
	spaceCheckInterval = 0
	defer func() { spaceCheckInterval = old }()
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: &logBuf, mu: &logMu}, nil))
	fs := &capFS{FS: vfs.NewMem(), capacity: 24 << 20}
	s, err := Open("db", Options{FS: fs, Logger: log, SegmentBytes: 1 << 20, ReserveBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	big := make([]byte, 64*BlockSize)
	var written, seq uint64
	for seq = 1; ; seq++ {
		if err := s.Write(ctx, 1, written, big, Stamp{1, seq}, false); err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatal(err)
			}
			break
		}
		written += 64
	}
	for i := range 20 {
		seq++
		if err := s.Write(ctx, 1, written, big[:BlockSize], Stamp{1, seq}, false); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("small write %d while low (%d bytes available): %v, want ErrNoSpace", i, s.space.avail, err)
		}
		seq++
		if err := s.Write(ctx, 1, written, big, Stamp{1, seq}, false); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("big write %d while low: %v, want ErrNoSpace", i, err)
		}
	}
	logMu.Lock()
	lows, backs := strings.Count(logBuf.String(), "store low on space"), strings.Count(logBuf.String(), "store has space again")
	logMu.Unlock()
	if lows != 1 || backs != 0 || !s.Stats().LowSpace {
		t.Fatalf("low space logged %d times, space back %d times (stats %+v); want 1 and 0", lows, backs, s.Stats())
	}
	// Free most of it: the state ends and writes work.
	seq++
	if err := s.Zero(ctx, 1, 0, written, Stamp{1, seq}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	seq++
	if err := s.Write(ctx, 1, 0, big, Stamp{1, seq}, false); err != nil {
		t.Fatalf("write after freeing: %v", err)
	}
	logMu.Lock()
	backs = strings.Count(logBuf.String(), "store has space again")
	logMu.Unlock()
	if backs != 1 || s.Stats().LowSpace {
		t.Fatalf("space back logged %d times, low %v", backs, s.Stats().LowSpace)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestOpenOnFullDisk: pebble's Open flushes the WALs it replays and
// retries a failed flush forever, so on a disk without room for that the
// store refuses to open with ErrNoSpace instead of never returning; with
// room it opens, reports low space at once, and reads.
func TestOpenOnFullDisk(t *testing.T) {
	fs := &capFS{FS: vfs.NewMem(), capacity: 64 << 20}
	opts := Options{FS: fs, Logger: quiet, SegmentBytes: 1 << 20, ReserveBytes: 8 << 20}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16*BlockSize)
	for i := range uint64(16) {
		fill(buf[i*BlockSize:(i+1)*BlockSize], 'f', i)
	}
	if err := s.Write(ctx, 1, 0, buf, Stamp{1, 1}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	used := fs.used()
	fs.capacity = used + 64<<10
	fs.mu.Unlock()
	if s, err := Open("db", opts); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "free space") {
		if err == nil {
			_ = s.Close()
		}
		t.Fatalf("open with %d bytes free: %v, want ErrNoSpace saying to free space", 64<<10, err)
	}
	fs.mu.Lock()
	fs.capacity = used + 4<<20
	fs.mu.Unlock()
	s, err = Open("db", opts)
	if err != nil {
		t.Fatalf("open with 4 MiB free: %v", err)
	}
	defer func() { _ = s.Close() }()
	if !s.Stats().LowSpace {
		t.Fatalf("opened below the reserve, stats %+v; want LowSpace", s.Stats())
	}
	if got := readID(t, s, 1, 15, 1); got != 'f' {
		t.Fatalf("read on a full disk: %q", got)
	}
	if err := s.Write(ctx, 1, 16, buf, Stamp{1, 2}, false); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write on a full disk: %v", err)
	}
}
