package wire

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cairn/backend/store"
)

// faultConn breaks itself after a random number of bytes each way: a cut
// network path in the middle of a frame.
type faultConn struct {
	net.Conn
	budget atomic.Int64 // bytes left before the cut
}

func (f *faultConn) spend(n int) bool {
	if f.budget.Add(-int64(n)) < 0 {
		f.Conn.Close()
		return false
	}
	return true
}

func (f *faultConn) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	if n > 0 && !f.spend(n) {
		// Deliver part of what arrived, then the cut.
		return n / 2, errors.New("fault: connection cut")
	}
	return n, err
}

func (f *faultConn) Write(p []byte) (int, error) {
	if !f.spend(len(p)) {
		half := len(p) / 2
		f.Conn.Write(p[:half])
		return half, errors.New("fault: connection cut")
	}
	return f.Conn.Write(p)
}

// TestFaultyNetwork: connections are cut at random points under concurrent
// load. Every call returns; a failed call is an ErrDisconnected or
// ErrUnavailable; and every block reads as its last acknowledged write or
// as one of the writes after it whose outcome is unknown.
func TestFaultyNetwork(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var rngMu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 3))
	// The store, not memBackend: a write whose outcome was unknown may
	// still land after a later acknowledged one, and only the stamps'
	// ordering (highest seq wins) keeps the later one visible.
	addr, _ := startServer(t, openStore(t), ServerOptions{})
	var cuts atomic.Int64
	c := newClient(t, addr, ClientOptions{
		Conns:            2,
		RedialBackoffMin: time.Millisecond,
		RedialBackoffMax: 5 * time.Millisecond,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			rngMu.Lock()
			budget := 300 + rng.Int64N(200<<10)
			rngMu.Unlock()
			cuts.Add(1)
			f := &faultConn{Conn: nc}
			f.budget.Store(budget)
			return f, nil
		},
	})
	const workers, ops, blocks = 8, 150, 4
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// possible[b]: the values block b may hold (one byte each fills
			// the block); a single writer per block, this worker.
			possible := make([]map[byte]bool, blocks)
			for b := range possible {
				possible[b] = map[byte]bool{0: true}
			}
			p := make([]byte, BlockSize)
			for i := range ops {
				b := i % blocks
				blk := uint64(w*blocks + b)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if i%3 != 2 {
					v := byte(i + 1)
					err := c.Write(ctx, 1, blk, bytes.Repeat([]byte{v}, BlockSize), store.Stamp{Epoch: 1, Seq: uint64(i + 1)}, false)
					switch {
					case err == nil:
						possible[b] = map[byte]bool{v: true}
					case errors.Is(err, ErrDisconnected), errors.Is(err, ErrUnavailable):
						possible[b][v] = true
						failed.Add(1)
					default:
						t.Errorf("seed %d: write: %v", seed, err)
					}
				} else {
					err := c.Read(ctx, 1, blk, p, 1)
					switch {
					case err == nil:
						if !bytes.Equal(p, bytes.Repeat(p[:1], BlockSize)) || !possible[b][p[0]] {
							t.Errorf("seed %d: worker %d block %d reads %d, possible %v", seed, w, blk, p[0], possible[b])
						}
						possible[b] = map[byte]bool{p[0]: true}
					case errors.Is(err, ErrDisconnected), errors.Is(err, ErrUnavailable):
						failed.Add(1)
					default:
						t.Errorf("seed %d: read: %v", seed, err)
					}
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d connections, %d failed calls of %d", cuts.Load(), failed.Load(), workers*ops)
	if cuts.Load() < 3 {
		t.Fatalf("only %d connections: the faults did not bite", cuts.Load())
	}
}
