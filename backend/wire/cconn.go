package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// slotBits is the width of the slot index in a request id; the bits above
// count the slot's uses, so that a late reply never matches a later call.
const slotBits = 16

// cconn is one connection of a Client. Callers write requests through w;
// one reader goroutine matches replies to slots.
type cconn struct {
	c               *Client
	nc              net.Conn
	requestBytesMax int

	br  *bufio.Reader // reader goroutine only
	rdl deadline      // reader goroutine only

	w frameWriter // requests

	slots []*slot    // fixed at creation; index = id's low bits
	free  chan *slot // slots not in use

	lastRecv atomic.Int64 // unix ns of the last complete reply frame

	broken  atomic.Bool
	dead    chan struct{} // closed by fail
	failErr error         // set by fail before broken and dead; what pending calls get
	once    sync.Once
}

// slotState is where a slot's call is.
type slotState uint8

const (
	slotIdle      slotState = iota // no call, or the call is over
	slotPending                    // request sent or being sent; no reply seen
	slotReceiving                  // the reader is reading the reply into p
	slotDone                       // the result is in err/n/more and done was signalled
)

// slot is the in-flight state of one call. The caller owns it from
// acquiring it off free until it puts it back, except that while the state
// is slotPending or slotReceiving the reader (or fail) may complete it.
type slot struct {
	cc    *cconn
	idx   uint64
	done  chan struct{} // capacity 1: one signal per completed call
	timer *time.Timer   // the default call deadline; caller only

	mu    sync.Mutex
	state slotState
	id    uint64 // of the current call: uses<<slotBits | idx
	uses  uint64
	op    Op
	p     []byte // where the reply payload goes (Read, Extents)

	// The request's header and fixed part, off the caller's stack
	// (checksumming there would move args to the heap); caller only.
	hdr   [HeaderSize]byte
	fixed [ZeroRequestSize]byte

	// The call between start and wait; caller only.
	ctx  context.Context
	tc   <-chan time.Time // the default deadline's timer, when ctx has none
	sent time.Time
	// What a write begun by StartWrite was, for Wait's error.
	vol, block, blocks uint64

	// Written by the completer before done is signalled, read by the
	// caller after. recv is when the reply arrived, set only when the
	// client injects latency.
	n    int
	more bool
	err  error
	recv time.Time
}

func newCconn(c *Client, nc net.Conn, slots int) *cconn {
	cc := &cconn{c: c, nc: nc, requestBytesMax: RequestBytesMax,
		slots: make([]*slot, slots), free: make(chan *slot, slots), dead: make(chan struct{})}
	cc.br = newReader(nc)
	cc.w.init(nc, c.opts.FrameTimeout)
	for i := range cc.slots {
		t := time.NewTimer(time.Hour)
		t.Stop()
		s := &slot{cc: cc, idx: uint64(i), done: make(chan struct{}, 1), timer: t}
		cc.slots[i] = s
		cc.free <- s
	}
	return cc
}

// start takes a slot and sends a's request; unless it failed, the caller
// owns the slot and must end the call with wait. a's data is not
// referenced once start returned.
func (cc *cconn) start(ctx context.Context, a *args, hasDeadline bool, start time.Time) (*slot, error) {
	s, err := cc.acquire(ctx, hasDeadline, start)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if cc.broken.Load() {
		// Checked under s.mu: a fail that sets broken after this point
		// finds the slot pending and completes it.
		s.mu.Unlock()
		cc.free <- s
		return nil, cc.failErr
	}
	s.uses++
	s.id = s.uses<<slotBits | s.idx
	s.state, s.op, s.p = slotPending, a.op, a.reply
	id := s.id
	s.mu.Unlock()

	s.ctx, s.tc = ctx, nil
	if !hasDeadline {
		s.timer.Reset(cc.c.opts.CallTimeout - time.Since(start))
		s.tc = s.timer.C
	}
	copy(s.fixed[:], a.fixed[:a.fixedLen])
	s.sent = time.Now()
	cc.send(id, s.hdr[:], s.fixed[:a.fixedLen], a)
	return s, nil
}

// wait waits for the reply to the call started on s, or its deadline, and
// puts s back.
func (cc *cconn) wait(s *slot) (int, bool, error) {
	var timeout error
	select {
	case <-s.done:
	case <-s.ctx.Done():
		timeout = s.ctx.Err()
	case <-s.tc:
		timeout = context.DeadlineExceeded
	}
	if s.tc != nil {
		s.timer.Stop()
	}
	op, sent := s.op, s.sent
	s.ctx, s.tc = nil, nil
	if timeout != nil {
		s.mu.Lock()
		if s.state == slotPending {
			// Abandon the call: its reply, if it comes, matches no slot
			// and is discarded; nothing writes s.p after this.
			s.state, s.p = slotIdle, nil
			s.mu.Unlock()
			cc.free <- s
			if waited := time.Since(sent); cc.lastRecv.Load() < sent.UnixNano() && waited >= cc.c.opts.FrameTimeout {
				// Nothing came back while this call waited FrameTimeout:
				// a node that vanished without closing the connection.
				cc.fail(fmt.Errorf("no reply frame for %v with calls pending", waited.Round(time.Millisecond)))
			}
			return 0, false, fmt.Errorf("wire: %s on %s: no reply in time: %w", op, cc.c.addr, timeout)
		}
		// The reply is being read into p: wait for it (bounded by
		// FrameTimeout) so that p is not written after we return.
		s.mu.Unlock()
		<-s.done
	}
	if timeout == nil && !s.recv.IsZero() {
		cc.c.delay.Wait(s.recv) // false once the client closed: taken now
	}
	n, more, err := s.n, s.more, s.err
	s.mu.Lock()
	s.state, s.p, s.err, s.recv = slotIdle, nil, nil, time.Time{}
	s.mu.Unlock()
	cc.free <- s
	return n, more, err
}

// Wait implements volume.Pending for a write begun by Client.StartWrite:
// it waits for the reply or the call's deadline and returns what Write
// would have.
func (s *slot) Wait() error {
	cc, vol, block, blocks := s.cc, s.vol, s.block, s.blocks
	_, _, err := cc.wait(s) // s is another call's from here on
	if err = cc.c.ended(err); err != nil {
		return fmt.Errorf("wire: write vol %d blocks [%d, +%d) to %s: %w", vol, block, blocks, cc.c.addr, err)
	}
	return nil
}

// acquire takes a free slot, waiting (bounded by the call's deadline) when
// all are in flight.
func (cc *cconn) acquire(ctx context.Context, hasDeadline bool, start time.Time) (*slot, error) {
	select {
	case s := <-cc.free:
		return s, nil
	default:
	}
	// The frames a corked caller queued may be what frees a slot.
	if err := cc.w.pushNow(); err != nil {
		cc.fail(fmt.Errorf("write: %w", err))
	}
	t := cc.c.slowTimer(hasDeadline, start)
	defer stopTimer(t)
	select {
	case s := <-cc.free:
		return s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timerC(t):
		return nil, fmt.Errorf("wire: %s: %d calls in flight for %v: %w", cc.c.addr, len(cc.slots), cc.c.opts.CallTimeout, context.DeadlineExceeded)
	case <-cc.dead:
		return nil, cc.failErr
	}
}

// send writes a request (its header encoded into hb), or queues it behind
// the request being written (see frameWriter). A write error breaks the connection, which completes
// the call.
func (cc *cconn) send(id uint64, hb, fixed []byte, a *args) {
	sum := payloadSum(fixed, a)
	h := Header{Op: a.op, Flags: a.flags, ID: id, Length: uint32(a.fixedLen + len(a.data)), Sum: sum}
	h.Put(hb)
	if err := cc.w.write(hb, fixed, a.data); err != nil {
		cc.fail(fmt.Errorf("write: %w", err))
	}
}

// uncork ends the cork of a batch of calls (Client.start); a failed
// write breaks the connection, which completes the calls.
func (cc *cconn) uncork() {
	if err := cc.w.uncork(); err != nil {
		cc.fail(fmt.Errorf("write: %w", err))
	}
}

// payloadSum is the checksum of a request's payload, fixed then a.data:
// the one a.memo holds, else computed (and left in a.memo).
func payloadSum(fixed []byte, a *args) uint32 {
	if a.memo != nil && a.memo.SumSet {
		return a.memo.Sum
	}
	sum := UpdateChecksum(0, fixed)
	if len(a.data) > 0 {
		sum = UpdateChecksum(sum, a.data)
	}
	if a.memo != nil {
		a.memo.Sum, a.memo.SumSet = sum, true
	}
	return sum
}

// reader matches replies to slots until the connection fails.
func (cc *cconn) reader() {
	defer cc.c.wg.Done()
	var hb [HeaderSize]byte
	var msg [ErrorMessageMax]byte
	for {
		if cc.br.Buffered() == 0 {
			cc.rdl.disarm(cc.nc)
			if _, err := cc.br.Peek(1); err != nil {
				cc.fail(fmt.Errorf("read: %w", err))
				return
			}
		}
		cc.rdl.arm(cc.nc, cc.c.opts.FrameTimeout)
		if _, err := io.ReadFull(cc.br, hb[:]); err != nil {
			cc.fail(fmt.Errorf("read reply: %w", err))
			return
		}
		h, err := ParseHeader(hb[:])
		if err == nil {
			err = cc.receive(h, msg[:])
		}
		if err != nil {
			cc.fail(err)
			return
		}
		cc.lastRecv.Store(time.Now().UnixNano())
	}
}

// receive reads the payload of the reply h into its call's slot, or
// discards it when the call was abandoned. An error breaks the connection.
func (cc *cconn) receive(h Header, msg []byte) error {
	if h.Flags&FlagReply == 0 {
		return fmt.Errorf("%w: request frame (%s) from the node", ErrProtocol, h.Op)
	}
	idx := h.ID & (1<<slotBits - 1)
	if idx >= uint64(len(cc.slots)) {
		return fmt.Errorf("%w: reply id %#x names no slot", ErrProtocol, h.ID)
	}
	s := cc.slots[idx]
	s.mu.Lock()
	if s.id != h.ID || s.state != slotPending {
		s.mu.Unlock()
		cc.c.stats.lateReplies.Add(1)
		_, err := cc.br.Discard(int(h.Length)) // a late reply to an abandoned call
		return err
	}
	if h.Op != s.op {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s request answered as %s", ErrProtocol, s.op, h.Op)
	}
	s.state = slotReceiving
	p := s.p
	s.mu.Unlock()

	n, callErr, connErr := cc.payload(h, p, msg)
	if connErr != nil {
		callErr = fmt.Errorf("%w: %s: %w", ErrDisconnected, cc.c.addr, connErr)
	}
	s.n, s.more, s.err = n, h.Flags&FlagMore != 0, callErr
	if cc.c.delay != nil {
		s.recv = time.Now()
	}
	s.mu.Lock()
	s.state = slotDone
	s.mu.Unlock()
	s.done <- struct{}{}
	return connErr
}

// payload reads a reply's payload: into p for data, into msg for an error.
// callErr fails only the call; connErr breaks the connection.
func (cc *cconn) payload(h Header, p, msg []byte) (n int, callErr, connErr error) {
	if h.Status != CodeOK {
		if int(h.Length) > len(msg) {
			return 0, nil, fmt.Errorf("%w: error reply of %d bytes", ErrProtocol, h.Length)
		}
		m := msg[:h.Length]
		if _, err := io.ReadFull(cc.br, m); err != nil {
			return 0, nil, fmt.Errorf("read error reply: %w", err)
		}
		if sum := Checksum(m); sum != h.Sum {
			return 0, nil, fmt.Errorf("%w: error reply crc %#08x, computed %#08x", ErrChecksum, h.Sum, sum)
		}
		return 0, &remoteError{op: h.Op, code: h.Status, msg: string(m)}, nil
	}
	switch {
	case h.Flags&FlagMore != 0 && h.Op != OpExtents && h.Op != OpChanged && h.Op != OpVersionsSince:
		return 0, nil, fmt.Errorf("%w: flag more on a %s reply", ErrProtocol, h.Op)
	case h.Op == OpRead && int(h.Length) != len(p),
		(h.Op == OpExtents || h.Op == OpChanged || h.Op == OpVersionsSince || targetOp(h.Op)) && int(h.Length) > len(p),
		h.Op != OpRead && h.Op != OpExtents && h.Op != OpChanged && h.Op != OpVersionsSince && !targetOp(h.Op) && h.Length != 0:
		return 0, nil, fmt.Errorf("%w: %s reply of %d bytes", ErrProtocol, h.Op, h.Length)
	}
	q := p[:h.Length]
	if _, err := io.ReadFull(cc.br, q); err != nil {
		return 0, nil, fmt.Errorf("read %s reply: %w", h.Op, err)
	}
	if sum := Checksum(q); sum != h.Sum {
		return 0, fmt.Errorf("%w: %s reply crc %#08x, computed %#08x", ErrChecksum, h.Op, h.Sum, sum), nil
	}
	return len(q), nil, nil
}

// fail breaks the connection once: it closes the socket and completes every
// pending call with the error (ErrClosed as is, anything else wrapped in
// ErrDisconnected). A slot being received is completed by the reader, whose
// read fails.
func (cc *cconn) fail(err error) {
	cc.once.Do(func() {
		if !errors.Is(err, ErrClosed) {
			err = fmt.Errorf("%w: %s: %w", ErrDisconnected, cc.c.addr, err)
		}
		cc.failErr = err
		cc.broken.Store(true)
		close(cc.dead)
		cc.nc.Close()
		for _, s := range cc.slots {
			s.mu.Lock()
			if s.state == slotPending {
				s.state, s.p = slotDone, nil
				s.n, s.more, s.err = 0, false, err
				s.mu.Unlock()
				s.done <- struct{}{}
				continue
			}
			s.mu.Unlock()
		}
		if !errors.Is(err, ErrClosed) {
			cc.c.stats.disconnects.Add(1)
			cc.c.log.Warn("wire connection lost", "err", err)
		}
	})
}
