package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"cairn/cluster"
	"cairn/cluster/admin"
	"cairn/snapshot"
)

// The snapshot protocol as cairnd runs it: the node that takes the
// request coordinates (catalog changes go to the leader); each target's
// part runs on its own volumes' gates, locally or through the target's
// admin listener (loopback peers only, like forwarded changes, until the
// cluster transports carry TLS).

const snapshotPathPrefix = "/internal/v1/snapshot/"

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
// of its open volumes (one per daemon: it serializes the gate calls),
// recording each held window in the metrics.
type localTarget struct{ d *daemon }

func (t localTarget) Hold(ctx context.Context, names []string, next uint64, timeout time.Duration) error {
	return t.d.snapLocal.Hold(ctx, names, next, timeout)
}

func (t localTarget) Release(ctx context.Context, names []string, next uint64) (snapshot.HoldReport, error) {
	rep, err := t.d.snapLocal.Release(ctx, names, next)
	for _, h := range rep.Volumes {
		if h.Window > 0 {
			t.d.holdSeconds.Observe(h.Window.Seconds())
		}
	}
	return rep, err
}

func (t localTarget) Drained(ctx context.Context, names []string, epoch uint64) (bool, error) {
	return t.d.snapLocal.Drained(ctx, names, epoch)
}

// remoteTarget is another node's target, through its admin listener.
type remoteTarget struct {
	d    *daemon
	addr string
}

type targetCall struct {
	Volumes   []string      `json:"volumes"`
	Next      uint64        `json:"next,omitempty"`
	Epoch     uint64        `json:"epoch,omitempty"`
	TimeoutNS time.Duration `json:"timeout_ns,omitempty"`
}

type targetReply struct {
	Error   string              `json:"error,omitempty"`
	Report  snapshot.HoldReport `json:"report"`
	Drained bool                `json:"drained"`
}

func (t remoteTarget) call(ctx context.Context, what string, in targetCall) (targetReply, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return targetReply{}, err
	}
	b, err := t.d.postInternal(ctx, t.addr, snapshotPathPrefix+what, body)
	if err != nil {
		return targetReply{}, fmt.Errorf("target at %s: %w", t.addr, err)
	}
	var out targetReply
	if err := json.Unmarshal(b, &out); err != nil {
		return targetReply{}, fmt.Errorf("target at %s: %s: %w", t.addr, what, err)
	}
	if out.Error != "" {
		return out, fmt.Errorf("target at %s: %s: %s", t.addr, what, out.Error)
	}
	return out, nil
}

func (t remoteTarget) Hold(ctx context.Context, names []string, next uint64, timeout time.Duration) error {
	_, err := t.call(ctx, "hold", targetCall{Volumes: names, Next: next, TimeoutNS: timeout})
	return err
}

func (t remoteTarget) Release(ctx context.Context, names []string, next uint64) (snapshot.HoldReport, error) {
	r, err := t.call(ctx, "release", targetCall{Volumes: names, Next: next})
	return r.Report, err
}

func (t remoteTarget) Drained(ctx context.Context, names []string, epoch uint64) (bool, error) {
	r, err := t.call(ctx, "drained", targetCall{Volumes: names, Epoch: epoch})
	return r.Drained, err
}

// serveTarget runs a coordinator's call on this node's target.
func (d *daemon) serveTarget(w http.ResponseWriter, r *http.Request) {
	if !d.peerAllowed(r) {
		http.Error(w, "snapshot calls are taken from cluster nodes only", http.StatusForbidden)
		return
	}
	var in targetCall
	var err error
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, forwardBytesMax)).Decode(&in); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	t := localTarget{d}
	var out targetReply
	switch r.PathValue("step") {
	case "hold":
		err = t.Hold(r.Context(), in.Volumes, in.Next, in.TimeoutNS)
	case "release":
		out.Report, err = t.Release(r.Context(), in.Volumes, in.Next)
	case "drained":
		out.Drained, err = t.Drained(r.Context(), in.Volumes, in.Epoch)
	default:
		http.Error(w, "unknown snapshot step", http.StatusNotFound)
		return
	}
	if err != nil {
		out.Error = err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// snapshotTarget finds a node's target for the coordinator.
func (d *daemon) snapshotTarget(node string) (snapshot.Target, error) {
	if node == d.cfg.NodeName {
		return localTarget{d}, nil
	}
	m, ok := d.member(node)
	if !ok || m.Meta.Addrs.Admin == "" {
		return nil, fmt.Errorf("target %s is not alive in gossip", node)
	}
	return remoteTarget{d: d, addr: m.Meta.Addrs.Admin}, nil
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
	for _, t := range res.Targets {
		for _, h := range t.Report.Volumes {
			heldMax = max(heldMax, h.Held)
		}
	}
	view.Protocol = &admin.SnapshotProtocol{
		ReserveSeconds: res.Reserve.Seconds(), HoldSeconds: res.Hold.Seconds(),
		ReleaseSeconds: res.Release.Seconds(), SealSeconds: res.Seal.Seconds(),
		HeldWindowMaxSeconds: res.Window.Seconds(), HeldMax: heldMax,
	}
	if err != nil {
		d.log.Warn("snapshot failed", "group", req.Group, "snapshot", req.Name, "reason", res.Reason, "err", err)
		return view, fmt.Errorf("%w: snapshot %q of %q failed (%s): %w", admin.ErrConflict, req.Name, req.Group, res.Reason, err)
	}
	d.log.Info("snapshot sealed", "group", req.Group, "snapshot", req.Name, "epoch", res.Epoch, "held_window", res.Window, "total", res.Total)
	return view, nil
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
