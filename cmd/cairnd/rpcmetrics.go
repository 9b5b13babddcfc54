package main

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/backend/wire"
)

// rpcMetrics are the latency and in-flight count of the node RPC calls
// this process makes, per storage node and operation.
type rpcMetrics struct {
	seconds  *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
}

func newRPCMetrics() *rpcMetrics {
	return &rpcMetrics{
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cairn_node_rpc_seconds",
			Help:    "Latency of node RPC calls to other storage nodes, by node and operation (errors included).",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16),
		}, []string{"node", "op"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cairn_node_rpc_in_flight",
			Help: "Node RPC calls to other storage nodes in flight, by node.",
		}, []string{"node"}),
	}
}

func (m *rpcMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.seconds, m.inFlight}
}

// The operations a node call can be.
const (
	rpcRead = iota
	rpcWrite
	rpcZero
	rpcExtents
	rpcSync
	rpcChanged
	rpcOps
)

var rpcOpNames = [rpcOps]string{"read", "write", "zero", "extents", "sync", "changed"}

// meteredNode is a storage node's RPC client that times its calls. Its
// observers are resolved once, so a call costs two clock reads and three
// atomic updates, no label lookup.
type meteredNode struct {
	c        *wire.Client
	seconds  [rpcOps]prometheus.Observer
	inFlight prometheus.Gauge
}

var (
	_ volume.Node         = (*meteredNode)(nil)
	_ volume.Changer      = (*meteredNode)(nil)
	_ volume.Starter      = (*meteredNode)(nil)
	_ volume.BatchStarter = (*meteredNode)(nil)
)

func (m *rpcMetrics) wrap(name string, c *wire.Client) *meteredNode {
	n := &meteredNode{c: c, inFlight: m.inFlight.WithLabelValues(name)}
	for op, s := range rpcOpNames {
		n.seconds[op] = m.seconds.WithLabelValues(name, s)
	}
	return n
}

// begin counts a call in flight and returns its start.
func (n *meteredNode) begin() time.Time {
	n.inFlight.Inc()
	return time.Now()
}

func (n *meteredNode) end(op int, start time.Time) {
	n.seconds[op].Observe(time.Since(start).Seconds())
	n.inFlight.Dec()
}

func (n *meteredNode) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	defer n.end(rpcWrite, n.begin())
	return n.c.Write(ctx, vol, block, data, st, sync)
}

// StartWrite times a write from its start to the end of its Wait.
func (n *meteredNode) StartWrite(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool, memo *volume.WriteMemo) (volume.Pending, error) {
	start := n.begin()
	p, err := n.c.StartWrite(ctx, vol, block, data, st, sync, memo)
	if err != nil {
		n.end(rpcWrite, start)
		return nil, err
	}
	m := meteredCallPool.Get().(*meteredCall)
	m.n, m.p, m.start = n, p, start
	return m, nil
}

// StartWrites times each write of a batch as StartWrite does.
func (n *meteredNode) StartWrites(vol uint64, ws []volume.StartedWrite) {
	start := time.Now()
	n.inFlight.Add(float64(len(ws)))
	n.c.StartWrites(vol, ws)
	for i := range ws {
		w := &ws[i]
		if w.Err != nil {
			n.end(rpcWrite, start)
			continue
		}
		m := meteredCallPool.Get().(*meteredCall)
		m.n, m.p, m.start = n, w.P, start
		w.P = m
	}
}

// meteredCall is a write of a meteredNode in flight, pooled so that the
// replicated write path allocates nothing for it.
type meteredCall struct {
	n     *meteredNode
	p     volume.Pending
	start time.Time
}

var meteredCallPool = sync.Pool{New: func() any { return new(meteredCall) }}

func (m *meteredCall) Wait() error {
	err := m.p.Wait()
	m.n.end(rpcWrite, m.start)
	*m = meteredCall{}
	meteredCallPool.Put(m)
	return err
}

func (n *meteredNode) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error {
	defer n.end(rpcRead, n.begin())
	return n.c.Read(ctx, vol, block, p, epoch)
}

func (n *meteredNode) Zero(ctx context.Context, vol, block, cnt uint64, st store.Stamp, sync bool) error {
	defer n.end(rpcZero, n.begin())
	return n.c.Zero(ctx, vol, block, cnt, st, sync)
}

func (n *meteredNode) Extents(ctx context.Context, vol, block, cnt, epoch uint64, fn func(start, count uint64, allocated bool) bool) error {
	defer n.end(rpcExtents, n.begin())
	return n.c.Extents(ctx, vol, block, cnt, epoch, fn)
}

func (n *meteredNode) Sync(ctx context.Context) error {
	defer n.end(rpcSync, n.begin())
	return n.c.Sync(ctx)
}

func (n *meteredNode) Changed(ctx context.Context, vol, block, cnt, from, to uint64, fn func(start, count uint64, changed bool) bool) error {
	defer n.end(rpcChanged, n.begin())
	return n.c.Changed(ctx, vol, block, cnt, from, to, fn)
}
