package wire

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cairn/backend/volume"
)

// threeNodes is the placement of a volume with every chunk on three nodes,
// the first one local.
type threeNodes struct{ nodes []volume.Node }

func (p threeNodes) Replicas(uint64) []volume.Node { return p.nodes }
func (p threeNodes) Nodes() []volume.Node          { return p.nodes }

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkReplicatedWrite4K is the R=3 write path of a 3-node cluster in
// one process: a volume whose chunks are on a local store and on two stores
// behind the node RPC (two connections each, as cairnd dials), every store
// behind the injected latency, driven by 32 writers of 4 KiB at random
// offsets, as fio at qd32 drives it over NBD. It reports the rate and the
// CPU time per write (all three "nodes" together).
func BenchmarkReplicatedWrite4K(b *testing.B) {
	for _, tc := range []struct {
		lat    time.Duration
		inline bool // ServerOptions.InlineWrites, as cairnd sets it without latency
	}{{0, false}, {0, true}, {time.Millisecond, false}} {
		lat := tc.lat
		b.Run(fmt.Sprintf("lat=%v/inline=%v", lat, tc.inline), func(b *testing.B) {
			nodes := make([]volume.Node, 3)
			for i := range nodes {
				var n volume.Node = openStore(b)
				if lat > 0 {
					l, err := volume.NewLatency(n, lat)
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { l.Close() })
					n = l
				}
				if i > 0 {
					addr, _ := startServer(b, n, ServerOptions{InlineWrites: tc.inline})
					n = newClient(b, addr, ClientOptions{Conns: 2})
				}
				nodes[i] = n
			}
			const size = 256 << 20
			v, err := volume.Open(volume.Options{ID: 1, Size: size, Generation: 1, Epoch: 1, Placement: threeNodes{nodes}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { v.Close() })
			ctx := context.Background()
			const conc = 32
			var next atomic.Int64
			var wg sync.WaitGroup
			b.SetBytes(BlockSize)
			b.ReportAllocs()
			b.ResetTimer()
			t0, c0 := time.Now(), cpuTime(b)
			for g := range conc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(g), 1))
					p := make([]byte, BlockSize)
					for next.Add(1) <= int64(b.N) {
						p[0]++
						if err := v.WriteAt(ctx, p, rng.Int64N(size/BlockSize)*BlockSize, 0); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			el, cpu := time.Since(t0), cpuTime(b)-c0
			b.ReportMetric(float64(b.N)/el.Seconds(), "writes/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
