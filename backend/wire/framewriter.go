package wire

import (
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Frame writing. Many goroutines write frames to one connection (callers
// their requests, workers their replies). A frameWriter copies each frame
// into a buffer under a short lock; the first writer that finds nobody
// writing to the socket becomes the flusher: it writes the buffer out
// outside the lock and goes on while other writers refill it, so a frame
// that arrives during a socket write joins the next one and its writer
// goes on at once, neither blocked behind that syscall nor making one of
// its own.
//
// Frames rarely meet by chance: a 4 KiB socket write on loopback takes
// ~15 µs, and callers come one at a time, woken by replies or by the
// store. So a writer that becomes the flusher of a small frame first
// yields the processor once (runtime.Gosched) with flushing set: callers
// already runnable — workers woken by the same batch of completions,
// requests the NBD reader just handed out — run and queue their frames
// behind it, and one socket write carries them all. With nothing else
// runnable the yield returns at once. Measured in
// BenchmarkReplicatedWrite4K (R=3, qd32, 1 ms per store operation): socket
// writes per replicated write from 4.0 to 1.15, CPU per write -27%.
// A frame with big data does not yield: its data must follow its header
// directly, so nothing may be queued between them. It goes out in one
// vectored write (writev on TCP, through net.Buffers) of the buffer and
// the data: one syscall, and on TCP_NODELAY sockets no segment that holds
// the header alone. A connection that cannot write vectors (TLS) gets the
// two writes one after the other.
const (
	// inlineBytesMax: data up to this size is copied into the buffer;
	// larger data (a 1 MiB write or read reply) is written from the
	// caller's slice by the caller, once the socket is free.
	inlineBytesMax = 64 << 10
	// keepBytesMax bounds the buffers kept for reuse.
	keepBytesMax = 1 << 20
)

type frameWriter struct {
	nc      net.Conn
	timeout time.Duration // a socket write must finish within it

	mu       sync.Mutex
	idle     sync.Cond   // signalled when flushing ends
	buf      []byte      // frames not yet written, in order; under mu
	spare    []byte      // the last written buffer, for reuse; under mu
	flushing bool        // a writer is writing to the socket; under mu
	corks    int         // callers holding frames back (cork); under mu
	busy     atomic.Bool // flushing or corked, for a look without mu (Client.conn)
	err      error       // the first write error: sticky; under mu

	dl deadline // the flusher's

	// vec is the flusher's vectored write of the buffer and big data;
	// vecArr backs it, so that writing it allocates nothing.
	vec    net.Buffers
	vecArr [2][]byte

	frames, writes uint64 // under mu; for tests
}

func (w *frameWriter) init(nc net.Conn, timeout time.Duration) {
	w.nc, w.timeout = nc, timeout
	w.idle.L = &w.mu
	w.dl = deadline{write: true}
}

// write sends one frame: hdr, then fixed, then data. It returns once the
// frame is written or queued behind the flusher's current write (data is
// then copied, so the caller may reuse every slice at once), or with the
// connection's first write error.
func (w *frameWriter) write(hdr, fixed, data []byte) error {
	w.mu.Lock()
	big := len(data) > inlineBytesMax
	for big && w.flushing && w.err == nil {
		w.idle.Wait() // bounded: the flusher's writes have a deadline
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	w.frames++
	w.buf = append(w.buf, hdr...)
	w.buf = append(w.buf, fixed...)
	if !big {
		w.buf = append(w.buf, data...)
		data = nil
	}
	if w.flushing || w.corks > 0 && data == nil {
		w.mu.Unlock()
		return nil
	}
	w.flushing = true
	w.busy.Store(true)
	if !big {
		// Let runnable writers queue behind this frame (see above).
		w.mu.Unlock()
		runtime.Gosched()
		w.mu.Lock()
	}
	err := w.flush(data)
	w.flushing = false
	w.busy.Store(w.corks > 0)
	w.idle.Broadcast()
	w.mu.Unlock()
	return err
}

// Corking. A caller that sends several frames in a row (Client.StartWrites:
// a batch of writes the NBD reader found together) corks the writer, so
// that they go out in one socket write when it uncorks instead of the
// first alone (its writer becomes the flusher and writes it while the
// caller builds the next). While corked, small frames of any writer are
// queued and their writers return at once; a big frame still goes out at
// once, taking the queue with it. A corked caller that must wait for
// something the queued frames' replies would free (a slot) pushes first.

// cork holds small frames back until an uncork (or a push).
func (w *frameWriter) cork() {
	w.mu.Lock()
	w.corks++
	w.busy.Store(true)
	w.mu.Unlock()
}

// uncork ends a cork and writes what is queued (the frames of the batch
// that ends, and any queued with them, even while another batch still
// corks), unless a flusher is writing (it writes the queue after its own).
func (w *frameWriter) uncork() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.corks--
	return w.push()
}

// push writes what is queued unless a flusher is already writing. Caller
// holds mu.
func (w *frameWriter) push() error {
	if w.flushing {
		return nil
	}
	var err error
	if len(w.buf) > 0 && w.err == nil {
		w.flushing = true
		w.busy.Store(true)
		err = w.flush(nil)
		w.flushing = false
		w.idle.Broadcast()
	}
	w.busy.Store(w.corks > 0)
	return err
}

// pushNow is push for a caller that does not hold mu.
func (w *frameWriter) pushNow() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.push()
}

// flush writes the buffer, then big, then whatever was queued meanwhile,
// until nothing is left. Caller holds mu and set flushing; flush drops mu
// around each socket write.
func (w *frameWriter) flush(big []byte) error {
	for len(w.buf) > 0 {
		b := w.buf
		w.buf = w.spare[:0]
		w.writes++
		w.mu.Unlock()
		w.dl.arm(w.nc, w.timeout)
		var err error
		if big != nil {
			w.vecArr = [2][]byte{b, big}
			w.vec = w.vecArr[:]
			_, err = w.vec.WriteTo(w.nc)
			w.vecArr = [2][]byte{} // keep neither slice past the write, even a failed one
		} else {
			_, err = w.nc.Write(b)
		}
		big = nil
		w.mu.Lock()
		if cap(b) <= keepBytesMax {
			w.spare = b[:0]
		}
		if err != nil {
			w.err = err
			w.buf = nil
			return err
		}
	}
	return nil
}

// stats returns the frames written and the socket writes they took.
func (w *frameWriter) stats() (frames, writes uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.frames, w.writes
}
