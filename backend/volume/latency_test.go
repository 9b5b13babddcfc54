package volume

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestLatencyWaitsAtLeastD: every operation is released no earlier than D
// after it arrived, also when more operations wait than the line queues.
func TestLatencyWaitsAtLeastD(t *testing.T) {
	const d = 2 * time.Millisecond
	lat, err := NewLatency(nopNode{}, d)
	if err != nil {
		t.Fatal(err)
	}
	defer lat.Close()
	const workers, each = latencyQueueMax + 100, 3
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			for range each {
				t0 := time.Now()
				if err := lat.Read(ctx, 1, 0, p, 1); err != nil {
					errs <- err
					return
				}
				if el := time.Since(t0); el < d {
					errs <- errors.New("released after " + el.String() + ", before " + d.String())
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n, mean := lat.Waited(); n != workers*each || mean < d {
		t.Fatalf("Waited() = %d, %v; want %d, >= %v", n, mean, workers*each, d)
	}
}

// TestLatencyClose: Close releases waiting operations with
// ErrLatencyClosed, and later operations fail the same way.
func TestLatencyClose(t *testing.T) {
	lat, err := NewLatency(nopNode{}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- lat.Sync(ctx) }()
	for lat.line.queued() == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := lat.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; !errors.Is(err, ErrLatencyClosed) {
		t.Fatalf("waiting Sync after Close: %v, want ErrLatencyClosed", err)
	}
	if err := lat.Sync(ctx); !errors.Is(err, ErrLatencyClosed) {
		t.Fatalf("Sync after Close: %v, want ErrLatencyClosed", err)
	}
	if _, err := NewLatency(nopNode{}, 0); err == nil {
		t.Fatal("NewLatency with 0 succeeded")
	}
}

// TestDelayLineDeadlines: waiters that name times out of order (a wire
// client names each reply's arrival) are each released no earlier than d
// after the time they named, none is left behind one due later, and a
// time already d in the past is released at once without the line.
func TestDelayLineDeadlines(t *testing.T) {
	const d = 20 * time.Millisecond
	dl, err := NewDelayLine(d)
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	base := time.Now()
	// Named times from base-d/2 to base+d/2 in a shuffled order; each
	// waiter arrives at about base.
	offsets := []time.Duration{d / 2, -d / 2, 0, d / 4, -d / 4, d / 3, -d / 3}
	var wg sync.WaitGroup
	errs := make(chan error, len(offsets))
	for _, off := range offsets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := base.Add(off)
			if !dl.Wait(t0) {
				errs <- errors.New("Wait returned false on an open line")
				return
			}
			if el := time.Since(t0); el < d {
				errs <- errors.New("released " + el.String() + " after the named time, before " + d.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	before := dl.queued()
	if !dl.Wait(time.Now().Add(-2 * d)) {
		t.Fatal("Wait of a past time returned false on an open line")
	}
	if dl.queued() != before {
		t.Fatal("a wait already due went through the line")
	}
	if err := dl.Close(); err != nil {
		t.Fatal(err)
	}
	if dl.Wait(time.Now().Add(-2 * d)) {
		t.Fatal("Wait after Close returned true")
	}
	if _, err := NewDelayLine(0); err == nil {
		t.Fatal("NewDelayLine(0) succeeded")
	}
}
