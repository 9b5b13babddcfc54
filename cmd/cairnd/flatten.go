package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"cairn/cluster"
)

// Flattens on this storage node: a job owned by the daemon (started by
// start, stopped by Close through its context) copies, volume by volume,
// what the forks it holds read through to, throttled, reporting progress
// to the catalog. It is resumable: after a restart the catalog still says
// this node has not finished, and the store's Flatten picks up where it
// stopped.

// flattenBlocksPerSecond throttles this node's flattens: blocks visited per
// second (64 MiB/s of 4 KiB blocks), so that a flatten leaves the disk to
// the volumes' own I/O.
var flattenBlocksPerSecond uint64 = 16384

// flattenReportInterval is how often a running flatten reports progress.
const flattenReportInterval = time.Second

// flattenReportTimeout bounds one progress report's catalog change.
const flattenReportTimeout = 10 * time.Second

// flattenStore is the part of the store a flatten uses.
type flattenStore interface {
	Flatten(ctx context.Context, vol uint64, progress func(done, total uint64)) error
}

// errNoFlatten: the store cannot flatten.
var errNoFlatten = errors.New("this node's store cannot flatten")

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

// flatten runs the store's flatten of cv, throttled, reports progress at
// most every flattenReportInterval, syncs, and reports it finished.
func (d *daemon) flatten(ctx context.Context, cv cluster.Volume) error {
	fs, ok := any(d.store).(flattenStore)
	if !ok {
		return errNoFlatten
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
		// Throttle: no faster than flattenBlocksPerSecond on average.
		if rate := flattenBlocksPerSecond; rate > 0 {
			ahead := time.Duration(float64(done)/float64(rate)*float64(time.Second)) - time.Since(start)
			if ahead > 0 {
				t := time.NewTimer(min(ahead, flattenReportInterval))
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
		}
		if time.Since(lastReport) >= flattenReportInterval {
			lastReport = time.Now()
			if err := report(false); err != nil {
				d.log.Warn("flatten progress report", "volume", cv.Name, "err", err)
			}
		}
	}
	if err := fs.Flatten(ctx, cv.ID, progress); err != nil {
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
