package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// Forks, rollbacks and flattens in the catalog. All three are O(1) catalog
// changes whatever the volume's size; the storage nodes do the rest, each
// in its own store, from the volume's Lineage:
//
//   - A fork is a new volume whose reads of blocks it never wrote fall
//     through to (Parent, ParentEpoch): a sealed snapshot of its parent.
//     It takes its parent's placement (key, set, chunk size, replicas), so
//     that every chunk of the fork lives on the nodes holding the parent's
//     chunk and the fall-through stays inside one node's store.
//   - A rollback appends {From: the snapshot's epoch, To: the group's
//     epoch} and raises the group's epoch: reads above To do not see the
//     volume's versions stamped in (From, To], so the live volume reads as
//     the snapshot, and new writes, stamped above To, show again. Earlier
//     snapshots read at their own epochs, unchanged.
//   - A flatten copies, on each storage node holding the volume, the
//     blocks that fall through into the volume; once every holder has
//     reported done, the catalog clears the parent and the parent's
//     snapshot may be deleted.
//
// A lineage change must reach every holder's store before a target serves
// the volume with it: Lineage.Version counts changes, each holder reports
// the version its store holds durably (ReportLineage), and LineageReady
// tells a target when it may open the volume.

// ErrBusy: the change conflicts with the volume's use: it is attached, a
// flatten is running, or forks depend on it. The error text says which.
var ErrBusy = errors.New("cluster: volume busy")

// Lineage is where a volume's reads fall through to and which of its own
// versions rollbacks hide. The zero value is a volume with neither.
type Lineage struct {
	// Parent is the id of the volume reads fall through to, at
	// ParentEpoch; 0 for a volume that is not a fork. ParentName and
	// ParentSnapshot (the snapshot's id) name what was forked.
	Parent         uint64 `json:"parent,omitempty"`
	ParentName     string `json:"parent_name,omitempty"`
	ParentSnapshot uint64 `json:"parent_snapshot,omitempty"`
	ParentEpoch    uint64 `json:"parent_epoch,omitempty"`
	// Rollbacks in the order they were made, each To above the last's.
	Rollbacks []Rollback `json:"rollbacks,omitempty"`
	// Version counts the changes of the fields above; 0: never had one.
	Version uint64 `json:"version,omitempty"`
	// Applied is, per storage node holding the volume, the Version its
	// store holds durably; a node not listed holds none.
	Applied map[string]uint64 `json:"applied,omitempty"`
}

// Rollback hides from reads above To the volume's own versions stamped in
// (From, To].
type Rollback struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
}

func (l Lineage) clone() Lineage {
	l.Rollbacks = slices.Clone(l.Rollbacks)
	l.Applied = maps.Clone(l.Applied)
	return l
}

// Flatten is the state of a flatten: requested, then reported on by each
// storage node holding the volume, complete once all have finished.
type Flatten struct {
	Requested time.Time `json:"requested"`
	// Completed is set when every holder finished; the parent is cleared
	// at the same change.
	Completed time.Time `json:"completed,omitzero"`
	// Nodes are the holders' last reports, by node name.
	Nodes map[string]FlattenNode `json:"nodes,omitempty"`
}

// FlattenNode is one storage node's report on a flatten.
type FlattenNode struct {
	Done     uint64    `json:"done"`  // blocks copied or found present
	Total    uint64    `json:"total"` // blocks to visit on the node
	Finished bool      `json:"finished,omitempty"`
	Updated  time.Time `json:"updated"` // the reporter's clock
}

func (f Flatten) clone() Flatten {
	f.Nodes = maps.Clone(f.Nodes)
	return f
}

// Progress sums the holders' reports: blocks done and to do (so far
// reported), and whether the flatten completed.
func (f Flatten) Progress() (done, total uint64, complete bool) {
	for _, n := range f.Nodes {
		done += n.Done
		total += n.Total
	}
	return done, total, !f.Completed.IsZero()
}

// Holders returns the storage nodes holding the volume's chunks, sorted:
// its placement set, or for a volume from before placement the node it is
// attached to (none when unattached).
func (v Volume) Holders() []string {
	if len(v.Placement) == 0 {
		if v.AttachedTo == "" {
			return nil
		}
		return []string{v.AttachedTo}
	}
	out := make([]string, len(v.Placement))
	for i, m := range v.Placement {
		out[i] = m.Node
	}
	return out
}

// LineageReady reports whether every holder's store holds the volume's
// current lineage, and the holders that do not yet.
func (v Volume) LineageReady() (bool, []string) {
	if v.Lineage.Version == 0 {
		return true, nil
	}
	var behind []string
	for _, h := range v.Holders() {
		if v.Lineage.Applied[h] < v.Lineage.Version {
			behind = append(behind, h)
		}
	}
	return len(behind) == 0, behind
}

// Bounds.
const (
	// rollbacksMax bounds a volume's rollbacks.
	rollbacksMax = 1 << 10
	// lineageDepthMax bounds a chain of forks of forks: a read falls
	// through at most this many parents.
	lineageDepthMax = 16
)

const (
	opForkVolume     op = "volume.fork"
	opRollbackVolume op = "volume.rollback"
	opFlattenVolume  op = "volume.flatten"
	opFlattenReport  op = "volume.flatten.report"
	opLineageApplied op = "volume.lineage.applied"
)

type forkVolumeArgs struct {
	Volume   string    `json:"volume"`   // the parent
	Snapshot string    `json:"snapshot"` // a sealed snapshot of it, by name
	Name     string    `json:"name"`     // the fork
	Created  time.Time `json:"created"`
	// Target, if set, attaches the fork to that node (generation 1).
	Target string `json:"target,omitempty"`
}

type rollbackVolumeArgs struct {
	Name     string `json:"name"`
	Snapshot string `json:"snapshot"`
	// Force rolls back an attached volume: its generation is bumped, so
	// the attached target is fenced and serves it anew.
	Force bool `json:"force,omitempty"`
}

type flattenVolumeArgs struct {
	Name      string    `json:"name"`
	Requested time.Time `json:"requested"`
}

type flattenReportArgs struct {
	Name     string    `json:"name"`
	ID       uint64    `json:"id"` // the volume's, so a report never lands on a namesake
	Node     string    `json:"node"`
	Done     uint64    `json:"done"`
	Total    uint64    `json:"total"`
	Finished bool      `json:"finished,omitempty"`
	Updated  time.Time `json:"updated"`
}

type lineageAppliedArgs struct {
	Name    string `json:"name"`
	ID      uint64 `json:"id"`
	Node    string `json:"node"`
	Version uint64 `json:"version"`
}

// volumeByID returns the volume of an id.
func (s *state) volumeByID(id uint64) (Volume, bool) {
	for _, v := range s.Volumes {
		if v.ID == id {
			return v, true
		}
	}
	return Volume{}, false
}

// snapshotOf finds the snapshot of a volume by name.
func (s *state) snapshotOf(v Volume, name string) (Snapshot, bool) {
	for _, sn := range s.Snapshots {
		if sn.Name == name && sn.has(v.ID) {
			return sn, true
		}
	}
	return Snapshot{}, false
}

// depth is the number of parents a read of v may fall through (counted
// to lineageDepthMax+1 at most).
func (s *state) depth(v Volume) int {
	return depthOf(v, s.volumeByID)
}

func depthOf(v Volume, byID func(uint64) (Volume, bool)) int {
	d := 0
	for v.Lineage.Parent != 0 && d <= lineageDepthMax {
		p, ok := byID(v.Lineage.Parent)
		if !ok {
			break
		}
		v = p
		d++
	}
	return d
}

// forks returns the names of the volumes whose reads fall through to the
// volume of id (any snapshot when snap is 0, else that snapshot), sorted.
func (s *state) forks(id, snap uint64) []string {
	var out []string
	for _, v := range s.Volumes {
		if v.Lineage.Parent == id && (snap == 0 || v.Lineage.ParentSnapshot == snap) {
			out = append(out, v.Name)
		}
	}
	slices.Sort(out)
	return out
}

func (s *state) forkVolume(a *forkVolumeArgs) (Volume, error) {
	if err := validVolumeName(a.Name); err != nil {
		return Volume{}, fmt.Errorf("fork: %w", err)
	}
	p, ok := s.Volumes[a.Volume]
	if !ok {
		return Volume{}, fmt.Errorf("fork %q: volume %q: %w", a.Name, a.Volume, ErrNotFound)
	}
	sn, ok := s.snapshotOf(p, a.Snapshot)
	if !ok {
		return Volume{}, fmt.Errorf("fork %q: snapshot %q of volume %q: %w", a.Name, a.Snapshot, a.Volume, ErrNotFound)
	}
	if sn.State != SnapshotSealed {
		return Volume{}, fmt.Errorf("%w: fork %q: snapshot %q of volume %q is %s, not sealed", ErrInvalid, a.Name, a.Snapshot, a.Volume, sn.State)
	}
	if _, ok := s.Volumes[a.Name]; ok {
		return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrExists)
	}
	if _, ok := s.Groups[a.Name]; ok {
		return Volume{}, fmt.Errorf("%w: fork %q: a group has that name", ErrExists, a.Name)
	}
	if len(s.Volumes) >= volumesMax {
		return Volume{}, fmt.Errorf("volume %q: %d volumes: %w", a.Name, len(s.Volumes), ErrFull)
	}
	if d := s.depth(p); d+1 > lineageDepthMax {
		return Volume{}, fmt.Errorf("%w: fork %q: volume %q is a fork %d deep, at most %d", ErrInvalid, a.Name, a.Volume, d, lineageDepthMax)
	}
	if a.Target != "" {
		if err := validNode(a.Target); err != nil {
			return Volume{}, fmt.Errorf("fork %q: target: %w", a.Name, err)
		}
	}
	v := Volume{
		ID:               s.NextID,
		Name:             a.Name,
		Size:             p.Size,
		BlockSize:        p.BlockSize,
		ChunkSize:        p.ChunkSize,
		Replicas:         p.Replicas,
		Epoch:            1,
		Created:          a.Created,
		LogicalBlockSize: p.LogicalBlockSize,
		Placement:        slices.Clone(p.Placement),
		// The parent's stale replicas miss parent data the fork reads
		// through to; a replica taken out of the parent later missed only
		// writes above the sealed snapshot's epoch, which the fork never
		// reads.
		Stale:        slices.Clone(p.Stale),
		PlacementKey: p.placementKey(),
		Lineage: Lineage{
			Parent: p.ID, ParentName: p.Name, ParentSnapshot: sn.ID, ParentEpoch: sn.Epoch,
			Version: 1,
		},
	}
	if len(p.Placement) == 0 {
		// A volume from before placement lives on the node it is attached
		// to: so does its fork, wherever it is attached.
		if p.AttachedTo == "" {
			return Volume{}, fmt.Errorf("%w: fork %q: volume %q has no placement and is not attached", ErrInvalid, a.Name, a.Volume)
		}
		if a.Target != "" && a.Target != p.AttachedTo {
			return Volume{}, fmt.Errorf("%w: fork %q: volume %q lives on %s alone, not %s", ErrInvalid, a.Name, a.Volume, p.AttachedTo, a.Target)
		}
		v.AttachedTo, v.Generation = p.AttachedTo, 1
	}
	if a.Target != "" {
		v.AttachedTo, v.Generation = a.Target, 1
	}
	s.NextID++
	s.Volumes[v.Name] = v
	return v, nil
}

func (s *state) rollbackVolume(a *rollbackVolumeArgs) (Volume, error) {
	v, ok := s.Volumes[a.Name]
	if !ok {
		return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
	}
	sn, ok := s.snapshotOf(v, a.Snapshot)
	if !ok {
		return Volume{}, fmt.Errorf("rollback %q: snapshot %q: %w", a.Name, a.Snapshot, ErrNotFound)
	}
	if sn.State != SnapshotSealed {
		return Volume{}, fmt.Errorf("%w: rollback %q: snapshot %q is %s, not sealed", ErrInvalid, a.Name, a.Snapshot, sn.State)
	}
	if v.AttachedTo != "" && !a.Force {
		return Volume{}, fmt.Errorf("%w: rollback %q: attached to %s; detach it or force (which fences that target and serves the volume anew)", ErrBusy, a.Name, v.AttachedTo)
	}
	if v.Flatten != nil && v.Flatten.Completed.IsZero() {
		return Volume{}, fmt.Errorf("%w: rollback %q: a flatten is running", ErrBusy, a.Name)
	}
	if len(v.Lineage.Rollbacks) >= rollbacksMax {
		return Volume{}, fmt.Errorf("rollback %q: %d rollbacks: %w", a.Name, len(v.Lineage.Rollbacks), ErrFull)
	}
	vols, err := s.groupVolumes(a.Name)
	if err != nil {
		return Volume{}, err
	}
	v.Lineage = v.Lineage.clone()
	v.Lineage.Rollbacks = append(v.Lineage.Rollbacks, Rollback{From: sn.Epoch, To: v.Epoch})
	v.Lineage.Version++
	if v.AttachedTo != "" {
		v.Generation++ // fences the attached target, which serves the volume anew
	}
	s.Volumes[a.Name] = v
	// New writes are stamped above To: the whole group moves on (raising
	// a group's epoch is always safe).
	for _, name := range vols {
		gv := s.Volumes[name]
		gv.Epoch++
		s.Volumes[name] = gv
	}
	return s.Volumes[a.Name], nil
}

// groupVolumes returns the volumes sharing the epoch of a volume: its
// group's, or itself.
func (s *state) groupVolumes(name string) ([]string, error) {
	if g := s.groupOf(name); g != "" {
		return s.members(g)
	}
	return []string{name}, nil
}

func (s *state) flattenVolume(a *flattenVolumeArgs) (Volume, error) {
	v, ok := s.Volumes[a.Name]
	if !ok {
		return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
	}
	if v.Flatten != nil && v.Flatten.Completed.IsZero() {
		return v, nil // running: the request is idempotent
	}
	if v.Lineage.Parent == 0 {
		return Volume{}, fmt.Errorf("%w: flatten %q: not a fork (or flattened already)", ErrInvalid, a.Name)
	}
	if len(v.Holders()) == 0 {
		return Volume{}, fmt.Errorf("%w: flatten %q: no placement and not attached: no node holds it", ErrInvalid, a.Name)
	}
	v.Flatten = &Flatten{Requested: a.Requested}
	s.Volumes[a.Name] = v
	return v, nil
}

func (s *state) flattenReport(a *flattenReportArgs) (Volume, error) {
	v, err := s.holderReport(a.Name, a.ID, a.Node)
	if err != nil {
		return Volume{}, err
	}
	if v.Flatten == nil || !v.Flatten.Completed.IsZero() {
		return Volume{}, fmt.Errorf("%w: flatten report on %q: no flatten running", ErrInvalid, a.Name)
	}
	if a.Done > a.Total {
		return Volume{}, fmt.Errorf("%w: flatten report on %q from %s: %d of %d blocks", ErrInvalid, a.Name, a.Node, a.Done, a.Total)
	}
	f := v.Flatten.clone()
	if f.Nodes == nil {
		f.Nodes = map[string]FlattenNode{}
	}
	f.Nodes[a.Node] = FlattenNode{Done: a.Done, Total: a.Total, Finished: a.Finished, Updated: a.Updated}
	all := true
	for _, h := range v.Holders() {
		all = all && f.Nodes[h].Finished
	}
	if all {
		// Every holder copied what fell through: the parent is no longer
		// read, and its snapshot may go.
		f.Completed = a.Updated
		if f.Completed.IsZero() {
			f.Completed = f.Requested
		}
		v.Lineage = v.Lineage.clone()
		v.Lineage.Parent, v.Lineage.ParentName, v.Lineage.ParentSnapshot, v.Lineage.ParentEpoch = 0, "", 0, 0
		v.Lineage.Version++
	}
	v.Flatten = &f
	s.Volumes[a.Name] = v
	return v, nil
}

// holderReport checks a report from a storage node on a volume it holds.
func (s *state) holderReport(name string, id uint64, node string) (Volume, error) {
	v, ok := s.Volumes[name]
	if !ok || v.ID != id {
		return Volume{}, fmt.Errorf("volume %q (id %d): %w", name, id, ErrNotFound)
	}
	if err := validNode(node); err != nil {
		return Volume{}, err
	}
	if !slices.Contains(v.Holders(), node) {
		return Volume{}, fmt.Errorf("%w: volume %q: node %s holds none of it", ErrInvalid, name, node)
	}
	return v, nil
}

func (s *state) lineageApplied(a *lineageAppliedArgs) (Volume, error) {
	v, err := s.holderReport(a.Name, a.ID, a.Node)
	if err != nil {
		return Volume{}, err
	}
	if a.Version > v.Lineage.Version {
		return Volume{}, fmt.Errorf("%w: volume %q: node %s applied lineage version %d, newer than %d", ErrInvalid, a.Name, a.Node, a.Version, v.Lineage.Version)
	}
	if a.Version <= v.Lineage.Applied[a.Node] {
		return v, nil
	}
	v.Lineage = v.Lineage.clone()
	if v.Lineage.Applied == nil {
		v.Lineage.Applied = map[string]uint64{}
	}
	v.Lineage.Applied[a.Node] = a.Version
	s.Volumes[a.Name] = v
	return v, nil
}

// refuseDependents refuses the deletion of a volume that forks read
// through, naming them.
func (s *state) refuseDependents(v Volume) error {
	if f := s.forks(v.ID, 0); len(f) > 0 {
		return fmt.Errorf("%w: volume %q has forks %s: flatten or delete them first", ErrBusy, v.Name, strings.Join(f, ", "))
	}
	return nil
}

// refuseSnapshotDependents refuses the deletion of a snapshot that forks
// read through, naming them.
func (s *state) refuseSnapshotDependents(sn Snapshot) error {
	var f []string
	for _, sv := range sn.Volumes {
		f = append(f, s.forks(sv.ID, sn.ID)...)
	}
	if len(f) > 0 {
		slices.Sort(f)
		return fmt.Errorf("%w: snapshot %q has forks %s: flatten or delete them first", ErrBusy, sn.Name, strings.Join(f, ", "))
	}
	return nil
}

// checkLineage verifies the invariants of forks, rollbacks and flattens.
func (s *state) checkLineage() error {
	ids := make(map[uint64]Volume, len(s.Volumes))
	for _, v := range s.Volumes {
		ids[v.ID] = v
	}
	byID := func(id uint64) (Volume, bool) { v, ok := ids[id]; return v, ok }
	for name, v := range s.Volumes {
		l := v.Lineage
		if l.Parent != 0 {
			p, ok := byID(l.Parent)
			if !ok || p.Name != l.ParentName {
				return fmt.Errorf("volume %q: parent %q (%d) does not exist", name, l.ParentName, l.Parent)
			}
			sn, ok := s.Snapshots[l.ParentSnapshot]
			if !ok || !sn.has(p.ID) || sn.Epoch != l.ParentEpoch {
				return fmt.Errorf("volume %q: parent snapshot %d at epoch %d does not exist", name, l.ParentSnapshot, l.ParentEpoch)
			}
			if p.placementKey() != v.placementKey() || p.ChunkSize != v.ChunkSize || p.Replicas != v.Replicas {
				return fmt.Errorf("volume %q: placement differs from its parent %q", name, p.Name)
			}
			if d := depthOf(v, byID); d > lineageDepthMax {
				return fmt.Errorf("volume %q: forks %d deep", name, d)
			}
		} else if l.ParentName != "" || l.ParentSnapshot != 0 || l.ParentEpoch != 0 {
			return fmt.Errorf("volume %q: parent fields without a parent", name)
		}
		if len(l.Rollbacks) > rollbacksMax {
			return fmt.Errorf("volume %q: %d rollbacks", name, len(l.Rollbacks))
		}
		var last uint64
		for _, r := range l.Rollbacks {
			if r.From >= r.To || r.To >= v.Epoch || r.To <= last {
				return fmt.Errorf("volume %q: rollback %+v at epoch %d after %d", name, r, v.Epoch, last)
			}
			last = r.To
		}
		if (l.Version == 0) != (l.Parent == 0 && len(l.Rollbacks) == 0 && v.Flatten == nil) {
			return fmt.Errorf("volume %q: lineage version %d", name, l.Version)
		}
		for n, ver := range l.Applied {
			if ver > l.Version || validNode(n) != nil {
				return fmt.Errorf("volume %q: node %q applied version %d of %d", name, n, ver, l.Version)
			}
		}
		if f := v.Flatten; f != nil {
			if f.Completed.IsZero() == (l.Parent == 0) {
				return fmt.Errorf("volume %q: flatten completed %v with parent %d", name, f.Completed, l.Parent)
			}
			if len(f.Nodes) > nodesMax {
				return fmt.Errorf("volume %q: flatten reports of %d nodes", name, len(f.Nodes))
			}
			for n, r := range f.Nodes {
				if r.Done > r.Total || validNode(n) != nil {
					return fmt.Errorf("volume %q: flatten report of %q: %+v", name, n, r)
				}
			}
		}
	}
	return nil
}

// Fork creates the volume newName, a writable clone of the sealed snapshot
// snapName of snapVolume: reads of blocks it never wrote fall through to
// the snapshot. It takes its parent's size, geometry and placement and is
// in no group. Target, if set, attaches it there. O(1) whatever the size.
func (c *Catalog) Fork(ctx context.Context, snapVolume, snapName, newName, target string) (Volume, error) {
	if err := validVolumeName(newName); err != nil {
		return Volume{}, fmt.Errorf("cluster: fork: %w", err)
	}
	out, err := c.apply(ctx, opForkVolume, &forkVolumeArgs{Volume: snapVolume, Snapshot: snapName, Name: newName, Created: time.Now().UTC(), Target: target})
	return out.Volume, err
}

// Rollback makes the live volume read as its sealed snapshot snapName,
// O(1): its own versions written since are hidden, snapshots taken since
// stay readable, and the group's epoch rises so that new writes show. An
// attached volume is refused with ErrBusy unless force, which bumps its
// generation: the attached target is fenced and serves it anew.
func (c *Catalog) Rollback(ctx context.Context, volume, snapName string, force bool) (Volume, error) {
	out, err := c.apply(ctx, opRollbackVolume, &rollbackVolumeArgs{Name: volume, Snapshot: snapName, Force: force})
	return out.Volume, err
}

// Flatten asks the storage nodes holding a fork to copy into it what its
// reads fall through to; it returns at once (see Volume.Flatten). A
// running flatten's request changes nothing.
func (c *Catalog) Flatten(ctx context.Context, volume string) (Volume, error) {
	out, err := c.apply(ctx, opFlattenVolume, &flattenVolumeArgs{Name: volume, Requested: time.Now().UTC()})
	return out.Volume, err
}

// ReportFlatten records a storage node's progress on a flatten of the
// volume of id; the report that makes every holder finished completes
// the flatten and clears the parent.
func (c *Catalog) ReportFlatten(ctx context.Context, name string, id uint64, node string, done, total uint64, finished bool) (Volume, error) {
	out, err := c.apply(ctx, opFlattenReport, &flattenReportArgs{Name: name, ID: id, Node: node, Done: done, Total: total, Finished: finished, Updated: time.Now().UTC()})
	return out.Volume, err
}

// ReportLineage records that node's store holds version of the lineage of
// the volume of id durably.
func (c *Catalog) ReportLineage(ctx context.Context, name string, id uint64, node string, version uint64) (Volume, error) {
	out, err := c.apply(ctx, opLineageApplied, &lineageAppliedArgs{Name: name, ID: id, Node: node, Version: version})
	return out.Volume, err
}

// retainedLineage adds to out the epochs lineages keep readable: each
// fork's base epoch on its parent, and each rollback's From on the
// volume rolled back (its live reads see the versions at From).
func (s *state) retainedLineage(out map[uint64][]uint64) {
	for _, v := range s.Volumes {
		if v.Lineage.Parent != 0 {
			out[v.Lineage.Parent] = append(out[v.Lineage.Parent], v.Lineage.ParentEpoch)
		}
		for _, r := range v.Lineage.Rollbacks {
			out[v.ID] = append(out[v.ID], r.From)
		}
	}
}

// sortedUnique sorts each list of out and drops repeats.
func sortedUnique(out map[uint64][]uint64) {
	for id, es := range out {
		sort.Slice(es, func(i, j int) bool { return es[i] < es[j] })
		out[id] = slices.Compact(es)
	}
}
