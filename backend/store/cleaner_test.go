package store

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

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
