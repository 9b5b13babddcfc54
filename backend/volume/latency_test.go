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
