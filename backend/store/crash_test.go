package store

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

var (
	crashSeed  = flag.Uint64("crash.seed", 0, "run TestCrash with this seed only")
	crashSeeds = flag.Int("crash.seeds", 0, "number of seeds TestCrash runs (0: 24, 6 under the race detector)")
)

// TestCrash runs random writes and zeros, some synced and some followed by
// Sync, on pebble's crashable in-memory FS; it then "loses power" (a crash
// clone keeping a random part of the unsynced data), reopens and checks
// that the store is the result of a prefix of the history that includes
// every acknowledged-durable call plus a subset of the later ones (a block
// device promises nothing about the order in which unflushed writes
// reach the disk, and the store keeps none: see segLog). Several crashes
// per seed. Segments are
// small (so records span rolls) and a goroutine runs the cleaner and
// checkpoints (which delete dead segments) throughout, or in half the
// rounds relogs and reaps unsynced segments (relog.go), so the crash also
// lands mid-record, mid-roll, mid-cleaning, mid-relog and mid-checkpoint.
// The store's own cleaner goroutine runs too, looking every few
// milliseconds, so that its busy and idle passes (whose emptied segments
// are reaped, not checkpointed) are crashed into as well.
func TestCrash(t *testing.T) {
	old := cleanInterval
	cleanInterval = 2 * time.Millisecond
	defer func() { cleanInterval = old }()
	n := *crashSeeds
	if n == 0 {
		n = 24
		if raceEnabled {
			n = 6
		}
	}
	defer func(b int64, l float64) { relogBytes, relogLiveMax = b, l }(relogBytes, relogLiveMax)
	relogBytes, relogLiveMax = 96<<10, 0.9 // a segment and a half
	seeds := make([]uint64, 0, n)
	if *crashSeed != 0 {
		seeds = append(seeds, *crashSeed)
	} else {
		for i := range n {
			seeds = append(seeds, uint64(i+1))
		}
	}
	if testing.Short() {
		seeds = seeds[:min(len(seeds), 4)]
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			defer func() {
				if t.Failed() {
					t.Logf("replay: go test ./backend/store -run TestCrash -crash.seed=%d", seed)
				}
			}()
			crashRun(t, seed)
		})
	}
}

func crashRun(t *testing.T, seed uint64) {
	const (
		blocks    = 256
		opsPerRun = 150
		crashes   = 3
	)
	rng := rand.New(rand.NewPCG(seed, 0xc4a54))
	fs := vfs.NewCrashableMem()
	var ops []op // history that survived so far, plus this round's
	epoch := uint64(1)
	var relogged, reused uint64
	defer func() { t.Logf("segments relogged: %d, started in a spare file: %d", relogged, reused) }()
	for round := range crashes {
		s, err := Open("db", crashOpts(fs))
		if err != nil {
			t.Fatalf("round %d: open: %v", round, err)
		}
		stop := make(chan struct{})
		ckDone := make(chan struct{})
		relogging := rng.IntN(2) == 0
		go func() {
			defer close(ckDone)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if relogging && i%8 != 0 {
					// Unsynced segments moved and reaped, as under
					// overwrites with no flush, and a checkpoint now and
					// then.
					if _, err := s.relog(); err != nil {
						t.Error(err)
						return
					}
					if err := s.reap(); err != nil {
						t.Error(err)
						return
					}
					continue
				}
				if _, err := s.clean(0.7); err != nil {
					t.Error(err)
					return
				}
				if err := s.checkpoint(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		durable := len(ops) // every op before this index must survive
		more := randomOps(rng, opsPerRun, blocks, uint64(len(ops)+1)+uint64(round)*1000, &epoch)
		for i := range more {
			more[i].sync = rng.IntN(30) == 0
		}
		for i := 0; i < len(more); {
			k := applyBatch(t, s, 5, more[i:], 1+rng.IntN(8)) // plain writes, some batched
			for _, o := range more[i : i+k] {
				ops = append(ops, o)
				if o.sync {
					durable = len(ops)
				}
			}
			i += k
			if rng.IntN(40) == 0 {
				if err := s.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				durable = len(ops)
			}
		}
		pct := []int{0, 100, rng.IntN(101)}[rng.IntN(3)]
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(seed, uint64(round)))})
		close(stop)
		<-ckDone
		relogged += s.Stats().SegmentsRelogged
		reused += s.Stats().SegmentsReused
		_ = s.Close()
		fs = crashed

		s, err = Open("db", crashOpts(fs))
		if err != nil {
			t.Fatalf("round %d: reopen after crash (unsynced kept %d%%): %v", round, pct, err)
		}
		got := make([]byte, blocks)
		for b := range uint64(blocks) {
			got[b] = readID(t, s, 5, b, epoch)
		}
		kept, ok := survivingSubset(ops, durable, got, epoch)
		if !ok {
			for b := range uint64(blocks) {
				if want := expect(ops[:durable], b, epoch); got[b] != want {
					t.Logf("block %d = %d; durable prefix says %d", b, got[b], want)
					for i, o := range ops {
						if b >= o.block && b < o.block+o.n {
							t.Logf("  op %d (durable %v): %v", i, i < durable, o)
						}
					}
				}
			}
			t.Fatalf("round %d (unsynced kept %d%%): state is not the %d durable ops plus a subset of the %d after them", round, pct, durable, len(ops)-durable)
		}
		t.Logf("round %d: %d ops, %d durable, %d survived (unsynced kept %d%%)", round, len(ops), durable, len(kept), pct)
		ops = kept
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func crashOpts(fs vfs.FS) Options {
	return Options{FS: fs, Logger: quiet, CacheBytes: 1 << 20, SegmentBytes: 64 << 10}
}

// survivingSubset explains got at the live epoch as ops[:durable] plus a
// subset of the later ops, each of which applies whole or not at all: it
// returns that history (in op order) and true, or false if there is none.
// Exact: going from the newest later op to the oldest, an op must be in
// the subset if it shows what got shows wherever nothing newer (in the
// subset, or durable) hides it, and cannot be otherwise; what no later op
// decides must be what the durable ops show.
func survivingSubset(ops []op, durable int, got []byte, epoch uint64) ([]op, bool) {
	show := func(o *op) byte {
		if o == nil || o.zero {
			return 0
		}
		return o.id
	}
	base := make([]*op, len(got))
	for i := range ops[:durable] {
		o := &ops[i]
		if o.st.Epoch > epoch {
			continue
		}
		for b := o.block; b < o.block+o.n; b++ {
			if cur := base[b]; cur == nil || newer(o.st.Epoch, o.st.Seq, cur.st.Epoch, cur.st.Seq) {
				base[b] = o
			}
		}
	}
	later := make([]int, 0, len(ops)-durable)
	for i := durable; i < len(ops); i++ {
		if ops[i].st.Epoch <= epoch {
			later = append(later, i)
		}
	}
	slices.SortFunc(later, func(i, j int) int {
		a, b := ops[i].st, ops[j].st
		if newer(a.Epoch, a.Seq, b.Epoch, b.Seq) {
			return -1
		}
		if newer(b.Epoch, b.Seq, a.Epoch, a.Seq) {
			return 1
		}
		return 0
	})
	decided := make([]bool, len(got))
	joined := make([]bool, len(ops))
	for _, i := range later {
		o := &ops[i]
		fits, shows := true, false
		for b := o.block; b < o.block+o.n; b++ {
			if decided[b] || base[b] != nil && newer(base[b].st.Epoch, base[b].st.Seq, o.st.Epoch, o.st.Seq) {
				continue // hidden here
			}
			if show(o) != got[b] {
				fits = false
				break
			}
			shows = true
		}
		if !fits || !shows {
			continue
		}
		joined[i] = true
		for b := o.block; b < o.block+o.n; b++ {
			if !(base[b] != nil && newer(base[b].st.Epoch, base[b].st.Seq, o.st.Epoch, o.st.Seq)) {
				decided[b] = true
			}
		}
	}
	for b := range got {
		if !decided[b] && show(base[b]) != got[b] {
			return nil, false
		}
	}
	kept := slices.Clone(ops[:durable])
	for i := durable; i < len(ops); i++ {
		if joined[i] {
			kept = append(kept, ops[i])
		}
	}
	return kept, true
}
