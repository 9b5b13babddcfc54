package nbd

import (
	"fmt"
	"math/bits"
	"sync"
)

// Payload buffers come from pools by power-of-two size class, from
// 1<<bufferClassMin up to 1<<bufferClassMax bytes (the largest request).
const (
	bufferClassMin = 12 // 4 KiB
	bufferClassMax = 25 // 32 MiB
)

var bufferPools [bufferClassMax + 1]sync.Pool

// bufferClass returns the size class of an n-byte buffer.
func bufferClass(n int) int {
	if n <= 1<<bufferClassMin {
		return bufferClassMin
	}
	c := bits.Len(uint(n - 1))
	if c > bufferClassMax {
		panic(fmt.Sprintf("nbd: buffer of %d bytes exceeds the largest size class", n))
	}
	return c
}

// getBuffer returns a pooled buffer of at least n bytes. The pointer is what
// goes back to putBuffer, so that pooling allocates nothing.
func getBuffer(n int) *[]byte {
	c := bufferClass(n)
	if p, ok := bufferPools[c].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<c)
	return &b
}

func putBuffer(p *[]byte) {
	c := bufferClass(cap(*p))
	if cap(*p) != 1<<c {
		panic("nbd: buffer of foreign size returned to the pool")
	}
	*p = (*p)[:cap(*p)]
	bufferPools[c].Put(p)
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

func getRequest() *request { return requestPool.Get().(*request) }

func putRequest(r *request) {
	*r = request{}
	requestPool.Put(r)
}
