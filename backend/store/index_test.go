package store

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestIndexMemory measures the resident heap of the block index per block
// written, through the path a Write takes once its record is appended
// (applyData: page slots, live counts, the dirty bitmap the next
// checkpoint copies), as HeapInuse before and after indexing N blocks,
// extrapolated to a TiB (2^28 blocks). Three patterns: sequential (1 MiB
// writes), random 4 KiB writes covering a span once (a permutation), and
// random 4 KiB writes scattered over a span 16 times the data (each page of
// 64 blocks then holds about 4). It checks that Stats.IndexBytes, which
// Options.IndexBytes bounds, accounts for what the index holds without its
// dirty bitmap, so that the bound means what it says. The figures go in
// the package doc:
//
//	go test ./backend/store -run TestIndexMemory -v
func TestIndexMemory(t *testing.T) {
	const blocks = 1 << 18 // 1 GiB of 4 KiB blocks
	for _, tc := range []struct {
		name   string
		span   uint64 // blocks the writes fall in
		random bool
		run    uint64 // blocks per write
		// perBlockMax bounds the heap per block written (the dense layout
		// is 2072/64 = 32.4 bytes and a map slot; sparse, about 64/4 times
		// that).
		perBlockMax float64
	}{
		{"sequential", blocks, false, 256, 40},
		{"random-4k", blocks, true, 1, 40},
		{"random-4k-sparse", 16 * blocks, true, 1, 700},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openMem(t, nil)
			v := s.volume(1)
			var order []uint64
			if tc.random {
				rng := rand.New(rand.NewPCG(1, 2))
				if tc.span == blocks {
					order = make([]uint64, blocks)
					for i := range order {
						order[i] = uint64(i)
					}
					rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
				} else {
					seen := map[uint64]bool{}
					for len(order) < blocks {
						if b := rng.Uint64N(tc.span); !seen[b] {
							seen[b] = true
							order = append(order, b)
						}
					}
				}
			}
			crcs := make([]byte, 4*tc.run)
			for i := range tc.run {
				binary.BigEndian.PutUint32(crcs[4*i:], uint32(i))
			}
			idx0 := s.indexBytes.Load()
			var before, mid, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for i := uint64(0); i < blocks; i += tc.run {
				b := i
				if tc.random {
					b = order[i]
				}
				h := recHeader{typ: recData, vol: 1, block: b, n: tc.run, epoch: 1, seq: i + 1, seg: 1}
				s.applyData(v, &h, uint32(i*blockUnits), crcs)
			}
			runtime.GC()
			runtime.ReadMemStats(&mid)
			// What a checkpoint leaves: the dirty bitmap emptied (its map
			// keeps its buckets, as clear does).
			v.idx.Lock()
			s.dirty.Add(-int64(blocks))
			v.idx.dirty = map[dkey]uint64{}
			v.idx.Unlock()
			runtime.GC()
			runtime.ReadMemStats(&after)
			withDirty := float64(int64(mid.HeapInuse)-int64(before.HeapInuse)) / blocks
			perBlock := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / blocks
			acct := float64(s.indexBytes.Load()-idx0) / blocks
			const tib = 1 << 28 // blocks per TiB
			t.Logf("%s: %.1f bytes of heap (HeapInuse) per 4 KiB block written, %.2f GiB per TiB; %.1f bytes (%.2f GiB per TiB) with the dirty bitmap before a checkpoint; Stats.IndexBytes counts %.1f",
				tc.name, perBlock, perBlock*tib/(1<<30), withDirty, withDirty*tib/(1<<30), acct)
			if perBlock > tc.perBlockMax || perBlock <= 0 {
				t.Errorf("index heap %.1f bytes per block, want (0, %.0f]", perBlock, tc.perBlockMax)
			}
			if acct < 0.85*perBlock || acct > 1.25*perBlock {
				t.Errorf("Stats.IndexBytes counts %.1f bytes per block for %.1f of heap: the bound would be off", acct, perBlock)
			}
			runtime.KeepAlive(order)
		})
	}
}

// TestIndexBound: past Options.IndexBytes, writes that would grow the
// index fail with a clear ErrLimit (not ErrIO, the store not failed);
// reads go on, a Zero of a range (which shrinks the index) is accepted,
// and writes work again.
func TestIndexBound(t *testing.T) {
	const bound = 64 << 10
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: quiet, IndexBytes: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	buf := make([]byte, BlockSize)
	// One block per page: each write adds a page.
	var werr error
	var n uint64
	for n = 0; n < 1000; n++ {
		b := n * pageBlocks
		fill(buf, 'a', b)
		if werr = s.Write(ctx, 1, b, buf, Stamp{1, n + 1}, false); werr != nil {
			break
		}
	}
	if werr == nil {
		t.Fatalf("%d pages written past an index bound of %d bytes (index holds %d)", n, bound, s.Stats().IndexBytes)
	}
	if !errors.Is(werr, ErrLimit) || errors.Is(werr, ErrIO) || !strings.Contains(werr.Error(), "Options.IndexBytes") {
		t.Fatalf("write past the index bound: %v; want ErrLimit naming Options.IndexBytes, not ErrIO", werr)
	}
	t.Logf("after %d pages: %v", n, werr)
	if st := s.Stats(); st.IndexBytes < bound || st.IndexBytes > bound+int64(pageBytes) {
		t.Fatalf("index holds %d bytes at the bound %d", st.IndexBytes, bound)
	}
	for i := range n {
		if got := readID(t, s, 1, i*pageBlocks, 1); got != 'a' {
			t.Fatalf("block %d = %d after the bound", i*pageBlocks, got)
		}
	}
	// Zero the first half (a range record: it is not refused) and write
	// again.
	if err := s.Zero(ctx, 1, 0, n/2*pageBlocks, Stamp{1, n + 10}, false); err != nil {
		t.Fatalf("zero at the bound: %v", err)
	}
	if err := s.Write(ctx, 1, n*pageBlocks, buf, Stamp{1, n + 11}, false); err != nil {
		t.Fatalf("write after a Zero shrank the index: %v", err)
	}
}
