package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"cairn/backend/volume"
	"cairn/cluster"
)

// replicaFailover is the volume.Failover of a volume attached here: a
// replica that failed a write the others completed is marked stale in the
// catalog (through Raft, so that no target reads from it again), and the
// volume goes on over the replicas left. The catalog refuses when the
// attachment is no longer this one's (a newer generation fenced us) or
// when the replica is the last of some chunk; the write then fails.
type replicaFailover struct {
	d    *daemon
	name string // the volume
	gen  uint64 // its attachment generation here
	v    *volume.Volume

	mu       sync.Mutex
	pl       *chunkPlacement       // the volume's placement now
	inflight map[string]*exclusion // by node name: one catalog change per node
	cu       *catchup              // the catch-up running, if any (catchup.go)
	last     *catchup              // the last catch-up that began copying

	// sup is the catch-up supervisor (catchup.go).
	sup struct {
		cancel context.CancelFunc
		wg     sync.WaitGroup
	}
}

// exclusion is one node's trip to the catalog; others failing on the same
// node wait for it.
type exclusion struct {
	done chan struct{}
	err  error
}

var _ volume.Failover = (*replicaFailover)(nil)

func newReplicaFailover(d *daemon, cv cluster.Volume, pl *chunkPlacement) *replicaFailover {
	return &replicaFailover{d: d, name: cv.Name, gen: cv.Generation, pl: pl, inflight: map[string]*exclusion{}}
}

// Exclude implements volume.Failover.
func (f *replicaFailover) Exclude(ctx context.Context, nd volume.Node, cause error) error {
	if cu, ok := catchupOf(nd); ok && cu.veto() {
		// A replica catching up failed a forwarded call during its
		// include: the include will not count, the write stands.
		f.d.log.Warn("replica catching up failed a write during its include: it stays stale", "volume", f.name, "node", cu.node, "cause", cause)
		return nil
	}
	f.mu.Lock()
	name, ok := f.pl.nameOf(nd)
	if cu, isJoining := catchupOf(nd); isJoining {
		name, ok = cu.node, true // after its include: taken out as any replica
	}
	if !ok {
		// Not in the placement any more: taken out meanwhile.
		f.mu.Unlock()
		return nil
	}
	x, running := f.inflight[name]
	if !running {
		x = &exclusion{done: make(chan struct{})}
		f.inflight[name] = x
	}
	f.mu.Unlock()
	if running {
		select {
		case <-x.done:
			return x.err
		case <-ctx.Done():
			return fmt.Errorf("take replica %s out of %s: %w", name, f.name, ctx.Err())
		}
	}
	x.err = f.exclude(ctx, name, cause)
	f.mu.Lock()
	delete(f.inflight, name)
	f.mu.Unlock()
	close(x.done)
	return x.err
}

// exclude marks name stale in the catalog and switches the volume to the
// placement without it.
func (f *replicaFailover) exclude(ctx context.Context, name string, cause error) error {
	cv, err := f.excludeRetrying(ctx, name)
	if err != nil {
		f.d.log.Error("replica failed and could not be taken out; the write fails", "volume", f.name, "node", name, "cause", cause, "err", err)
		return err
	}
	f.d.log.Warn("replica failed a write the others completed: taken out, the volume goes on degraded",
		"volume", f.name, "node", name, "stale", cv.Stale, "cause", cause)
	return f.update(cv)
}

// excludeRetrying asks the catalog to take name out, again while there
// is no leader to take it (the failed node may have been the leader: its
// successor is elected within a few seconds), until ctx ends. Exclusion
// is idempotent, so a change the old leader applied and did not answer is
// safe to send again.
func (f *replicaFailover) excludeRetrying(ctx context.Context, name string) (cluster.Volume, error) {
	return retryNoLeader(ctx, func() (cluster.Volume, error) { return f.d.catalog.ExcludeReplica(ctx, f.name, name, f.gen) })
}

// retryNoLeader calls change again while the catalog has no leader (its
// successor is elected within a few seconds), until ctx ends; change must
// be idempotent.
func retryNoLeader(ctx context.Context, change func() (cluster.Volume, error)) (cluster.Volume, error) {
	wait := 50 * time.Millisecond
	for {
		cv, err := change()
		if err == nil || !errors.Is(err, cluster.ErrNotLeader) {
			return cv, err
		}
		select {
		case <-ctx.Done():
			return cv, fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// update rebuilds the placement from a catalog record whose stale list
// differs from the one in use. reconcile calls it too.
func (f *replicaFailover) update(cv cluster.Volume) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rebuildLocked(cv)
}

// rebuildLocked replaces the volume's placement when cv's stale list or
// the replica catching up (f.cu, a joining member of its chunks' sets)
// differ from the placement in use. The caller holds f.mu.
func (f *replicaFailover) rebuildLocked(cv cluster.Volume) error {
	var join *catchup
	if f.cu != nil && slices.ContainsFunc(cv.Placement, func(m cluster.Member) bool { return m.Node == f.cu.node }) {
		join = f.cu
	}
	if slices.Equal(cv.Stale, f.pl.stale) && join == f.pl.join {
		return nil
	}
	p, err := f.d.placementWith(cv, join)
	if err != nil {
		return fmt.Errorf("volume %q: placement without stale replicas %v: %w", f.name, cv.Stale, err)
	}
	pl, ok := p.(*chunkPlacement)
	if !ok {
		return fmt.Errorf("volume %q: stale replicas on a volume without a placement set", f.name)
	}
	f.v.SetPlacement(pl)
	f.pl = pl
	return nil
}
