package store

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestModelClean applies random histories (writes, some of them in
// batches, zeros of every size,
// new epochs, retained sets) in stamp order on small segments, with
// cleaning, checkpoints and reopens in between, and checks every block at
// the live epoch and at every retained epoch, Extents and Allocated against
// the model. At the end the space held is bounded by the live data.
func TestModelClean(t *testing.T) {
	const blocks = 200
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 3))
			// Odd seeds run on the OS file system: its segments are
			// mapped, and short reads come from the views (view.go)
			// through cleaning, reaping and the reuse of spare files.
			var fs vfs.FS = vfs.NewMem()
			dir := "db"
			if seed%2 == 1 {
				fs, dir = vfs.Default, filepath.Join(t.TempDir(), "db")
			}
			opts := Options{FS: fs, Logger: quiet, SegmentBytes: 32 << 10}
			s, err := Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			epoch := uint64(1)
			var ops []op
			var retained []uint64
			for round := range 10 {
				more := randomOps(rng, 40, blocks, uint64(len(ops)+1), &epoch)
				for i := 0; i < len(more); {
					i += applyBatch(t, s, 3, more[i:], 1+rng.IntN(8))
				}
				ops = append(ops, more...)
				switch rng.IntN(3) {
				case 0:
					retained = append(retained, epoch)
				case 1:
					if len(retained) > 0 {
						retained = retained[1:]
					}
				}
				mustRetain(t, s, 3, retained)
				epoch++
				limit := []float64{0.3, 0.7, 1}[rng.IntN(3)]
				if _, err := s.clean(limit); err != nil {
					t.Fatalf("round %d: clean: %v", round, err)
				}
				if rng.IntN(3) == 0 {
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					if s, err = Open(dir, opts); err != nil {
						t.Fatal(err)
					}
				}
				checkModel(t, s, 3, ops, blocks, append(slices.Clone(retained), epoch))
			}
			// Everything sealed is cleaned: what is left on disk is the live
			// data plus headers and the active segment.
			if _, err := s.clean(1); err != nil {
				t.Fatal(err)
			}
			st := s.Stats()
			t.Logf("stats: %+v", st)
			if st.SegmentBytes > 2*st.LiveBytes+2*opts.SegmentBytes {
				t.Fatalf("after cleaning: %d bytes in segments for %d live", st.SegmentBytes, st.LiveBytes)
			}
		})
	}
}

// TestCleanAgedVolume overwrites a volume many times and checks that the
// cleaner brings the space back to about the live data, keeps every block,
// and counts what it did.
func TestCleanAgedVolume(t *testing.T) {
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: fs, Logger: quiet, SegmentBytes: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	const blocks = 256
	rng := rand.New(rand.NewPCG(7, 7))
	want := make([]byte, blocks)
	buf := make([]byte, BlockSize)
	for seq := uint64(1); seq <= 4*blocks; seq++ {
		b := uint64(seq-1) % blocks
		if seq > blocks {
			b = rng.Uint64N(blocks)
		}
		id := byte(1 + rng.IntN(250))
		fill(buf, id, b)
		want[b] = id
		if err := s.Write(ctx, 1, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	before := s.Stats()
	if _, err := s.clean(cleanLiveMax); err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	t.Logf("before %+v\nafter %+v", before, after)
	if after.CleanerBytes == 0 || after.SegmentsCleaned == 0 || after.BytesReclaimed == 0 {
		t.Fatalf("cleaner did nothing: %+v", after)
	}
	if after.SegmentBytes >= before.SegmentBytes {
		t.Fatalf("segment bytes %d -> %d", before.SegmentBytes, after.SegmentBytes)
	}
	for b := range uint64(blocks) {
		if got := readID(t, s, 1, b, 1); got != want[b] {
			t.Fatalf("block %d = %d, want %d", b, got, want[b])
		}
	}
}

// TestCleanPolicy: the busy threshold and rate rise with space pressure
// (a file system filling toward twice the reserve), and an idle look (no
// append but the cleaner's since the last) compacts segments that the busy
// threshold leaves alone, down to cleanIdleRatio. The cleaner goroutine is
// kept from looking on its own; the test looks with cleanTick.
func TestCleanPolicy(t *testing.T) {
	oldCheck, oldInterval := spaceCheckInterval, cleanInterval
	spaceCheckInterval, cleanInterval = 0, time.Hour
	defer func() { spaceCheckInterval, cleanInterval = oldCheck, oldInterval }()
	fs := &capFS{FS: vfs.NewMem(), capacity: 64 << 20}
	s, err := Open("db", Options{FS: fs, Logger: quiet, SegmentBytes: 1 << 20, ReserveBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if p := s.busyPolicy(); p.limit != 0 || p.rate != cleanBytesPerSec || p.sync || p.perForeground != cleanBusyPerForeground {
		t.Fatalf("empty store: busy policy %+v, want nothing cleaned (limit 0) at %d B/s, %v per foreground byte", p, cleanBytesPerSec, cleanBusyPerForeground)
	}
	// 4 MiB, then every block but one in 3 overwritten: the first
	// segments are a third live, which the busy look cleans.
	const blocks = 1024
	buf := make([]byte, 16*BlockSize)
	seq := uint64(0)
	for b := uint64(0); b < blocks; b += 16 {
		seq++
		for i := range uint64(16) {
			fill(buf[i*BlockSize:(i+1)*BlockSize], 1, b+i)
		}
		if err := s.Write(ctx, 1, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	for b := uint64(0); b < blocks; b++ {
		if b%3 == 0 {
			continue
		}
		seq++
		fill(buf[:BlockSize], 2, b)
		if err := s.Write(ctx, 1, b, buf[:BlockSize], Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	// Then 3 in 10 of those again: their first 4 KiB records are 0.6 live,
	// which only the idle look cleans.
	for b := uint64(0); b < blocks; b++ {
		if b%3 == 0 || b%10 >= 3 {
			continue
		}
		seq++
		fill(buf[:BlockSize], 3, b)
		if err := s.Write(ctx, 1, b, buf[:BlockSize], Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	// Busy: the writes above happened since the last look.
	if _, err := s.cleanTick(); err != nil {
		t.Fatal(err)
	}
	busy := s.Stats()
	if busy.SegmentsCleaned == 0 {
		t.Fatalf("busy look cleaned nothing: %+v", busy)
	}
	for _, sg := range *s.seg.tab.Load() {
		if u, _ := liveFraction(sg); sg.id < s.seg.end().seg && sg.live.Load() > 0 && u < cleanLiveMax {
			t.Fatalf("after a busy look, segment %s is %.2f live", segName(sg.id), u)
		}
	}
	total, live := s.spaceBytes()
	if float64(total) <= cleanIdleRatio*float64(live) {
		t.Fatalf("after the busy look the segments hold %d bytes for %d live: nothing left for the idle look", total, live)
	}
	// Idle: nothing appended since.
	if _, err := s.cleanTick(); err != nil {
		t.Fatal(err)
	}
	idle := s.Stats()
	total, live = s.spaceBytes()
	t.Logf("busy: %d segments cleaned; idle: %d more, segments %d bytes for %d live", busy.SegmentsCleaned, idle.SegmentsCleaned-busy.SegmentsCleaned, total, live)
	if idle.SegmentsCleaned == busy.SegmentsCleaned || float64(total) > cleanIdleRatio*float64(live)+float64(s.seg.segBytes)/8 {
		t.Fatalf("idle look: %d segments cleaned, %d bytes for %d live; want at most %.2fx", idle.SegmentsCleaned-busy.SegmentsCleaned, total, live, cleanIdleRatio)
	}
	for b := range uint64(blocks) {
		want := byte(2)
		switch {
		case b%3 == 0:
			want = 1
		case b%10 < 3:
			want = 3
		}
		if got := readID(t, s, 1, b, 1); got != want {
			t.Fatalf("block %d = %d, want %d", b, got, want)
		}
	}

	// Pressure: fill the file system toward twice the reserve.
	for b := uint64(blocks); ; b += 16 {
		seq++
		if err := s.Write(ctx, 1, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
		if _ = s.checkSpace(0, s.reserve); s.spacePressure() > 0.5 {
			break
		}
	}
	pr := s.spacePressure()
	p := s.busyPolicy()
	t.Logf("pressure %.2f: busy policy %+v", pr, p)
	if p.limit <= cleanLiveMax || p.limit > cleanPressureLiveMax || p.rate <= cleanBytesPerSec || !p.sync {
		t.Fatalf("under pressure %.2f: busy policy %+v, want a limit in (%v, %v], a faster rate and sync", pr, p, cleanLiveMax, cleanPressureLiveMax)
	}
}

// TestCleanDeepIdle: a store of 4 KiB writes with no dead block is 0.89
// live per segment (each block has a 512-byte header), so neither a busy
// look nor the first idle stage cleans it (its segments hold 1.125 times
// the live bytes, under cleanIdleRatio); once nothing else appended for
// cleanDeepIdle, a look compacts it to about cleanDeepRatio; and a
// foreground append stops a deep pass at once. The cleaner goroutine is
// kept from looking on its own; the test looks with cleanTick and stands
// in for the clock by moving the last foreground change back.
func TestCleanDeepIdle(t *testing.T) {
	oldInterval, oldHook := cleanInterval, cleanBatchHook
	cleanInterval = time.Hour
	defer func() { cleanInterval, cleanBatchHook = oldInterval, oldHook }()
	const segBytes = 256 << 10
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quiet, SegmentBytes: segBytes})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	const blocks = 1024 // 4 MiB: 18 segments of 4 KiB records
	buf := make([]byte, BlockSize)
	seq := uint64(0)
	write := func(vol, b uint64, id byte) {
		t.Helper()
		seq++
		fill(buf, id, b)
		if err := s.Write(ctx, vol, b, buf, Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	for b := range uint64(blocks) {
		write(1, b, 1)
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	ratio := func() float64 {
		total, live := s.spaceBytes()
		return float64(total) / float64(live)
	}
	tick := func(what string) {
		t.Helper()
		if _, err := s.cleanTick(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	r0 := ratio()
	// Busy (the writes came since the last look), then idle but not for
	// cleanDeepIdle: nothing to clean.
	tick("busy look")
	tick("idle look")
	if st := s.Stats(); st.SegmentsCleaned != 0 || st.CleanerDeepPasses != 0 {
		t.Fatalf("a busy and an idle look cleaned %d segments (%d deep passes) of 4 KiB writes with no dead block", st.SegmentsCleaned, st.CleanerDeepPasses)
	}
	if r0 <= cleanDeepRatio+0.05 || r0 > cleanIdleRatio {
		t.Fatalf("4 KiB writes hold %.3f times the live bytes, want in (%.2f, %.2f]", r0, cleanDeepRatio+0.05, cleanIdleRatio)
	}

	// Deep idle, and a foreground append during the pass: the pass stops
	// at its next batch with most segments left.
	hooked := 0
	cleanBatchHook = func() {
		if hooked++; hooked == 1 {
			write(2, 0, 9)
		}
	}
	s.cl.lastChange = s.cl.lastChange.Add(-cleanDeepIdle)
	tick("deep look with a foreground append")
	cleanBatchHook = nil
	st := s.Stats()
	r1 := ratio()
	t.Logf("4 KiB writes: %.3f of live; a deep pass stopped by a write: %d batches, %d bytes copied, %.3f of live", r0, hooked, st.CleanerDeepCopiedBytes, r1)
	if hooked != 1 || st.CleanerDeepCopiedBytes == 0 || st.CleanerDeepCopiedBytes > copyBlocksMax*BlockSize || r1 <= cleanDeepRatio+0.05 {
		t.Fatalf("a deep pass went on past a foreground append: %d batches, %d bytes copied, segments at %.3f of live", hooked, st.CleanerDeepCopiedBytes, r1)
	}
	// The append makes the next look busy and resets the idle clock: no
	// deep pass until cleanDeepIdle passed again.
	tick("busy look after the append")
	tick("idle look after the append")
	if st2 := s.Stats(); st2.CleanerDeepCopiedBytes != st.CleanerDeepCopiedBytes {
		t.Fatalf("looks within cleanDeepIdle of an append copied %d bytes deep", st2.CleanerDeepCopiedBytes-st.CleanerDeepCopiedBytes)
	}

	// Deep idle, undisturbed: down to cleanDeepRatio (the copies go to the
	// active segment, which counts: allow an eighth of a segment).
	s.cl.lastChange = s.cl.lastChange.Add(-cleanDeepIdle)
	tick("deep look")
	st = s.Stats()
	total, live := s.spaceBytes()
	freed := int64(st.CleanerDeepEmptiedBytes) - int64(st.CleanerDeepAppendedBytes)
	t.Logf("deep pass: segments %d bytes for %d live (%.3f); %d passes copied %d bytes, appended %d, emptied %d: %.1f bytes copied per byte freed",
		total, live, ratio(), st.CleanerDeepPasses, st.CleanerDeepCopiedBytes, st.CleanerDeepAppendedBytes, st.CleanerDeepEmptiedBytes,
		float64(st.CleanerDeepCopiedBytes)/float64(max(freed, 1)))
	if st.CleanerDeepPasses != 2 || float64(total) > cleanDeepRatio*float64(live)+segBytes/8 || freed <= 0 {
		t.Fatalf("deep look: %d passes, segments %d bytes for %d live (%.3f), freed %d; want at most %.2fx", st.CleanerDeepPasses, total, live, ratio(), freed, cleanDeepRatio)
	}
	// Its checkpoint's batch went to pebble's WAL, and the look flushed
	// it, leaving no WAL bytes (flushIndexIdle).
	if m := s.db.Metrics(); m.WAL.Size != 0 || m.Flush.Count == 0 {
		t.Fatalf("after a deep look pebble's WAL holds %d bytes (%d flushes)", m.WAL.Size, m.Flush.Count)
	}
	// Once there, a deep look has nothing to do.
	tick("deep look at the target")
	if st2 := s.Stats(); st2.CleanerDeepPasses != st.CleanerDeepPasses {
		t.Fatalf("a deep look at %.3f copied %d bytes", ratio(), st2.CleanerDeepCopiedBytes-st.CleanerDeepCopiedBytes)
	}
	for b := range uint64(blocks) {
		if got := readID(t, s, 1, b, 1); got != 1 {
			t.Fatalf("block %d = %d, want 1", b, got)
		}
	}
	if got := readID(t, s, 2, 0, 1); got != 9 {
		t.Fatalf("volume 2 block 0 = %d, want 9", got)
	}
	// And all of it survives a reopen from the checkpoints and the log.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fs := s.fs
	if s, err = Open("db", Options{FS: fs, Logger: quiet, SegmentBytes: segBytes}); err != nil {
		t.Fatal(err)
	}
	for b := range uint64(blocks) {
		if got := readID(t, s, 1, b, 1); got != 1 {
			t.Fatalf("after reopen: block %d = %d, want 1", b, got)
		}
	}
}

// TestWALNotRecycled: pebble deletes a WAL once its memtable is flushed
// instead of keeping it for reuse (walCleaner), so the store's pebble
// directory holds one WAL however many it wrote.
func TestWALNotRecycled(t *testing.T) {
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: fs, Logger: quiet, SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	buf := make([]byte, BlockSize)
	seq := uint64(0)
	for round := range 6 {
		for b := range uint64(64) {
			seq++
			fill(buf, byte(round+1), b)
			if err := s.Write(ctx, 1, b, buf, Stamp{1, seq}, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.checkpoint(); err != nil {
			t.Fatal(err)
		}
		if err := s.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	s.db.TestOnlyWaitForCleaning()
	names, err := fs.List("db")
	if err != nil {
		t.Fatal(err)
	}
	var wals []string
	for _, name := range names {
		if strings.HasSuffix(name, ".log") {
			wals = append(wals, name)
		}
	}
	if len(wals) != 1 {
		t.Fatalf("after 6 flushes the pebble directory holds WALs %v, want one", wals)
	}
}

// TestCleanDeepIdleCutsSpareTail: a deep idle look cuts the active
// segment's file at the end of its records when it started in a spare, so
// that the old segment's bytes past them give their space back, as the
// spares themselves do when the log is quiet. On the real file system
// (the cut is an ftruncate of the file).
func TestCleanDeepIdleCutsSpareTail(t *testing.T) {
	oldInterval := cleanInterval
	cleanInterval = time.Hour
	defer func() { cleanInterval = oldInterval }()
	dir := t.TempDir()
	s, err := Open(dir, Options{FS: vfs.Default, Logger: quiet, CacheBytes: 1 << 20, SegmentBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
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
	pass('b') // every 'a' segment is dead, and none was synced: reaped to spares
	pass('c')
	reapUntilSpare(t, s, pass)
	rollActive(t, s)
	seq++
	fill(buf, 'd', 3)
	if err := s.Write(ctx, 1, 3, buf, Stamp{1, seq}, false); err != nil {
		t.Fatal(err)
	}
	s.seg.mu.Lock()
	a, end := s.seg.active, s.seg.off
	s.seg.mu.Unlock()
	size := func() int64 {
		t.Helper()
		fi, err := os.Stat(s.seg.path(a.id))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	if n := size(); n <= end {
		t.Fatalf("active segment %s: file of %d bytes, %d written; want a reused file with old bytes past the end", segName(a.id), n, end)
	}
	// A busy and an idle look leave it; a deep idle one cuts it.
	for _, what := range []string{"busy", "idle"} {
		if _, err := s.cleanTick(); err != nil {
			t.Fatal(err)
		}
		if n := size(); n <= end {
			t.Fatalf("an %s look cut the active segment to %d bytes", what, n)
		}
	}
	s.cl.lastChange = s.cl.lastChange.Add(-cleanDeepIdle)
	if _, err := s.cleanTick(); err != nil {
		t.Fatal(err)
	}
	if n := size(); n != end {
		t.Fatalf("after a deep idle look the active segment %s is %d bytes, %d written", segName(a.id), n, end)
	}
	// Appends go on after the cut, and all of it reads back after a
	// reopen.
	seq++
	fill(buf, 'e', 4)
	if err := s.Write(ctx, 1, 4, buf, Stamp{1, seq}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir, Options{FS: vfs.Default, Logger: quiet, CacheBytes: 1 << 20, SegmentBytes: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	for b := range uint64(blocks) {
		want := byte('c')
		switch b {
		case 3:
			want = 'd'
		case 4:
			want = 'e'
		}
		if got := readID(t, s, 1, b, 1); got != want {
			t.Fatalf("after reopen: block %d = %q, want %q", b, got, want)
		}
	}
}

// TestLiveDeltaSeesNewSegments: an apply's live-count changes reach a
// segment published after the apply began (a copy record that rolled the
// log moved the version the apply displaces there), instead of being lost
// and leaving that segment counted live with nothing in it.
func TestLiveDeltaSeesNewSegments(t *testing.T) {
	s := openMem(t, vfs.NewMem())
	buf := make([]byte, BlockSize)
	fill(buf, 1, 0)
	if err := s.Write(ctx, 1, 0, buf, Stamp{1, 1}, false); err != nil {
		t.Fatal(err)
	}
	d := liveDelta{log: s.seg} // as an apply's, before the roll
	s.seg.mu.Lock()
	err := s.seg.rollLocked()
	b := s.seg.active
	s.seg.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	before := b.live.Load()
	d.add(b.id, 2)
	d.add(b.id, -1)
	d.flush()
	if got := b.live.Load(); got != before+1 {
		t.Fatalf("segment %s published after the delta began: live %d, want %d", segName(b.id), got, before+1)
	}
}

// TestCleanBusyCredit: busy, a store whose segments hold at most
// cleanRatioLow times its live bytes is not cleaned at all, even with
// segments below cleanLiveMax; past that, a look copies what the
// foreground earned since the last one (cleanBusyPerForeground per byte,
// scaled by the ratio pressure), give or take one copy record, and the
// next look goes on in the segment the last one stopped in without
// reading its headers again.
func TestCleanBusyCredit(t *testing.T) {
	oldInterval, oldBatch := cleanInterval, cleanBusyBatchBlocks
	cleanInterval, cleanBusyBatchBlocks = time.Hour, 4 // copy records of 16 KiB: the bounds below are tight
	defer func() { cleanInterval, cleanBusyBatchBlocks = oldInterval, oldBatch }()
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quiet, SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	const blocks = 1024 // 4 MiB
	buf := make([]byte, 16*BlockSize)
	seq := uint64(0)
	write := func(b, n uint64, id byte) {
		t.Helper()
		seq++
		for i := range n {
			fill(buf[i*BlockSize:(i+1)*BlockSize], id, b+i)
		}
		if err := s.Write(ctx, 1, b, buf[:n*BlockSize], Stamp{1, seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	for b := uint64(0); b < blocks; b += 16 {
		write(b, 16, 1)
	}
	// 3 in 5 of the first 256 blocks again: the first segment is 0.4 live,
	// the segments about 1.05 times the live bytes.
	for b := uint64(0); b < 256; b++ {
		if b%5 < 3 {
			write(b, 1, 2)
		}
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.cleanTick(); err != nil {
		t.Fatal(err)
	}
	total, live := s.spaceBytes()
	if st := s.Stats(); st.CleanerBytes != 0 {
		t.Fatalf("segments at %.2fx the live bytes: a busy look copied %d bytes, want none below %.2fx", float64(total)/float64(live), st.CleanerBytes, cleanRatioLow)
	}

	// Every block but one in 4 overwritten twice: the ratio is past
	// cleanRatioLow and most segments are far below cleanLiveMax.
	for pass := byte(3); pass <= 4; pass++ {
		for b := uint64(0); b < blocks; b++ {
			if b%4 != 0 {
				write(b, 1, pass)
			}
		}
	}
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	total, live = s.spaceBytes()
	p := s.busyPolicy()
	if p.limit != cleanLiveMax || p.perForeground <= cleanBusyPerForeground {
		t.Fatalf("segments at %.2fx the live bytes: busy policy %+v, want limit %v and more than %v per foreground byte", float64(total)/float64(live), p, cleanLiveMax, cleanBusyPerForeground)
	}
	// As if only what earns two copy records had been appended since the
	// last look.
	slack := int64(cleanBusyBatchBlocks * BlockSize)
	earned := int64(float64(2*slack) / p.perForeground)
	s.cl.lastForeground, s.cl.credit = s.foreground()-earned, 0
	if _, err := s.cleanTick(); err != nil {
		t.Fatal(err)
	}
	first := s.Stats()
	credit := int64(p.perForeground * float64(earned))
	if got := int64(first.CleanerBytes); got == 0 || got > credit+slack {
		t.Fatalf("a look with %d bytes of credit copied %d, want 1 to %d", credit, got, credit+slack)
	}
	if s.cl.resume.sg == nil || len(s.cl.resume.refs) == 0 {
		t.Fatalf("the look stopped for credit but kept no segment to resume")
	}
	// Two of the blocks left die meanwhile: the next look does not copy
	// them.
	dead := map[uint64]bool{}
	for _, r := range s.cl.resume.refs[:2] {
		dead[r.e.block] = true
		write(r.e.block, 1, 5)
	}
	kept := s.stillLive(s.cl.resume.sg, slices.Clone(s.cl.resume.refs))
	if len(kept) != len(s.cl.resume.refs)-2 {
		t.Fatalf("%d blocks left, 2 overwritten: %d still live", len(s.cl.resume.refs), len(kept))
	}
	for _, r := range kept {
		if dead[r.e.block] {
			t.Fatalf("block %d overwritten, still taken for live", r.e.block)
		}
	}
	// The next look earns half of what is left in that segment: it
	// copies from the segment it stopped in, and stops in it again.
	left := int64(len(kept)) * BlockSize
	if left/2 < slack {
		t.Fatalf("the look left %d bytes in its segment, want at least %d for the next look", left, 2*slack)
	}
	readBefore := s.cl.read.Load()
	s.cl.credit = 0
	s.cl.lastForeground = s.foreground() - int64(float64(left/2)/p.perForeground)
	if _, err := s.cleanTick(); err != nil {
		t.Fatal(err)
	}
	second := s.Stats()
	got := int64(second.CleanerBytes - first.CleanerBytes)
	if got < left/2 || got > left/2+slack {
		t.Fatalf("the next look copied %d bytes, want %d to %d", got, left/2, left/2+slack)
	}
	// What it read is the blocks it copied, no record header.
	if r := s.cl.read.Load() - readBefore; r != got {
		t.Fatalf("the next look read %d bytes for %d copied, want it to resume the segment it stopped in without reading its headers again", r, got)
	}
	for b := range uint64(blocks) {
		want := byte(4)
		switch {
		case dead[b]:
			want = 5
		case b%4 != 0:
		case b < 256 && b%5 < 3:
			want = 2
		default:
			want = 1
		}
		if got := readID(t, s, 1, b, 1); got != want {
			t.Fatalf("block %d = %d, want %d", b, got, want)
		}
	}
}
