package volume

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cairn/backend/store"
)

// stampNode records the stamp of every write it is given; blockAt, when
// set, makes writes stamped with that epoch wait for unblock.
type stampNode struct {
	nopNode
	mu      sync.Mutex
	stamps  []store.Stamp
	blockAt uint64
	entered chan struct{}
	unblock chan struct{}
}

func (n *stampNode) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	n.mu.Lock()
	n.stamps = append(n.stamps, st)
	n.mu.Unlock()
	if n.blockAt != 0 && st.Epoch == n.blockAt {
		n.entered <- struct{}{}
		<-n.unblock
	}
	return nil
}

func openGated(t *testing.T, n Node) *Volume {
	t.Helper()
	v, err := Open(Options{ID: 1, Size: 1 << 30, Generation: 1, Epoch: 5, Placement: NewLocal(n)})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// returned reports whether fn returns within d.
func returned(fn func() error, d time.Duration) (bool, error) {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return true, err
	case <-time.After(d):
		return false, <-done
	}
}

// TestHoldSwitchesAndHolds: after Hold, writes are stamped e+1, reach the
// node at once, and are acknowledged only at Release; writes stamped e
// before are acknowledged as usual; reads are never held; a flush admitted
// after the switch is held.
func TestHoldSwitchesAndHolds(t *testing.T) {
	n := &stampNode{}
	v := openGated(t, n)
	p := make([]byte, 4096)
	if err := v.WriteAt(ctx, p, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Hold(6, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := v.Hold(7, time.Minute); !errors.Is(err, ErrHoldBusy) {
		t.Fatalf("second hold: %v, want ErrHoldBusy", err)
	}
	var acked atomic.Int32
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if err := v.WriteAt(ctx, p, int64(i+1)*4096, 0); err != nil {
				t.Error(err)
			}
			acked.Add(1)
		})
	}
	wg.Go(func() {
		if err := v.Flush(ctx); err != nil {
			t.Error(err)
		}
		acked.Add(1)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		n.mu.Lock()
		got := len(n.stamps)
		n.mu.Unlock()
		if got == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes reached the node during the hold, want 5 (data keeps flowing)", got)
		}
		time.Sleep(time.Millisecond)
	}
	if ok, err := returned(func() error { return v.ReadAt(ctx, p, 0) }, 5*time.Second); !ok || err != nil {
		t.Fatalf("read during a hold: returned %v, %v", ok, err)
	}
	time.Sleep(20 * time.Millisecond)
	if a := acked.Load(); a != 0 {
		t.Fatalf("%d acknowledgements went out during the hold", a)
	}
	res, err := v.Release()
	if err != nil || res.Reason != HoldReleased || res.Epoch != 5 || res.Held != 5 || !res.Drained {
		t.Fatalf("release: %+v, %v", res, err)
	}
	wg.Wait()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stamps[0].Epoch != 5 {
		t.Fatalf("write before the hold stamped %d, want 5", n.stamps[0].Epoch)
	}
	for _, st := range n.stamps[1:] {
		if st.Epoch != 6 {
			t.Fatalf("write after the switch stamped %d, want 6", st.Epoch)
		}
	}
}

// TestHoldEnds: a hold nobody releases ends at its deadline, one whose
// held requests pass the bound ends at once; the requests succeed either
// way and Release reports the failure.
func TestHoldEnds(t *testing.T) {
	v := openGated(t, nopNode{})
	p := make([]byte, 4096)
	if err := v.Hold(6, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := v.WriteAt(ctx, p, 0, 0); err != nil {
		t.Fatalf("write held past the deadline: %v", err)
	}
	if time.Since(start) < 40*time.Millisecond {
		t.Fatal("the write was not held")
	}
	if res, err := v.Release(); !errors.Is(err, ErrHoldFailed) || res.Reason != HoldDeadline {
		t.Fatalf("release after the deadline: %+v, %v", res, err)
	}

	if err := v.Hold(7, time.Minute); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range heldRequestsMax + 1 {
		wg.Go(func() {
			if err := v.WriteAt(ctx, make([]byte, 4096), int64(i%1024)*4096, 0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait() // returns only because the bound ended the hold
	if res, err := v.Release(); !errors.Is(err, ErrHoldFailed) || res.Reason != HoldBound {
		t.Fatalf("release after the bound: %+v, %v", res, err)
	}
	// Close ends a hold too.
	if err := v.Hold(8, time.Minute); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- v.WriteAt(ctx, p, 0, 0) }()
	time.Sleep(10 * time.Millisecond)
	if err := v.Close(); err != nil {
		t.Fatalf("close with a held write: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("held write at close: %v", err)
	}
}

// TestDrained: the seal waits for writes stamped with the cut epoch still
// on their way to the nodes, not for the held ones.
func TestDrained(t *testing.T) {
	n := &stampNode{blockAt: 5, entered: make(chan struct{}, 1), unblock: make(chan struct{})}
	v := openGated(t, n)
	done := make(chan error, 1)
	go func() { done <- v.WriteAt(ctx, make([]byte, 4096), 0, 0) }()
	<-n.entered
	if err := v.Hold(6, time.Minute); err != nil {
		t.Fatal(err)
	}
	if v.Drained(5) {
		t.Fatal("epoch 5 drained with a write of it in flight")
	}
	close(n.unblock)
	if err := <-done; err != nil {
		t.Fatal(err) // stamped 5: acknowledged as usual, during the hold
	}
	if !v.Drained(5) {
		t.Fatal("epoch 5 not drained after its last write")
	}
	if _, err := v.Release(); err != nil {
		t.Fatal(err)
	}
	// The next switch waits for epoch 5 to drain (it is), and refuses to
	// lower or repeat the epoch.
	if err := v.Hold(6, time.Minute); err == nil {
		t.Fatal("hold to the current epoch accepted")
	}
	if err := v.Hold(7, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Release(); err != nil {
		t.Fatal(err)
	}
}

// TestOnHoldEnd: every hold is reported once when it ends, however it
// ends — at Release, at its deadline with nobody releasing, past a bound,
// at Close — with its reason and epoch; a Release after the deadline
// reports nothing more.
func TestOnHoldEnd(t *testing.T) {
	ended := make(chan HoldResult, 8)
	v, err := Open(Options{ID: 1, Size: 1 << 30, Generation: 1, Epoch: 5, Placement: NewLocal(nopNode{}),
		OnHoldEnd: func(r HoldResult) { ended <- r }})
	if err != nil {
		t.Fatal(err)
	}
	next := func(want string, epoch uint64) HoldResult {
		t.Helper()
		select {
		case r := <-ended:
			if r.Reason != want || r.Epoch != epoch || r.Window <= 0 {
				t.Fatalf("hold ended %+v, want reason %s, epoch %d, a window", r, want, epoch)
			}
			return r
		case <-time.After(time.Minute):
			t.Fatalf("no end reported for the hold of epoch %d (%s)", epoch, want)
		}
		return HoldResult{}
	}
	none := func() {
		t.Helper()
		select {
		case r := <-ended:
			t.Fatalf("a hold reported twice: %+v", r)
		default:
		}
	}

	if err := v.Hold(6, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Release(); err != nil {
		t.Fatal(err)
	}
	next(HoldReleased, 5)
	none()

	// Nobody releases: the deadline ends it and it is reported then.
	if err := v.Hold(7, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	r := next(HoldDeadline, 6)
	if r.Window < 20*time.Millisecond {
		t.Fatalf("deadline hold window %v, below its 20ms deadline", r.Window)
	}
	if _, err := v.Release(); !errors.Is(err, ErrHoldFailed) {
		t.Fatalf("release after the deadline: %v", err)
	}
	none()

	if err := v.Hold(8, time.Minute); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range heldRequestsMax + 1 {
		wg.Go(func() {
			if err := v.WriteAt(ctx, make([]byte, 4096), int64(i%1024)*4096, 0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if r := next(HoldBound, 7); r.Held <= heldRequestsMax {
		t.Fatalf("bound hold reported %d held, want > %d", r.Held, heldRequestsMax)
	}
	if _, err := v.Release(); !errors.Is(err, ErrHoldFailed) {
		t.Fatalf("release after the bound: %v", err)
	}
	none()

	if err := v.Hold(9, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	next(HoldClosed, 8)
	none()
}
