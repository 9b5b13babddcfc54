package target

import (
	"testing"
)

// TestBufferPool: every size up to BufferBytesMax gets a power-of-two
// buffer at least that long, which goes back to its pool; a buffer of a
// foreign size is refused.
func TestBufferPool(t *testing.T) {
	for _, n := range []int{0, 1, 4096, 4097, 1 << 20, 32 << 20, BufferBytesMax} {
		p := GetBuffer(n)
		if len(*p) < n || len(*p) < 4096 || len(*p)&(len(*p)-1) != 0 {
			t.Fatalf("buffer of %d for %d", len(*p), n)
		}
		PutBuffer(p)
	}
	mustPanic(t, "a buffer over BufferBytesMax", func() { GetBuffer(BufferBytesMax + 1) })
	foreign := make([]byte, 5000)
	mustPanic(t, "a buffer of foreign size", func() { PutBuffer(&foreign) })
}

func mustPanic(t *testing.T, what string, fn func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	fn()
}

// TestBufferPoolAllocs: a warm get/put allocates nothing. make test runs
// the allocation pins without -race, where sync.Pool keeps what it is
// given.
func TestBufferPoolAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	allocs := testing.AllocsPerRun(100, func() { PutBuffer(GetBuffer(64 << 10)) })
	if allocs != 0 {
		t.Fatalf("%v allocations per get/put", allocs)
	}
}
