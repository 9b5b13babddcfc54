package wire

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// waitFlushing waits until a writer of w is in a socket write (past its
// yield: it took the buffer).
func waitFlushing(t *testing.T, w *frameWriter) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; runtime.Gosched() {
		w.mu.Lock()
		f := w.flushing && w.writes > 0
		w.mu.Unlock()
		if f {
			return
		}
		if time.Now().After(deadline) { // a bound on a hang, not a timing assertion
			t.Fatal("no writer started writing")
		}
	}
}

// TestFrameWriterCoalesces: frames written while another write is on the
// socket are queued (their writers return at once) and go out together in
// the next socket write, after it and in order; a frame with data too large
// to copy waits for the socket and is written from its own slice.
func TestFrameWriterCoalesces(t *testing.T) {
	a, b := net.Pipe() // a write blocks until the other end reads it
	defer a.Close()
	defer b.Close()
	var w frameWriter
	w.init(a, time.Minute)

	frame := func(i int, n int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, n) }
	var want bytes.Buffer
	first := make(chan error, 1)
	go func() { first <- w.write(frame(0, 8), nil, frame(0, 100)) }()
	want.Write(frame(0, 8))
	want.Write(frame(0, 100))
	waitFlushing(t, &w)
	for i := 1; i <= 4; i++ { // queued behind the first: return at once
		if err := w.write(frame(i, 8), frame(i, 3), frame(i, 50)); err != nil {
			t.Fatal(err)
		}
		want.Write(frame(i, 8))
		want.Write(frame(i, 3))
		want.Write(frame(i, 50))
	}
	big := make(chan error, 1)
	go func() { big <- w.write(frame(5, 8), nil, frame(5, inlineBytesMax+1)) }()

	got := make([]byte, want.Len())
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the queued frames arrived out of order or damaged")
	}
	tail := make([]byte, 8+inlineBytesMax+1)
	if _, err := io.ReadFull(b, tail); err != nil {
		t.Fatal(err)
	}
	if err := <-big; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tail, append(frame(5, 8), frame(5, inlineBytesMax+1)...)) {
		t.Fatal("the large frame arrived damaged")
	}
	// The first frame, the four queued behind it, the large one.
	if frames, writes := w.stats(); frames != 6 || writes != 3 {
		t.Fatalf("%d frames in %d socket writes, want 6 in 3", frames, writes)
	}

	// A write error is sticky: later frames fail at once.
	b.Close()
	if err := w.write(frame(6, 8), nil, nil); err == nil {
		t.Fatal("write to a closed pipe succeeded")
	}
	if err := w.write(frame(7, 8), nil, nil); err == nil {
		t.Fatal("write after a failed write succeeded")
	}
}

// countConn is a net.Conn whose writes complete at once; it counts them
// and keeps what was written.
type countConn struct {
	net.Conn // nil: only Write and SetWriteDeadline are called
	writes   int
	got      bytes.Buffer
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes++
	return c.got.Write(p)
}

func (c *countConn) SetWriteDeadline(time.Time) error { return nil }

// TestFrameWriterYields: small frames from writers that are runnable when
// one of them starts flushing share its socket write, even on a socket
// whose writes never block (so that, without the flusher's yield, each
// would make its own). One processor makes who runs when depend only on
// the scheduler: the flusher's yield lets the others run.
func TestFrameWriterYields(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var c countConn
	var w frameWriter
	w.init(&c, time.Minute)
	const writers = 8
	errs := make(chan error, writers)
	for i := range writers {
		go func() { errs <- w.write(bytes.Repeat([]byte{byte('a' + i)}, 8), nil, []byte{byte(i)}) }()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if c.got.Len() != writers*9 {
		t.Fatalf("%d bytes written, want %d", c.got.Len(), writers*9)
	}
	for off := 0; off < c.got.Len(); off += 9 { // every frame whole
		f := c.got.Bytes()[off : off+9]
		if !bytes.Equal(f[:8], bytes.Repeat([]byte{'a' + f[8]}, 8)) {
			t.Fatalf("frame at %d damaged: %q", off, f)
		}
	}
	// Without the yield: one socket write per frame.
	if c.writes >= writers/2 {
		t.Fatalf("%d frames in %d socket writes, want them to share writes", writers, c.writes)
	}
}

// TestFrameWriterFramesWhole: writers of small frames (which yield before
// flushing) and of big ones (written from their own slice) at once over
// a real socket; every frame arrives whole: its data right behind its
// header, never split by another frame.
func TestFrameWriterFramesWhole(t *testing.T) {
	a, b := tcpPair(t)
	var w frameWriter
	w.init(a, time.Minute)

	const writers, each = 8, 40
	size := func(g, i int) int { // every fifth frame too big to copy
		if i%5 == 4 {
			return inlineBytesMax + 1 + g*7 + i
		}
		return 1 + (g*131+i*17)%4000
	}
	errs := make(chan error, writers)
	for g := range writers {
		go func() {
			for i := range each {
				// header: writer, frame, data length; data: the writer's byte.
				var hdr [12]byte
				be.PutUint32(hdr[0:], uint32(g))
				be.PutUint32(hdr[4:], uint32(i))
				be.PutUint32(hdr[8:], uint32(size(g, i)))
				if err := w.write(hdr[:], nil, bytes.Repeat([]byte{byte(g)}, size(g, i))); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	next := make([]int, writers)
	var hdr [12]byte
	for range writers * each {
		if _, err := io.ReadFull(b, hdr[:]); err != nil {
			t.Fatal(err)
		}
		g, i, n := int(be.Uint32(hdr[0:])), int(be.Uint32(hdr[4:])), int(be.Uint32(hdr[8:]))
		if g >= writers || i != next[g] || n != size(g, i) {
			t.Fatalf("frame header writer %d frame %d length %d: want frame %d of that writer, of its length", g, i, n, next[min(g, writers-1)])
		}
		next[g]++
		data := make([]byte, n)
		if _, err := io.ReadFull(b, data); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, bytes.Repeat([]byte{byte(g)}, n)) {
			t.Fatalf("writer %d frame %d: data interleaved with another frame's", g, i)
		}
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// tcpPair returns the two ends of a loopback TCP connection, closed at
// cleanup.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

// threadWrites returns the write system calls (write, writev) this OS
// thread made so far, from its I/O accounting; ok is false where there is
// none.
func threadWrites(t *testing.T) (n uint64, ok bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/io")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, found := strings.CutPrefix(line, "syscw: "); found {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("/proc/thread-self/io: %q: %v", line, err)
			}
			return n, true
		}
	}
	t.Fatalf("/proc/thread-self/io has no syscw: %q", b)
	return 0, false
}

// TestFrameWriterBigFrameOneWrite: a frame whose data is too big to copy
// goes out on TCP in one write system call (a writev of the buffer and
// the data), not one for the header and one for the data, and arrives
// whole. The calls are counted on this goroutine's own OS thread, locked
// to it; the socket's send buffer takes a whole frame, so no write is
// partial, and the deadline is armed by the first frame only.
func TestFrameWriterBigFrameOneWrite(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if _, ok := threadWrites(t); !ok {
		t.Skip("no per-thread I/O accounting (/proc/thread-self/io)")
	}
	a, b := tcpPair(t)
	if err := a.(*net.TCPConn).SetWriteBuffer(4 << 20); err != nil {
		t.Fatal(err)
	}
	var w frameWriter
	w.init(a, time.Hour)
	hdr := bytes.Repeat([]byte{'h'}, HeaderSize)
	fixed := bytes.Repeat([]byte{'f'}, WriteRequestSize)
	data := bytes.Repeat([]byte{'d'}, inlineBytesMax+BlockSize)
	want := append(append(append([]byte(nil), hdr...), fixed...), data...)
	const frames = 4
	got := make(chan []byte, frames)
	go func() {
		for range frames {
			f := make([]byte, len(want))
			if _, err := io.ReadFull(b, f); err != nil {
				f = nil
			}
			got <- f
		}
	}()
	for i := range frames {
		before, _ := threadWrites(t)
		if err := w.write(hdr, fixed, data); err != nil {
			t.Fatal(err)
		}
		after, _ := threadWrites(t)
		if i > 0 && after-before != 1 {
			t.Fatalf("frame %d of %d bytes took %d write system calls, want 1", i, len(want), after-before)
		}
		if f := <-got; !bytes.Equal(f, want) {
			t.Fatalf("frame %d arrived damaged or not at all", i)
		}
	}
}

// TestConnChoice: over several connections, a small request goes to one
// whose writer is on the socket (it joins that write), a big one to one
// whose writer is not (it would wait for it); with none busy, requests
// take the connections in turn.
func TestConnChoice(t *testing.T) {
	addr, _ := startServer(t, newMemBackend(), ServerOptions{})
	c := newClient(t, addr, ClientOptions{Conns: 2})
	ctx := context.Background()
	for range 4 { // dials both
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a, b := c.conns[0].Load(), c.conns[1].Load()
	if a == nil || b == nil {
		t.Fatal("two calls round robin did not dial both connections")
	}
	pick := func(big bool) *cconn {
		cc, err := c.conn(ctx, false, time.Now(), big)
		if err != nil {
			t.Fatal(err)
		}
		return cc
	}
	b.w.busy.Store(true) // as while its flusher writes
	for i := range 6 {
		if cc := pick(false); cc != b {
			t.Fatalf("small request %d: not on the connection being written", i)
		}
		if cc := pick(true); cc != a {
			t.Fatalf("big request %d: on the connection being written", i)
		}
	}
	b.w.busy.Store(false)
	seen := map[*cconn]int{}
	for range 6 {
		seen[pick(false)]++
	}
	if seen[a] != 3 || seen[b] != 3 {
		t.Fatalf("idle connections taken %d and %d times of 6, want in turn", seen[a], seen[b])
	}
}
