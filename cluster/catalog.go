package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"cairn/configs"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// Sentinel errors. Errors returned by Catalog methods wrap one of them (or a
// context error) with context; classify with errors.Is.
var (
	// ErrInvalid: a malformed request (bad name, size, replica count, node).
	ErrInvalid = errors.New("cluster: invalid request")
	// ErrExists: a volume of that name exists.
	ErrExists = errors.New("cluster: volume exists")
	// ErrNotFound: no volume of that name.
	ErrNotFound = errors.New("cluster: volume not found")
	// ErrShrink: a resize to a smaller size; volumes only grow.
	ErrShrink = errors.New("cluster: volume cannot shrink")
	// ErrFull: the catalog holds its maximum number of volumes.
	ErrFull = errors.New("cluster: catalog full")
	// ErrNotLeader: this node cannot commit changes because it is not the
	// Raft leader, or lost leadership while committing (then the change may
	// or may not have been applied). The error text names the leader when
	// one is known.
	ErrNotLeader = errors.New("cluster: not the leader")
	// ErrTimeout: the change could not be queued within the apply timeout.
	ErrTimeout = errors.New("cluster: apply timed out")
	// ErrClosed: the catalog was closed.
	ErrClosed = errors.New("cluster: catalog closed")
	// ErrBootstrapped: Bootstrap on a node that already has Raft state.
	ErrBootstrapped = errors.New("cluster: already bootstrapped")
)

// Defaults for Options fields left zero.
const (
	applyTimeoutDefault = 10 * time.Second
	// dirLockTimeout bounds the wait for the lock on Dir's Raft log: a
	// second process on the same Dir fails instead of hanging.
	dirLockTimeout = 500 * time.Millisecond
	// transportTimeout bounds one Raft RPC's I/O; transportPoolMax caps the
	// pooled connections per peer.
	transportTimeout  = 10 * time.Second
	transportPoolMax  = 3
	snapshotsRetained = 2
	// waitLeaderPoll is how often WaitLeader looks for a leader.
	waitLeaderPoll = 10 * time.Millisecond
	// commitTimeoutDefault is Raft's CommitTimeout when Options leaves it
	// 0: with no new entry to send, the leader tells each follower the
	// commit index after a random wait of one to two of it. A change
	// forwarded from a follower waits for exactly that before it returns
	// (waitApplied: reads that follow see it), so raft's own default of
	// 50 ms made each forwarded change cost 50–100 ms, two of them in
	// every snapshot a follower coordinates (reserve, seal). At 10 ms an
	// idle leader sends each follower 50–100 empty AppendEntries a second.
	commitTimeoutDefault = 10 * time.Millisecond
)

// Options configure Open. The zero value of each field but NodeID, Dir and
// Bind works.
type Options struct {
	// NodeID is this node's Raft server ID: validNode, unique and
	// stable across restarts (configs: node_name).
	NodeID string
	// Dir holds the Raft log and stable store (raft.db) and snapshots; the
	// catalog owns it alone (configs: data_dir + "/catalog").
	Dir string
	// Bind is the Raft TCP address, host:port. It is also the address this
	// node advertises to peers, so its host must be a concrete address; port
	// 0 takes a free port (see Status.Address) (configs: raft.bind).
	Bind string
	// BootstrapExpect: 1 makes a node with no Raft state bootstrap itself as
	// the only voter at Open; any other value leaves bootstrapping to a call
	// of Bootstrap with the managers gossip found (configs:
	// raft.bootstrap_expect).
	BootstrapExpect int
	// Logger receives Raft's log lines and the catalog's; nil means
	// slog.Default().
	Logger *slog.Logger
	// ApplyTimeout bounds the wait to queue a change (zero: 10 s).
	ApplyTimeout time.Duration
	// Forward carries changes made on a follower to the leader; nil: they
	// fail with ErrNotLeader.
	Forward Forwarder

	// Raft timing; zero keeps hashicorp/raft's default (1 s, 1 s, 500 ms)
	// for the first three and commitTimeoutDefault for CommitTimeout.
	// TestOptions lowers them.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold is the number of log entries between snapshots
	// (zero: raft's default, 8192).
	SnapshotThreshold uint64
	// UnsafeNoSync skips the fsync of each Raft log write: a crash of the
	// machine may lose committed changes. For tests only, where fsync
	// latency on a loaded machine would stretch elections.
	UnsafeNoSync bool
	// TLS, when set, makes the Raft transport mutual TLS 1.3 (see
	// TLSConfig); nil is plain TCP, for loopback only (configs: [tls]).
	TLS *TLSConfig
}

// TestOptions is the preset for tests: a single self-bootstrapping voter in
// dir on a free loopback port, with Raft timeouts lowered so that an
// election takes tens of milliseconds, no fsync, and logs discarded.
func TestOptions(dir string) Options {
	return Options{
		NodeID:             "test",
		Dir:                dir,
		Bind:               "127.0.0.1:0",
		BootstrapExpect:    1,
		Logger:             slog.New(slog.DiscardHandler),
		ApplyTimeout:       5 * time.Second,
		HeartbeatTimeout:   50 * time.Millisecond,
		ElectionTimeout:    50 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		UnsafeNoSync:       true,
	}
}

// Server is one voter of the catalog's Raft configuration.
type Server struct {
	ID      string // Options.NodeID of the server
	Address string // its Raft host:port
}

// Status is a point-in-time view of this node's Raft state.
type Status struct {
	NodeID        string
	Address       string // the Raft address this node advertises
	State         string // "Leader", "Follower", "Candidate" or "Shutdown"
	LeaderID      string // empty when no leader is known
	LeaderAddress string
	Term          uint64
	LastIndex     uint64 // last log index stored
	CommitIndex   uint64
	AppliedIndex  uint64 // last index applied to the catalog's state
}

// Catalog is the replicated catalog on one node. Its methods may be called
// from any goroutine.
type Catalog struct {
	id           string
	log          *slog.Logger
	applyTimeout time.Duration

	raft  *raft.Raft
	fsm   *fsm
	store *raftboltdb.BoltStore
	trans *raft.NetworkTransport

	forwarder Forwarder

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// Open starts the catalog's Raft node on opts.Dir, reloading whatever state
// it holds, and bootstraps a new single-voter catalog if
// opts.BootstrapExpect is 1 and the directory holds no Raft state. Reads may
// lag the log until a leader has been elected: call WaitLeader first.
func Open(opts Options) (c *Catalog, err error) {
	if err := validNode(opts.NodeID); err != nil {
		return nil, fmt.Errorf("cluster: open: %w", err)
	}
	if opts.Dir == "" {
		return nil, fmt.Errorf("cluster: open: %w: empty Dir", ErrInvalid)
	}
	if _, _, err := net.SplitHostPort(opts.Bind); err != nil {
		return nil, fmt.Errorf("cluster: open: %w: Bind: %w", ErrInvalid, err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ApplyTimeout <= 0 {
		opts.ApplyTimeout = applyTimeoutDefault
	}
	hl := newHclogger(opts.Logger, "raft", nil)

	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: open: %w", err)
	}
	var cleanup []func() error
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				_ = cleanup[i]()
			}
		}
	}()
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(opts.Dir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: dirLockTimeout},
		NoSync:      opts.UnsafeNoSync,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: open %s: raft log: %w", opts.Dir, err)
	}
	cleanup = append(cleanup, store.Close)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(opts.Dir, snapshotsRetained, hl.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("cluster: open %s: snapshots: %w", opts.Dir, err)
	}
	// No advertise address: the transport advertises its listener's address,
	// which is Bind with a port-0 request resolved. An unspecified host
	// (0.0.0.0) is refused by the transport.
	trans, err := newTransport(opts.Bind, opts.TLS, hl.Named("transport"))
	if err != nil {
		return nil, fmt.Errorf("cluster: open: raft transport on %s: %w", opts.Bind, err)
	}
	cleanup = append(cleanup, trans.Close)

	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(opts.NodeID)
	conf.Logger = hl
	setDuration(&conf.HeartbeatTimeout, opts.HeartbeatTimeout)
	setDuration(&conf.ElectionTimeout, opts.ElectionTimeout)
	setDuration(&conf.LeaderLeaseTimeout, opts.LeaderLeaseTimeout)
	conf.CommitTimeout = commitTimeoutDefault
	setDuration(&conf.CommitTimeout, opts.CommitTimeout)
	if opts.SnapshotThreshold > 0 {
		conf.SnapshotThreshold = opts.SnapshotThreshold
	}
	if err := raft.ValidateConfig(conf); err != nil {
		return nil, fmt.Errorf("cluster: open: %w: %w", ErrInvalid, err)
	}
	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("cluster: open %s: %w", opts.Dir, err)
	}

	f := newFSM()
	r, err := raft.NewRaft(conf, f, store, store, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("cluster: open %s: %w", opts.Dir, err)
	}
	cleanup = append(cleanup, func() error { return r.Shutdown().Error() })
	c = &Catalog{
		id:           opts.NodeID,
		log:          opts.Logger.With("component", "catalog"),
		applyTimeout: opts.ApplyTimeout,
		raft:         r,
		fsm:          f,
		store:        store,
		trans:        trans,
		forwarder:    opts.Forward,
	}
	if !existing && opts.BootstrapExpect == 1 {
		if err := c.Bootstrap([]Server{{ID: opts.NodeID, Address: string(trans.LocalAddr())}}); err != nil {
			return nil, err
		}
	}
	c.log.Info("catalog open", "node", opts.NodeID, "address", trans.LocalAddr(), "dir", opts.Dir, "existing_state", existing)
	return c, nil
}

func setDuration(dst *time.Duration, v time.Duration) {
	if v > 0 {
		*dst = v
	}
}

// Bootstrap makes servers the first voters of a new catalog. Every one of
// them must be given the same list; this node must be in it. The gossip
// layer calls it once it has seen raft.bootstrap_expect managers (Open calls
// it for bootstrap_expect = 1). A node that already has Raft state returns
// ErrBootstrapped.
func (c *Catalog) Bootstrap(servers []Server) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if len(servers) == 0 || len(servers) > configs.BootstrapExpectMax {
		return fmt.Errorf("cluster: bootstrap: %w: %d servers, want 1 to %d", ErrInvalid, len(servers), configs.BootstrapExpectMax)
	}
	var conf raft.Configuration
	self := false
	for _, s := range servers {
		if err := validNode(s.ID); err != nil {
			return fmt.Errorf("cluster: bootstrap: %w", err)
		}
		if _, _, err := net.SplitHostPort(s.Address); err != nil {
			return fmt.Errorf("cluster: bootstrap: %w: server %s: %w", ErrInvalid, s.ID, err)
		}
		self = self || s.ID == c.id
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address)})
	}
	if !self {
		return fmt.Errorf("cluster: bootstrap: %w: this node (%s) is not among the servers", ErrInvalid, c.id)
	}
	if err := c.raft.BootstrapCluster(conf).Error(); err != nil {
		if errors.Is(err, raft.ErrCantBootstrap) {
			return ErrBootstrapped
		}
		return fmt.Errorf("cluster: bootstrap: %w", err) // raft.ValidateConfiguration: duplicate IDs or addresses
	}
	c.log.Info("catalog bootstrapped", "servers", len(servers))
	return nil
}

// WaitLeader returns once a leader is known. On the leader it also waits
// until every entry of earlier terms is applied, so that reads on it see all
// committed changes.
func (c *Catalog) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(waitLeaderPoll)
	defer t.Stop()
	for {
		if c.closed.Load() {
			return ErrClosed
		}
		if _, id := c.raft.LeaderWithID(); id != "" {
			if string(id) != c.id {
				return nil
			}
			timeout := c.timeout(ctx)
			if timeout <= 0 {
				return ctx.Err()
			}
			err := c.raft.Barrier(timeout).Error()
			if err == nil {
				return nil
			}
			if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
				return c.raftError("wait for leader", err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: wait for leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// CreateVolume adds a volume of spec.Size bytes (a multiple of 4096, at
// most 64 TiB) with spec.Replicas replicas (1 to 5), placed over the
// storage nodes in service, and returns its record. More replicas than
// nodes in service is ErrInvalid: a volume is never under-replicated at
// creation.
func (c *Catalog) CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, error) {
	if err := validVolumeName(spec.Name); err != nil {
		return Volume{}, fmt.Errorf("cluster: create volume: %w", err)
	}
	if err := validSize(spec.Size); err != nil {
		return Volume{}, fmt.Errorf("cluster: create volume %q: %w", spec.Name, err)
	}
	if spec.Replicas != 0 {
		if err := validReplicas(spec.Name, spec.Replicas); err != nil {
			return Volume{}, fmt.Errorf("cluster: create volume: %w", err)
		}
	}
	if spec.ChunkSize != 0 {
		if err := validChunkSize(spec.ChunkSize); err != nil {
			return Volume{}, fmt.Errorf("cluster: create volume %q: %w", spec.Name, err)
		}
	}
	if err := validLogicalBlockSize(spec.LogicalBlockSize); err != nil {
		return Volume{}, fmt.Errorf("cluster: create volume %q: %w", spec.Name, err)
	}
	if spec.Target != "" {
		if err := validNode(spec.Target); err != nil {
			return Volume{}, fmt.Errorf("cluster: create volume %q: target: %w", spec.Name, err)
		}
	}
	args := createVolumeArgs{Name: spec.Name, Size: spec.Size, Replicas: spec.Replicas, Created: time.Now().UTC(),
		LogicalBlockSize: spec.LogicalBlockSize, ChunkSize: spec.ChunkSize, Target: spec.Target}
	out, err := c.apply(ctx, opCreateVolume, &args)
	return out.Volume, err
}

// VolumeSpec describes a volume to create. Zero Replicas is 3 with at
// least 3 storage nodes in service, else 1; zero ChunkSize is 1 MiB; zero
// LogicalBlockSize is 512.
type VolumeSpec struct {
	Name             string
	Size             int64 // bytes, a multiple of 4096
	Replicas         int
	ChunkSize        int64 // bytes, a power of two from 64 KiB to 64 MiB
	LogicalBlockSize int   // 512 or 4096: the block size iSCSI presents
	// Target is the node whose target serves the volume: the volume is
	// created attached to it (generation 1). Empty: created unattached.
	Target string
}

// RegisterNode records a storage node: a new one enters service, a known
// one keeps its state and takes the new zone and address.
func (c *Catalog) RegisterNode(ctx context.Context, n Node) (Node, error) {
	out, err := c.apply(ctx, opRegisterNode, &registerNodeArgs{Name: n.Name, Zone: n.Zone, Addr: n.Addr, CapacityBytes: n.CapacityBytes})
	return out.Node, err
}

// SetNodeState changes a storage node's service state; only nodes in
// service take new placements.
func (c *Catalog) SetNodeState(ctx context.Context, name string, st NodeState) (Node, error) {
	out, err := c.apply(ctx, opSetNodeState, &setNodeStateArgs{Name: name, State: st})
	return out.Node, err
}

// ReportUsage records a storage node's capacity and used bytes.
func (c *Catalog) ReportUsage(ctx context.Context, name string, capacity, used int64) (Node, error) {
	out, err := c.apply(ctx, opNodeUsage, &nodeUsageArgs{Name: name, CapacityBytes: capacity, UsedBytes: used})
	return out.Node, err
}

// Servers returns the catalog's current Raft voters.
func (c *Catalog) Servers() ([]Server, error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, c.raftError("configuration", err)
	}
	var out []Server
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, Server{ID: string(s.ID), Address: string(s.Address)})
		}
	}
	return out, nil
}

// AddVoter makes s a voter of the catalog. Only the leader can
// (ErrNotLeader elsewhere); adding a voter that is already one with the
// same address changes nothing.
func (c *Catalog) AddVoter(ctx context.Context, s Server) error {
	if err := validNode(s.ID); err != nil {
		return fmt.Errorf("cluster: add voter: %w", err)
	}
	if _, _, err := net.SplitHostPort(s.Address); err != nil {
		return fmt.Errorf("cluster: add voter: %w: %s: %w", ErrInvalid, s.ID, err)
	}
	timeout := c.timeout(ctx)
	if timeout <= 0 {
		return fmt.Errorf("cluster: add voter: %w", context.DeadlineExceeded)
	}
	if err := c.raft.AddVoter(raft.ServerID(s.ID), raft.ServerAddress(s.Address), 0, timeout).Error(); err != nil {
		return c.raftError("add voter "+s.ID, err)
	}
	c.log.Info("catalog voter added", "server", s.ID, "address", s.Address)
	return nil
}

// AddNonvoter makes s a non-voting member: it receives the log (so its
// catalog reads are local) but takes no part in elections. Leader only.
func (c *Catalog) AddNonvoter(ctx context.Context, s Server) error {
	if err := validNode(s.ID); err != nil {
		return fmt.Errorf("cluster: add nonvoter: %w", err)
	}
	if _, _, err := net.SplitHostPort(s.Address); err != nil {
		return fmt.Errorf("cluster: add nonvoter: %w: %s: %w", ErrInvalid, s.ID, err)
	}
	timeout := c.timeout(ctx)
	if timeout <= 0 {
		return fmt.Errorf("cluster: add nonvoter: %w", context.DeadlineExceeded)
	}
	if err := c.raft.AddNonvoter(raft.ServerID(s.ID), raft.ServerAddress(s.Address), 0, timeout).Error(); err != nil {
		return c.raftError("add nonvoter "+s.ID, err)
	}
	c.log.Info("catalog nonvoter added", "server", s.ID, "address", s.Address)
	return nil
}

// Members returns every server of the Raft configuration, voters and
// non-voters, by ID.
func (c *Catalog) Members() (map[string]string, error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, c.raftError("configuration", err)
	}
	out := map[string]string{}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = string(s.Address)
	}
	return out, nil
}

// IsLeader reports whether this node leads the catalog now (it may lose
// leadership at any moment after).
func (c *Catalog) IsLeader() bool { return c.raft.State() == raft.Leader }

// Barrier waits until this node, as leader, has applied every entry
// committed before the call: reads after it are linearizable as long as it
// keeps leading. On a follower it fails with ErrNotLeader.
func (c *Catalog) Barrier(ctx context.Context) error {
	timeout := c.timeout(ctx)
	if timeout <= 0 {
		return fmt.Errorf("cluster: barrier: %w", context.DeadlineExceeded)
	}
	if err := c.raft.Barrier(timeout).Error(); err != nil {
		return c.raftError("barrier", err)
	}
	return nil
}

// Nodes returns the local replica's storage nodes sorted by name.
func (c *Catalog) Nodes() []Node { return c.fsm.nodes() }

// DeleteVolume removes a volume from the catalog and returns nil, or
// ErrNotFound.
func (c *Catalog) DeleteVolume(ctx context.Context, name string) error {
	if err := validVolumeName(name); err != nil {
		return fmt.Errorf("cluster: delete volume: %w", err)
	}
	_, err := c.apply(ctx, opDeleteVolume, &deleteVolumeArgs{Name: name})
	return err
}

// ResizeVolume grows a volume to size bytes and returns the new record; a
// smaller size is ErrShrink, the same size changes nothing.
func (c *Catalog) ResizeVolume(ctx context.Context, name string, size int64) (Volume, error) {
	if err := validSize(size); err != nil {
		return Volume{}, fmt.Errorf("cluster: resize volume: %w", err)
	}
	out, err := c.apply(ctx, opResizeVolume, &resizeVolumeArgs{Name: name, Size: size})
	return out.Volume, err
}

// Attach records node as the holder of the volume's attachment, bumps its
// fencing Generation and returns the record; writes stamped with an older
// generation are to be refused by storage nodes from then on.
func (c *Catalog) Attach(ctx context.Context, name, node string) (Volume, error) {
	if err := validNode(node); err != nil {
		return Volume{}, fmt.Errorf("cluster: attach: %w", err)
	}
	out, err := c.apply(ctx, opAttach, &attachArgs{Name: name, Node: node})
	return out.Volume, err
}

// SetReservations replaces the opaque SCSI reservation state of a volume
// (at most ReservationBytesMax bytes; empty removes it) through the Raft
// log: once it returns nil the state is committed and survives restarts
// and snapshots. Deleting the volume deletes it. Like every change it must
// run on the leader (ErrNotLeader elsewhere).
func (c *Catalog) SetReservations(ctx context.Context, name string, state []byte) error {
	if err := validReservations(state); err != nil {
		return fmt.Errorf("cluster: set reservations: %w", err)
	}
	_, err := c.apply(ctx, opSetReservations, &setReservationsArgs{Name: name, State: state})
	return err
}

// Reservations returns a copy of the local replica's reservation state of a
// volume: nil if none was set, ErrNotFound if there is no such volume. On
// a follower it may lag the leader.
func (c *Catalog) Reservations(name string) ([]byte, error) {
	r, ok := c.fsm.reservations(name)
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return r, nil
}

// Volume returns the local replica's record of a volume, or ErrNotFound.
// On a follower it may lag the leader by the entries not yet applied.
func (c *Catalog) Volume(name string) (Volume, error) {
	v, ok := c.fsm.volume(name)
	if !ok {
		return Volume{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return v, nil
}

// Volumes returns the local replica's volumes sorted by name.
func (c *Catalog) Volumes() []Volume { return c.fsm.volumes() }

// Changes returns a channel that is closed at the next change of the
// catalog's state (an applied command or a restored snapshot). Every caller
// gets the channel of the current generation, so any number of watchers may
// wait, and changes that happen while nobody waits coalesce into one. Take
// the channel before reading the state:
//
//	for {
//		ch := cat.Changes()
//		reconcile(cat.Volumes())
//		select {
//		case <-ch:
//		case <-ctx.Done():
//			return
//		}
//	}
func (c *Catalog) Changes() <-chan struct{} { return c.fsm.changes() }

// Status reports this node's Raft state.
func (c *Catalog) Status() Status {
	addr, id := c.raft.LeaderWithID()
	return Status{
		NodeID:        c.id,
		Address:       string(c.trans.LocalAddr()),
		State:         c.raft.State().String(),
		LeaderID:      string(id),
		LeaderAddress: string(addr),
		Term:          c.raft.CurrentTerm(),
		LastIndex:     c.raft.LastIndex(),
		CommitIndex:   c.raft.CommitIndex(),
		AppliedIndex:  c.raft.AppliedIndex(),
	}
}

// Close shuts Raft down and releases the directory and the port. It is
// idempotent; calls after the first return the first's result.
func (c *Catalog) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.closeErr = errors.Join(
			c.raft.Shutdown().Error(),
			c.trans.Close(),
			c.store.Close(),
		)
		if c.closeErr != nil {
			c.closeErr = fmt.Errorf("cluster: close: %w", c.closeErr)
		}
		c.log.Info("catalog closed", "node", c.id)
	})
	return c.closeErr
}

// timeout is the apply timeout, shortened to ctx's deadline.
func (c *Catalog) timeout(ctx context.Context) time.Duration {
	t := c.applyTimeout
	if d, ok := ctx.Deadline(); ok {
		t = min(t, time.Until(d))
	}
	return t
}

// apply commits one command and returns the FSM's result. On a follower
// the change is forwarded to the leader (see Forwarder). ctx and the apply
// timeout bound the wait to queue the entry; once queued, the wait ends when
// the entry is applied, or when leadership is lost (bounded by the leader
// lease), or at Close.
func (c *Catalog) apply(ctx context.Context, o op, args any) (outcome, error) {
	if c.closed.Load() {
		return outcome{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return outcome{}, fmt.Errorf("cluster: %s: %w", o, err)
	}
	data, err := encodeCommand(o, args)
	if err != nil {
		return outcome{}, fmt.Errorf("cluster: %w", err)
	}
	if c.forwarder != nil && c.raft.State() != raft.Leader {
		return c.forward(ctx, o, data)
	}
	out, _, notQueued, err := c.applyLocal(ctx, o, data)
	if notQueued && c.forwarder != nil {
		// Leadership moved before the entry was queued: nothing was
		// applied, so the leader may take it.
		return c.forward(ctx, o, data)
	}
	return out, err
}

// applyLocal commits an encoded command through this node's Raft, which
// must lead. notQueued reports a refusal before the entry entered the log
// (this node is not the leader): nothing was applied.
func (c *Catalog) applyLocal(ctx context.Context, o op, data []byte) (_ outcome, index uint64, notQueued bool, _ error) {
	timeout := c.timeout(ctx)
	if timeout <= 0 {
		return outcome{}, 0, false, fmt.Errorf("cluster: %s: %w", o, context.DeadlineExceeded)
	}
	f := c.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		return outcome{}, 0, errors.Is(err, raft.ErrNotLeader), c.raftError(string(o), err)
	}
	r, ok := f.Response().(result)
	if !ok {
		panic(fmt.Sprintf("cluster: apply %s: FSM response %T", o, f.Response()))
	}
	return r.out, f.Index(), false, r.err
}

// raftError maps a hashicorp/raft error to this package's sentinels.
func (c *Catalog) raftError(what string, err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		addr, id := c.raft.LeaderWithID()
		if id == "" {
			return fmt.Errorf("cluster: %s: %w (no leader known): %w", what, ErrNotLeader, err)
		}
		return fmt.Errorf("cluster: %s: %w (leader is %s at %s): %w", what, ErrNotLeader, id, addr, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("cluster: %s: %w: %w", what, ErrTimeout, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("cluster: %s: %w", what, ErrClosed)
	}
	return fmt.Errorf("cluster: %s: %w", what, err)
}
