package store

import (
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// allocatedBytes sums the disk space allocated to the files under dir.
func allocatedBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !fi.IsDir() {
			n += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// copyDir copies the files of src into dst: a crash of the process (the
// page cache survives), taken while the store runs.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(filepath.Join(dst, rel))
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, in)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPunchFreesDeadBlocks: a disk filled by interleaved writes whose
// every other run is then overwritten holds segments half dead, none empty,
// which the cleaner could free only with room to copy into. A punch pass
// gives the dead half back without writing any data; reads, a reopen and a
// crash after it see every live block.
func TestPunchFreesDeadBlocks(t *testing.T) {
	// No cleaning: it would move the blocks this test counts on.
	oldLive, oldPressure, oldIdle := cleanLiveMax, cleanPressureLiveMax, cleanIdleLiveMax
	cleanLiveMax, cleanPressureLiveMax, cleanIdleLiveMax = 0, 0, 0
	defer func() { cleanLiveMax, cleanPressureLiveMax, cleanIdleLiveMax = oldLive, oldPressure, oldIdle }()
	dir := filepath.Join(t.TempDir(), "db")
	opts := Options{FS: vfs.Default, Logger: quiet, SegmentBytes: 1 << 20}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	const runs, runBlocks = 64, 16 // 4 MiB over 4+ segments
	buf := make([]byte, runBlocks*BlockSize)
	write := func(run uint64, id byte, seq uint64) {
		t.Helper()
		for i := range uint64(runBlocks) {
			fill(buf[i*BlockSize:(i+1)*BlockSize], id, run*runBlocks+i)
		}
		if err := s.Write(ctx, 1, run*runBlocks, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	seq := uint64(1)
	for r := range uint64(runs) {
		write(r, 'a', seq)
		seq++
	}
	// Seal what holds the first round: the punch pass leaves the active
	// segment alone.
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	for r := uint64(1); r < runs; r += 2 {
		write(r, 'b', seq)
		seq++
	}
	segs := filepath.Join(dir, "segments")
	before := allocatedBytes(t, segs)
	punched, err := s.punch()
	if err != nil {
		t.Fatal(err)
	}
	after := allocatedBytes(t, segs)
	t.Logf("punched %d bytes; segments allocated %d -> %d bytes; stats %+v", punched, before, after, s.Stats())
	// The runs overwritten in the sealed segments of the first round, less
	// those of the segment still active.
	if punched < (runs/2)*runBlocks*BlockSize/2 || before-after < punched*9/10 {
		t.Fatalf("punched %d bytes, allocation %d -> %d", punched, before, after)
	}
	if st := s.Stats(); st.BytesPunched != uint64(punched) {
		t.Fatalf("BytesPunched %d, pass returned %d", st.BytesPunched, punched)
	}
	if again, err := s.punch(); err != nil || again != 0 {
		t.Fatalf("second pass: %d bytes, %v; want 0 (nothing new died)", again, err)
	}
	check := func(s *Store, when string) {
		t.Helper()
		for r := range uint64(runs) {
			want := byte('a')
			if r%2 == 1 {
				want = 'b'
			}
			for _, b := range []uint64{r * runBlocks, r*runBlocks + runBlocks - 1} {
				if got := readID(t, s, 1, b, 1); got != want {
					t.Fatalf("%s: block %d = %q, want %q", when, b, got, want)
				}
			}
		}
	}
	check(s, "after punching")
	// A write after the pass, not synced, then a crash.
	write(0, 'c', seq)
	crash := filepath.Join(t.TempDir(), "crash")
	copyDir(t, dir, crash)
	c, err := Open(crash, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := readID(t, c, 1, 0, 1); got != 'c' && got != 'a' {
		t.Fatalf("after a crash: block 0 = %q", got)
	}
	for r := uint64(1); r < runs; r++ {
		want := byte('a')
		if r%2 == 1 {
			want = 'b'
		}
		if got := readID(t, c, 1, r*runBlocks+3, 1); got != want {
			t.Fatalf("after a crash: block %d = %q, want %q", r*runBlocks+3, got, want)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := readID(t, s, 1, 0, 1); got != 'c' {
		t.Fatalf("after reopen: block 0 = %q", got)
	}
	write(0, 'a', seq+1)
	check(s, "after reopen")
	// Segments sealed before this Open are open read-only: punching them
	// works all the same. Every other 'b' run (all in sealed segments) dies.
	seq += 2
	for r := uint64(1); r < runs; r += 4 {
		write(r, 'b', seq)
		seq++
	}
	if punched, err := s.punch(); err != nil || punched < 8*runBlocks*BlockSize {
		t.Fatalf("punching after a reopen: %d bytes, %v; want at least %d", punched, err, 8*runBlocks*BlockSize)
	}
	check(s, "after punching again")
}
