package crc32c

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// want is hash/crc32's answer.
func want(crc uint32, p []byte) uint32 { return crc32.Update(crc, table, p) }

// eachLoop runs f; where the CPU cannot fold, it says that only the
// hash/crc32 path was compared.
func eachLoop(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	if !canFold {
		t.Log("no AVX-512 VPCLMULQDQ on this CPU: only the hash/crc32 path runs")
	}
	f(t)
}

// TestMatchesHashCRC32 compares every length to 4 KiB + 300 at several
// alignments and initial values, and the block sizes cairn uses.
func TestMatchesHashCRC32(t *testing.T) {
	eachLoop(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 1<<20+64)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		for _, align := range []int{0, 1, 7, 8, 15, 33} {
			for n := 0; n <= 4096+300; n++ {
				p := buf[align : align+n]
				for _, crc := range []uint32{0, 0xFFFFFFFF, r.Uint32()} {
					if got, w := Update(crc, p), want(crc, p); got != w {
						t.Fatalf("align %d len %d crc %#x: %#x, want %#x", align, n, crc, got, w)
					}
				}
			}
		}
		for _, n := range []int{8192, 65536, 65536 + 64, 1 << 20} {
			if got, w := Checksum(buf[:n]), want(0, buf[:n]); got != w {
				t.Fatalf("len %d: %#x, want %#x", n, got, w)
			}
		}
	})
}

// TestPatterns: all-zero, all-ones and single-bit buffers, where a wrong
// constant or a lane folded the wrong way shows at once.
func TestPatterns(t *testing.T) {
	eachLoop(t, func(t *testing.T) {
		for _, n := range []int{256, 320, 512, 4096} {
			p := make([]byte, n)
			if got, w := Checksum(p), want(0, p); got != w {
				t.Fatalf("zeros %d: %#x, want %#x", n, got, w)
			}
			for i := range p {
				p[i] = 0xFF
			}
			if got, w := Checksum(p), want(0, p); got != w {
				t.Fatalf("ones %d: %#x, want %#x", n, got, w)
			}
			for bit := 0; bit < n*8; bit += 7 {
				clear(p)
				p[bit/8] = 1 << (bit % 8)
				if got, w := Checksum(p), want(0, p); got != w {
					t.Fatalf("bit %d of %d: %#x, want %#x", bit, n, got, w)
				}
			}
		}
	})
}

func FuzzMatchesHashCRC32(f *testing.F) {
	f.Add(uint32(0), make([]byte, 300))
	f.Add(uint32(0xdeadbeef), make([]byte, 4096))
	f.Fuzz(func(t *testing.T, crc uint32, p []byte) {
		if got, w := Update(crc, p), want(crc, p); got != w {
			t.Fatalf("len %d crc %#x: %#x, want %#x", len(p), crc, got, w)
		}
	})
}

func benchBlocks(b *testing.B, f func([]byte) uint32) {
	p := make([]byte, 1<<20)
	b.SetBytes(int64(len(p)))
	var sink uint32
	for b.Loop() {
		for i := 0; i < len(p); i += 4096 {
			sink += f(p[i : i+4096])
		}
	}
	_ = sink
}

// BenchmarkBlocks4K: 4 KiB blocks, as the store checksums them; against
// hash/crc32 in the same run.
func BenchmarkBlocks4K(b *testing.B) {
	b.Run("crc32c", func(b *testing.B) { benchBlocks(b, Checksum) })
	b.Run("hash-crc32", func(b *testing.B) { benchBlocks(b, func(p []byte) uint32 { return want(0, p) }) })
}
