package main

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"time"
)

// Usage reporting: a storage node tells the catalog the size of the
// filesystem its store is on and the bytes its segment files take, so
// `cairn node list` shows what each node really holds. A report is a Raft
// entry, so it is sent only when a figure moved by usageStep, when it
// moved at all and the last report is usageSettle old, or at least every
// usageRefresh, and checked every usageInterval: at most one entry per
// node per usageInterval, which is nothing for the catalog. A larger step
// hid real growth (a node filling by 48 MiB showed none for five
// minutes), and the step alone left a figure that stopped less than a
// step past the last report stale until the refresh.
const (
	usageInterval = 10 * time.Second
	usageSettle   = 20 * time.Second
	usageRefresh  = 5 * time.Minute
	usageStep     = 4 << 20
	usageTimeout  = 10 * time.Second
)

// usage is one measurement of a storage node.
type usage struct{ capacity, used int64 }

// measureUsage reads the store's filesystem size and its segment bytes.
func (d *daemon) measureUsage() (usage, error) {
	var fs syscall.Statfs_t
	dir := filepath.Join(d.cfg.DataDir, "blocks")
	if err := syscall.Statfs(dir, &fs); err != nil {
		return usage{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return usage{capacity: int64(fs.Blocks) * fs.Bsize, used: d.store.Stats().SegmentBytes}, nil
}

// due reports whether u is to be sent, given the last report and its age.
func (u usage) due(last usage, age time.Duration) bool {
	switch {
	case absDiff(u.capacity, last.capacity) >= usageStep || absDiff(u.used, last.used) >= usageStep:
		return true
	case u != last && age >= usageSettle:
		return true
	}
	return age >= usageRefresh
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

// reportUsage measures and reports until the daemon stops. It waits for
// the node to be registered (a report for an unknown node is refused).
func (d *daemon) reportUsage() {
	defer d.wg.Done()
	ctx := d.ctx
	var last usage
	var sent time.Time
	logged := false
	t := time.NewTicker(usageInterval)
	defer t.Stop()
	for {
		if d.registered() {
			u, err := d.measureUsage()
			if err == nil && (sent.IsZero() || u.due(last, time.Since(sent))) {
				rctx, cancel := context.WithTimeout(ctx, usageTimeout)
				_, err = d.catalog.ReportUsage(rctx, d.cfg.NodeName, u.capacity, u.used)
				cancel()
				if err == nil {
					last, sent, logged = u, time.Now(), false
				}
			}
			if err != nil && !logged && ctx.Err() == nil {
				d.log.Warn("report storage usage; retrying", "err", err)
				logged = true
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// registered reports whether the catalog knows this node as a storage node.
func (d *daemon) registered() bool {
	for _, n := range d.catalog.Nodes() {
		if n.Name == d.cfg.NodeName {
			return true
		}
	}
	return false
}
