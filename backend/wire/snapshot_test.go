package wire

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cairn/backend/store"
)

func TestTargetCodec(t *testing.T) {
	q := TargetRequest{Budget: 2 * time.Second, Epoch: 7, Timeout: 4 * time.Second, Volumes: []string{"a", strings.Repeat("v", TargetNameBytesMax)}}
	got, err := ParseTargetRequest(AppendTargetRequest(nil, q))
	if err != nil || got.Budget != q.Budget || got.Epoch != q.Epoch || got.Timeout != q.Timeout || !slices.Equal(got.Volumes, q.Volumes) {
		t.Fatalf("target request: %+v %v", got, err)
	}
	b := AppendTargetRequest(nil, q)
	bad := map[string][]byte{
		"short":          b[:TargetRequestSizeMin-1],
		"cut off":        b[:len(b)-1],
		"trailing":       append(slices.Clone(b), 0),
		"zero volumes":   AppendTargetRequest(nil, q)[:TargetRequestSizeMin],
		"budget too big": func() []byte { c := slices.Clone(b); be.PutUint64(c, uint64(TargetBudgetMax+1)); return c }(),
		"zero budget":    func() []byte { c := slices.Clone(b); be.PutUint64(c, 0); return c }(),
		"empty name":     AppendTargetRequest(nil, TargetRequest{Budget: 1, Volumes: []string{"x"}})[:TargetRequestSizeMin],
	}
	be.PutUint16(bad["zero volumes"][24:], 0)
	bad["empty name"] = append(bad["empty name"], 0)
	for what, p := range bad {
		if _, err := ParseTargetRequest(p); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", what, err)
		}
	}

	r := ReleaseReply{Volumes: []VolumeHold{{Window: time.Millisecond, Held: 3, Drained: true, Reason: "released"}, {Reason: "none"}}, Err: "volume \"b\": hold ended by deadline"}
	rb := AppendReleaseReply(nil, r)
	gr, err := ParseReleaseReply(rb)
	if err != nil || !slices.Equal(gr.Volumes, r.Volumes) || gr.Err != r.Err {
		t.Fatalf("release reply: %+v %v", gr, err)
	}
	if len(rb) > releaseReplyBytes(2) {
		t.Fatalf("release reply of %d bytes, bound %d", len(rb), releaseReplyBytes(2))
	}
	for what, p := range map[string][]byte{
		"cut off":  rb[:len(rb)-1],
		"trailing": append(slices.Clone(rb), 0),
		"drained 2": func() []byte {
			c := slices.Clone(rb)
			c[2+16] = 2
			return c
		}(),
		"negative window": func() []byte {
			c := slices.Clone(rb)
			c[2] = 0x80
			return c
		}(),
	} {
		if _, err := ParseReleaseReply(p); !errors.Is(err, ErrProtocol) {
			t.Errorf("release reply %s: %v, want ErrProtocol", what, err)
		}
	}
}

// recTarget is a SnapshotTarget that records its calls. hold, when set,
// runs in Hold.
type recTarget struct {
	mu      sync.Mutex
	calls   []string
	budgets []time.Duration // the deadline left in each call's ctx at its start
	hold    func(ctx context.Context) error
	holds   []VolumeHold
	relErr  error
	drained bool
}

func (r *recTarget) record(ctx context.Context, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, what)
	dl, ok := ctx.Deadline()
	if !ok {
		r.budgets = append(r.budgets, -1)
		return
	}
	r.budgets = append(r.budgets, time.Until(dl))
}

func (r *recTarget) Hold(ctx context.Context, vols []string, next uint64, timeout time.Duration) error {
	r.record(ctx, "hold "+strings.Join(vols, ",")+" "+time.Duration(next).String()+" "+timeout.String())
	r.mu.Lock()
	hold := r.hold
	r.mu.Unlock()
	if hold != nil {
		return hold(ctx)
	}
	return nil
}

func (r *recTarget) Release(ctx context.Context, vols []string, next uint64) ([]VolumeHold, error) {
	r.record(ctx, "release "+strings.Join(vols, ","))
	return r.holds, r.relErr
}

func (r *recTarget) Drained(ctx context.Context, vols []string, epoch uint64) (bool, error) {
	r.record(ctx, "drained "+strings.Join(vols, ","))
	return r.drained, nil
}

// TestTargetOps: the snapshot calls reach the node's target with their
// arguments and a deadline no later than the caller's; replies, a
// release's report beside its error, and errors come back; a node
// without a target refuses them as unsupported.
func TestTargetOps(t *testing.T) {
	rt := &recTarget{
		holds:   []VolumeHold{{Window: 3 * time.Millisecond, Held: 2, Drained: true, Reason: "released"}, {Window: time.Second, Reason: strings.Repeat("r", 300)}},
		relErr:  errors.New("volume \"b\": hold ended by deadline"),
		drained: true,
	}
	addr, _ := startServer(t, newMemBackend(), ServerOptions{Snapshot: rt})
	c := newClient(t, addr, ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.TargetHold(ctx, []string{"a", "b"}, 5, 4*time.Second); err != nil {
		t.Fatal(err)
	}
	holds, err := c.TargetRelease(ctx, []string{"a", "b"}, 5)
	if err == nil || !strings.Contains(err.Error(), "hold ended by deadline") {
		t.Fatalf("release error %v, want the target's", err)
	}
	if len(holds) != 2 || holds[0] != rt.holds[0] || holds[1].Reason != strings.Repeat("r", ReasonBytesMax) || holds[1].Window != time.Second {
		t.Fatalf("release report %+v", holds)
	}
	if ok, err := c.TargetDrained(ctx, []string{"a"}, 4); err != nil || !ok {
		t.Fatalf("drained: %v %v", ok, err)
	}
	rt.mu.Lock()
	want := []string{"hold a,b 5ns 4s", "release a,b", "drained a"}
	if !slices.Equal(rt.calls, want) {
		t.Errorf("calls %q, want %q", rt.calls, want)
	}
	for i, b := range rt.budgets {
		if b <= 0 || b > 20*time.Second {
			t.Errorf("call %d ran with %v left, want a deadline within the caller's 20 s", i, b)
		}
	}
	rt.mu.Unlock()

	rt.mu.Lock()
	rt.hold = func(context.Context) error { return errors.New("volume \"c\": no such volume at this target") }
	rt.mu.Unlock()
	if err := c.TargetHold(ctx, []string{"c"}, 6, time.Second); err == nil || !strings.Contains(err.Error(), "no such volume") {
		t.Fatalf("hold of an unknown volume: %v", err)
	}
	if err := c.TargetHold(ctx, []string{"c"}, 6, 0); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("hold without a timeout: %v", err)
	}
	if _, err := c.TargetRelease(ctx, nil, 6); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("release of no volumes: %v", err)
	}

	plain, _ := startServer(t, newMemBackend(), ServerOptions{})
	pc := newClient(t, plain, ClientOptions{})
	if err := pc.TargetHold(ctx, []string{"a"}, 2, time.Second); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("hold at a node without a target: %v, want ErrUnsupported", err)
	}
}

// TestStartTargetRelease: releases started back to back are all in
// flight at once and each wait returns its own report, in any order; a
// refused start holds nothing.
func TestStartTargetRelease(t *testing.T) {
	rt := &recTarget{holds: []VolumeHold{{Window: time.Millisecond, Held: 1, Drained: true, Reason: "released"}}}
	addr, _ := startServer(t, newMemBackend(), ServerOptions{Snapshot: rt})
	c := newClient(t, addr, ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var waits []func() ([]VolumeHold, error)
	for _, v := range []string{"a", "b", "c"} {
		w, err := c.StartTargetRelease(ctx, []string{v}, 7)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	for i := len(waits) - 1; i >= 0; i-- {
		holds, err := waits[i]()
		if err != nil || len(holds) != 1 || holds[0] != rt.holds[0] {
			t.Fatalf("release %d: %+v %v", i, holds, err)
		}
	}
	rt.mu.Lock()
	calls := slices.Clone(rt.calls)
	rt.mu.Unlock()
	slices.Sort(calls)
	if want := []string{"release a", "release b", "release c"}; !slices.Equal(calls, want) {
		t.Errorf("calls %q, want %q", calls, want)
	}
	if _, err := c.StartTargetRelease(ctx, nil, 7); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("start of a release of no volumes: %v", err)
	}
	// The client is still whole: a call after them goes through.
	if ok, err := c.TargetDrained(ctx, []string{"a"}, 6); err != nil || ok {
		t.Fatalf("drained after the releases: %v %v", ok, err)
	}
}

// TestTargetBudget: a target call that blocks ends at the caller's
// deadline on the node too, not when the connection ends: the node's
// context carries the budget the request did.
func TestTargetBudget(t *testing.T) {
	ended := make(chan error, 1)
	rt := &recTarget{hold: func(ctx context.Context) error {
		<-ctx.Done()
		ended <- ctx.Err()
		return ctx.Err()
	}}
	addr, _ := startServer(t, newMemBackend(), ServerOptions{Snapshot: rt})
	c := newClient(t, addr, ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	// The node's budget ends at the caller's deadline: whichever the
	// client sees first, its own deadline or the node's reply that it gave
	// up (CodeCanceled), the call ended at the deadline. (Only the first
	// was accepted, and the test failed in 2 of 4 runs under -race.)
	if err := c.TargetHold(ctx, []string{"a"}, 2, time.Second); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrCanceled) {
		t.Fatalf("blocked hold: %v, want the deadline", err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the node's call ended with %v, want its budget's deadline", err)
		}
	case <-time.After(30 * time.Second): // the connection stays open: only the budget ends it
		t.Fatal("the node's call outlived the caller's deadline")
	}
	// The connection is still good.
	rt.mu.Lock()
	rt.hold = nil
	rt.mu.Unlock()
	if err := c.TargetHold(context.Background(), []string{"a"}, 3, time.Second); err != nil {
		t.Fatal(err)
	}
}
