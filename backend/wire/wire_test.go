package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/target"
)

func block(fill byte, n int) []byte { return bytes.Repeat([]byte{fill}, n*BlockSize) }

// Stamp0 is a stamp for tests that do not care.
var Stamp0 = store.Stamp{Epoch: 1, Seq: 1}

type extent struct {
	start, count uint64
	alloc        bool
}

func collectExtents(t *testing.T, c *Client, vol, blk, n, epoch uint64) []extent {
	t.Helper()
	var got []extent
	if err := c.Extents(context.Background(), vol, blk, n, epoch, func(s, cnt uint64, a bool) bool {
		got = append(got, extent{s, cnt, a})
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestRoundTrip runs every op against a real store behind a server.
func TestRoundTrip(t *testing.T) {
	addr, _ := startServer(t, openStore(t), ServerOptions{Name: "node-a"})
	c := newClient(t, addr, ClientOptions{})
	ctx := context.Background()

	h, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "node-a" || h.RequestBytesMax != RequestBytesMax || h.InFlightMax != inFlightMaxDefault {
		t.Fatalf("hello %+v", h)
	}

	if err := c.Write(ctx, 1, 10, block(0xaa, 4), store.Stamp{Epoch: 1, Seq: 1}, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, 1, 20, block(0xbb, 1), store.Stamp{Epoch: 1, Seq: 2}, true); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 16*BlockSize)
	if err := c.Read(ctx, 1, 8, p, 1); err != nil {
		t.Fatal(err)
	}
	want := block(0, 16)
	copy(want[2*BlockSize:], block(0xaa, 4))
	copy(want[12*BlockSize:], block(0xbb, 1))
	if !bytes.Equal(p, want) {
		t.Fatal("read back differs from what was written")
	}
	// A read as of an epoch before the write sees nothing.
	if err := c.Read(ctx, 1, 10, p[:BlockSize], 0); err != nil || !bytes.Equal(p[:BlockSize], block(0, 1)) {
		t.Fatalf("read at epoch 0: %v", err)
	}

	if got, want := collectExtents(t, c, 1, 0, 32, 1), []extent{{0, 10, false}, {10, 4, true}, {14, 6, false}, {20, 1, true}, {21, 11, false}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("extents %v, want %v", got, want)
	}

	if err := c.Zero(ctx, 1, 11, 2, store.Stamp{Epoch: 1, Seq: 3}, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Read(ctx, 1, 10, p[:4*BlockSize], 1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p[:4*BlockSize], append(append(block(0xaa, 1), block(0, 2)...), block(0xaa, 1)...)) {
		t.Fatal("zeroed blocks do not read as zeros")
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	// Errors cross the wire as the store's sentinels.
	errCases := []struct {
		name string
		call func() error
	}{
		{"read past BlocksMax", func() error { return c.Read(ctx, 1, store.BlocksMax, p[:BlockSize], 1) }},
		{"read of nothing", func() error { return c.Read(ctx, 1, 0, nil, 1) }},
		{"write past BlocksMax", func() error {
			return c.Write(ctx, 1, store.BlocksMax-1, block(1, 2), store.Stamp{Epoch: 1, Seq: 9}, false)
		}},
		{"zero of nothing", func() error { return c.Zero(ctx, 1, 0, 0, store.Stamp{Epoch: 1, Seq: 9}, false) }},
		{"extents past BlocksMax", func() error {
			return c.Extents(ctx, 1, store.BlocksMax, 1, 1, func(uint64, uint64, bool) bool { return true })
		}},
		{"unaligned read (client side)", func() error { return c.Read(ctx, 1, 0, p[:100], 1) }},
	}
	for _, tc := range errCases {
		if err := tc.call(); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: %v, want store.ErrInvalid", tc.name, err)
		}
	}
	// The connection survived the errors.
	if err := c.Read(ctx, 1, 10, p[:BlockSize], 1); err != nil {
		t.Fatal(err)
	}
}

// TestClosedStore: a node whose store is closed answers ErrClosed, which
// the volume layer classifies as target.ErrClosed.
func TestClosedStore(t *testing.T) {
	st := openStore(t)
	addr, _ := startServer(t, st, ServerOptions{})
	c := newClient(t, addr, ClientOptions{})
	st.Close()
	err := c.Read(context.Background(), 1, 0, make([]byte, BlockSize), 1)
	if !errors.Is(err, store.ErrClosed) {
		t.Fatalf("%v, want store.ErrClosed", err)
	}
}

// TestExtentsContinuation: more runs than one reply holds are fetched in
// several calls, and fn returning false stops them.
func TestExtentsContinuation(t *testing.T) {
	const runs = 2*ExtentRunsMax + 100
	b := &runsBackend{memBackend: *newMemBackend(), runs: runs}
	addr, _ := startServer(t, b, ServerOptions{})
	c := newClient(t, addr, ClientOptions{})
	got := collectExtents(t, c, 1, 0, runs+50, 1)
	if len(got) != runs+1 {
		t.Fatalf("%d runs, want %d", len(got), runs+1)
	}
	for i, e := range got[:runs] {
		if e != (extent{uint64(i), 1, i%2 == 0}) {
			t.Fatalf("run %d: %+v", i, e)
		}
	}
	if last := got[runs]; last != (extent{runs, 50, false}) {
		t.Fatalf("last run %+v", last)
	}
	if calls := b.calls.Load(); calls != 3 {
		t.Fatalf("%d Extents calls on the node, want 3", calls)
	}
	n := 0
	if err := c.Extents(context.Background(), 1, 0, runs, 1, func(uint64, uint64, bool) bool {
		n++
		return n < ExtentRunsMax+10
	}); err != nil {
		t.Fatal(err)
	}
	if n != ExtentRunsMax+10 {
		t.Fatalf("fn called %d times after returning false", n)
	}
}

// TestConcurrent: many goroutines share one client; every read returns
// what that goroutine wrote.
func TestConcurrent(t *testing.T) {
	for _, tc := range []struct {
		conns  int
		inline bool
	}{{1, false}, {3, false}, {1, true}, {3, true}} {
		conns := tc.conns
		t.Run(fmt.Sprintf("conns=%d/inline=%v", conns, tc.inline), func(t *testing.T) {
			addr, srv := startServer(t, openStore(t), ServerOptions{InFlightMax: 16, InlineWrites: tc.inline})
			defer func() {
				if st := srv.Stats(); tc.inline != (st.Inlined > 0) {
					t.Errorf("InlineWrites %v: %d of %d requests inlined", tc.inline, st.Inlined, st.Requests)
				}
			}()
			c := newClient(t, addr, ClientOptions{Conns: conns})
			const workers, ops = 48, 60
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 1))
					p := make([]byte, 4*BlockSize)
					for i := range ops {
						blk := uint64(w*1000 + rng.IntN(900))
						n := 1 + rng.IntN(4)
						data := block(byte(w+i), n)
						if err := c.Write(context.Background(), 7, blk, data, store.Stamp{Epoch: 1, Seq: uint64(w*ops + i + 1)}, i%10 == 0); err != nil {
							errs <- err
							return
						}
						if err := c.Read(context.Background(), 7, blk, p[:n*BlockSize], 1); err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(p[:n*BlockSize], data) {
							errs <- fmt.Errorf("worker %d op %d: read back differs", w, i)
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
		})
	}
}

// TestInlineWrites: with InlineWrites, a plain write with nothing
// buffered behind it (one request at a time) is executed by the reader;
// a sync write, a read, a zero never are.
func TestInlineWrites(t *testing.T) {
	addr, srv := startServer(t, openStore(t), ServerOptions{InlineWrites: true})
	c := newClient(t, addr, ClientOptions{})
	ctx := context.Background()
	p := make([]byte, BlockSize)
	seq := uint64(0)
	for i := range 10 {
		seq++
		data := block(byte(i), 1)
		if err := c.Write(ctx, 3, uint64(i), data, store.Stamp{Epoch: 1, Seq: seq}, false); err != nil {
			t.Fatal(err)
		}
		seq++
		if err := c.Write(ctx, 3, uint64(100+i), data, store.Stamp{Epoch: 1, Seq: seq}, true); err != nil {
			t.Fatal(err)
		}
		if err := c.Read(ctx, 3, uint64(i), p, 1); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, data) {
			t.Fatalf("block %d: read back differs", i)
		}
		seq++
		if err := c.Zero(ctx, 3, uint64(200+i), 1, store.Stamp{Epoch: 1, Seq: seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	if st := srv.Stats(); st.Inlined != 10 {
		t.Fatalf("%d of %d requests inlined, want the 10 plain writes", st.Inlined, st.Requests)
	}
}

// TestBackpressure: the server executes at most InFlightMax requests of a
// connection at once however many the client pipelines.
func TestBackpressure(t *testing.T) {
	g := newGateBackend(newMemBackend())
	addr, _ := startServer(t, g, ServerOptions{InFlightMax: 3})
	c := newClient(t, addr, ClientOptions{InFlightMax: 64})
	h, err := c.Hello(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.InFlightMax != 3 {
		t.Fatalf("node in-flight max %d", h.InFlightMax)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Sync(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	for range 3 {
		<-g.entered
	}
	time.Sleep(50 * time.Millisecond)
	if n := g.inFlight.Load(); n != 3 {
		t.Fatalf("%d requests executing, want 3", n)
	}
	g.open()
	wg.Wait()
	if p := g.peak.Load(); p > 3 {
		t.Fatalf("peak of %d requests executing, bound 3", p)
	}
}

// TestDeadline: a call whose deadline passes returns DeadlineExceeded; its
// late reply is discarded and never written into the caller's buffer; the
// connection goes on serving.
func TestDeadline(t *testing.T) {
	mem := newMemBackend()
	if err := mem.Write(context.Background(), 1, 0, block(0x55, 1), store.Stamp{}, false); err != nil {
		t.Fatal(err)
	}
	g := newGateBackend(mem)
	addr, _ := startServer(t, g, ServerOptions{})

	for _, viaCtx := range []bool{true, false} {
		t.Run(fmt.Sprintf("ctx=%v", viaCtx), func(t *testing.T) {
			c := newClient(t, addr, ClientOptions{CallTimeout: 50 * time.Millisecond})
			ctx := context.Background()
			if viaCtx {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 50*time.Millisecond)
				defer cancel()
			}
			p := block(0xee, 1)
			start := time.Now()
			err := c.Read(ctx, 1, 0, p, 1)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%v, want DeadlineExceeded", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("deadline of 50ms returned after %v", d)
			}
			<-g.entered
			// Let the node answer; the reply must be dropped.
			g.gate <- struct{}{}
			if err := c.Write(context.Background(), 1, 5, block(1, 1), store.Stamp{}, false); err != nil {
				t.Fatal(err) // a round trip after the late reply was read
			}
			// Replies come in completion order: wait until the reader has
			// seen (and dropped) the late one.
			for deadline := time.Now().Add(5 * time.Second); c.Stats().LateReplies == 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the late reply never arrived")
				}
			}
			if !bytes.Equal(p, block(0xee, 1)) {
				t.Fatal("the late reply was written into the caller's buffer")
			}
			if st := c.Stats(); st.Timeouts != 1 || st.LateReplies != 1 || st.Calls != 2 || st.Errors != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestServerKilled: a server that goes away fails the calls in flight;
// the client reconnects once it is back on the same address.
func TestServerKilled(t *testing.T) {
	mem := newMemBackend()
	g := newGateBackend(mem)
	l := listen(t, "")
	addr := l.Addr().String()
	srv := serve(t, g, l, ServerOptions{})
	c := newClient(t, addr, ClientOptions{RedialBackoffMin: 10 * time.Millisecond, RedialBackoffMax: 50 * time.Millisecond})

	errc := make(chan error, 1)
	go func() { errc <- c.Sync(context.Background()) }()
	<-g.entered
	srv.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrDisconnected) || !errors.Is(err, target.ErrIO) {
			t.Fatalf("call in flight when the server died: %v, want ErrDisconnected", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("call in flight when the server died did not return")
	}
	// The node is down: calls fail (dial refused, then backing off).
	for range 3 {
		err := c.Write(context.Background(), 1, 0, block(1, 1), store.Stamp{}, false)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("call with the node down: %v, want ErrUnavailable", err)
		}
	}
	// Back on the same address: the client redials.
	serve(t, mem, listen(t, addr), ServerOptions{})
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.Write(context.Background(), 1, 0, block(2, 1), store.Stamp{}, false)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p := make([]byte, BlockSize)
	if err := c.Read(context.Background(), 1, 0, p, 1); err != nil || !bytes.Equal(p, block(2, 1)) {
		t.Fatalf("read after reconnect: %v", err)
	}
	if st := c.Stats(); st.Dials != 2 || st.Disconnects != 1 || st.DialErrors == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestClientClose: Close fails calls in flight with ErrClosed and every
// later call.
func TestClientClose(t *testing.T) {
	g := newGateBackend(newMemBackend())
	addr, _ := startServer(t, g, ServerOptions{})
	c := newClient(t, addr, ClientOptions{})
	errc := make(chan error, 1)
	go func() { errc <- c.Sync(context.Background()) }()
	<-g.entered
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) || !errors.Is(err, target.ErrClosed) {
		t.Fatalf("call in flight at Close: %v", err)
	}
	if err := c.Sync(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	g.open()
}

// rawConn dials addr and completes the Hello by hand.
func rawConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	body := AppendHello(nil, Hello{Name: "raw"})
	writeFrame(t, nc, Header{Op: OpHello, ID: 1, Length: uint32(len(body)), Sum: Checksum(body)}, body)
	h, p := readFrame(t, nc)
	if h.Status != CodeOK || h.Op != OpHello {
		t.Fatalf("hello reply %+v %q", h, p)
	}
	return nc
}

func writeFrame(t *testing.T, nc net.Conn, h Header, body []byte) {
	t.Helper()
	b := make([]byte, HeaderSize, HeaderSize+len(body))
	h.Put(b)
	if _, err := nc.Write(append(b, body...)); err != nil {
		t.Fatal(err)
	}
}

func readFrame(t *testing.T, nc net.Conn) (Header, []byte) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(nc, hb[:]); err != nil {
		t.Fatal(err)
	}
	h, err := ParseHeader(hb[:])
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(nc, p); err != nil {
		t.Fatal(err)
	}
	if Checksum(p) != h.Sum {
		t.Fatal("reply payload checksum")
	}
	return h, p
}

func expectEOF(t *testing.T, nc net.Conn) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes, want the server to hang up", n)
	} else if isTimeout(err) {
		t.Fatal("server did not hang up")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestBadFrames: a server answers what it can, hangs up on what it cannot
// resynchronise after, and keeps serving other connections.
func TestBadFrames(t *testing.T) {
	addr, _ := startServer(t, newMemBackend(), ServerOptions{})

	t.Run("version", func(t *testing.T) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		b := make([]byte, HeaderSize)
		(&Header{Op: OpHello, ID: 9}).Put(b)
		b[4] = Version + 1
		nc.Write(b)
		h, p := readFrame(t, nc)
		if h.Status != CodeVersion || h.ID != 9 || !bytes.Contains(p, []byte("version")) {
			t.Fatalf("reply %+v %q", h, p)
		}
		if err := (&remoteError{code: h.Status}); !errors.Is(err, ErrVersion) {
			t.Fatal("CodeVersion is not ErrVersion")
		}
		expectEOF(t, nc)
	})
	t.Run("no hello", func(t *testing.T) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		writeFrame(t, nc, Header{Op: OpSync, ID: 3}, nil)
		if h, _ := readFrame(t, nc); h.Status != CodeProtocol || h.ID != 3 {
			t.Fatalf("reply %+v", h)
		}
		expectEOF(t, nc)
	})
	t.Run("garbage", func(t *testing.T) {
		nc := rawConn(t, addr)
		nc.Write(bytes.Repeat([]byte{0x5a}, 100))
		expectEOF(t, nc)
	})
	t.Run("unsupported op", func(t *testing.T) {
		nc := rawConn(t, addr)
		writeFrame(t, nc, Header{Op: OpFence, ID: 4, Length: 3, Sum: Checksum([]byte("abc"))}, []byte("abc"))
		if h, _ := readFrame(t, nc); h.Status != CodeUnsupported || h.ID != 4 || h.Op != OpFence {
			t.Fatalf("reply %+v", h)
		}
		// Still in sync: a good request after it works.
		writeFrame(t, nc, Header{Op: OpSync, ID: 5}, nil)
		if h, _ := readFrame(t, nc); h.Status != CodeOK || h.ID != 5 {
			t.Fatalf("reply %+v", h)
		}
	})
	t.Run("bad body", func(t *testing.T) {
		nc := rawConn(t, addr)
		writeFrame(t, nc, Header{Op: OpRead, ID: 6, Length: 3, Sum: Checksum([]byte("abc"))}, []byte("abc"))
		if h, _ := readFrame(t, nc); h.Status != CodeProtocol || h.ID != 6 {
			t.Fatalf("reply %+v", h)
		}
		var rr [ReadRequestSize]byte
		(&ReadRequest{Vol: 1, Blocks: ReadBlocksMax + 1}).Put(rr[:])
		writeFrame(t, nc, Header{Op: OpRead, ID: 7, Length: ReadRequestSize, Sum: Checksum(rr[:])}, rr[:])
		if h, _ := readFrame(t, nc); h.Status != CodeProtocol || h.ID != 7 {
			t.Fatalf("reply %+v", h)
		}
		writeFrame(t, nc, Header{Op: OpSync, Flags: FlagSync, ID: 8}, nil)
		if h, _ := readFrame(t, nc); h.Status != CodeProtocol || h.ID != 8 {
			t.Fatalf("reply %+v", h)
		}
	})
	t.Run("payload checksum", func(t *testing.T) {
		nc := rawConn(t, addr)
		body := make([]byte, WriteRequestSize+BlockSize)
		writeFrame(t, nc, Header{Op: OpWrite, ID: 10, Length: uint32(len(body)), Sum: Checksum(body) ^ 1}, body)
		if h, _ := readFrame(t, nc); h.Status != CodeChecksum || h.ID != 10 {
			t.Fatalf("reply %+v", h)
		}
		expectEOF(t, nc)
	})
	t.Run("too large", func(t *testing.T) {
		nc := rawConn(t, addr)
		b := make([]byte, HeaderSize)
		(&Header{Op: OpWrite, ID: 11}).Put(b)
		be.PutUint32(b[16:], PayloadBytesMax+1)
		be.PutUint32(b[28:], Checksum(b[:28]))
		nc.Write(b)
		if h, _ := readFrame(t, nc); h.Status != CodeProtocol || h.ID != 11 {
			t.Fatalf("reply %+v", h)
		}
		expectEOF(t, nc)
	})
	// After all that, a real client is served.
	c := newClient(t, addr, ClientOptions{})
	if err := c.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestFrameTimeout: a frame started and not finished within FrameTimeout
// ends the connection; an idle connection is left alone.
func TestFrameTimeout(t *testing.T) {
	addr, _ := startServer(t, newMemBackend(), ServerOptions{FrameTimeout: 100 * time.Millisecond})
	idle := rawConn(t, addr)
	half := rawConn(t, addr)
	half.Write([]byte{0x43, 0x52}) // two bytes of a header
	expectEOF(t, half)
	time.Sleep(150 * time.Millisecond)
	writeFrame(t, idle, Header{Op: OpSync, ID: 2}, nil)
	if h, _ := readFrame(t, idle); h.Status != CodeOK {
		t.Fatalf("idle connection: reply %+v", h)
	}
}

// fakeNode accepts connections on a loopback port and runs handle on each.
func fakeNode(t *testing.T, handle func(nc net.Conn)) (addr string, accepted func() int) {
	t.Helper()
	l := listen(t, "")
	var mu sync.Mutex
	n := 0
	var wg sync.WaitGroup
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				handle(nc)
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return l.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// readHello reads a client's Hello frame.
func readHello(nc net.Conn) (Header, error) {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(nc, hb[:]); err != nil {
		return Header{}, err
	}
	h, err := ParseHeader(hb[:])
	if err != nil {
		return h, err
	}
	_, err = io.CopyN(io.Discard, nc, int64(h.Length))
	return h, err
}

// TestClientVersionMismatch: a node speaking another version makes calls
// fail with ErrVersion.
func TestClientVersionMismatch(t *testing.T) {
	addr, _ := fakeNode(t, func(nc net.Conn) {
		h, err := readHello(nc)
		if err != nil {
			return
		}
		msg := []byte("node speaks version 2")
		b := make([]byte, HeaderSize)
		(&Header{Op: OpHello, Flags: FlagReply, ID: h.ID, Status: CodeVersion, Length: uint32(len(msg)), Sum: Checksum(msg)}).Put(b)
		b[4] = Version + 1
		nc.Write(append(b, msg...))
	})
	c := newClient(t, addr, ClientOptions{})
	err := c.Sync(context.Background())
	if !errors.Is(err, ErrVersion) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("%v, want ErrVersion", err)
	}
}

// TestBlackHole: a node that takes requests and never answers (nor closes
// the connection) times calls out; once nothing came back for
// FrameTimeout, the client drops the connection and redials.
func TestBlackHole(t *testing.T) {
	addr, accepted := fakeNode(t, func(nc net.Conn) {
		h, err := readHello(nc)
		if err != nil {
			return
		}
		body := AppendHello(nil, Hello{Name: "hole", InFlightMax: 8, RequestBytesMax: RequestBytesMax})
		b := make([]byte, HeaderSize)
		(&Header{Op: OpHello, Flags: FlagReply, ID: h.ID, Length: uint32(len(body)), Sum: Checksum(body)}).Put(b)
		nc.Write(append(b, body...))
		io.Copy(io.Discard, nc)
	})
	c := newClient(t, addr, ClientOptions{CallTimeout: 300 * time.Millisecond, FrameTimeout: 50 * time.Millisecond})
	for i := range 3 {
		if err := c.Sync(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call %d: %v, want DeadlineExceeded", i, err)
		}
	}
	if n := accepted(); n < 2 {
		t.Fatalf("%d connections, want a redial after the silent one", n)
	}
	if st := c.Stats(); st.Disconnects < 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestNoGoroutineLeak: closing the client and the server stops every
// goroutine they started.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	mem := newMemBackend()
	l := listen(t, "")
	s, err := NewServer(mem, ServerOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	c, err := NewClient(l.Addr().String(), ClientOptions{Conns: 4, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if err := c.Write(context.Background(), 1, 0, block(1, 1), Stamp0, false); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	c.Close()
	s.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLargeRequests: a Read and a Write of RequestBytesMax cross the wire;
// one block more is refused on the client as the store would.
func TestLargeRequests(t *testing.T) {
	addr, _ := startServer(t, newMemBackend(), ServerOptions{})
	c := newClient(t, addr, ClientOptions{})
	ctx := context.Background()
	data := make([]byte, RequestBytesMax)
	for i := range data {
		data[i] = byte(i * 7 / BlockSize)
	}
	if err := c.Write(ctx, 3, 100, data, Stamp0, true); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, RequestBytesMax+BlockSize)
	if err := c.Read(ctx, 3, 100, p[:RequestBytesMax], 1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p[:RequestBytesMax], data) {
		t.Fatal("16 MiB read back differs")
	}
	if err := c.Read(ctx, 3, 100, p, 1); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("read over the bound: %v", err)
	}
	if err := c.Write(ctx, 3, 100, p, Stamp0, false); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("write over the bound: %v", err)
	}
}

// TestClientDistrustsReplies: an Extents reply whose runs skip blocks, and
// a Read reply of the wrong length, are protocol errors on the client.
func TestClientDistrustsReplies(t *testing.T) {
	addr, _ := fakeNode(t, func(nc net.Conn) {
		h, err := readHello(nc)
		if err != nil {
			return
		}
		body := AppendHello(nil, Hello{Name: "liar", InFlightMax: 8, RequestBytesMax: RequestBytesMax})
		b := make([]byte, HeaderSize)
		(&Header{Op: OpHello, Flags: FlagReply, ID: h.ID, Length: uint32(len(body)), Sum: Checksum(body)}).Put(b)
		nc.Write(append(b, body...))
		for {
			h, err := readHello(nc) // any frame: header, then its payload skipped
			if err != nil {
				return
			}
			var payload []byte
			switch h.Op {
			case OpExtents:
				payload = make([]byte, 2*ExtentRunSize)
				(&ExtentRun{Start: 0, Count: 2, Allocated: true}).Put(payload)
				(&ExtentRun{Start: 5, Count: 1}).Put(payload[ExtentRunSize:]) // skips blocks 2-4
			case OpRead:
				payload = make([]byte, BlockSize/2)
			}
			(&Header{Op: h.Op, Flags: FlagReply, ID: h.ID, Length: uint32(len(payload)), Sum: Checksum(payload)}).Put(b)
			nc.Write(append(b, payload...))
		}
	})
	c := newClient(t, addr, ClientOptions{})
	var runs int
	err := c.Extents(context.Background(), 1, 0, 10, 1, func(uint64, uint64, bool) bool { runs++; return true })
	if !errors.Is(err, ErrProtocol) || runs != 1 {
		t.Fatalf("extents with a gap: %v after %d runs, want ErrProtocol after 1", err, runs)
	}
	if err := c.Read(context.Background(), 1, 0, make([]byte, BlockSize), 1); !errors.Is(err, ErrProtocol) || !errors.Is(err, ErrDisconnected) {
		t.Fatalf("short read reply: %v, want ErrProtocol", err)
	}
}

// TestConnsMax: past ConnsMax a connection is closed at once; those
// already served are not disturbed.
func TestConnsMax(t *testing.T) {
	addr, srv := startServer(t, newMemBackend(), ServerOptions{ConnsMax: 1})
	first := newClient(t, addr, ClientOptions{})
	if err := first.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := newClient(t, addr, ClientOptions{DialTimeout: time.Second})
	if err := second.Sync(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("connection past ConnsMax: %v, want ErrUnavailable", err)
	}
	if err := first.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Refused != 1 || st.Connections != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// collectChanged returns Changed's runs through c.
func collectChanged(t *testing.T, c interface {
	Changed(ctx context.Context, vol, block, n, from, to uint64, fn func(start, count uint64, changed bool) bool) error
}, vol, blk, n, from, to uint64) []extent {
	t.Helper()
	var got []extent
	if err := c.Changed(context.Background(), vol, blk, n, from, to, func(s, cnt uint64, ch bool) bool {
		got = append(got, extent{s, cnt, ch})
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestChanged: Changed over the wire reports what the node's store
// reports, for plain volumes and forks, over small and whole ranges; bad
// epochs come back as store.ErrInvalid.
func TestChanged(t *testing.T) {
	st := openStore(t)
	addr, _ := startServer(t, st, ServerOptions{})
	c := newClient(t, addr, ClientOptions{})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 3))
	seq := uint64(0)
	for epoch := uint64(1); epoch <= 4; epoch++ {
		for range 40 {
			seq++
			b := rng.Uint64N(1 << 12)
			if rng.IntN(5) == 0 {
				if err := c.Zero(ctx, 1, b, 1+rng.Uint64N(100), store.Stamp{Epoch: epoch, Seq: seq}, false); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := c.Write(ctx, 1, b, block(byte(seq), 1+rng.IntN(3)), store.Stamp{Epoch: epoch, Seq: seq}, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := st.SetLineage(2, store.Lineage{Parent: 1, ParentEpoch: 2}); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, 2, 100, block(9, 8), store.Stamp{Epoch: 3, Seq: 1}, false); err != nil {
		t.Fatal(err)
	}
	for _, vol := range []uint64{1, 2} {
		for _, r := range [][2]uint64{{1, 2}, {1, 4}, {2, 3}, {0, ^uint64(0)}, {3, ^uint64(0)}} {
			for _, span := range [][2]uint64{{0, 1 << 12}, {77, 500}, {0, store.BlocksMax}} {
				got := collectChanged(t, c, vol, span[0], span[1], r[0], r[1])
				want := collectChanged(t, st, vol, span[0], span[1], r[0], r[1])
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("vol %d blocks %v epochs %v: wire %v, store %v", vol, span, r, got, want)
				}
				if vol == 1 && len(got) < 2 && span[1] == 1<<12 && r[0] < 4 && r[1] > 1 {
					t.Fatalf("vol %d epochs %v: %v, want changes", vol, r, got)
				}
			}
		}
	}
	if err := c.Changed(ctx, 1, 0, 10, 3, 3, func(uint64, uint64, bool) bool { return true }); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("changed with from = to: %v, want store.ErrInvalid", err)
	}
	// The connection goes on after the error.
	if got := collectChanged(t, c, 1, 0, 10, 0, 1); len(got) == 0 {
		t.Fatal("no runs after an error reply")
	}
}

// TestChangedContinuation: more runs than one reply holds are fetched in
// several calls; a backend without Changer answers ErrUnsupported.
func TestChangedContinuation(t *testing.T) {
	const runs = 2*ExtentRunsMax + 100
	b := &runsBackend{memBackend: *newMemBackend(), runs: runs}
	addr, _ := startServer(t, b, ServerOptions{})
	c := newClient(t, addr, ClientOptions{})
	got := collectChanged(t, c, 1, 0, runs+50, 1, 2)
	if len(got) != runs+1 {
		t.Fatalf("%d runs, want %d", len(got), runs+1)
	}
	for i, e := range got[:runs] {
		if e != (extent{uint64(i), 1, i%2 == 0}) {
			t.Fatalf("run %d: %+v", i, e)
		}
	}
	if calls := b.calls.Load(); calls != 3 {
		t.Fatalf("%d Changed calls on the node, want 3", calls)
	}

	addr, _ = startServer(t, newMemBackend(), ServerOptions{})
	c = newClient(t, addr, ClientOptions{})
	err := c.Changed(context.Background(), 1, 0, 10, 1, 2, func(uint64, uint64, bool) bool { return true })
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("changed on a backend without it: %v, want ErrUnsupported", err)
	}
	if err := c.Sync(context.Background()); err != nil {
		t.Fatalf("sync after an unsupported op: %v", err)
	}
}
