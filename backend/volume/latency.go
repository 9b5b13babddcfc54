package volume

import (
	"time"

	"cairn/backend/store"
)

// Latency wraps a Node so that every operation first waits d: a storage
// node that is farther away or slower than the local store. Benchmarks use
// it to show how well a front end pipelines (at queue depth 32 and 1 ms per
// operation the limit is 32k IOPS); it has no place in production.
type Latency struct {
	Node Node
	D    time.Duration
}

var _ Node = Latency{}

// Write implements Node.
func (l Latency) Write(vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	time.Sleep(l.D)
	return l.Node.Write(vol, block, data, st, sync)
}

// Read implements Node.
func (l Latency) Read(vol, block uint64, p []byte, epoch uint64) error {
	time.Sleep(l.D)
	return l.Node.Read(vol, block, p, epoch)
}

// Zero implements Node.
func (l Latency) Zero(vol, block, n uint64, st store.Stamp, sync bool) error {
	time.Sleep(l.D)
	return l.Node.Zero(vol, block, n, st, sync)
}

// Extents implements Node.
func (l Latency) Extents(vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) error {
	time.Sleep(l.D)
	return l.Node.Extents(vol, block, n, epoch, fn)
}

// Sync implements Node.
func (l Latency) Sync() error {
	time.Sleep(l.D)
	return l.Node.Sync()
}
