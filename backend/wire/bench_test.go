package wire

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"cairn/backend/store"
)

// benchBackends are what the benchmarks serve: mem isolates the RPC's own
// cost, store adds pebble.
func benchBackends(b *testing.B) []struct {
	name string
	be   Backend
} {
	return []struct {
		name string
		be   Backend
	}{{"mem", newMemBackend()}, {"store", openStore(b)}}
}

// runConcurrent runs b.N calls of op spread over conc goroutines.
func runConcurrent(b *testing.B, conc int, op func(p []byte, i uint64) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(BlockSize)
	b.ResetTimer()
	for g := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, BlockSize)
			p[0] = byte(g)
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := op(p, uint64(i)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func benchmarkClient(b *testing.B, write bool) {
	for _, bb := range benchBackends(b) {
		addr, _ := startServer(b, bb.be, ServerOptions{})
		c := newClient(b, addr, ClientOptions{})
		ctx := context.Background()
		// Something to read: 4096 written blocks.
		data := make([]byte, 1<<20)
		for blk := uint64(0); blk < 4096; blk += 256 {
			if err := c.Write(ctx, 1, blk, data, store.Stamp{Epoch: 1, Seq: 1}, false); err != nil {
				b.Fatal(err)
			}
		}
		for _, conc := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("%s/conc=%d", bb.name, conc), func(b *testing.B) {
				b.ReportAllocs()
				runConcurrent(b, conc, func(p []byte, i uint64) error {
					if write {
						return c.Write(ctx, 1, i%4096, p, store.Stamp{Epoch: 1, Seq: i + 1}, false)
					}
					return c.Read(ctx, 1, i%4096, p, 1)
				})
			})
		}
	}
}

func BenchmarkClientRead4K(b *testing.B)  { benchmarkClient(b, false) }
func BenchmarkClientWrite4K(b *testing.B) { benchmarkClient(b, true) }
