package main

import (
	"context"
	"fmt"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/backend/wire"
	"cairn/cluster"
	"cairn/cluster/admin"
	"cairn/snapshot"
)

// The snapshot protocol as cairnd runs it: the node that takes the
// request coordinates (catalog changes go to the leader); each target's
// part runs on its own volumes' gates, locally or through the target's
// node RPC (backend/wire's snapshot ops), which every node with the
// target role serves.

// stepTimeout bounds the leader's catalog change that fails an abandoned
// snapshot (the coordinator's own step deadline).
const stepTimeout = 2 * time.Second

// snapshotCatalog is the coordinator's catalog for one named snapshot.
// It keeps the record the leader returned when it ended the snapshot: the
// local replica may not have applied that change yet when the request
// that took the snapshot answers.
type snapshotCatalog struct {
	d     *daemon
	name  string
	ended *cluster.Snapshot
}

func (c snapshotCatalog) Reserve(ctx context.Context, group string) (snapshot.Reservation, error) {
	sn, err := c.d.catalog.ReserveSnapshot(ctx, group, c.name)
	if err != nil {
		return snapshot.Reservation{}, err
	}
	r := snapshot.Reservation{SnapshotID: sn.ID, Epoch: sn.Epoch}
	for _, v := range sn.Volumes {
		r.Volumes = append(r.Volumes, snapshot.VolumeRef{Name: v.Name, ID: v.ID, Target: v.Target})
	}
	return r, nil
}

func (c snapshotCatalog) Seal(ctx context.Context, id uint64) error {
	sn, err := c.d.catalog.EndSnapshot(ctx, id, cluster.SnapshotSealed, "")
	if err == nil {
		*c.ended = sn
	}
	return err
}

func (c snapshotCatalog) Fail(ctx context.Context, id uint64, reason string) error {
	sn, err := c.d.catalog.EndSnapshot(ctx, id, cluster.SnapshotFailed, reason)
	if err == nil {
		*c.ended = sn
	}
	return err
}

// localTarget is this node's target: snapshot.LocalTarget over the gates
// of its open volumes (one per daemon: it serializes the gate calls). The
// volumes report each held window to the metrics themselves (holdEnded).
type localTarget struct{ d *daemon }

func (t localTarget) Hold(ctx context.Context, names []string, next uint64, timeout time.Duration) error {
	return t.d.snapLocal.Hold(ctx, names, next, timeout)
}

func (t localTarget) Release(ctx context.Context, names []string, next uint64) (snapshot.HoldReport, error) {
	return t.d.snapLocal.Release(ctx, names, next)
}

// StartRelease releases at once (the gates' Release does not block), so
// that the coordinator's last leg lets this node's holds go in line with
// sending the others' releases.
func (t localTarget) StartRelease(ctx context.Context, names []string, next uint64) (func() (snapshot.HoldReport, error), error) {
	rep, err := t.d.snapLocal.Release(ctx, names, next)
	return func() (snapshot.HoldReport, error) { return rep, err }, nil
}

var (
	_ snapshot.ReleaseStarter = localTarget{}
	_ snapshot.ReleaseStarter = remoteTarget{}
)

func (t localTarget) Drained(ctx context.Context, names []string, epoch uint64) (bool, error) {
	return t.d.snapLocal.Drained(ctx, names, epoch)
}

// holdBuckets resolve the held-ack window around its goal (p99 ≤ 1 ms):
// 100 µs steps up to 1 ms, then coarser up to past the longest deadline.
var holdBuckets = []float64{
	25e-6, 50e-6, 100e-6, 200e-6, 300e-6, 400e-6, 500e-6, 600e-6, 700e-6, 800e-6, 900e-6,
	1e-3, 1.25e-3, 1.5e-3, 2e-3, 2.5e-3, 3e-3, 4e-3, 5e-3, 7.5e-3, 10e-3, 25e-3, 50e-3,
	0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60,
}

// holdEnded records a volume's hold as it ends (volume.Options.OnHoldEnd):
// every hold counts, also one that ended at its own deadline with no
// coordinator to release it.
func (d *daemon) holdEnded(r volume.HoldResult) {
	d.holdSeconds.Observe(r.Window.Seconds())
	d.holdsEnded.WithLabelValues(r.Reason).Inc()
}

// remoteTarget is another node's target, through its node RPC (mutual
// TLS in a TLS cluster). Each call's deadline goes with it: the node
// works on a call no longer than the coordinator's step allows.
type remoteTarget struct {
	node string
	c    *wire.Client
}

func (t remoteTarget) Hold(ctx context.Context, names []string, next uint64, timeout time.Duration) error {
	if err := t.c.TargetHold(ctx, names, next, timeout); err != nil {
		return fmt.Errorf("target %s: %w", t.node, err)
	}
	return nil
}

func (t remoteTarget) Release(ctx context.Context, names []string, next uint64) (snapshot.HoldReport, error) {
	holds, err := t.c.TargetRelease(ctx, names, next)
	return t.report(names, holds, err)
}

// StartRelease sends the release and returns with it in flight.
func (t remoteTarget) StartRelease(ctx context.Context, names []string, next uint64) (func() (snapshot.HoldReport, error), error) {
	wait, err := t.c.StartTargetRelease(ctx, names, next)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", t.node, err)
	}
	return func() (snapshot.HoldReport, error) {
		holds, err := wait()
		return t.report(names, holds, err)
	}, nil
}

func (t remoteTarget) report(names []string, holds []wire.VolumeHold, err error) (snapshot.HoldReport, error) {
	var rep snapshot.HoldReport
	for i, h := range holds {
		rep.Volumes = append(rep.Volumes, snapshot.VolumeHold{Volume: names[i], Window: h.Window, Held: h.Held, Reason: h.Reason, Drained: h.Drained})
	}
	if err != nil {
		return rep, fmt.Errorf("target %s: %w", t.node, err)
	}
	return rep, nil
}

func (t remoteTarget) Drained(ctx context.Context, names []string, epoch uint64) (bool, error) {
	ok, err := t.c.TargetDrained(ctx, names, epoch)
	if err != nil {
		return false, fmt.Errorf("target %s: %w", t.node, err)
	}
	return ok, nil
}

// targetRPC serves a coordinator's calls from the node RPC on this node's
// target.
type targetRPC struct{ t localTarget }

var _ wire.SnapshotTarget = targetRPC{}

func (r targetRPC) Hold(ctx context.Context, names []string, next uint64, timeout time.Duration) error {
	return r.t.Hold(ctx, names, next, timeout)
}

func (r targetRPC) Release(ctx context.Context, names []string, next uint64) ([]wire.VolumeHold, error) {
	rep, err := r.t.Release(ctx, names, next)
	if len(rep.Volumes) != len(names) {
		// Refused as a whole (too many volumes): no report.
		return nil, err
	}
	holds := make([]wire.VolumeHold, len(rep.Volumes))
	for i, h := range rep.Volumes {
		holds[i] = wire.VolumeHold{Window: h.Window, Held: h.Held, Reason: h.Reason, Drained: h.Drained}
	}
	return holds, err
}

func (r targetRPC) Drained(ctx context.Context, names []string, epoch uint64) (bool, error) {
	return r.t.Drained(ctx, names, epoch)
}

// snapshotTarget finds a node's target for the coordinator: this node's,
// or the control client (its own connection, beside the data's) of the
// node RPC address the node announces in gossip.
func (d *daemon) snapshotTarget(node string) (snapshot.Target, error) {
	if node == d.cfg.NodeName {
		return localTarget{d}, nil
	}
	m, ok := d.member(node)
	if !ok {
		return nil, fmt.Errorf("target %s is not alive in gossip", node)
	}
	if m.Meta.Addrs.Storage == "" {
		return nil, fmt.Errorf("target %s announces no node RPC address", node)
	}
	c, err := d.controlPeer(node, m.Meta.Addrs.Storage)
	if err != nil {
		return nil, err
	}
	return remoteTarget{node: node, c: c}, nil
}

func (b backend) CreateSnapshot(ctx context.Context, req admin.SnapshotRequest) (admin.Snapshot, error) {
	d := b.d
	if req.Name == "" {
		req.Name = time.Now().UTC().Format("20060102-150405.000")
	}
	var ended cluster.Snapshot
	c, err := snapshot.New(snapshot.Options{Catalog: snapshotCatalog{d: d, name: req.Name, ended: &ended}, Targets: d.snapshotTarget})
	if err != nil {
		return admin.Snapshot{}, err
	}
	res, err := c.Snapshot(ctx, req.Group)
	d.snapshotResults.WithLabelValues(resultLabel(res)).Inc()
	if res.SnapshotID == 0 {
		return admin.Snapshot{}, apiError(err)
	}
	var view admin.Snapshot
	if ended.ID == res.SnapshotID {
		view = b.snapshotView(ended)
	} else {
		for _, sn := range d.catalog.Snapshots() {
			if sn.ID == res.SnapshotID {
				view = b.snapshotView(sn)
			}
		}
	}
	var heldMax int64
	var holds []admin.SnapshotHold
	for _, t := range res.Targets {
		for _, h := range t.Report.Volumes {
			heldMax = max(heldMax, h.Held)
			holds = append(holds, admin.SnapshotHold{Target: t.Node, Volume: h.Volume, WindowSeconds: h.Window.Seconds(), Held: h.Held, Reason: h.Reason})
		}
	}
	view.Protocol = &admin.SnapshotProtocol{
		ReserveSeconds: res.Reserve.Seconds(), HoldSeconds: res.Hold.Seconds(),
		ReleaseSeconds: res.Release.Seconds(), SealSeconds: res.Seal.Seconds(),
		HeldWindowMaxSeconds: res.Window.Seconds(), HeldMax: heldMax, Holds: holds,
	}
	if err != nil {
		d.log.Warn("snapshot failed", "group", req.Group, "snapshot", req.Name, "reason", res.Reason, "err", err)
		return view, fmt.Errorf("%w: snapshot %q of %q failed (%s): %w", admin.ErrConflict, req.Name, req.Group, res.Reason, err)
	}
	d.log.Info("snapshot sealed", "group", req.Group, "snapshot", req.Name, "epoch", res.Epoch, "held_window", res.Window, "total", res.Total)
	return view, nil
}

// snapshotAbandonAfter is the age past which a pending snapshot has no
// live coordinator: each of the protocol's steps (reserve, hold, release,
// drain, seal or fail) ends at its deadline, 2 s, so a coordinator that
// still runs has returned after 12 s; the rest is margin for the clock of
// the node that reserved (the record's Created) against the leader's.
const snapshotAbandonAfter = 15 * time.Second

// failAbandoned, on the catalog leader, fails the snapshots left pending
// by a coordinator that died mid-protocol, so that their epochs stop
// pinning versions on the storage nodes and their names can be reused.
// Failing is the only safe end: nothing tells the leader whether every
// target switched before any hold ended, which a seal needs. The targets'
// holds ended at their own deadline already. A coordinator that was only
// paused and comes back finds the record no longer pending and fails.
func (d *daemon) failAbandoned(ctx context.Context) {
	now := time.Now()
	for _, sn := range d.catalog.Snapshots() {
		if sn.State != cluster.SnapshotPending || now.Sub(sn.Created) < snapshotAbandonAfter {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, stepTimeout)
		_, err := d.catalog.EndSnapshot(cctx, sn.ID, cluster.SnapshotFailed, snapshot.ReasonAbandoned)
		cancel()
		if err != nil {
			d.log.Warn("failing an abandoned snapshot", "snapshot", sn.Name, "group", sn.Group, "id", sn.ID, "err", err)
			continue
		}
		d.snapshotResults.WithLabelValues(snapshot.ReasonAbandoned).Inc()
		d.log.Warn("snapshot abandoned by its coordinator: failed", "snapshot", sn.Name, "group", sn.Group, "id", sn.ID, "epoch", sn.Epoch, "age", now.Sub(sn.Created).Round(time.Millisecond))
	}
}

func resultLabel(r snapshot.Result) string {
	if r.Sealed {
		return "sealed"
	}
	if r.Reason == "" {
		return "error"
	}
	return r.Reason
}

// noStore is the node RPC backend of a node without the storage role: it
// serves the snapshot ops only and refuses every data call.
type noStore struct{}

var errNoStore = fmt.Errorf("%w: this node has no storage role", wire.ErrUnsupported)

func (noStore) Write(context.Context, uint64, uint64, []byte, store.Stamp, bool) error {
	return errNoStore
}
func (noStore) Read(context.Context, uint64, uint64, []byte, uint64) error { return errNoStore }
func (noStore) Zero(context.Context, uint64, uint64, uint64, store.Stamp, bool) error {
	return errNoStore
}
func (noStore) Extents(context.Context, uint64, uint64, uint64, uint64, func(uint64, uint64, bool) bool) error {
	return errNoStore
}
func (noStore) Sync(context.Context) error { return errNoStore }
