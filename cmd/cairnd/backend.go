package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"cairn/backend/volume"
	"cairn/cluster"
	"cairn/cluster/admin"
	"cairn/cluster/membership"
	"cairn/configs"
	"cairn/target"
	"cairn/target/reservation"
)

// backend implements admin.Backend over the daemon.
type backend struct{ d *daemon }

var _ admin.Backend = backend{}

// apiError maps catalog errors to the admin API's sentinels.
func apiError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrNotFound):
		return fmt.Errorf("%w: %w", admin.ErrNotFound, err)
	case errors.Is(err, cluster.ErrExists):
		return fmt.Errorf("%w: %w", admin.ErrExists, err)
	case errors.Is(err, cluster.ErrInvalid), errors.Is(err, cluster.ErrShrink):
		return fmt.Errorf("%w: %w", admin.ErrInvalid, err)
	case errors.Is(err, cluster.ErrNotLeader):
		return fmt.Errorf("%w: %w", admin.ErrUnavailable, err)
	case errors.Is(err, cluster.ErrBusy):
		return fmt.Errorf("%w: %w", admin.ErrConflict, err)
	}
	return err
}

func (b backend) Status(ctx context.Context) (admin.Status, error) {
	d := b.d
	rs := d.catalog.Status()
	st := admin.Status{
		Node: d.cfg.NodeName, Roles: d.cfg.Roles, Version: version,
		UptimeSeconds: time.Since(d.start).Seconds(),
		NBD:           d.nbdAddr, Admin: d.adminAddr,
		Volumes: len(d.catalog.Volumes()),
		Raft:    admin.Raft{State: rs.State, Leader: rs.LeaderID, Term: rs.Term, LastIndex: rs.LastIndex},
	}
	st.ISCSI = d.iscsiAddr
	for _, v := range d.catalog.Volumes() {
		n, i := d.sessions(v.Name)
		st.Connections += n + i
	}
	return st, nil
}

func (b backend) view(ctx context.Context, cv cluster.Volume, allocated bool) admin.Volume {
	d := b.d
	v := admin.Volume{
		ID: cv.ID, Name: cv.Name, Size: cv.Size, BlockSize: cv.BlockSize, SCSIBlockSize: cv.SCSIBlockSize(), ChunkSize: cv.ChunkSize,
		Replicas: cv.Replicas, Epoch: cv.Epoch, Generation: cv.Generation, Created: cv.Created,
		AllocatedBytes: -1,
		NBD:            "nbd://" + d.nbdAddr + "/" + cv.Name,
		IQN:            d.iqn(cv.Name),
		ISCSI:          "iscsi://" + d.iscsiAddr + "/" + d.iqn(cv.Name) + "/0",
	}
	n, i := d.sessions(cv.Name)
	v.Connections = n + i
	v.AttachedTo = cv.AttachedTo
	d.lineageView(cv, &v)
	if allocated {
		v.ChunksPerNode = chunksPerNode(cv)
		v.Stale = cv.Stale
		v.CatchUp = d.catchUpView(cv.Name)
		v.AllocatedBytes = d.allocated(ctx, cv)
		v.Reservations = d.reservationsView(cv.Name)
	}
	return v
}

// reservationsView is the catalog's reservation state of a volume for
// the admin API; nil when there is none (or it cannot be read: volume
// show still shows the rest, and the daemon logs why).
func (d *daemon) reservationsView(name string) *admin.Reservations {
	b, err := d.catalog.Reservations(name)
	if err != nil || len(b) == 0 {
		return nil
	}
	st, err := reservation.Decode(b)
	if err != nil {
		d.log.Error("volume show: reservations in the catalog do not decode", "volume", name, "err", err)
		return nil
	}
	r := &admin.Reservations{Generation: st.Generation(), Registrants: []admin.Registrant{}}
	if st.Type() != 0 {
		r.Type = st.Type().String()
	}
	for _, g := range st.Registrations() {
		r.Registrants = append(r.Registrants, admin.Registrant{
			Initiator: g.Nexus.Initiator, ISID: hex.EncodeToString(g.Nexus.ISID[:]),
			Key: fmt.Sprintf("%#x", g.Key), Holder: g.Holder,
		})
	}
	return r
}

func (b backend) Volumes(ctx context.Context) ([]admin.Volume, error) {
	var out []admin.Volume
	for _, cv := range b.d.catalog.Volumes() {
		out = append(out, b.view(ctx, cv, false))
	}
	return out, nil
}

func (b backend) Volume(ctx context.Context, name string) (admin.Volume, error) {
	cv, err := b.d.catalog.Volume(name)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	return b.view(ctx, cv, true), nil
}

func (b backend) CreateVolume(ctx context.Context, req admin.CreateRequest) (admin.Volume, error) {
	if err := configs.ValidVolumeName(req.Name); err != nil {
		return admin.Volume{}, fmt.Errorf("%w: %w", admin.ErrInvalid, err)
	}
	if req.Target == "" && b.d.cfg.Has(configs.RoleTarget) {
		req.Target = b.d.cfg.NodeName
	}
	cv, err := b.d.catalog.CreateVolume(ctx, cluster.VolumeSpec{Name: req.Name, Size: req.Size, Replicas: req.Replicas, ChunkSize: req.ChunkSize, LogicalBlockSize: req.LogicalBlockSize, Target: req.Target})
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	if err := b.d.reconcile(ctx); err != nil {
		return admin.Volume{}, err
	}
	b.d.log.Info("volume created", "volume", cv.Name, "id", cv.ID, "size", cv.Size)
	return b.view(ctx, cv, false), nil
}

func (b backend) ResizeVolume(ctx context.Context, name string, size int64) (admin.Volume, error) {
	cv, err := b.d.catalog.ResizeVolume(ctx, name, size)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	if err := b.d.reconcile(ctx); err != nil {
		return admin.Volume{}, err
	}
	b.d.log.Info("volume resized", "volume", cv.Name, "size", cv.Size)
	return b.view(ctx, cv, false), nil
}

func (b backend) DeleteVolume(ctx context.Context, name string, force bool) error {
	d := b.d
	if _, err := d.catalog.Volume(name); err != nil {
		return apiError(err)
	}
	if n, i := d.sessions(name); n+i > 0 {
		if !force {
			return fmt.Errorf("%w: volume %q is attached (%d NBD connection(s), %d iSCSI session(s)); detach the clients or use --force to disconnect them", admin.ErrConflict, name, n, i)
		}
		d.log.Warn("force delete: disconnecting clients", "volume", name, "nbd_connections", n, "iscsi_sessions", i)
		d.disconnect(name)
	}
	if err := d.catalog.DeleteVolume(ctx, name); err != nil {
		return apiError(err)
	}
	d.log.Info("volume deleted", "volume", name)
	return d.reconcile(ctx)
}

// chunksCountedMax bounds the work of one chunksPerNode: 1 TiB of 1 MiB
// chunks.
const chunksCountedMax = 1 << 20

// chunksPerNode counts the chunk replicas each node of cv's placement set
// holds, from the catalog's placement; O(chunks), so only for one volume
// and only up to chunksCountedMax chunks (nil past it).
func chunksPerNode(cv cluster.Volume) map[string]int64 {
	if len(cv.Placement) == 0 || cv.ChunkSize <= 0 || cv.Size/cv.ChunkSize > chunksCountedMax {
		return nil
	}
	p := cluster.NewPlacer(cv)
	per := make(map[string]int64, len(cv.Placement))
	var out []string
	for c := range uint64((cv.Size + cv.ChunkSize - 1) / cv.ChunkSize) {
		out = p.Replicas(c, out[:0])
		for _, n := range out {
			per[n]++
		}
	}
	return per
}

// allocated returns the bytes of cv holding data, through the volume's own
// placement when it is open here (each chunk's first replica answers), else
// from the local store for a single-node volume; -1 when unknown.
func (d *daemon) allocated(ctx context.Context, cv cluster.Volume) int64 {
	if v, ok := d.volume(cv.Name); ok && v.ID() == cv.ID {
		var n int64
		err := v.Extents(ctx, 0, v.Info().Size, func(e target.Extent) bool {
			if !e.Hole {
				n += e.Length
			}
			return true
		})
		if err != nil {
			return -1
		}
		return n
	}
	if d.store != nil && len(cv.Placement) == 0 {
		if n, err := d.store.Allocated(ctx, cv.ID, cv.Epoch); err == nil {
			return int64(n) * int64(cv.BlockSize)
		}
	}
	return -1
}

func (b backend) AttachVolume(ctx context.Context, name, node string) (admin.Volume, error) {
	if node == "" {
		return admin.Volume{}, fmt.Errorf("%w: attach needs a target node", admin.ErrInvalid)
	}
	known := false
	for _, m := range b.d.gossip.Members() {
		known = known || (m.Name == node && m.Meta.HasRole(membership.RoleTarget))
	}
	if !known {
		return admin.Volume{}, fmt.Errorf("%w: node %q is not a target in gossip", admin.ErrInvalid, node)
	}
	cv, err := b.d.catalog.Attach(ctx, name, node)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	if err := b.d.reconcile(ctx); err != nil {
		return admin.Volume{}, err
	}
	b.d.log.Info("volume attachment moved", "volume", name, "target", node, "generation", cv.Generation)
	return b.view(ctx, cv, false), nil
}

func (b backend) Nodes(ctx context.Context) ([]admin.Node, error) {
	byName := map[string]*admin.Node{}
	var order []string
	get := func(name string) *admin.Node {
		if n, ok := byName[name]; ok {
			return n
		}
		n := &admin.Node{Name: name, Gossip: "unknown"}
		byName[name] = n
		order = append(order, name)
		return n
	}
	for _, m := range b.d.gossip.Members() {
		n := get(m.Name)
		n.Gossip = m.State.String()
		n.Roles, n.Zone = m.Meta.Roles, m.Meta.Zone
	}
	for _, cn := range b.d.catalog.Nodes() {
		n := get(cn.Name)
		n.State, n.Addr, n.CapacityBytes, n.UsedBytes = string(cn.State), cn.Addr, cn.CapacityBytes, cn.UsedBytes
		if n.Zone == "" {
			n.Zone = cn.Zone
		}
	}
	slices.Sort(order)
	out := make([]admin.Node, 0, len(order))
	for _, name := range order {
		out = append(out, *byName[name])
	}
	return out, nil
}

// nodeAskTimeout bounds each question `node show` asks a storage node.
const nodeAskTimeout = 10 * time.Second

func (b backend) Node(ctx context.Context, name string) (admin.NodeDetail, error) {
	ns, err := b.Nodes(ctx)
	if err != nil {
		return admin.NodeDetail{}, err
	}
	var nd admin.NodeDetail
	found := false
	for _, n := range ns {
		if n.Name == name {
			nd.Node, found = n, true
		}
	}
	if !found {
		return admin.NodeDetail{}, fmt.Errorf("%w: node %q", admin.ErrNotFound, name)
	}
	var cn *cluster.Node
	for _, n := range b.d.catalog.Nodes() {
		if n.Name == name {
			cn = &n
		}
	}
	for _, cv := range b.d.catalog.Volumes() {
		chunks := chunksPerNode(cv)[name]
		local := len(cv.Placement) == 0 && name == b.d.cfg.NodeName && b.d.store != nil
		if chunks == 0 && !local {
			continue
		}
		nv := admin.NodeVolume{Name: cv.Name, Chunks: chunks, Bytes: -1}
		if cn == nil && !local {
			nv.Error = "not a storage node in the catalog"
		} else if bytes, err := b.d.heldOn(ctx, cn, cv); err != nil {
			nv.Error = err.Error()
		} else {
			nv.Bytes = bytes
		}
		nd.Volumes = append(nd.Volumes, nv)
	}
	return nd, nil
}

// heldOn asks a storage node (cn; nil: this one) how many bytes of cv
// its store holds that the live volume can read.
func (d *daemon) heldOn(ctx context.Context, cn *cluster.Node, cv cluster.Volume) (int64, error) {
	var nd volume.Node
	if cn == nil {
		nd = d.node()
	} else {
		var err error
		if nd, err = d.storageNode(*cn); err != nil {
			return 0, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, nodeAskTimeout)
	defer cancel()
	var blocks uint64
	err := nd.Extents(ctx, cv.ID, 0, uint64(cv.Size/int64(cv.BlockSize)), cv.Epoch, func(_, count uint64, allocated bool) bool {
		if allocated {
			blocks += count
		}
		return true
	})
	return int64(blocks) * int64(cv.BlockSize), err
}
