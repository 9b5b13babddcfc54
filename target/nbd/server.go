package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"cairn/target"
)

// Exports names the devices a server serves. Lookup and List are called from
// connection goroutines, concurrently. An Exports that also implements
// target.Locator has the exports it does not serve but knows the node of
// refused with a message naming that node and its address.
type Exports interface {
	// Lookup returns the device exported as name.
	Lookup(name string) (target.Device, bool)
	// List returns the names of all exports (OPT_LIST).
	List() []string
}

// Defaults of Options.
const (
	InFlightMaxDefault      = 128      // requests per connection
	RequestBytesMaxDefault  = 32 << 20 // READ/WRITE payload; the document's interoperable maximum
	InFlightBytesMaxDefault = 128 << 20

	requestBytesMin   = 64 << 10 // unfragmented reads up to 64 KiB must work
	requestBytesLimit = 32 << 20 // the NBD block size maximum we advertise
)

// Timeouts.
const (
	handshakeTimeout     = 30 * time.Second // from accept to transmission
	tlsHandshakeTimeout  = 10 * time.Second // from the STARTTLS reply to the end of the TLS handshake (within handshakeTimeout)
	closeGrace           = 10 * time.Second // Close waits this long for in-flight requests before cancelling them
	writeDiscardBytesMax = 128 << 20        // an oversized WRITE up to this is skipped and failed; past it the client is hung up on
)

// TLSMode says whether a server with a TLS config lets clients negotiate in
// plain text.
type TLSMode string

const (
	// TLSOff (or ""): NBD_OPT_STARTTLS is refused (NBD_REP_ERR_POLICY with
	// a TLS config, NBD_REP_ERR_UNSUP without); the protocol document's
	// NOTLS mode.
	TLSOff TLSMode = "off"
	// TLSOptional: a client may upgrade with NBD_OPT_STARTTLS, or use any
	// export in plain text (SELECTIVETLS with no TLS-only export).
	TLSOptional TLSMode = "optional"
	// TLSRequire: before TLS, every option but NBD_OPT_STARTTLS and
	// NBD_OPT_ABORT is answered NBD_REP_ERR_TLS_REQD and
	// NBD_OPT_EXPORT_NAME hangs up (FORCEDTLS).
	TLSRequire TLSMode = "require"
)

// ParseTLSMode returns the mode named s: "", "off", "optional" or
// "require".
func ParseTLSMode(s string) (TLSMode, error) {
	switch m := TLSMode(s); m {
	case "", TLSOff:
		return TLSOff, nil
	case TLSOptional, TLSRequire:
		return m, nil
	}
	return "", fmt.Errorf("%w: TLS mode %q (want off, optional or require)", ErrInvalidOption, s)
}

// ErrInvalidOption: a value in Options (or one parsed for it) is not valid.
var ErrInvalidOption = errors.New("nbd: invalid option")

// Options configure a Server. The zero value works except for Exports.
type Options struct {
	Exports Exports
	// Logger receives one line per connection attach and close; nil logs
	// nothing.
	Logger *slog.Logger
	// InFlightMax bounds the requests of one connection being executed or
	// waiting for their reply; past it the server stops reading from the
	// connection until one completes. 0 means InFlightMaxDefault.
	InFlightMax int
	// RequestBytesMax bounds the payload of one READ or WRITE, and is
	// advertised as the maximum payload size. 0 means
	// RequestBytesMaxDefault; at least 64 KiB, at most 32 MiB.
	RequestBytesMax int
	// InFlightBytesMax bounds the payload bytes of one connection's
	// in-flight requests (a BLOCK_STATUS counts its largest reply, 128 KiB).
	// 0 means InFlightBytesMaxDefault; raised to fit the largest request
	// if smaller.
	InFlightBytesMax int
	// Default is the export a client gets when it asks for the empty name;
	// "" means none.
	Default string
	// Budget bounds the payload bytes in flight across every connection
	// sharing it (with other servers too): a READ, WRITE or BLOCK_STATUS
	// takes its payload bytes before its buffer and returns them once its
	// reply is written. While it is exhausted the reader stops reading. nil
	// means no bound beyond InFlightBytesMax per connection.
	Budget *target.Budget
	// ReplyTimeout: a client that does not read its replies for this long
	// is disconnected (its requests' buffers and budget are returned). 0
	// means target.ReplyTimeoutDefault.
	ReplyTimeout time.Duration
	// RequestTimeout: a request whose header has begun to arrive must be
	// read whole (header, then WRITE payload) within this long, or the
	// connection is closed. A connection idle between requests stays open.
	// 0 means target.RequestTimeoutDefault.
	RequestTimeout time.Duration
	// ConnectionsMax bounds the connections of the server, and
	// ConnectionsPerAddrMax those from one client IP; past either a new
	// connection gets the greeting and is closed. 0 means unlimited.
	ConnectionsMax, ConnectionsPerAddrMax int
	// Limit, if set, is a connection limit shared with other servers (the
	// daemon's NBD and iSCSI together) and replaces the two fields above.
	Limit *target.ConnLimit
	// TLS is the server side of NBD_OPT_STARTTLS: its certificate, and its
	// ClientAuth and ClientCAs if clients must present certificates. It
	// is cloned; versions below TLS 1.2 are never offered. nil means no
	// TLS: TLSMode must then be off.
	TLS *tls.Config
	// TLSMode says whether clients must start TLS: TLSOff ("" too),
	// TLSOptional or TLSRequire.
	TLSMode TLSMode
}

func (o Options) withDefaults() Options {
	if o.Exports == nil {
		panic("nbd: Options.Exports is nil")
	}
	if o.InFlightMax < 0 || o.RequestBytesMax < 0 || o.InFlightBytesMax < 0 || o.ReplyTimeout < 0 ||
		o.RequestTimeout < 0 || o.ConnectionsMax < 0 || o.ConnectionsPerAddrMax < 0 {
		panic(fmt.Sprintf("nbd: negative bound in %+v", o))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.InFlightMax == 0 {
		o.InFlightMax = InFlightMaxDefault
	}
	if o.RequestBytesMax == 0 {
		o.RequestBytesMax = RequestBytesMaxDefault
	}
	if o.RequestBytesMax < requestBytesMin || o.RequestBytesMax > requestBytesLimit {
		panic(fmt.Sprintf("nbd: RequestBytesMax %d outside [%d, %d]", o.RequestBytesMax, requestBytesMin, requestBytesLimit))
	}
	if o.InFlightBytesMax == 0 {
		o.InFlightBytesMax = InFlightBytesMaxDefault
	}
	o.InFlightBytesMax = max(o.InFlightBytesMax, o.RequestBytesMax, 2*blockStatusBytes)
	if o.ReplyTimeout == 0 {
		o.ReplyTimeout = target.ReplyTimeoutDefault
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = target.RequestTimeoutDefault
	}
	mode, err := ParseTLSMode(string(o.TLSMode))
	if err != nil {
		panic(err.Error())
	}
	o.TLSMode = mode
	if o.TLS == nil && mode != TLSOff {
		panic(fmt.Sprintf("nbd: TLSMode %q without a TLS config", mode))
	}
	if o.TLS != nil {
		o.TLS = o.TLS.Clone()
		o.TLS.MinVersion = max(o.TLS.MinVersion, tls.VersionTLS12)
	}
	return o
}

// Server serves NBD on any number of listeners and connections.
type Server struct {
	opts Options
	log  *slog.Logger
	// handshakeTimeout bounds the handshake, tlsHandshakeTimeout its TLS
	// part; fields so tests can shorten them.
	handshakeTimeout    time.Duration
	tlsHandshakeTimeout time.Duration
	ctx                 context.Context // cancelled when Close gives up waiting
	cancel              context.CancelFunc
	wg                  sync.WaitGroup // connection goroutines
	limit               *target.ConnLimit
	disconnects         target.Reasons

	mu struct {
		sync.Mutex
		closed    bool
		listeners map[net.Listener]struct{}
		conns     map[*conn]struct{}
	}
}

// NewServer returns a server; it serves once Serve or ServeConn is called.
func NewServer(opts Options) *Server {
	s := &Server{opts: opts.withDefaults(), handshakeTimeout: handshakeTimeout, tlsHandshakeTimeout: tlsHandshakeTimeout}
	s.log = s.opts.Logger
	s.limit = s.opts.Limit
	if s.limit == nil {
		s.limit = target.NewConnLimit(s.opts.ConnectionsMax, s.opts.ConnectionsPerAddrMax)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.listeners = make(map[net.Listener]struct{})
	s.mu.conns = make(map[*conn]struct{})
	return s
}

// ErrServerClosed is returned by Serve and ServeConn called after Close.
var ErrServerClosed = errors.New("nbd: server closed")

// Serve accepts connections on l and serves each on its own goroutine. It
// returns nil when Close is called, or the listener's error (for instance
// when l is closed by someone else). Serve closes l.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.mu.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	err := target.AcceptLoop(l, s.closed, func(nc net.Conn) bool {
		c := s.newConn(nc)
		if !s.track(c) {
			nc.Close()
			return false
		}
		go func() {
			defer s.untrack(c)
			c.serve()
		}()
		return true
	})
	if err != nil {
		return fmt.Errorf("nbd: %w", err)
	}
	return nil
}

// ServeConn serves one connection on the calling goroutine and returns when
// it is closed. It closes nc.
func (s *Server) ServeConn(nc net.Conn) error {
	c := s.newConn(nc)
	if !s.track(c) {
		nc.Close()
		return ErrServerClosed
	}
	defer s.untrack(c)
	c.serve()
	return nil
}

func (s *Server) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.closed
}

// track registers c; false after Close.
func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.mu.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.mu.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Close stops the listeners, stops reading requests, waits for in-flight
// requests to be answered (cancelling them after a grace period), closes
// every connection and waits for every goroutine of the server. It is
// idempotent and safe to call from any goroutine.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.mu.closed {
		s.mu.closed = true
		for l := range s.mu.listeners {
			l.Close()
		}
		for c := range s.mu.conns {
			c.stopLocked()
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(closeGrace)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.cancel()
		s.mu.Lock()
		for c := range s.mu.conns {
			c.abandon()
			c.nc.Close()
		}
		s.mu.Unlock()
		<-done
	}
	s.cancel()
	return nil
}

// Connections returns the number of connections in transmission on export.
func (s *Server) Connections(export string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.mu.conns {
		if c.attached && c.export == export {
			n++
		}
	}
	return n
}

// Disconnect hard-disconnects every connection in transmission on export:
// in-flight requests are cancelled and the sockets closed. It does not wait
// for the connections' goroutines.
func (s *Server) Disconnect(export string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.mu.conns {
		if c.attached && c.export == export {
			c.forced.Store(true)
			c.abandon()
			c.cancel()
			c.nc.Close()
		}
	}
}

// Stats are the server's counters for metrics.
type Stats struct {
	Connections int               // admitted and open now, in handshake or transmission
	Disconnects map[string]uint64 // closed connections by reason (target.Disconnect*), refusals included
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{Connections: s.limit.Count(), Disconnects: s.disconnects.Snapshot()}
}

// Bufio sizes of a connection.
const (
	readBufferBytes  = 128 << 10
	writeBufferBytes = 64 << 10
)

func (s *Server) newConn(nc net.Conn) *conn {
	c := &conn{s: s, nc: nc, stream: nc, start: time.Now(), ip: target.AddrIP(nc.RemoteAddr()), quit: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(s.ctx)
	return c
}

// serve runs the handshake and, if it succeeds, transmission.
func (c *conn) serve() {
	defer c.cancel()
	defer c.nc.Close()
	if ok, why := c.s.limit.Admit(c.ip); !ok {
		c.refuse(why)
		return
	}
	defer c.s.limit.Leave(c.ip)
	c.br = bufio.NewReaderSize(c.nc, readBufferBytes)
	c.bw = bufio.NewWriterSize(c.nc, writeBufferBytes)

	reason := c.handshake()
	if reason == "" {
		reason = c.transmit()
	} else if c.kind == "" {
		c.kind = target.DisconnectHandshake
	}
	if c.kind == "" {
		c.kind = target.DisconnectIOError
	}
	c.s.disconnects.Add(c.kind)
	if c.tlsConn != nil && !c.forced.Load() && (c.kind == target.DisconnectClientClosed || c.kind == target.DisconnectServer) {
		// A clean end: tell the client with close_notify (bounded by
		// crypto/tls's own 5 s write deadline).
		c.tlsConn.Close()
	}
	args := []any{"remote", c.nc.RemoteAddr().String(), "export", c.export, "reason", reason,
		"kind", c.kind, "tls", c.tlsConn != nil, "duration", time.Since(c.start).Round(time.Millisecond)}
	if c.attached {
		args = append(args, "requests", c.requests)
	}
	c.s.log.Info("nbd: connection closed", args...)
}

// refuse sends the greeting to a connection past the connection limits and
// closes it: the client learns it reached an NBD server that will not serve
// it now.
func (c *conn) refuse(why string) {
	c.s.disconnects.Add(target.DisconnectLimit)
	c.s.log.Warn("nbd: connection refused", "remote", c.nc.RemoteAddr().String(), "reason", why)
	c.nc.SetWriteDeadline(time.Now().Add(c.s.handshakeTimeout))
	var greeting [GreetingSize]byte
	PutGreeting(&greeting, FlagFixedNewstyle|FlagNoZeroes)
	c.nc.Write(greeting[:])
}

// handshake negotiates an export. It returns "" when transmission may
// begin, or why the connection ends.
func (c *conn) handshake() (reason string) {
	c.handshakeDeadline = time.Now().Add(c.s.handshakeTimeout)
	c.nc.SetDeadline(c.handshakeDeadline)
	var greeting [GreetingSize]byte
	PutGreeting(&greeting, FlagFixedNewstyle|FlagNoZeroes)
	if _, err := c.nc.Write(greeting[:]); err != nil {
		return c.ioReason("handshake: write greeting", err)
	}
	var b [OptionHeaderSize]byte
	if _, err := io.ReadFull(c.br, b[:ClientFlagsSize]); err != nil {
		return c.ioReason("handshake: read client flags", err)
	}
	flags := be.Uint32(b[:])
	if flags&^(ClientFlagFixedNewstyle|ClientFlagNoZeroes) != 0 {
		return fmt.Sprintf("handshake: unknown client flags %#x", flags)
	}
	if flags&ClientFlagFixedNewstyle == 0 {
		return "handshake: client does not speak fixed newstyle"
	}
	n := negotiation{
		exports:         c.s.opts.Exports,
		defaultName:     c.s.opts.Default,
		requestBytesMax: c.s.opts.RequestBytesMax,
		noZeroes:        flags&ClientFlagNoZeroes != 0,
		tlsMode:         c.s.opts.TLSMode,
		tlsConfigured:   c.s.opts.TLS != nil,
	}
	for {
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return c.ioReason("handshake: read option", err)
		}
		h, err := ParseOptionHeader(b[:])
		if err != nil {
			return "handshake: " + err.Error()
		}
		var st step
		if h.Length > optionBytesMax {
			var drain bool
			st, drain = n.tooBig(h)
			if drain {
				if _, err := io.CopyN(io.Discard, c.br, int64(h.Length)); err != nil {
					return c.ioReason("handshake: skip option data", err)
				}
			}
		} else {
			data := make([]byte, h.Length)
			if _, err := io.ReadFull(c.br, data); err != nil {
				return c.ioReason("handshake: read option data", err)
			}
			st = n.option(h.Code, data)
		}
		if st.next == nextStartTLS && c.br.Buffered() > 0 {
			// The client must wait for the reply before it starts TLS;
			// bytes already here were sent in plain text and must not be
			// taken as sent over TLS.
			return "handshake: data sent after NBD_OPT_STARTTLS before its reply"
		}
		if len(st.reply) > 0 {
			if _, err := c.stream.Write(st.reply); err != nil {
				return c.ioReason("handshake: write reply", err)
			}
		}
		switch st.next {
		case nextStartTLS:
			if reason := c.startTLS(); reason != "" {
				return reason
			}
			n.startedTLS()
		case nextHangUp:
			if st.abort {
				c.kind = target.DisconnectClientClosed
			}
			return "handshake: " + st.reason
		case nextTransmit:
			return c.attach(n.chosen)
		}
	}
}

// attach moves the connection into transmission with export e.
func (c *conn) attach(e export) string {
	c.s.mu.Lock()
	if c.s.mu.closed {
		c.s.mu.Unlock()
		return "server closing"
	}
	c.nc.SetDeadline(time.Time{})
	c.export, c.dev, c.structured, c.allocation = e.name, e.dev, e.structured, e.allocation
	c.mapper, _ = e.dev.(target.Mapper)
	c.batcher, _ = e.dev.(target.BatchWriter)
	if cm, ok := e.dev.(target.ChangeMapper); ok && e.changed != "" {
		c.changed, c.changer = e.changed, cm
	}
	c.attached = true
	c.s.mu.Unlock()
	c.s.log.Info("nbd: connection attached", "remote", c.nc.RemoteAddr().String(), "export", e.name,
		"tls", c.tlsConn != nil, "structured", e.structured, "base_allocation", e.allocation, "changed_since", e.changed, "flags", fmt.Sprintf("%#x", e.flags))
	return ""
}

// startTLS runs the server side of the TLS handshake after STARTTLS was
// acknowledged, within tlsHandshakeTimeout (and the handshake's deadline),
// and moves the connection's reads and writes onto TLS. It returns "" on
// success, or why the connection ends.
func (c *conn) startTLS() string {
	tc := tls.Server(c.nc, c.s.opts.TLS)
	deadline := time.Now().Add(c.s.tlsHandshakeTimeout)
	if deadline.After(c.handshakeDeadline) {
		deadline = c.handshakeDeadline
	}
	c.nc.SetDeadline(deadline)
	limit := time.Until(deadline).Round(time.Millisecond)
	if err := tc.Handshake(); err != nil {
		if c.s.closed() {
			return c.ioReason("handshake: TLS", err)
		}
		c.kind = target.DisconnectHandshake
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Sprintf("handshake: TLS handshake not finished within %v", limit)
		}
		return "handshake: TLS: " + err.Error()
	}
	c.nc.SetDeadline(c.handshakeDeadline)
	// Socket deadlines and Close stay on c.nc (tls.Conn passes deadlines
	// through; closing the socket needs no TLS lock); bytes go over TLS.
	c.tlsConn, c.stream = tc, tc
	c.br.Reset(tc)
	c.bw.Reset(tc)
	st := tc.ConnectionState()
	c.s.log.Debug("nbd: TLS started", "remote", c.nc.RemoteAddr().String(), "version", tls.VersionName(st.Version),
		"cipher", tls.CipherSuiteName(st.CipherSuite), "client_certificate", len(st.PeerCertificates) > 0)
	return ""
}

// stopLocked asks the connection to stop: one in handshake is closed, one in
// transmission stops reading and finishes its in-flight requests. s.mu held.
func (c *conn) stopLocked() {
	if c.attached {
		c.stopping.Store(true)
		c.abandon()
		c.nc.SetReadDeadline(time.Now())
		return
	}
	c.nc.Close()
}

// abandon wakes the reader if it waits for the shared budget; idempotent.
func (c *conn) abandon() {
	c.quitOnce.Do(func() { close(c.quit) })
}

// ioReason describes why an I/O error (nil: the connection was abandoned)
// ended the connection, and sets c.kind. Reader goroutine only.
func (c *conn) ioReason(what string, err error) string {
	switch {
	case c.forced.Load():
		c.kind = target.DisconnectServer
		return "disconnected by the server's owner"
	case c.stopping.Load() || c.s.closed():
		c.kind = target.DisconnectServer
		return "server closing"
	case c.replyTimedOut.Load():
		c.kind = target.DisconnectReplyTimeout
		return fmt.Sprintf("%s: replies not read for %v", what, c.s.opts.ReplyTimeout)
	case err == nil:
		c.kind = target.DisconnectIOError
		return what + ": connection broken"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		c.kind = target.DisconnectClientClosed
		return what + ": client hung up"
	case errors.Is(err, os.ErrDeadlineExceeded) && c.attached:
		c.kind = target.DisconnectRequestTimeout
		return fmt.Sprintf("%s: not finished within %v", what, c.s.opts.RequestTimeout)
	case errors.Is(err, net.ErrClosed):
		c.kind = target.DisconnectIOError
		return what + ": connection closed"
	}
	c.kind = target.DisconnectIOError
	return what + ": " + err.Error()
}
