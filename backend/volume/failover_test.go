package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"cairn/backend/store"
	"cairn/target"
)

// flakyNode is a store that fails every call with err while err is set.
type flakyNode struct {
	*store.Store
	err   atomic.Pointer[error]
	calls atomic.Int64 // calls that reached the node while failing
}

func (f *flakyNode) fail() error {
	if e := f.err.Load(); e != nil {
		f.calls.Add(1)
		return *e
	}
	return nil
}

func (f *flakyNode) setErr(err error) {
	if err == nil {
		f.err.Store(nil)
		return
	}
	f.err.Store(&err)
}

func (f *flakyNode) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Write(ctx, vol, block, data, st, sync)
}

func (f *flakyNode) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Read(ctx, vol, block, p, epoch)
}

func (f *flakyNode) Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Zero(ctx, vol, block, n, st, sync)
}

func (f *flakyNode) Sync(ctx context.Context) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Sync(ctx)
}

func (f *flakyNode) Extents(ctx context.Context, vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Extents(ctx, vol, block, n, epoch, fn)
}

// replicated places every chunk on all of its nodes.
type replicated []Node

func (p replicated) Replicas(uint64) []Node { return p }
func (p replicated) Nodes() []Node          { return p }

// recordingFailover takes nodes out of a volume as a catalog would: once
// per node, replacing the placement, and refusing when refuse is set.
type recordingFailover struct {
	v      *Volume
	refuse error

	mu       sync.Mutex
	nodes    replicated
	excluded []Node
}

func (f *recordingFailover) Exclude(ctx context.Context, nd Node, cause error) error {
	if f.refuse != nil {
		return f.refuse
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if i := slices.Index(f.nodes, nd); i >= 0 {
		f.nodes = slices.Delete(slices.Clone(f.nodes), i, i+1)
		f.excluded = append(f.excluded, nd)
		f.v.SetPlacement(f.nodes)
	}
	return nil
}

func openReplicated(t *testing.T, failover bool) (*Volume, []*flakyNode, *recordingFailover) {
	t.Helper()
	var nodes []*flakyNode
	var pl replicated
	for range 3 {
		n := &flakyNode{Store: openStore(t)}
		nodes = append(nodes, n)
		pl = append(pl, n)
	}
	f := &recordingFailover{nodes: pl}
	opts := Options{ID: 9, Size: 64 << 20, ChunkSize: 1 << 20, Generation: 1, Epoch: 1, Placement: pl}
	if failover {
		opts.Failover = f
	}
	v, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.v = v
	t.Cleanup(func() { v.Close() })
	return v, nodes, f
}

// TestFailoverDegraded: with a Failover, a replica that fails is taken out
// once, however many requests saw it fail; the writes succeed on the
// others, which hold every byte; the failed node is not asked again.
func TestFailoverDegraded(t *testing.T) {
	v, nodes, f := openReplicated(t, true)
	down := nodes[1]
	down.setErr(fmt.Errorf("%w: connection refused", target.ErrIO))

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i + 1)}, 64<<10)
			off := int64(i) * 3 << 20 // distinct chunks
			if err := v.WriteAt(ctx, p, off, 0); err != nil {
				errs <- err
			}
			if err := v.Zero(ctx, off+1<<20, 1<<20, 0); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("write with one replica down: %v", err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush with one replica down: %v", err)
	}
	if len(f.excluded) != 1 || f.excluded[0] != down {
		t.Fatalf("excluded %d nodes, want only the failed one", len(f.excluded))
	}
	if got := v.Stats().Excluded; got < 1 {
		t.Fatalf("Stats.Excluded %d", got)
	}
	before := down.calls.Load()
	if err := v.WriteAt(ctx, make([]byte, 4096), 0, target.FUA); err != nil {
		t.Fatal(err)
	}
	if down.calls.Load() != before {
		t.Fatal("the excluded node was asked again")
	}
	// Each remaining replica holds every write, read from the store itself.
	for _, n := range []*flakyNode{nodes[0], nodes[2]} {
		for i := 1; i < 16; i++ {
			got := make([]byte, 64<<10)
			if err := n.Store.Read(ctx, 9, uint64(i)*3<<20/BlockSize, got, 1); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, bytes.Repeat([]byte{byte(i + 1)}, 64<<10)) {
				t.Fatalf("write %d missing on a healthy replica", i)
			}
		}
	}
}

// TestFailoverRefused: without a Failover, or when it cannot take the node
// out, or when the error is one every replica would give, the request fails
// and nothing is taken out.
func TestFailoverRefused(t *testing.T) {
	t.Run("no failover", func(t *testing.T) {
		v, nodes, _ := openReplicated(t, false)
		nodes[2].setErr(target.ErrIO)
		if err := v.WriteAt(ctx, make([]byte, 4096), 0, 0); !errors.Is(err, target.ErrIO) {
			t.Fatalf("write: %v, want ErrIO", err)
		}
	})
	t.Run("exclude fails", func(t *testing.T) {
		v, nodes, f := openReplicated(t, true)
		f.refuse = errors.New("no catalog quorum")
		nodes[0].setErr(target.ErrIO)
		if err := v.WriteAt(ctx, make([]byte, 4096), 0, 0); !errors.Is(err, target.ErrIO) {
			t.Fatalf("write: %v, want ErrIO", err)
		}
		if err := v.Flush(ctx); err == nil {
			t.Fatal("flush succeeded with a replica neither synced nor taken out")
		}
	})
	t.Run("no space", func(t *testing.T) {
		v, nodes, f := openReplicated(t, true)
		nodes[0].setErr(target.ErrNoSpace)
		if err := v.WriteAt(ctx, make([]byte, 4096), 0, 0); !errors.Is(err, target.ErrNoSpace) {
			t.Fatalf("write: %v, want ErrNoSpace", err)
		}
		if len(f.excluded) != 0 {
			t.Fatal("a full replica was taken out")
		}
	})
	t.Run("all down", func(t *testing.T) {
		v, nodes, f := openReplicated(t, true)
		for _, n := range nodes {
			n.setErr(target.ErrIO)
		}
		if err := v.WriteAt(ctx, make([]byte, 4096), 0, 0); !errors.Is(err, target.ErrIO) {
			t.Fatalf("write: %v, want ErrIO", err)
		}
		if len(f.excluded) != 0 {
			t.Fatal("replicas taken out when none succeeded")
		}
	})
}

// TestReadFailover: a read (and a block status query) that fails on the
// first replica is served by the next; one that every replica fails errs.
func TestReadFailover(t *testing.T) {
	v, nodes, _ := openReplicated(t, false)
	want := bytes.Repeat([]byte{0x5a}, 8192)
	if err := v.WriteAt(ctx, want, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	nodes[0].setErr(target.ErrIO)
	nodes[1].setErr(target.ErrIO)
	got := make([]byte, len(want))
	if err := v.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read with two replicas down: %v", err)
	}
	var mapped int64
	err := v.Extents(ctx, 0, 4<<20, func(e target.Extent) bool {
		if !e.Hole {
			mapped += e.Length
		}
		return true
	})
	if err != nil || mapped != 8192 {
		t.Fatalf("extents with two replicas down: %v, %d bytes mapped", err, mapped)
	}
	if v.Stats().ReadRetries == 0 {
		t.Fatal("no read retries counted")
	}
	nodes[2].setErr(target.ErrIO)
	if err := v.ReadAt(ctx, got, 1<<20); !errors.Is(err, target.ErrIO) {
		t.Fatalf("read with every replica down: %v", err)
	}
}
