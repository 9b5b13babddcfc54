package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// flipByte flips one byte of every segment in fs at offset off.
func flipByte(t *testing.T, fs vfs.FS, off int64) {
	t.Helper()
	names, err := fs.List("db/segments")
	if err != nil {
		t.Fatal(err)
	}
	flipped := 0
	for _, name := range names {
		if _, ok := parseSegName(name); !ok {
			continue
		}
		f, err := fs.OpenReadWrite(fs.PathJoin("db/segments", name), vfs.WriteCategoryUnspecified)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if n, _ := f.ReadAt(b, off); n == 1 {
			b[0] ^= 0x40
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
			flipped++
		}
		_ = f.Close()
	}
	if flipped == 0 {
		t.Fatalf("no segment has a byte at %d", off)
	}
}

// TestFlippedByte: a byte flipped in a block's data on disk is reported as
// an error wrapping ErrIO and ErrCorrupt on read, never returned as data;
// other blocks still read.
func TestFlippedByte(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	buf := make([]byte, 4*BlockSize)
	for i := range uint64(4) {
		fill(buf[i*BlockSize:(i+1)*BlockSize], 'f', 10+i)
	}
	if err := s.Write(ctx, 1, 10, buf, Stamp{1, 1}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The record: a header of recAlign bytes, then blocks 10..13; flip in
	// block 12.
	flipByte(t, fs, recAlign+2*BlockSize+100)
	s = openMem(t, fs)
	got := make([]byte, 4*BlockSize)
	err := s.Read(ctx, 1, 10, got, 1)
	if !errors.Is(err, ErrIO) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a flipped block: %v, want ErrIO and ErrCorrupt", err)
	}
	if bytes.Contains(got, []byte{'f' ^ 0x40}) {
		t.Fatal("flipped data returned")
	}
	if err := s.Read(ctx, 1, 12, got[:BlockSize], 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of the flipped block alone: %v", err)
	}
	for _, b := range []uint64{10, 11, 13} {
		if id := readID(t, s, 1, b, 1); id != 'f' {
			t.Fatalf("block %d = %q", b, id)
		}
	}
}

// TestReplayStopsAtCorruptRecord: after a crash, a record that fails its
// CRC ends the replay of its segment: neither it nor any later record is
// applied, and the older versions stay readable.
func TestReplayStopsAtCorruptRecord(t *testing.T) {
	// A one-block record is a header and the block; flip in record 2's
	// header, its crc array, its data.
	const rec = recAlign + BlockSize
	for _, flipAt := range []int64{rec + 8, rec + 73, rec + recAlign + 4000} {
		fs := vfs.NewCrashableMem()
		s, err := Open("db", Options{FS: fs, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, BlockSize)
		// Record 1 is checkpointed by Sync+checkpoint; records 2 and 3
		// are synced but only in the log.
		fill(buf, 'a', 1)
		if err := s.Write(ctx, 1, 1, buf, Stamp{1, 1}, true); err != nil {
			t.Fatal(err)
		}
		if err := s.checkpoint(); err != nil {
			t.Fatal(err)
		}
		fill(buf, 'b', 1)
		if err := s.Write(ctx, 1, 1, buf, Stamp{1, 2}, true); err != nil {
			t.Fatal(err)
		}
		fill(buf, 'c', 2)
		if err := s.Write(ctx, 1, 2, buf, Stamp{1, 3}, true); err != nil {
			t.Fatal(err)
		}
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
		_ = s.Close()
		// Record 1's segment is the first one; the flip hits record 2 there.
		flipByte(t, crashed, flipAt)
		s = openMem(t, crashed)
		if got := readID(t, s, 1, 1, 1); got != 'a' {
			t.Fatalf("flip at %d: block 1 = %q, want a (record 2 dropped)", flipAt, got)
		}
		if got := readID(t, s, 1, 2, 1); got != 0 {
			t.Fatalf("flip at %d: block 2 = %q, want zeros (replay stopped before record 3)", flipAt, got)
		}
	}
}

// TestSegmentsRollAndReopen writes across many small segments with
// overwrites, reopens with and without a checkpoint, and checks the
// blocks and that dead segments are deleted.
func TestSegmentsRollAndReopen(t *testing.T) {
	fs := vfs.NewMem()
	opts := Options{FS: fs, Logger: quiet, SegmentBytes: 32 << 10}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	want := map[uint64]byte{}
	buf := make([]byte, 4*BlockSize)
	for seq := uint64(1); seq <= 400; seq++ {
		b := rng.Uint64N(16) * 4
		id := byte(1 + rng.IntN(250))
		for i := range uint64(4) {
			fill(buf[i*BlockSize:(i+1)*BlockSize], id, b+i)
			want[b+i] = id
		}
		if err := s.Write(ctx, 2, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	check := func(s *Store) {
		t.Helper()
		for b, id := range want {
			if got := readID(t, s, 2, b, 1); got != id {
				t.Fatalf("block %d = %d, want %d", b, got, id)
			}
		}
	}
	check(s)
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.SegmentsRemoved == 0 || st.LiveBytes != int64(len(want))*BlockSize {
		t.Fatalf("stats %+v with %d live blocks", st, len(want))
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	check(s)
	if got := s.Stats().LiveBytes; got != int64(len(want))*BlockSize {
		t.Fatalf("live bytes after reopen %d", got)
	}
}

func FuzzDecodeHeader(f *testing.F) {
	hdr := make([]byte, headerBytes(recData, 2))
	binary.BigEndian.PutUint32(hdr[recFixedLen:], 7)
	binary.BigEndian.PutUint32(hdr[recFixedLen+4:], 9)
	encodeHeader(hdr, &recHeader{typ: recData, seg: 3, off: 8192, vol: 1, block: 5, n: 2, epoch: 4, seq: 6})
	f.Add(hdr)
	z := make([]byte, BlockSize)
	encodeHeader(z, &recHeader{typ: recZero, flags: flagReclaim, vol: 1, block: 5, n: 1 << 20, epoch: 4, seq: 6})
	f.Add(z)
	d := make([]byte, BlockSize)
	encodeHeader(d, &recHeader{typ: recDrop, vol: 9})
	f.Add(d)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHeader(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if h.typ == recData && h.n > recDataBlocksMax || checkBlocks(h.block, max(h.n, 1)) != nil && h.typ != recDrop {
			t.Fatalf("accepted bad header %+v", h)
		}
		// Round trip: re-encoding the decoded header gives the same bytes.
		hl := headerLen(h.typ, h.n)
		enc := make([]byte, headerBytes(h.typ, h.n))
		copy(enc[recFixedLen:hl], b[recFixedLen:hl])
		encodeHeader(enc, &h)
		if !bytes.Equal(enc[:hl], b[:hl]) {
			t.Fatalf("round trip of %+v: %x != %x", h, enc[:hl], b[:hl])
		}
	})
}

// TestSpareReuse: the files of reaped segments are kept and new segments
// start in them, over the old bytes; no old record is ever taken for one
// of the new segment's, after a crash either, and the spares go once the
// log is quiet.
func TestSpareReuse(t *testing.T) {
	fs := vfs.NewCrashableMem()
	opts := Options{FS: fs, Logger: quiet, CacheBytes: 1 << 20, SegmentBytes: 64 << 10}
	s, err := Open("db", opts)
	if err != nil {
		t.Fatal(err)
	}
	const blocks = 64 // four segments and a half
	buf := make([]byte, BlockSize)
	seq := uint64(0)
	pass := func(id byte) {
		t.Helper()
		for b := range uint64(blocks) {
			seq++
			fill(buf, id, b)
			if err := s.Write(ctx, 1, b, buf, Stamp{1, seq}, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	pass('a')
	pass('b') // every 'a' segment is dead, and none was synced
	pass('c')
	reapUntilSpare(t, s, pass)
	// The next segment starts in a spare; one more block goes there.
	rollActive(t, s)
	seq++
	fill(buf, 'c', 3)
	if err := s.Write(ctx, 1, 3, buf, Stamp{1, seq}, false); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.SegmentsReused == 0 {
		t.Fatal("no segment started in a spare file")
	}
	// The active segment is a reused file: past its last record lie the
	// old segment's records, which must not parse as this segment's.
	s.seg.mu.Lock()
	a, end := s.seg.active, s.seg.off
	s.seg.mu.Unlock()
	if a.fileBytes <= end {
		t.Fatalf("active segment %s: file of %d bytes, %d written; want a reused file with old bytes past the end", segName(a.id), a.fileBytes, end)
	}
	hdr := make([]byte, recHeaderBytesMax+RequestBytesMax)
	if _, _, _, ok, err := readRecord(a, end, hdr, true); ok || err != nil {
		t.Fatalf("the old bytes at %d of reused segment %s read as a record (ok %v, err %v)", end, segName(a.id), ok, err)
	}
	if !oldRecordAt(a, end, hdr) {
		t.Fatalf("no old record at %d of segment %s: the test shows nothing", end, segName(a.id))
	}
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// A crash that keeps every unsynced byte: replay must stop at the end
	// of the 'c' records in the reused file.
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(1, 2))})
	_ = s.Close()
	s, err = Open("db", Options{FS: crashed, Logger: quiet, CacheBytes: 1 << 20, SegmentBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, BlockSize)
	for b := range uint64(blocks) {
		if err := s.Read(ctx, 1, b, got, 1); err != nil {
			t.Fatal(err)
		}
		fill(buf, 'c', b)
		if !bytes.Equal(got, buf) {
			t.Fatalf("block %d after the crash: %q..., want the 'c' pass", b, got[:8])
		}
	}
	// Quiet: the spares go within a few spareIdle.
	pass('d')
	pass('e')
	if err := s.reap(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(3*spareIdle + time.Second); s.Stats().SpareBytes > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("spares still hold %d bytes", s.Stats().SpareBytes)
		}
	}
	names, err := crashed.List("db/segments")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.HasSuffix(n, spareSuffix) {
			t.Fatalf("spare file %s left once the log was quiet", n)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// oldRecordAt reports whether a record of another segment starts at off
// of sg: the old bytes of a reused file.
func oldRecordAt(sg *segment, off int64, buf []byte) bool {
	if n, _ := sg.f.ReadAt(buf[:recAlign], off); n < recAlign {
		return false
	}
	h, _, err := parseFixed(buf[:recAlign])
	return err == nil && h.seg != sg.id
}

// reapUntilSpare reaps s until it keeps a spare file, writing pass('c')
// again between tries (the spare tests' 64 KiB segments, blocks written
// pass after pass).
func reapUntilSpare(t *testing.T, s *Store, pass func(id byte)) {
	t.Helper()
	for i := 0; ; i++ {
		if err := s.reap(); err != nil {
			t.Fatal(err)
		}
		if s.Stats().SpareBytes > 0 {
			return
		}
		if i == 10 {
			t.Fatalf("no spare file kept after %d segments reaped", s.Stats().SegmentsReaped)
		}
		pass('c')
	}
}

// rollActive seals the active segment and starts the next (in a spare
// file, when s keeps one).
func rollActive(t *testing.T, s *Store) {
	t.Helper()
	s.seg.mu.Lock()
	err := s.seg.rollLocked()
	s.seg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}
