package crc32c

import (
	"math/rand/v2"
	"testing"
)

// TestCombine: Combine(crc(a), crc(b)) == crc(a‖b) for b of the combiner's
// length, a of any length (empty too), over random, zero and one-bit data.
func TestCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 7, 64, 4096, 65536} {
		c := NewCombiner(n)
		for trial := range 50 {
			a := make([]byte, r.IntN(9000))
			b := make([]byte, n)
			switch trial % 3 {
			case 0:
				for i := range a {
					a[i] = byte(r.Uint32())
				}
				for i := range b {
					b[i] = byte(r.Uint32())
				}
			case 1: // zeros
			case 2:
				if len(a) > 0 {
					a[r.IntN(len(a))] = 1 << r.IntN(8)
				}
				b[r.IntN(n)] = 1 << r.IntN(8)
			}
			ab := append(append([]byte(nil), a...), b...)
			if got, w := c.Combine(Checksum(a), Checksum(b)), want(0, ab); got != w {
				t.Fatalf("n %d, a of %d: %#x, want %#x", n, len(a), got, w)
			}
		}
	}
	// A run of blocks, as a storage node checks a frame.
	c := NewCombiner(4096)
	p := make([]byte, 64*4096+100)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	head, blocks := p[:100], p[100:]
	sum := Checksum(head)
	for i := 0; i < len(blocks); i += 4096 {
		sum = c.Combine(sum, Checksum(blocks[i:i+4096]))
	}
	if w := want(0, p); sum != w {
		t.Fatalf("blocks: %#x, want %#x", sum, w)
	}
}

func BenchmarkCombine(b *testing.B) {
	c := NewCombiner(4096)
	sum := uint32(1)
	for b.Loop() {
		sum = c.Combine(sum, 7)
	}
	_ = sum
}
