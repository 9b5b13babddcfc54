package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/target"
)

// cawRound races two COMPARE AND WRITEs of a 4-block range (both expect
// its old contents) against a whole-block write, a sub-block write and a
// zero inside the range, and checks the outcome against every serial
// order: at most one compare-and-write succeeds, and only if it ran before
// every writer (each changes its part of the range); the range ends as the
// winner's data (or the old contents) with each writer's part on top; a
// miscompare reports the first byte a serial order would have differed at.
// write and cas are the two front ends' paths to the volume.
func cawRound(v *Volume, round int, write func(p []byte, off int64) error, cas func(cmp, data []byte, off int64) error) error {
	const n = 4 * BlockSize
	base := int64(round%64) * n
	old := bytes.Repeat([]byte{byte(round)*2 + 1}, n) // odd: never zero
	if err := v.WriteAt(ctx, old, base, 0); err != nil {
		return err
	}
	type part struct {
		off  int64 // from base
		data []byte
	}
	parts := []part{
		{1 * BlockSize, bytes.Repeat([]byte{0xa0}, BlockSize)}, // whole block
		{3*BlockSize + 100, bytes.Repeat([]byte{0xb0}, 512)},   // sub-block
		{2 * BlockSize, make([]byte, 2048)},                    // zero
	}
	datas := [][]byte{bytes.Repeat([]byte{0xc1}, n), bytes.Repeat([]byte{0xc2}, n)}
	start := make(chan struct{})
	errs := make([]error, 2+len(parts))
	var wg sync.WaitGroup
	for i, d := range datas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = cas(old, d, base)
		}()
	}
	for i, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if i == 2 {
				errs[2+i] = v.Zero(ctx, base+p.off, int64(len(p.data)), target.ZeroNoHole)
				return
			}
			errs[2+i] = write(p.data, base+p.off)
		}()
	}
	close(start)
	wg.Wait()

	want := old
	var winners int
	offsets := []int64{}
	for _, p := range parts {
		offsets = append(offsets, p.off)
	}
	for i, err := range errs[:2] {
		var mis *target.MiscompareError
		switch {
		case err == nil:
			winners++
			want = datas[i]
			offsets = append(offsets, 0) // the other one saw the winner's data first
		case errors.As(err, &mis):
		default:
			return fmt.Errorf("compare and write %d: %w", i, err)
		}
	}
	for i, err := range errs[2:] {
		if err != nil {
			return fmt.Errorf("writer %d: %w", i, err)
		}
	}
	if winners > 1 {
		return fmt.Errorf("both compare-and-writes of the same old data succeeded")
	}
	for i, err := range errs[:2] {
		var mis *target.MiscompareError
		if errors.As(err, &mis) && !slices.Contains(offsets, mis.Offset) {
			return fmt.Errorf("compare and write %d: miscompare at %d, which no serial order explains (%v)", i, mis.Offset, offsets)
		}
	}
	want = bytes.Clone(want)
	for _, p := range parts {
		copy(want[p.off:], p.data)
	}
	got := make([]byte, n)
	if err := v.ReadAt(ctx, got, base); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				return fmt.Errorf("%d winners: byte %d is %#x, want %#x: no serial order explains it", winners, i, got[i], want[i])
			}
		}
	}
	return nil
}

// jitterNode delays each node call by a random few microseconds, so that
// the requests of a round interleave inside one another (the store alone
// answers too fast for a race to open); it makes no timing assertion.
type jitterNode struct{ Node }

func jitter() { time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond) }

func (j jitterNode) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error {
	jitter()
	return j.Node.Read(ctx, vol, block, p, epoch)
}

func (j jitterNode) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	jitter()
	return j.Node.Write(ctx, vol, block, data, st, sync)
}

func (j jitterNode) Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error {
	jitter()
	return j.Node.Zero(ctx, vol, block, n, st, sync)
}

// TestCompareAndWriteRaces: COMPARE AND WRITE is atomic against writes,
// sub-block writes and zeroes of the same blocks, round after round.
func TestCompareAndWriteRaces(t *testing.T) {
	v, err := Open(Options{ID: 7, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: NewLocal(jitterNode{openStore(t)})})
	if err != nil {
		t.Fatal(err)
	}
	write := func(p []byte, off int64) error { return v.WriteAt(ctx, p, off, 0) }
	cas := func(cmp, data []byte, off int64) error { return v.CompareAndWrite(ctx, cmp, data, off, target.FUA) }
	rounds := 400
	if raceEnabled {
		rounds = 150
	}
	for round := range rounds {
		if err := cawRound(v, round, write, cas); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
}

// TestCompareAndWrite: a match writes, a miscompare writes nothing and
// says where, sub-block ranges and bad arguments behave.
func TestCompareAndWrite(t *testing.T) {
	v := openVolume(t, openStore(t), 1<<20)
	old := bytes.Repeat([]byte{7}, 3000)
	if err := v.WriteAt(ctx, old, 1000, 0); err != nil {
		t.Fatal(err)
	}
	cmp := bytes.Clone(old)
	cmp[1234] = 8
	err := v.CompareAndWrite(ctx, cmp, make([]byte, 3000), 1000, 0)
	var mis *target.MiscompareError
	if !errors.As(err, &mis) || mis.Offset != 1234 || !errors.Is(err, target.ErrMiscompare) {
		t.Fatalf("miscompare: %v", err)
	}
	got := make([]byte, 3000)
	if err := v.ReadAt(ctx, got, 1000); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("miscompare wrote: %v", err)
	}
	next := bytes.Repeat([]byte{9}, 3000)
	if err := v.CompareAndWrite(ctx, old, next, 1000, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(ctx, got, 1000); err != nil || !bytes.Equal(got, next) {
		t.Fatalf("compare and write did not write: %v", err)
	}
	edge := make([]byte, 1000)
	if err := v.ReadAt(ctx, edge, 0); err != nil || !bytes.Equal(edge, make([]byte, 1000)) {
		t.Fatalf("bytes before the range changed: %v", err)
	}
	for _, tc := range []struct {
		cmp, data int
		off       int64
		want      error
	}{
		{10, 11, 0, target.ErrInvalid},
		{4096, 4096, 1<<20 - 4095, target.ErrOutOfRange},
		{4096, 4096, -1, target.ErrInvalid},
	} {
		if err := v.CompareAndWrite(ctx, make([]byte, tc.cmp), make([]byte, tc.data), tc.off, 0); !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v", tc, err)
		}
	}
	if err := v.CompareAndWrite(ctx, nil, nil, 0, 0); err != nil {
		t.Errorf("empty: %v", err)
	}
}
