package nbd

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"cairn/target"
)

// TestBudgetStalledClients: clients that send large READs and never read
// the replies hold at most the shared budget; the server stops reading
// from them once it is spent, serves a well-behaved client, disconnects
// the stalled ones after ReplyTimeout and gets the whole budget back.
func TestBudgetStalledClients(t *testing.T) {
	t.Run("pipe", func(t *testing.T) { testBudgetStalledClients(t, false) })
	t.Run("tcp", func(t *testing.T) { testBudgetStalledClients(t, true) })
}

// testBudgetStalledClients runs over net.Pipe (no buffering at all) or
// loopback TCP with 4 KiB client receive buffers, as an attacker would.
func testBudgetStalledClients(t *testing.T, tcp bool) {
	const (
		budgetBytes = 4 << 20
		readBytes   = 1 << 20
		stalled     = 4
		reads       = 16 // per stalled client: four times the budget each, more than sockets buffer
	)
	exports, _ := memExports()
	budget := target.NewBudget(budgetBytes)
	s := newServer(t, exports, Options{Budget: budget, RequestBytesMax: readBytes, ReplyTimeout: 200 * time.Millisecond})
	connect := func(bool) *client { return pipe(t, s) }
	if tcp {
		addr := listen(t, s)
		connect = func(stall bool) *client {
			c := dial(t, addr)
			if stall {
				c.nc.(*net.TCPConn).SetReadBuffer(4096)
			}
			return c
		}
	}

	var senders sync.WaitGroup
	var bad []*client
	for i := range stalled {
		c := connect(true)
		c.open("disk", i%2 == 0)
		bad = append(bad, c)
		senders.Add(1)
		go func() { // blocks once the server stops reading
			defer senders.Done()
			for j := range reads {
				b := make([]byte, RequestSize)
				(&Request{Type: CmdRead, Cookie: uint64(j), Offset: uint64(j) * readBytes, Length: readBytes}).Put(b)
				c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.nc.Write(b); err != nil {
					return
				}
			}
		}()
	}
	// The budget fills and readers wait for it rather than read on.
	waitFor(t, func() bool { return budget.InUse() == budgetBytes && budget.Waiting() > 0 })

	good := connect(false)
	good.open("disk", true)
	for i := range 20 {
		if r := good.do(Request{Type: CmdRead, Cookie: uint64(100 + i), Offset: uint64(i) * 4096, Length: 64 << 10}, nil); r.errno != 0 || len(r.data) != 64<<10 {
			t.Fatalf("well-behaved read %d: %+v", i, r)
		}
	}
	// Reading from a stalled client before the server dropped it would
	// unstall it: wait for the drops first.
	waitFor(t, func() bool { return s.Stats().Disconnects[target.DisconnectReplyTimeout] == stalled })
	if tcp {
		// Over TCP the server's close reaches a client that never read
		// only after the data still queued to it, at the pace of the
		// zero-window probes: check the server's side instead.
		waitFor(t, func() bool { return s.Stats().Connections == 1 })
		for _, c := range bad {
			c.nc.Close() // let the senders' blocked writes end
		}
	} else {
		for _, c := range bad {
			c.expectClosed()
		}
	}
	senders.Wait()
	waitFor(t, func() bool { return budget.InUse() == 0 })
	if p := budget.Peak(); p > budgetBytes {
		t.Fatalf("peak %d bytes in flight, budget %d", p, budgetBytes)
	}
	if d := s.Stats().Disconnects; len(d) != 1 {
		t.Fatalf("disconnects %v, want %d reply timeouts only", d, stalled)
	}
	// The well-behaved client is still connected and served.
	if r := good.do(Request{Type: CmdRead, Cookie: 1, Length: readBytes}, nil); r.errno != 0 {
		t.Fatal(r)
	}
}

// TestOversizedRequestBudget: a request larger than the whole budget is
// served (once the budget is free) rather than deadlocking.
func TestOversizedRequestBudget(t *testing.T) {
	exports, _ := memExports()
	budget := target.NewBudget(64 << 10)
	s := newServer(t, exports, Options{Budget: budget, RequestBytesMax: 1 << 20})
	c := pipe(t, s)
	c.open("disk", false)
	p := pattern(1<<20, 9)
	if r := c.do(Request{Type: CmdWrite, Cookie: 1, Length: 1 << 20}, p); r.errno != 0 {
		t.Fatal(r)
	}
	if r := c.do(Request{Type: CmdRead, Cookie: 2, Length: 1 << 20}, nil); r.errno != 0 || !bytes.Equal(r.data, p) {
		t.Fatalf("read back: errno %d", r.errno)
	}
	waitFor(t, func() bool { return budget.InUse() == 0 })
}

// TestRequestTimeout: a half-sent header or WRITE payload is closed after
// RequestTimeout; an idle connection stays open.
func TestRequestTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	exports, _ := memExports()
	s := newServer(t, exports, Options{RequestTimeout: timeout})
	idle := pipe(t, s)
	idle.open("disk", false)

	half := pipe(t, s)
	half.open("disk", false)
	b := make([]byte, RequestSize)
	(&Request{Type: CmdRead, Cookie: 1, Length: 512}).Put(b)
	half.write(b[:RequestSize/2])
	half.expectClosed()

	payload := pipe(t, s)
	payload.open("disk", true)
	b = make([]byte, RequestSize+1000)
	(&Request{Type: CmdWrite, Cookie: 2, Length: 4096}).Put(b)
	payload.write(b)
	payload.expectClosed()
	if n := s.Stats().Disconnects[target.DisconnectRequestTimeout]; n != 2 {
		t.Fatalf("%d request timeouts: %v", n, s.Stats().Disconnects)
	}

	time.Sleep(2 * timeout) // idle for several timeouts by now
	if r := idle.do(Request{Type: CmdRead, Cookie: 3, Length: 512}, nil); r.errno != 0 {
		t.Fatalf("idle connection: %+v", r)
	}
}

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestConnectionLimits: past ConnectionsMax or ConnectionsPerAddrMax a
// client gets the greeting, then the connection closes, with a log line.
func TestConnectionLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"total", Options{ConnectionsMax: 2}},
		{"per address", Options{ConnectionsPerAddrMax: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exports, _ := memExports()
			var logs logBuffer
			tc.opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s := newServer(t, exports, tc.opts)
			addr := listen(t, s)
			a, b := dial(t, addr), dial(t, addr)
			a.open("disk", false)
			b.open("disk", true)

			refused := dial(t, addr)
			if _, err := ParseGreeting(refused.readFull(GreetingSize)); err != nil {
				t.Fatal(err)
			}
			refused.expectClosed()
			st := s.Stats()
			if st.Disconnects[target.DisconnectLimit] != 1 || st.Connections != 2 {
				t.Fatalf("stats %+v", st)
			}
			if !strings.Contains(logs.String(), "nbd: connection refused") {
				t.Fatalf("no log line for the refusal:\n%s", logs.String())
			}
			// Served connections are unaffected, and a slot frees on close.
			if r := a.do(Request{Type: CmdRead, Cookie: 1, Length: 512}, nil); r.errno != 0 {
				t.Fatal(r)
			}
			b.send(Request{Type: CmdDisc}, nil)
			b.expectClosed()
			waitFor(t, func() bool { return s.Stats().Connections == 1 })
			c := dial(t, addr)
			c.open("disk", false)
			if r := c.do(Request{Type: CmdRead, Cookie: 2, Length: 512}, nil); r.errno != 0 {
				t.Fatal(r)
			}
		})
	}
}

// TestSlowReaderKept: ReplyTimeout cuts off a client that stops reading,
// not one that reads a large reply slowly (ReplyTimeout 1 s): over
// net.Pipe 1 MiB in 1.6 s; over TCP 16 MiB in 3.2 s, more than the
// sockets buffer in a second, so that the reply's one write reaches its
// deadline and goes on under a renewed one.
func TestSlowReaderKept(t *testing.T) {
	t.Run("pipe", func(t *testing.T) { testSlowReaderKept(t, false, 1<<20, 32<<10, 50*time.Millisecond) })
	t.Run("tcp", func(t *testing.T) { testSlowReaderKept(t, true, 16<<20, 512<<10, 100*time.Millisecond) })
}

func testSlowReaderKept(t *testing.T, tcp bool, size, pieceBytes int, every time.Duration) {
	exports, _ := memExports()
	s := newServer(t, exports, Options{RequestBytesMax: size, ReplyTimeout: time.Second})
	var c *client
	if tcp {
		c = dial(t, listen(t, s))
	} else {
		c = pipe(t, s)
	}
	c.open("disk", false)
	c.send(Request{Type: CmdRead, Cookie: 1, Length: uint32(size)}, nil)
	c.nc.SetDeadline(time.Now().Add(20 * time.Second))
	hdr := make([]byte, SimpleReplySize)
	if _, err := io.ReadFull(c.br, hdr); err != nil {
		t.Fatal(err)
	}
	piece := make([]byte, pieceBytes)
	for i := range size / len(piece) {
		time.Sleep(every)
		if _, err := io.ReadFull(c.br, piece); err != nil {
			t.Fatalf("slow reader cut off at piece %d: %v (%v)", i, err, s.Stats().Disconnects)
		}
	}
	delete(c.reads, 1)
	if r := c.do(Request{Type: CmdRead, Cookie: 2, Length: 512}, nil); r.errno != 0 {
		t.Fatal(r)
	}
}
