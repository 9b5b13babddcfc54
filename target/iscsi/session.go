package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"cairn/target"
	"cairn/target/reservation"
)

// Errors that end a connection.
var (
	errLogout      = errors.New("iscsi: logged out")
	errNopTimeout  = errors.New("iscsi: NOP-In ping not answered")
	errProtocol    = errors.New("iscsi: protocol error")
	errLoginFailed = errors.New("iscsi: login failed")
	// errLoginRedirected: the login was sent to another portal.
	errLoginRedirected = errors.New("iscsi: login redirected")
	// errRequestTimeout: a PDU or a WRITE's Data-Out did not arrive within
	// RequestTimeout.
	errRequestTimeout = errors.New("iscsi: request not finished in time")
	// errAbandoned: the reader gave up waiting for the shared budget
	// because the connection is being dropped.
	errAbandoned = errors.New("iscsi: connection dropped")
)

// Reject reasons (RFC 7143 §11.17.1).
const (
	rejectDataDigest    = 0x02
	rejectProtocolError = 0x04
	rejectNotSupported  = 0x05
	rejectInvalidField  = 0x09
)

// session is one connection and, as MaxConnections is 1, its session. Its
// goroutine (serve) logs in and then reads PDUs; a writer goroutine sends
// PDUs; a pool of worker goroutines, started as commands need them (at
// most window+immediateMax) and kept until the session stops, executes
// the commands; task management and logout waits run on helper
// goroutines. serve owns and waits for them all.
type session struct {
	srv *Server
	nc  net.Conn
	br  *bufio.Reader
	bw  *bufio.Writer // the writer goroutine's, after login
	log *slog.Logger

	// Set during login, constant afterwards.
	p                         params
	d                         digests
	lun                       *lun // nil for discovery sessions
	targetName, initiatorName string
	isid                      [6]byte
	nexus                     reservation.Nexus // of initiatorName and isid
	nx                        *nexus            // what the SCSI layer sees of it; nil for discovery
	tsih                      uint16
	discovery                 bool
	window                    int

	ip      string // initiator IP, as counted by the server's ConnLimit
	refused string // why the connection is past the server's limits; "" if admitted

	// quit is closed (once, by abandon) to wake a reader waiting for the
	// shared budget: the connection is being dropped.
	quit          chan struct{}
	quitOnce      sync.Once
	killed        atomic.Bool  // dropped by the server (Close, Disconnect, reinstatement)
	replyTimedOut atomic.Bool  // the writer hit ReplyTimeout
	collecting    atomic.Int32 // tasks in taskCollecting state
	writeDeadline time.Time    // writer-owned

	ctx      context.Context // parent of every task's context
	cancel   context.CancelFunc
	out      chan outPDU
	stopping chan struct{} // closed when teardown starts
	finished chan struct{} // closed when teardown is complete
	flushed  chan struct{} // closed when the logout response is written

	tasksWG, auxWG, writerWG, workersWG sync.WaitGroup

	// work hands a dispatched task to an idle worker (unbuffered: a send
	// succeeds only when one is waiting). Workers live until the session
	// stops, so a command runs on a goroutine whose stack has already grown
	// to what the device needs: a goroutine per command spent a third of
	// the daemon's CPU copying stacks under an iSCSI load. There are never
	// more workers than tasks ever in flight at once, which the command
	// window and immediateMax bound.
	work    chan *task
	workers int // reader-owned

	// Per-PDU scratch kept in the session so that it does not escape to
	// the heap per PDU: the reader's header and pad, the writer's PDU and
	// digest.
	rh   header
	rpad [4 + digestBytes]byte
	wp   outPDU
	wd   [digestBytes]byte

	statSN uint32 // writer-owned once in full feature phase
	// cmdWindow packs ExpCmdSN<<32 | MaxCmdSN so that the writer reads a
	// consistent pair.
	cmdWindow atomic.Uint64
	// tasks mirrors len(mu.tasks) for the writer (see writeLoop).
	tasks atomic.Int32

	mu struct {
		sync.Mutex
		tasks     map[uint32]*task
		window    cmdWindow // CmdSN numbering and the counted commands in flight
		immediate int       // immediate commands in flight
		bytes     int       // data buffer bytes reserved
		nextTTT   uint32
	}

	// Reader-owned state.
	hdrAHS          [ahsBytesMax]byte
	pingOutstanding bool
	pingTTT         uint32
	pingSent        time.Time
	lastData        time.Time // the last Data-Out, or the WRITE that started collecting
	text            struct {
		request []byte // accumulated Text Request data (C bit)
		reply   []byte // rest of a long Text Response
		ttt     uint32
	}
	loggedOut bool
}

func newSession(srv *Server, nc net.Conn) *session {
	s := &session{
		srv:      srv,
		nc:       nc,
		br:       bufio.NewReaderSize(nc, 64<<10),
		log:      srv.log.With("remote", nc.RemoteAddr().String()),
		stopping: make(chan struct{}),
		finished: make(chan struct{}),
		flushed:  make(chan struct{}),
		out:      make(chan outPDU, outQueuePDUs),
		work:     make(chan *task),
		window:   srv.opts.CommandsInFlightMax,
		ip:       target.AddrIP(nc.RemoteAddr()),
		quit:     make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(ctxBackground)
	s.mu.tasks = make(map[uint32]*task)
	return s
}

// serve runs the connection to its end.
func (s *session) serve() {
	defer close(s.finished)
	defer s.srv.untrack(s)
	if ok, why := s.srv.limit.Admit(s.ip); ok {
		defer s.srv.limit.Leave(s.ip)
	} else {
		s.refused = why
	}
	err := s.login()
	if err == nil {
		s.bw = bufio.NewWriterSize(s.nc, 64<<10)
		s.writerWG.Add(1)
		go s.writeLoop()
		err = s.readLoop()
	}
	s.teardown(err)
}

// login runs the login phase on the connection.
func (s *session) login() error {
	deadline := time.Now().Add(s.srv.opts.LoginTimeout)
	s.nc.SetDeadline(deadline)
	cfg := s.srv.loginConfig()
	cfg.refuse = s.refused
	l := newLogin(cfg)
	var buf []byte
	for {
		req, err := s.readLoginPDU(&buf)
		if err != nil {
			return err
		}
		step := l.step(&req)
		if step.done {
			step = s.attachLogin(l, step)
		}
		out := appendPDU(nil, &step.resp, digests{})
		if _, err := s.nc.Write(out); err != nil {
			return fmt.Errorf("%w: write: %w", errLoginFailed, err)
		}
		if step.redirect {
			s.log.Info("iscsi: login redirected", "initiator", l.initiatorName, "target", l.targetName,
				"to", l.redirectAddr, "reason", l.failReason)
			return fmt.Errorf("%w: %s", errLoginRedirected, l.failReason)
		}
		if step.fail {
			s.log.Warn("iscsi: login refused", "initiator", l.initiatorName, "target", l.targetName,
				"status", fmt.Sprintf("%#04x", step.resp.hdr.u16(36)), "reason", l.failReason)
			return fmt.Errorf("%w: %s", errLoginFailed, l.failReason)
		}
		if step.done {
			s.enterFullFeature(l)
			return nil
		}
	}
}

// readLoginPDU reads one Login Request (no digests yet) into *buf.
func (s *session) readLoginPDU(buf *[]byte) (PDU, error) {
	var h header
	if _, err := io.ReadFull(s.br, h[:]); err != nil {
		return PDU{}, fmt.Errorf("%w: read: %w", errLoginFailed, err)
	}
	n := wireBytes(h.ahsBytes(), h.dataBytes(), digests{}) - bhsBytes
	if h.dataBytes() > loginDataMax {
		return PDU{}, fmt.Errorf("%w: login PDU of %d data bytes", errLoginFailed, h.dataBytes())
	}
	b := append((*buf)[:0], h[:]...)
	b = append(b, make([]byte, n)...)
	*buf = b
	if _, err := io.ReadFull(s.br, b[bhsBytes:]); err != nil {
		return PDU{}, fmt.Errorf("%w: read: %w", errLoginFailed, err)
	}
	req, _, err := parsePDU(b, digests{}, loginDataMax)
	if err != nil {
		return PDU{}, fmt.Errorf("%w: %w", errLoginFailed, err)
	}
	return req, nil
}

// attachLogin takes the negotiated parameters of a login that succeeded
// and attaches the session to its target and to the server: the final
// step, or a redirection or refusal if the target moved or went away or
// the server refuses the session.
func (s *session) attachLogin(l *login, step loginStep) loginStep {
	s.p, s.d = l.params, l.params.digests()
	s.initiatorName, s.isid = l.initiatorName, l.isid
	s.nexus = reservation.NewNexus(l.initiatorName, l.isid)
	s.discovery = l.sessionType == sessionDiscovery
	if !s.discovery {
		dev, ok := s.srv.opts.Targets.Lookup(l.targetName)
		if !ok {
			if node, addr, moved := s.srv.locate(l.targetName); moved {
				l.redirectAddr = addr
				return l.redirect(addr, fmt.Sprintf("target %s moved to node %s at %s during login", l.targetName, node, addr))
			}
			return l.reject(statusNotFound, "target went away during login")
		}
		s.targetName = l.targetName
		s.lun = s.srv.lunFor(l.targetName, dev)
	}
	if step.fail {
		return step
	}
	if err := s.srv.register(s); err != nil {
		return l.reject(statusTargetError, err.Error())
	}
	step.resp.hdr.setU16(14, s.tsih)
	return step
}

// enterFullFeature starts the full feature phase of a session that
// logged in: the command window opens and, on a normal session, the I_T
// nexus attaches to its unit.
func (s *session) enterFullFeature(l *login) {
	s.statSN = l.statSN
	s.mu.window = newCmdWindow(l.cmdSN, s.window)
	s.cmdWindow.Store(s.mu.window.packed())
	s.nc.SetDeadline(time.Time{})
	// Every device call of the session's commands carries its I_T
	// nexus: the device checks reservations against it.
	s.ctx = reservation.WithNexus(s.ctx, s.nexus)
	s.log = s.log.With("initiator", s.initiatorName, "target", s.targetName, "tsih", s.tsih)
	if s.lun != nil {
		s.nx = newNexus(s.nexus, s.tsih, s.lun.dev.Info().Size, s.log, s)
		s.lun.attach(s.nx)
	}
	s.log.Info("iscsi: login", "discovery", s.discovery, "params", s.p.String())
}

// kill drops the connection from outside its goroutines: the reader sees
// the closed socket (or its abandoned budget wait) and tears down.
func (s *session) kill() {
	s.killed.Store(true)
	s.abandon()
	s.nc.Close()
}

// abandon wakes the reader if it waits for the shared budget; idempotent.
func (s *session) abandon() {
	s.quitOnce.Do(func() { close(s.quit) })
}

// disconnectKind classifies why the connection ended (a target.Disconnect*
// label).
func (s *session) disconnectKind(err error) string {
	switch {
	case s.refused != "":
		return target.DisconnectLimit
	case s.killed.Load():
		return target.DisconnectServer
	case s.replyTimedOut.Load():
		return target.DisconnectReplyTimeout
	case errors.Is(err, errLoginRedirected):
		return target.DisconnectRedirected
	case errors.Is(err, errLoginFailed):
		return target.DisconnectHandshake
	case err == nil, errors.Is(err, errLogout), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return target.DisconnectClientClosed
	case errors.Is(err, errRequestTimeout), errors.Is(err, os.ErrDeadlineExceeded):
		return target.DisconnectRequestTimeout
	case errors.Is(err, errNopTimeout):
		return target.DisconnectPingTimeout
	case errors.Is(err, errProtocol), errors.Is(err, errHeaderDigest), errors.Is(err, errDataDigest):
		return target.DisconnectProtocolError
	}
	return target.DisconnectIOError
}

// teardown ends the session: stop the writer, abort and wait for every
// task, release buffers and budget, unregister.
func (s *session) teardown(err error) {
	kind := s.disconnectKind(err)
	s.srv.disconnects.Add(kind)
	switch {
	case kind == target.DisconnectLimit, kind == target.DisconnectRedirected:
		// login logged the refusal or the redirection
	case err == nil, errors.Is(err, errLogout):
		if s.tsih != 0 {
			s.log.Info("iscsi: logout")
		}
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed) && kind != target.DisconnectReplyTimeout:
		if s.tsih != 0 {
			s.log.Info("iscsi: connection closed", "kind", kind)
		}
	default:
		if s.tsih != 0 || !errors.Is(err, errLoginFailed) {
			s.log.Warn("iscsi: connection failed", "kind", kind, "err", err)
		}
	}
	close(s.stopping)
	s.cancel()
	s.nc.Close()
	s.mu.Lock()
	for _, t := range s.mu.tasks {
		t.state.CompareAndSwap(taskRunning, taskAborted)
		t.ctx.cancel()
	}
	s.mu.Unlock()
	s.tasksWG.Wait()
	s.workersWG.Wait()
	s.auxWG.Wait()
	s.writerWG.Wait()
	s.mu.Lock()
	for itt, t := range s.mu.tasks {
		if t.state.Load() == taskCollecting && t.buf != nil {
			target.PutBuffer(t.buf)
			t.buf = nil
		}
		s.releaseBudget(t)
		delete(s.mu.tasks, itt)
		s.tasks.Add(-1)
	}
	s.mu.Unlock()
	// PDUs queued after the writer stopped: nobody sends them now.
	for len(s.out) > 0 {
		p := <-s.out
		s.releasePDU(&p)
	}
	if s.lun != nil {
		if s.nx != nil {
			s.lun.detach(s.nx)
		}
		if s.tsih != 0 {
			s.lun.releaseSPC2(s.nexus, false) // I_T nexus loss
		}
	}
}

// acceptCmdSN admits a non-immediate PDU's CmdSN: false (drop it
// silently, RFC 7143 §4.2.2.1) if it is outside [ExpCmdSN, MaxCmdSN].
// counted commands stay in flight until finishCounted or forget.
func (s *session) acceptCmdSN(sn uint32, counted bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mu.window.accept(sn, counted) {
		s.log.Debug("iscsi: CmdSN outside the window", "cmdsn", sn, "exp", s.mu.window.exp, "max", s.mu.window.maxSN())
		return false
	}
	s.cmdWindow.Store(s.mu.window.packed())
	return true
}

// finishCountedLocked frees a counted command's slot in the window.
func (s *session) finishCountedLocked() {
	s.mu.window.finish()
	s.cmdWindow.Store(s.mu.window.packed())
}

// finishCounted ends a non-immediate command that was counted in flight:
// its slot in the window opens.
func (s *session) finishCounted() {
	s.mu.Lock()
	s.finishCountedLocked()
	s.mu.Unlock()
}

// newTTTLocked returns a fresh target transfer tag.
func (s *session) newTTTLocked() uint32 {
	s.mu.nextTTT++
	if s.mu.nextTTT == reservedTag || s.mu.nextTTT == 0 {
		s.mu.nextTTT = 1
	}
	return s.mu.nextTTT
}
