package volume

import (
	"math/bits"
	"sync"
)

// Scratch buffers for read-modify-write, pooled by power-of-two size class
// from one block up to 64 MiB.
const (
	bufClassMin = 12 // 4 KiB
	bufClassMax = 26 // 64 MiB
)

type buffer struct{ b []byte }

var bufPools [bufClassMax + 1]sync.Pool

func getBuf(n int) *buffer {
	c := max(bits.Len(uint(n-1)), bufClassMin)
	if c > bufClassMax {
		return &buffer{b: make([]byte, n)}
	}
	if x, ok := bufPools[c].Get().(*buffer); ok {
		x.b = x.b[:n]
		return x
	}
	return &buffer{b: make([]byte, n, 1<<c)}
}

func putBuf(x *buffer) {
	c := bits.Len(uint(cap(x.b) - 1))
	if cap(x.b) != 1<<c || c < bufClassMin || c > bufClassMax {
		return
	}
	bufPools[c].Put(x)
}
