package store

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// benchStore opens a store on the real file system in a temporary
// directory: numbers on a memory FS say little about a disk.
func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open(b.TempDir(), Options{FS: vfs.Default, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

func benchWrite(b *testing.B, size int, sync bool) {
	s := benchStore(b)
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	const span = 1 << 18 // 1 GiB of blocks
	n := uint64(size / BlockSize)
	rng := rand.New(rand.NewPCG(1, 1))
	b.SetBytes(int64(size))
	b.ReportAllocs()
	seq := uint64(0)
	for b.Loop() {
		seq++
		block := rng.Uint64N(span/n) * n
		if err := s.Write(ctx, 1, block, data, Stamp{1, seq}, sync); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWrite4K(b *testing.B) {
	b.Run("nosync", func(b *testing.B) { benchWrite(b, BlockSize, false) })
	b.Run("sync", func(b *testing.B) { benchWrite(b, BlockSize, true) })
}

func BenchmarkWrite1M(b *testing.B) {
	b.Run("nosync", func(b *testing.B) { benchWrite(b, 1<<20, false) })
	b.Run("sync", func(b *testing.B) { benchWrite(b, 1<<20, true) })
}

// BenchmarkRead4K reads random blocks of a 256 MiB data set, half of it
// flushed to sstables, with the default cache.
func BenchmarkRead4K(b *testing.B) {
	s := benchStore(b)
	const blocks = 1 << 16
	data := make([]byte, 1<<20)
	seq := uint64(0)
	for blk := uint64(0); blk < blocks; blk += 256 {
		seq++
		if err := s.Write(ctx, 1, blk, data, Stamp{1, seq}, false); err != nil {
			b.Fatal(err)
		}
		if blk == blocks/2 {
			if err := s.db.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	buf := make([]byte, BlockSize)
	rng := rand.New(rand.NewPCG(2, 2))
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := s.Read(ctx, 1, rng.Uint64N(blocks), buf, 1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkZero1TiB zeroes a whole 1 TiB volume holding some data; bytes/s
// is the logical size zeroed.
func BenchmarkZero1TiB(b *testing.B) {
	s := benchStore(b)
	const blocks = 1 << 28
	data := make([]byte, 64*BlockSize)
	seq := uint64(0)
	rng := rand.New(rand.NewPCG(3, 3))
	b.SetBytes(blocks * BlockSize)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for range 16 {
			seq++
			if err := s.Write(ctx, 1, rng.Uint64N(blocks-64), data, Stamp{1, seq}, false); err != nil {
				b.Fatal(err)
			}
		}
		seq++
		b.StartTimer()
		if err := s.Zero(ctx, 1, 0, blocks, Stamp{1, seq}, true); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadAged reads random blocks, one and eight at a time, from a
// 1 GiB volume aged the way the benchmark harness's fill and a random-write
// workload leave it: written sequentially in 1 MiB writes, then 256k random
// 4 KiB overwrites, so versions lie in several LSM levels. The cache is the
// daemon's default; it starts cold, as after the fill.
func BenchmarkReadAged(b *testing.B) {
	const blocks = 1 << 18
	s, err := Open(b.TempDir(), Options{FS: vfs.Default, Logger: quiet, CacheBytes: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	data := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(4, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	seq := uint64(0)
	for blk := uint64(0); blk < blocks; blk += 256 {
		seq++
		if err := s.Write(ctx, 1, blk, data, Stamp{1, seq}, false); err != nil {
			b.Fatal(err)
		}
	}
	for range blocks {
		seq++
		if err := s.Write(ctx, 1, rng.Uint64N(blocks), data[:BlockSize], Stamp{1, seq}, false); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("LSM after aging:\n%s", s.db.Metrics())
	for _, n := range []int{1, 8, 256} {
		b.Run(fmt.Sprintf("blocks=%d", n), func(b *testing.B) {
			buf := make([]byte, n*BlockSize)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Read(ctx, 1, rng.Uint64N(blocks-uint64(n)), buf, 1); err != nil {
					b.Fatal(err)
				}
			}
			b.Logf("rewritten by defrag: %d MiB", s.Stats().DefragBytes>>20)
		})
	}
}
