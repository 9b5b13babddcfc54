package target

import (
	"sync"
	"testing"
	"time"
)

func TestBudgetNil(t *testing.T) {
	var b *Budget = NewBudget(0)
	if b != nil {
		t.Fatal("NewBudget(0) is not unlimited")
	}
	if !b.TryAcquire(1<<40) || !b.Acquire(nil, 1<<40) {
		t.Fatal("nil budget refused")
	}
	b.Release(1 << 40)
	if b.InUse() != 0 || b.Max() != 0 || b.Peak() != 0 || b.Waiting() != 0 {
		t.Fatal("nil budget reports usage")
	}
}

func TestBudget(t *testing.T) {
	b := NewBudget(100)
	if !b.TryAcquire(60) || b.TryAcquire(50) || !b.TryAcquire(40) {
		t.Fatal("TryAcquire does not follow the bound")
	}
	// A waiter is served first: TryAcquire does not jump the queue.
	got := make(chan bool, 1)
	go func() { got <- b.Acquire(nil, 30) }()
	waitUntil(t, func() bool { return b.Waiting() == 1 })
	b.Release(40)
	if !<-got {
		t.Fatal("waiter not granted")
	}
	if b.InUse() != 90 {
		t.Fatalf("in use %d, want 90", b.InUse())
	}
	// An oversized request waits for an empty budget, then takes all of it.
	big := make(chan bool, 1)
	go func() { big <- b.Acquire(nil, 1000) }()
	waitUntil(t, func() bool { return b.Waiting() == 1 })
	if b.TryAcquire(1) {
		t.Fatal("TryAcquire passed a waiter")
	}
	b.Release(60)
	select {
	case <-big:
		t.Fatal("oversized request granted before the budget emptied")
	case <-time.After(10 * time.Millisecond):
	}
	b.Release(30)
	if !<-big || b.InUse() != 100 {
		t.Fatalf("oversized request: in use %d", b.InUse())
	}
	// A cancelled waiter holds nothing and lets the next one through.
	done := make(chan struct{})
	cancelled := make(chan bool, 1)
	go func() { cancelled <- b.Acquire(done, 80) }()
	waitUntil(t, func() bool { return b.Waiting() == 1 })
	small := make(chan bool, 1)
	go func() { small <- b.Acquire(nil, 10) }()
	waitUntil(t, func() bool { return b.Waiting() == 2 })
	b.Release(1000)
	b.TryAcquire(0)
	close(done)
	if ok := <-cancelled; ok {
		b.Release(80)
	}
	if !<-small {
		t.Fatal("small waiter not granted")
	}
	b.Release(10)
	if b.InUse() != 0 || b.Peak() != 100 || b.Max() != 100 {
		t.Fatalf("in use %d peak %d max %d", b.InUse(), b.Peak(), b.Max())
	}
}

// TestBudgetConcurrent: many goroutines, random sizes, the bound holds and
// everything returns.
func TestBudgetConcurrent(t *testing.T) {
	b := NewBudget(1 << 20)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				n := int64((g*7919 + i*104729) % (3 << 19))
				if b.Acquire(nil, n) {
					if u := b.InUse(); u > b.Max() {
						t.Errorf("in use %d > max %d", u, b.Max())
					}
					b.Release(n)
				}
			}
		}()
	}
	wg.Wait()
	if b.InUse() != 0 || b.Peak() > b.Max() {
		t.Fatalf("in use %d, peak %d", b.InUse(), b.Peak())
	}
}

func TestBudgetAcquireAllocs(t *testing.T) {
	b := NewBudget(1 << 20)
	if a := testing.AllocsPerRun(100, func() { b.Acquire(nil, 4096); b.Release(4096) }); a != 0 {
		t.Fatalf("%v allocations per uncontended acquire", a)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
	}
}

func TestBudgetHighWater(t *testing.T) {
	b := NewBudget(100)
	if h := b.HighWater(); h != 0 {
		t.Fatalf("fresh budget high water %d", h)
	}
	b.TryAcquire(70)
	b.Release(70)
	b.TryAcquire(20)
	if h := b.HighWater(); h != 70 {
		t.Fatalf("high water %d, want 70", h)
	}
	// The next interval starts at what is in use now.
	if h := b.HighWater(); h != 20 {
		t.Fatalf("high water %d after reset, want the 20 in use", h)
	}
	b.Release(20)
	if h := b.HighWater(); h != 20 {
		t.Fatalf("high water %d, want 20", h)
	}
	if h := b.HighWater(); h != 0 {
		t.Fatalf("idle high water %d", h)
	}
	if (*Budget)(nil).HighWater() != 0 {
		t.Fatal("nil budget has a high water")
	}
}

// BenchmarkBudget is an uncontended TryAcquire and Release of a 4 KiB
// request: the budget's cost on a front end's hot path.
func BenchmarkBudget(b *testing.B) {
	bg := NewBudget(1 << 30)
	for range b.N {
		if !bg.TryAcquire(4096) {
			b.Fatal("refused")
		}
		bg.Release(4096)
	}
}
