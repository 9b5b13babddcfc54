package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"cairn/backend/volume"
	"cairn/cluster"
	"cairn/cluster/admin"
)

// Sealed snapshots as read-only exports: over NBD as <volume>@<snapshot>,
// over iSCSI as the target <iqn_prefix>:<volume>:<snapshot> (':' is valid
// in an IQN and in no volume name; '@' is not valid in an IQN). A target
// serves the snapshots of the volumes attached to it, over the same
// placement, reading at the snapshot's epoch.

// splitSnapshot splits "vol@snap" (NBD) or "vol:snap" (iSCSI).
func splitSnapshot(name string) (vol, snap string, ok bool) {
	if v, s, ok := strings.Cut(name, "@"); ok {
		return v, s, true
	}
	return strings.Cut(name, ":")
}

// sealedSnapshot finds a sealed snapshot of a volume by name.
func (d *daemon) sealedSnapshot(vol, snap string) (cluster.Snapshot, cluster.SnapshotVolume, bool) {
	for _, sn := range d.catalog.Snapshots() {
		if sn.Name != snap || sn.State != cluster.SnapshotSealed {
			continue
		}
		for _, sv := range sn.Volumes {
			if sv.Name == vol {
				return sn, sv, true
			}
		}
	}
	return cluster.Snapshot{}, cluster.SnapshotVolume{}, false
}

// snapshotExport returns the read-only volume of snapshot snap of vol,
// opening it on first use, if vol is attached here and the snapshot is
// sealed.
func (d *daemon) snapshotExport(vol, snap string) (*volume.Volume, bool) {
	key := vol + "@" + snap
	d.mu.Lock()
	v, ok := d.mu.snaps[key]
	d.mu.Unlock()
	if ok {
		return v, true
	}
	live, ok := d.volume(vol)
	if !ok {
		return nil, false
	}
	sn, sv, ok := d.sealedSnapshot(vol, snap)
	if !ok || sv.ID != live.ID() {
		return nil, false
	}
	cv, ok := d.lineageReady(vol)
	if !ok {
		return nil, false
	}
	p, err := d.placement(cv)
	if err != nil {
		d.log.Error("snapshot export", "export", key, "err", err)
		return nil, false
	}
	v, err = volume.Open(volume.Options{
		ID: cv.ID, Size: cv.Size, ChunkSize: cv.ChunkSize,
		Generation: max(cv.Generation, 1), Epoch: sn.Epoch, ReadOnly: true, Placement: p,
	})
	if err != nil {
		d.log.Error("snapshot export", "export", key, "err", err)
		return nil, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.mu.snaps[key]; ok {
		v.Close()
		return old, true
	}
	d.mu.snaps[key] = v
	d.log.Info("snapshot exported", "export", key, "epoch", sn.Epoch)
	return v, true
}

// reconcileSnapshots closes the exports of snapshots that are gone, or
// whose volume is no longer attached here, and sets the retained epochs
// of every volume on this storage node.
func (d *daemon) reconcileSnapshots() error {
	d.mu.Lock()
	var gone []*volume.Volume
	var names []string
	for key, v := range d.mu.snaps {
		vol, snap, _ := strings.Cut(key, "@")
		live, ok := d.mu.vols[vol]
		_, sv, sealed := d.sealedSnapshot(vol, snap)
		if ok && sealed && live.ID() == sv.ID {
			continue
		}
		delete(d.mu.snaps, key)
		gone = append(gone, v)
		names = append(names, key)
	}
	d.mu.Unlock()
	var errs []error
	for i, v := range gone {
		d.disconnect(names[i])
		if err := v.Close(); err != nil {
			errs = append(errs, fmt.Errorf("snapshot export %s: %w", names[i], err))
		}
	}
	if d.store != nil {
		errs = append(errs, d.pushRetained(d.catalog.Volumes()))
	}
	return errors.Join(errs...)
}

func (b backend) CreateGroup(ctx context.Context, req admin.GroupRequest) (admin.Group, error) {
	if err := b.d.catalog.CreateGroup(ctx, req.Name, req.Volumes); err != nil {
		return admin.Group{}, apiError(err)
	}
	for _, g := range b.d.catalog.Groups() {
		if g.Name == req.Name {
			return admin.Group{Name: g.Name, Volumes: g.Volumes}, nil
		}
	}
	return admin.Group(req), nil
}

func (b backend) Groups(ctx context.Context) ([]admin.Group, error) {
	var out []admin.Group
	for _, g := range b.d.catalog.Groups() {
		out = append(out, admin.Group{Name: g.Name, Volumes: g.Volumes})
	}
	return out, nil
}

func (b backend) DeleteGroup(ctx context.Context, name string) error {
	return apiError(b.d.catalog.DeleteGroup(ctx, name))
}

func (b backend) snapshotView(sn cluster.Snapshot) admin.Snapshot {
	v := admin.Snapshot{ID: sn.ID, Name: sn.Name, Group: sn.Group, State: string(sn.State), Reason: sn.Reason, Epoch: sn.Epoch, Created: sn.Created}
	for _, sv := range sn.Volumes {
		v.Volumes = append(v.Volumes, sv.Name)
		if sn.State == cluster.SnapshotSealed {
			addr := b.d.nbdAddr
			if cv, err := b.d.catalog.Volume(sv.Name); err == nil && cv.AttachedTo != b.d.cfg.NodeName {
				if m, ok := b.d.member(cv.AttachedTo); ok {
					addr = m.Meta.Addrs.NBD
				}
			}
			v.Exports = append(v.Exports, "nbd://"+addr+"/"+sv.Name+"@"+sn.Name)
		}
	}
	return v
}

func (b backend) Snapshots(ctx context.Context) ([]admin.Snapshot, error) {
	var out []admin.Snapshot
	for _, sn := range b.d.catalog.Snapshots() {
		out = append(out, b.snapshotView(sn))
	}
	return out, nil
}

// findSnapshot resolves "name" or "group/name" to one snapshot.
func (d *daemon) findSnapshot(ref string) (cluster.Snapshot, error) {
	group, name, qualified := strings.Cut(ref, "/")
	if !qualified {
		name, group = ref, ""
	}
	var found []cluster.Snapshot
	for _, sn := range d.catalog.Snapshots() {
		if sn.Name == name && (group == "" || sn.Group == group) {
			found = append(found, sn)
		}
	}
	switch len(found) {
	case 0:
		return cluster.Snapshot{}, fmt.Errorf("%w: snapshot %q", admin.ErrNotFound, ref)
	case 1:
		return found[0], nil
	}
	return cluster.Snapshot{}, fmt.Errorf("%w: %d snapshots are named %q: say group/name", admin.ErrInvalid, len(found), name)
}

func (b backend) DeleteSnapshot(ctx context.Context, ref string) error {
	sn, err := b.d.findSnapshot(ref)
	if err != nil {
		return err
	}
	if sn.State == cluster.SnapshotPending {
		return fmt.Errorf("%w: snapshot %q is still being taken", admin.ErrConflict, ref)
	}
	if err := b.d.catalog.DeleteSnapshot(ctx, sn.ID); err != nil {
		return apiError(err)
	}
	b.d.log.Info("snapshot deleted", "snapshot", sn.Name, "group", sn.Group, "epoch", sn.Epoch)
	return b.d.reconcile(ctx)
}
