package crc32c

import "golang.org/x/sys/cpu"

// canFold: the CPU has VPCLMULQDQ on 512-bit registers (AVX-512 F, VL and
// VPCLMULQDQ: Intel since Ice Lake, AMD since Zen 4), and SSE4.2 for the
// CRC32 instruction that finishes the fold. The same folding with 128-bit
// PCLMULQDQ was measured and left out: on the AMD EPYC cairn is measured
// on it did 4 KiB blocks at 7–9 GB/s, slower than hash/crc32's 16–18.
var canFold = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512VPCLMULQDQ && cpu.X86.HasSSE42

// consts holds the folding constants as fold's assembly reads them, each
// a pair of 64-bit words (see foldPair).
var consts = func() (c [7][2]uint64) {
	for i, d := range foldDistances {
		c[i] = foldPair(d)
	}
	return c
}()

// foldDistances are the distances, in bits, consts folds over: 256 bytes
// (the loop's four registers), 192, 128 and 64 bytes (the four into one;
// 64 is also the 64-byte loop's), then 48, 32 and 16 bytes (the last fold
// into one 128-bit lane).
var foldDistances = [...]int{2048, 1536, 1024, 512, 384, 256, 128}

// foldPair returns the constants that fold a 128-bit chunk d bits ahead in
// the message: for the chunk's first 64 bits (the low word of the register,
// whose polynomial is multiplied by x^64 within the chunk) x^(d+63) mod P,
// for its last 64 bits x^(d-1) mod P. Each is stored bit-reflected in a
// 64-bit word (coefficient of x^i at bit 63-i), as the data are: a
// carry-less product of two such words is then the reflected product times
// x, which the -1 in each exponent takes back.
func foldPair(d int) [2]uint64 {
	return [2]uint64{reflect64(xPowMod(d + 63)), reflect64(xPowMod(d - 1))}
}

// poly is the Castagnoli polynomial without its x^32 term, coefficient of
// x^i at bit i.
const poly = 0x1EDC6F41

// xPowMod returns x^n mod P, coefficient of x^i at bit i.
func xPowMod(n int) uint32 {
	r := uint64(1)
	for range n {
		r <<= 1
		if r&(1<<32) != 0 {
			r ^= 1<<32 | poly
		}
	}
	return uint32(r)
}

// reflect64 places the coefficient of x^i of a polynomial of degree < 32 at
// bit 63-i.
func reflect64(v uint32) uint64 {
	var r uint64
	for i := range 32 {
		if v&(1<<i) != 0 {
			r |= 1 << (63 - i)
		}
	}
	return r
}

// fold returns the raw CRC (no inversions) of p from the raw CRC crc; len(p)
// is a multiple of 64, at least 256.
func fold(crc uint32, p []byte) uint32 { return foldAVX512(crc, p, &consts) }

// foldAVX512 folds p into a 128-bit remainder, crc xored into its first 4
// bytes, and returns the remainder's CRC from 0 (the CRC32 instruction),
// which is the raw CRC of p from crc.
//
//go:noescape
func foldAVX512(crc uint32, p []byte, k *[7][2]uint64) uint32
