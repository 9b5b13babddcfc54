package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"
)

// Bounds on the catalog's contents.
const (
	volumesMax      = 1 << 16   // volumes in the catalog
	commandBytesMax = 128 << 10 // one encoded command: a reservation blob, base64
	// ReservationBytesMax bounds the opaque reservation state of a volume.
	ReservationBytesMax = 64 << 10
	snapshotBytesMax    = 1 << 30 // one encoded snapshot
	snapshotVersionV1   = 1
)

// Volume is the catalog's record of one logical volume. Values are copies:
// changing one changes nothing in the catalog.
type Volume struct {
	ID        uint64 `json:"id"`   // unique, never reused, allocated by the FSM
	Name      string `json:"name"` // validVolumeName
	Size      int64  `json:"size"` // bytes, a multiple of BlockSize
	BlockSize int    `json:"block_size"`
	ChunkSize int64  `json:"chunk_size"` // bytes per chunk, the unit of placement
	Replicas  int    `json:"replicas"`
	// Epoch is the current write epoch of the volume's group; it starts at
	// 1 and only grows.
	Epoch uint64 `json:"epoch"`
	// Generation is the attachment fencing generation: 0 until the first
	// Attach, then bumped by each Attach.
	Generation uint64 `json:"generation"`
	// AttachedTo is the node holding the attachment of Generation; empty
	// until the first Attach.
	AttachedTo string `json:"attached_to,omitempty"`
	// Created is the leader's clock when the volume was created, carried in
	// the command so that every replica records the same value.
	Created time.Time `json:"created"`
	// LogicalBlockSize is the block size SCSI initiators see: 512 (on 4096
	// physical) or 4096 native. 0, in records from before the field, is 512.
	LogicalBlockSize int `json:"logical_block_size,omitempty"`
	// Placement is the volume's placement set: the storage nodes in
	// service when it was created, sorted by name. Chunk c's replicas are
	// NewPlacer(v).Replicas(c). Empty in records from before placement:
	// such a volume lives on the node it is attached to.
	Placement []Member `json:"placement,omitempty"`
	// Stale are the placement members taken out of the volume after they
	// failed writes the others completed (sorted; see opExcludeReplica):
	// they miss data, and no target reads from or writes to them.
	Stale []string `json:"stale,omitempty"`
	// PlacementKey is what placement hashes instead of ID: 0 means ID. A
	// fork takes its parent's key, so that its chunks land on its parent's
	// nodes and reads fall through inside each node's store.
	PlacementKey uint64 `json:"placement_key,omitempty"`
	// Lineage says where reads of blocks this volume never wrote fall
	// through to, and which of its own versions rollbacks hide (see
	// lineage.go). Zero: none.
	Lineage Lineage `json:"lineage,omitzero"`
	// Flatten is the state of a flatten of this fork; nil when none was
	// requested.
	Flatten *Flatten `json:"flatten,omitempty"`
}

// placementKey is the key NewPlacer hashes.
func (v Volume) placementKey() uint64 {
	if v.PlacementKey != 0 {
		return v.PlacementKey
	}
	return v.ID
}

// clone returns a copy of v that shares no slice or map with it.
func (v Volume) clone() Volume {
	v.Placement = slices.Clone(v.Placement)
	v.Stale = slices.Clone(v.Stale)
	v.Lineage = v.Lineage.clone()
	if v.Flatten != nil {
		f := v.Flatten.clone()
		v.Flatten = &f
	}
	return v
}

// SCSIBlockSize returns the logical block size iSCSI presents.
func (v Volume) SCSIBlockSize() int {
	if v.LogicalBlockSize == 0 {
		return 512
	}
	return v.LogicalBlockSize
}

// state is the replicated catalog. Only fsm.Apply and fsm.Restore change it;
// its methods are pure (no clock, no I/O) so that every replica fed the same
// commands reaches the same state. Later issues add groups, snapshots and
// placement beside Volumes; a new field must be added to check and given a
// zero value that means "none".
type state struct {
	Volumes map[string]Volume `json:"volumes"` // by name
	NextID  uint64            `json:"next_id"` // ID of the next created volume; >= 1
	// Reservations holds the opaque SCSI reservation state of volumes, by
	// name: only volumes that have one, never empty. nil means none.
	Reservations map[string][]byte `json:"reservations,omitempty"`
	// Nodes are the registered storage nodes, by name; nil means none.
	Nodes map[string]Node `json:"nodes,omitempty"`
	// Groups are the consistency groups by name, Snapshots the snapshots
	// by id; nil means none. NextSnapshotID is the id of the next.
	Groups         map[string]Group    `json:"groups,omitempty"`
	Snapshots      map[uint64]Snapshot `json:"snapshots,omitempty"`
	NextSnapshotID uint64              `json:"next_snapshot_id,omitempty"`
}

func newState() state { return state{Volumes: map[string]Volume{}, NextID: 1} }

// outcome is what a command did: the volume or node it affected, as it is
// after the command. Ops that affect neither leave it zero.
type outcome struct {
	Volume   Volume
	Node     Node
	Snapshot Snapshot
}

// Commands. The op names are part of the replicated log's format: never
// rename one, only add.
type op string

const (
	opCreateVolume op = "volume.create"
	opDeleteVolume op = "volume.delete"
	opResizeVolume op = "volume.resize"
	opAttach       op = "volume.attach"
	// opSetReservations replaces a volume's reservation state.
	opSetReservations op = "volume.reservations.set"
	// opRegisterNode adds a storage node (in service) or updates its zone
	// and address.
	opRegisterNode op = "node.register"
	// opSetNodeState changes a node's service state.
	opSetNodeState op = "node.state"
	// opNodeUsage records a node's capacity and used bytes.
	opNodeUsage op = "node.usage"
)

// command is the envelope of every log entry the catalog writes.
type command struct {
	Op   op              `json:"op"`
	Args json.RawMessage `json:"args"`
}

type createVolumeArgs struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Replicas 0 is the default: 3 with at least 3 storage nodes in
	// service, else 1.
	Replicas         int       `json:"replicas"`
	Created          time.Time `json:"created"`
	LogicalBlockSize int       `json:"logical_block_size,omitempty"`
	// ChunkSize 0 is chunkSizeDefault.
	ChunkSize int64 `json:"chunk_size,omitempty"`
	// Target, if set, attaches the new volume to that node (generation 1).
	Target string `json:"target,omitempty"`
}

type registerNodeArgs struct {
	Name          string `json:"name"`
	Zone          string `json:"zone,omitempty"`
	Addr          string `json:"addr,omitempty"`
	CapacityBytes int64  `json:"capacity_bytes,omitempty"`
}

type setNodeStateArgs struct {
	Name  string    `json:"name"`
	State NodeState `json:"state"`
}

type nodeUsageArgs struct {
	Name          string `json:"name"`
	CapacityBytes int64  `json:"capacity_bytes"`
	UsedBytes     int64  `json:"used_bytes"`
}

type deleteVolumeArgs struct {
	Name string `json:"name"`
}

type resizeVolumeArgs struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

type setReservationsArgs struct {
	Name string `json:"name"`
	// State is opaque, at most ReservationBytesMax bytes; empty removes it.
	State []byte `json:"state"`
}

type attachArgs struct {
	Name string `json:"name"`
	Node string `json:"node"`
}

// encodeCommand is the inverse of decodeCommand.
func encodeCommand(o op, args any) ([]byte, error) {
	a, err := json.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", o, err)
	}
	b, err := json.Marshal(command{Op: o, Args: a})
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", o, err)
	}
	if len(b) > commandBytesMax {
		return nil, fmt.Errorf("%w: %s command of %d bytes exceeds %d", ErrInvalid, o, len(b), commandBytesMax)
	}
	return b, nil
}

// decodeCommand parses a log entry into one of the *Args types. It accepts
// nothing but what encodeCommand produces: unknown ops and unknown fields
// are errors (a replica must not half-understand a command), as are
// trailing bytes.
func decodeCommand(data []byte) (any, error) {
	_, args, err := decodeOp(data)
	return args, err
}

// decodeOp is decodeCommand that also returns the command's op.
func decodeOp(data []byte) (op, any, error) {
	if len(data) > commandBytesMax {
		return "", nil, fmt.Errorf("%w: command of %d bytes exceeds %d", ErrInvalid, len(data), commandBytesMax)
	}
	var c command
	if err := decodeStrict(data, &c); err != nil {
		return "", nil, fmt.Errorf("%w: command: %w", ErrInvalid, err)
	}
	var args any
	switch c.Op {
	case opCreateVolume:
		args = &createVolumeArgs{}
	case opDeleteVolume:
		args = &deleteVolumeArgs{}
	case opResizeVolume:
		args = &resizeVolumeArgs{}
	case opAttach:
		args = &attachArgs{}
	case opSetReservations:
		args = &setReservationsArgs{}
	case opRegisterNode:
		args = &registerNodeArgs{}
	case opSetNodeState:
		args = &setNodeStateArgs{}
	case opNodeUsage:
		args = &nodeUsageArgs{}
	case opExcludeReplica:
		args = &excludeReplicaArgs{}
	case opIncludeReplica:
		args = &includeReplicaArgs{}
	case opCreateGroup:
		args = &createGroupArgs{}
	case opDeleteGroup:
		args = &deleteGroupArgs{}
	case opReserveSnapshot:
		args = &reserveSnapshotArgs{}
	case opEndSnapshot:
		args = &endSnapshotArgs{}
	case opDeleteSnapshot:
		args = &deleteSnapshotArgs{}
	case opForkVolume:
		args = &forkVolumeArgs{}
	case opRollbackVolume:
		args = &rollbackVolumeArgs{}
	case opFlattenVolume:
		args = &flattenVolumeArgs{}
	case opFlattenReport:
		args = &flattenReportArgs{}
	case opLineageApplied:
		args = &lineageAppliedArgs{}
	default:
		return "", nil, fmt.Errorf("%w: unknown command %.40q", ErrInvalid, c.Op)
	}
	if err := decodeStrict(c.Args, args); err != nil {
		return "", nil, fmt.Errorf("%w: %s arguments: %w", ErrInvalid, c.Op, err)
	}
	return c.Op, args, nil
}

// decodeStrict decodes exactly one JSON value with no unknown fields.
func decodeStrict(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

// apply executes one decoded command. It checks everything before changing
// anything, so a command that fails leaves the state as it was. It returns
// what the command affected, as it is after the command.
func (s *state) apply(cmd any) (outcome, error) {
	switch a := cmd.(type) {
	case *createVolumeArgs:
		v, err := s.createVolume(a)
		return outcome{Volume: v}, err
	case *deleteVolumeArgs:
		v, ok := s.Volumes[a.Name]
		if !ok {
			return outcome{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
		}
		if err := s.refuseDependents(v); err != nil {
			return outcome{}, err
		}
		delete(s.Volumes, a.Name)
		delete(s.Reservations, a.Name)
		s.dropSnapshotsOf(v.ID, v.Name)
		return outcome{Volume: v}, nil
	case *resizeVolumeArgs:
		v, ok := s.Volumes[a.Name]
		if !ok {
			return outcome{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
		}
		if err := validSize(a.Size); err != nil {
			return outcome{}, err
		}
		if a.Size < v.Size {
			return outcome{}, fmt.Errorf("volume %q: %d to %d bytes: %w", a.Name, v.Size, a.Size, ErrShrink)
		}
		v.Size = a.Size
		s.Volumes[a.Name] = v
		return outcome{Volume: v}, nil
	case *attachArgs:
		v, ok := s.Volumes[a.Name]
		if !ok {
			return outcome{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
		}
		if err := validNode(a.Node); err != nil {
			return outcome{}, err
		}
		v.Generation++
		v.AttachedTo = a.Node
		s.Volumes[a.Name] = v
		return outcome{Volume: v}, nil
	case *setReservationsArgs:
		v, ok := s.Volumes[a.Name]
		if !ok {
			return outcome{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
		}
		if err := validReservations(a.State); err != nil {
			return outcome{}, fmt.Errorf("volume %q: %w", a.Name, err)
		}
		if len(a.State) == 0 {
			delete(s.Reservations, a.Name)
			return outcome{Volume: v}, nil
		}
		if s.Reservations == nil {
			s.Reservations = map[string][]byte{}
		}
		s.Reservations[a.Name] = bytes.Clone(a.State)
		return outcome{Volume: v}, nil
	case *registerNodeArgs:
		n, err := s.registerNode(a)
		return outcome{Node: n}, err
	case *excludeReplicaArgs:
		v, err := s.excludeReplica(a)
		return outcome{Volume: v}, err
	case *includeReplicaArgs:
		v, err := s.includeReplica(a)
		return outcome{Volume: v}, err
	case *createGroupArgs:
		return s.createGroup(a)
	case *deleteGroupArgs:
		if _, ok := s.Groups[a.Name]; !ok {
			return outcome{}, fmt.Errorf("group %q: %w", a.Name, ErrNotFound)
		}
		delete(s.Groups, a.Name)
		return outcome{}, nil
	case *reserveSnapshotArgs:
		return s.reserveSnapshot(a)
	case *endSnapshotArgs:
		return s.endSnapshot(a)
	case *deleteSnapshotArgs:
		sn, ok := s.Snapshots[a.ID]
		if !ok {
			return outcome{}, fmt.Errorf("snapshot %d: %w", a.ID, ErrNotFound)
		}
		if err := s.refuseSnapshotDependents(sn); err != nil {
			return outcome{}, err
		}
		delete(s.Snapshots, a.ID)
		return outcome{Snapshot: sn}, nil
	case *forkVolumeArgs:
		v, err := s.forkVolume(a)
		return outcome{Volume: v}, err
	case *rollbackVolumeArgs:
		v, err := s.rollbackVolume(a)
		return outcome{Volume: v}, err
	case *flattenVolumeArgs:
		v, err := s.flattenVolume(a)
		return outcome{Volume: v}, err
	case *flattenReportArgs:
		v, err := s.flattenReport(a)
		return outcome{Volume: v}, err
	case *lineageAppliedArgs:
		v, err := s.lineageApplied(a)
		return outcome{Volume: v}, err
	case *setNodeStateArgs:
		n, ok := s.Nodes[a.Name]
		if !ok {
			return outcome{}, fmt.Errorf("node %q: %w", a.Name, ErrNotFound)
		}
		if !a.State.valid() {
			return outcome{}, fmt.Errorf("%w: node %q: state %.40q, want %s, %s or %s", ErrInvalid, a.Name, a.State, NodeInService, NodeDraining, NodeOut)
		}
		n.State = a.State
		s.Nodes[a.Name] = n
		return outcome{Node: n}, nil
	case *nodeUsageArgs:
		n, ok := s.Nodes[a.Name]
		if !ok {
			return outcome{}, fmt.Errorf("node %q: %w", a.Name, ErrNotFound)
		}
		if a.CapacityBytes < 0 || a.UsedBytes < 0 {
			return outcome{}, fmt.Errorf("%w: node %q: capacity %d, used %d", ErrInvalid, a.Name, a.CapacityBytes, a.UsedBytes)
		}
		n.CapacityBytes, n.UsedBytes = a.CapacityBytes, a.UsedBytes
		s.Nodes[a.Name] = n
		return outcome{Node: n}, nil
	}
	panic(fmt.Sprintf("cluster: state.apply: no case for %T", cmd)) // decodeCommand and apply disagree
}

// createVolume places a new volume over the storage nodes in service.
func (s *state) createVolume(a *createVolumeArgs) (Volume, error) {
	members := s.inService()
	replicas := a.Replicas
	if replicas == 0 {
		replicas = 1
		if len(members) >= 3 {
			replicas = 3
		}
	}
	if err := validVolume(a.Name, a.Size, replicas); err != nil {
		return Volume{}, err
	}
	if err := validLogicalBlockSize(a.LogicalBlockSize); err != nil {
		return Volume{}, fmt.Errorf("volume %q: %w", a.Name, err)
	}
	chunk := a.ChunkSize
	if chunk == 0 {
		chunk = chunkSizeDefault
	}
	if err := validChunkSize(chunk); err != nil {
		return Volume{}, fmt.Errorf("volume %q: %w", a.Name, err)
	}
	if _, ok := s.Volumes[a.Name]; ok {
		return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrExists)
	}
	if len(s.Volumes) >= volumesMax {
		return Volume{}, fmt.Errorf("volume %q: %d volumes: %w", a.Name, len(s.Volumes), ErrFull)
	}
	if a.Target != "" {
		if err := validNode(a.Target); err != nil {
			return Volume{}, fmt.Errorf("volume %q: target: %w", a.Name, err)
		}
	}
	if replicas > len(members) {
		return Volume{}, fmt.Errorf("%w: volume %q: %d replicas requested, %d storage nodes in service", ErrInvalid, a.Name, replicas, len(members))
	}
	v := Volume{
		ID:        s.NextID,
		Name:      a.Name,
		Size:      a.Size,
		BlockSize: blockSizeBytes,
		ChunkSize: chunk,
		Replicas:  replicas,
		Epoch:     1,
		Created:   a.Created,
		Placement: members,

		LogicalBlockSize: a.LogicalBlockSize,
	}
	if a.Target != "" {
		v.AttachedTo, v.Generation = a.Target, 1
	}
	s.NextID++
	s.Volumes[v.Name] = v
	return v, nil
}

// inService returns the storage nodes in service, sorted by name.
func (s *state) inService() []Member {
	var ms []Member
	for _, n := range s.Nodes {
		if n.State == NodeInService {
			ms = append(ms, Member{Node: n.Name, Zone: n.Zone})
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Node < ms[j].Node })
	return ms
}

func (s *state) registerNode(a *registerNodeArgs) (Node, error) {
	if err := validNode(a.Name); err != nil {
		return Node{}, err
	}
	if err := validZone(a.Zone); err != nil {
		return Node{}, fmt.Errorf("node %q: %w", a.Name, err)
	}
	if err := validAddr(a.Addr); err != nil {
		return Node{}, fmt.Errorf("node %q: %w", a.Name, err)
	}
	if a.CapacityBytes < 0 {
		return Node{}, fmt.Errorf("%w: node %q: capacity %d", ErrInvalid, a.Name, a.CapacityBytes)
	}
	n, ok := s.Nodes[a.Name]
	if !ok {
		if len(s.Nodes) >= nodesMax {
			return Node{}, fmt.Errorf("node %q: %d nodes: %w", a.Name, len(s.Nodes), ErrFull)
		}
		n = Node{Name: a.Name, State: NodeInService}
	}
	n.Zone, n.Addr = a.Zone, a.Addr
	if a.CapacityBytes > 0 {
		n.CapacityBytes = a.CapacityBytes
	}
	if s.Nodes == nil {
		s.Nodes = map[string]Node{}
	}
	s.Nodes[a.Name] = n
	return n, nil
}

// sorted returns the volumes ordered by name.
func (s *state) sorted() []Volume {
	vs := make([]Volume, 0, len(s.Volumes))
	for _, v := range s.Volumes {
		vs = append(vs, v.clone())
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].Name < vs[j].Name })
	return vs
}

// check verifies the state's invariants; Restore runs it on every snapshot,
// tests after every command.
func (s *state) check() error {
	if s.Volumes == nil {
		return errors.New("no volume map")
	}
	if s.NextID < 1 {
		return fmt.Errorf("next_id %d < 1", s.NextID)
	}
	if len(s.Volumes) > volumesMax {
		return fmt.Errorf("%d volumes: more than %d", len(s.Volumes), volumesMax)
	}
	for name, r := range s.Reservations {
		if _, ok := s.Volumes[name]; !ok {
			return fmt.Errorf("reservations of volume %q, which does not exist", name)
		}
		if len(r) == 0 {
			return fmt.Errorf("volume %q: empty reservations filed", name)
		}
		if err := validReservations(r); err != nil {
			return fmt.Errorf("volume %q: %v", name, err)
		}
	}
	if len(s.Nodes) > nodesMax {
		return fmt.Errorf("%d nodes: more than %d", len(s.Nodes), nodesMax)
	}
	for name, n := range s.Nodes {
		if n.Name != name {
			return fmt.Errorf("node %q filed under %q", n.Name, name)
		}
		if err := validNode(name); err != nil {
			return err
		}
		if !n.State.valid() {
			return fmt.Errorf("node %q: state %q", name, n.State)
		}
	}
	if err := s.checkSnapshots(); err != nil {
		return err
	}
	if err := s.checkLineage(); err != nil {
		return err
	}
	ids := make(map[uint64]string, len(s.Volumes))
	for name, v := range s.Volumes {
		if v.Name != name {
			return fmt.Errorf("volume %q filed under %q", v.Name, name)
		}
		if err := validVolume(v.Name, v.Size, v.Replicas); err != nil {
			return err
		}
		if err := checkStale(v); err != nil {
			return err
		}
		if v.ID < 1 || v.ID >= s.NextID {
			return fmt.Errorf("volume %q: id %d outside [1, %d)", name, v.ID, s.NextID)
		}
		if other, ok := ids[v.ID]; ok {
			return fmt.Errorf("volumes %q and %q share id %d", name, other, v.ID)
		}
		ids[v.ID] = name
		if v.BlockSize != blockSizeBytes {
			return fmt.Errorf("volume %q: block size %d, want %d", name, v.BlockSize, blockSizeBytes)
		}
		if err := validChunkSize(v.ChunkSize); err != nil {
			return fmt.Errorf("volume %q: %v", name, err)
		}
		if len(v.Placement) > 0 && len(v.Placement) < v.Replicas {
			return fmt.Errorf("volume %q: %d replicas over %d nodes", name, v.Replicas, len(v.Placement))
		}
		if v.Epoch < 1 {
			return fmt.Errorf("volume %q: epoch 0", name)
		}
		if (v.Generation == 0) != (v.AttachedTo == "") {
			return fmt.Errorf("volume %q: generation %d attached to %q", name, v.Generation, v.AttachedTo)
		}
		if v.AttachedTo != "" {
			if err := validNode(v.AttachedTo); err != nil {
				return err
			}
		}
	}
	return nil
}

// snapshotFile is the encoding of a snapshot; Version changes when the
// encoding does.
type snapshotFile struct {
	Version int   `json:"version"`
	State   state `json:"state"`
	// Applied is the index of the last command applied to State (see
	// fsm.appliedIndex); absent in snapshots written before it existed,
	// which restore as 0.
	Applied uint64 `json:"applied,omitempty"`
}

func encodeState(s *state) ([]byte, error) { return encodeSnapshot(s, 0) }

// encodeSnapshot encodes s with the index of the last command applied to it.
func encodeSnapshot(s *state, applied uint64) ([]byte, error) {
	return json.Marshal(snapshotFile{Version: snapshotVersionV1, State: *s, Applied: applied})
}

// decodeState parses and checks a snapshot.
func decodeState(r io.Reader) (state, error) {
	st, _, err := decodeSnapshot(r)
	return st, err
}

// decodeSnapshot parses and checks a snapshot, and returns the index of the
// last command applied to its state.
func decodeSnapshot(r io.Reader) (state, uint64, error) {
	data, err := io.ReadAll(io.LimitReader(r, snapshotBytesMax+1))
	if err != nil {
		return state{}, 0, fmt.Errorf("snapshot: read: %w", err)
	}
	if len(data) > snapshotBytesMax {
		return state{}, 0, fmt.Errorf("%w: snapshot larger than %d bytes", ErrInvalid, snapshotBytesMax)
	}
	var f snapshotFile
	if err := decodeStrict(data, &f); err != nil {
		return state{}, 0, fmt.Errorf("%w: snapshot: %w", ErrInvalid, err)
	}
	if f.Version != snapshotVersionV1 {
		return state{}, 0, fmt.Errorf("%w: snapshot version %d, want %d", ErrInvalid, f.Version, snapshotVersionV1)
	}
	if err := f.State.check(); err != nil {
		return state{}, 0, fmt.Errorf("%w: snapshot: %w", ErrInvalid, err)
	}
	return f.State, f.Applied, nil
}
