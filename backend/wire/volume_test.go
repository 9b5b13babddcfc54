package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/target"
)

// TestVolumeOverWire drives two volumes with the same seeded random
// requests, one on a store through the wire and one on a local store: every
// read, and the allocation map at the end, must agree.
func TestVolumeOverWire(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))

	node := openStore(t)
	addr, _ := startServer(t, node, ServerOptions{})
	c := newClient(t, addr, ClientOptions{Conns: 2})
	const size = 8 << 20
	open := func(n volume.Node) *volume.Volume {
		v, err := volume.Open(volume.Options{ID: 5, Size: size, ChunkSize: 256 << 10, Generation: 1, Epoch: 1, Placement: volume.NewLocal(n)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Close() })
		return v
	}
	remote, local := open(c), open(openStore(t))
	ctx := context.Background()
	both := func(what string, f func(v *volume.Volume) error) {
		t.Helper()
		if err, lerr := f(remote), f(local); err != nil || lerr != nil {
			t.Fatalf("seed %d: %s: over the wire %v, local %v", seed, what, err, lerr)
		}
	}
	for i := range 300 {
		off := rng.Int64N(size - 1)
		n := min(1+rng.Int64N(300<<10), size-off)
		switch rng.IntN(5) {
		case 0, 1:
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(i + j/4096)
			}
			flags := target.WriteFlags(0)
			if rng.IntN(8) == 0 {
				flags = target.FUA
			}
			both(fmt.Sprintf("op %d write [%d, +%d)", i, off, n), func(v *volume.Volume) error { return v.WriteAt(ctx, p, off, flags) })
		case 2:
			both(fmt.Sprintf("op %d zero [%d, +%d)", i, off, n), func(v *volume.Volume) error { return v.Zero(ctx, off, n, target.ZeroDiscard) })
		case 3:
			both(fmt.Sprintf("op %d flush", i), func(v *volume.Volume) error { return v.Flush(ctx) })
		case 4:
			a, b := make([]byte, n), make([]byte, n)
			if err := remote.ReadAt(ctx, a, off); err != nil {
				t.Fatalf("seed %d: op %d: read over the wire: %v", seed, i, err)
			}
			if err := local.ReadAt(ctx, b, off); err != nil {
				t.Fatalf("seed %d: op %d: local read: %v", seed, i, err)
			}
			if !bytes.Equal(a, b) {
				t.Fatalf("seed %d: op %d: read [%d, +%d) differs", seed, i, off, n)
			}
		}
	}
	extents := func(v *volume.Volume) string {
		var b bytes.Buffer
		if err := v.Extents(ctx, 0, size, func(e target.Extent) bool {
			fmt.Fprintf(&b, "%d/%v ", e.Length, e.Hole)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	if a, b := extents(remote), extents(local); a != b {
		t.Fatalf("seed %d: extents differ:\nwire  %s\nlocal %s", seed, a, b)
	}
	// The node's errors reach the front end as the local store's would: a
	// closed store is a closed device.
	node.Close()
	if err := remote.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, target.ErrClosed) {
		t.Fatalf("read from a node with a closed store: %v, want target.ErrClosed", err)
	}
}

// TestReplicatedVolumeOverWire: a volume with every chunk on three nodes, a
// local store and two stores behind the node RPC, as cairnd places an R=3
// volume: after seeded random writes (whole and partial blocks, some FUA)
// each replica, read directly from its store, holds what was written; a
// write that one replica cannot take fails (no Failover) instead of being
// acknowledged by the other two.
func TestReplicatedVolumeOverWire(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 8))
	stores := []*store.Store{openStore(t), openStore(t), openStore(t)}
	nodes := []volume.Node{stores[0]}
	var servers []*Server
	for _, st := range stores[1:] {
		addr, srv := startServer(t, st, ServerOptions{})
		servers = append(servers, srv)
		nodes = append(nodes, newClient(t, addr, ClientOptions{Conns: 2}))
	}
	const size = 4 << 20
	v, err := volume.Open(volume.Options{ID: 5, Size: size, ChunkSize: 256 << 10, Generation: 1, Epoch: 1, Placement: threeNodes{nodes}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	ctx := context.Background()
	model := make([]byte, size)
	for i := range 200 {
		off := rng.Int64N(size - 1)
		if rng.IntN(2) == 0 {
			off &^= BlockSize - 1
		}
		n := min(1+rng.Int64N(64<<10), size-off)
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		flags := target.WriteFlags(0)
		if rng.IntN(8) == 0 {
			flags = target.FUA
		}
		if err := v.WriteAt(ctx, p, off, flags); err != nil {
			t.Fatalf("seed %d: op %d: write [%d, +%d): %v", seed, i, off, n, err)
		}
		copy(model[off:], p)
	}
	for i, st := range stores {
		got := make([]byte, size)
		for b := 0; b < size; b += 1 << 20 {
			if err := st.Read(ctx, 5, uint64(b/BlockSize), got[b:b+1<<20], 1); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("seed %d: replica %d differs from what was written", seed, i)
		}
	}

	servers[1].Close()
	err = v.WriteAt(ctx, make([]byte, BlockSize), 0, 0)
	if !errors.Is(err, target.ErrIO) {
		t.Fatalf("write with a replica down: %v, want target.ErrIO", err)
	}
}
