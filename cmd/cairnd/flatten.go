package main

import (
	"context"
	"fmt"
	"time"

	"cairn/cluster"
)

// Flattens on this storage node: a job owned by the daemon (started by
// start, stopped by Close through its context) copies, volume by volume,
// what the forks it holds read through to, throttled by the store
// ([storage] flatten_rate), reporting progress to the catalog. It is resumable: after a restart the catalog still says
// this node has not finished, and the store's Flatten picks up where it
// stopped.

// flattenReportInterval is how often a running flatten reports progress.
const flattenReportInterval = time.Second

// flattenReportTimeout bounds one progress report's catalog change.
const flattenReportTimeout = 10 * time.Second

// wakeFlattens makes the flatten job look at the catalog again.
func (d *daemon) wakeFlattens() {
	select {
	case d.lin.flattens <- struct{}{}:
	default:
	}
}

// runFlattens is the flatten job; it returns when ctx is done.
func (d *daemon) runFlattens(ctx context.Context) {
	defer d.wg.Done()
	if d.store == nil {
		return
	}
	for {
		changed := d.catalog.Changes()
		failed := false
		for _, cv := range d.catalog.Volumes() {
			if ctx.Err() != nil {
				return
			}
			if !d.flattenDue(cv) {
				continue
			}
			if err := d.flatten(ctx, cv); err != nil {
				if ctx.Err() != nil {
					return
				}
				failed = true
				d.log.Error("flatten; retrying", "volume", cv.Name, "id", cv.ID, "err", err)
			}
		}
		var retry <-chan time.Time
		if failed {
			retry = time.After(reconcileRetry)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-d.lin.flattens:
		case <-retry:
		}
	}
}

// flattenDue reports whether this node has a flatten of cv to run: one is
// running, this node holds cv and has not finished, and its store holds
// cv's current lineage.
func (d *daemon) flattenDue(cv cluster.Volume) bool {
	f := cv.Flatten
	return f != nil && f.Completed.IsZero() && d.holds(cv) && !f.Nodes[d.cfg.NodeName].Finished &&
		d.lin.applied(cv.ID) >= cv.Lineage.Version
}

// flatten runs the store's flatten of cv (throttled by the store), reports
// progress at most every flattenReportInterval, syncs, and reports it
// finished.
func (d *daemon) flatten(ctx context.Context, cv cluster.Volume) error {
	// The store's flatten writes into the fork bypassing the fence: hold
	// off a drop of the fork while it runs, and stop when the fork is
	// deleted (or its flatten is no longer running), so the drop waits
	// for one chunk at most.
	release, err := d.fence.hold(cv.ID)
	if err != nil {
		return fmt.Errorf("volume %q: flatten: %w", cv.Name, err)
	}
	defer release()
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stillDue := func() bool {
		cur, err := d.catalog.Volume(cv.Name)
		return err == nil && cur.ID == cv.ID && cur.Flatten != nil && cur.Flatten.Completed.IsZero()
	}
	me := d.cfg.NodeName
	start := time.Now()
	d.log.Info("flatten started", "volume", cv.Name, "id", cv.ID, "parent", cv.Lineage.ParentName)
	var lastReport time.Time
	var done, total uint64
	report := func(finished bool) error {
		rctx, cancel := context.WithTimeout(ctx, flattenReportTimeout)
		defer cancel()
		_, err := d.catalog.ReportFlatten(rctx, cv.Name, cv.ID, me, done, max(total, done), finished)
		if err != nil {
			d.lin.applyErrors.WithLabelValues("flatten_report").Inc()
		}
		return err
	}
	progress := func(n, t uint64) {
		if n > done {
			d.lin.flattened.Add(float64(n - done))
		}
		done, total = n, t
		if !stillDue() {
			cancel()
			return
		}
		if time.Since(lastReport) >= flattenReportInterval {
			lastReport = time.Now()
			if err := report(false); err != nil {
				d.log.Warn("flatten progress report", "volume", cv.Name, "err", err)
			}
		}
	}
	if err := d.store.Flatten(fctx, cv.ID, progress); err != nil {
		if ctx.Err() == nil && !stillDue() {
			d.log.Info("flatten abandoned: the fork is gone or its flatten is over", "volume", cv.Name, "id", cv.ID)
			return nil
		}
		return fmt.Errorf("volume %q: flatten: %w", cv.Name, err)
	}
	// The copies are durable before the catalog hears this node is done:
	// after that the parent's snapshot may be deleted.
	if err := d.store.Sync(ctx); err != nil {
		return fmt.Errorf("volume %q: flatten: sync: %w", cv.Name, err)
	}
	if err := report(true); err != nil {
		return fmt.Errorf("volume %q: flatten: report: %w", cv.Name, err)
	}
	d.log.Info("flatten finished on this node", "volume", cv.Name, "id", cv.ID, "blocks", done, "took", time.Since(start))
	return nil
}
