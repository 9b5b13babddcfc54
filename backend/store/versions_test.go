package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// collectVersions copies out every version VersionsSince reports for
// [block, block+n) with seq ≥ seqMin, resuming every stopEvery blocks as a
// paged caller does.
func collectVersions(t *testing.T, s *Store, vol, block, n, seqMin uint64, stopEvery int) []Version {
	t.Helper()
	var out []Version
	end := block + n
	for block < end {
		k := 0
		next, err := s.VersionsSince(ctx, vol, block, end-block, seqMin, func(b uint64, vs []Version) bool {
			if b < block || b >= end {
				t.Fatalf("block %d reported outside [%d, %d)", b, block, end)
			}
			for _, v := range vs {
				if v.Block != b || v.Blocks == 0 || v.Block+v.Blocks > end || v.Stamp.Seq < seqMin {
					t.Fatalf("version %+v reported at block %d of [%d, %d) seq ≥ %d", v, b, block, end, seqMin)
				}
				v.Data = bytes.Clone(v.Data)
				out = append(out, v)
			}
			k++
			return k < stopEvery
		})
		if err != nil {
			t.Fatal(err)
		}
		if next <= block || next > end {
			t.Fatalf("resume at %d after %d (end %d)", next, block, end)
		}
		block = next
	}
	return out
}

// TestVersionsSinceReports: data versions at several epochs, zero points
// and a zero range come out with their stamps, clipped to the range asked,
// and seqMin leaves the older ones out.
func TestVersionsSinceReports(t *testing.T) {
	s := openMem(t, nil)
	mustRetain(t, s, 1, []uint64{1})
	apply(t, s, 1, op{block: 0, n: 4, st: Stamp{1, 10}, id: 1})
	apply(t, s, 1, op{block: 2, n: 1, st: Stamp{2, 11}, id: 2})          // block 2 at epochs 1 and 2
	apply(t, s, 1, op{zero: true, block: 3, n: 2, st: Stamp{2, 12}})     // points on 3, 4
	apply(t, s, 1, op{zero: true, block: 100, n: 200, st: Stamp{2, 13}}) // a range
	apply(t, s, 1, op{block: 150, n: 1, st: Stamp{2, 14}, id: 3})        // inside the range
	vs := collectVersions(t, s, 1, 0, 400, 0, 1000)
	type rec struct {
		b, n, e, seq uint64
		zero         bool
	}
	var got []rec
	for _, v := range vs {
		got = append(got, rec{v.Block, v.Blocks, v.Stamp.Epoch, v.Stamp.Seq, v.Zero})
		if !v.Zero {
			want := make([]byte, BlockSize)
			fill(want, map[uint64]byte{10: 1, 11: 2, 14: 3}[v.Stamp.Seq], v.Block)
			if !bytes.Equal(v.Data, want) {
				t.Fatalf("data of %+v differs", got[len(got)-1])
			}
		}
	}
	want := []rec{
		{0, 1, 1, 10, false}, {1, 1, 1, 10, false},
		{2, 1, 2, 11, false}, {2, 1, 1, 10, false},
		{3, 1, 2, 12, true}, {3, 1, 1, 10, false},
		{4, 1, 2, 12, true},
		{100, 200, 2, 13, true},
		{150, 1, 2, 14, false},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("versions:\n got %v\nwant %v", got, want)
	}
	// Clipped to a chunk in the middle of the range, and seq ≥ 13 only.
	vs = collectVersions(t, s, 1, 128, 64, 13, 1000)
	if len(vs) != 2 || !(vs[0].Block == 128 && vs[0].Blocks == 64 && vs[0].Stamp == Stamp{2, 13} && vs[0].Zero) || vs[1].Block != 150 {
		t.Fatalf("chunk [128, 192) seq ≥ 13: %+v", vs)
	}
	if vs := collectVersions(t, s, 1, 0, 400, 15, 1000); len(vs) != 0 {
		t.Fatalf("seq ≥ 15: %+v", vs)
	}
	if vs := collectVersions(t, s, 9, 0, 400, 0, 1); len(vs) != 0 {
		t.Fatalf("unknown volume: %+v", vs)
	}
	if _, err := s.VersionsSince(ctx, 1, BlocksMax, 1, 0, func(uint64, []Version) bool { return true }); err == nil {
		t.Fatal("versions past BlocksMax: no error")
	}
	if err := s.Apply(ctx, 1, Version{Block: 0, Blocks: 2, Data: make([]byte, BlockSize)}, false); err == nil {
		t.Fatal("apply of 2 blocks with 1 block of data: no error")
	}
}

// TestVersionsCatchUp is a replica catch-up in the store's terms: a
// source takes a random history (reclaiming zeros, retained epochs, GC
// dropping what no reader sees); a replica that had the first part of it
// gets every version the source reports, chunk by chunk with paging, in
// a random order interleaved with the rest of the history arriving as new
// writes; it then reads like the source's model at every kept epoch.
func TestVersionsCatchUp(t *testing.T) {
	const blocks, chunk = 256, 64
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			src, dst := openMem(t, nil), openMem(t, nil)
			epoch := uint64(1)
			var ops []op
			var retained []uint64
			for round := range 4 {
				more := randomOps(rng, 50, blocks, uint64(len(ops)+1), &epoch)
				for _, o := range more {
					apply(t, src, 5, o)
					if round == 0 {
						apply(t, dst, 5, o) // what the replica had before it fell out
					}
				}
				ops = append(ops, more...)
				if round%2 == 1 {
					retained = append(retained, epoch)
					mustRetain(t, src, 5, retained)
				}
				epoch++
			}
			mustRetain(t, dst, 5, retained)
			if _, err := src.gc(ctx); err != nil {
				t.Fatal(err)
			}
			// New writes during the catch-up: to both, stamped above
			// everything, in stamp order (the target serializes them).
			newOps := randomOps(rng, 40, blocks, uint64(len(ops)+1), &epoch)
			var copies []Version
			for c := uint64(0); c < blocks/chunk; c++ {
				copies = append(copies, collectVersions(t, src, 5, c*chunk, chunk, 0, 1+rng.IntN(20))...)
			}
			rng.Shuffle(len(copies), func(i, j int) { copies[i], copies[j] = copies[j], copies[i] })
			for i, k := 0, 0; i < len(copies) || k < len(newOps); {
				if k < len(newOps) && (i == len(copies) || rng.IntN(4) == 0) {
					apply(t, src, 5, newOps[k])
					apply(t, dst, 5, newOps[k])
					k++
					continue
				}
				if err := dst.Apply(ctx, 5, copies[i], rng.IntN(8) == 0); err != nil {
					t.Fatal(err)
				}
				i++
			}
			all := append(slices.Clone(ops), newOps...)
			epochs := append(slices.Clone(retained), epoch, epoch+1)
			checkModel(t, src, 5, all, blocks, epochs)
			checkModel(t, dst, 5, all, blocks, epochs)
			// A second copy of everything changes nothing (idempotent).
			for _, v := range collectVersions(t, src, 5, 0, blocks, 0, 1000) {
				if err := dst.Apply(ctx, 5, v, false); err != nil {
					t.Fatal(err)
				}
			}
			checkModel(t, dst, 5, all, blocks, epochs)
		})
	}
}
