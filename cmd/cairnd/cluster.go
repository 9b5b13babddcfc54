package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cairn/backend/volume"
	"cairn/backend/wire"
	"cairn/cluster"
	"cairn/cluster/membership"
	"cairn/configs"
	"cairn/target"
)

// The cluster side of a daemon: its gossip membership, the catalog's
// voters (bootstrap from gossip, managers added as voters and the other
// processes as non-voters), changes forwarded to the leader, and the
// storage nodes a volume's chunks live on.

const (
	// votersInterval is how often the leader looks for gossip members the
	// catalog's Raft configuration lacks, and a manager that has not
	// bootstrapped looks for bootstrap_expect managers.
	votersInterval = 500 * time.Millisecond
	// forwardTimeout bounds one forwarded change.
	forwardTimeout = 15 * time.Second
	// forwardBytesMax bounds a forwarded command or reply.
	forwardBytesMax = 1 << 20
	// forwardPath is the leader's endpoint for changes forwarded by others,
	// on the admin listener.
	forwardPath = "/internal/v1/catalog/apply"
)

// meta is what this node announces in gossip.
func (d *daemon) meta() membership.Meta {
	m := membership.Meta{
		Name:  d.cfg.NodeName,
		Roles: slices.Clone(d.cfg.Roles),
		Zone:  d.cfg.Zone,
		Addrs: membership.Addrs{
			Storage: d.storageAddr,
			Admin:   d.adminAddr,
			NBD:     d.nbdAddr,
			ISCSI:   d.iscsiAddr,
		},
	}
	if d.catalog != nil {
		m.Addrs.Raft = d.catalog.Status().Address
	}
	return m
}

// startGossip starts this node's gossip with its metadata. The seeds are
// joined in the background (seedLoop): a node may start before its seeds.
func (d *daemon) startGossip() error {
	var key []byte
	if f := d.cfg.Gossip.SecretKeyFile; f != "" {
		var err error
		if key, err = readGossipKey(f); err != nil {
			return fmt.Errorf("[gossip] secret_key_file: %w", err)
		}
	}
	p, err := membership.Start(membership.Options{
		NodeName:  d.cfg.NodeName,
		BindAddr:  d.cfg.Gossip.Bind,
		Meta:      d.meta(),
		Logger:    d.log,
		Timing:    d.gossipTiming,
		SecretKey: key,
	})
	if err != nil {
		return fmt.Errorf("[gossip]: %w", err)
	}
	d.gossip = p
	if len(d.cfg.Gossip.Join) > 0 {
		d.wg.Add(1)
		go d.seedLoop()
	}
	return nil
}

// seedInterval is how often a node that sees no other member joins its
// seeds again: at start until one answers, and after it found itself alone
// (its peers restarted, or it did).
const seedInterval = 2 * time.Second

// seedLoop joins the configured seeds whenever this node is alone in its
// gossip view, until the daemon stops.
func (d *daemon) seedLoop() {
	defer d.wg.Done()
	ctx := d.ctx
	logged := false
	for {
		alive := 0
		for _, m := range d.gossip.Members() {
			if m.State == membership.StateAlive {
				alive++
			}
		}
		if alive <= 1 {
			n, err := d.gossip.Join(d.cfg.Gossip.Join)
			switch {
			case err == nil:
				d.log.Info("gossip joined", "seeds_answered", n)
				logged = false
			case !logged:
				d.log.Warn("gossip: no seed answers yet; retrying", "seeds", d.cfg.Gossip.Join, "err", err)
				logged = true
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(seedInterval):
		}
	}
}

// member returns the gossip record of an alive node.
func (d *daemon) member(name string) (membership.Member, bool) {
	if d.gossip == nil {
		return membership.Member{}, false
	}
	m, ok := d.gossip.Member(name)
	if !ok || m.State != membership.StateAlive || m.MetaErr != nil {
		return membership.Member{}, false
	}
	return m, true
}

// forward is the catalog's Forwarder: it posts the command to the
// leader's admin listener, found in gossip.
func (d *daemon) forward(ctx context.Context, leader string, cmd []byte) ([]byte, error) {
	m, ok := d.member(leader)
	if !ok || m.Meta.Addrs.Admin == "" {
		return nil, fmt.Errorf("leader %s is not in gossip", leader)
	}
	b, err := d.postInternal(ctx, m.Meta.Addrs.Admin, forwardPath, cmd)
	if err != nil {
		return nil, fmt.Errorf("leader %s: %w", leader, err)
	}
	return b, nil
}

// postInternal posts body to another node's internal endpoint (the
// forwarded changes, the snapshot steps) and returns the reply, bounded in
// time (forwardTimeout) and size (forwardBytesMax); a status other than
// 200 is an error carrying the reply's text.
func (d *daemon) postInternal(ctx context.Context, addr, path string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.internalURL(addr, path), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := d.forwardClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, forwardBytesMax+1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d: %s", path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if len(b) > forwardBytesMax {
		return nil, fmt.Errorf("%s: reply larger than %d bytes", path, forwardBytesMax)
	}
	return b, nil
}

// internalURL is the URL of another node's internal endpoint.
func (d *daemon) internalURL(addr, path string) string {
	if d.tlsServer != nil {
		return "https://" + addr + path
	}
	return "http://" + addr + path
}

// peerAllowed says whether a request to an internal endpoint comes from a
// cluster node: with [tls], one presenting a certificate of the cluster
// CA; without, a loopback peer (config validation keeps every cluster
// transport on loopback without TLS).
func (d *daemon) peerAllowed(r *http.Request) bool {
	if d.tlsServer != nil {
		return r.TLS != nil && len(r.TLS.VerifiedChains) > 0
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// serveForward applies a change another node forwarded.
func (d *daemon) serveForward(w http.ResponseWriter, r *http.Request) {
	if !d.peerAllowed(r) {
		http.Error(w, "forwarded changes are taken from cluster nodes only", http.StatusForbidden)
		return
	}
	cmd, err := io.ReadAll(http.MaxBytesReader(w, r.Body, forwardBytesMax))
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	reply, err := d.catalog.ApplyForwarded(r.Context(), cmd)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(reply)
}

// manageVoters runs while the daemon does: before the catalog has Raft
// state, it bootstraps it once bootstrap_expect managers are in gossip
// (every one of them proposes the same set: the first bootstrap_expect by
// name); on the leader, it adds the managers gossip shows as voters and
// every other cairnd as a non-voter, so that all of them hold the catalog.
func (d *daemon) manageVoters(ctx context.Context) {
	defer d.wg.Done()
	t := time.NewTicker(votersInterval)
	defer t.Stop()
	bootstrapped := d.cfg.Raft.BootstrapExpect <= 1
	for {
		if !bootstrapped {
			bootstrapped = d.tryBootstrap()
		}
		if d.catalog.IsLeader() {
			d.addMembers(ctx)
			d.failAbandoned(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tryBootstrap bootstraps the catalog if bootstrap_expect managers are
// alive in gossip and this node is one of the first that many by name. It
// reports whether there is nothing left to do.
func (d *daemon) tryBootstrap() bool {
	if d.catalog.Status().LeaderID != "" {
		return true // a catalog already exists and we are in it
	}
	var servers []cluster.Server
	for _, m := range d.gossip.Members() {
		if m.State == membership.StateAlive && m.MetaErr == nil && m.Meta.HasRole(membership.RoleManager) && m.Meta.Addrs.Raft != "" {
			servers = append(servers, cluster.Server{ID: m.Name, Address: m.Meta.Addrs.Raft})
		}
	}
	want := d.cfg.Raft.BootstrapExpect
	if len(servers) < want {
		return false
	}
	slices.SortFunc(servers, func(a, b cluster.Server) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	servers = servers[:want]
	if !slices.ContainsFunc(servers, func(s cluster.Server) bool { return s.ID == d.cfg.NodeName }) {
		return true // the first managers bootstrap; the leader adds us
	}
	switch err := d.catalog.Bootstrap(servers); {
	case err == nil:
		d.log.Info("catalog bootstrapped from gossip", "servers", len(servers))
		return true
	case errors.Is(err, cluster.ErrBootstrapped):
		return true
	default:
		d.log.Error("catalog bootstrap", "err", err)
		return false
	}
}

// addMembers adds alive gossip members missing from the Raft configuration.
func (d *daemon) addMembers(ctx context.Context) {
	have, err := d.catalog.Members()
	if err != nil {
		return
	}
	for _, m := range d.gossip.Members() {
		if m.State != membership.StateAlive || m.MetaErr != nil || m.Meta.Addrs.Raft == "" {
			continue
		}
		if _, ok := have[m.Name]; ok {
			continue
		}
		s := cluster.Server{ID: m.Name, Address: m.Meta.Addrs.Raft}
		actx, cancel := context.WithTimeout(ctx, forwardTimeout)
		if m.Meta.HasRole(membership.RoleManager) {
			err = d.catalog.AddVoter(actx, s)
		} else {
			err = d.catalog.AddNonvoter(actx, s)
		}
		cancel()
		if err != nil {
			d.log.Warn("add catalog member", "node", m.Name, "err", err)
		}
	}
}

// peers holds the clients of other storage nodes, by node name, each
// dialled at its address in the catalog.
type peers struct {
	mu    sync.Mutex
	m     map[string]*wire.Client
	nodes map[string]*meteredNode // each client in m, timed
	addr  map[string]string       // of each client in m
	stale []*wire.Client          // replaced clients, closed at Close
	// ctl are the control clients (controlPeer), one connection each,
	// and the address each dialed.
	ctl     map[string]*wire.Client
	ctlAddr map[string]string
}

// storageNode returns the volume.Node for a storage node of the catalog:
// this process's store, or a client of the node's RPC address.
func (d *daemon) storageNode(n cluster.Node) (volume.Node, error) {
	if n.Name == d.cfg.NodeName && d.store != nil {
		return d.node(), nil
	}
	if n.Addr == "" {
		return nil, fmt.Errorf("storage node %s has no RPC address in the catalog", n.Name)
	}
	_, mn, err := d.peerLocked(n.Name, n.Addr)
	if err != nil {
		return nil, fmt.Errorf("storage node %s: %w", n.Name, err)
	}
	return mn, nil
}

// peer returns the node RPC client of another node at addr, the one its
// data calls use (the snapshot protocol has its own: controlPeer).
func (d *daemon) peer(name, addr string) (*wire.Client, error) {
	c, _, err := d.peerLocked(name, addr)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	return c, nil
}

// peerLocked returns the client of a node and its metered view, making
// them on first use or when the node moved to another address (volumes
// opened before keep the old client until they reopen).
func (d *daemon) peerLocked(name, addr string) (*wire.Client, *meteredNode, error) {
	d.peers.mu.Lock()
	defer d.peers.mu.Unlock()
	if c, ok := d.peers.m[name]; ok {
		if d.peers.addr[name] == addr {
			return c, d.peers.nodes[name], nil
		}
		d.peers.stale = append(d.peers.stale, c)
	}
	c, err := wire.NewClient(addr, wire.ClientOptions{Name: d.cfg.NodeName, Conns: 2, Logger: d.log, TLS: d.tlsClient, InjectLatency: d.rpcLatency})
	if err != nil {
		return nil, nil, err
	}
	if d.peers.m == nil {
		d.peers.m, d.peers.nodes, d.peers.addr = map[string]*wire.Client{}, map[string]*meteredNode{}, map[string]string{}
	}
	mn := d.rpcMetrics.wrap(name, c)
	d.peers.m[name], d.peers.nodes[name], d.peers.addr[name] = c, mn, addr
	return c, mn, nil
}

// controlPeer returns the control client of a node: its own single
// connection, which carries the snapshot protocol's calls only, so that a
// hold or release is never queued behind data frames — in this node's
// writer, in the peer's reader, or among the replies coming back — on the
// connections the volumes' I/O uses (peer). Made on first use, remade
// when the node moved to another address.
func (d *daemon) controlPeer(name, addr string) (*wire.Client, error) {
	d.peers.mu.Lock()
	defer d.peers.mu.Unlock()
	if c, ok := d.peers.ctl[name]; ok {
		if d.peers.ctlAddr[name] == addr {
			return c, nil
		}
		d.peers.stale = append(d.peers.stale, c)
	}
	c, err := wire.NewClient(addr, wire.ClientOptions{Name: d.cfg.NodeName, Conns: 1, Logger: d.log, TLS: d.tlsClient})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	if d.peers.ctl == nil {
		d.peers.ctl, d.peers.ctlAddr = map[string]*wire.Client{}, map[string]string{}
	}
	d.peers.ctl[name], d.peers.ctlAddr[name] = c, addr
	return c, nil
}

func (d *daemon) closePeers() error {
	d.peers.mu.Lock()
	defer d.peers.mu.Unlock()
	var errs []error
	for _, c := range d.peers.m {
		errs = append(errs, c.Close())
	}
	for _, c := range d.peers.ctl {
		errs = append(errs, c.Close())
	}
	d.peers.ctl, d.peers.ctlAddr = nil, nil
	for _, c := range d.peers.stale {
		errs = append(errs, c.Close())
	}
	d.peers.m, d.peers.nodes, d.peers.stale = nil, nil, nil
	return errors.Join(errs...)
}

// placement returns the volume.Placement of a catalog volume: every chunk
// on the local store for a volume from before placement, else the chunk's
// replica set from the catalog's placement set.
func (d *daemon) placement(cv cluster.Volume) (volume.Placement, error) {
	return d.placementWith(cv, nil)
}

// placementWith is placement with join's replica, if set, a joining member
// of its chunks' replica sets (catchup.go).
func (d *daemon) placementWith(cv cluster.Volume, join *catchup) (volume.Placement, error) {
	if len(cv.Placement) == 0 {
		if d.store == nil {
			return nil, fmt.Errorf("volume %q has no placement and this node no store", cv.Name)
		}
		return volume.NewLocal(d.node()), nil
	}
	byName := map[string]cluster.Node{}
	for _, n := range d.catalog.Nodes() {
		byName[n.Name] = n
	}
	nodes := map[string]volume.Node{}
	for _, m := range cv.Placement {
		n, ok := byName[m.Node]
		if !ok {
			return nil, fmt.Errorf("volume %q: storage node %s is not in the catalog", cv.Name, m.Node)
		}
		nd, err := d.storageNode(n)
		if err != nil {
			return nil, fmt.Errorf("volume %q: %w", cv.Name, err)
		}
		nodes[m.Node] = nd
	}
	p := newChunkPlacement(cv, nodes, d.cfg.NodeName, join)
	return p, nil
}

// chunkPlacement is a volume.Placement over the catalog's placement set.
// Replica sets are computed once per chunk, on first use, and interned:
// the table holds a small index per chunk, in pages published atomically,
// so Replicas takes no lock once a chunk's page exists.
type chunkPlacement struct {
	placer *cluster.Placer
	nodes  map[string]volume.Node
	all    []volume.Node // the nodes not stale
	local  string
	stale  []string // members left out of every replica set (cluster.Volume.Stale)
	// join, if set, is a member catching up: last in its chunks' sets as
	// joining, which serves no reads (catchup.go); joinNode is it.
	join     *catchup
	joinNode volume.Node

	pages []atomic.Pointer[[chunkPageLen]uint32]
	sets  atomic.Pointer[[][]volume.Node] // copy on write under mu

	mu          sync.Mutex
	setIndex    map[string]uint32 // guarded by mu
	replicasBuf []string          // guarded by mu
}

// chunkPageLen is the chunks per page of the replica-set table.
const chunkPageLen = 4096

// placementChunksMax bounds the table: 64 TiB of the smallest chunks.
const placementChunksMax = 64 << 40 / (64 << 10)

func newChunkPlacement(cv cluster.Volume, nodes map[string]volume.Node, local string, join *catchup) *chunkPlacement {
	p := &chunkPlacement{
		placer:   cluster.NewPlacer(cv),
		nodes:    nodes,
		local:    local,
		stale:    slices.Clone(cv.Stale),
		setIndex: map[string]uint32{},
	}
	if join != nil && nodes[join.node] != nil {
		p.join, p.joinNode = join, join.wrap(nodes[join.node])
	}
	chunks := min(uint64(64<<40)/uint64(cv.ChunkSize), placementChunksMax)
	p.pages = make([]atomic.Pointer[[chunkPageLen]uint32], chunks/chunkPageLen+1)
	p.sets.Store(&[][]volume.Node{})
	for _, m := range cv.Placement {
		if !slices.Contains(p.stale, m.Node) && !p.joins(m.Node) {
			p.all = append(p.all, nodes[m.Node])
		}
	}
	if p.join != nil {
		p.all = append(p.all, p.joinNode)
	}
	return p
}

// joins reports whether name is the member catching up.
func (p *chunkPlacement) joins(name string) bool { return p.join != nil && p.join.node == name }

// nameOf returns the name of a node of the placement that is not stale.
func (p *chunkPlacement) nameOf(nd volume.Node) (string, bool) {
	for name, n := range p.nodes {
		if n == nd && !slices.Contains(p.stale, name) {
			return name, true
		}
	}
	return "", false
}

// Replicas implements volume.Placement: the chunk's replicas, the local
// node first when it holds one (reads go to the first).
func (p *chunkPlacement) Replicas(chunk uint64) []volume.Node {
	pi := chunk / chunkPageLen
	if pi >= uint64(len(p.pages)) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return (*p.sets.Load())[p.intern(chunk)]
	}
	page := p.pages[pi].Load()
	if page == nil {
		p.mu.Lock()
		if page = p.pages[pi].Load(); page == nil {
			page = new([chunkPageLen]uint32)
			for i := range page {
				page[i] = p.intern(pi*chunkPageLen + uint64(i))
			}
			p.pages[pi].Store(page)
		}
		p.mu.Unlock()
	}
	return (*p.sets.Load())[page[chunk%chunkPageLen]]
}

// intern computes a chunk's replica set and returns its index in sets.
// The caller holds mu.
func (p *chunkPlacement) intern(chunk uint64) uint32 {
	names := p.placer.Replicas(chunk, p.replicasBuf[:0])
	p.replicasBuf = names
	joins := p.join != nil && slices.Contains(names, p.join.node)
	if len(p.stale) > 0 || joins {
		// The catalog keeps a replica of every chunk out of the stale list.
		names = slices.DeleteFunc(names, func(n string) bool { return slices.Contains(p.stale, n) || p.joins(n) })
	}
	if i := slices.Index(names, p.local); i > 0 {
		names[0], names[i] = names[i], names[0]
	}
	key := strings.Join(names, "\x00")
	if joins {
		key += "\x01" // and the joining member, last
	}
	if i, ok := p.setIndex[key]; ok {
		return i
	}
	set := make([]volume.Node, len(names), len(names)+1)
	for i, n := range names {
		set[i] = p.nodes[n]
	}
	if joins {
		set = append(set, p.joinNode)
	}
	sets := append(slices.Clone(*p.sets.Load()), set)
	p.sets.Store(&sets)
	i := uint32(len(sets) - 1)
	p.setIndex[key] = i
	return i
}

// Nodes implements volume.Placement.
func (p *chunkPlacement) Nodes() []volume.Node { return p.all }

// registerStorage records this node in the catalog as a storage node at
// its RPC address.
func (d *daemon) registerStorage(ctx context.Context) error {
	if !d.cfg.Has(configs.RoleStorage) {
		return nil
	}
	_, err := d.catalog.RegisterNode(ctx, cluster.Node{Name: d.cfg.NodeName, Zone: d.cfg.Zone, Addr: d.storageAddr})
	if err != nil {
		return fmt.Errorf("register storage node %q: %w", d.cfg.NodeName, err)
	}
	return nil
}

// readGossipKey reads the cluster's gossip key: 16, 24 or 32 bytes, raw
// or base64 (as `head -c 32 /dev/urandom | base64` writes it). A key file
// others may read is refused.
func readGossipKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %v: others may read the cluster key; chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(b); len(t) > 0 {
		if k, err := base64.StdEncoding.DecodeString(string(t)); err == nil && validKeyLen(len(k)) {
			return k, nil
		}
	}
	if validKeyLen(len(b)) {
		return b, nil
	}
	return nil, fmt.Errorf("%s: want a 16, 24 or 32-byte key, raw or base64", path)
}

func validKeyLen(n int) bool { return n == 16 || n == 24 || n == 32 }

// locate finds the node a volume (or a snapshot of it) is attached to, if
// not this one, and that node's front-end address from gossip.
func (d *daemon) locate(name string, iscsi bool) (node, addr string, ok bool) {
	if vol, _, snap := splitSnapshot(name); snap {
		name = vol
	}
	cv, err := d.catalog.Volume(name)
	if err != nil || cv.AttachedTo == "" || cv.AttachedTo == d.cfg.NodeName {
		return "", "", false
	}
	m, ok := d.member(cv.AttachedTo)
	if !ok {
		return "", "", false
	}
	addr = m.Meta.Addrs.NBD
	if iscsi {
		addr = m.Meta.Addrs.ISCSI
	}
	return cv.AttachedTo, addr, addr != ""
}

// Locate implements target.Locator for NBD.
func (e exports) Locate(name string) (string, string, bool) { return e.d.locate(name, false) }

// Locate implements target.Locator for iSCSI target names.
func (t iscsiTargets) Locate(iqn string) (string, string, bool) {
	name, ok := strings.CutPrefix(iqn, t.d.cfg.ISCSI.IQNPrefix+":")
	if !ok {
		return "", "", false
	}
	return t.d.locate(name, true)
}

var (
	_ target.Locator = exports{}
	_ target.Locator = iscsiTargets{}
)
