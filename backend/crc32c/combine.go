package crc32c

import "hash/crc32"

// Combiner joins CRCs across a fixed length n: Combine(Checksum(a),
// Checksum(b)) is Checksum(a‖b) for every b of n bytes, whatever a is. A
// storage node checks a node RPC frame's payload CRC from the CRCs of its
// blocks this way, so it computes them once for the frame and the store.
//
// Why it holds: the CRC register's step over a byte is linear over GF(2),
// so running it from register r over b is its run from r over n zero
// bytes, shift(r), xored with its run from 0 over b; with hash/crc32's
// inversion on the way in and out that leaves crc(a‖b) = shift(crc(a)) ^
// crc(b), and shift, linear too, is four table lookups, one per byte of
// its argument (the tables are shift of each byte at each position).
type Combiner struct {
	t [4][256]uint32
}

// NewCombiner returns a Combiner for n bytes. It computes 32 shifts of n
// zero bytes: build one per length and keep it.
func NewCombiner(n int) *Combiner {
	c := &Combiner{}
	zeros := make([]byte, n)
	var bit [32]uint32
	for i := range bit {
		// The raw register run: Update inverts in and out.
		bit[i] = ^crc32.Update(^(uint32(1) << i), table, zeros)
	}
	for k := range 4 {
		for b := range 256 {
			var v uint32
			for j := range 8 {
				if b&(1<<j) != 0 {
					v ^= bit[8*k+j]
				}
			}
			c.t[k][b] = v
		}
	}
	return c
}

// Combine returns the CRC-32C of a‖b from crcA (of a, any length) and
// crcB (of b, the n bytes of NewCombiner).
func (c *Combiner) Combine(crcA, crcB uint32) uint32 {
	return c.t[0][byte(crcA)] ^ c.t[1][byte(crcA>>8)] ^ c.t[2][byte(crcA>>16)] ^ c.t[3][crcA>>24] ^ crcB
}
