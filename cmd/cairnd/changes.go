package main

import (
	"context"
	"fmt"
	"slices"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/backend/wire"
	"cairn/cluster"
	"cairn/target"
)

// Changed-block export: every volume export (live or a snapshot's) is a
// target.ChangeMapper whose bases are the sealed snapshots of the volume
// older than it, so NBD clients can ask BLOCK_STATUS with meta context
// cairn:changed:<snapshot> for the blocks changed since that snapshot
// (flag 1: changed). An incremental backup copies only those extents.

// changeExport is an export's device with its change bases. It embeds the
// volume, so every interface the volume implements, the export does.
type changeExport struct {
	*volume.Volume
	d     *daemon
	name  string // the volume's name
	epoch uint64 // a snapshot export's epoch; 0 for the live volume
}

var (
	_ target.ChangeMapper = changeExport{}
	_ volume.Changer      = (*fence)(nil)
	_ volume.Changer      = (*store.Store)(nil)
	_ volume.Changer      = (*wire.Client)(nil)
)

// bases returns the sealed snapshots of the volume older than the export,
// by name.
func (e changeExport) bases() map[string]cluster.Snapshot {
	out := map[string]cluster.Snapshot{}
	for _, sn := range e.d.catalog.Snapshots() {
		if sn.State != cluster.SnapshotSealed || (e.epoch != 0 && sn.Epoch >= e.epoch) {
			continue
		}
		for _, sv := range sn.Volumes {
			if sv.Name == e.name && sv.ID == e.ID() {
				out[sn.Name] = sn
			}
		}
	}
	return out
}

// ChangeBases implements target.ChangeMapper.
func (e changeExport) ChangeBases() []string {
	var names []string
	for n := range e.bases() {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// HasChangeBase implements target.ChangeMapper.
func (e changeExport) HasChangeBase(base string) bool {
	_, ok := e.bases()[base]
	return ok
}

// Changes implements target.ChangeMapper.
func (e changeExport) Changes(ctx context.Context, base string, off, n int64, fn func(target.ChangeExtent) bool) error {
	sn, ok := e.bases()[base]
	if !ok {
		return fmt.Errorf("volume %s: no sealed snapshot %q before this export: %w", e.name, base, target.ErrInvalid)
	}
	return e.Volume.Changed(ctx, off, n, sn.Epoch, fn)
}
