package wire

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"cairn/backend/store"
	"cairn/backend/volume"
)

// writeGate wraps a Backend: every Write announces itself on entered and
// waits until the gate opens (or its context ends).
type writeGate struct {
	Backend
	entered chan struct{}
	gate    chan struct{}
	writes  atomic.Int64
}

func (g *writeGate) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	g.writes.Add(1)
	g.entered <- struct{}{}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Backend.Write(ctx, vol, block, data, st, sync)
}

// TestStartWrite: StartWrite returns with the request sent and the call in
// flight on the node (no goroutine of the caller's waits for it), does not
// reference the caller's data after it returned, and Wait returns what
// Write would: success, the node's error, the context's.
func TestStartWrite(t *testing.T) {
	ctx := context.Background()
	mem := newMemBackend()
	g := &writeGate{Backend: mem, entered: make(chan struct{}, 16), gate: make(chan struct{})}
	addr, _ := startServer(t, g, ServerOptions{})
	c := newClient(t, addr, ClientOptions{})

	const n = 3
	var pend [n]volume.Pending
	want := make([][]byte, n)
	bufs := make([][]byte, n)
	for i := range n {
		want[i] = bytes.Repeat([]byte{byte('a' + i)}, BlockSize)
		bufs[i] = append([]byte(nil), want[i]...)
		p, err := c.StartWrite(ctx, 1, uint64(i), bufs[i], store.Stamp{Epoch: 1, Seq: uint64(i + 1)}, false, nil)
		if err != nil {
			t.Fatalf("start write %d: %v", i, err)
		}
		pend[i] = p
		clear(bufs[i]) // the caller's buffer is its own again
	}
	for range n { // all three are on the node at once
		<-g.entered
	}
	close(g.gate)
	for i, p := range pend {
		if err := p.Wait(); err != nil {
			t.Fatalf("wait %d: %v", i, err)
		}
	}
	for i := range n {
		got := make([]byte, BlockSize)
		if err := c.Read(ctx, 1, uint64(i), got, 1); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[i]) {
			t.Fatalf("block %d: read %q..., wrote %q...", i, got[:4], want[i][:4])
		}
	}

	// The node's error comes back through Wait, as Write would return it
	// (memBackend refuses an empty write).
	p, err := c.StartWrite(ctx, 1, 0, nil, store.Stamp{Epoch: 1, Seq: 9}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-g.entered
	if err := p.Wait(); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("empty write: %v, want store.ErrInvalid", err)
	}
	// A bad buffer fails StartWrite itself, with nothing sent.
	before := g.writes.Load()
	if _, err := c.StartWrite(ctx, 1, 0, make([]byte, 100), store.Stamp{Epoch: 1, Seq: 10}, false, nil); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("write of 100 bytes: %v, want store.ErrInvalid", err)
	}
	if g.writes.Load() != before {
		t.Fatal("a refused StartWrite reached the node")
	}
}

// TestStartWriteCancelled: a call whose context ends while the node holds
// it gives up in Wait with the context's error, and its slot serves later
// calls (one slot only, so a leaked one would hang the next call).
func TestStartWriteCancelled(t *testing.T) {
	g := &writeGate{Backend: newMemBackend(), entered: make(chan struct{}, 16), gate: make(chan struct{})}
	addr, _ := startServer(t, g, ServerOptions{})
	c := newClient(t, addr, ClientOptions{InFlightMax: 1})
	ctx, cancel := context.WithCancel(context.Background())
	p, err := c.StartWrite(ctx, 1, 0, make([]byte, BlockSize), store.Stamp{Epoch: 1, Seq: 1}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-g.entered
	cancel()
	if err := p.Wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait after cancel: %v, want context.Canceled", err)
	}
	close(g.gate)
	if err := c.Write(context.Background(), 1, 1, make([]byte, BlockSize), store.Stamp{Epoch: 1, Seq: 2}, false); err != nil {
		t.Fatalf("write after a cancelled call: %v", err)
	}
	if st := c.Stats(); st.Calls != 2 || st.Timeouts != 1 {
		t.Fatalf("stats %+v, want 2 calls, 1 timeout", st)
	}
}

// TestStartWriteMemo: the replicas of one write share its checksum through
// a volume.WriteMemo. The first StartWrite computes it over the request's
// payload and leaves it there; a later one sends the memo's sum as it is,
// not one of its own (a wrong sum in the memo reaches the node, whose
// check of the bytes it got refuses the write: the node still verifies
// what it stores).
func TestStartWriteMemo(t *testing.T) {
	ctx := context.Background()
	memA, memB := newMemBackend(), newMemBackend()
	addrA, _ := startServer(t, memA, ServerOptions{})
	addrB, _ := startServer(t, memB, ServerOptions{})
	ca := newClient(t, addrA, ClientOptions{})
	cb := newClient(t, addrB, ClientOptions{})

	data := make([]byte, 2*BlockSize)
	for i := range data {
		data[i] = byte(i * 7)
	}
	st := store.Stamp{Epoch: 1, Seq: 1}
	var fixed [WriteRequestSize]byte
	(&WriteRequest{Vol: 1, Block: 5, Stamp: st}).Put(fixed[:])
	want := UpdateChecksum(Checksum(fixed[:]), data)

	var memo volume.WriteMemo
	pa, err := ca.StartWrite(ctx, 1, 5, data, st, false, &memo)
	if err != nil {
		t.Fatal(err)
	}
	if !memo.SumSet || memo.Sum != want {
		t.Fatalf("memo after the first replica: %+v, want sum %#08x", memo, want)
	}
	pb, err := cb.StartWrite(ctx, 1, 5, data, st, false, &memo)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []volume.Pending{pa, pb} {
		if err := p.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*Client{ca, cb} {
		got := make([]byte, len(data))
		if err := c.Read(ctx, 1, 5, got, 1); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("a replica holds other data than was written")
		}
	}

	bad := volume.WriteMemo{Sum: want ^ 1, SumSet: true}
	p, err := cb.StartWrite(ctx, 1, 5, data, store.Stamp{Epoch: 1, Seq: 1}, false, &bad)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); !errors.Is(err, ErrChecksum) {
		t.Fatalf("write sent with a wrong shared sum: %v, want ErrChecksum from the node", err)
	}
	if bad.Sum != want^1 {
		t.Fatal("StartWrite overwrote a memo that was set")
	}
}
