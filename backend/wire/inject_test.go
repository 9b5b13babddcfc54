package wire

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"cairn/backend/store"
)

// TestInjectLatency: a client that injects latency takes every reply no
// earlier than that long after the request left (the reply's arrival plus
// the delay), with 32 calls in flight; results are unchanged; out-of-range
// settings are refused.
func TestInjectLatency(t *testing.T) {
	const d = 20 * time.Millisecond
	addr, _ := startServer(t, openStore(t), ServerOptions{InlineWrites: true})
	c := newClient(t, addr, ClientOptions{InjectLatency: d})
	ctx := context.Background()
	const calls = 32
	var wg sync.WaitGroup
	errs := make(chan string, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			data := block(byte(i+1), 1)
			if err := c.Write(ctx, 5, uint64(i), data, store.Stamp{Epoch: 1, Seq: uint64(i + 1)}, false); err != nil {
				errs <- err.Error()
				return
			}
			if el := time.Since(start); el < d {
				errs <- "write taken " + el.String() + " after it started, before the injected " + d.String()
				return
			}
			p := make([]byte, BlockSize)
			if err := c.Read(ctx, 5, uint64(i), p, 1); err != nil {
				errs <- err.Error()
				return
			}
			if !bytes.Equal(p, data) {
				errs <- "read back differs"
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	for _, bad := range []time.Duration{-time.Millisecond, 2 * time.Second} {
		if _, err := NewClient(addr, ClientOptions{InjectLatency: bad}); err == nil {
			t.Fatalf("NewClient with InjectLatency %v succeeded", bad)
		}
	}
}
