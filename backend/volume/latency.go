package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"cairn/backend/store"
)

// Latency wraps a Node so that every operation first waits D: a storage
// node that is farther away or slower than the local store. Benchmarks use
// it to show how well a front end pipelines (at queue depth 32 and 1 ms per
// operation the limit is 32k IOPS); it has no place in production.
//
// The wait is event-driven, like a reply from a remote node, not a Go
// timer: on Linux the runtime's timers wake from epoll_wait, whose timeout
// has millisecond resolution, so time.Sleep(1ms) under network load sleeps
// 1.5 ms on average (measured: 1534 µs over 220k sleeps below an iSCSI
// load at queue depth 32). One delay line per Latency releases waiters from
// a timerfd that the netpoller watches (see DelayLine).
type Latency struct {
	node Node
	line *DelayLine

	waits, waited atomic.Int64 // count and total nanoseconds waited
}

var (
	_ Node         = (*Latency)(nil)
	_ SummedWriter = (*Latency)(nil)
	_ BatchWriter  = (*Latency)(nil)
)

// ErrLatencyClosed is returned by a Latency's operations after Close.
var ErrLatencyClosed = errors.New("volume: latency injector closed")

// latencyQueueMax bounds the waiters of one delay line; more wait for room.
const latencyQueueMax = 4096

// NewLatency returns n delayed by d (> 0). Close stops its goroutine.
func NewLatency(n Node, d time.Duration) (*Latency, error) {
	if d <= 0 {
		return nil, fmt.Errorf("volume: latency %v: must be positive", d)
	}
	line, err := NewDelayLine(d)
	if err != nil {
		return nil, fmt.Errorf("volume: latency: %w", err)
	}
	return &Latency{node: n, line: line}, nil
}

// Close stops the delay line; waiting and later operations fail with
// ErrLatencyClosed. It does not close the wrapped node.
func (l *Latency) Close() error { return l.line.Close() }

// Waited returns the operations delayed so far and their mean delay, as
// measured around the wait.
func (l *Latency) Waited() (n int64, mean time.Duration) {
	n = l.waits.Load()
	if n == 0 {
		return 0, 0
	}
	return n, time.Duration(l.waited.Load() / n)
}

func (l *Latency) wait() error {
	t0 := time.Now()
	if !l.line.Wait(t0) {
		return ErrLatencyClosed
	}
	l.waited.Add(int64(time.Since(t0)))
	l.waits.Add(1)
	return nil
}

// Write implements Node.
func (l *Latency) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	if err := l.wait(); err != nil {
		return err
	}
	return l.node.Write(ctx, vol, block, data, st, sync)
}

// WriteSummed implements SummedWriter, passing the CRCs on (WriteSummed).
func (l *Latency) WriteSummed(ctx context.Context, vol, block uint64, data []byte, crcs []uint32, st store.Stamp, sync bool) error {
	if err := l.wait(); err != nil {
		return err
	}
	return WriteSummed(ctx, l.node, vol, block, data, crcs, st, sync)
}

// WriteBatch implements BatchWriter: the batch waits once, as writes that
// travel together do, then goes to the node together if it takes batches,
// else one write after another.
func (l *Latency) WriteBatch(ctx context.Context, vol uint64, ws []store.BatchWrite) {
	if err := l.wait(); err != nil {
		for i := range ws {
			ws[i].Err = err
		}
		return
	}
	if bn, ok := l.node.(BatchWriter); ok {
		bn.WriteBatch(ctx, vol, ws)
		return
	}
	WriteEach(ctx, l.node, vol, ws)
}

// Read implements Node.
func (l *Latency) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error {
	if err := l.wait(); err != nil {
		return err
	}
	return l.node.Read(ctx, vol, block, p, epoch)
}

// Zero implements Node.
func (l *Latency) Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error {
	if err := l.wait(); err != nil {
		return err
	}
	return l.node.Zero(ctx, vol, block, n, st, sync)
}

// Extents implements Node.
func (l *Latency) Extents(ctx context.Context, vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) error {
	if err := l.wait(); err != nil {
		return err
	}
	return l.node.Extents(ctx, vol, block, n, epoch, fn)
}

// Sync implements Node.
func (l *Latency) Sync(ctx context.Context) error {
	if err := l.wait(); err != nil {
		return err
	}
	return l.node.Sync(ctx)
}

// DelayLine releases each waiter d after a time it names (its arrival,
// for Latency; the arrival of a reply, for a wire client that injects
// latency per node RPC). One goroutine keeps the waiters, sleeps on a
// wake source until the earliest deadline and releases every waiter that
// is due. Waiters name times close to their arrival, so the queue is
// nearly in deadline order; every wake releases all that are due wherever
// they are queued, and one that arrives with a deadline earlier than the
// one slept towards is released late by at most the difference (the skew
// between the times its waiters named). It is for benchmarks.
type DelayLine struct {
	d    time.Duration
	in   chan *waiter
	stop chan struct{}
	done chan struct{}
	once sync.Once
	wake waker

	arrived atomic.Int64
}

type waiter struct {
	at time.Time
	ch chan struct{} // buffered 1
}

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan struct{}, 1)} }}

// waker sleeps until a point in time with sub-millisecond precision.
type waker interface {
	sleepUntil(t time.Time) error
	close() error
}

// NewDelayLine returns a line that delays by d (> 0); Close stops its
// goroutine.
func NewDelayLine(d time.Duration) (*DelayLine, error) {
	if d <= 0 {
		return nil, fmt.Errorf("volume: delay %v: must be positive", d)
	}
	w, err := newWaker()
	if err != nil {
		return nil, err
	}
	dl := &DelayLine{d: d, in: make(chan *waiter, latencyQueueMax), stop: make(chan struct{}), done: make(chan struct{}), wake: w}
	go dl.run()
	return dl, nil
}

// Wait blocks until d after t0; false if the line was closed.
func (dl *DelayLine) Wait(t0 time.Time) bool {
	at := t0.Add(dl.d)
	if !at.After(time.Now()) {
		select {
		case <-dl.stop:
			return false
		default:
			return true // already due: no hand-off to the line
		}
	}
	w := waiterPool.Get().(*waiter)
	w.at = at
	select {
	case dl.in <- w:
		dl.arrived.Add(1)
	case <-dl.stop:
		waiterPool.Put(w)
		return false
	}
	select {
	case <-w.ch:
		waiterPool.Put(w)
		return true
	case <-dl.stop:
		return false // w may still be released by run: not pooled
	}
}

// queued reports the waiters handed to the line (tests).
func (dl *DelayLine) queued() int64 { return dl.arrived.Load() }

func (dl *DelayLine) run() {
	defer close(dl.done)
	q := make([]*waiter, 0, latencyQueueMax)
	for {
		if len(q) == 0 {
			select {
			case w := <-dl.in:
				q = append(q, w)
			case <-dl.stop:
				return
			}
		}
	drain:
		for len(q) < cap(q) {
			select {
			case w := <-dl.in:
				q = append(q, w)
			default:
				break drain
			}
		}
		now := time.Now()
		k := 0 // waiters kept
		next := q[0].at
		for _, w := range q {
			if !w.at.After(now) {
				w.ch <- struct{}{}
				continue
			}
			if k == 0 || w.at.Before(next) {
				next = w.at
			}
			q[k] = w
			k++
		}
		if k < len(q) {
			clear(q[k:])
			q = q[:k]
			continue
		}
		if err := dl.wake.sleepUntil(next); err != nil {
			select {
			case <-dl.stop:
				return
			default:
			}
			// The wake source failed: fall back to the runtime's timer
			// rather than stall the waiters.
			time.Sleep(time.Until(next))
		}
	}
}

// Close stops the line: waiting and later Waits return false.
func (dl *DelayLine) Close() error {
	var err error
	dl.once.Do(func() {
		close(dl.stop)
		err = dl.wake.close()
		<-dl.done
	})
	return err
}
