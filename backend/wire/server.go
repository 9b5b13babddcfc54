package wire

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/target"
)

// Backend is what a Server serves: the data calls of a storage node's
// store (*store.Store satisfies it). Methods are called from many
// goroutines at once, with a context cancelled when the connection ends or
// the server closes; they must not retain the slices they are given, and
// Extents' fn runs on the calling goroutine.
type Backend interface {
	Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error
	Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error
	Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error
	Extents(ctx context.Context, vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) error
	Sync(ctx context.Context) error
}

// Changer is what a Backend also implements to serve OpChanged
// (*store.Store does): the runs of blocks whose content at epoch to may
// differ from that at from, as store.Store.Changed reports them. A Server
// whose Backend does not implement it answers OpChanged with
// CodeUnsupported. fn runs on the calling goroutine.
type Changer interface {
	Changed(ctx context.Context, vol, block, n, from, to uint64, fn func(start, count uint64, changed bool) bool) error
}

// SummedWriter is what a Backend also implements to take a write's block
// CRCs with its data (*store.Store does): for a Write request the server
// then computes the crc32c of each block, checks the frame's payload CRC
// from them (crc32c.Combiner) and hands them over, one pass over the data
// where checking the frame and the store's own block CRCs took two.
type SummedWriter = volume.SummedWriter

var (
	_ Backend            = (*store.Store)(nil)
	_ Changer            = (*store.Store)(nil)
	_ SummedWriter       = (*store.Store)(nil)
	_ volume.BatchWriter = (*store.Store)(nil)
)

// Defaults of ServerOptions and ClientOptions (the one place they live).
const (
	inFlightMaxDefault      = 128
	inFlightMaxMax          = 1 << 12 // request ids carry a 16-bit slot; keep well inside
	inFlightBytesMaxDefault = 64 << 20
	frameTimeoutDefault     = 30 * time.Second
	handshakeTimeoutDefault = 10 * time.Second
	callTimeoutDefault      = 30 * time.Second
	dialTimeoutDefault      = 5 * time.Second
	redialBackoffMinDefault = 50 * time.Millisecond
	redialBackoffMaxDefault = 2 * time.Second
	connsMax                = 16   // client connections per node
	connsMaxDefault         = 1024 // server connections

	bufferBytes = 64 << 10 // bufio size per direction per connection
)

// ServerOptions configure a Server. The zero value works: plain TCP,
// defaults for every bound.
type ServerOptions struct {
	// Name is the node's name, sent in its Hello.
	Name string
	// TLS, if set, makes every connection TLS (see LoadTLS: TLS 1.3 with
	// client certificates required). nil serves plain TCP.
	TLS *tls.Config
	// InFlightMax bounds the requests of one connection between being read
	// and their reply being written; past it the server stops reading the
	// connection (TCP backpressure). 0: 128.
	InFlightMax int
	// InFlightBytesMax bounds the payload bytes of those requests. 0: 64 MiB;
	// at least PayloadBytesMax.
	InFlightBytesMax int
	// FrameTimeout bounds the read of a frame once its first byte arrived,
	// and the write of a batch of replies. An idle connection has no
	// deadline. 0: 30 s.
	FrameTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake and the Hello. 0: 10 s.
	HandshakeTimeout time.Duration
	// ConnsMax bounds the connections served at once; one more is closed
	// as soon as it is accepted. 0: 1024.
	ConnsMax int
	// Logger receives one line per connection event; nil: slog.Default().
	Logger *slog.Logger
	// Snapshot, if set, serves the snapshot ops (OpTargetHold, …): the
	// node's target. nil answers them CodeUnsupported.
	Snapshot SnapshotTarget
	// InlineWrites says that the backend's writes without FlagSync wait
	// on nothing slower than memory (a local store into the page cache;
	// not a store behind injected latency): a Write that arrives with no
	// other frame buffered behind it is then executed and answered by the
	// connection's reader itself, with no hand-off to a worker (see
	// sconn.inline); and when the backend takes batches
	// (volume.BatchWriter), plain writes buffered together are given to it
	// in one call and answered with one socket write (see sconn.gather).
	InlineWrites bool
}

// Server serves a Backend to Clients. Its methods are safe for concurrent
// use.
type Server struct {
	backend Backend
	summed  SummedWriter       // backend, if it is one
	batcher volume.BatchWriter // backend, if it is one: plain writes gathered by the reader
	opts    ServerOptions
	log     *slog.Logger

	mu struct {
		sync.Mutex
		closed    bool
		listeners map[net.Listener]struct{}
		conns     map[*sconn]struct{}
	}
	wg sync.WaitGroup // connection goroutines

	stats struct {
		connections, refused, handshakeErrors, requests, errorReplies, inlined, batches, batched atomic.Uint64
	}
}

// ServerStats are cumulative counters of a Server.
type ServerStats struct {
	Connections     uint64 // accepted and served
	Refused         uint64 // closed at once: ConnsMax reached
	HandshakeErrors uint64 // connections refused in TLS or Hello
	Requests        uint64 // requests executed on the backend
	ErrorReplies    uint64 // replies with a non-zero status
	Inlined         uint64 // of Requests, those the reader executed itself (InlineWrites)
	Batches         uint64 // write batches the reader gave the backend together (volume.BatchWriter)
	Batched         uint64 // of Requests, the writes in those batches
}

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{Connections: s.stats.connections.Load(), Refused: s.stats.refused.Load(), HandshakeErrors: s.stats.handshakeErrors.Load(),
		Requests: s.stats.requests.Load(), ErrorReplies: s.stats.errorReplies.Load(), Inlined: s.stats.inlined.Load(),
		Batches: s.stats.batches.Load(), Batched: s.stats.batched.Load()}
}

// NewServer returns a server of b. It starts nothing: call Serve.
func NewServer(b Backend, opts ServerOptions) (*Server, error) {
	if b == nil {
		return nil, errors.New("wire: server without a backend")
	}
	if opts.InFlightMax == 0 {
		opts.InFlightMax = inFlightMaxDefault
	}
	if opts.InFlightBytesMax == 0 {
		opts.InFlightBytesMax = inFlightBytesMaxDefault
	}
	if opts.FrameTimeout == 0 {
		opts.FrameTimeout = frameTimeoutDefault
	}
	if opts.HandshakeTimeout == 0 {
		opts.HandshakeTimeout = handshakeTimeoutDefault
	}
	if opts.ConnsMax == 0 {
		opts.ConnsMax = connsMaxDefault
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	switch {
	case opts.InFlightMax < 1 || opts.InFlightMax > inFlightMaxMax:
		return nil, fmt.Errorf("wire: server InFlightMax %d outside [1, %d]", opts.InFlightMax, inFlightMaxMax)
	case opts.InFlightBytesMax < PayloadBytesMax:
		return nil, fmt.Errorf("wire: server InFlightBytesMax %d below one request (%d)", opts.InFlightBytesMax, PayloadBytesMax)
	case opts.ConnsMax < 1:
		return nil, fmt.Errorf("wire: server ConnsMax %d below 1", opts.ConnsMax)
	case opts.FrameTimeout < 0 || opts.HandshakeTimeout < 0:
		return nil, fmt.Errorf("wire: negative server timeout")
	case len(opts.Name) > NameBytesMax:
		return nil, fmt.Errorf("wire: node name of %d bytes, at most %d", len(opts.Name), NameBytesMax)
	}
	summed, _ := b.(SummedWriter)
	batcher, _ := b.(volume.BatchWriter)
	s := &Server{backend: b, summed: summed, batcher: batcher, opts: opts, log: opts.Logger.With("component", "wire-server", "node", opts.Name)}
	s.mu.listeners = make(map[net.Listener]struct{})
	s.mu.conns = make(map[*sconn]struct{})
	return s, nil
}

// Serve accepts connections on l until Close, starting one goroutine per
// connection, and returns nil after Close or the accept error that stopped
// it. l is closed when Serve returns.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	s.mu.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	return target.AcceptLoop(l, s.closed, s.start)
}

func (s *Server) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.closed
}

// start begins serving nc on its own goroutine; false once closed.
func (s *Server) start(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		nc.Close()
		return false
	}
	if len(s.mu.conns) >= s.opts.ConnsMax {
		s.stats.refused.Add(1)
		s.log.Warn("wire connection refused: too many", "remote", nc.RemoteAddr().String(), "conns_max", s.opts.ConnsMax)
		nc.Close()
		return true
	}
	c := newSconn(s, nc)
	s.mu.conns[c] = struct{}{}
	s.stats.connections.Add(1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		c.serve()
		s.mu.Lock()
		delete(s.mu.conns, c)
		s.mu.Unlock()
	}()
	return true
}

// Close stops accepting, breaks every connection (requests in flight see
// their context cancelled; their replies are dropped) and waits for every
// goroutine the server started. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.mu.closed = true
	for l := range s.mu.listeners {
		l.Close()
	}
	for c := range s.mu.conns {
		c.kill()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// setNoDelay turns Nagle off on a TCP connection (Go's default, made
// explicit: a 32-byte reply must not wait for an ACK).
func setNoDelay(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAlive(true)
		_ = tc.SetKeepAlivePeriod(15 * time.Second)
	}
}

// deadline moves one direction's deadline of a connection lazily: at most
// once per half timeout, so that a busy connection pays one clock read per
// frame.
type deadline struct {
	at    time.Time
	set   bool
	write bool // the write deadline, else the read deadline
}

func (d *deadline) apply(nc net.Conn, t time.Time) {
	if d.write {
		_ = nc.SetWriteDeadline(t)
	} else {
		_ = nc.SetReadDeadline(t)
	}
}

// arm makes sure the deadline is at least timeout/2 away.
func (d *deadline) arm(nc net.Conn, timeout time.Duration) {
	now := time.Now()
	if d.set && d.at.Sub(now) >= timeout/2 {
		return
	}
	d.at, d.set = now.Add(timeout), true
	d.apply(nc, d.at)
}

// disarm removes the deadline (an idle connection waits forever).
func (d *deadline) disarm(nc net.Conn) {
	if d.set {
		d.set = false
		d.apply(nc, time.Time{})
	}
}

// newBufio returns a connection's buffered reader and writer.
func newBufio(nc net.Conn) (*bufio.Reader, *bufio.Writer) {
	return newReader(nc), bufio.NewWriterSize(nc, bufferBytes)
}

func newReader(nc net.Conn) *bufio.Reader { return bufio.NewReaderSize(nc, bufferBytes) }
