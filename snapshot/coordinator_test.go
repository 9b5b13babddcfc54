package snapshot

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"cairn/backend/volume"
)

func TestReasonReleasedIsTheVolumes(t *testing.T) {
	if reasonReleased != volume.HoldReleased {
		t.Fatalf("reasonReleased %q, volume.HoldReleased %q", reasonReleased, volume.HoldReleased)
	}
}

// fakeTarget records calls and answers as told.
type fakeTarget struct {
	mu              sync.Mutex
	holds, releases int
	holdErr         error
	reason          string // of the reported holds; "" = released
	drained         bool
	releaseErr      error
}

func (f *fakeTarget) Hold(ctx context.Context, vols []string, next uint64, timeout time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holds++
	return f.holdErr
}

func (f *fakeTarget) Release(_ context.Context, vols []string, _ uint64) (HoldReport, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases++
	reason := f.reason
	if reason == "" {
		reason = reasonReleased
	}
	var rep HoldReport
	for _, v := range vols {
		rep.Volumes = append(rep.Volumes, VolumeHold{Volume: v, Reason: reason, Drained: f.drained, Window: time.Millisecond})
	}
	return rep, f.releaseErr
}

func (f *fakeTarget) Drained(context.Context, []string, uint64) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.drained, nil
}

// TestCoordinatorSteps: each way a step can fail releases every target
// that held, fails the record with the step's reason and returns
// ErrFailed; a clean run seals.
func TestCoordinatorSteps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		a, b   *fakeTarget
		reason string
	}{
		{name: "sealed at release", a: &fakeTarget{drained: true}, b: &fakeTarget{drained: true}},
		{name: "hold error", a: &fakeTarget{drained: true}, b: &fakeTarget{holdErr: errors.New("boom")}, reason: ReasonHold},
		{name: "hold ended early", a: &fakeTarget{drained: true}, b: &fakeTarget{reason: volume.HoldDeadline, drained: true}, reason: ReasonRelease},
		{name: "release error", a: &fakeTarget{drained: true}, b: &fakeTarget{releaseErr: errors.New("boom")}, reason: ReasonRelease},
		{name: "never drains", a: &fakeTarget{drained: true}, b: &fakeTarget{}, reason: ReasonDrain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cat := &memCatalog{epoch: 7, recs: map[uint64]*memRecord{}, vols: []VolumeRef{
				{Name: "x", ID: 1, Target: "a"}, {Name: "y", ID: 2, Target: "b"}, {Name: "z", ID: 3, Target: "b"}}}
			tg := map[string]*fakeTarget{"a": tc.a, "b": tc.b}
			c, err := New(Options{Catalog: cat, StepTimeout: 100 * time.Millisecond, Targets: func(n string) (Target, error) { return tg[n], nil }})
			if err != nil {
				t.Fatal(err)
			}
			res, err := c.Snapshot(context.Background(), "g")
			rec := cat.recs[res.SnapshotID]
			if tc.reason == "" {
				if err != nil || !res.Sealed || rec.state != "sealed" || res.Epoch != 7 {
					t.Fatalf("%v, %+v, record %+v", err, res, rec)
				}
			} else if !errors.Is(err, ErrFailed) || res.Reason != tc.reason || rec.state != "failed" || rec.reason != tc.reason {
				t.Fatalf("%v, reason %q, record %+v; want reason %q", err, res.Reason, rec, tc.reason)
			}
			for n, f := range tg {
				// A Release to a target whose Hold failed is not waited
				// for by Snapshot: it may land just after.
				deadline := time.Now().Add(5 * time.Second)
				f.mu.Lock()
				for f.releases == 0 && time.Now().Before(deadline) {
					f.mu.Unlock()
					time.Sleep(time.Millisecond)
					f.mu.Lock()
				}
				holds, releases := f.holds, f.releases
				f.mu.Unlock()
				if holds != 1 || releases != 1 {
					t.Errorf("target %s: %d holds, %d releases", n, holds, releases)
				}
			}
			if res.Total <= 0 || res.Total < res.Hold+res.Release {
				t.Errorf("durations: %+v", res)
			}
			if len(res.Targets) != 2 || len(res.Targets[1].Volumes) != 2 {
				t.Errorf("targets %+v", res.Targets)
			}
		})
	}
}

// TestCoordinatorRefuses: a failed reserve holds nothing; a second
// snapshot of a group in progress is ErrBusy.
func TestCoordinatorRefuses(t *testing.T) {
	c, err := New(Options{Catalog: &failingCatalog{}, Targets: func(string) (Target, error) { return nil, errors.New("none") }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Snapshot(context.Background(), "g"); !errors.Is(err, ErrReserve) {
		t.Fatalf("reserve failure: %v", err)
	}
	c.mu.busy["g"] = true
	if _, err := c.Snapshot(context.Background(), "g"); !errors.Is(err, ErrBusy) {
		t.Fatalf("busy: %v", err)
	}
}

type failingCatalog struct{ memCatalog }

func (*failingCatalog) Reserve(context.Context, string) (Reservation, error) {
	return Reservation{}, errors.New("no leader")
}

// TestPlanOf: reservations are checked and grouped by target.
func TestPlanOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Reservation
		ok   bool
	}{
		{"ok", Reservation{Epoch: 1, Volumes: []VolumeRef{{Name: "b", Target: "n1"}, {Name: "a", Target: "n1"}, {Name: "c", Target: "n0"}}}, true},
		{"empty", Reservation{Epoch: 1}, false},
		{"epoch 0", Reservation{Volumes: []VolumeRef{{Name: "a", Target: "n"}}}, false},
		{"twice", Reservation{Epoch: 1, Volumes: []VolumeRef{{Name: "a", Target: "n"}, {Name: "a", Target: "m"}}}, false},
		{"no target", Reservation{Epoch: 1, Volumes: []VolumeRef{{Name: "a"}}}, false},
	} {
		p, err := planOf(tc.r)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
		if tc.ok && (len(p.nodes) != 2 || p.nodes[0] != "n0" || p.volumes[1][0] != "a") {
			t.Errorf("%s: %+v", tc.name, p)
		}
	}
}

// TestCutCheckUnit: the checker's verdicts on small hand-made cuts.
func TestCutCheckUnit(t *testing.T) {
	c := Cut{Writers: 2, Slots: 3}
	build := func(seqs [2]uint64, front [2][]uint64) [2][3][]byte {
		var b [2][3][]byte
		for w := range 2 {
			for j := range 3 {
				b[w][j] = make([]byte, cutBlockBytes)
			}
			for s := uint64(1); s <= seqs[w]; s++ {
				f := []uint64{0, 0}
				if front[w] != nil {
					f = front[w]
				}
				CutWrite{Writer: w, Seq: s, Frontier: f}.Encode(b[w][c.Slot(s)])
			}
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		seqs  [2]uint64
		front [2][]uint64
		acked []uint64
		ok    bool
	}{
		{"prefixes", [2]uint64{5, 2}, [2][]uint64{{0, 2}, nil}, []uint64{4, 2}, true},
		{"acked missing", [2]uint64{3, 2}, [2][]uint64{}, []uint64{4, 0}, false},
		{"dependency missing", [2]uint64{5, 2}, [2][]uint64{{0, 3}, nil}, []uint64{0, 0}, false},
	} {
		b := build(tc.seqs, tc.front)
		_, err := c.Check(tc.acked, func(w, j int) []byte { return b[w][j] })
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// A hole: writer 0 holds 1..5 but slot of 4 lost it.
	b := build([2]uint64{5, 0}, [2][]uint64{})
	clear(b[0][c.Slot(4)])
	if _, err := c.Check([]uint64{0, 0}, func(w, j int) []byte { return b[w][j] }); !errors.Is(err, ErrCut) {
		t.Errorf("hole: %v", err)
	}
	// A corrupt block.
	b = build([2]uint64{2, 0}, [2][]uint64{})
	b[0][0][100] ^= 1
	if _, err := c.Check([]uint64{0, 0}, func(w, j int) []byte { return b[w][j] }); !errors.Is(err, ErrCut) {
		t.Errorf("corrupt: %v", err)
	}
}

// orderTarget logs each call's start and end into a shared log, and can
// make its Hold wait on gate (closed by the test) or fail.
type orderTarget struct {
	name    string
	log     *callLog
	gate    chan struct{} // nil: Hold answers at once
	holdErr error
}

type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, s)
}

func (l *callLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...)
}

func (o *orderTarget) Hold(ctx context.Context, _ []string, _ uint64, _ time.Duration) error {
	if o.gate != nil {
		select {
		case <-o.gate:
		case <-ctx.Done():
			o.log.add(o.name + " hold-cancelled")
			return ctx.Err()
		}
	}
	o.log.add(o.name + " hold")
	return o.holdErr
}

func (o *orderTarget) Release(_ context.Context, vols []string, _ uint64) (HoldReport, error) {
	o.log.add(o.name + " release")
	var rep HoldReport
	for _, v := range vols {
		rep.Volumes = append(rep.Volumes, VolumeHold{Volume: v, Reason: reasonReleased, Drained: true})
	}
	return rep, nil
}

func (o *orderTarget) Drained(context.Context, []string, uint64) (bool, error) { return true, nil }

// starterTarget is an orderTarget that is a ReleaseStarter: its release
// is logged when started.
type starterTarget struct{ *orderTarget }

func (s starterTarget) StartRelease(ctx context.Context, vols []string, next uint64) (func() (HoldReport, error), error) {
	rep, err := s.Release(ctx, vols, next)
	return func() (HoldReport, error) { return rep, err }, nil
}

// TestCoordinatorReleasesAfterEverySwitch: the legs of the cut send no
// Release before every target's Hold has answered without error, however
// late the last one; when a Hold fails, every target is released, each
// only once its own Hold returned.
func TestCoordinatorReleasesAfterEverySwitch(t *testing.T) {
	vols := []VolumeRef{{Name: "x", ID: 1, Target: "a"}, {Name: "y", ID: 2, Target: "b"}, {Name: "z", ID: 3, Target: "c"}}
	for _, starters := range []bool{false, true} {
		t.Run(fmt.Sprintf("starters=%v", starters), func(t *testing.T) { testReleaseOrder(t, vols, starters) })
	}
}

func testReleaseOrder(t *testing.T, vols []VolumeRef, starters bool) {
	run := func(t *testing.T, tg map[string]*orderTarget, step time.Duration) (Result, error) {
		cat := &memCatalog{epoch: 3, recs: map[uint64]*memRecord{}, vols: vols}
		// With starters, b and c are ReleaseStarters and a is not: the
		// last leg starts their releases, a's leg its own.
		lookup := func(n string) (Target, error) {
			if starters && n != "a" {
				return starterTarget{tg[n]}, nil
			}
			return tg[n], nil
		}
		c, err := New(Options{Catalog: cat, StepTimeout: step, Targets: lookup})
		if err != nil {
			t.Fatal(err)
		}
		return c.Snapshot(context.Background(), "g")
	}
	// waitCalls waits (bounded) until the log has n calls.
	waitCalls := func(t *testing.T, l *callLog, n int) []string {
		deadline := time.Now().Add(10 * time.Second)
		for len(l.snapshot()) < n && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		calls := l.snapshot()
		if len(calls) != n {
			t.Fatalf("calls %v, want %d", calls, n)
		}
		return calls
	}

	t.Run("slow last hold", func(t *testing.T) {
		l := &callLog{}
		gate := make(chan struct{})
		tg := map[string]*orderTarget{"a": {name: "a", log: l}, "b": {name: "b", log: l, gate: gate}, "c": {name: "c", log: l}}
		done := make(chan struct{})
		var res Result
		var err error
		go func() { defer close(done); res, err = run(t, tg, 10*time.Second) }()
		// a and c switch; b's Hold waits on the gate. Nothing may be
		// released meanwhile.
		calls := waitCalls(t, l, 2)
		for _, c := range calls {
			if c != "a hold" && c != "c hold" {
				t.Fatalf("before b switched: %v", calls)
			}
		}
		time.Sleep(20 * time.Millisecond) // a release sent early would show here
		if calls := l.snapshot(); len(calls) != 2 {
			t.Fatalf("released before b switched: %v", calls)
		}
		close(gate)
		<-done
		if err != nil || !res.Sealed {
			t.Fatalf("%v, %+v", err, res)
		}
		calls = waitCalls(t, l, 6)
		if calls[2] != "b hold" {
			t.Fatalf("calls %v: b's hold is not the third", calls)
		}
	})

	t.Run("failed hold", func(t *testing.T) {
		l := &callLog{}
		gate := make(chan struct{})
		tg := map[string]*orderTarget{"a": {name: "a", log: l, holdErr: errors.New("boom")}, "b": {name: "b", log: l, gate: gate}, "c": {name: "c", log: l}}
		res, err := run(t, tg, 10*time.Second)
		if !errors.Is(err, ErrFailed) || res.Reason != ReasonHold {
			t.Fatalf("%v, %+v", err, res)
		}
		// b's Hold was cancelled with the snapshot; every target is
		// released after its own Hold returned.
		calls := waitCalls(t, l, 6)
		seen := map[string]bool{}
		for _, c := range calls {
			name, what, _ := strings.Cut(c, " ")
			if what == "release" && !seen[name] {
				t.Fatalf("calls %v: %s released before its hold returned", calls, name)
			}
			seen[name] = true
		}
		close(gate)
	})
}
