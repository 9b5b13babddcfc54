package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"cairn/configs"
)

// Geometry of every volume the catalog creates.
const (
	blockSizeBytes = configs.BlockSize
	chunkSizeBytes = 1 << 20
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
	Name      string `json:"name"` // configs.ValidVolumeName
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
}

func newState() state { return state{Volumes: map[string]Volume{}, NextID: 1} }

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
)

// command is the envelope of every log entry the catalog writes.
type command struct {
	Op   op              `json:"op"`
	Args json.RawMessage `json:"args"`
}

type createVolumeArgs struct {
	Name             string    `json:"name"`
	Size             int64     `json:"size"`
	Replicas         int       `json:"replicas"`
	Created          time.Time `json:"created"`
	LogicalBlockSize int       `json:"logical_block_size,omitempty"`
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
	if len(data) > commandBytesMax {
		return nil, fmt.Errorf("%w: command of %d bytes exceeds %d", ErrInvalid, len(data), commandBytesMax)
	}
	var c command
	if err := decodeStrict(data, &c); err != nil {
		return nil, fmt.Errorf("%w: command: %v", ErrInvalid, err)
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
	default:
		return nil, fmt.Errorf("%w: unknown command %.40q", ErrInvalid, c.Op)
	}
	if err := decodeStrict(c.Args, args); err != nil {
		return nil, fmt.Errorf("%w: %s arguments: %v", ErrInvalid, c.Op, err)
	}
	return args, nil
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
// the affected volume as it is after the command.
func (s *state) apply(cmd any) (Volume, error) {
	switch a := cmd.(type) {
	case *createVolumeArgs:
		if err := validVolume(a.Name, a.Size, a.Replicas); err != nil {
			return Volume{}, err
		}
		if err := validLogicalBlockSize(a.LogicalBlockSize); err != nil {
			return Volume{}, fmt.Errorf("volume %q: %w", a.Name, err)
		}
		if _, ok := s.Volumes[a.Name]; ok {
			return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrExists)
		}
		if len(s.Volumes) >= volumesMax {
			return Volume{}, fmt.Errorf("volume %q: %d volumes: %w", a.Name, len(s.Volumes), ErrFull)
		}
		v := Volume{
			ID:        s.NextID,
			Name:      a.Name,
			Size:      a.Size,
			BlockSize: blockSizeBytes,
			ChunkSize: chunkSizeBytes,
			Replicas:  a.Replicas,
			Epoch:     1,
			Created:   a.Created,

			LogicalBlockSize: a.LogicalBlockSize,
		}
		s.NextID++
		s.Volumes[v.Name] = v
		return v, nil
	case *deleteVolumeArgs:
		v, ok := s.Volumes[a.Name]
		if !ok {
			return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
		}
		delete(s.Volumes, a.Name)
		delete(s.Reservations, a.Name)
		return v, nil
	case *resizeVolumeArgs:
		v, ok := s.Volumes[a.Name]
		if !ok {
			return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
		}
		if err := validSize(a.Size); err != nil {
			return Volume{}, err
		}
		if a.Size < v.Size {
			return Volume{}, fmt.Errorf("volume %q: %d to %d bytes: %w", a.Name, v.Size, a.Size, ErrShrink)
		}
		v.Size = a.Size
		s.Volumes[a.Name] = v
		return v, nil
	case *attachArgs:
		v, ok := s.Volumes[a.Name]
		if !ok {
			return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
		}
		if err := validNode(a.Node); err != nil {
			return Volume{}, err
		}
		v.Generation++
		v.AttachedTo = a.Node
		s.Volumes[a.Name] = v
		return v, nil
	case *setReservationsArgs:
		v, ok := s.Volumes[a.Name]
		if !ok {
			return Volume{}, fmt.Errorf("volume %q: %w", a.Name, ErrNotFound)
		}
		if err := validReservations(a.State); err != nil {
			return Volume{}, fmt.Errorf("volume %q: %w", a.Name, err)
		}
		if len(a.State) == 0 {
			delete(s.Reservations, a.Name)
			return v, nil
		}
		if s.Reservations == nil {
			s.Reservations = map[string][]byte{}
		}
		s.Reservations[a.Name] = bytes.Clone(a.State)
		return v, nil
	}
	panic(fmt.Sprintf("cluster: state.apply: no case for %T", cmd)) // decodeCommand and apply disagree
}

// sorted returns the volumes ordered by name.
func (s *state) sorted() []Volume {
	vs := make([]Volume, 0, len(s.Volumes))
	for _, v := range s.Volumes {
		vs = append(vs, v)
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
	ids := make(map[uint64]string, len(s.Volumes))
	for name, v := range s.Volumes {
		if v.Name != name {
			return fmt.Errorf("volume %q filed under %q", v.Name, name)
		}
		if err := validVolume(v.Name, v.Size, v.Replicas); err != nil {
			return err
		}
		if v.ID < 1 || v.ID >= s.NextID {
			return fmt.Errorf("volume %q: id %d outside [1, %d)", name, v.ID, s.NextID)
		}
		if other, ok := ids[v.ID]; ok {
			return fmt.Errorf("volumes %q and %q share id %d", name, other, v.ID)
		}
		ids[v.ID] = name
		if v.BlockSize != blockSizeBytes || v.ChunkSize != chunkSizeBytes {
			return fmt.Errorf("volume %q: geometry %d/%d, want %d/%d", name, v.BlockSize, v.ChunkSize, blockSizeBytes, chunkSizeBytes)
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
}

func encodeState(s *state) ([]byte, error) {
	return json.Marshal(snapshotFile{Version: snapshotVersionV1, State: *s})
}

// decodeState parses and checks a snapshot.
func decodeState(r io.Reader) (state, error) {
	data, err := io.ReadAll(io.LimitReader(r, snapshotBytesMax+1))
	if err != nil {
		return state{}, fmt.Errorf("snapshot: read: %w", err)
	}
	if len(data) > snapshotBytesMax {
		return state{}, fmt.Errorf("%w: snapshot larger than %d bytes", ErrInvalid, snapshotBytesMax)
	}
	var f snapshotFile
	if err := decodeStrict(data, &f); err != nil {
		return state{}, fmt.Errorf("%w: snapshot: %v", ErrInvalid, err)
	}
	if f.Version != snapshotVersionV1 {
		return state{}, fmt.Errorf("%w: snapshot version %d, want %d", ErrInvalid, f.Version, snapshotVersionV1)
	}
	if err := f.State.check(); err != nil {
		return state{}, fmt.Errorf("%w: snapshot: %v", ErrInvalid, err)
	}
	return f.State, nil
}

// validVolume checks the arguments of a new volume.
func validVolume(name string, size int64, replicas int) error {
	if err := configs.ValidVolumeName(name); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := validSize(size); err != nil {
		return err
	}
	if replicas < 1 || replicas > configs.ReplicasMax {
		return fmt.Errorf("%w: volume %q: %d replicas, want 1 to %d", ErrInvalid, name, replicas, configs.ReplicasMax)
	}
	return nil
}

// validLogicalBlockSize accepts 0 (the default, 512), 512 and 4096.
func validLogicalBlockSize(n int) error {
	if n != 0 && n != 512 && n != 4096 {
		return fmt.Errorf("%w: logical block size %d, want 512 or 4096", ErrInvalid, n)
	}
	return nil
}

func validSize(size int64) error {
	if err := configs.ValidVolumeSize(size); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

func validReservations(state []byte) error {
	if len(state) > ReservationBytesMax {
		return fmt.Errorf("%w: reservation state of %d bytes exceeds %d", ErrInvalid, len(state), ReservationBytesMax)
	}
	return nil
}

func validNode(node string) error {
	if err := configs.ValidNodeName(node); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}
