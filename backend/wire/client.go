package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/target"
)

// ClientOptions configure a Client. The zero value works: plain TCP, one
// connection, defaults for every bound.
type ClientOptions struct {
	// Name identifies this end (the target) in its Hello, for the node's logs.
	Name string
	// TLS, if set, makes connections TLS (see LoadTLS). An empty ServerName
	// is taken from the address's host. nil dials plain TCP.
	TLS *tls.Config
	// Conns is the number of connections to the node: a small request
	// takes one whose writer is busy (to share its socket write), a big
	// one one whose writer is not, else they take turns (see conn).
	// 0: 1; at most 16.
	Conns int
	// InFlightMax bounds the calls in flight per connection (lowered to the
	// node's limit from its Hello); past it calls wait. 0: 128.
	InFlightMax int
	// CallTimeout is the deadline of a call whose context has none. 0: 30 s.
	CallTimeout time.Duration
	// DialTimeout bounds a dial with its TLS handshake and Hello. 0: 5 s.
	DialTimeout time.Duration
	// FrameTimeout bounds the read of a reply once its first byte arrived
	// and the write of a request; past it the connection is broken. 0: 30 s.
	FrameTimeout time.Duration
	// RedialBackoffMin and RedialBackoffMax bound the wait after a failed
	// dial before the next call dials again (doubling from min up to max);
	// calls in between fail at once with ErrUnavailable. 0: 50 ms, 2 s.
	RedialBackoffMin, RedialBackoffMax time.Duration
	// Dial, if set, opens the connection (tests, fault injection); nil uses
	// a net.Dialer with TCP keepalive.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Logger receives one line per connection event; nil: slog.Default().
	Logger *slog.Logger
	// InjectLatency, benchmarks only: every call's reply is taken this
	// long after it arrived, as over a network whose round trip is that
	// much longer (one DelayLine for the client; calls in flight together
	// wait together, so pipelining shows). 0: none; at most 1 s.
	InjectLatency time.Duration
}

var _ volume.Starter = (*Client)(nil)

// Client is a storage node's data RPC client: a volume.Node over the wire.
// Calls are pipelined on one or a few connections, matched to their replies
// by request id, with no goroutine per call. Its methods are safe for
// concurrent use; the slices passed to them are not retained after they
// return (a Read's buffer is never written after Read returned).
type Client struct {
	addr string
	opts ClientOptions
	tls  *tls.Config
	log  *slog.Logger

	ctx    context.Context // dials; cancelled by Close
	cancel context.CancelFunc

	conns []atomic.Pointer[cconn] // nil or broken: redial
	next  atomic.Uint32           // turns over conns
	delay *volume.DelayLine       // ClientOptions.InjectLatency, or nil

	mu struct {
		sync.Mutex
		closed  bool
		dialing []chan struct{} // per conn: closed when the dial in progress ends
		lastErr error           // of the last failed dial
		retryAt time.Time       // no dial before
		backoff time.Duration
		hello   Hello // the node's, from the last handshake
	}
	wg sync.WaitGroup // readers and dialers

	stats struct {
		calls, errors, timeouts        atomic.Uint64
		dials, dialErrors, disconnects atomic.Uint64
		lateReplies                    atomic.Uint64
	}
}

// ClientStats are cumulative counters of a Client.
type ClientStats struct {
	Calls       uint64 // calls made (an Extents of several replies counts each)
	Errors      uint64 // calls that failed, for any reason
	Timeouts    uint64 // calls that gave up on their deadline or context
	Dials       uint64 // connections established
	DialErrors  uint64 // dials (with TLS and Hello) that failed
	Disconnects uint64 // connections lost other than by Close
	LateReplies uint64 // replies discarded because their call had given up
}

// Stats returns the client's counters.
func (c *Client) Stats() ClientStats {
	return ClientStats{
		Calls: c.stats.calls.Load(), Errors: c.stats.errors.Load(), Timeouts: c.stats.timeouts.Load(),
		Dials: c.stats.dials.Load(), DialErrors: c.stats.dialErrors.Load(), Disconnects: c.stats.disconnects.Load(),
		LateReplies: c.stats.lateReplies.Load(),
	}
}

// NewClient returns a client of the node at addr (host:port). It connects
// on the first call (or Hello); a node that is down makes calls fail, not
// NewClient.
func NewClient(addr string, opts ClientOptions) (*Client, error) {
	if opts.Conns == 0 {
		opts.Conns = 1
	}
	if opts.InFlightMax == 0 {
		opts.InFlightMax = inFlightMaxDefault
	}
	if opts.CallTimeout == 0 {
		opts.CallTimeout = callTimeoutDefault
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = dialTimeoutDefault
	}
	if opts.FrameTimeout == 0 {
		opts.FrameTimeout = frameTimeoutDefault
	}
	if opts.RedialBackoffMin == 0 {
		opts.RedialBackoffMin = redialBackoffMinDefault
	}
	if opts.RedialBackoffMax == 0 {
		opts.RedialBackoffMax = max(redialBackoffMaxDefault, opts.RedialBackoffMin)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	switch {
	case opts.Conns < 1 || opts.Conns > connsMax:
		return nil, fmt.Errorf("wire: client Conns %d outside [1, %d]", opts.Conns, connsMax)
	case opts.InFlightMax < 1 || opts.InFlightMax > inFlightMaxMax:
		return nil, fmt.Errorf("wire: client InFlightMax %d outside [1, %d]", opts.InFlightMax, inFlightMaxMax)
	case opts.CallTimeout < 0 || opts.DialTimeout < 0 || opts.FrameTimeout < 0 || opts.RedialBackoffMin < 0:
		return nil, errors.New("wire: negative client timeout")
	case opts.RedialBackoffMax < opts.RedialBackoffMin:
		return nil, fmt.Errorf("wire: RedialBackoffMax %v below RedialBackoffMin %v", opts.RedialBackoffMax, opts.RedialBackoffMin)
	case len(opts.Name) > NameBytesMax:
		return nil, fmt.Errorf("wire: client name of %d bytes, at most %d", len(opts.Name), NameBytesMax)
	case opts.InjectLatency < 0 || opts.InjectLatency > time.Second:
		return nil, fmt.Errorf("wire: client InjectLatency %v outside [0, 1s]", opts.InjectLatency)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("wire: node address %q: %w", addr, err)
	}
	c := &Client{addr: addr, opts: opts, log: opts.Logger.With("component", "wire-client", "node", addr)}
	if opts.TLS != nil {
		c.tls = opts.TLS.Clone()
		if c.tls.ServerName == "" {
			c.tls.ServerName = host
		}
	}
	if opts.InjectLatency > 0 {
		if c.delay, err = volume.NewDelayLine(opts.InjectLatency); err != nil {
			return nil, fmt.Errorf("wire: injected latency: %w", err)
		}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.conns = make([]atomic.Pointer[cconn], opts.Conns)
	c.mu.dialing = make([]chan struct{}, opts.Conns)
	return c, nil
}

// Close fails every call in flight with ErrClosed, closes the connections
// and waits for every goroutine the client started. Later calls fail with
// ErrClosed. It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.mu.closed = true
	c.cancel()
	c.mu.Unlock()
	for i := range c.conns {
		if cc := c.conns[i].Load(); cc != nil {
			cc.fail(ErrClosed)
		}
	}
	c.wg.Wait()
	if c.delay != nil {
		c.delay.Close() // a reply still delayed is taken at once
	}
	return nil
}

// Hello connects if needed and returns the node's Hello (its name and
// limits).
func (c *Client) Hello(ctx context.Context) (Hello, error) {
	_, hasDeadline := ctx.Deadline()
	if _, err := c.conn(ctx, hasDeadline, time.Now(), false); err != nil {
		return Hello{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.hello, nil
}

// Read implements volume.Node: it fills p (a multiple of BlockSize, at most
// RequestBytesMax) with blocks of vol from block on, as of epoch.
func (c *Client) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error {
	if len(p)%BlockSize != 0 || len(p) > RequestBytesMax {
		return fmt.Errorf("wire: read vol %d block %d: %w: buffer of %d bytes", vol, block, store.ErrInvalid, len(p))
	}
	a := args{op: OpRead, fixedLen: ReadRequestSize, reply: p}
	(&ReadRequest{Vol: vol, Block: block, Epoch: epoch, Blocks: uint32(len(p) / BlockSize)}).Put(a.fixed[:])
	if _, _, err := c.do(ctx, &a); err != nil {
		return fmt.Errorf("wire: read vol %d blocks [%d, +%d) from %s: %w", vol, block, len(p)/BlockSize, c.addr, err)
	}
	return nil
}

// Write implements volume.Node: it stores data (a multiple of BlockSize, at
// most RequestBytesMax) at block of vol with stamp st; sync = FUA.
func (c *Client) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	if len(data)%BlockSize != 0 || len(data) > RequestBytesMax {
		return fmt.Errorf("wire: write vol %d block %d: %w: buffer of %d bytes", vol, block, store.ErrInvalid, len(data))
	}
	a := args{op: OpWrite, fixedLen: WriteRequestSize, data: data}
	if sync {
		a.flags = FlagSync
	}
	(&WriteRequest{Vol: vol, Block: block, Stamp: st}).Put(a.fixed[:])
	if _, _, err := c.do(ctx, &a); err != nil {
		return fmt.Errorf("wire: write vol %d blocks [%d, +%d) to %s: %w", vol, block, len(data)/BlockSize, c.addr, err)
	}
	return nil
}

// StartWrite implements volume.Starter: it sends the request Write would
// and returns with the call in flight; the result's Wait returns what
// Write would have. data is not referenced once StartWrite returned.
// Unless StartWrite failed, Wait must be called, once, while ctx is still
// valid: until then the call holds one of the connection's slots.
// memo, if not nil, carries the request's payload checksum from one
// replica's StartWrite of this write to the next (volume.WriteMemo): the
// first computes it and leaves it there, the others send it as is.
func (c *Client) StartWrite(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool, memo *volume.WriteMemo) (volume.Pending, error) {
	return c.startWrite(ctx, vol, block, data, st, sync, memo, nil)
}

// startWrite is StartWrite on the connection a batch corked (see start).
func (c *Client) startWrite(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool, memo *volume.WriteMemo, corked **cconn) (volume.Pending, error) {
	if len(data)%BlockSize != 0 || len(data) > RequestBytesMax {
		return nil, fmt.Errorf("wire: write vol %d block %d: %w: buffer of %d bytes", vol, block, store.ErrInvalid, len(data))
	}
	a := args{op: OpWrite, fixedLen: WriteRequestSize, data: data, memo: memo}
	if sync {
		a.flags = FlagSync
	}
	(&WriteRequest{Vol: vol, Block: block, Stamp: st}).Put(a.fixed[:])
	s, err := c.start(ctx, &a, corked)
	if err != nil {
		return nil, fmt.Errorf("wire: write vol %d blocks [%d, +%d) to %s: %w", vol, block, len(data)/BlockSize, c.addr, err)
	}
	s.vol, s.block, s.blocks = vol, block, uint64(len(data)/BlockSize)
	return s, nil
}

var _ volume.BatchStarter = (*Client)(nil)

// StartWrites implements volume.BatchStarter: it starts each write as
// StartWrite does (none synced), on a connection it corks meanwhile, so
// that their requests go out together, in one socket write when the
// window has room for them all. Each gets its own Pending or Err.
//
// A call holds its slot until its Wait, so a batch larger than the free
// window would wait on itself: when the corked connection has no free
// slot, StartWrites sends what it queued and waits for its own oldest
// call there, whose Pending then returns that result at once.
func (c *Client) StartWrites(vol uint64, ws []volume.StartedWrite) {
	var corked *cconn
	drained := 0 // ws[:drained] are not corked's to wait for
	for i := range ws {
		w := &ws[i]
		if corked != nil && len(corked.free) == 0 && drained < i {
			// Uncorked while it waits, so that nobody's frames wait with it.
			corked.uncork()
			for ; len(corked.free) == 0 && drained < i; drained++ {
				if d := &ws[drained]; d.P != nil {
					d.P = waited(d.P.Wait())
				}
			}
			corked.w.cork()
		}
		was := corked
		w.P, w.Err = c.startWrite(w.Ctx, vol, w.Block, w.Data, w.Stamp, false, w.Memo, &corked)
		if corked != was {
			drained = i // a new connection: the earlier calls' slots are not its
		}
	}
	if corked != nil {
		corked.uncork()
	}
}

// waitedOK is the Pending of a call StartWrites waited for, that succeeded.
var waitedOK volume.Pending = waitedPending{}

// waitedPending is a call StartWrites waited for: Wait returns its result.
type waitedPending struct{ err error }

func (p waitedPending) Wait() error { return p.err }

func waited(err error) volume.Pending {
	if err == nil {
		return waitedOK
	}
	return waitedPending{err}
}

// Zero implements volume.Node: blocks [block, block+n) of vol read as zeros
// from stamp st on.
func (c *Client) Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error {
	a := args{op: OpZero, fixedLen: ZeroRequestSize}
	if sync {
		a.flags = FlagSync
	}
	(&ZeroRequest{Vol: vol, Block: block, Blocks: n, Stamp: st}).Put(a.fixed[:])
	if _, _, err := c.do(ctx, &a); err != nil {
		return fmt.Errorf("wire: zero vol %d blocks [%d, +%d) on %s: %w", vol, block, n, c.addr, err)
	}
	return nil
}

// Sync implements volume.Node: every write the node acknowledged before
// the call is durable when it returns.
func (c *Client) Sync(ctx context.Context) error {
	a := args{op: OpSync}
	if _, _, err := c.do(ctx, &a); err != nil {
		return fmt.Errorf("wire: sync %s: %w", c.addr, err)
	}
	return nil
}

// Extents implements volume.Node: it reports the allocation of blocks
// [block, block+n) of vol at epoch as consecutive runs, in as many calls as
// the node needs (at most ExtentRunsMax runs each), until the range is
// covered or fn returns false. fn runs on the calling goroutine.
func (c *Client) Extents(ctx context.Context, vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) error {
	err := c.runs(ctx, OpExtents, block, n, func(b []byte, block, n uint64) int {
		(&ExtentsRequest{Vol: vol, Block: block, Blocks: n, Epoch: epoch}).Put(b)
		return ExtentsRequestSize
	}, fn)
	if err != nil {
		return fmt.Errorf("wire: extents vol %d blocks [%d, +%d) on %s: %w", vol, block, n, c.addr, err)
	}
	return nil
}

// Changed reports, as store.Store.Changed does on the node, the runs of
// blocks [block, block+n) of vol whose content at epoch to may differ from
// their content at epoch from (from < to; math.MaxUint64 for the live
// volume), in as many calls as the node needs, until the range is covered
// or fn returns false. fn runs on the calling goroutine. A node whose
// backend cannot answer fails it with ErrUnsupported.
func (c *Client) Changed(ctx context.Context, vol, block, n, from, to uint64, fn func(start, count uint64, changed bool) bool) error {
	err := c.runs(ctx, OpChanged, block, n, func(b []byte, block, n uint64) int {
		(&ChangedRequest{Vol: vol, Block: block, Blocks: n, From: from, To: to}).Put(b)
		return ChangedRequestSize
	}, fn)
	if err != nil {
		return fmt.Errorf("wire: changed vol %d blocks [%d, +%d) epochs %d to %d on %s: %w", vol, block, n, from, to, c.addr, err)
	}
	return nil
}

// runs makes the calls of an Extents or Changed walk: put encodes the
// request for [block, block+n) and returns its length.
func (c *Client) runs(ctx context.Context, op Op, block, n uint64, put func(b []byte, block, n uint64) int, fn func(start, count uint64, state bool) bool) error {
	bp := target.GetBuffer(ExtentsReplyBytesMax)
	defer target.PutBuffer(bp)
	for {
		a := args{op: op, reply: (*bp)[:ExtentsReplyBytesMax]}
		a.fixedLen = put(a.fixed[:], block, n)
		next, more, err := c.runsPart(ctx, &a, block, n, fn)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		n -= next - block
		block = next
	}
}

// runsPart makes one call of a walk for [block, block+n) and hands the
// runs to fn. It returns where the runs stopped and whether the node has
// more of the range (false too when fn stopped).
func (c *Client) runsPart(ctx context.Context, a *args, block, n uint64, fn func(start, count uint64, state bool) bool) (next uint64, more bool, err error) {
	buf := a.reply
	m, more, err := c.do(ctx, a)
	if err != nil {
		return 0, false, err
	}
	k, err := CheckExtentsReply(buf[:m])
	if err != nil {
		return 0, false, err
	}
	end, pos := block+n, block
	for i := range k {
		r := ExtentRunAt(buf, i)
		if r.Start != pos || r.Count > end-pos {
			return 0, false, fmt.Errorf("%w: run [%d, +%d) does not continue from block %d", ErrProtocol, r.Start, r.Count, pos)
		}
		pos += r.Count
		if !fn(r.Start, r.Count, r.Allocated) {
			return pos, false, nil
		}
	}
	if more && (k == 0 || pos >= end) {
		return 0, false, fmt.Errorf("%w: more runs announced after block %d of [%d, %d)", ErrProtocol, pos, block, end)
	}
	return pos, more, nil
}

// args is one call's request, built on the caller's stack.
type args struct {
	op       Op
	flags    Flags
	fixed    [ZeroRequestSize]byte
	fixedLen int
	data     []byte // Write: sent after the fixed part
	reply    []byte // Read: filled with the data; Extents, Changed: receive the runs
	// memo, if set, holds or receives the payload checksum (StartWrite).
	memo *volume.WriteMemo
}

// do runs one call: a connection, a slot, the request, the reply or the
// deadline. It returns the reply's payload length and FlagMore.
func (c *Client) do(ctx context.Context, a *args) (int, bool, error) {
	s, err := c.start(ctx, a, nil)
	if err != nil {
		return 0, false, err
	}
	n, more, err := s.cc.wait(s)
	return n, more, c.ended(err)
}

// start counts a call and sends its request; unless it failed, the caller
// must end it with s.cc.wait and pass the result to ended. corked, if
// not nil, is the connection a batch of calls has corked (nil before the
// first): the call goes on it while it is healthy; otherwise on the
// connection conn picks, corked in its place.
func (c *Client) start(ctx context.Context, a *args, corked **cconn) (*slot, error) {
	c.stats.calls.Add(1)
	s, err := c.start1(ctx, a, corked)
	return s, c.ended(err)
}

// ended counts a call's failure.
func (c *Client) ended(err error) error {
	if err != nil {
		c.stats.errors.Add(1)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			c.stats.timeouts.Add(1)
		}
	}
	return err
}

func (c *Client) start1(ctx context.Context, a *args, corked **cconn) (*slot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	_, hasDeadline := ctx.Deadline()
	var start time.Time
	if !hasDeadline {
		start = time.Now()
	}
	var cc *cconn
	if corked != nil && *corked != nil && !(*corked).broken.Load() {
		cc = *corked // a batch's calls stay on the connection it corked
	} else {
		if corked != nil && *corked != nil {
			(*corked).uncork() // before a redial may wait
			*corked = nil
		}
		var err error
		if cc, err = c.conn(ctx, hasDeadline, start, len(a.data) > inlineBytesMax); err != nil {
			return nil, err
		}
		if corked != nil {
			cc.w.cork()
			*corked = cc
		}
	}
	if len(a.data) > cc.requestBytesMax || len(a.reply) > cc.requestBytesMax && a.op == OpRead {
		return nil, fmt.Errorf("%w: %d bytes, the node takes at most %d", store.ErrInvalid, max(len(a.data), len(a.reply)), cc.requestBytesMax)
	}
	return cc.start(ctx, a, hasDeadline, start)
}

// conn returns a healthy connection for a request, dialing if needed;
// big: its data is too big to copy into the frame writer's buffer. With
// several connections, a small request goes to one whose writer is on
// the socket, if any (queued behind that write, it makes no write of its
// own, and the node reads it with its neighbours: at qd32 over two
// connections round robin, frames met half as often), and a big one to
// one whose writer is not (it would wait for that write); else round
// robin.
func (c *Client) conn(ctx context.Context, hasDeadline bool, start time.Time, big bool) (*cconn, error) {
	i := 0
	if n := len(c.conns); n > 1 {
		i = int(c.next.Add(1) % uint32(n))
		for k := range n {
			if cc := c.conns[(i+k)%n].Load(); cc != nil && !cc.broken.Load() && cc.w.busy.Load() != big {
				return cc, nil
			}
		}
	}
	if cc := c.conns[i].Load(); cc != nil && !cc.broken.Load() {
		return cc, nil
	}
	return c.redial(ctx, i, hasDeadline, start)
}

// redial waits for connection i to be dialed, starting the dial if none is
// in progress and the backoff allows.
func (c *Client) redial(ctx context.Context, i int, hasDeadline bool, start time.Time) (*cconn, error) {
	for {
		c.mu.Lock()
		if c.mu.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if cc := c.conns[i].Load(); cc != nil && !cc.broken.Load() {
			c.mu.Unlock()
			return cc, nil
		}
		wait := c.mu.dialing[i]
		if wait == nil {
			if d := time.Until(c.mu.retryAt); d > 0 {
				err := fmt.Errorf("%w (next dial in %v)", c.mu.lastErr, d.Round(time.Millisecond))
				c.mu.Unlock()
				return nil, err
			}
			wait = make(chan struct{})
			c.mu.dialing[i] = wait
			c.wg.Add(1)
			go c.dial(i, wait)
		}
		c.mu.Unlock()
		t := c.slowTimer(hasDeadline, start)
		select {
		case <-wait:
			stopTimer(t)
		case <-ctx.Done():
			stopTimer(t)
			return nil, ctx.Err()
		case <-timerC(t):
			return nil, fmt.Errorf("wire: %s: no connection within %v: %w", c.addr, c.opts.CallTimeout, context.DeadlineExceeded)
		}
	}
}

// dial connects connection i and signals done.
func (c *Client) dial(i int, done chan struct{}) {
	defer c.wg.Done()
	defer close(done)
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.DialTimeout)
	defer cancel()
	cc, hello, err := c.connect(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.dialing[i] = nil
	if err != nil {
		c.mu.backoff = min(max(2*c.mu.backoff, c.opts.RedialBackoffMin), c.opts.RedialBackoffMax)
		c.mu.retryAt = time.Now().Add(c.mu.backoff)
		c.mu.lastErr = err
		c.stats.dialErrors.Add(1)
		c.log.Warn("wire dial failed", "conn", i, "err", err, "backoff", c.mu.backoff)
		return
	}
	if c.mu.closed {
		cc.nc.Close()
		return
	}
	c.mu.backoff, c.mu.retryAt, c.mu.lastErr, c.mu.hello = 0, time.Time{}, nil, hello
	c.conns[i].Store(cc)
	c.stats.dials.Add(1)
	c.wg.Add(1)
	go cc.reader()
	c.log.Info("wire connection open", "conn", i, "node_name", hello.Name, "in_flight_max", len(cc.slots))
}

// connect dials, runs TLS and the Hello exchange within ctx.
func (c *Client) connect(ctx context.Context) (*cconn, Hello, error) {
	fail := func(err error) (*cconn, Hello, error) {
		return nil, Hello{}, fmt.Errorf("%w: %s: %w", ErrUnavailable, c.addr, err)
	}
	var nc net.Conn
	var err error
	if c.opts.Dial != nil {
		nc, err = c.opts.Dial(ctx, c.addr)
	} else {
		d := net.Dialer{KeepAlive: 15 * time.Second}
		nc, err = d.DialContext(ctx, "tcp", c.addr)
	}
	if err != nil {
		return fail(err)
	}
	setNoDelay(nc)
	if c.tls != nil {
		tc := tls.Client(nc, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return fail(fmt.Errorf("tls handshake: %w", err))
		}
		nc = tc
	}
	hello, err := c.hello(ctx, nc)
	if err != nil {
		nc.Close()
		return fail(err)
	}
	n := c.opts.InFlightMax
	if hello.InFlightMax > 0 && int(hello.InFlightMax) < n {
		n = int(hello.InFlightMax)
	}
	cc := newCconn(c, nc, n)
	if hello.RequestBytesMax > 0 && int(hello.RequestBytesMax) < cc.requestBytesMax {
		cc.requestBytesMax = int(hello.RequestBytesMax)
	}
	return cc, hello, nil
}

// hello exchanges Hellos on a fresh connection.
func (c *Client) hello(ctx context.Context, nc net.Conn) (Hello, error) {
	dl, _ := ctx.Deadline()
	_ = nc.SetDeadline(dl)
	var b [HeaderSize + max(HelloSizeMin+NameBytesMax, ErrorMessageMax)]byte
	body := AppendHello(b[HeaderSize:HeaderSize], Hello{Name: c.opts.Name})
	(&Header{Op: OpHello, Length: uint32(len(body)), Sum: Checksum(body)}).Put(b[:])
	if _, err := nc.Write(b[:HeaderSize+len(body)]); err != nil {
		return Hello{}, fmt.Errorf("write hello: %w", err)
	}
	if _, err := io.ReadFull(nc, b[:HeaderSize]); err != nil {
		return Hello{}, fmt.Errorf("read hello: %w", err)
	}
	h, err := ParseHeader(b[:HeaderSize])
	if err != nil {
		return Hello{}, fmt.Errorf("hello: %w", err)
	}
	if h.Op != OpHello || h.Flags != FlagReply || int(h.Length) > len(b)-HeaderSize {
		return Hello{}, fmt.Errorf("%w: hello answered by %s with flags %#x and %d bytes", ErrProtocol, h.Op, uint16(h.Flags), h.Length)
	}
	p := b[HeaderSize : HeaderSize+int(h.Length)]
	if _, err := io.ReadFull(nc, p); err != nil {
		return Hello{}, fmt.Errorf("read hello: %w", err)
	}
	if sum := Checksum(p); sum != h.Sum {
		return Hello{}, fmt.Errorf("%w: hello payload crc %#08x, computed %#08x", ErrChecksum, h.Sum, sum)
	}
	if h.Status != CodeOK {
		return Hello{}, &remoteError{op: OpHello, code: h.Status, msg: string(p)}
	}
	hello, err := ParseHello(p)
	if err != nil {
		return Hello{}, err
	}
	_ = nc.SetDeadline(time.Time{})
	return hello, nil
}

// slowTimer returns a timer for the rest of a call's default deadline when
// its context has none (nil otherwise). Only slow paths use it.
func (c *Client) slowTimer(hasDeadline bool, start time.Time) *time.Timer {
	if hasDeadline {
		return nil
	}
	return time.NewTimer(c.opts.CallTimeout - time.Since(start))
}

func timerC(t *time.Timer) <-chan time.Time {
	if t == nil {
		return nil
	}
	return t.C
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}
