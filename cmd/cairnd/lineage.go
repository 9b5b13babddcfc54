package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cairn/backend/store"
	"cairn/cluster"
	"cairn/cluster/admin"
	"cairn/configs"
)

// Lineage on this node: every storage node applies the catalog's retained
// epochs and lineages (forks, rollbacks, flattens) to its own store in the
// reconcile loop, and reports each lineage version it holds durably to the
// catalog; a target opens a volume only once every node holding it has
// reported its current version (cluster.Volume.LineageReady).
//
// Across nodes the order is: a lineage change is a catalog entry; each
// holder's reconcile calls store.SetLineage, which returns once the
// lineage is synced, and only then commits ReportLineage; the target reads
// the volume's record from its own replica after its reconcile starts and
// opens the volume only if every holder's report is in it. A rollback of
// an attached volume bumps its generation, so the target serving it
// closes it (its writes are fenced from then on) and waits for the
// reports before serving it again. (A completed flatten changes the
// lineage without a reopen: a holder still reading through to the parent
// finds every block it reads there copied into the fork.)

// reconcileRetry is how soon a reconcile that failed runs again when the
// catalog does not change in the meantime.
const reconcileRetry = 2 * time.Second

// lineageState is what this node's store was given, so that a reconcile
// pushes only changes (each push is a sync).
type lineageState struct {
	mu struct {
		sync.Mutex
		retained map[uint64]retainedPush // by volume id: what was last set
		lineage  map[uint64]uint64       // by volume id: the lineage version set
	}
	// applyErrors counts failures to apply catalog metadata to the store,
	// by what: retained, lineage, report.
	applyErrors *prometheus.CounterVec
	// flattened counts the blocks this node's flattens visited.
	flattened prometheus.Counter
	// flattens wakes the flatten loop.
	flattens chan struct{}
}

func (l *lineageState) init() {
	l.mu.retained = map[uint64]retainedPush{}
	l.mu.lineage = map[uint64]uint64{}
	l.applyErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cairn_store_apply_errors_total",
		Help: "Failures to apply catalog metadata (retained epochs, lineages) to this node's store, or to report it; retried.",
	}, []string{"what"})
	l.flattened = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cairn_flatten_blocks_total", Help: "Blocks this storage node's flattens visited.",
	})
	l.flattens = make(chan struct{}, 1)
}

func (l *lineageState) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.applyErrors, l.flattened}
}

// applied returns the lineage version this node's store holds of a volume.
func (l *lineageState) applied(id uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.lineage[id]
}

// holds reports whether this node's store holds chunks of cv.
func (d *daemon) holds(cv cluster.Volume) bool {
	return d.store != nil && slices.Contains(cv.Holders(), d.cfg.NodeName)
}

// storeLineage converts the catalog's lineage to the store's.
func storeLineage(l cluster.Lineage) store.Lineage {
	out := store.Lineage{Parent: l.Parent, ParentEpoch: l.ParentEpoch}
	for _, r := range l.Rollbacks {
		out.Rollbacks = append(out.Rollbacks, store.Rollback{From: r.From, To: r.To})
	}
	return out
}

// retainedPush is what pushRetained last set for a volume.
type retainedPush struct {
	epochs  []uint64
	through uint64
}

// pushRetained sets the retained epochs of every volume whose set or
// write epoch changed since the last push, bounded by the write epoch of
// the catalog state they come from (store.SetRetainedThrough): all is
// read before the retained epochs, so the list holds every snapshot below
// each volume's epoch in all, and a replica that lags costs space, never
// a snapshot's data. A failure is logged, counted and returned; the
// volume is pushed again next round.
func (d *daemon) pushRetained(all []cluster.Volume) error {
	retained := d.catalog.RetainedEpochs()
	live := make(map[uint64]bool, len(all))
	for _, cv := range all {
		live[cv.ID] = true
	}
	d.lin.mu.Lock()
	for id := range d.lin.mu.retained {
		if !live[id] {
			delete(d.lin.mu.retained, id) // deleted: its data goes with it
		}
	}
	d.lin.mu.Unlock()
	var errs []error
	for _, cv := range all {
		want := retainedPush{epochs: retained[cv.ID], through: cv.Epoch}
		d.lin.mu.Lock()
		have, known := d.lin.mu.retained[cv.ID]
		d.lin.mu.Unlock()
		if known && have.through == want.through && slices.Equal(have.epochs, want.epochs) {
			continue
		}
		if err := d.store.SetRetainedThrough(cv.ID, want.epochs, want.through); err != nil {
			d.lin.applyErrors.WithLabelValues("retained").Inc()
			d.log.Error("set retained epochs; retrying", "volume", cv.Name, "id", cv.ID, "epochs", len(want.epochs), "err", err)
			errs = append(errs, fmt.Errorf("volume %q: set retained epochs: %w", cv.Name, err))
			continue
		}
		want.epochs = slices.Clone(want.epochs)
		d.lin.mu.Lock()
		d.lin.mu.retained[cv.ID] = want
		d.lin.mu.Unlock()
	}
	return errors.Join(errs...)
}

// reconcileLineage sets, on this node's store, the lineage of every volume
// it holds whose lineage changed since the last push, and reports each
// version to the catalog once it is durable.
func (d *daemon) reconcileLineage(ctx context.Context, all []cluster.Volume) error {
	var errs []error
	for _, cv := range all {
		if cv.Lineage.Version == 0 || !d.holds(cv) {
			continue
		}
		if d.lin.applied(cv.ID) < cv.Lineage.Version {
			if err := d.store.SetLineage(cv.ID, storeLineage(cv.Lineage)); err != nil {
				d.lin.applyErrors.WithLabelValues("lineage").Inc()
				d.log.Error("set lineage; retrying", "volume", cv.Name, "id", cv.ID, "version", cv.Lineage.Version, "err", err)
				errs = append(errs, fmt.Errorf("volume %q: set lineage: %w", cv.Name, err))
				continue
			}
			d.lin.mu.Lock()
			d.lin.mu.lineage[cv.ID] = cv.Lineage.Version
			d.lin.mu.Unlock()
			d.log.Info("lineage applied", "volume", cv.Name, "id", cv.ID, "version", cv.Lineage.Version,
				"parent", cv.Lineage.ParentName, "parent_epoch", cv.Lineage.ParentEpoch, "rollbacks", len(cv.Lineage.Rollbacks))
		}
		if cv.Lineage.Applied[d.cfg.NodeName] >= cv.Lineage.Version {
			continue
		}
		if _, err := d.catalog.ReportLineage(ctx, cv.Name, cv.ID, d.cfg.NodeName, cv.Lineage.Version); err != nil {
			d.lin.applyErrors.WithLabelValues("report").Inc()
			d.log.Error("report lineage; retrying", "volume", cv.Name, "version", cv.Lineage.Version, "err", err)
			errs = append(errs, fmt.Errorf("volume %q: report lineage: %w", cv.Name, err))
		}
	}
	d.wakeFlattens()
	return errors.Join(errs...)
}

// lineageReady reports whether a target may serve cv: every holder's
// store holds its current lineage. It reads the local replica afresh.
func (d *daemon) lineageReady(name string) (cluster.Volume, bool) {
	cv, err := d.catalog.Volume(name)
	if err != nil {
		return cv, false
	}
	ok, behind := cv.LineageReady()
	if !ok {
		d.log.Info("volume waits for its lineage on storage nodes", "volume", name, "version", cv.Lineage.Version, "nodes", behind)
	}
	return cv, ok
}

// lineageView adds a volume's lineage to its admin view.
func (d *daemon) lineageView(cv cluster.Volume, v *admin.Volume) {
	if l := cv.Lineage; l.Parent != 0 {
		v.Parent = l.ParentName + "@" + d.snapshotName(l.ParentSnapshot)
	}
	v.Rollbacks = len(cv.Lineage.Rollbacks)
}

// snapshotName is the catalog name of a snapshot id; the id if unknown.
func (d *daemon) snapshotName(id uint64) string {
	for _, sn := range d.catalog.Snapshots() {
		if sn.ID == id {
			return sn.Name
		}
	}
	return fmt.Sprint(id)
}

func (b backend) ForkVolume(ctx context.Context, volume string, req admin.ForkRequest) (admin.Volume, error) {
	d := b.d
	if err := configs.ValidVolumeName(req.Name); err != nil {
		return admin.Volume{}, fmt.Errorf("%w: %w", admin.ErrInvalid, err)
	}
	parent, err := d.catalog.Volume(volume)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	if req.Target == "" && d.cfg.Has(configs.RoleTarget) && len(parent.Placement) > 0 {
		req.Target = d.cfg.NodeName
	}
	start := time.Now()
	cv, err := d.catalog.Fork(ctx, volume, req.Snapshot, req.Name, req.Target)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	took := time.Since(start)
	if err := d.reconcile(ctx); err != nil {
		return admin.Volume{}, err
	}
	d.log.Info("volume forked", "volume", cv.Name, "id", cv.ID, "parent", volume, "snapshot", req.Snapshot,
		"parent_epoch", cv.Lineage.ParentEpoch, "size", cv.Size, "took", took)
	return b.view(ctx, cv, false), nil
}

func (b backend) RollbackVolume(ctx context.Context, volume string, req admin.RollbackRequest) (admin.Volume, error) {
	d := b.d
	cv, err := d.catalog.Volume(volume)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	force := req.Force
	if cv.AttachedTo != "" && !force {
		if cv.AttachedTo != d.cfg.NodeName {
			return admin.Volume{}, fmt.Errorf("%w: volume %q is attached to the target on %s; roll it back there or use --force (its clients are disconnected)", admin.ErrConflict, volume, cv.AttachedTo)
		}
		if n, i := d.sessions(volume); n+i > 0 {
			return admin.Volume{}, fmt.Errorf("%w: volume %q is attached (%d NBD connection(s), %d iSCSI session(s)); detach the clients or use --force to disconnect them", admin.ErrConflict, volume, n, i)
		}
		force = true // attached here without clients: serving it anew loses nothing
	}
	if cv.AttachedTo == d.cfg.NodeName && req.Force {
		n, i := d.sessions(volume)
		d.log.Warn("forced rollback: disconnecting clients", "volume", volume, "nbd_connections", n, "iscsi_sessions", i)
		d.disconnect(volume)
	}
	start := time.Now()
	rv, err := d.catalog.Rollback(ctx, volume, req.Snapshot, force)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	took := time.Since(start)
	if err := d.reconcile(ctx); err != nil {
		return admin.Volume{}, err
	}
	last := rv.Lineage.Rollbacks[len(rv.Lineage.Rollbacks)-1]
	d.log.Info("volume rolled back", "volume", volume, "snapshot", req.Snapshot, "from", last.From, "to", last.To,
		"epoch", rv.Epoch, "generation", rv.Generation, "took", took)
	return b.view(ctx, rv, false), nil
}

func (b backend) FlattenVolume(ctx context.Context, volume string) (admin.FlattenStatus, error) {
	cv, err := b.d.catalog.Flatten(ctx, volume)
	if err != nil {
		return admin.FlattenStatus{}, apiError(err)
	}
	b.d.wakeFlattens()
	b.d.log.Info("flatten requested", "volume", volume, "parent", cv.Lineage.ParentName, "nodes", cv.Holders())
	return flattenStatus(cv, time.Now()), nil
}

func (b backend) FlattenStatus(ctx context.Context, volume string) (admin.FlattenStatus, error) {
	cv, err := b.d.catalog.Volume(volume)
	if err != nil {
		return admin.FlattenStatus{}, apiError(err)
	}
	return flattenStatus(cv, time.Now()), nil
}

// flattenStatus is the admin view of a volume's flatten at now.
func flattenStatus(cv cluster.Volume, now time.Time) admin.FlattenStatus {
	st := admin.FlattenStatus{Volume: cv.Name, State: "none", ETASeconds: -1}
	f := cv.Flatten
	if f == nil {
		return st
	}
	done, total, complete := f.Progress()
	st.Requested, st.Completed, st.DoneBlocks, st.TotalBlocks = f.Requested, f.Completed, done, total
	st.Nodes = map[string]bool{}
	for _, h := range cv.Holders() {
		st.Nodes[h] = f.Nodes[h].Finished
	}
	if complete {
		st.State, st.Percent, st.ETASeconds = "complete", 100, 0
		return st
	}
	st.State, st.Parent = "running", cv.Lineage.ParentName
	reported := 0
	for _, h := range cv.Holders() {
		if _, ok := f.Nodes[h]; ok {
			reported++
		}
	}
	if total > 0 && reported == len(cv.Holders()) {
		st.Percent = 100 * float64(done) / float64(total)
		if elapsed := now.Sub(f.Requested).Seconds(); done > 0 && elapsed > 0 {
			st.ETASeconds = elapsed * float64(total-done) / float64(done)
		}
	}
	return st
}
