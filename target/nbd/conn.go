package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"cairn/target"
)

// Bounds of transmission.
const (
	extentsMax       = 1 << 14                            // block descriptors in one BLOCK_STATUS reply
	blockStatusBytes = 4 + BlockDescriptorSize*extentsMax // largest BLOCK_STATUS reply payload
	errorMessageMax  = 512                                // bytes of error text in a structured error chunk
	replyChunkBytes  = 64 << 10                           // READ data written between write deadline renewals
	directDataBytes  = 32 << 10                           // READ data from this size on is written to the socket unbuffered
	directChunkBytes = 256 << 10                          // unbuffered READ data written between write deadline renewals
)

// conn is one client connection. The goroutine that runs serve owns it;
// during transmission its servers (serveRequests) read requests, one at a
// time (the reading role), and execute them; one writer sends replies.
type conn struct {
	s      *Server
	nc     net.Conn      // the socket: deadlines, Close, addresses
	br     *bufio.Reader // holder of the reading role (the handshake: serve's goroutine)
	bw     *bufio.Writer // writer goroutine only
	ctx    context.Context
	cancel context.CancelFunc
	start  time.Time
	forced atomic.Bool // Disconnect was called
	ip     string      // client IP, as counted by the server's ConnLimit

	// Before TLS, stream is nc; once STARTTLS succeeded, tlsConn is set,
	// and stream, br and bw go through it. Written by the reader goroutine
	// in the handshake only; the writer, started after it, uses bw and,
	// for large READ data, stream.
	stream            io.Writer // where handshake replies and large READ data go
	tlsConn           *tls.Conn
	handshakeDeadline time.Time

	// quit is closed (once, by abandon) when a reader waiting for the
	// shared budget must give up: Close, Disconnect, the writer failed.
	quit          chan struct{}
	quitOnce      sync.Once
	stopping      atomic.Bool // Close asked the reader to stop
	replyTimedOut atomic.Bool // the writer hit ReplyTimeout
	kind          string      // disconnect reason label; the reading role's holder, then serve's goroutine

	// Socket deadlines in force, each owned by its goroutine.
	readDeadline  time.Time // the reading role's holder
	writeDeadline time.Time // holder of wmu

	// Set by attach under s.mu before transmission, read-only afterwards.
	attached   bool
	export     string
	dev        target.Device
	mapper     target.Mapper      // nil if dev has no allocation map
	batcher    target.BatchWriter // dev, if it takes batches of writes
	structured bool
	allocation bool
	changed    string              // base of the cairn:changed context, or ""
	changer    target.ChangeMapper // dev, when changed is set

	requests uint64            // requests read; by the role's holder
	reqHdr   [RequestSize]byte // the header being read; by the role's holder

	// The reading role (see serveRequests): taken by the compare-and-swap
	// of free from true to false; its holder reads the next request.
	role struct {
		free    atomic.Bool
		idle    atomic.Int32  // servers waiting on wake
		servers atomic.Int32  // servers started
		wake    chan struct{} // a token: the role may be free
		mu      sync.Mutex    // guards closed, the sends on wake and its close
		closed  bool          // reading ended: wake is closed
		end     string        // why reading ended; written before wake is closed
		rescue  *time.Timer   // hands the role on when an inline request is slow
	}
	serveWG  sync.WaitGroup
	replies  chan *request // servers → writer
	writerWG sync.WaitGroup
	// wmu is held by whoever writes replies: the writer goroutine, or a
	// server writing its own reply when none is queued (answer).
	wmu      sync.Mutex
	iovArr   [2][]byte   // holder of wmu: a READ reply's header and data,
	iov      net.Buffers // over iovArr, for one writev
	inflight target.Window
	broken   atomic.Bool // the writer failed; replies are dropped
}

// request is one request from header to reply. It passes from the server
// that read it to the writer; whoever holds it owns it.
type request struct {
	Request
	buf      *[]byte // pooled payload buffer, or nil
	data     []byte  // READ, WRITE: the payload; BLOCK_STATUS: the reply payload
	split    int     // BLOCK_STATUS with two contexts: where the second's chunk begins
	budget   int     // payload bytes charged to the in-flight budget
	err      error   // why the request failed
	atOffset bool    // err came from the device at r.Offset
	hdr      [StructuredReplySize + 16]byte
}

// transmit serves requests until the client disconnects or the connection
// breaks; in-flight requests are answered before it returns.
func (c *conn) transmit() (reason string) {
	c.replies = make(chan *request, c.s.opts.InFlightMax)
	c.inflight.Init(c.s.opts.InFlightMax, c.s.opts.InFlightBytesMax)
	c.writerWG.Add(1)
	go c.writer()

	c.role.wake = make(chan struct{}, c.s.opts.InFlightMax+1)
	c.role.rescue = time.AfterFunc(time.Hour, c.rescueRole)
	c.role.rescue.Stop()
	c.role.free.Store(true)
	c.role.servers.Store(1)
	c.serveWG.Add(1)
	c.serveRequests()
	c.serveWG.Wait() // every request read is answered (or queued to the writer)
	c.role.rescue.Stop()

	c.inflight.Wait()
	close(c.replies)
	c.writerWG.Wait()
	return c.role.end
}

// inlineRescue is how long a request executed by the role's holder
// (inline) may take before another server is woken to read on.
const inlineRescue = 100 * time.Microsecond

// serveRequests reads requests and executes them, as one of the
// connection's servers: whoever holds the reading role reads one request
// and executes it on its own goroutine, so that no hand-off to a worker
// lies between a request's arrival and its reply. A hand-off cost about as
// much as the rest of a 4 KiB read: cairnd's CPU per read 56–65 µs with it,
// 32–35 µs without, at 14.0k/15.7k/11.1k against 20.6k/16.8k/16.9k IOPS
// (fio nbd randread qd1, interleaved).
//
// With nothing else in flight, the holder frees the role without waking
// anyone and executes the request; if it is done within inlineRescue it
// takes the role back and reads on, no goroutine woken at all. If not (a
// device call that blocks, as a real disk read may), a timer wakes another
// server (starting one if none waits), which reads the requests that
// arrive meanwhile: NBD lets replies come out of order, and a request must
// never wait for an unrelated one. With other requests in flight the
// holder hands the role on at once (a token on wake, a new server when
// none waits, up to InFlightMax) before it executes. Once reading ends
// (role.end), wake is closed and every server returns when its request is
// done.
func (c *conn) serveRequests() {
	defer c.serveWG.Done()
	for c.takeRole() {
		for {
			r, reason := c.readOne()
			if reason != "" {
				c.endReading(reason)
				return
			}
			if r == nil {
				continue // answered; read on
			}
			if c.batcher != nil && r.Type == CmdWrite && r.Flags&CmdFlagFUA == 0 && c.batcher.BatchWrites() {
				if next := c.readBatchable(); next != nil {
					c.serveBatch(r, next)
					break
				}
			}
			if c.inflight.Count() < 2 && (r.Type == CmdRead || r.Type == CmdWrite && r.Flags&CmdFlagFUA == 0) {
				c.role.free.Store(true)
				c.role.rescue.Reset(inlineRescue)
				c.execute(r)
				c.answer(r)
				c.role.rescue.Stop()
				if c.role.free.CompareAndSwap(true, false) {
					continue // nobody took over
				}
				break
			}
			c.role.free.Store(true)
			c.handRoleOn()
			c.execute(r)
			c.answer(r)
			break
		}
	}
}

// Write batches. Writes that arrive together — a queue depth of 32 makes
// the client send them back to back, and one socket read brings several —
// are read together by the role's holder and handed to the device in one
// call (target.BatchWriter), which stores them together, and their
// replies go out in one socket write. Served one by one, each had its own
// store append and reply write, and a hand-off of the role between them:
// under fio nbd 4 KiB random writes at queue depth 32 cairnd made 0.74
// pwrite(2) and 0.68 reply write(2) calls per request (perf stat).
const (
	// batchMax bounds the writes read into one batch.
	batchMax = 32
	// batchWriteBytesMax: only writes of at most this many bytes are
	// batched (a larger one costs its copy, not its calls).
	batchWriteBytesMax = 64 << 10
)

// readBatchable reads the next request if it is a plain write that can
// join a batch and has arrived whole: it is already buffered (so reading
// it never waits on the client), it is valid, and its payload fits the
// connection's window and the server's budget without waiting (a batch's
// requests must never wait on others' releases while holding theirs).
// Otherwise it reads nothing and returns nil. Caller holds the reading
// role.
func (c *conn) readBatchable() *request {
	if c.br.Buffered() < RequestSize {
		return nil
	}
	b, err := c.br.Peek(RequestSize)
	if err != nil {
		return nil
	}
	req, err := ParseRequest(b)
	if err != nil || req.Type != CmdWrite || req.Flags&CmdFlagFUA != 0 || req.Length == 0 || req.Length > batchWriteBytesMax {
		return nil
	}
	n := int(req.Length)
	if c.br.Buffered() < RequestSize+n || c.check(req) != nil || !c.inflight.TryAcquire(n) {
		return nil
	}
	if !c.s.opts.Budget.TryAcquire(int64(n)) {
		c.inflight.Release(n)
		return nil
	}
	c.br.Discard(RequestSize) // buffered: cannot fail
	c.requests++
	r := newRequest(req, nil, n)
	if _, err := io.ReadFull(c.br, r.data); err != nil { // buffered: not reached
		r.err = err
	}
	return r
}

// batchScratch is serveBatch's: pooled, since it goes to an interface
// call.
type batchScratch struct {
	rs [batchMax]*request
	ws [batchMax]target.BatchWrite
}

var batchPool = sync.Pool{New: func() any { return new(batchScratch) }}

// serveBatch serves first and second, plain writes just read, with what
// other such writes are buffered behind them: it reads them, hands the
// reading role on, executes them as one batch and answers them together.
// Caller holds the reading role.
func (c *conn) serveBatch(first, second *request) {
	bs := batchPool.Get().(*batchScratch)
	defer func() { *bs = batchScratch{}; batchPool.Put(bs) }()
	rs, ws := &bs.rs, &bs.ws
	rs[0], rs[1] = first, second
	n := 2
	for n < batchMax {
		r := c.readBatchable()
		if r == nil {
			break
		}
		rs[n] = r
		n++
	}
	c.role.free.Store(true)
	c.handRoleOn()
	k := 0
	for _, r := range rs[:n] {
		if r.err == nil {
			ws[k] = target.BatchWrite{P: r.data, Off: int64(r.Offset)}
			k++
		}
	}
	c.batcher.WriteBatch(c.ctx, ws[:k])
	k = 0
	for _, r := range rs[:n] {
		if r.err == nil {
			if err := ws[k].Err; err != nil {
				r.err, r.atOffset = err, true
			}
			k++
		}
	}
	c.answerBatch(rs[:n])
}

// answerBatch sends the replies of rs in one socket write, or queues them
// to the writer when it is busy. With other requests in flight it yields
// before the write, as answer does, so that replies completed meanwhile
// go in the same write.
func (c *conn) answerBatch(rs []*request) {
	if len(c.replies) > 0 || !c.wmu.TryLock() {
		for _, r := range rs {
			c.replies <- r
		}
		return
	}
	others := c.inflight.Count() > len(rs)
	for _, r := range rs {
		c.writeOne(r, false)
	}
	if others {
		c.wmu.Unlock()
		runtime.Gosched()
		c.wmu.Lock()
	}
	c.flushBuffered()
	c.wmu.Unlock()
}

// takeRole waits for the reading role; false once reading ended.
func (c *conn) takeRole() bool {
	for {
		if c.role.free.CompareAndSwap(true, false) {
			return true
		}
		c.role.idle.Add(1)
		_, ok := <-c.role.wake
		c.role.idle.Add(-1)
		if !ok {
			return false
		}
	}
}

// handRoleOn wakes a server for the role just freed, starting one when
// none waits (at most InFlightMax). A token no server needs is a spurious
// wake-up: its taker finds the role taken and waits again.
func (c *conn) handRoleOn() {
	c.role.mu.Lock()
	defer c.role.mu.Unlock()
	if c.role.closed {
		return
	}
	select {
	case c.role.wake <- struct{}{}:
	default:
	}
	if c.role.idle.Load() == 0 && c.role.servers.Load() < int32(c.s.opts.InFlightMax) {
		c.role.servers.Add(1)
		c.serveWG.Add(1) // a server is running (the inline one): not after Wait
		go c.serveRequests()
	}
}

// rescueRole is the rescue timer's: the holder's inline request is slow;
// if the role is still free, hand it on.
func (c *conn) rescueRole() {
	if c.role.free.Load() {
		c.handRoleOn()
	}
}

// endReading records why reading ended and lets every waiting server go.
// Caller holds the role (so no one hands it on meanwhile but the timer).
func (c *conn) endReading(reason string) {
	c.role.mu.Lock()
	defer c.role.mu.Unlock()
	c.role.end = reason
	c.role.closed = true
	close(c.role.wake)
}

// readOne reads the next request and returns it for execution, or nil if
// it was answered already (an invalid request), or why the connection must
// end. Caller holds the reading role.
func (c *conn) readOne() (r *request, reason string) {
	b := &c.reqHdr
	if err := c.awaitRequest(); err != nil {
		return nil, c.ioReason("read request", err)
	}
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return nil, c.ioReason("read request", err)
	}
	req, err := ParseRequest(b[:])
	if err != nil {
		c.kind = target.DisconnectProtocolError
		return nil, err.Error() // cannot resynchronise
	}
	c.requests++
	if req.Type == CmdDisc {
		c.kind = target.DisconnectClientClosed
		return nil, "client disconnected"
	}
	return c.dispatch(req)
}

// errStopping: Close asked the reader to stop.
var errStopping = errors.New("nbd: server closing")

// awaitRequest waits, without a deadline that matters, for the first byte
// of the next request header; from then on the request must arrive within
// RequestTimeout. A pipelined header already buffered costs nothing.
func (c *conn) awaitRequest() error {
	for c.br.Buffered() == 0 {
		if err := c.armRead(); err != nil {
			return err
		}
		_, err := c.br.Peek(1)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || c.stopping.Load() {
			return err
		}
		c.readDeadline = time.Time{} // idle, not stalled: wait on
	}
	if c.br.Buffered() < RequestSize {
		return c.armRead()
	}
	return nil
}

// armRead makes sure what is read next arrives within RequestTimeout,
// give or take an eighth: the deadline moves only when it comes closer
// than that, which keeps the per-request cost at one clock read.
func (c *conn) armRead() error {
	now, t := time.Now(), c.s.opts.RequestTimeout
	if c.readDeadline.Sub(now) >= t-t/8 {
		return nil
	}
	c.readDeadline = now.Add(t)
	c.nc.SetReadDeadline(c.readDeadline)
	if c.stopping.Load() { // Close's deadline may just have been overwritten
		return errStopping
	}
	return nil
}

// dispatch checks a request and reads its payload, and returns it for
// execution, or answers it with an error (nil). It returns why the
// connection must end, or "".
func (c *conn) dispatch(req Request) (*request, string) {
	err := c.check(req)
	if req.Type == CmdWrite && err != nil {
		if req.Length > writeDiscardBytesMax {
			c.kind = target.DisconnectProtocolError
			return nil, fmt.Sprintf("write of %d bytes", req.Length)
		}
		if c.br.Buffered() < int(req.Length) {
			if err := c.armRead(); err != nil {
				return nil, c.ioReason("skip write payload", err)
			}
		}
		if _, err := c.br.Discard(int(req.Length)); err != nil {
			return nil, c.ioReason("skip write payload", err)
		}
	}
	n := 0
	switch {
	case err != nil:
	case req.Type == CmdRead, req.Type == CmdWrite:
		n = int(req.Length)
	case req.Type == CmdBlockStatus:
		n = blockStatusBytes
		if c.allocation && c.changed != "" {
			n *= 2 // one chunk per context
		}
	}
	c.inflight.Acquire(n)
	if n > 0 && !c.s.opts.Budget.Acquire(c.quit, int64(n)) {
		c.inflight.Release(n)
		return nil, c.ioReason("wait for the in-flight budget", nil)
	}
	r := newRequest(req, err, n)
	if err != nil {
		c.replies <- r
		return nil, ""
	}
	if req.Type == CmdWrite {
		if c.br.Buffered() < len(r.data) {
			if err := c.armRead(); err != nil { // the budget may have kept us long
				c.release(r)
				return nil, c.ioReason("read write payload", err)
			}
		}
		if _, err := io.ReadFull(c.br, r.data); err != nil {
			c.release(r)
			return nil, c.ioReason("read write payload", err)
		}
	}
	return r, ""
}

// newRequest returns a pooled request for req with its error and n bytes
// of payload (charged to the window and budget) in a pooled buffer.
func newRequest(req Request, err error, n int) *request {
	r := getRequest()
	r.Request, r.err, r.budget = req, err, n
	if n > 0 {
		r.buf = target.GetBuffer(n)
		r.data = (*r.buf)[:n]
	}
	return r
}

// Flags each command accepts. CmdFlagFUA is valid on every command.
var cmdFlags = [...]uint16{
	CmdRead:        CmdFlagFUA | CmdFlagDF,
	CmdWrite:       CmdFlagFUA,
	CmdFlush:       CmdFlagFUA,
	CmdTrim:        CmdFlagFUA,
	CmdCache:       CmdFlagFUA,
	CmdWriteZeroes: CmdFlagFUA | CmdFlagNoHole | CmdFlagFastZero,
	CmdBlockStatus: CmdFlagFUA | CmdFlagReqOne,
}

// check validates a request without touching the device.
func (c *conn) check(r Request) error {
	if int(r.Type) >= len(cmdFlags) || r.Type == CmdDisc {
		return fmt.Errorf("unknown command %d: %w", r.Type, target.ErrInvalid)
	}
	allowed := cmdFlags[r.Type]
	if !c.structured {
		allowed &^= CmdFlagDF
	}
	if r.Flags&^allowed != 0 {
		return fmt.Errorf("flags %#x not valid for command %d: %w", r.Flags&^allowed, r.Type, target.ErrInvalid)
	}
	info := c.dev.Info()
	switch r.Type {
	case CmdFlush:
		if r.Offset != 0 || r.Length != 0 {
			return fmt.Errorf("flush with offset %d length %d: %w", r.Offset, r.Length, target.ErrInvalid)
		}
		return nil
	case CmdWrite, CmdTrim, CmdWriteZeroes:
		if info.ReadOnly {
			return fmt.Errorf("export is read-only: %w", target.ErrReadOnly)
		}
	case CmdBlockStatus:
		if !c.allocation && c.changed == "" {
			return fmt.Errorf("block status without a meta context selected: %w", target.ErrInvalid)
		}
		if r.Length == 0 {
			return fmt.Errorf("block status of 0 bytes: %w", target.ErrInvalid)
		}
	}
	if r.Offset > math.MaxInt64 {
		return fmt.Errorf("offset %d: %w", r.Offset, target.ErrOutOfRange)
	}
	if err := target.CheckRange(int64(r.Offset), int64(r.Length), info.Size); err != nil {
		return fmt.Errorf("%d bytes at %d of %d: %w", r.Length, r.Offset, info.Size, err)
	}
	if int(r.Length) > c.s.opts.RequestBytesMax {
		switch r.Type {
		case CmdRead:
			return fmt.Errorf("read of %d bytes, at most %d: %w", r.Length, c.s.opts.RequestBytesMax, errOverflow)
		case CmdWrite:
			return fmt.Errorf("write of %d bytes, at most %d: %w", r.Length, c.s.opts.RequestBytesMax, target.ErrInvalid)
		}
	}
	return nil
}

// answer sends a worker's reply. With no reply queued and the writer idle,
// the worker writes its own: one goroutine handoff (and often a futex
// wake) fewer per request, which is most of what a 4 KiB read at queue
// depth 1 costs beside the syscalls. Otherwise the writer does.
//
// A small reply written while other requests are in flight is not flushed
// at once: its worker yields the processor (runtime.Gosched) first, so that
// workers already runnable — completed by the same store batch, typically
// — add their replies to the buffer, and the first to run again flushes
// them all in one socket write. Each reply was its own write(2) before: a
// third of cairnd's syscall time under 4 KiB writes at queue depth 32 (go
// tool trace). With nothing else runnable the yield returns at once; at
// queue depth 1 there is no yield.
func (c *conn) answer(r *request) {
	if len(c.replies) > 0 || !c.wmu.TryLock() {
		c.replies <- r
		return
	}
	if !c.smallReply(r) || c.inflight.Count() < 2 {
		c.writeOne(r, true)
		c.wmu.Unlock()
		return
	}
	c.writeOne(r, false)
	c.wmu.Unlock()
	runtime.Gosched()
	c.wmu.Lock()
	c.flushBuffered()
	c.wmu.Unlock()
}

// smallReply reports whether r's reply goes through the buffer whole (see
// writeRead): no READ data to write from its own slice.
func (c *conn) smallReply(r *request) bool {
	return r.err != nil || r.Type != CmdRead || len(r.data) < directDataBytes
}

// execute runs a checked request against the device.
func (c *conn) execute(r *request) {
	off, n := int64(r.Offset), int64(r.Length)
	var err error
	switch r.Type {
	case CmdRead:
		if n > 0 {
			err = c.dev.ReadAt(c.ctx, r.data, off)
		}
	case CmdWrite:
		if n > 0 {
			var f target.WriteFlags
			if r.Flags&CmdFlagFUA != 0 {
				f |= target.FUA
			}
			err = c.dev.WriteAt(c.ctx, r.data, off, f)
		}
	case CmdFlush:
		err = c.dev.Flush(c.ctx)
	case CmdTrim, CmdWriteZeroes:
		if n > 0 {
			// Zero is always fast, so CmdFlagFastZero is honoured by
			// doing it.
			f := target.ZeroDiscard
			if r.Type == CmdWriteZeroes && r.Flags&CmdFlagNoHole != 0 {
				f = target.ZeroNoHole
			}
			if r.Flags&CmdFlagFUA != 0 {
				f |= target.ZeroFUA
			}
			err = c.dev.Zero(c.ctx, off, n, f)
		}
	case CmdCache:
		// Checked; nothing to prefetch.
	case CmdBlockStatus:
		err = c.blockStatus(r)
	}
	if err != nil {
		r.err, r.atOffset = err, n > 0
	}
}

// blockStatus fills r.data with the reply payloads of the selected
// contexts: base:allocation's, then cairn:changed's (from r.split when
// both are selected).
func (c *conn) blockStatus(r *request) error {
	n := 0
	r.split = 0
	if c.allocation {
		k, err := c.allocationStatus(r, r.data)
		if err != nil {
			return err
		}
		n = k
	}
	if c.changed != "" {
		k, err := c.changedStatus(r, r.data[n:])
		if err != nil {
			return err
		}
		r.split = n
		n += k
	}
	r.data = r.data[:n]
	return nil
}

// extentRun collects the block descriptors of one context's reply into d
// (of room for extentsMax): runs of one status are merged.
type extentRun struct {
	d      []byte
	count  int
	last   uint32
	reqOne bool
}

// add appends l bytes of status st; false when there is no room left.
func (x *extentRun) add(l int64, st uint32) bool {
	if x.count > 0 && st == x.last {
		i := (x.count - 1) * BlockDescriptorSize
		be.PutUint32(x.d[i:], be.Uint32(x.d[i:])+uint32(l))
		return true
	}
	if x.count == extentsMax || (x.reqOne && x.count == 1) {
		return false
	}
	PutBlockDescriptor(x.d[x.count*BlockDescriptorSize:], uint32(l), st)
	x.count++
	x.last = st
	return true
}

// allocationStatus writes the base:allocation payload into d and returns
// its length.
func (c *conn) allocationStatus(r *request, d []byte) (int, error) {
	off, end := int64(r.Offset), int64(r.Offset)+int64(r.Length)
	be.PutUint32(d, metaContextID)
	x := extentRun{d: d[4:], reqOne: r.Flags&CmdFlagReqOne != 0}
	if c.mapper != nil {
		pos := off
		err := c.mapper.Extents(c.ctx, off, end-off, func(e target.Extent) bool {
			if e.Length <= 0 || pos >= end {
				return false
			}
			l := min(e.Length, end-pos)
			var st uint32
			if e.Hole {
				st |= StateHole | StateZero
			}
			if e.Zero {
				st |= StateZero
			}
			if !x.add(l, st) {
				return false
			}
			pos += l
			return pos < end
		})
		if err != nil {
			return 0, err
		}
	}
	if x.count == 0 {
		// No map: status 0 (allocated, contents unknown) is always true.
		PutBlockDescriptor(x.d, r.Length, 0)
		x.count = 1
	}
	return 4 + x.count*BlockDescriptorSize, nil
}

// changedStatus writes the cairn:changed payload into d and returns its
// length.
func (c *conn) changedStatus(r *request, d []byte) (int, error) {
	off, end := int64(r.Offset), int64(r.Offset)+int64(r.Length)
	be.PutUint32(d, changedContextID)
	x := extentRun{d: d[4:], reqOne: r.Flags&CmdFlagReqOne != 0}
	pos := off
	err := c.changer.Changes(c.ctx, c.changed, off, end-off, func(e target.ChangeExtent) bool {
		if e.Length <= 0 || pos >= end {
			return false
		}
		l := min(e.Length, end-pos)
		var st uint32
		if e.Changed {
			st = StateChanged
		}
		if !x.add(l, st) {
			return false
		}
		pos += l
		return pos < end
	})
	if err != nil {
		return 0, err
	}
	if x.count == 0 {
		// Nothing reported: changed is the answer that is always safe.
		PutBlockDescriptor(x.d, r.Length, StateChanged)
		x.count = 1
	}
	return 4 + x.count*BlockDescriptorSize, nil
}

// writer sends replies in completion order until c.replies is closed,
// flushing whenever no further reply is ready.
func (c *conn) writer() {
	defer c.writerWG.Done()
	for r := range c.replies {
		c.wmu.Lock()
		c.writeOne(r, true)
		c.wmu.Unlock()
	}
	c.wmu.Lock()
	if !c.broken.Load() {
		c.bw.Flush()
	}
	c.wmu.Unlock()
}

// writeOne writes r's reply, flushes when flush is set and no other reply
// is queued, and releases r. Caller holds c.wmu.
func (c *conn) writeOne(r *request, flush bool) {
	if !c.broken.Load() {
		c.armWrite()
		err := c.writeReply(r)
		if err == nil && flush && len(c.replies) == 0 {
			err = c.bw.Flush()
		}
		if err != nil {
			c.writeFailed(err)
		}
	}
	c.release(r)
}

// flushBuffered flushes what replies are buffered, if any. Caller holds
// c.wmu.
func (c *conn) flushBuffered() {
	if c.broken.Load() || c.bw.Buffered() == 0 {
		return
	}
	c.armWrite()
	if err := c.bw.Flush(); err != nil {
		c.writeFailed(err)
	}
}

// writeFailed breaks the connection after a failed reply write. The reader
// notices the closed connection (or the abandoned budget wait); requests
// still in flight are dropped as they complete. Caller holds c.wmu.
func (c *conn) writeFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.replyTimedOut.Store(true)
	}
	c.broken.Store(true)
	c.abandon()
	c.cancel()
	c.nc.Close()
}

// armWrite gives what is written next ReplyTimeout to drain, give or take
// an eighth (see armRead). Caller holds c.wmu.
func (c *conn) armWrite() {
	now, t := time.Now(), c.s.opts.ReplyTimeout
	if c.writeDeadline.Sub(now) < t-t/8 {
		c.writeDeadline = now.Add(t)
		c.nc.SetWriteDeadline(c.writeDeadline)
	}
}

// writeRead writes a READ reply: its header hdr, then its data p.
//
// Data of directDataBytes or more goes to the socket straight from p once
// what is buffered (other replies) is out: through the buffer, every byte
// of a 1 MiB read was copied once more (a tenth of cairnd's CPU at 1 MiB
// reads). Over plain TCP the header and all the data go in one writev:
// written as the header (a system call and a 24-byte segment of its own,
// TCP_NODELAY, which the client woke for) and 256 KiB pieces, 1 MiB reads
// took 0.74 s of cairnd CPU per GiB against 0.60 (fio nbd read 1m qd8,
// interleaved, medians of 7).
//
// ReplyTimeout cuts off a client that stops reading, not one that reads
// slowly (a 32 MiB reply at 1 MB/s): a write that reaches its deadline
// goes on under a renewed one if the client took at least
// directChunkBytes meanwhile. Under TLS, where a write that timed out
// breaks the connection for good (crypto/tls), the data goes in pieces of
// directChunkBytes with the deadline renewed before each; buffered, every
// replyChunkBytes.
func (c *conn) writeRead(hdr, p []byte) error {
	if len(p) < directDataBytes {
		c.bw.Write(hdr)
		for len(p) > replyChunkBytes {
			if _, err := c.bw.Write(p[:replyChunkBytes]); err != nil {
				return err
			}
			p = p[replyChunkBytes:]
			c.armWrite()
		}
		_, err := c.bw.Write(p)
		return err
	}
	if c.bw.Buffered() > 0 {
		if err := c.bw.Flush(); err != nil {
			return err
		}
	}
	if c.tlsConn != nil {
		if _, err := c.stream.Write(hdr); err != nil {
			return err
		}
		for len(p) > 0 {
			k := min(len(p), directChunkBytes)
			c.armWrite()
			if _, err := c.stream.Write(p[:k]); err != nil {
				return err
			}
			p = p[k:]
		}
		return nil
	}
	// In the conn, not on the stack: WriteTo's interface call would move
	// them to the heap on every reply. WriteTo nils what it wrote.
	c.iovArr = [2][]byte{hdr, p}
	c.iov = c.iovArr[:]
	for {
		n, err := c.iov.WriteTo(c.stream)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || n < directChunkBytes {
			return err
		}
		c.armWrite()
	}
}

// release returns r's resources.
func (c *conn) release(r *request) {
	if r.buf != nil {
		target.PutBuffer(r.buf)
	}
	if r.budget > 0 {
		c.s.opts.Budget.Release(int64(r.budget))
	}
	c.inflight.Release(r.budget)
	putRequest(r)
}

// writeReply encodes and writes r's reply to the buffered writer.
func (c *conn) writeReply(r *request) error {
	h := r.hdr[:]
	if r.err != nil {
		errno := Errno(r.err, r.Type)
		if !c.structured {
			PutSimpleReply(h, errno, r.Cookie)
			_, err := c.bw.Write(h[:SimpleReplySize])
			return err
		}
		msg := r.err.Error()
		if len(msg) > errorMessageMax {
			msg = msg[:errorMessageMax]
		}
		typ, n := ReplyError, ErrorPayloadSize(len(msg))
		if r.atOffset {
			typ, n = ReplyErrorOffset, n+8
		}
		sr := StructuredReply{Flags: ReplyFlagDone, Type: typ, Cookie: r.Cookie, Length: uint32(n)}
		sr.Put(h)
		PutErrorHead(h[StructuredReplySize:], errno, len(msg))
		c.bw.Write(h[:StructuredReplySize+6])
		c.bw.WriteString(msg)
		if r.atOffset {
			be.PutUint64(h, r.Offset)
			c.bw.Write(h[:8])
		}
		return nil // a failed write shows again at Flush
	}
	switch {
	case r.Type == CmdRead && c.structured:
		if len(r.data) == 0 {
			sr := StructuredReply{Flags: ReplyFlagDone, Type: ReplyNone, Cookie: r.Cookie}
			sr.Put(h)
			_, err := c.bw.Write(h[:StructuredReplySize])
			return err
		}
		sr := StructuredReply{Flags: ReplyFlagDone, Type: ReplyOffsetData, Cookie: r.Cookie, Length: uint32(8 + len(r.data))}
		sr.Put(h)
		be.PutUint64(h[StructuredReplySize:], r.Offset)
		return c.writeRead(h[:StructuredReplySize+8], r.data)
	case r.Type == CmdBlockStatus:
		chunks := [2][]byte{r.data[:r.split], r.data[r.split:]}
		for i, p := range chunks {
			if len(p) == 0 {
				continue
			}
			sr := StructuredReply{Type: ReplyBlockStatus, Cookie: r.Cookie, Length: uint32(len(p))}
			if i == len(chunks)-1 {
				sr.Flags = ReplyFlagDone
			}
			sr.Put(h)
			c.bw.Write(h[:StructuredReplySize])
			if _, err := c.bw.Write(p); err != nil {
				return err
			}
		}
		return nil
	}
	PutSimpleReply(h, 0, r.Cookie)
	if r.Type == CmdRead {
		return c.writeRead(h[:SimpleReplySize], r.data)
	}
	_, err := c.bw.Write(h[:SimpleReplySize])
	return err
}
