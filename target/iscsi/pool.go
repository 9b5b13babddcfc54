package iscsi

import (
	"fmt"
	"math/bits"
	"sync"
)

// Payload buffers come from pools by power-of-two size class, from
// 1<<bufferClassMin up to 1<<bufferClassMax bytes (TransferBytesMax's
// upper bound).
const (
	bufferClassMin = 12 // 4 KiB
	bufferClassMax = 25 // 32 MiB
)

var bufferPools [bufferClassMax + 1]sync.Pool

func bufferClass(n int) int {
	if n <= 1<<bufferClassMin {
		return bufferClassMin
	}
	c := bits.Len(uint(n - 1))
	if c > bufferClassMax {
		panic(fmt.Sprintf("iscsi: buffer of %d bytes exceeds the largest size class", n))
	}
	return c
}

// getBuffer returns a pooled buffer of at least n bytes, full length.
func getBuffer(n int) *[]byte {
	c := bufferClass(n)
	if p, ok := bufferPools[c].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<c)
	return &b
}

// putBuffer returns a buffer from getBuffer; the caller must not use it
// afterwards.
func putBuffer(p *[]byte) {
	c := bufferClass(cap(*p))
	if cap(*p) != 1<<c {
		panic("iscsi: buffer of foreign size returned to the pool")
	}
	*p = (*p)[:cap(*p)]
	bufferPools[c].Put(p)
}
