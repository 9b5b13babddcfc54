package store

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestModelClean applies random histories (writes, zeros of every size,
// new epochs, retained sets) in stamp order on small segments, with
// cleaning, checkpoints and reopens in between, and checks every block at
// the live epoch and at every retained epoch, Extents and Allocated against
// the model. At the end the space held is bounded by the live data.
func TestModelClean(t *testing.T) {
	const blocks = 200
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 3))
			fs := vfs.NewMem()
			opts := Options{FS: fs, Logger: quiet, SegmentBytes: 32 << 10}
			s, err := Open("db", opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			epoch := uint64(1)
			var ops []op
			var retained []uint64
			for round := range 10 {
				more := randomOps(rng, 40, blocks, uint64(len(ops)+1), &epoch)
				for _, o := range more {
					apply(t, s, 3, o)
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
					if s, err = Open("db", opts); err != nil {
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
	if p := s.busyPolicy(); p.limit != cleanLiveMax || p.rate != cleanBytesPerSec || p.sync {
		t.Fatalf("empty store: busy policy %+v, want limit %v at %d B/s", p, cleanLiveMax, cleanBytesPerSec)
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
