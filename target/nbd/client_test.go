package nbd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"cairn/target"
	"cairn/target/targettest"
)

// mapExports is a fixed set of exports.
type mapExports map[string]target.Device

func (m mapExports) Lookup(name string) (target.Device, bool) { d, ok := m[name]; return d, ok }

func (m mapExports) List() []string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// newServer returns a server over exports, closed with the test.
func newServer(t testing.TB, exports mapExports, opts Options) *Server {
	t.Helper()
	opts.Exports = exports
	s := NewServer(opts)
	t.Cleanup(func() { s.Close() })
	return s
}

// listen serves s on a loopback port and returns its address.
func listen(t testing.TB, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// client is a hand-written NBD client for tests: it speaks the protocol
// through the codec and checks every step.
type client struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	reads      map[uint64]uint32 // cookie → length of simple-reply reads in flight
	served     chan struct{}     // closed when the server side returns (pipe clients)
}

// pipe connects a client to s over net.Pipe.
func pipe(t testing.TB, s *Server) *client {
	t.Helper()
	cn, sn := net.Pipe()
	c := &client{t: t, nc: cn, br: bufio.NewReader(cn), reads: map[uint64]uint32{}, served: make(chan struct{})}
	go func() {
		defer close(c.served)
		s.ServeConn(sn)
	}()
	t.Cleanup(func() { cn.Close(); <-c.served })
	return c
}

// dial connects a client to addr over TCP.
func dial(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, br: bufio.NewReader(nc), reads: map[uint64]uint32{}}
}

func (c *client) deadline() { c.nc.SetDeadline(time.Now().Add(10 * time.Second)) }

func (c *client) readFull(n int) []byte {
	c.t.Helper()
	c.deadline()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func (c *client) write(b []byte) {
	c.t.Helper()
	c.deadline()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// greet reads the greeting and sends client flags.
func (c *client) greet(flags uint32) {
	c.t.Helper()
	hf, err := ParseGreeting(c.readFull(GreetingSize))
	if err != nil {
		c.t.Fatal(err)
	}
	if hf != FlagFixedNewstyle|FlagNoZeroes {
		c.t.Fatalf("handshake flags %#x", hf)
	}
	c.write(be.AppendUint32(nil, flags))
}

func (c *client) option(code uint32, data []byte) {
	c.t.Helper()
	c.write(AppendOption(nil, code, data))
}

func (c *client) optionReply(code uint32) (OptionReplyHeader, []byte) {
	c.t.Helper()
	h, err := ParseOptionReplyHeader(c.readFull(OptionReplyHeaderSize))
	if err != nil {
		c.t.Fatal(err)
	}
	if h.Code != code {
		c.t.Fatalf("reply to option %d, want %d", h.Code, code)
	}
	return h, c.readFull(int(h.Length))
}

// expectReply reads one option reply and checks its type.
func (c *client) expectReply(code, typ uint32) []byte {
	c.t.Helper()
	h, data := c.optionReply(code)
	if h.Type != typ {
		c.t.Fatalf("option %d: reply type %#x (%q), want %#x", code, h.Type, data, typ)
	}
	return data
}

// open greets and negotiates export name with OPT_GO, structured replies
// and base:allocation when structured; it returns size and flags.
func (c *client) open(name string, structured bool) (uint64, uint16) {
	c.t.Helper()
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	if structured {
		c.option(OptStructuredReply, nil)
		c.expectReply(OptStructuredReply, RepAck)
		c.option(OptSetMetaContext, AppendMetaContextRequest(nil, name, MetaContextAllocation))
		d := c.expectReply(OptSetMetaContext, RepMetaContext)
		if string(d[4:]) != MetaContextAllocation {
			c.t.Fatalf("meta context %q", d[4:])
		}
		c.expectReply(OptSetMetaContext, RepAck)
		c.structured = true
	}
	c.option(OptGo, AppendInfoRequest(nil, name, InfoBlockSize))
	var size uint64
	var flags uint16
	for {
		h, d := c.optionReply(OptGo)
		if h.Type == RepAck {
			break
		}
		if h.Type != RepInfo {
			c.t.Fatalf("OPT_GO: reply %#x %q", h.Type, d)
		}
		if be.Uint16(d) == InfoExport {
			size, flags = be.Uint64(d[2:]), be.Uint16(d[10:])
		}
	}
	return size, flags
}

// send sends a request (and its payload).
func (c *client) send(r Request, payload []byte) {
	c.t.Helper()
	b := make([]byte, RequestSize, RequestSize+len(payload))
	r.Put(b)
	if r.Type == CmdRead && !c.structured {
		c.reads[r.Cookie] = r.Length
	}
	c.write(append(b, payload...))
}

// result is one whole reply to a request.
type result struct {
	cookie  uint64
	errno   uint32
	data    []byte      // READ data, reassembled
	extents [][2]uint32 // BLOCK_STATUS descriptors
	// contexts are the context ids of the BLOCK_STATUS chunks, in order;
	// byContext their descriptors.
	contexts  []uint32
	byContext map[uint32][][2]uint32
	chunks    []StructuredReply
}

// recv reads one whole reply (all chunks of one structured reply, assuming
// the server does not interleave chunks, which this one never does).
func (c *client) recv() result {
	c.t.Helper()
	magic := c.readFull(4)
	hdr := append(magic, c.readFull(ReplyHeaderSize(be.Uint32(magic))-4)...)
	rp, err := ParseReply(hdr)
	if err != nil {
		c.t.Fatal(err)
	}
	res := result{cookie: rp.Cookie, errno: rp.Errno}
	if !rp.Structured {
		if n, ok := c.reads[rp.Cookie]; ok {
			delete(c.reads, rp.Cookie)
			if rp.Errno == 0 {
				res.data = c.readFull(int(n))
			}
		}
		return res
	}
	for {
		sr := StructuredReply{Flags: rp.Flags, Type: rp.Type, Cookie: rp.Cookie, Length: rp.Length}
		res.chunks = append(res.chunks, sr)
		p := c.readFull(int(rp.Length))
		switch rp.Type {
		case ReplyOffsetData:
			res.data = append(res.data, p[8:]...)
		case ReplyBlockStatus:
			id := be.Uint32(p)
			res.contexts = append(res.contexts, id)
			if res.byContext == nil {
				res.byContext = map[uint32][][2]uint32{}
			}
			for d := p[4:]; len(d) >= 8; d = d[8:] {
				res.extents = append(res.extents, [2]uint32{be.Uint32(d), be.Uint32(d[4:])})
				res.byContext[id] = append(res.byContext[id], [2]uint32{be.Uint32(d), be.Uint32(d[4:])})
			}
		case ReplyError, ReplyErrorOffset:
			res.errno = be.Uint32(p)
		}
		if rp.Flags&ReplyFlagDone != 0 {
			return res
		}
		hdr := c.readFull(StructuredReplySize)
		if rp, err = ParseReply(hdr); err != nil || rp.Cookie != res.cookie {
			c.t.Fatalf("chunk %+v %v interleaved", rp, err)
		}
	}
}

// do sends a request and waits for its reply.
func (c *client) do(r Request, payload []byte) result {
	c.t.Helper()
	c.send(r, payload)
	res := c.recv()
	if res.cookie != r.Cookie {
		c.t.Fatalf("reply cookie %d, want %d", res.cookie, r.Cookie)
	}
	return res
}

// expectClosed checks that the server closes the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	c.deadline()
	if n, err := io.Copy(io.Discard, c.br); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatalf("connection still open after %d bytes", n)
		}
	}
}

// gateDevice holds calls that match until the gate opens.
type gateDevice struct {
	*targettest.MemDevice
	gate    chan struct{}
	match   func(op string, off int64) bool
	mu      sync.Mutex
	active  int
	peak    int
	entered chan string
}

func newGate(d *targettest.MemDevice, match func(op string, off int64) bool) *gateDevice {
	return &gateDevice{MemDevice: d, gate: make(chan struct{}), match: match, entered: make(chan string, 1024)}
}

func (g *gateDevice) hold(ctx context.Context, op string, off int64) {
	g.mu.Lock()
	g.active++
	g.peak = max(g.peak, g.active)
	g.mu.Unlock()
	defer func() { g.mu.Lock(); g.active--; g.mu.Unlock() }()
	select {
	case g.entered <- op:
	default:
	}
	if g.match(op, off) {
		select {
		case <-g.gate:
		case <-ctx.Done():
		}
	}
}

func (g *gateDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	g.hold(ctx, "read", off)
	return g.MemDevice.ReadAt(ctx, p, off)
}

func (g *gateDevice) WriteAt(ctx context.Context, p []byte, off int64, f target.WriteFlags) error {
	g.hold(ctx, "write", off)
	return g.MemDevice.WriteAt(ctx, p, off, f)
}
