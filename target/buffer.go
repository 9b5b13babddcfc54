package target

import (
	"fmt"
	"math/bits"
	"sync"
)

// Payload buffers for front ends and devices, pooled by power-of-two size
// class from 4 KiB to BufferBytesMax, so that a request allocates nothing
// once the pools are warm.
const (
	bufferClassMin = 12 // 4 KiB
	bufferClassMax = 26 // 64 MiB: a 32 MiB request plus read-modify-write edges

	// BufferBytesMax is the largest buffer GetBuffer returns.
	BufferBytesMax = 1 << bufferClassMax
)

var bufferPools [bufferClassMax + 1]sync.Pool

func bufferClass(n int) int {
	if n <= 1<<bufferClassMin {
		return bufferClassMin
	}
	c := bits.Len(uint(n - 1))
	if c > bufferClassMax {
		panic(fmt.Sprintf("target: buffer of %d bytes exceeds BufferBytesMax", n))
	}
	return c
}

// GetBuffer returns a pooled buffer of at least n bytes (n ≤ BufferBytesMax),
// at its full length: callers slice it. The pointer is what goes back to
// PutBuffer, so that pooling itself allocates nothing.
func GetBuffer(n int) *[]byte {
	c := bufferClass(n)
	if p, ok := bufferPools[c].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<c)
	return &b
}

// PutBuffer returns a buffer from GetBuffer; the caller must not use it
// afterwards.
func PutBuffer(p *[]byte) {
	c := bufferClass(cap(*p))
	if cap(*p) != 1<<c {
		panic("target: buffer of foreign size returned to the pool")
	}
	*p = (*p)[:cap(*p)]
	bufferPools[c].Put(p)
}
