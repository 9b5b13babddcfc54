package volume

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/target"
)

// gateNode blocks every call until released and records the stamps and
// contexts it was given.
type gateNode struct {
	nopNode
	entered chan struct{}
	release chan struct{}

	mu       sync.Mutex
	stamps   []store.Stamp
	deadline []time.Time
}

func newGateNode() *gateNode {
	return &gateNode{entered: make(chan struct{}, 64), release: make(chan struct{})}
}

func (g *gateNode) record(ctx context.Context, st store.Stamp) {
	g.mu.Lock()
	g.stamps = append(g.stamps, st)
	d, _ := ctx.Deadline()
	g.deadline = append(g.deadline, d)
	g.mu.Unlock()
	g.entered <- struct{}{}
	<-g.release
}

func (g *gateNode) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	g.record(ctx, st)
	return nil
}

func (g *gateNode) Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error {
	g.record(ctx, st)
	return nil
}

// TestCloseWaitsForRequests: Close stops admitting at once but returns only
// after the requests inside the volume have left, so that the caller may
// drop the volume's data. This is the race a drop used to lose.
func TestCloseWaitsForRequests(t *testing.T) {
	g := newGateNode()
	v, err := Open(Options{ID: 1, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: NewLocal(g)})
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() { wrote <- v.WriteAt(ctx, make([]byte, 4096), 0, 0) }()
	<-g.entered
	closed := make(chan error, 1)
	go func() { closed <- v.Close() }()
	// Close has begun when new requests are refused.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := v.ReadAt(ctx, make([]byte, 4096), 0)
		if errors.Is(err, target.ErrClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read during close: %v, want ErrClosed", err)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with a write inside the volume", err)
	default:
	}
	if n := v.InFlight(); n != 1 {
		t.Fatalf("%d requests in flight, want 1", n)
	}
	close(g.release)
	if err := <-wrote; err != nil {
		t.Fatalf("write admitted before Close: %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := v.WriteAt(ctx, make([]byte, 4096), 0, 0); !errors.Is(err, target.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

// TestCloseBounded: a node call that never returns makes Close give up
// with ErrBusy after the request timeout, not wait forever.
func TestCloseBounded(t *testing.T) {
	g := newGateNode()
	v, err := Open(Options{ID: 1, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: NewLocal(g), RequestTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- v.WriteAt(ctx, make([]byte, 4096), 0, 0) }()
	<-g.entered
	if err := v.Close(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Close with a stuck request: %v, want ErrBusy", err)
	}
	close(g.release)
	<-done
	if err := v.Close(); err != nil {
		t.Fatalf("Close once drained: %v", err)
	}
}

// TestOneStampPerRequest: an unaligned Zero (partial head, whole blocks,
// partial tail) and an unaligned write spanning chunks each reach the nodes
// with one stamp, and every node call carries the request's deadline.
func TestOneStampPerRequest(t *testing.T) {
	g := newGateNode()
	close(g.release)
	g.entered = make(chan struct{}, 1024)
	v, err := Open(Options{ID: 1, Size: 8 << 20, Generation: 1, Epoch: 1, Placement: NewLocal(g), RequestTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		do    func() error
		calls int
	}{
		{"zero 512+1MiB", func() error { return v.Zero(ctx, 512, 1<<20, 0) }, 3},
		{"write across chunks", func() error { return v.WriteAt(ctx, make([]byte, 2<<20), 1<<20-512, 0) }, 1},
	} {
		g.mu.Lock()
		g.stamps, g.deadline = nil, nil
		g.mu.Unlock()
		start := time.Now()
		if err := c.do(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		g.mu.Lock()
		if len(g.stamps) != c.calls {
			t.Errorf("%s: %d node calls, want %d", c.name, len(g.stamps), c.calls)
		}
		for i, st := range g.stamps {
			if st != g.stamps[0] {
				t.Errorf("%s: node call %d stamped %+v, first %+v: one request, one stamp", c.name, i, st, g.stamps[0])
			}
			if d := g.deadline[i]; d.Before(start.Add(59*time.Second)) || d.After(time.Now().Add(time.Minute)) {
				t.Errorf("%s: node call %d deadline %v, want about a minute from %v", c.name, i, d, start)
			}
		}
		g.mu.Unlock()
	}
}

// TestRequestContextCanceled: a request whose front-end context is done
// reaches the store as an error, not a write.
func TestRequestContextCanceled(t *testing.T) {
	s := openStore(t)
	v := openVolume(t, s, 1<<20)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := v.WriteAt(cctx, make([]byte, 4096), 0, 0); err == nil {
		t.Fatal("write with a canceled context succeeded")
	}
	if n, _ := s.Allocated(ctx, 7, 1); n != 0 {
		t.Fatalf("canceled write allocated %d blocks", n)
	}
}

// blockGates blocks each write until the channel of its first block is
// closed.
type blockGates struct {
	nopNode
	entered chan uint64
	gates   map[uint64]chan struct{}
}

func (b *blockGates) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	b.entered <- block
	<-b.gates[block]
	return nil
}

// TestBarrier: Barrier waits for the requests admitted before it, not for
// those admitted after it began, and gives up with its context; a later
// Barrier still waits for a request an earlier one gave up on.
func TestBarrier(t *testing.T) {
	g := &blockGates{entered: make(chan uint64, 8), gates: map[uint64]chan struct{}{0: make(chan struct{}), 1: make(chan struct{}), 2: make(chan struct{})}}
	v, err := Open(Options{ID: 1, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: NewLocal(g)})
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 3)
	write := func(block uint64) {
		go func() { wrote <- v.WriteAt(ctx, make([]byte, 4096), int64(block)*4096, 0) }()
		if got := <-g.entered; got != block {
			t.Fatalf("write of block %d entered, want %d", got, block)
		}
	}
	write(0) // before every barrier
	short, cancel := context.WithCancel(ctx)
	cancel()
	if err := v.Barrier(short); !errors.Is(err, context.Canceled) {
		t.Fatalf("barrier with a request older inside and a done context: %v", err)
	}
	write(1) // after a barrier that gave up
	barred := make(chan error, 1)
	go func() { barred <- v.Barrier(ctx) }()
	notYet := func(what string) {
		select {
		case err := <-barred:
			t.Fatalf("barrier returned (%v) with %s inside", err, what)
		default:
		}
	}
	notYet("the write the last barrier gave up on")
	close(g.gates[0])
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	for v.barrier.gen.Load() != 2 {
		time.Sleep(time.Millisecond)
	}
	write(2) // admitted after the barrier began: not waited for
	notYet("a write admitted before it")
	close(g.gates[1])
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := <-barred; err != nil {
		t.Fatalf("barrier with only a newer write inside: %v", err)
	}
	close(g.gates[2])
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
}
