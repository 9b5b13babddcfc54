package main

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/cluster"
	"cairn/target"
)

// countNode counts the writes it takes and fails them while fail is set.
type countNode struct {
	writes, zeros, syncs atomic.Int64
	fail                 atomic.Bool
}

var errNodeDown = errors.New("node down")

func (n *countNode) err() error {
	if n.fail.Load() {
		return errNodeDown
	}
	return nil
}

func (n *countNode) Write(context.Context, uint64, uint64, []byte, store.Stamp, bool) error {
	n.writes.Add(1)
	return n.err()
}

func (n *countNode) Zero(context.Context, uint64, uint64, uint64, store.Stamp, bool) error {
	n.zeros.Add(1)
	return n.err()
}

func (n *countNode) Sync(context.Context) error { n.syncs.Add(1); return n.err() }

func (n *countNode) Read(_ context.Context, _, _ uint64, p []byte, _ uint64) error {
	clear(p)
	return n.err()
}

func (n *countNode) Extents(_ context.Context, _, block, cnt, _ uint64, fn func(uint64, uint64, bool) bool) error {
	fn(block, cnt, false)
	return n.err()
}

// TestJoiningPlacement: a replica catching up is the last member of each
// of its chunks' sets and of Nodes, serves no reads, and takes every
// write, zero and flush of a volume over the placement; its failures do
// not fail the requests: before the include they end the run (its
// context), from the include on they come back as errors and veto it,
// and once the include is over they are errors a Failover handles as
// any replica's.
func TestJoiningPlacement(t *testing.T) {
	cv := cluster.Volume{Name: "v", ID: 7, Size: 16 << 20, ChunkSize: 1 << 20, Replicas: 3,
		Placement: []cluster.Member{{Node: "a"}, {Node: "b"}, {Node: "c"}}, Stale: []string{"c"}}
	a, b, c := &countNode{}, &countNode{}, &countNode{}
	nodes := map[string]volume.Node{"a": a, "b": b, "c": c}
	ctx, cancel := context.WithCancel(context.Background())
	cu := &catchup{node: "c", cancel: cancel}
	p := newChunkPlacement(cv, nodes, "a", cu)
	for chunk := range uint64(16) {
		set := p.Replicas(chunk)
		if len(set) != 3 || set[0] != volume.Node(a) || set[1] != volume.Node(b) {
			t.Fatalf("chunk %d: set %v, want a, b, then c joining", chunk, set)
		}
		if got, ok := catchupOf(set[2]); !ok || got != cu {
			t.Fatalf("chunk %d: last member %T is not c joining", chunk, set[2])
		}
	}
	if all := p.Nodes(); len(all) != 3 || !slices.Contains(all, volume.Node(a)) || !slices.Contains(all, volume.Node(b)) || all[2] != p.joinNode {
		t.Fatalf("nodes %v", all)
	}
	if err := p.joinNode.Read(ctx, 7, 0, make([]byte, 4096), 1); !errors.Is(err, target.ErrIO) {
		t.Fatalf("read from a joining replica: %v", err)
	}
	if _, ok := p.nameOf(p.joinNode); ok {
		t.Fatal("nameOf names the joining member as a replica in service")
	}

	v, err := volume.Open(volume.Options{ID: 7, Size: 16 << 20, Generation: 1, Epoch: 1, Placement: p})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.WriteAt(ctx, make([]byte, 2<<20), 0, target.FUA); err != nil {
		t.Fatal(err)
	}
	if err := v.Zero(ctx, 4<<20, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if c.writes.Load() != a.writes.Load() || c.zeros.Load() != a.zeros.Load() || c.syncs.Load() == 0 || a.writes.Load() == 0 {
		t.Fatalf("c joining took %d writes, %d zeros, %d syncs; a %d writes, %d zeros", c.writes.Load(), c.zeros.Load(), c.syncs.Load(), a.writes.Load(), a.zeros.Load())
	}
	buf := make([]byte, 1<<20)
	reads := c.writes.Load()
	if err := v.ReadAt(ctx, buf, 0); err != nil || c.writes.Load() != reads {
		t.Fatalf("read: %v", err)
	}

	// Down before the include: the requests succeed, the run ends.
	c.fail.Store(true)
	if err := v.WriteAt(ctx, make([]byte, 4096), 0, 0); err != nil {
		t.Fatalf("write with the joining replica failing: %v", err)
	}
	if ctx.Err() == nil || cu.mu.failed == nil {
		t.Fatal("a failed forwarded write did not end the catch-up")
	}
	// During the include: the error reaches the caller (the Failover).
	cu2 := &catchup{node: "c", cancel: func() {}}
	cu2.mu.including = true
	j := cu2.wrap(c)
	if err := j.Write(context.Background(), 7, 0, make([]byte, 4096), store.Stamp{Epoch: 1, Seq: 9}, false); !errors.Is(err, errNodeDown) {
		t.Fatalf("forwarded failure during the include: %v", err)
	}
	if !cu2.veto() || !cu2.mu.vetoed {
		t.Fatal("a failure during the include does not veto it")
	}
	cu2.mu.done = true
	if cu2.veto() {
		t.Fatal("a failure after the include vetoes it")
	}
}
