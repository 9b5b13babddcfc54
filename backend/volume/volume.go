package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"cairn/backend/store"
	"cairn/target"
	"cairn/target/reservation"
)

// BlockSize is the volume's native block size in bytes.
const BlockSize = store.BlockSize

const (
	blockShift = 12 // log2(BlockSize)

	// seqCounterBits is the width of the per-attachment write counter in a
	// seq; the attachment generation fills the bits above it.
	seqCounterBits = 40
	seqCounterMax  = 1<<seqCounterBits - 1
	generationMax  = 1<<(64-seqCounterBits) - 1

	// runBlocksMax bounds the blocks of one node call: chunks that share a
	// replica set are coalesced up to this (4 MiB), well inside the store's
	// request bound.
	runBlocksMax = 1024

	// stripes is the number of block lock stripes per volume; a power of two.
	stripes     = 4096
	stripeWords = stripes / 64
)

// Errors of this package; each also matches the target error a front end
// maps it to.
var (
	ErrClosed       = fmt.Errorf("volume: closed: %w", target.ErrClosed)
	ErrSeqExhausted = fmt.Errorf("volume: write counter exhausted, reattach: %w", target.ErrIO)
)

// Node is a storage node holding replicas of some of the volume's chunks:
// the local store, or a client of a remote one. Methods are safe for
// concurrent use and must not retain the byte slices they are given.
//
// Every call carries the request's context. Its Deadline is the request's
// deadline; its Done channel is the front end's (a connection or task
// ending), and it is not closed when the deadline passes: a Node that waits
// on something arms its own timer from Deadline. A Node must not retain ctx
// after the call returns (the volume reuses it for its next request).
type Node interface {
	Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error
	Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error
	Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error
	Extents(ctx context.Context, vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) error
	Sync(ctx context.Context) error
}

// Starter is a Node that can send a write and collect its result later,
// as the node RPC client does: a write fans out to such replicas with no
// goroutine per replica. StartWrite does what Write does up to sending the
// request and must not reference data once it returned. Unless it failed,
// the caller calls Wait on the result exactly once, with ctx still valid
// (ctx is the request, as for Node).
type Starter interface {
	StartWrite(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool, memo *WriteMemo) (Pending, error)
}

// BatchStarter is a Starter that starts several writes together, as the
// node RPC client does: their requests go out in one socket write, so
// that the storage node reads them together and stores them as one batch.
// StartWrites starts each write of ws (none synced) as StartWrite would,
// setting its P, or its Err if it failed to start; for each with P set
// the caller calls P.Wait exactly once, with its Ctx still valid.
type BatchStarter interface {
	Starter
	StartWrites(vol uint64, ws []StartedWrite)
}

// StartedWrite is one write of a BatchStarter's StartWrites: its request
// (Ctx, Block, Data, Stamp, Memo as for StartWrite) and what starting it
// gave (P, or Err).
type StartedWrite struct {
	Ctx   context.Context
	Block uint64
	Data  []byte
	Stamp store.Stamp
	Memo  *WriteMemo
	P     Pending
	Err   error
}

// WriteMemo is what the StartWrite calls of one write's replicas share,
// so that work over the write's data is done once, not once per replica.
// The fan-out passes one memo, zeroed before the first call, to the
// StartWrite of every replica of the same (vol, block, data, stamp); a
// nil memo shares nothing. A Starter reads what an earlier one left and
// leaves only what any Starter of its kind computes alike for that write:
// the node RPC keeps there its request payload's checksum (the receiving
// node still verifies it against the bytes it got).
type WriteMemo struct {
	Sum    uint32 // the node RPC's payload checksum; valid if SumSet
	SumSet bool
}

// SummedWriter is a Node that takes a write's block CRCs with its data
// (*store.Store does; see store.Store.WriteSummed), so that a storage node
// that computed them to check the node RPC frame the data came in does not
// have its store compute them again. crcs holds one CRC per block of data
// and is not retained.
type SummedWriter interface {
	WriteSummed(ctx context.Context, vol, block uint64, data []byte, crcs []uint32, st store.Stamp, sync bool) error
}

// WriteEach writes each of ws to nd with WriteSummed, one after another:
// a batch for a node that does not take batches.
func WriteEach(ctx context.Context, nd Node, vol uint64, ws []store.BatchWrite) {
	for i := range ws {
		w := &ws[i]
		w.Err = WriteSummed(ctx, nd, vol, w.Block, w.Data, w.CRCs, w.Stamp, false)
	}
}

// WriteSummed writes data to nd with its block CRCs when nd takes them and
// crcs is not nil, else with Write.
func WriteSummed(ctx context.Context, nd Node, vol, block uint64, data []byte, crcs []uint32, st store.Stamp, sync bool) error {
	if sw, ok := nd.(SummedWriter); ok && crcs != nil {
		return sw.WriteSummed(ctx, vol, block, data, crcs, st, sync)
	}
	return nd.Write(ctx, vol, block, data, st, sync)
}

// Pending is a call begun by a Starter; Wait returns its result, as the
// synchronous call would have returned it.
type Pending interface {
	Wait() error
}

// Placement names the replicas of each chunk.
type Placement interface {
	// Replicas returns the nodes holding chunk c, first the one to read from.
	// The slice is owned by the Placement and must not be modified.
	Replicas(chunk uint64) []Node
	// Nodes returns every node holding any chunk of the volume.
	Nodes() []Node
}

// Failover takes a failed replica out of a volume, so that the volume goes
// on, degraded, on the replicas it has left.
type Failover interface {
	// Exclude is called when nd failed a write, zero or sync of the
	// volume (with an error other than no space, an invalid request or a
	// bound; see replicaFault) that at least one other replica of the same blocks
	// completed. It returns nil only once nd is out of the volume durably
	// (no target reads from it again before it has caught up) and the
	// volume's placement, replaced by SetPlacement, no longer names it;
	// the request then succeeds. Any error fails the request with the
	// node's error. ctx is the request's: Exclude must honour its deadline.
	// Exclude is called concurrently, for the same node too.
	Exclude(ctx context.Context, nd Node, cause error) error
}

// Local is the placement of a single-node volume: every chunk on one node.
type Local struct{ nodes []Node }

// NewLocal returns a placement of every chunk on n.
func NewLocal(n Node) *Local { return &Local{nodes: []Node{n}} }

// Replicas implements Placement.
func (l *Local) Replicas(uint64) []Node { return l.nodes }

// Nodes implements Placement.
func (l *Local) Nodes() []Node { return l.nodes }

// Options describe a volume to open. Zero values of optional fields work.
type Options struct {
	ID         uint64
	Size       int64  // bytes, a multiple of BlockSize
	ChunkSize  int64  // bytes, a multiple of BlockSize; 0 = 1 MiB
	Generation uint64 // attachment generation from the catalog, ≥ 1
	Epoch      uint64 // current write epoch, ≥ 1
	ReadOnly   bool
	Placement  Placement
	// Failover, if set, lets a write-class request succeed when some of
	// the replicas of its blocks failed and others did not: it takes the
	// failed ones out of the volume first (see Failover). nil: every
	// replica must succeed.
	Failover Failover
	// RequestTimeout is the deadline of every request's node calls, from
	// its admission; 0 = requestTimeoutDefault.
	RequestTimeout time.Duration
	// Reservations keeps the volume's SCSI reservations (the catalog);
	// nil keeps them in memory. Every request is checked against them.
	Reservations reservation.Store
	// OnHoldEnd, if set, is called once for every hold of the gate when
	// it ends, however it ended (Release, deadline, bound, Close), with
	// Window from the switch to that end and Drained unset. It is called
	// on the goroutine that ended the hold — Release's caller, a timer, or
	// a request's exit past a bound — so it must be quick and must not
	// call the volume.
	OnHoldEnd func(HoldResult)
}

const (
	// requestTimeoutDefault bounds a request's node calls when
	// Options.RequestTimeout is 0.
	requestTimeoutDefault = 30 * time.Second
	// closeGrace is how long past the request timeout (at most as long
	// again) Close waits for the requests inside the volume before it gives
	// up with ErrBusy.
	closeGrace = 5 * time.Second
)

// ErrBusy: Close gave up waiting for requests still inside the volume
// (a node call that ignored its deadline). The volume admits nothing new,
// but its data must not be dropped yet.
var ErrBusy = errors.New("volume: requests still in flight")

// Stats are cumulative counters of a volume.
type Stats struct {
	Reads, Writes, Zeros, Flushes    uint64
	ReadBytes, WriteBytes, ZeroBytes uint64
	Errors                           uint64
	// ReadRetries: reads a replica failed and the next one was asked.
	// Excluded: replicas a Failover took out after they failed.
	ReadRetries, Excluded uint64
}

// Volume is a logical volume. Create it with Open.
type Volume struct {
	id             uint64
	chunkBlocks    uint64
	readOnly       bool
	placement      atomic.Pointer[placementRef]
	failover       Failover
	requestTimeout time.Duration
	onHoldEnd      func(HoldResult) // Options.OnHoldEnd

	size       atomic.Int64
	epoch      atomic.Uint64
	seq        atomic.Uint64 // last seq handed out
	generation uint64

	// life counts the requests inside the volume; lifeClosed is set once
	// Close began, after which admit refuses. drained is closed (once)
	// when the count reaches zero after that.
	life      atomic.Uint64
	drainOnce sync.Once
	drained   chan struct{}

	gate gate // the epoch and a snapshot's held acknowledgements

	// barrier: the requests inside, counted by the parity of the barrier
	// generation they were admitted under (see Barrier).
	barrier struct {
		sync.Mutex // one Barrier at a time
		gen        atomic.Uint64
		inside     [2]atomic.Int64
	}

	res *reservation.Unit // checked at admission; shared with the front ends

	locks [stripes]sync.RWMutex

	stats struct {
		reads, writes, zeros, flushes    atomic.Uint64
		readBytes, writeBytes, zeroBytes atomic.Uint64
		errors                           atomic.Uint64
		readRetries, excluded            atomic.Uint64
	}
}

const lifeClosed = 1 << 63

var _ target.Device = (*Volume)(nil)
var _ target.Mapper = (*Volume)(nil)
var _ reservation.Holder = (*Volume)(nil)
var _ target.Comparer = (*Volume)(nil)
var _ target.BatchWriter = (*Volume)(nil)

// Open returns a volume over opts.Placement.
func Open(opts Options) (*Volume, error) {
	if opts.ChunkSize == 0 {
		opts.ChunkSize = 1 << 20
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = requestTimeoutDefault
	}
	switch {
	case opts.Placement == nil:
		return nil, errors.New("volume: no placement")
	case opts.Size < 0 || opts.Size%BlockSize != 0:
		return nil, fmt.Errorf("volume %d: size %d is not a multiple of %d", opts.ID, opts.Size, BlockSize)
	case opts.ChunkSize <= 0 || opts.ChunkSize%BlockSize != 0:
		return nil, fmt.Errorf("volume %d: chunk size %d is not a multiple of %d", opts.ID, opts.ChunkSize, BlockSize)
	case opts.Generation == 0 || opts.Generation > generationMax:
		return nil, fmt.Errorf("volume %d: generation %d out of range [1, %d]", opts.ID, opts.Generation, uint64(generationMax))
	case opts.Epoch == 0:
		return nil, fmt.Errorf("volume %d: epoch 0", opts.ID)
	case opts.RequestTimeout < 0:
		return nil, fmt.Errorf("volume %d: request timeout %v", opts.ID, opts.RequestTimeout)
	}
	v := &Volume{
		id:             opts.ID,
		chunkBlocks:    uint64(opts.ChunkSize / BlockSize),
		readOnly:       opts.ReadOnly,
		failover:       opts.Failover,
		generation:     opts.Generation,
		requestTimeout: opts.RequestTimeout,
		onHoldEnd:      opts.OnHoldEnd,
		drained:        make(chan struct{}),
		res:            reservation.NewUnit(opts.Reservations),
	}
	v.placement.Store(newPlacementRef(opts.Placement))
	v.size.Store(opts.Size)
	v.epoch.Store(opts.Epoch)
	v.gate.epoch = opts.Epoch
	v.seq.Store(opts.Generation << seqCounterBits)
	return v, nil
}

// placementRef boxes a Placement for an atomic pointer, with how its
// nodes take batches of writes (WriteBatch), looked at once here.
type placementRef struct {
	Placement
	// local is the node holding every chunk, if it is the only node and
	// takes batches.
	local BatchWriter
	// replicated: every node is a Starter but for at most one, which
	// takes batches (a storage node's own store), and there are at most
	// turnNodesMax of them.
	replicated bool
}

func newPlacementRef(p Placement) *placementRef {
	ref := &placementRef{Placement: p}
	nodes := p.Nodes()
	if len(nodes) == 1 {
		ref.local, _ = nodes[0].(BatchWriter)
		return ref
	}
	if len(nodes) == 0 || len(nodes) > turnNodesMax {
		return ref
	}
	others := 0
	for _, nd := range nodes {
		if _, ok := nd.(Starter); !ok {
			if _, ok := nd.(BatchWriter); !ok {
				return ref
			}
			others++
		}
	}
	ref.replicated = others <= 1
	return ref
}

// SetPlacement replaces the volume's placement, for the requests that
// start after it returns (a request in flight keeps the one it began
// with). A Failover calls it once a replica is out.
func (v *Volume) SetPlacement(p Placement) {
	if p == nil {
		panic("volume: SetPlacement(nil)")
	}
	v.placement.Store(newPlacementRef(p))
}

// barrierPoll is how often Barrier looks at the requests left.
const barrierPoll = 2 * time.Millisecond

// Barrier returns once every request admitted before it was called has
// left the volume, or with ctx's error. After SetPlacement then Barrier,
// no request inside uses an older placement: a replica catch-up sends
// new writes to a rejoining node through the placement, and copies what
// came before only after this. Barriers are serialized; a request costs
// two more atomic adds for it.
func (v *Volume) Barrier(ctx context.Context) error {
	v.barrier.Lock()
	defer v.barrier.Unlock()
	t := time.NewTicker(barrierPoll)
	defer t.Stop()
	wait := func(slot uint64) error {
		for v.barrier.inside[slot&1].Load() != 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("volume %d: barrier: %d older requests still inside: %w", v.id, v.barrier.inside[slot&1].Load(), ctx.Err())
			case <-t.C:
			}
		}
		return nil
	}
	// The slot new requests are about to use may still count requests of
	// a generation before the last (a Barrier that gave up): wait for
	// them first, then move on and wait for the current one.
	if err := wait(v.barrier.gen.Load() + 1); err != nil {
		return err
	}
	return wait(v.barrier.gen.Add(1) - 1)
}

// SeqGeneration returns the attachment generation a write's seq carries.
func SeqGeneration(seq uint64) uint64 { return seq >> seqCounterBits }

// ID returns the catalog id of the volume.
func (v *Volume) ID() uint64 { return v.id }

// Generation returns the attachment generation the volume stamps with.
func (v *Volume) Generation() uint64 { return v.generation }

// Reservations implements reservation.Holder: the unit every request is
// checked against, through which the iSCSI front end changes them.
func (v *Volume) Reservations() *reservation.Unit { return v.res }

// SetSize changes the size the volume reports (a grow from the catalog).
func (v *Volume) SetSize(size int64) { v.size.Store(size) }

// SetEpoch raises the epoch new writes are stamped with to e (the
// catalog's, after a snapshot this target took no part in); it never
// lowers it and holds nothing.
func (v *Volume) SetEpoch(e uint64) {
	v.gate.mu.Lock()
	defer v.gate.mu.Unlock()
	if e > v.gate.epoch && v.gate.inflight[e&1].Load() == 0 {
		v.gate.epoch = e
		v.epoch.Store(e)
	}
}

// Close stops admitting requests (later ones fail with ErrClosed) and waits
// until every request inside the volume has left it, so that the caller may
// drop the volume's data afterwards. The wait is bounded by the request
// timeout plus a grace (closeGrace, at most the timeout again); past it Close returns ErrBusy and the data must
// be kept. Close is idempotent and safe to call concurrently.
func (v *Volume) Close() error {
	if v.life.Or(lifeClosed) == 0 {
		v.drain()
	}
	if h := v.gate.hold.Load(); h != nil {
		h.end(HoldClosed, v.onHoldEnd) // nobody waits on a closing volume's snapshot
	}
	wait := v.requestTimeout + min(closeGrace, v.requestTimeout)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-v.drained:
		return nil
	case <-t.C:
		return fmt.Errorf("volume %d: close: %d requests did not finish in %v: %w",
			v.id, v.life.Load()&^lifeClosed, wait, ErrBusy)
	}
}

// InFlight returns the number of requests inside the volume.
func (v *Volume) InFlight() int { return int(v.life.Load() &^ lifeClosed) }

func (v *Volume) drain() { v.drainOnce.Do(func() { close(v.drained) }) }

// Stats returns the volume's counters.
func (v *Volume) Stats() Stats {
	return Stats{
		Reads: v.stats.reads.Load(), Writes: v.stats.writes.Load(),
		Zeros: v.stats.zeros.Load(), Flushes: v.stats.flushes.Load(),
		ReadBytes: v.stats.readBytes.Load(), WriteBytes: v.stats.writeBytes.Load(),
		ZeroBytes: v.stats.zeroBytes.Load(), Errors: v.stats.errors.Load(),
		ReadRetries: v.stats.readRetries.Load(), Excluded: v.stats.excluded.Load(),
	}
}

// Info implements target.Device.
func (v *Volume) Info() target.Info {
	return target.Info{
		Size:         v.size.Load(),
		BlockSize:    BlockSize,
		ReadOnly:     v.readOnly,
		CanMultiConn: true, // one store per node: a flush syncs every write the node has
	}
}

// The request lifecycle. Every front-end call takes one path through the
// volume, in this order:
//
//	admit → block locks → stamp → node calls → unlock → exit
//
// admit counts the request in flight (Close stops admitting and waits for
// the count to drain) and checks its range; stamp hands out the request's
// single (epoch, seq), after the block locks, so that of two requests that
// serialize on a block the later one always carries the higher stamp (a
// read-modify-write stamped before its lock could lose to an earlier
// stamp that locked first); exit is the one place a request leaves, where
// its acknowledgement could be held.

// request is one front-end request from admission to exit. It is its own
// node-call context (see Node), pooled so the hot path allocates nothing.
type request struct {
	parent     context.Context
	deadline   time.Time
	st         store.Stamp
	stamped    bool   // st is set and counted in the gate's in-flight
	writeClass bool   // a write, zero, trim or flush: its ack may be held
	admitSeq   uint64 // the gate's switch count at admission
	bytes      int64  // payload bytes, for the hold's bound
	barrierGen uint64 // the barrier generation at admission
	ls         lockSet
	memo       WriteMemo // the current fan-out's (writeReplicas); here so it does not escape per call
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

// Deadline implements context.Context: the request deadline, or the
// parent's when earlier.
func (r *request) Deadline() (time.Time, bool) {
	if d, ok := r.parent.Deadline(); ok && d.Before(r.deadline) {
		return d, true
	}
	return r.deadline, true
}

// Done implements context.Context: the parent's channel (see Node).
func (r *request) Done() <-chan struct{} { return r.parent.Done() }

// Err implements context.Context.
func (r *request) Err() error {
	if err := r.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(r.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// Value implements context.Context.
func (r *request) Value(key any) any { return r.parent.Value(key) }

// admit lets a request of [off, off+n) into the volume: a write-class
// one (write) needs write access under the volume's reservations, any
// other read access (see reservation.Unit.Check; the requester is the
// nexus ctx carries). On success the caller must end it with exit.
func (v *Volume) admit(ctx context.Context, off, n int64, write bool) (*request, error) {
	if v.life.Add(1)&lifeClosed != 0 {
		v.leave()
		return nil, v.fail(ErrClosed)
	}
	if err := v.check(off, n, write); err != nil {
		v.leave()
		return nil, v.fail(err)
	}
	access := reservation.AccessRead
	if write {
		access = reservation.AccessWrite
	}
	if err := v.res.Check(ctx, access); err != nil {
		v.leave()
		return nil, v.fail(fmt.Errorf("volume %d: %w", v.id, err))
	}
	r := requestPool.Get().(*request)
	for {
		g := v.barrier.gen.Load()
		v.barrier.inside[g&1].Add(1)
		if v.barrier.gen.Load() == g {
			r.barrierGen = g
			break
		}
		v.barrier.inside[g&1].Add(-1) // a Barrier began: count under the next
	}
	r.parent = ctx
	r.deadline = time.Now().Add(v.requestTimeout)
	r.admitSeq = v.gate.seq.Load()
	return r, nil
}

// exit ends a request admitted by admit and returns its result. The
// request's locks must have been released.
func (v *Volume) exit(r *request, err error) error {
	v.holdAck(r)
	v.barrier.inside[r.barrierGen&1].Add(-1)
	r.parent = nil
	r.st = store.Stamp{}
	r.stamped, r.writeClass, r.bytes = false, false, 0
	r.ls, r.memo = lockSet{}, WriteMemo{}
	requestPool.Put(r)
	v.leave()
	return v.fail(err)
}

func (v *Volume) leave() {
	if v.life.Add(^uint64(0)) == lifeClosed {
		v.drain()
	}
}

// stamp hands out the request's stamp. The caller holds the request's
// block locks.
func (v *Volume) stamp(r *request) error {
	s := v.seq.Add(1)
	if s&seqCounterMax == 0 || s>>seqCounterBits != v.generation {
		return ErrSeqExhausted
	}
	r.st = store.Stamp{Epoch: v.stampEpoch(), Seq: s}
	r.stamped = true
	return nil
}

func (v *Volume) check(off, n int64, write bool) error {
	if write && v.readOnly {
		return fmt.Errorf("volume %d: %w", v.id, target.ErrReadOnly)
	}
	if err := target.CheckRange(off, n, v.size.Load()); err != nil {
		return fmt.Errorf("volume %d: [%d, +%d) of %d bytes: %w", v.id, off, n, v.size.Load(), err)
	}
	return nil
}

func (v *Volume) fail(err error) error {
	if err != nil {
		v.stats.errors.Add(1)
	}
	return err
}

// ReadAt implements target.Device.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	r, err := v.admit(ctx, off, int64(len(p)), false)
	if err != nil {
		return err
	}
	v.stats.reads.Add(1)
	v.stats.readBytes.Add(uint64(len(p)))
	return v.exit(r, v.read(r, p, off))
}

func (v *Volume) read(r *request, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	epoch := v.epoch.Load()
	if off%BlockSize == 0 && len(p)%BlockSize == 0 {
		return v.readBlocks(r, uint64(off>>blockShift), p, epoch)
	}
	first := uint64(off >> blockShift)
	last := uint64((off + int64(len(p)) - 1) >> blockShift)
	bp := target.GetBuffer(int((last - first + 1) << blockShift))
	defer target.PutBuffer(bp)
	buf := (*bp)[:(last-first+1)<<blockShift]
	if err := v.readBlocks(r, first, buf, epoch); err != nil {
		return err
	}
	copy(p, buf[off-int64(first<<blockShift):])
	return nil
}

// readBlocks reads whole blocks, chunk by chunk, from each chunk's first
// replica, and from the next one when a replica fails.
func (v *Volume) readBlocks(r *request, block uint64, p []byte, epoch uint64) error {
	return v.eachChunk(block, uint64(len(p))>>blockShift, runBlocksMax, func(b, n uint64, nodes []Node) error {
		q := p[(b-block)<<blockShift : (b-block+n)<<blockShift]
		err := nodes[0].Read(r, v.id, b, q, epoch)
		for i := 1; err != nil && i < len(nodes) && replicaFault(err) && r.Err() == nil; i++ {
			v.stats.readRetries.Add(1)
			err = nodes[i].Read(r, v.id, b, q, epoch)
		}
		if err != nil {
			return fmt.Errorf("volume %d: read blocks [%d, +%d): %w", v.id, b, n, classify(err))
		}
		return nil
	})
}

// replicaFault reports whether a node's error may be the node's own
// failure (I/O errors, a lost connection, a deadline, a store closing with
// its node), so that another replica may do better: not a full disk, a
// refused request (a fenced generation, a deleted volume, a bound) or a
// closing volume, which every replica would answer alike.
func replicaFault(err error) bool {
	for _, e := range notFaults {
		if errors.Is(err, e) {
			return false
		}
	}
	return true
}

var notFaults = []error{target.ErrNoSpace, store.ErrNoSpace, target.ErrInvalid, store.ErrInvalid,
	target.ErrOutOfRange, store.ErrLimit, target.ErrClosed}

// eachChunk calls fn for each run of consecutive blocks in [block, block+n)
// whose chunks share one replica set, of at most runMax blocks.
func (v *Volume) eachChunk(block, n, runMax uint64, fn func(b, n uint64, nodes []Node) error) error {
	end := block + n
	pl := v.placement.Load().Placement
	for b := block; b < end; {
		c := b / v.chunkBlocks
		nodes := pl.Replicas(c)
		e := min((c+1)*v.chunkBlocks, end)
		for e < end && e-b < runMax && sameNodes(pl.Replicas(e/v.chunkBlocks), nodes) {
			e = min(e+v.chunkBlocks, end)
		}
		if e-b > runMax {
			e = b + runMax
		}
		if err := fn(b, e-b, nodes); err != nil {
			return err
		}
		b = e
	}
	return nil
}

func sameNodes(a, b []Node) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// WriteAt implements target.Device.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, flags target.WriteFlags) error {
	r, err := v.admit(ctx, off, int64(len(p)), true)
	if err != nil {
		return err
	}
	r.writeClass, r.bytes = true, int64(len(p))
	v.stats.writes.Add(1)
	v.stats.writeBytes.Add(uint64(len(p)))
	if len(p) == 0 {
		if flags&target.FUA != 0 {
			err = v.flush(r)
		}
		return v.exit(r, err)
	}
	return v.exit(r, v.write(r, p, off, flags&target.FUA != 0))
}

// BatchWriter is a Node that stores several writes of one volume at once
// (*store.Store: store.Store.WriteBatch), none of them synced. Each
// store.BatchWrite gets its own result; the call must not retain the
// slices. ctx is the first write's request (see Node).
type BatchWriter interface {
	WriteBatch(ctx context.Context, vol uint64, ws []store.BatchWrite)
}

// batchWritesMax bounds one WriteBatch's writes taken together; a larger
// batch is taken in turns.
const batchWritesMax = 32

// WriteBatch implements target.BatchWriter. When the volume's nodes take
// batches (see placementRef), the writes of whole blocks without FUA each
// take the lifecycle of a write — admit, block locks, their own stamp,
// unlock, exit — but the locks are taken once for all of them (in
// ascending order, as any request takes its own, so this never deadlocks
// with another request) and each node gets them together: a single node
// volume's store in one call (writeTurn); a replicated volume's remote
// replicas in one StartWrites each and its local replica in one batch,
// all in flight at once (replicatedTurn). Every other write, and every
// write when the nodes do not take batches, is done as WriteAt does it.
func (v *Volume) WriteBatch(ctx context.Context, ws []target.BatchWrite) {
	for len(ws) > 0 {
		n := min(len(ws), batchWritesMax)
		switch ref := v.placement.Load(); {
		case ref.local != nil:
			v.writeTurn(ctx, ref.local, ws[:n])
		case ref.replicated:
			v.replicatedTurn(ctx, ref, ws[:n])
		default:
			for i := range ws[:n] {
				w := &ws[i]
				w.Err = v.WriteAt(ctx, w.P, w.Off, w.Flags)
			}
		}
		ws = ws[n:]
	}
}

// turnScratch is writeTurn's and replicatedTurn's: pooled, since it goes
// to interface calls.
type turnScratch struct {
	rs   [batchWritesMax]*request
	at   [batchWritesMax]int // rs[j] is ws[at[j]]
	sw   [batchWritesMax]store.BatchWrite
	errs [batchWritesMax]error
	rest [batchWritesMax]bool // done as WriteAt does, after the batch
	ls   lockSet

	// replicatedTurn's: the replicas of each write, the turn's distinct
	// nodes, and each node's writes, node by node: starts[i] is replica
	// ik[i] of write jk[i].
	reps   [batchWritesMax][]Node
	rerrs  [batchWritesMax][fanMax]error
	nodes  [turnNodesMax]Node
	starts [batchWritesMax * fanMax]StartedWrite
	jk     [batchWritesMax * fanMax]uint8
	ik     [batchWritesMax * fanMax]uint8

	k    int // writes admitted (rs[:k])
	used int // starts[:used]
	nn   int // nodes[:nn]
}

var turnPool = sync.Pool{New: func() any { return new(turnScratch) }}

// turnNodesMax bounds the nodes of a replicated volume that takes batches.
const turnNodesMax = 16

// BatchWrites implements target.BatchWriter: the volume's nodes take
// batches (see placementRef).
func (v *Volume) BatchWrites() bool {
	ref := v.placement.Load()
	return ref.local != nil || ref.replicated
}

// admitTurn admits the writes of ws that a turn can take (whole blocks,
// no FUA; with ref, a replicated turn's, in one chunk: see turnReplicas),
// stamps them under one lock set and returns how many it
// admitted; the others are marked rest (or failed admission: Err set).
// Caller unlocks ts.ls once the writes are done, then exits each.
func (v *Volume) admitTurn(ctx context.Context, ts *turnScratch, ws []target.BatchWrite, ref *placementRef) int {
	k := 0
	for i := range ws {
		w := &ws[i]
		if len(w.P) == 0 || w.Off%BlockSize != 0 || len(w.P)%BlockSize != 0 || w.Flags&target.FUA != 0 ||
			ref != nil && !v.turnReplicas(ts, k, w, ref) {
			ts.rest[i] = true
			continue
		}
		r, err := v.admit(ctx, w.Off, int64(len(w.P)), true)
		if err != nil {
			w.Err = err
			continue
		}
		r.writeClass, r.bytes = true, int64(len(w.P))
		v.stats.writes.Add(1)
		v.stats.writeBytes.Add(uint64(len(w.P)))
		first := uint64(w.Off >> blockShift)
		ts.ls.add(first, first+uint64(len(w.P)>>blockShift)-1, false)
		ts.rs[k], ts.at[k] = r, i
		k++
	}
	ts.k = k
	if k > 0 {
		v.lock(&ts.ls)
		for j := range k {
			ts.errs[j] = v.stamp(ts.rs[j])
		}
	}
	return k
}

// restTurn does the writes of a turn it did not take, as WriteAt does.
func (v *Volume) restTurn(ctx context.Context, ts *turnScratch, ws []target.BatchWrite) {
	for i := range ws {
		if ts.rest[i] {
			w := &ws[i]
			w.Err = v.WriteAt(ctx, w.P, w.Off, w.Flags)
		}
	}
}

// writeTurn is one turn of WriteBatch on bn, at most batchWritesMax
// writes.
func (v *Volume) writeTurn(ctx context.Context, bn BatchWriter, ws []target.BatchWrite) {
	ts := turnPool.Get().(*turnScratch)
	defer func() { ts.reset(); turnPool.Put(ts) }()
	if k := v.admitTurn(ctx, ts, ws, nil); k > 0 {
		v.batchTurn(ts, ws, bn, nil)
		v.unlock(&ts.ls)
		for j := range k {
			err := ts.errs[j]
			if err == nil {
				err = ts.rerrs[j][0]
			}
			ws[ts.at[j]].Err = v.exit(ts.rs[j], err)
		}
	}
	v.restTurn(ctx, ts, ws)
}

// reset clears what a turn used, so that the pool keeps no references.
func (ts *turnScratch) reset() {
	clear(ts.starts[:ts.used])
	clear(ts.rerrs[:ts.k])
	clear(ts.reps[:]) // a write that failed admission may have left its own
	clear(ts.rs[:ts.k])
	clear(ts.sw[:ts.k])
	clear(ts.errs[:ts.k])
	ts.rest = [batchWritesMax]bool{}
	ts.nodes = [turnNodesMax]Node{}
	ts.ls = lockSet{}
	ts.k, ts.used, ts.nn = 0, 0, 0
}

// turnReplicas reports whether a replicated turn takes w as its j-th
// write: its blocks are in one chunk, whose replicas (at most fanMax) are
// among the turn's nodes, or fit there (turnNodesMax). It records the
// replicas. (Each is a Starter or the one node that takes batches: ref
// is replicated.)
func (v *Volume) turnReplicas(ts *turnScratch, j int, w *target.BatchWrite, ref *placementRef) bool {
	if target.CheckRange(w.Off, int64(len(w.P)), v.size.Load()) != nil {
		return false // WriteAt reports it
	}
	first := uint64(w.Off >> blockShift)
	c := first / v.chunkBlocks
	if (first+uint64(len(w.P)>>blockShift)-1)/v.chunkBlocks != c {
		return false
	}
	reps := ref.Replicas(c)
	if len(reps) == 0 || len(reps) > fanMax {
		return false
	}
	nn := ts.nn
	for _, nd := range reps {
		if slices.Contains(ts.nodes[:nn], nd) {
			continue
		}
		if nn == turnNodesMax {
			return false
		}
		ts.nodes[nn] = nd
		nn++
	}
	ts.nn = nn
	ts.reps[j] = reps
	return true
}

// replicatedTurn is one turn of WriteBatch on a replicated volume, at
// most batchWritesMax writes: every write goes to every replica of its
// chunk, as writeReplicas does it, but node by node: each remote node
// gets its writes in one StartWrites (one socket write), the local node
// its own in one WriteBatch while the others are in flight; then the turn
// waits for them all, and each write settles on its replicas' results.
func (v *Volume) replicatedTurn(ctx context.Context, ref *placementRef, ws []target.BatchWrite) {
	ts := turnPool.Get().(*turnScratch)
	defer func() { ts.reset(); turnPool.Put(ts) }()
	k := v.admitTurn(ctx, ts, ws, ref)
	if k > 0 {
		rs, at, errs, reps, rerrs := &ts.rs, &ts.at, &ts.errs, &ts.reps, &ts.rerrs
		for j := range k {
			rs[j].memo = WriteMemo{}
		}
		var local Node
		for _, nd := range ts.nodes[:ts.nn] {
			if _, ok := nd.(Starter); !ok {
				local = nd
				continue
			}
			v.startTurn(ts, ws, nd)
		}
		if local != nil {
			v.batchTurn(ts, ws, local.(BatchWriter), local)
		}
		for i := range ts.starts[:ts.used] {
			sw := &ts.starts[i]
			err := sw.Err
			if err == nil {
				err = sw.P.Wait()
			}
			if err != nil {
				rerrs[ts.jk[i]][ts.ik[i]] = v.writeErr(sw.Block, sw.Data, err)
			}
		}
		v.unlock(&ts.ls)
		for j := range k {
			err := errs[j]
			if err == nil {
				err = v.settle(rs[j], reps[j], rerrs[j][:len(reps[j])])
			}
			ws[at[j]].Err = v.exit(rs[j], err)
		}
	}
	v.restTurn(ctx, ts, ws)
}

// startTurn starts a replicated turn's writes on nd, a Starter: together
// (StartWrites) if it is a BatchStarter.
func (v *Volume) startTurn(ts *turnScratch, ws []target.BatchWrite, nd Node) {
	base := ts.used
	for j := range ts.k {
		i := ts.replicaOn(j, nd)
		if i < 0 {
			continue
		}
		r, bw := ts.rs[j], &ws[ts.at[j]]
		w := &ts.starts[ts.used]
		*w = StartedWrite{Ctx: r, Block: uint64(bw.Off >> blockShift), Data: bw.P, Stamp: r.st, Memo: &r.memo}
		ts.jk[ts.used], ts.ik[ts.used] = uint8(j), uint8(i)
		ts.used++
	}
	batch := ts.starts[base:ts.used]
	if bs, ok := nd.(BatchStarter); ok {
		bs.StartWrites(v.id, batch)
		return
	}
	st := nd.(Starter)
	for i := range batch {
		w := &batch[i]
		w.P, w.Err = st.StartWrite(w.Ctx, v.id, w.Block, w.Data, w.Stamp, false, w.Memo)
	}
}

// replicaOn returns which replica of a turn's write j nd is, or -1 if it
// is none of them or the write failed its stamp.
func (ts *turnScratch) replicaOn(j int, nd Node) int {
	if ts.errs[j] != nil {
		return -1
	}
	for i, x := range ts.reps[j] {
		if x == nd {
			return i
		}
	}
	return -1
}

// batchTurn writes a turn's stamped writes to bn with one WriteBatch, the
// first such request its context, and leaves each one's error in
// rerrs[j][i], i its replica index: with nd nil every stamped write goes
// to bn as its only replica (a single node volume: writeTurn); else those
// with a replica on nd, the replicated volume's one node that is not a
// Starter (this node's store, bn: replicatedTurn).
func (v *Volume) batchTurn(ts *turnScratch, ws []target.BatchWrite, bn BatchWriter, nd Node) {
	var jm, im [batchWritesMax]uint8
	sw := &ts.sw
	m := 0
	var first *request
	for j := range ts.k {
		i := 0
		if nd == nil {
			if ts.errs[j] != nil {
				continue
			}
		} else if i = ts.replicaOn(j, nd); i < 0 {
			continue
		}
		w := &ws[ts.at[j]]
		sw[m] = store.BatchWrite{Block: uint64(w.Off >> blockShift), Data: w.P, Stamp: ts.rs[j].st}
		jm[m], im[m] = uint8(j), uint8(i)
		m++
		if first == nil {
			first = ts.rs[j]
		}
	}
	if m == 0 {
		return
	}
	bn.WriteBatch(first, v.id, sw[:m])
	for x := range sw[:m] {
		if err := sw[x].Err; err != nil {
			ts.rerrs[jm[x]][im[x]] = v.writeErr(sw[x].Block, sw[x].Data, err)
		}
	}
}

func (v *Volume) write(r *request, p []byte, off int64, sync bool) error {
	first := uint64(off >> blockShift)
	last := uint64((off + int64(len(p)) - 1) >> blockShift)
	headPartial := off%BlockSize != 0
	tailPartial := (off+int64(len(p)))%BlockSize != 0

	r.ls.add(first, last, false)
	if headPartial {
		r.ls.add(first, first, true)
	}
	if tailPartial {
		r.ls.add(last, last, true)
	}
	v.lock(&r.ls)
	defer v.unlock(&r.ls)
	if err := v.stamp(r); err != nil {
		return err
	}

	if !headPartial && !tailPartial {
		return v.writeBlocks(r, first, p, sync)
	}
	// Read-modify-write of the partial edge blocks; the exclusive stripe
	// locks keep any other write of these blocks out until we are done.
	bp := target.GetBuffer(int((last - first + 1) << blockShift))
	defer target.PutBuffer(bp)
	buf := (*bp)[:(last-first+1)<<blockShift]
	epoch := v.epoch.Load()
	if headPartial {
		if err := v.readBlocks(r, first, buf[:BlockSize], epoch); err != nil {
			return err
		}
	}
	if tailPartial && (last != first || !headPartial) {
		if err := v.readBlocks(r, last, buf[len(buf)-BlockSize:], epoch); err != nil {
			return err
		}
	}
	copy(buf[off-int64(first<<blockShift):], p)
	return v.writeBlocks(r, first, buf, sync)
}

// writeBlocks writes whole blocks with the request's stamp to every replica
// of their chunks. The caller holds the blocks' stripe locks.
func (v *Volume) writeBlocks(r *request, block uint64, p []byte, sync bool) error {
	return v.eachChunk(block, uint64(len(p))>>blockShift, runBlocksMax, func(b, n uint64, nodes []Node) error {
		q := p[(b-block)<<blockShift : (b-block+n)<<blockShift]
		if len(nodes) == 1 { // no closure on the single-replica hot path
			return v.writeNode(r, nodes[0], b, q, sync)
		}
		if ok, err := v.writeReplicas(r, nodes, b, q, sync); ok {
			return err
		}
		return v.fanOut(r, nodes, func(nd Node) error { return v.writeNode(r, nd, b, q, sync) })
	})
}

// fanMax is the most replicas writeReplicas serves.
const fanMax = 8

// writeReplicas writes blocks to every node, as fanOut does, on this
// goroutine only: it starts the write on each Starter (the node RPC),
// all sharing r.memo (so the request's checksum is computed once, not per
// replica), writes to the one node that is not (the local store) meanwhile, then
// waits for the started ones. ok is false, and nothing done, when the
// set has more than one node that is not a Starter or more than fanMax.
func (v *Volume) writeReplicas(r *request, nodes []Node, b uint64, q []byte, sync bool) (ok bool, err error) {
	if len(nodes) > fanMax {
		return false, nil
	}
	local := -1
	for i, nd := range nodes {
		if _, ok := nd.(Starter); !ok {
			if local >= 0 {
				return false, nil
			}
			local = i
		}
	}
	var pend [fanMax]Pending
	var errs [fanMax]error
	r.memo = WriteMemo{}
	for i, nd := range nodes {
		if i != local {
			if pend[i], errs[i] = nd.(Starter).StartWrite(r, v.id, b, q, r.st, sync, &r.memo); errs[i] != nil {
				errs[i] = v.writeErr(b, q, errs[i])
			}
		}
	}
	if local >= 0 {
		errs[local] = v.writeNode(r, nodes[local], b, q, sync)
	}
	for i, p := range pend[:len(nodes)] {
		if p != nil {
			if err := p.Wait(); err != nil {
				errs[i] = v.writeErr(b, q, err)
			}
		}
	}
	return true, v.settle(r, nodes, errs[:len(nodes)])
}

func (v *Volume) writeErr(b uint64, q []byte, err error) error {
	return fmt.Errorf("volume %d: write blocks [%d, +%d): %w", v.id, b, len(q)>>blockShift, classify(err))
}

func (v *Volume) writeNode(r *request, nd Node, b uint64, q []byte, sync bool) error {
	if err := nd.Write(r, v.id, b, q, r.st, sync); err != nil {
		return v.writeErr(b, q, err)
	}
	return nil
}

// fanOut runs a write-class fn on every node in parallel. It succeeds if
// every node did, or if some did and the volume's Failover took each of
// the others out.
func (v *Volume) fanOut(r *request, nodes []Node, fn func(Node) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(nd)
		}()
	}
	wg.Wait()
	return v.settle(r, nodes, errs)
}

// settle is the result of a write-class call on every node of a set,
// errs[i] that of nodes[i]: nil if every node succeeded, or if some did
// and the volume's Failover took each of the others out.
func (v *Volume) settle(r *request, nodes []Node, errs []error) error {
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	if failed == 0 {
		return nil
	}
	if failed == len(nodes) || v.failover == nil {
		return errors.Join(errs...)
	}
	for i, err := range errs {
		if err == nil {
			continue
		}
		if !replicaFault(err) {
			return errors.Join(errs...)
		}
		if xerr := v.failover.Exclude(r, nodes[i], err); xerr != nil {
			return errors.Join(err, fmt.Errorf("volume %d: replica not taken out: %w", v.id, xerr))
		}
		v.stats.excluded.Add(1)
	}
	return nil
}

// CompareAndWrite implements target.Comparer: it holds the stripe locks of
// every block of the range exclusively, so that no write, zero or trim of
// those blocks (each holds them at least shared) runs between the compare
// and the write, from any front end. A miscompare writes nothing and is
// not stamped.
func (v *Volume) CompareAndWrite(ctx context.Context, cmp, data []byte, off int64, flags target.WriteFlags) error {
	if len(cmp) != len(data) {
		return v.fail(fmt.Errorf("volume %d: compare and write of %d bytes with %d to compare: %w", v.id, len(data), len(cmp), target.ErrInvalid))
	}
	r, err := v.admit(ctx, off, int64(len(data)), true)
	if err != nil {
		return err
	}
	r.writeClass, r.bytes = true, int64(len(data))
	v.stats.writes.Add(1)
	v.stats.writeBytes.Add(uint64(len(data)))
	if len(data) == 0 {
		return v.exit(r, nil)
	}
	return v.exit(r, v.compareAndWrite(r, cmp, data, off, flags&target.FUA != 0))
}

func (v *Volume) compareAndWrite(r *request, cmp, data []byte, off int64, sync bool) error {
	first := uint64(off >> blockShift)
	last := uint64((off + int64(len(data)) - 1) >> blockShift)
	r.ls.add(first, last, true)
	v.lock(&r.ls)
	defer v.unlock(&r.ls)

	bp := target.GetBuffer(int((last - first + 1) << blockShift))
	defer target.PutBuffer(bp)
	buf := (*bp)[:(last-first+1)<<blockShift]
	if err := v.readBlocks(r, first, buf, v.epoch.Load()); err != nil {
		return err
	}
	have := buf[off-int64(first<<blockShift):][:len(cmp)]
	if !bytes.Equal(have, cmp) {
		i := 0
		for have[i] == cmp[i] {
			i++
		}
		return fmt.Errorf("volume %d: compare and write at %d: %w", v.id, off, &target.MiscompareError{Offset: int64(i)})
	}
	if err := v.stamp(r); err != nil {
		return err
	}
	copy(have, data)
	return v.writeBlocks(r, first, buf, sync)
}

// Zero implements target.Device. Whole blocks in the range become a zero
// range record (no key per block); partial edge blocks are rewritten. The
// edges and the range carry the request's one stamp.
func (v *Volume) Zero(ctx context.Context, off, n int64, flags target.ZeroFlags) error {
	r, err := v.admit(ctx, off, n, true)
	if err != nil {
		return err
	}
	r.writeClass = true
	v.stats.zeros.Add(1)
	v.stats.zeroBytes.Add(uint64(n))
	if n == 0 {
		return v.exit(r, nil)
	}
	return v.exit(r, v.zero(r, off, n, flags&target.ZeroFUA != 0))
}

func (v *Volume) zero(r *request, off, n int64, sync bool) error {
	first := uint64(off >> blockShift)
	last := uint64((off + n - 1) >> blockShift)
	r.ls.add(first, last, true)
	v.lock(&r.ls)
	defer v.unlock(&r.ls)
	if err := v.stamp(r); err != nil {
		return err
	}

	end := off + n
	// Whole blocks inside [off, end).
	wFirst := uint64((off + BlockSize - 1) >> blockShift)
	wEnd := uint64(end >> blockShift)
	epoch := v.epoch.Load()
	if off%BlockSize != 0 {
		if err := v.zeroPartial(r, first, off%BlockSize, min(end-int64(first<<blockShift), BlockSize), epoch, sync); err != nil {
			return err
		}
	}
	if end%BlockSize != 0 && (last != first || off%BlockSize == 0) {
		if err := v.zeroPartial(r, last, 0, end%BlockSize, epoch, sync); err != nil {
			return err
		}
	}
	if wEnd <= wFirst {
		return nil
	}
	return v.eachChunk(wFirst, wEnd-wFirst, math.MaxUint64, func(b, cnt uint64, nodes []Node) error {
		return v.fanOut(r, nodes, func(nd Node) error {
			if err := nd.Zero(r, v.id, b, cnt, r.st, sync); err != nil {
				return fmt.Errorf("volume %d: zero blocks [%d, +%d): %w", v.id, b, cnt, classify(err))
			}
			return nil
		})
	})
}

// zeroPartial zeroes bytes [from, to) of one block by read-modify-write.
// The caller holds the block's stripe lock exclusively.
func (v *Volume) zeroPartial(r *request, block uint64, from, to int64, epoch uint64, sync bool) error {
	bp := target.GetBuffer(BlockSize)
	defer target.PutBuffer(bp)
	buf := (*bp)[:BlockSize]
	if err := v.readBlocks(r, block, buf, epoch); err != nil {
		return err
	}
	clear(buf[from:to])
	return v.writeBlocks(r, block, buf, sync)
}

// Flush implements target.Device.
func (v *Volume) Flush(ctx context.Context) error {
	r, err := v.admit(ctx, 0, 0, false)
	if err != nil {
		return err
	}
	r.writeClass = true
	v.stats.flushes.Add(1)
	return v.exit(r, v.flush(r))
}

func (v *Volume) flush(r *request) error {
	return v.fanOut(r, v.placement.Load().Nodes(), func(nd Node) error {
		if err := nd.Sync(r); err != nil {
			return fmt.Errorf("volume %d: flush: %w", v.id, classify(err))
		}
		return nil
	})
}

// Extents implements target.Mapper from the first replica of each chunk.
func (v *Volume) Extents(ctx context.Context, off, n int64, fn func(target.Extent) bool) error {
	r, err := v.admit(ctx, off, n, false)
	if err != nil {
		return err
	}
	return v.exit(r, v.extents(r, off, n, fn))
}

func (v *Volume) extents(r *request, off, n int64, fn func(target.Extent) bool) error {
	epoch := v.epoch.Load()
	return v.blockRuns(r, off, n, "extents", func(nd Node, b, cnt uint64, each func(start, count uint64, allocated bool) bool) error {
		return nd.Extents(r, v.id, b, cnt, epoch, each)
	}, func(length int64, allocated bool) bool {
		return fn(target.Extent{Length: length, Hole: !allocated, Zero: !allocated})
	})
}

// runQuery asks node nd for the runs of a per-block flag over [b, b+cnt),
// as Node.Extents reports allocation.
type runQuery func(nd Node, b, cnt uint64, each func(start, count uint64, flag bool) bool) error

// blockRuns reports the bytes [off, off+n) as consecutive runs of a
// per-block flag, neighbours with the same flag joined, each chunk asked
// of its first replica and of the next one when a replica fails. fn
// returning false stops it. what names the query in errors.
func (v *Volume) blockRuns(r *request, off, n int64, what string, q runQuery, fn func(length int64, flag bool) bool) error {
	if n == 0 {
		return nil
	}
	end := off + n
	first := uint64(off >> blockShift)
	last := uint64((end - 1) >> blockShift)
	pos := off // next byte to report
	var pending int64
	var pendingFlag, stop bool
	emit := func(length int64, flag bool) {
		if pending > 0 && pendingFlag == flag {
			pending += length
			return
		}
		if pending > 0 && !fn(pending, pendingFlag) {
			stop = true
		}
		pending, pendingFlag = length, flag
	}
	err := v.eachChunk(first, last-first+1, math.MaxUint64, func(b, cnt uint64, nodes []Node) error {
		if stop {
			return nil
		}
		each := func(s, c uint64, flag bool) bool {
			e := min(int64((s+c)<<blockShift), end)
			if e > pos { // a retry on the next replica reports only what is left
				emit(e-pos, flag)
				pos = e
			}
			return !stop
		}
		err := q(nodes[0], b, cnt, each)
		for i := 1; err != nil && i < len(nodes) && replicaFault(err) && r.Err() == nil; i++ {
			v.stats.readRetries.Add(1)
			err = q(nodes[i], b, cnt, each)
		}
		if err != nil {
			return fmt.Errorf("volume %d: %s [%d, +%d): %w", v.id, what, b, cnt, classify(err))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !stop && pending > 0 {
		fn(pending, pendingFlag)
	}
	return nil
}

// classify wraps a node error so that it matches a target error.
func classify(err error) error {
	switch {
	case errors.Is(err, target.ErrIO), errors.Is(err, target.ErrNoSpace),
		errors.Is(err, target.ErrClosed), errors.Is(err, target.ErrInvalid):
		return err
	case errors.Is(err, store.ErrClosed):
		return fmt.Errorf("%w: %w", target.ErrClosed, err)
	case errors.Is(err, store.ErrNoSpace):
		return fmt.Errorf("%w: %w", target.ErrNoSpace, err)
	default:
		return fmt.Errorf("%w: %w", target.ErrIO, err)
	}
}

// lockSet is the set of stripes a request locks, and in which mode, as
// bitmaps so that building it allocates nothing.
type lockSet struct {
	shared, excl [stripeWords]uint64
}

// add marks the stripes of blocks [first, last].
func (ls *lockSet) add(first, last uint64, exclusive bool) {
	m := &ls.shared
	if exclusive {
		m = &ls.excl
	}
	if last-first+1 >= stripes {
		for i := range m {
			m[i] = ^uint64(0)
		}
		return
	}
	for b := first; b <= last; b++ {
		s := b & (stripes - 1)
		m[s/64] |= 1 << (s % 64)
	}
}

// lock takes the marked stripes in ascending order (so two requests never
// deadlock), exclusively where any part of the request needs it.
func (v *Volume) lock(ls *lockSet) {
	for w := range stripeWords {
		all := ls.shared[w] | ls.excl[w]
		for all != 0 {
			i := bits.TrailingZeros64(all)
			all &^= 1 << i
			s := w*64 + i
			if ls.excl[w]&(1<<i) != 0 {
				v.locks[s].Lock()
			} else {
				v.locks[s].RLock()
			}
		}
	}
}

func (v *Volume) unlock(ls *lockSet) {
	for w := range stripeWords {
		all := ls.shared[w] | ls.excl[w]
		for all != 0 {
			i := bits.TrailingZeros64(all)
			all &^= 1 << i
			s := w*64 + i
			if ls.excl[w]&(1<<i) != 0 {
				v.locks[s].Unlock()
			} else {
				v.locks[s].RUnlock()
			}
		}
	}
}
