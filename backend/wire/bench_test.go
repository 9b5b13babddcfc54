package wire

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"cairn/backend/store"
	"cairn/backend/volume"
)

// benchConns is the number of connections of the benchmarks' client.
var benchConns = 1

// runConcurrent runs b.N calls of op spread over conc goroutines.
func runConcurrent(b *testing.B, conc int, op func(p []byte, i uint64) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	defer func() {
		// The process's CPU per call, client and server together: on a
		// shared 2-core host a steadier figure than the rate.
		if b.N > 0 {
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N)/1e3, "cpu-µs/op")
		}
	}()
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

// benchmarkNode measures 4 KiB calls at several concurrencies on: the RPC
// over an in-memory backend (its own cost), the RPC over a store, and the
// same store called directly (the ratio of the last two is what the wire
// costs a local node).
func benchmarkNode(b *testing.B, write bool) {
	ctx := context.Background()
	mem := newMemBackend()
	addr, _ := startServer(b, mem, ServerOptions{})
	st := openStore(b)
	stAddr, _ := startServer(b, st, ServerOptions{})
	inAddr, _ := startServer(b, st, ServerOptions{InlineWrites: true})
	nodes := []struct {
		name string
		node volume.Node
	}{
		{"wire-mem", newClient(b, addr, ClientOptions{Conns: benchConns})},
		{"wire-store", newClient(b, stAddr, ClientOptions{Conns: benchConns})},
		{"wire-store-inline", newClient(b, inAddr, ClientOptions{Conns: benchConns})},
		{"local-store", st},
	}
	for _, nd := range nodes {
		// Something to read: 4096 written blocks.
		data := make([]byte, 1<<20)
		for blk := uint64(0); blk < 4096; blk += 256 {
			if err := nd.node.Write(ctx, 1, blk, data, store.Stamp{Epoch: 1, Seq: 1}, false); err != nil {
				b.Fatal(err)
			}
		}
		for _, conc := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("%s/conc=%d", nd.name, conc), func(b *testing.B) {
				runConcurrent(b, conc, func(p []byte, i uint64) error {
					if write {
						return nd.node.Write(ctx, 1, i%4096, p, store.Stamp{Epoch: 1, Seq: i + 1}, false)
					}
					return nd.node.Read(ctx, 1, i%4096, p, 1)
				})
			})
		}
	}
}

func BenchmarkClientRead4K(b *testing.B)  { benchmarkNode(b, false) }
func BenchmarkClientWrite4K(b *testing.B) { benchmarkNode(b, true) }

// BenchmarkLoopbackPingPong is the floor under BenchmarkClientRead4K at
// conc=1: a bare 32-byte request and 4 KiB + 32-byte answer on loopback TCP,
// one goroutine per side, no framing, checksums or matching.
func BenchmarkLoopbackPingPong(b *testing.B) {
	l := listen(b, "")
	defer l.Close()
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		buf := make([]byte, HeaderSize+BlockSize)
		for {
			if _, err := io.ReadFull(nc, buf[:HeaderSize]); err != nil {
				return
			}
			if _, err := nc.Write(buf); err != nil {
				return
			}
		}
	}()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	buf := make([]byte, HeaderSize+BlockSize)
	b.SetBytes(BlockSize)
	b.ResetTimer()
	for range b.N {
		if _, err := nc.Write(buf[:HeaderSize]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(nc, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientWrite1M: 1 MiB writes to a store over the RPC, 4 at a
// time, the replica leg of a large replicated write.
func BenchmarkClientWrite1M(b *testing.B) {
	ctx := context.Background()
	st := openStore(b)
	addr, _ := startServer(b, st, ServerOptions{})
	c := newClient(b, addr, ClientOptions{Conns: benchConns})
	const size = 1 << 20
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, size)
			for i := range p {
				p[i] = byte(i + g)
			}
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := c.Write(ctx, 1, uint64(i%64)*(size/BlockSize), p, store.Stamp{Epoch: 1, Seq: uint64(i)}, false); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
