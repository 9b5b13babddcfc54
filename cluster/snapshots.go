package cluster

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"
)

// Consistency groups and snapshots in the catalog. A group names volumes
// that are snapshotted together; a volume in no group is its own group,
// named by the volume. All volumes of a group share one epoch: joining a
// group raises a volume's epoch to the group's (raising is always safe).
//
// A snapshot is reserved (the group's epoch e becomes e+1 and a pending
// record names e), then sealed or failed by the coordinator that reserved
// it. Its volumes read as they were at epoch e. Pending and sealed
// snapshots keep their epochs retained on the storage nodes.

// SnapshotState is a snapshot's place in the protocol.
type SnapshotState string

const (
	SnapshotPending SnapshotState = "pending"
	SnapshotSealed  SnapshotState = "sealed"
	SnapshotFailed  SnapshotState = "failed"
)

// Group is a consistency group.
type Group struct {
	Name    string   `json:"name"`
	Volumes []string `json:"volumes"` // sorted
}

// Snapshot is the catalog's record of a snapshot of a group.
type Snapshot struct {
	ID    uint64        `json:"id"`
	Name  string        `json:"name"`  // unique among the group's volumes' snapshots
	Group string        `json:"group"` // the group, or the volume for a volume's own
	State SnapshotState `json:"state"`
	// Reason says why a failed snapshot failed.
	Reason string `json:"reason,omitempty"`
	// Epoch is the cut: the snapshot holds the versions stamped ≤ Epoch.
	Epoch   uint64           `json:"epoch"`
	Volumes []SnapshotVolume `json:"volumes"`
	Created time.Time        `json:"created"`
}

// SnapshotVolume is one volume of a snapshot.
type SnapshotVolume struct {
	Name   string `json:"name"`
	ID     uint64 `json:"id"`
	Target string `json:"target,omitempty"` // the node attached at the reservation
}

// Bounds.
const (
	groupsMax             = 1 << 12
	groupVolumesMax       = 256
	snapshotsMax          = 1 << 16
	snapshotsPerVolumeMax = 1 << 10
	reasonBytesMax        = 256
)

type createGroupArgs struct {
	Name    string   `json:"name"`
	Volumes []string `json:"volumes"`
}

type deleteGroupArgs struct {
	Name string `json:"name"`
}

type reserveSnapshotArgs struct {
	Group   string    `json:"group"` // a group, or a volume's name
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

type endSnapshotArgs struct {
	ID     uint64        `json:"id"`
	State  SnapshotState `json:"state"` // sealed or failed
	Reason string        `json:"reason,omitempty"`
}

type deleteSnapshotArgs struct {
	ID uint64 `json:"id"`
}

const (
	opCreateGroup     op = "group.create"
	opDeleteGroup     op = "group.delete"
	opReserveSnapshot op = "snapshot.reserve"
	opEndSnapshot     op = "snapshot.end"
	opDeleteSnapshot  op = "snapshot.delete"
)

// groupOf returns the group a volume belongs to ("" for none).
func (s *state) groupOf(volume string) string {
	for name, g := range s.Groups {
		if slices.Contains(g.Volumes, volume) {
			return name
		}
	}
	return ""
}

func (s *state) createGroup(a *createGroupArgs) (outcome, error) {
	if err := validVolumeName(a.Name); err != nil {
		return outcome{}, fmt.Errorf("group: %w", err)
	}
	if _, ok := s.Groups[a.Name]; ok {
		return outcome{}, fmt.Errorf("group %q: %w", a.Name, ErrExists)
	}
	if _, ok := s.Volumes[a.Name]; ok {
		return outcome{}, fmt.Errorf("%w: group %q: a volume has that name (a volume is its own group)", ErrExists, a.Name)
	}
	if len(s.Groups) >= groupsMax {
		return outcome{}, fmt.Errorf("group %q: %d groups: %w", a.Name, len(s.Groups), ErrFull)
	}
	if len(a.Volumes) == 0 || len(a.Volumes) > groupVolumesMax {
		return outcome{}, fmt.Errorf("%w: group %q: %d volumes, want 1 to %d", ErrInvalid, a.Name, len(a.Volumes), groupVolumesMax)
	}
	vols := slices.Clone(a.Volumes)
	slices.Sort(vols)
	var epoch uint64
	for i, name := range vols {
		if i > 0 && vols[i-1] == name {
			return outcome{}, fmt.Errorf("%w: group %q lists volume %q twice", ErrInvalid, a.Name, name)
		}
		v, ok := s.Volumes[name]
		if !ok {
			return outcome{}, fmt.Errorf("group %q: volume %q: %w", a.Name, name, ErrNotFound)
		}
		if g := s.groupOf(name); g != "" {
			return outcome{}, fmt.Errorf("%w: group %q: volume %q is in group %q", ErrInvalid, a.Name, name, g)
		}
		epoch = max(epoch, v.Epoch)
	}
	for _, name := range vols {
		v := s.Volumes[name]
		v.Epoch = epoch
		s.Volumes[name] = v
	}
	if s.Groups == nil {
		s.Groups = map[string]Group{}
	}
	s.Groups[a.Name] = Group{Name: a.Name, Volumes: vols}
	return outcome{}, nil
}

// members returns the volumes of a group, or of a volume's own group.
func (s *state) members(group string) ([]string, error) {
	if g, ok := s.Groups[group]; ok {
		return g.Volumes, nil
	}
	if _, ok := s.Volumes[group]; ok {
		if g := s.groupOf(group); g != "" {
			return nil, fmt.Errorf("%w: volume %q is in group %q: snapshot the group", ErrInvalid, group, g)
		}
		return []string{group}, nil
	}
	return nil, fmt.Errorf("group or volume %q: %w", group, ErrNotFound)
}

func (s *state) reserveSnapshot(a *reserveSnapshotArgs) (outcome, error) {
	if err := validVolumeName(a.Name); err != nil {
		return outcome{}, fmt.Errorf("snapshot: %w", err)
	}
	vols, err := s.members(a.Group)
	if err != nil {
		return outcome{}, err
	}
	if len(s.Snapshots) >= snapshotsMax {
		return outcome{}, fmt.Errorf("snapshot %q: %d snapshots: %w", a.Name, len(s.Snapshots), ErrFull)
	}
	snap := Snapshot{ID: s.NextSnapshotID, Name: a.Name, Group: a.Group, State: SnapshotPending, Created: a.Created}
	if snap.ID == 0 {
		snap.ID = 1
	}
	for _, name := range vols {
		v := s.Volumes[name]
		n := 0
		for _, o := range s.Snapshots {
			if o.has(v.ID) {
				n++
				if o.Name == a.Name {
					return outcome{}, fmt.Errorf("snapshot %q of volume %q: %w", a.Name, name, ErrExists)
				}
			}
		}
		if n >= snapshotsPerVolumeMax {
			return outcome{}, fmt.Errorf("volume %q: %d snapshots: %w", name, n, ErrFull)
		}
		snap.Epoch = v.Epoch // equal across a group (createGroup)
		snap.Volumes = append(snap.Volumes, SnapshotVolume{Name: name, ID: v.ID, Target: v.AttachedTo})
	}
	for _, name := range vols {
		v := s.Volumes[name]
		v.Epoch++
		s.Volumes[name] = v
	}
	if s.Snapshots == nil {
		s.Snapshots = map[uint64]Snapshot{}
	}
	s.Snapshots[snap.ID] = snap
	s.NextSnapshotID = snap.ID + 1
	return outcome{Snapshot: snap}, nil
}

func (sn Snapshot) has(volID uint64) bool {
	return slices.ContainsFunc(sn.Volumes, func(v SnapshotVolume) bool { return v.ID == volID })
}

func (s *state) endSnapshot(a *endSnapshotArgs) (outcome, error) {
	sn, ok := s.Snapshots[a.ID]
	if !ok {
		return outcome{}, fmt.Errorf("snapshot %d: %w", a.ID, ErrNotFound)
	}
	if a.State != SnapshotSealed && a.State != SnapshotFailed {
		return outcome{}, fmt.Errorf("%w: snapshot %d: end state %.20q", ErrInvalid, a.ID, a.State)
	}
	if len(a.Reason) > reasonBytesMax {
		return outcome{}, fmt.Errorf("%w: snapshot %d: reason of %d bytes", ErrInvalid, a.ID, len(a.Reason))
	}
	if sn.State != SnapshotPending {
		return outcome{}, fmt.Errorf("%w: snapshot %d is %s, not pending", ErrInvalid, a.ID, sn.State)
	}
	sn.State, sn.Reason = a.State, a.Reason
	s.Snapshots[a.ID] = sn
	return outcome{Snapshot: sn}, nil
}

// dropSnapshotsOf takes a deleted volume out of its snapshots (a
// snapshot left with no volume goes) and out of its group.
func (s *state) dropSnapshotsOf(volID uint64, name string) {
	for id, sn := range s.Snapshots {
		if !sn.has(volID) {
			continue
		}
		sn.Volumes = slices.DeleteFunc(slices.Clone(sn.Volumes), func(v SnapshotVolume) bool { return v.ID == volID })
		if len(sn.Volumes) == 0 {
			delete(s.Snapshots, id)
		} else {
			s.Snapshots[id] = sn
		}
	}
	for gname, g := range s.Groups {
		if i := slices.Index(g.Volumes, name); i >= 0 {
			g.Volumes = slices.Delete(slices.Clone(g.Volumes), i, i+1)
			if len(g.Volumes) == 0 {
				delete(s.Groups, gname)
			} else {
				s.Groups[gname] = g
			}
		}
	}
}

// checkSnapshots verifies the invariants of groups and snapshots.
func (s *state) checkSnapshots() error {
	in := map[string]string{}
	for name, g := range s.Groups {
		if g.Name != name || len(g.Volumes) == 0 || !slices.IsSorted(g.Volumes) {
			return fmt.Errorf("group %q: malformed %+v", name, g)
		}
		var epoch uint64
		for i, v := range g.Volumes {
			vol, ok := s.Volumes[v]
			if !ok {
				return fmt.Errorf("group %q: volume %q does not exist", name, v)
			}
			if other, ok := in[v]; ok {
				return fmt.Errorf("volume %q in groups %q and %q", v, other, name)
			}
			in[v] = name
			if i > 0 && vol.Epoch != epoch {
				return fmt.Errorf("group %q: volumes at epochs %d and %d", name, epoch, vol.Epoch)
			}
			epoch = vol.Epoch
		}
	}
	for id, sn := range s.Snapshots {
		if sn.ID != id || id >= s.NextSnapshotID {
			return fmt.Errorf("snapshot %d: id %d, next %d", id, sn.ID, s.NextSnapshotID)
		}
		for _, sv := range sn.Volumes {
			v, ok := s.Volumes[sv.Name]
			if !ok || v.ID != sv.ID {
				return fmt.Errorf("snapshot %d: volume %q (%d) does not exist", id, sv.Name, sv.ID)
			}
			if v.Epoch <= sn.Epoch {
				return fmt.Errorf("snapshot %d at epoch %d: volume %q at epoch %d", id, sn.Epoch, sv.Name, v.Epoch)
			}
		}
	}
	return nil
}

// RetainedEpochs returns, per volume id, the epochs of its pending and
// sealed snapshots, the base epochs of its forks and the epochs its
// rollbacks returned to, ascending and without repeats: what storage
// nodes must keep readable.
func (c *Catalog) RetainedEpochs() map[uint64][]uint64 {
	return c.fsm.retained()
}

// CreateGroup makes a consistency group of volumes, which are then
// snapshotted together. A volume is in at most one group.
func (c *Catalog) CreateGroup(ctx context.Context, name string, volumes []string) error {
	_, err := c.apply(ctx, opCreateGroup, &createGroupArgs{Name: name, Volumes: volumes})
	return err
}

// DeleteGroup removes a group; its volumes and snapshots stay.
func (c *Catalog) DeleteGroup(ctx context.Context, name string) error {
	_, err := c.apply(ctx, opDeleteGroup, &deleteGroupArgs{Name: name})
	return err
}

// ReserveSnapshot starts a snapshot of a group (or of a volume in no
// group): it raises the group's epoch and records a pending snapshot of
// the epoch before.
func (c *Catalog) ReserveSnapshot(ctx context.Context, group, name string) (Snapshot, error) {
	out, err := c.apply(ctx, opReserveSnapshot, &reserveSnapshotArgs{Group: group, Name: name, Created: time.Now().UTC()})
	return out.Snapshot, err
}

// EndSnapshot seals or fails a pending snapshot.
func (c *Catalog) EndSnapshot(ctx context.Context, id uint64, st SnapshotState, reason string) (Snapshot, error) {
	if len(reason) > reasonBytesMax {
		reason = reason[:reasonBytesMax]
	}
	out, err := c.apply(ctx, opEndSnapshot, &endSnapshotArgs{ID: id, State: st, Reason: reason})
	return out.Snapshot, err
}

// DeleteSnapshot deletes a snapshot record; its space returns as the
// storage nodes' GC runs.
func (c *Catalog) DeleteSnapshot(ctx context.Context, id uint64) error {
	_, err := c.apply(ctx, opDeleteSnapshot, &deleteSnapshotArgs{ID: id})
	return err
}

// Groups returns the local replica's groups sorted by name.
func (c *Catalog) Groups() []Group { return c.fsm.groups() }

// Snapshots returns the local replica's snapshots ordered by id.
func (c *Catalog) Snapshots() []Snapshot { return c.fsm.snapshots() }

func (f *fsm) groups() []Group {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Group, 0, len(f.mu.st.Groups))
	for _, g := range f.mu.st.Groups {
		g.Volumes = slices.Clone(g.Volumes)
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (f *fsm) snapshots() []Snapshot {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Snapshot, 0, len(f.mu.st.Snapshots))
	for _, sn := range f.mu.st.Snapshots {
		sn.Volumes = slices.Clone(sn.Volumes)
		out = append(out, sn)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (f *fsm) retained() map[uint64][]uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := map[uint64][]uint64{}
	for _, sn := range f.mu.st.Snapshots {
		if sn.State == SnapshotFailed {
			continue
		}
		for _, v := range sn.Volumes {
			out[v.ID] = append(out[v.ID], sn.Epoch)
		}
	}
	f.mu.st.retainedLineage(out)
	sortedUnique(out)
	return out
}
