package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/backend/wire"
	"cairn/cluster"
	"cairn/cluster/admin"
	"cairn/target"
)

// Replica catch-up. A replica that failed a write is stale in the catalog
// (failover.go) and no target reads from it. Once it is back (in service
// in the catalog, alive in gossip, answering the node RPC), the volume's
// target brings it up to date and takes it back, with no I/O stopped:
//
//  1. Forward. The replica joins every replica set of its chunks as a
//     joining member, last (reads never go to it while a replica that is
//     in service is there to ask): each new write, zero and flush goes to
//     it with the request's own stamp, on the request's one path through
//     the volume (admit, stamp, locks, gate). Its failures do not fail
//     the request and do not exclude it: they end the catch-up, which
//     starts again later. Then volume.Barrier: every request still inside
//     began after the forwarding, so any write the copy below does not
//     see is one the replica gets from the forwarding.
//  2. Copy. For each chunk the replica holds, a healthy replica streams
//     (wire.OpVersionsSince) its versions, a reply of at most 4 MiB at a
//     time, and the replica stores them with their original stamps
//     (wire.OpApplyVersions, admitted by this attachment's generation).
//     The store keeps per (block, epoch) the highest seq and lets a zero
//     record mask only what its stamp beats, whatever the arrival order,
//     so copies and forwarded writes may land in any order and the replica
//     ends up as the source at every epoch the source keeps. Throttled
//     ([storage] catchup_rate), one request in flight, one buffer per
//     stream.
//  3. Include. A sync on the replica, then the catalog removes it from the
//     stale list (opIncludeReplica, generation-checked) and the target
//     rebuilds its placement: reads go to it only from then on. Once the
//     include has begun, a forwarded failure no longer goes unnoticed: it
//     vetoes the include (the write still succeeds, on the others), and a
//     vetoed or uncertain include is undone by excluding the replica again
//     before any placement names it as a full replica.
//
// The bound of the copy is 0: every version the source keeps. What the
// replica holds durably is known only up to what it acknowledged before
// its last successful sync, and which seqs those were is not recorded
// (writes complete out of seq order, and a node killed loses what it had
// not synced). A version it already has is stored again as a no-op (the
// same stamp does not displace), so copying everything costs bandwidth,
// never correctness; a recorded exclusion point would only let the copy
// skip what the replica is proven to hold, see the package notes below.
//
// Snapshots during a catch-up: a forwarded write is part of its request,
// so it carries the epoch the gate stamped and is counted by the gate
// until it exits (hold, release and the drained report are unchanged). A
// copy carries the epoch of the version it copies. Per (block, epoch) the
// replica thus gets the same set of versions as the source, so at every
// epoch the source keeps it reads the same; and it is read from only
// after the include, when every copy is applied and synced.
// A version the source's GC drops during the copy is one no reader sees:
// what shadows it is either copied or a write admitted after the barrier,
// which is forwarded.
//
// Retained epochs: each storage node sets them from its own catalog
// replica (pushRetained, store.SetRetainedThrough), so a replica that
// lags keeps more, never less; and its GC leaves a volume alone until a
// SetRetained made after the newest epoch's first write. The copy needs
// no push of its own.
//
// Ownership: the replicaFailover of an attached volume owns one
// supervisor goroutine (start, stop) that runs at most one catch-up at a
// time; volume detach, daemon close and a new attachment generation stop
// it (reconcile closes the volume), and a failed catch-up is started
// again from the beginning after catchupRetry.

const (
	// catchupPoll is how often a degraded volume's supervisor looks for a
	// stale replica that is back.
	catchupPoll = time.Second
	// catchupRetry is the pause after a failed catch-up, doubled after
	// each failure in a row up to catchupRetryMax.
	catchupRetry    = 2 * time.Second
	catchupRetryMax = time.Minute
	// catchupCallTimeout bounds each node call of a catch-up, and the
	// include in the catalog.
	catchupCallTimeout = 30 * time.Second
	// catchupHelloTimeout bounds the probe of a stale node.
	catchupHelloTimeout = 2 * time.Second
)

// errJoining: a read asked of a joining replica (never while one in
// service is left to ask).
var errJoining = fmt.Errorf("replica is catching up and serves no reads: %w", target.ErrIO)

// catchup is one run of a replica's catch-up.
type catchup struct {
	node   string
	cancel context.CancelFunc // ends the run (a forwarded write failed)

	copied, total atomic.Uint64 // chunks
	bytes         atomic.Uint64 // record bytes copied

	mu struct {
		sync.Mutex
		failed    error // a forwarded call failed before the include began
		including bool  // the include began: forwarded failures veto it
		vetoed    bool  // a forwarded call failed during the include
		done      bool  // the include is over: failures exclude as usual
	}
}

// forwarded is the result a joining replica's call reports to the
// volume: nil (the failure ends this run) until the include begins, the
// error itself from then on (it reaches the Failover, which vetoes).
func (cu *catchup) forwarded(err error) error {
	if err == nil {
		return nil
	}
	cu.mu.Lock()
	defer cu.mu.Unlock()
	if cu.mu.including {
		return err
	}
	if cu.mu.failed == nil {
		cu.mu.failed = err
		cu.cancel()
	}
	return nil
}

// veto is the Failover's answer to a joining replica's failure: true
// (the request may succeed, the include will not count) while the
// include is not over.
func (cu *catchup) veto() bool {
	cu.mu.Lock()
	defer cu.mu.Unlock()
	if cu.mu.done {
		return false
	}
	cu.mu.vetoed = true
	return true
}

// wrap returns the joining member of a replica set for nd.
func (cu *catchup) wrap(nd volume.Node) volume.Node {
	j := joining{Node: nd, cu: cu}
	if s, ok := nd.(volume.Starter); ok {
		return &joiningStarter{joining: j, s: s}
	}
	return &j
}

// joining is a replica catching up, as a member of its chunks' replica
// sets: writes, zeroes and syncs go to it and report through its
// catchup; it serves no reads.
type joining struct {
	volume.Node
	cu *catchup
}

func (j *joining) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	return j.cu.forwarded(j.Node.Write(ctx, vol, block, data, st, sync))
}

func (j *joining) Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error {
	return j.cu.forwarded(j.Node.Zero(ctx, vol, block, n, st, sync))
}

func (j *joining) Sync(ctx context.Context) error { return j.cu.forwarded(j.Node.Sync(ctx)) }

func (j *joining) Read(context.Context, uint64, uint64, []byte, uint64) error { return errJoining }

func (j *joining) Extents(context.Context, uint64, uint64, uint64, uint64, func(uint64, uint64, bool) bool) error {
	return errJoining
}

// joiningStarter is a joining replica reached over the node RPC.
type joiningStarter struct {
	joining
	s volume.Starter
}

var _ volume.Starter = (*joiningStarter)(nil)

func (j *joiningStarter) StartWrite(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool, memo *volume.WriteMemo) (volume.Pending, error) {
	p, err := j.s.StartWrite(ctx, vol, block, data, st, sync, memo)
	if err != nil {
		if err = j.cu.forwarded(err); err != nil {
			return nil, err
		}
		return donePending{}, nil
	}
	return &joiningPending{p: p, cu: j.cu}, nil
}

type joiningPending struct {
	p  volume.Pending
	cu *catchup
}

func (p *joiningPending) Wait() error { return p.cu.forwarded(p.p.Wait()) }

type donePending struct{}

func (donePending) Wait() error { return nil }

// catchupOf returns the catchup of a joining replica's member.
func catchupOf(nd volume.Node) (*catchup, bool) {
	switch j := nd.(type) {
	case *joining:
		return j.cu, true
	case *joiningStarter:
		return j.cu, true
	}
	return nil, false
}

// versionPeer is a storage node as a catch-up uses it: *wire.Client, or
// localPeer for this node's store.
type versionPeer interface {
	VersionsSince(ctx context.Context, vol, block, n, seqMin uint64, buf []byte) (recs []byte, next uint64, err error)
	ApplyVersions(ctx context.Context, gen, vol uint64, recs []byte, sync bool) error
	Sync(ctx context.Context) error
}

var _ versionPeer = (*wire.Client)(nil)

// localPeer is this node's store behind its fence, as a versionPeer.
type localPeer struct{ f *fence }

func (l localPeer) VersionsSince(ctx context.Context, vol, block, n, seqMin uint64, buf []byte) ([]byte, uint64, error) {
	k, next, err := wire.FillVersions(ctx, l.f, vol, block, n, seqMin, buf[:wire.VersionsReplyBytesMax])
	if err != nil {
		return nil, 0, err
	}
	return buf[8:k], next, nil
}

func (l localPeer) ApplyVersions(ctx context.Context, gen, vol uint64, recs []byte, sync bool) error {
	release, err := l.f.AdmitGeneration(vol, gen)
	if err != nil {
		return err
	}
	defer release()
	return wire.ApplyRecords(ctx, l.f, vol, recs, sync)
}

func (l localPeer) Sync(ctx context.Context) error { return l.f.Sync(ctx) }

// versionPeer returns the catch-up view of storage node name.
func (d *daemon) versionPeer(name string) (versionPeer, error) {
	if name == d.cfg.NodeName && d.fence != nil {
		return localPeer{d.fence}, nil
	}
	for _, n := range d.catalog.Nodes() {
		if n.Name == name {
			if n.Addr == "" {
				return nil, fmt.Errorf("storage node %s has no RPC address in the catalog", name)
			}
			return d.peer(name, n.Addr)
		}
	}
	return nil, fmt.Errorf("storage node %s is not in the catalog", name)
}

// start begins the failover's catch-up supervisor; stop ends it.
func (f *replicaFailover) start() {
	ctx, cancel := context.WithCancel(context.Background())
	f.sup.cancel = cancel
	f.sup.wg.Add(1)
	go f.supervise(ctx)
}

// stop ends the supervisor and waits for it; idempotent.
func (f *replicaFailover) stop() {
	if f.sup.cancel != nil {
		f.sup.cancel()
	}
	f.sup.wg.Wait()
}

// supervise looks for stale replicas that are back and catches them up,
// one at a time, until ctx ends.
func (f *replicaFailover) supervise(ctx context.Context) {
	defer f.sup.wg.Done()
	t := time.NewTicker(catchupPoll)
	defer t.Stop()
	retry := catchupRetry
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cv, err := f.d.catalog.Volume(f.name)
		if err != nil || cv.Generation != f.gen {
			continue // gone or moved: reconcile closes the volume and stops us
		}
		for _, node := range cv.Stale {
			if !f.back(ctx, node) {
				continue
			}
			err := f.catchUp(ctx, node)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				f.d.catchupRuns.WithLabelValues("failed").Inc()
				f.d.log.Warn("replica catch-up failed; it starts again", "volume", f.name, "node", node, "err", err, "retry_in", retry)
				select {
				case <-ctx.Done():
					return
				case <-time.After(retry):
				}
				retry = min(2*retry, catchupRetryMax)
			} else {
				f.d.catchupRuns.WithLabelValues("included").Inc()
				retry = catchupRetry
			}
			break
		}
	}
}

// back reports whether stale node is back: in service in the catalog,
// alive in gossip (another node) and answering the node RPC.
func (f *replicaFailover) back(ctx context.Context, node string) bool {
	i := slices.IndexFunc(f.d.catalog.Nodes(), func(n cluster.Node) bool { return n.Name == node })
	if i < 0 || f.d.catalog.Nodes()[i].State != cluster.NodeInService {
		return false
	}
	if node == f.d.cfg.NodeName {
		return f.d.fence != nil
	}
	if _, ok := f.d.member(node); !ok {
		return false
	}
	p, err := f.d.versionPeer(node)
	if err != nil {
		return false
	}
	c, ok := p.(*wire.Client)
	if !ok {
		return false
	}
	hctx, cancel := context.WithTimeout(ctx, catchupHelloTimeout)
	defer cancel()
	_, err = c.Hello(hctx)
	return err == nil
}

// catchUp runs one catch-up of stale node: forward, barrier, copy, sync,
// include. An error leaves node stale.
func (f *replicaFailover) catchUp(ctx context.Context, node string) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cu := &catchup{node: node, cancel: cancel}
	dst, err := f.d.versionPeer(node)
	if err != nil {
		return err
	}
	cv, err := f.d.catalog.Volume(f.name)
	if err != nil {
		return err
	}
	if cv.Generation != f.gen || !slices.Contains(cv.Stale, node) {
		return fmt.Errorf("volume %q changed: generation %d (ours %d), stale %v", f.name, cv.Generation, f.gen, cv.Stale)
	}
	// 1. Forward, then wait for the requests that began before.
	f.mu.Lock()
	f.cu = cu
	err = f.rebuildLocked(cv)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		if f.cu == cu {
			f.cu = nil
			cv, cerr := f.d.catalog.Volume(f.name)
			if cerr == nil {
				cerr = f.rebuildLocked(cv)
			}
			if cerr != nil {
				f.d.log.Error("volume placement after a catch-up", "volume", f.name, "err", cerr)
			}
		}
		f.mu.Unlock()
	}()
	if err != nil {
		return err
	}
	f.d.log.Info("replica catch-up: forwarding new writes to it", "volume", f.name, "node", node)
	bctx, bcancel := context.WithTimeout(ctx, catchupCallTimeout+time.Minute)
	err = f.v.Barrier(bctx)
	bcancel()
	if err != nil {
		return err
	}
	f.d.log.Info("replica catch-up started", "volume", f.name, "node", node)
	start := time.Now()

	// 2. Copy every chunk node holds from a replica in service.
	placer := cluster.NewPlacer(cv)
	chunkBlocks := uint64(cv.ChunkSize / store.BlockSize)
	chunks := (uint64(f.v.Info().Size)/store.BlockSize + chunkBlocks - 1) / chunkBlocks
	var names []string
	var mine []uint64
	for c := range chunks {
		names = placer.Replicas(c, names[:0])
		if slices.Contains(names, node) {
			mine = append(mine, c)
		}
	}
	cu.total.Store(uint64(len(mine)))
	f.mu.Lock()
	f.last = cu
	f.mu.Unlock()
	bp := target.GetBuffer(wire.VersionsReplyBytesMax)
	defer target.PutBuffer(bp)
	buf := (*bp)[:wire.VersionsReplyBytesMax]
	for _, c := range mine {
		names = placer.Replicas(c, names[:0])
		src := ""
		for _, n := range names {
			if n != node && !slices.Contains(cv.Stale, n) && (src == "" || n == f.d.cfg.NodeName) {
				src = n
			}
		}
		if src == "" {
			return fmt.Errorf("chunk %d: no replica in service to copy from", c)
		}
		sp, err := f.d.versionPeer(src)
		if err != nil {
			return err
		}
		if err := f.copyChunk(ctx, cu, cv.ID, sp, dst, c*chunkBlocks, chunkBlocks, buf, start); err != nil {
			return fmt.Errorf("chunk %d from %s: %w", c, src, err)
		}
		cu.copied.Add(1)
	}

	// 3. Sync, then include; from the include on a forwarded failure
	// vetoes it.
	cu.mu.Lock()
	failed := cu.mu.failed
	cu.mu.including = failed == nil
	cu.mu.Unlock()
	if failed != nil {
		return fmt.Errorf("a write forwarded to it failed: %w", failed)
	}
	sctx, scancel := context.WithTimeout(ctx, catchupCallTimeout)
	err = dst.Sync(sctx)
	scancel()
	if err != nil {
		cu.veto()
		return f.undo(ctx, cu, fmt.Errorf("sync: %w", err), false)
	}
	ictx, icancel := context.WithTimeout(ctx, catchupCallTimeout)
	ncv, ierr := f.includeRetrying(ictx, node)
	icancel()
	cu.mu.Lock()
	vetoed := cu.mu.vetoed
	cu.mu.done = true
	cu.mu.Unlock()
	if ierr != nil || vetoed {
		if ierr == nil {
			ierr = errors.New("a write forwarded to it failed during the include")
		}
		return f.undo(ctx, cu, ierr, true)
	}
	f.mu.Lock()
	f.cu = nil
	err = f.rebuildLocked(ncv)
	f.mu.Unlock()
	f.d.log.Info("replica caught up and back in service", "volume", f.name, "node", node,
		"chunks", len(mine), "bytes", cu.bytes.Load(), "duration", time.Since(start).Round(time.Millisecond), "stale", ncv.Stale)
	return err
}

// undo makes sure node stays stale after a failed include (included:
// the catalog may have applied it), before any placement names it as a
// full replica: until then the run keeps it a joining member.
func (f *replicaFailover) undo(ctx context.Context, cu *catchup, cause error, included bool) error {
	if !included {
		return cause
	}
	// Not the run's context: a stop must not leave an include that may
	// miss writes in place (stop waits for this, bounded).
	xctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), catchupCallTimeout)
	defer cancel()
	if _, err := f.excludeRetrying(xctx, cu.node); err != nil {
		f.d.log.Error("replica catch-up: the include may have been applied and the replica could not be taken out again; it may miss writes",
			"volume", f.name, "node", cu.node, "cause", cause, "err", err)
		return errors.Join(cause, err)
	}
	return cause
}

// includeRetrying asks the catalog to take node back, again while there
// is no leader, until ctx ends (an include is idempotent).
func (f *replicaFailover) includeRetrying(ctx context.Context, node string) (cluster.Volume, error) {
	return retryNoLeader(ctx, func() (cluster.Volume, error) { return f.d.catalog.IncludeReplica(ctx, f.name, node, f.gen) })
}

// copyChunk copies the versions of blocks [block, block+n) from src to
// dst, a reply at a time, throttled to [storage] catchup_rate since start.
func (f *replicaFailover) copyChunk(ctx context.Context, cu *catchup, vol uint64, src, dst versionPeer, block, n uint64, buf []byte, start time.Time) error {
	end := block + n
	for block < end {
		cctx, cancel := context.WithTimeout(ctx, catchupCallTimeout)
		recs, next, err := src.VersionsSince(cctx, vol, block, end-block, 0, buf)
		if err == nil && len(recs) > 0 {
			err = dst.ApplyVersions(cctx, f.gen, vol, recs, false)
		}
		cancel()
		if err != nil {
			cu.mu.Lock()
			failed := cu.mu.failed
			cu.mu.Unlock()
			if failed != nil { // the run was cancelled for it
				return fmt.Errorf("a write forwarded to it failed: %w", failed)
			}
			return err
		}
		copied := cu.bytes.Add(uint64(len(recs)))
		f.d.catchupBytes.Add(float64(len(recs)))
		if ahead := time.Duration(float64(copied)/float64(f.d.cfg.Storage.CatchupRate)*float64(time.Second)) - time.Since(start); ahead > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(ahead):
			}
		}
		block = next
	}
	return nil
}

// catchupProgress is what a volume's catch-up reports (metrics).
type catchupProgress struct {
	node          string
	copied, total uint64
	running       bool
}

// progress returns the state of the running catch-up, or the last one.
func (f *replicaFailover) progress() (catchupProgress, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cu := f.last
	if cu == nil {
		return catchupProgress{}, false
	}
	return catchupProgress{node: cu.node, copied: cu.copied.Load(), total: cu.total.Load(), running: f.cu == cu}, true
}

// catchUpView is the catch-up progress of volume name for the admin API
// when it is attached here; nil when there is none.
func (d *daemon) catchUpView(name string) *admin.CatchUp {
	d.mu.Lock()
	fo := d.mu.failovers[name]
	d.mu.Unlock()
	if fo == nil {
		return nil
	}
	p, ok := fo.progress()
	if !ok {
		return nil
	}
	return &admin.CatchUp{Node: p.node, ChunksCopied: p.copied, ChunksTotal: p.total, Running: p.running}
}
