package iscsi

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"cairn/target"
)

// Targets names the devices a server exports: each target IQN is one
// device, served as LUN 0. Lookup and List are called from connection
// goroutines, concurrently. A Targets that also implements target.Locator
// has logins to the targets it does not serve but locates redirected to
// the portal it names (status 0x0101, target moved temporarily), and
// SendTargets discovery lists them at that portal.
type Targets interface {
	// Lookup returns the device of target iqn.
	Lookup(iqn string) (target.Device, bool)
	// List returns every target IQN (SendTargets discovery).
	List() []string
}

// Defaults of Options.
const (
	CommandsInFlightMaxDefault = 128       // per session: the command window
	TransferBytesMaxDefault    = 32 << 20  // one READ or WRITE
	InFlightBytesMaxDefault    = 256 << 20 // per session
	RecvDataSegmentMaxDefault  = 256 << 10 // our MaxRecvDataSegmentLength
	NopInIntervalDefault       = 15 * time.Second
	NopInTimeoutDefault        = 30 * time.Second
	LoginTimeoutDefault        = 30 * time.Second

	immediateMax    = 16               // immediate commands in flight beyond the window
	writeChunkBytes = 64 << 10         // PDU data written between write deadline renewals
	directDataBytes = 32 << 10         // PDU data from this size on is written to the socket unbuffered
	reinstateWait   = 10 * time.Second // for an old session to end on reinstatement
	outQueuePDUs    = 256              // PDUs queued for the writer
	loginDataMax    = 64 << 10
	portalGroupTag  = "1"
)

// Options configure a Server. The zero value works except for Targets.
type Options struct {
	Targets Targets
	// Logger receives one line per session login, logout and failure; nil
	// logs nothing.
	Logger *slog.Logger
	// CHAP returns the credentials a target requires; ok false means the
	// target requires none. It is called with "" for discovery sessions.
	// nil means no target requires authentication.
	CHAP func(iqn string) (c Credentials, ok bool)
	// BlockSize returns the logical block size of a target: 512 (the
	// default, 4096 physical) or 4096. nil means 512 for every target.
	BlockSize func(iqn string) int
	// CommandsInFlightMax bounds the commands of one session between being
	// received and answered; it is the command window (MaxCmdSN - ExpCmdSN
	// + 1) opened to the initiator. 0 means CommandsInFlightMaxDefault.
	CommandsInFlightMax int
	// TransferBytesMax bounds the data of one command (Block Limits VPD
	// MAXIMUM TRANSFER LENGTH). 0 means TransferBytesMaxDefault; at most
	// 32 MiB.
	TransferBytesMax int
	// InFlightBytesMax bounds the data buffers of one session's commands in
	// flight; a command past it gets TASK SET FULL. 0 means
	// InFlightBytesMaxDefault; raised to TransferBytesMax if smaller.
	InFlightBytesMax int
	// RecvDataSegmentMax is our MaxRecvDataSegmentLength. 0 means
	// RecvDataSegmentMaxDefault.
	RecvDataSegmentMax int
	// NopInInterval is how long a connection may be idle before the target
	// pings it with a NOP-In; NopInTimeout how long the answer may take
	// before the connection is dropped. 0 means the defaults; a negative
	// interval disables pings.
	NopInInterval, NopInTimeout time.Duration
	// LoginTimeout bounds a login from accept to full feature phase.
	LoginTimeout time.Duration
	// Reservations keeps persistent reservations across restarts: a
	// PERSISTENT RESERVE OUT is acknowledged once saved there, and a
	// target's state is loaded at its first command. nil keeps them in
	// memory only (and APTPL is refused).
	Reservations ReservationStore
	// Budget bounds the data buffer bytes in flight across every session
	// sharing it (with other servers too): a command takes its buffer's
	// bytes when it is admitted and returns them once its data is no
	// longer held (Data-In written, or Data-Out written to the device).
	// While it is exhausted the reader stops reading (a session with a
	// WRITE still receiving data answers new commands TASK SET FULL
	// instead, so that it never waits for itself). nil means no bound
	// beyond InFlightBytesMax per session.
	Budget *target.Budget
	// ReplyTimeout: an initiator that does not read what the target sends
	// for this long is disconnected, its commands aborted and their
	// buffers returned. 0 means target.ReplyTimeoutDefault.
	ReplyTimeout time.Duration
	// RequestTimeout: a PDU whose header has begun to arrive must be read
	// whole within this long, and a WRITE receiving Data-Out must get some
	// at least this often, or the connection is closed. An idle
	// connection is probed by NOP-In instead. 0 means
	// target.RequestTimeoutDefault.
	RequestTimeout time.Duration
	// ConnectionsMax bounds the connections of the server, and
	// ConnectionsPerAddrMax those from one initiator IP; past either a
	// login gets status 0x0302 (target error, out of resources: the
	// initiator may retry later) and the connection is closed. 0 means
	// unlimited.
	ConnectionsMax, ConnectionsPerAddrMax int
	// Limit, if set, is a connection limit shared with other servers (the
	// daemon's NBD and iSCSI together) and replaces the two fields above.
	Limit *target.ConnLimit
}

func (o Options) withDefaults() Options {
	if o.Targets == nil {
		panic("iscsi: Options.Targets is nil")
	}
	if o.CommandsInFlightMax < 0 || o.TransferBytesMax < 0 || o.InFlightBytesMax < 0 || o.RecvDataSegmentMax < 0 ||
		o.ReplyTimeout < 0 || o.RequestTimeout < 0 || o.ConnectionsMax < 0 || o.ConnectionsPerAddrMax < 0 {
		panic(fmt.Sprintf("iscsi: negative bound in %+v", o))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CommandsInFlightMax == 0 {
		o.CommandsInFlightMax = CommandsInFlightMaxDefault
	}
	if o.TransferBytesMax == 0 {
		o.TransferBytesMax = TransferBytesMaxDefault
	}
	if o.TransferBytesMax < 64<<10 || o.TransferBytesMax > 32<<20 {
		panic(fmt.Sprintf("iscsi: TransferBytesMax %d outside [64 KiB, 32 MiB]", o.TransferBytesMax))
	}
	if o.InFlightBytesMax == 0 {
		o.InFlightBytesMax = InFlightBytesMaxDefault
	}
	o.InFlightBytesMax = max(o.InFlightBytesMax, o.TransferBytesMax)
	if o.RecvDataSegmentMax == 0 {
		o.RecvDataSegmentMax = RecvDataSegmentMaxDefault
	}
	if o.RecvDataSegmentMax < 512 || o.RecvDataSegmentMax > dataSegmentBytesMax {
		panic(fmt.Sprintf("iscsi: RecvDataSegmentMax %d outside [512, 2^24-1]", o.RecvDataSegmentMax))
	}
	if o.NopInInterval == 0 {
		o.NopInInterval = NopInIntervalDefault
	}
	if o.NopInTimeout <= 0 {
		o.NopInTimeout = NopInTimeoutDefault
	}
	if o.LoginTimeout <= 0 {
		o.LoginTimeout = LoginTimeoutDefault
	}
	if o.ReplyTimeout == 0 {
		o.ReplyTimeout = target.ReplyTimeoutDefault
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = target.RequestTimeoutDefault
	}
	return o
}

// Server serves iSCSI on any number of listeners.
type Server struct {
	opts Options
	log  *slog.Logger
	wg   sync.WaitGroup // connection goroutines

	limit       *target.ConnLimit
	disconnects target.Reasons

	mu struct {
		sync.Mutex
		closed    bool
		listeners map[net.Listener]struct{}
		conns     map[*session]struct{} // every connection, logging in or logged in
		sessions  map[uint16]*session   // by TSIH, once logged in
		luns      map[string]*lun
		nextTSIH  uint16
	}
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("iscsi: server closed")

// NewServer returns a server; it serves once Serve is called.
func NewServer(opts Options) *Server {
	s := &Server{opts: opts.withDefaults()}
	s.log = s.opts.Logger
	s.limit = s.opts.Limit
	if s.limit == nil {
		s.limit = target.NewConnLimit(s.opts.ConnectionsMax, s.opts.ConnectionsPerAddrMax)
	}
	s.mu.listeners = make(map[net.Listener]struct{})
	s.mu.conns = make(map[*session]struct{})
	s.mu.sessions = make(map[uint16]*session)
	s.mu.luns = make(map[string]*lun)
	return s
}

// Serve accepts connections on l and serves each on its own goroutine. It
// returns nil after Close, or the listener's error. Serve closes l.
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
		c := newSession(s, nc)
		if !s.track(c) {
			nc.Close()
			return false
		}
		go func() {
			defer s.wg.Done()
			c.serve()
		}()
		return true
	})
	if err != nil {
		return fmt.Errorf("iscsi: %w", err)
	}
	return nil
}

func (s *Server) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.closed
}

func (s *Server) track(c *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.mu.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// untrack forgets a connection at the end of its teardown.
func (s *Server) untrack(c *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mu.conns, c)
	if c.tsih != 0 && s.mu.sessions[c.tsih] == c {
		delete(s.mu.sessions, c.tsih)
	}
}

// Close stops every listener and connection and waits for their
// goroutines. Commands in flight are aborted. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
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

// Sessions returns the number of logged-in sessions of target iqn.
func (s *Server) Sessions(iqn string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.mu.sessions {
		if c.targetName == iqn {
			n++
		}
	}
	return n
}

// Stats are the server's counters for metrics.
type Stats struct {
	Connections int               // admitted and open now, logging in or logged in
	Disconnects map[string]uint64 // closed connections by reason (target.Disconnect*), refusals included
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{Connections: s.limit.Count(), Disconnects: s.disconnects.Snapshot()}
}

// Disconnect drops every session of target iqn, aborting its commands (as
// a connection loss would). It returns without waiting for them to end.
func (s *Server) Disconnect(iqn string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.mu.sessions {
		if c.targetName == iqn {
			c.kill()
		}
	}
}

// loginConfig returns the login state machine's view of the server.
func (s *Server) loginConfig() loginConfig {
	return loginConfig{
		locate: s.locate,
		targetExists: func(name string) bool {
			_, ok := s.opts.Targets.Lookup(name)
			return ok
		},
		credentials:        s.opts.CHAP,
		sessionExists:      s.sessionExists,
		random:             rand.Reader,
		recvDataSegmentMax: s.opts.RecvDataSegmentMax,
		cmdWindow:          uint32(s.opts.CommandsInFlightMax),
	}
}

// locate asks Targets, if it is a target.Locator, where a target it does not
// serve is attached.
func (s *Server) locate(iqn string) (node, addr string, ok bool) {
	if l, is := s.opts.Targets.(target.Locator); is {
		return l.Locate(iqn)
	}
	return "", "", false
}

func (s *Server) sessionExists(tsih uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.mu.sessions[tsih]
	return ok
}

// lunFor returns the shared logical unit of target iqn over dev.
func (s *Server) lunFor(iqn string, dev target.Device) *lun {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, ok := s.mu.luns[iqn]; ok && u.dev == dev {
		return u
	}
	bs := 512
	if s.opts.BlockSize != nil {
		bs = s.opts.BlockSize(iqn)
	}
	if bs != 512 && bs != 4096 {
		bs = 512
	}
	u := newLUN(iqn, dev, bs, s.opts.TransferBytesMax, s.opts.Reservations)
	s.mu.luns[iqn] = u
	return u
}

// register admits a logged-in session: an older session of the same
// initiator, ISID and target is reinstated (dropped, its tasks aborted,
// and waited for), then a TSIH is assigned.
func (s *Server) register(c *session) error {
	var old []*session
	s.mu.Lock()
	for _, o := range s.mu.sessions {
		if o.initiatorName == c.initiatorName && o.isid == c.isid && o.targetName == c.targetName {
			old = append(old, o)
		}
	}
	s.mu.Unlock()
	for _, o := range old {
		s.log.Info("iscsi: session reinstatement", "initiator", o.initiatorName, "target", o.targetName, "tsih", o.tsih)
		o.kill()
		select {
		case <-o.finished:
		case <-time.After(reinstateWait):
			return fmt.Errorf("iscsi: reinstated session %#x did not end within %v", o.tsih, reinstateWait)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return ErrServerClosed
	}
	if len(s.mu.sessions) >= 0xfffe {
		return fmt.Errorf("iscsi: too many sessions")
	}
	for {
		s.mu.nextTSIH++
		if _, used := s.mu.sessions[s.mu.nextTSIH]; s.mu.nextTSIH != 0 && !used {
			break
		}
	}
	c.tsih = s.mu.nextTSIH
	s.mu.sessions[c.tsih] = c
	return nil
}

// ctxBackground is the parent of every session's context.
var ctxBackground = context.Background()
