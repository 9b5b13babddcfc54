package wire

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
	"sync/atomic"
	"time"

	"cairn/backend/crc32c"
	"cairn/backend/store"
	"cairn/target"
)

// sconn is one client connection of a Server. The goroutine that runs serve
// owns it and reads requests; workers (started on demand, at most
// InFlightMax) execute them and write their replies, in completion order,
// through w (a reply that completes while another is being written joins
// the next socket write).
type sconn struct {
	s      *Server
	raw    net.Conn // the accepted connection; kill closes it
	nc     net.Conn // raw, or the TLS connection over it
	br     *bufio.Reader
	bw     *bufio.Writer
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger

	rdl deadline // reader goroutine only

	w frameWriter // replies, once the handshake is done

	work     chan *request // reader → workers
	workers  int           // reader goroutine only
	workerWG sync.WaitGroup
	inflight target.Window
	broken   atomic.Bool // a reply write failed; later replies are dropped

	// A batch of plain writes the reader gathers (see gather); reader
	// goroutine only. reserved is the payload of the next request, whose
	// window the reader has already taken (reservedOK).
	batch      []*request
	batchWS    []store.BatchWrite
	batchReply []byte
	reserved   int
	reservedOK bool
	batchOpen  bool // gather read on: the next frame joins the batch
}

// request is one request from header to reply. It passes from the reader
// to a worker, which replies and releases it; whoever holds it owns it.
type request struct {
	h      Header
	fixed  [ZeroRequestSize]byte // the fixed part of the body
	vol    uint64
	block  uint64
	blocks uint64
	epoch  uint64 // Read, Extents; Changed: from; VersionsSince: seq min
	to     uint64 // Changed; ApplyVersions: the generation
	stamp  store.Stamp
	buf    *[]byte  // pooled payload buffer, or nil
	data   []byte   // Write: the data; Read: the reply data; Extents, Changed: the reply runs
	budget int      // payload bytes charged to the in-flight budget
	sum    uint32   // reply payload checksum
	crcs   []uint32 // Write to a SummedWriter: the crc32c of each block of data
	more   bool     // Extents, Changed, VersionsSince: the answer stops before the end of the range
	err    error
	hdr    [HeaderSize]byte
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

func getRequest() *request { return requestPool.Get().(*request) }

func putRequest(r *request) {
	crcs := r.crcs[:0]
	*r = request{}
	r.crcs = crcs
	requestPool.Put(r)
}

// blockCombiner joins a block's CRC to the CRC of what came before it.
var blockCombiner = crc32c.NewCombiner(BlockSize)

// blockSums appends the crc32c of each block of data (a whole number of
// blocks) to crcs and returns them with the CRC of prefix‖data, prefix's
// CRC being sum.
func blockSums(crcs []uint32, sum uint32, data []byte) ([]uint32, uint32) {
	for i := 0; i+BlockSize <= len(data); i += BlockSize {
		c := crc32c.Checksum(data[i : i+BlockSize])
		crcs = append(crcs, c)
		sum = blockCombiner.Combine(sum, c)
	}
	return crcs, sum
}

func newSconn(s *Server, nc net.Conn) *sconn {
	ctx, cancel := context.WithCancel(context.Background())
	return &sconn{s: s, raw: nc, nc: nc, ctx: ctx, cancel: cancel,
		log: s.log.With("remote", nc.RemoteAddr().String())}
}

// kill breaks the connection from any goroutine: backend calls see their
// context cancelled, reads and reply writes fail.
func (c *sconn) kill() {
	c.raw.Close() // first, so that no reply of a cancelled call gets out
	c.cancel()
}

// serve runs the connection to its end.
func (c *sconn) serve() {
	defer c.raw.Close()
	defer c.cancel()
	setNoDelay(c.raw)
	start := time.Now()
	peer, reason := c.handshake()
	if reason != "" {
		c.s.stats.handshakeErrors.Add(1)
		c.log.Warn("wire handshake failed", "reason", reason)
		return
	}
	c.log = c.log.With("client", peer)
	c.log.Info("wire connection open")
	reason = c.transmit()
	c.log.Info("wire connection closed", "reason", reason, "duration", time.Since(start).Round(time.Millisecond))
}

// handshake runs TLS (if configured) and the Hello exchange within
// HandshakeTimeout. It returns the client's name, or why it failed.
func (c *sconn) handshake() (peer, reason string) {
	_ = c.raw.SetDeadline(time.Now().Add(c.s.opts.HandshakeTimeout))
	if cfg := c.s.opts.TLS; cfg != nil {
		tc := tls.Server(c.raw, cfg)
		if err := tc.HandshakeContext(c.ctx); err != nil {
			return "", "tls: " + err.Error()
		}
		c.nc = tc
		if cs := tc.ConnectionState(); len(cs.PeerCertificates) > 0 {
			peer = cs.PeerCertificates[0].Subject.CommonName + "/"
		}
	}
	c.br, c.bw = newBufio(c.nc)
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(c.br, hb[:]); err != nil {
		return "", ioReason("read hello", err)
	}
	h, err := ParseHeader(hb[:])
	if err == nil && (h.Op != OpHello || h.Flags != 0 || h.Length > HelloSizeMin+NameBytesMax) {
		err = fmt.Errorf("%w: first frame is %s with flags %#x and %d bytes, want a hello", ErrProtocol, h.Op, h.Flags, h.Length)
	}
	var body [HelloSizeMin + NameBytesMax]byte
	if err == nil {
		if _, err := io.ReadFull(c.br, body[:h.Length]); err != nil {
			return "", ioReason("read hello", err)
		}
		if sum := Checksum(body[:h.Length]); sum != h.Sum {
			err = fmt.Errorf("%w: hello payload crc %#08x, computed %#08x", ErrChecksum, h.Sum, sum)
		}
	}
	var hello Hello
	if err == nil {
		hello, err = ParseHello(body[:h.Length])
	}
	if err != nil {
		c.answerFailed(hb[:], err)
		return "", err.Error()
	}
	reply := AppendHello(body[:0], Hello{
		Name:            c.s.opts.Name,
		RequestBytesMax: RequestBytesMax,
		InFlightMax:     uint32(c.s.opts.InFlightMax),
	})
	out := Header{Op: OpHello, Flags: FlagReply, ID: h.ID, Length: uint32(len(reply)), Sum: Checksum(reply)}
	out.Put(hb[:])
	c.bw.Write(hb[:])
	c.bw.Write(reply)
	if err := c.bw.Flush(); err != nil {
		return "", ioReason("write hello", err)
	}
	_ = c.nc.SetDeadline(time.Time{})
	return peer + hello.Name, ""
}

// answerFailed writes, synchronously, an error reply to the frame whose
// header is hb, when the header can be trusted that far (its magic and
// checksum, or a version mismatch).
func (c *sconn) answerFailed(hb []byte, err error) {
	if be.Uint32(hb) != Magic || errors.Is(err, ErrChecksum) && !errors.Is(err, ErrVersion) {
		return
	}
	msg := errorMessage(err)
	var out [HeaderSize]byte
	h := Header{Op: Op(hb[5]), Flags: FlagReply, ID: be.Uint64(hb[8:]), Status: codeOf(err),
		Length: uint32(len(msg)), Sum: Checksum([]byte(msg))}
	h.Put(out[:])
	c.bw.Write(out[:])
	c.bw.WriteString(msg)
	c.bw.Flush()
}

// transmit serves requests until the client goes away or the connection
// breaks; requests in flight are answered (or dropped, if the socket
// failed) before it returns.
func (c *sconn) transmit() (reason string) {
	c.work = make(chan *request)
	c.inflight.Init(c.s.opts.InFlightMax, c.s.opts.InFlightBytesMax)
	c.w.init(c.nc, c.s.opts.FrameTimeout)

	reason = c.read()

	c.inflight.Wait()
	close(c.work)
	c.workerWG.Wait()
	return reason
}

// read is the reader loop. It returns why the connection ends.
func (c *sconn) read() string {
	var hb [HeaderSize]byte
	for {
		if c.br.Buffered() == 0 {
			// Idle: wait for the next frame without a deadline.
			c.rdl.disarm(c.nc)
			if _, err := c.br.Peek(1); err != nil {
				c.runBatch()
				return ioReason("read", err)
			}
		}
		c.rdl.arm(c.nc, c.s.opts.FrameTimeout)
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			c.runBatch()
			return ioReason("read header", err)
		}
		h, err := ParseHeader(hb[:])
		if err != nil {
			c.runBatch()
			if be.Uint32(hb[:]) == Magic && !errors.Is(err, ErrChecksum) {
				c.queueError(Header{Op: Op(hb[5]), ID: be.Uint64(hb[8:])}, err)
			}
			return err.Error() // cannot resynchronise
		}
		reason := c.dispatch(h)
		if c.reservedOK { // not taken by the frame gather peeked: cannot happen, but never leak it
			c.inflight.Release(c.reserved)
			c.reservedOK = false
		}
		if reason != "" {
			c.runBatch()
			return reason
		}
		if c.batchOpen {
			c.batchOpen = false
		} else {
			c.runBatch() // nothing is left waiting for a frame that is not there
		}
	}
}

// queueError answers h with err, from the reader goroutine.
func (c *sconn) queueError(h Header, err error) {
	c.inflight.Acquire(0)
	r := getRequest()
	r.h, r.err = h, err
	c.reply(r)
}

// skip discards the payload of a request answered without executing it.
func (c *sconn) skip(h Header, err error) string {
	if _, derr := c.br.Discard(int(h.Length)); derr != nil {
		return ioReason("skip payload", derr)
	}
	c.queueError(h, err)
	return ""
}

// dispatch reads the body of the request h, then hands it to a worker or
// answers it with an error. It returns why the connection must end, or "".
func (c *sconn) dispatch(h Header) string {
	if h.Flags&FlagReply != 0 {
		err := fmt.Errorf("%w: reply frame from a client", ErrProtocol)
		c.queueError(h, err)
		return err.Error()
	}
	fixed := 0
	switch h.Op {
	case OpRead:
		fixed = ReadRequestSize
	case OpWrite:
		fixed = WriteRequestSize
	case OpZero:
		fixed = ZeroRequestSize
	case OpExtents:
		fixed = ExtentsRequestSize
	case OpChanged:
		fixed = ChangedRequestSize
	case OpVersionsSince:
		fixed = VersionsRequestSize
	case OpApplyVersions:
		fixed = ApplyRequestSize
	case OpSync:
	case OpHello:
		return c.skip(h, fmt.Errorf("%w: hello after the handshake", ErrProtocol))
	case OpTargetHold, OpTargetRelease, OpTargetDrained:
		return c.dispatchTarget(h)
	default:
		return c.skip(h, fmt.Errorf("%w: %s", ErrUnsupported, h.Op))
	}
	if bad := h.Flags &^ requestFlags(h.Op); bad != 0 {
		return c.skip(h, fmt.Errorf("%w: flags %#x on %s", ErrProtocol, uint16(bad), h.Op))
	}
	variable := h.Op == OpWrite || h.Op == OpApplyVersions // data follows the fixed part
	if variable && int(h.Length) < fixed || !variable && int(h.Length) != fixed {
		return c.skip(h, fmt.Errorf("%w: %s request of %d bytes", ErrProtocol, h.Op, h.Length))
	}
	r := getRequest()
	r.h = h
	if _, err := io.ReadFull(c.br, r.fixed[:fixed]); err != nil {
		putRequest(r)
		return ioReason("read request", err)
	}
	sum := UpdateChecksum(0, r.fixed[:fixed])
	n := 0 // payload bytes: request data or reply
	var err error
	switch h.Op {
	case OpRead:
		var q ReadRequest
		q, err = ParseReadRequest(r.fixed[:fixed])
		r.vol, r.block, r.blocks, r.epoch = q.Vol, q.Block, uint64(q.Blocks), q.Epoch
		n = int(q.Blocks) * BlockSize
	case OpWrite:
		var q WriteRequest
		q, _, err = ParseWriteRequest(r.fixed[:fixed])
		r.vol, r.block, r.stamp = q.Vol, q.Block, q.Stamp
		n = int(h.Length) - fixed
	case OpZero:
		var q ZeroRequest
		q, err = ParseZeroRequest(r.fixed[:fixed])
		r.vol, r.block, r.blocks, r.stamp = q.Vol, q.Block, q.Blocks, q.Stamp
	case OpExtents:
		var q ExtentsRequest
		q, err = ParseExtentsRequest(r.fixed[:fixed])
		r.vol, r.block, r.blocks, r.epoch = q.Vol, q.Block, q.Blocks, q.Epoch
		n = ExtentsReplyBytesMax
	case OpChanged:
		var q ChangedRequest
		q, err = ParseChangedRequest(r.fixed[:fixed])
		r.vol, r.block, r.blocks, r.epoch, r.to = q.Vol, q.Block, q.Blocks, q.From, q.To
		n = ExtentsReplyBytesMax
	case OpVersionsSince:
		var q VersionsRequest
		q, err = ParseVersionsRequest(r.fixed[:fixed])
		r.vol, r.block, r.blocks, r.epoch = q.Vol, q.Block, q.Blocks, q.SeqMin
		n = VersionsReplyBytesMax
	case OpApplyVersions:
		var q ApplyRequest
		q, err = ParseApplyRequest(r.fixed[:fixed])
		r.to, r.vol = q.Generation, q.Vol
		n = int(h.Length) - fixed
	}
	if err != nil {
		// The fixed parts parse whenever their size is right, but for a
		// Read over its bound.
		r.err, n = err, 0
		if variable {
			n = int(h.Length) - fixed
		}
	}
	if c.reservedOK && c.reserved == n {
		c.reservedOK = false // taken by gather when it peeked this request
	} else {
		c.inflight.Acquire(n) // blocks past the bounds: TCP backpressure
	}
	r.budget = n
	if n > 0 {
		r.buf = target.GetBuffer(n)
		r.data = (*r.buf)[:n]
	}
	if variable {
		c.rdl.arm(c.nc, c.s.opts.FrameTimeout)
		if _, err := io.ReadFull(c.br, r.data); err != nil {
			c.release(r)
			return ioReason("read write data", err)
		}
		if c.s.summed != nil && h.Op == OpWrite && r.err == nil && len(r.data) > 0 && len(r.data)%BlockSize == 0 {
			r.crcs, sum = blockSums(r.crcs[:0], sum, r.data)
		} else {
			sum = UpdateChecksum(sum, r.data)
		}
	}
	if sum != h.Sum {
		r.err = fmt.Errorf("%w: %s payload crc %#08x, computed %#08x", ErrChecksum, h.Op, h.Sum, sum)
		reason := r.err.Error()
		c.reply(r)
		return reason // the peer or the path corrupts data: start afresh
	}
	if r.err != nil {
		c.reply(r)
		return ""
	}
	if c.gather(r) {
		return ""
	}
	c.runBatch()
	if c.inline(r) {
		c.runInline(r)
		return ""
	}
	c.work1(r)
	return ""
}

// Batches. Frames of plain writes often arrive together (a target's NBD
// reader hands on a burst of writes, each sent as its own frame). Executed
// one by one, each costs the store its own append and the connection its
// own reply write. The reader instead gathers a plain write of whole blocks
// (at most batchDataMax) while the next frame is also one, for the same
// volume, already buffered whole, and fits the connection's window now
// (TryAcquire: a batch that waited for room its own requests hold would
// never run); up to batchMax. Then it gives them to the backend in one
// call (volume.BatchWriter: one group of appends in the store) and writes
// their replies with one socket write. Nothing waits for a frame that has
// not arrived: a batch runs as soon as the next frame would not join it,
// and a single write is executed inline as before. Only when InlineWrites
// says plain writes do not wait, as for inline.
const (
	batchMax     = 32
	batchDataMax = 32 << 10 // a frame must fit the reader's buffer (bufferBytes) whole
)

// gather takes r into the reader's batch if it is a write that batches,
// and reports whether it did; it runs the batch once nothing more joins.
func (c *sconn) gather(r *request) bool {
	if c.s.batcher == nil || !c.s.opts.InlineWrites || r.h.Op != OpWrite || r.h.Flags&FlagSync != 0 ||
		r.err != nil || !batchSize(len(r.data)) {
		return false
	}
	if len(c.batch) > 0 && c.batch[0].vol != r.vol {
		c.runBatch()
	}
	c.batch = append(c.batch, r)
	if len(c.batch) < batchMax && c.joins(r.vol) {
		c.batchOpen = true
		return true
	}
	c.runBatch()
	return true
}

// batchSize reports whether a write of n data bytes may join a batch.
func batchSize(n int) bool { return n > 0 && n%BlockSize == 0 && n <= batchDataMax }

// joins reports whether the next frame is a plain write to vol that will
// join the batch: buffered whole, of whole blocks, with its window taken.
func (c *sconn) joins(vol uint64) bool {
	const need = HeaderSize + WriteRequestSize
	if c.br.Buffered() < need {
		return false
	}
	p, err := c.br.Peek(need)
	if err != nil {
		return false
	}
	h, err := ParseHeader(p[:HeaderSize])
	if err != nil || h.Op != OpWrite || h.Flags != 0 || int(h.Length) < WriteRequestSize {
		return false
	}
	n := int(h.Length) - WriteRequestSize
	if !batchSize(n) || c.br.Buffered() < HeaderSize+int(h.Length) {
		return false
	}
	if q, _, err := ParseWriteRequest(p[HeaderSize:need]); err != nil || q.Vol != vol {
		return false
	}
	if !c.inflight.TryAcquire(n) {
		return false
	}
	c.reserved, c.reservedOK = n, true
	return true
}

// runBatch executes the gathered writes, replies to them and releases
// them. One write alone is executed as an inline one.
func (c *sconn) runBatch() {
	switch len(c.batch) {
	case 0:
		return
	case 1:
		r := c.batch[0]
		c.batch[0], c.batch = nil, c.batch[:0]
		c.runInline(r)
		return
	}
	ws := c.batchWS[:0]
	for _, r := range c.batch {
		// r.crcs were computed checking the frame (dispatch): the store
		// takes them rather than computing them again.
		w := store.BatchWrite{Block: r.block, Data: r.data, Stamp: r.stamp}
		if len(r.crcs) > 0 {
			w.CRCs = r.crcs
		}
		ws = append(ws, w)
	}
	c.s.stats.requests.Add(uint64(len(ws)))
	c.s.stats.batched.Add(uint64(len(ws)))
	c.s.stats.batches.Add(1)
	c.s.batcher.WriteBatch(c.ctx, c.batch[0].vol, ws)
	buf := c.batchReply[:0]
	for i, r := range c.batch {
		r.err = ws[i].Err
		payload := c.replyFrame(r)
		buf = append(append(buf, r.hdr[:]...), payload...)
	}
	if !c.broken.Load() {
		if err := c.w.write(buf, nil, nil); err != nil && !c.broken.Swap(true) {
			c.kill()
		}
	}
	for i, r := range c.batch {
		c.release(r)
		c.batch[i], ws[i] = nil, store.BatchWrite{}
	}
	c.batch, c.batchWS = c.batch[:0], ws[:0]
	if cap(buf) <= keepBytesMax {
		c.batchReply = buf[:0]
	}
}

// runInline executes and answers r on the reader.
func (c *sconn) runInline(r *request) {
	c.s.stats.inlined.Add(1)
	c.execute(r)
	c.reply(r)
}

// inline reports whether the reader executes r itself. Handing a request
// to a worker wakes a goroutine and switches to it, and the reply comes
// from that worker: on this project's VM a hand-off cost about as much as
// the rest of a 4 KiB request (the NBD server measured 56–65 µs of CPU per
// read with one, 32–35 without; see target/nbd's serveRequests). A write
// into the page cache is done in microseconds, so with nothing else
// buffered behind it — no frame that would wait for it — the reader runs
// it and reads on; a frame that arrives meanwhile waits in the socket for
// no longer than the write takes. Pipelined frames already buffered go to
// workers, so that a batch runs in parallel. Only when the backend says
// its plain writes do not wait (ServerOptions.InlineWrites); never a
// sync write, a read (which may go to the device) or anything else. A
// write the kernel throttles (too many dirty pages) holds the reader up
// for as long, where a worker would have been held up instead and the
// reader would have gone on to the next frames, most of them writes that
// the same throttle waits for. Measured in process
// (BenchmarkClientWrite4K/wire-store, client and server CPU together,
// three interleaved runs): 43–45 µs per write against 54–61 at one in
// flight, 12–17 against 18–23 at eight.
func (c *sconn) inline(r *request) bool {
	return c.s.opts.InlineWrites && r.h.Op == OpWrite && r.h.Flags&FlagSync == 0 && c.br.Buffered() == 0
}

// work1 hands r to a worker, starting one if none is idle and fewer than
// InFlightMax run.
func (c *sconn) work1(r *request) {
	select {
	case c.work <- r:
	default:
		if c.workers < c.s.opts.InFlightMax {
			c.workers++
			c.workerWG.Add(1)
			go c.worker()
		}
		c.work <- r
	}
}

// worker executes requests until c.work is closed.
func (c *sconn) worker() {
	defer c.workerWG.Done()
	for r := range c.work {
		c.execute(r)
		c.reply(r)
	}
}

// execute runs a request against the backend.
func (c *sconn) execute(r *request) {
	c.s.stats.requests.Add(1)
	b := c.s.backend
	sync := r.h.Flags&FlagSync != 0
	switch r.h.Op {
	case OpRead:
		r.err = b.Read(c.ctx, r.vol, r.block, r.data, r.epoch)
		if r.err == nil {
			r.sum = Checksum(r.data)
		}
	case OpWrite:
		if len(r.crcs) > 0 { // set only for a SummedWriter (dispatch)
			r.err = c.s.summed.WriteSummed(c.ctx, r.vol, r.block, r.data, r.crcs, r.stamp, sync)
		} else {
			r.err = b.Write(c.ctx, r.vol, r.block, r.data, r.stamp, sync)
		}
	case OpZero:
		r.err = b.Zero(c.ctx, r.vol, r.block, r.blocks, r.stamp, sync)
	case OpSync:
		r.err = b.Sync(c.ctx)
	case OpExtents:
		r.err = c.runs(r, func(fn func(start, count uint64, state bool) bool) error {
			return b.Extents(c.ctx, r.vol, r.block, r.blocks, r.epoch, fn)
		})
		if r.err == nil {
			r.sum = Checksum(r.data)
		}
	case OpChanged:
		ch, ok := b.(Changer)
		if !ok {
			r.err = fmt.Errorf("%w: %s", ErrUnsupported, r.h.Op)
			return
		}
		r.err = c.runs(r, func(fn func(start, count uint64, state bool) bool) error {
			return ch.Changed(c.ctx, r.vol, r.block, r.blocks, r.epoch, r.to, fn)
		})
		if r.err == nil {
			r.sum = Checksum(r.data)
		}
	case OpVersionsSince, OpApplyVersions:
		c.executeVersions(r, sync)
	case OpTargetHold, OpTargetRelease, OpTargetDrained:
		c.executeTarget(r)
	}
}

// executeVersions runs a catch-up op (versions.go).
func (c *sconn) executeVersions(r *request, sync bool) {
	vb, ok := c.s.backend.(Versioner)
	if !ok {
		r.err = fmt.Errorf("%w: %s", ErrUnsupported, r.h.Op)
		return
	}
	if r.h.Op == OpVersionsSince {
		var k int
		var next uint64
		k, next, r.err = FillVersions(c.ctx, vb, r.vol, r.block, r.blocks, r.epoch, r.data)
		if r.err == nil {
			r.data = r.data[:k]
			r.more = next < r.block+r.blocks
			r.sum = Checksum(r.data)
		}
		return
	}
	if f, ok := c.s.backend.(Fencer); ok {
		release, err := f.AdmitGeneration(r.vol, r.to)
		if err != nil {
			r.err = err
			return
		}
		defer release()
	}
	r.err = ApplyRecords(c.ctx, vb, r.vol, r.data, sync)
}

// runs fills r.data with at most ExtentRunsMax runs that walk reports
// (Extents or Changed).
func (c *sconn) runs(r *request, walk func(fn func(start, count uint64, state bool) bool) error) error {
	end := r.block + r.blocks
	if end < r.block {
		end = ^uint64(0)
	}
	k, last := 0, uint64(0)
	var bad error
	err := walk(func(start, count uint64, allocated bool) bool {
		if k == ExtentRunsMax { // a backend calling on after false
			return false
		}
		if count == 0 || count&runAllocated != 0 {
			bad = fmt.Errorf("%w: backend reported a run of %d blocks at %d", store.ErrIO, count, start)
			return false
		}
		run := ExtentRun{Start: start, Count: count, Allocated: allocated}
		run.Put(r.data[k*ExtentRunSize:])
		k++
		last = start + count
		return k < ExtentRunsMax
	})
	if err == nil {
		err = bad
	}
	r.data = r.data[:k*ExtentRunSize]
	r.more = k == ExtentRunsMax && last < end
	return err
}

// reply writes r's reply, or queues it behind the reply being written
// (see frameWriter), and releases r. A failed write breaks the
// connection; later replies are dropped.
func (c *sconn) reply(r *request) {
	if !c.broken.Load() {
		if err := c.writeReply(r); err != nil && !c.broken.Swap(true) {
			// The reader notices the closed connection; requests still in
			// flight are dropped as they complete.
			c.kill()
		}
	}
	c.release(r)
}

// writeReply encodes r's reply and writes it.
func (c *sconn) writeReply(r *request) error {
	payload := c.replyFrame(r)
	return c.w.write(r.hdr[:], nil, payload)
}

// replyFrame encodes r's reply header into r.hdr and returns its payload.
func (c *sconn) replyFrame(r *request) []byte {
	h := Header{Op: r.h.Op, Flags: FlagReply, ID: r.h.ID}
	if r.err != nil {
		c.s.stats.errorReplies.Add(1)
		msg := []byte(errorMessage(r.err))
		h.Status, h.Length, h.Sum = codeOf(r.err), uint32(len(msg)), Checksum(msg)
		h.Put(r.hdr[:])
		return msg
	}
	var payload []byte
	switch r.h.Op {
	case OpRead, OpTargetRelease, OpTargetDrained:
		payload = r.data
	case OpExtents, OpChanged, OpVersionsSince:
		payload = r.data
		if r.more {
			h.Flags |= FlagMore
		}
	}
	h.Length, h.Sum = uint32(len(payload)), r.sum
	h.Put(r.hdr[:])
	return payload
}

// release returns r's resources.
func (c *sconn) release(r *request) {
	if r.buf != nil {
		target.PutBuffer(r.buf)
	}
	c.inflight.Release(r.budget)
	putRequest(r)
}

// ioReason describes why a read or write on the connection failed.
func ioReason(what string, err error) string {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "peer disconnected"
	case errors.Is(err, net.ErrClosed):
		return "connection closed"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return what + ": frame timeout"
	}
	return what + ": " + err.Error()
}
