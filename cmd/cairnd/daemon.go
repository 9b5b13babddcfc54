package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/backend/wire"
	"cairn/cluster"
	"cairn/cluster/admin"
	"cairn/cluster/membership"
	"cairn/configs"
	"cairn/snapshot"
	"cairn/target"
	"cairn/target/iscsi"
	"cairn/target/nbd"
)

const (
	catalogWait     = 30 * time.Second // for the catalog to elect a leader at start
	shutdownTimeout = 10 * time.Second
)

// daemon wires one node's roles together. It owns every goroutine it starts:
// Close stops them and waits.
type daemon struct {
	cfg   *configs.Config
	log   *slog.Logger
	start time.Time

	store   *store.Store
	fence   *fence // in front of store, for local volumes and the node RPC
	rpc     *wire.Server
	catalog *cluster.Catalog
	gossip  *membership.Pool
	nbd     *nbd.Server
	iscsi   *iscsi.Server
	admin   *http.Server

	budget *target.Budget  // in-flight payload bytes of both front ends
	memory *memoryReleaser // returns the heap after a burst; nil without a budget

	tlsServer, tlsClient *tls.Config  // from [tls]; nil without
	unlockDir            func() error // releases the data_dir lock

	lin             lineageState           // what this node's store was given; flattens
	snapLocal       *snapshot.LocalTarget  // this target's part of snapshots
	holdSeconds     prometheus.Histogram   // held-ack windows of this target's volumes
	holdsEnded      *prometheus.CounterVec // their holds, by how each ended
	snapshotResults *prometheus.CounterVec // snapshots this node coordinated, by outcome
	peers           peers                  // clients of other storage nodes
	rpcMetrics      *rpcMetrics            // of the calls to them
	catchupRuns     *prometheus.CounterVec // replica catch-ups this target ran, by result
	catchupBytes    prometheus.Counter     // version record bytes they copied
	forwardClient   *http.Client           // carries catalog changes to the leader
	gossipTiming    membership.Timing

	nbdAddr, iscsiAddr, adminAddr, storageAddr string
	latency                                    time.Duration   // injected below the volumes (benchmarks)
	rpcLatency                                 time.Duration   // injected into the node data RPC's replies (benchmarks)
	delayed                                    *volume.Latency // the store behind latency, when latency > 0

	reconcileMu sync.Mutex // serializes reconcile
	mu          struct {
		sync.Mutex
		vols map[string]*volume.Volume
		// failovers of the replicated volumes in vols, by name
		failovers map[string]*replicaFailover
		snaps     map[string]*volume.Volume // read-only snapshot exports, by "vol@snap"
	}

	ctx       context.Context // cancelled by Close: every goroutine's
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// start runs the roles cfg lists: the store and its node RPC (storage),
// the catalog (every process holds it: managers vote, the others follow as
// non-voters), gossip, and NBD and iSCSI for the volumes attached here
// (target). On error everything started so far is stopped.
func start(ctx context.Context, cfg *configs.Config, log *slog.Logger, latency, rpcLatency time.Duration) (_ *daemon, err error) {
	d := &daemon{cfg: cfg, log: log, start: time.Now(), latency: latency, rpcLatency: rpcLatency, gossipTiming: gossipTiming}
	d.mu.vols = map[string]*volume.Volume{}
	d.rpcMetrics = newRPCMetrics()
	d.catchupRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cairn_replica_catchup_runs_total", Help: "Replica catch-ups this target ran, by result (included, failed).",
	}, []string{"result"})
	d.catchupBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "cairn_replica_catchup_bytes_total", Help: "Bytes of block versions replica catch-ups copied (records and data).",
	})
	d.mu.failovers = map[string]*replicaFailover{}
	d.mu.snaps = map[string]*volume.Volume{}
	d.lin.init()
	d.snapLocal = snapshot.NewLocalTarget(d.volume)
	// Before any volume opens: every hold's end goes to them.
	d.holdSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "cairn_snapshot_hold_seconds", Help: "How long a snapshot held a volume's acknowledgements at this target, from the epoch switch to the hold's end, however it ended (cairn_snapshot_holds_total says how).",
		Buckets: holdBuckets,
	})
	d.holdsEnded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cairn_snapshot_holds_total", Help: "Holds of a volume's acknowledgements at this target, by how they ended: released (by the coordinator), deadline (their own, the coordinator gone or late), bound (too many held), closed (the volume closed).",
	}, []string{"ended"})
	for _, r := range []string{volume.HoldReleased, volume.HoldDeadline, volume.HoldBound, volume.HoldClosed} {
		d.holdsEnded.WithLabelValues(r)
	}
	d.forwardClient = &http.Client{Timeout: forwardTimeout}
	ctx, d.cancel = context.WithCancel(ctx)
	d.ctx = ctx
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if cfg.TLS.Enabled() {
		// Mutual TLS 1.3 for Raft, the node RPC and the cluster's internal
		// calls; the admin API serves HTTPS with the same certificate.
		if d.tlsServer, d.tlsClient, err = wire.LoadTLS(cfg.TLS.CAFile, cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			return nil, fmt.Errorf("[tls]: %w", err)
		}
		d.forwardClient.Transport = &http.Transport{TLSClientConfig: d.tlsClient}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if d.unlockDir, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if err := d.openStorage(); err != nil {
		return nil, err
	}
	// Listen before joining gossip, so that the addresses it announces are
	// the bound ones.
	listen := func(key, addr string, dst *string) (net.Listener, error) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("[%s] listen: %w", key, err)
		}
		*dst = l.Addr().String()
		return l, nil
	}
	var sl, nl, il net.Listener
	if cfg.Has(configs.RoleStorage) || cfg.Has(configs.RoleTarget) {
		// The node RPC: a storage node's data, a target's snapshot calls.
		if sl, err = listen("storage", cfg.Storage.Listen, &d.storageAddr); err != nil {
			return nil, err
		}
	}
	if cfg.Has(configs.RoleTarget) {
		if nl, err = listen("nbd", cfg.NBD.Listen, &d.nbdAddr); err != nil {
			return nil, err
		}
		if il, err = listen("iscsi", cfg.ISCSI.Listen, &d.iscsiAddr); err != nil {
			return nil, err
		}
	}
	al, err := listen("admin", cfg.Admin.Listen, &d.adminAddr)
	if err != nil {
		return nil, err
	}
	expect := cfg.Raft.BootstrapExpect
	if !cfg.Has(configs.RoleManager) {
		expect = 0 // a non-voter, added by the leader
	}
	var raftTLS *cluster.TLSConfig
	if d.tlsServer != nil {
		raftTLS = &cluster.TLSConfig{Server: d.tlsServer, Client: d.tlsClient}
	}
	if d.catalog, err = cluster.Open(cluster.Options{
		TLS:             raftTLS,
		NodeID:          cfg.NodeName,
		Dir:             filepath.Join(cfg.DataDir, "catalog"),
		Bind:            cfg.Raft.Bind,
		BootstrapExpect: expect,
		Logger:          log,
		Forward:         d.forward,
	}); err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	if err := d.startGossip(); err != nil {
		return nil, err
	}
	if expect == 1 {
		// The single-node default: the catalog is ours alone, so wait for
		// it and serve the declared volumes before saying we serve.
		wctx, cancel := context.WithTimeout(ctx, catalogWait)
		err = d.catalog.WaitLeader(wctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("catalog: no leader within %s: %w", catalogWait, err)
		}
		if err := d.join(ctx); err != nil {
			return nil, err
		}
	}

	reg := prometheus.NewRegistry()
	d.snapshotResults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cairn_snapshots_total", Help: "Snapshots this node coordinated, by outcome (sealed or the failure reason); abandoned: pending snapshots of dead coordinators this node failed as the catalog leader.",
	}, []string{"outcome"})
	reg.MustRegister(d.holdSeconds, d.holdsEnded, d.snapshotResults, d.catchupRuns, d.catchupBytes)
	reg.MustRegister(d.rpcMetrics.collectors()...)
	reg.MustRegister(d.lin.collectors()...)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &volumeCollector{d: d}, &daemonCollector{d: d})

	if sl != nil {
		var b wire.Backend = noStore{}
		if d.fence != nil {
			b = d.fence
		}
		// Plain writes go to the store's page cache, unless latency is
		// injected below them (benchmarks): then every call waits.
		opts := wire.ServerOptions{Name: cfg.NodeName, Logger: log, TLS: d.tlsServer, InlineWrites: d.latency == 0}
		if cfg.Has(configs.RoleTarget) {
			opts.Snapshot = targetRPC{localTarget{d}}
		}
		if d.rpc, err = wire.NewServer(b, opts); err != nil {
			return nil, err
		}
		d.serve("node rpc", func() error { return d.rpc.Serve(sl) })
	}
	if nl != nil {
		// One in-flight budget and one connection limit for both front
		// ends: what a daemon gives all its clients together.
		lim := cfg.Limits
		d.budget = target.NewBudget(int64(lim.InflightBytes))
		conns := target.NewConnLimit(lim.Connections, lim.ConnectionsPerClient)
		var nbdTLS *tls.Config
		if cfg.NBD.TLS == "optional" || cfg.NBD.TLS == "require" {
			nbdTLS = d.tlsServer.Clone()
			nbdTLS.ClientAuth = tls.NoClientCert // NBD clients present no cluster certificate
		}
		d.nbd = nbd.NewServer(nbd.Options{Exports: exports{d}, Logger: log, Budget: d.budget, Limit: conns,
			TLS: nbdTLS, TLSMode: nbd.TLSMode(cfg.NBD.TLS),
			ReplyTimeout: time.Duration(lim.ReplyTimeout), RequestTimeout: time.Duration(lim.RequestTimeout)})
		d.serve("nbd server", func() error { return d.nbd.Serve(nl) })
		d.iscsi = iscsi.NewServer(iscsi.Options{Targets: iscsiTargets{d}, Logger: log, CHAP: d.chap, BlockSize: d.scsiBlockSize,
			Budget: d.budget, Limit: conns, ReplyTimeout: time.Duration(lim.ReplyTimeout), RequestTimeout: time.Duration(lim.RequestTimeout)})
		d.serve("iscsi server", func() error { return d.iscsi.Serve(il) })
	}

	tokenFile := cfg.Admin.TokenFile
	if tokenFile == "" {
		tokenFile = filepath.Join(cfg.DataDir, "admin.token")
	}
	token, err := admin.LoadToken(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("[admin] token_file: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", admin.Handler(backend{d}))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// Profiles for operators, on the admin listener (loopback by default).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	top := http.NewServeMux()
	top.HandleFunc("POST "+forwardPath, d.serveForward)
	top.Handle("/", admin.RequireToken(token, mux))
	d.admin = &http.Server{Handler: top, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	if d.tlsServer != nil {
		// HTTPS; a client certificate is optional (the CLI has none) but
		// checked when given, and the internal endpoints require one.
		at := d.tlsServer.Clone()
		at.ClientAuth = tls.VerifyClientCertIfGiven
		al = tls.NewListener(al, at)
	}
	d.serve("admin server", func() error {
		if err := d.admin.Serve(al); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})

	d.wg.Add(3)
	go d.manageVoters(ctx)
	go d.watchCatalog(ctx, expect != 1)
	go d.runFlattens(ctx)
	if d.store != nil {
		d.wg.Add(1)
		go d.reportUsage()
	}
	if d.budget != nil {
		d.memory = newMemoryReleaser(d.budget)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.memory.run(ctx)
		}()
	}

	log.Info("cairnd serving", "node", cfg.NodeName, "roles", strings.Join(cfg.Roles, ","), "nbd", d.nbdAddr, "iscsi", d.iscsiAddr, "admin", d.adminAddr,
		"storage", d.storageAddr, "gossip", d.gossip.Addr(), "raft", d.catalog.Status().Address,
		"data_dir", cfg.DataDir, "volumes", len(d.catalog.Volumes()))
	return d, nil
}

// gossipTiming is the failure detection of the pool; tests shorten it.
var gossipTiming = membership.TimingLAN()

// serve runs a server's loop on a goroutine the daemon owns.
func (d *daemon) serve(what string, fn func() error) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := fn(); err != nil {
			d.log.Error(what+" stopped", "err", err)
		}
	}()
}

// openStorage opens the block store of a storage node, behind injected
// latency for benchmarks and behind the fence.
func (d *daemon) openStorage() (err error) {
	if !d.cfg.Has(configs.RoleStorage) {
		return nil
	}
	if d.store, err = store.Open(filepath.Join(d.cfg.DataDir, "blocks"), store.Options{Logger: d.log, CacheBytes: int64(d.cfg.Storage.CacheSize), FlattenBytesPerSec: int64(d.cfg.Storage.FlattenRate),
		SegmentBytes: int64(d.cfg.Storage.SegmentSize)}); err != nil {
		return fmt.Errorf("open block store: %w", err)
	}
	var n volume.Node = d.store
	if d.latency > 0 {
		if d.delayed, err = volume.NewLatency(d.store, d.latency); err != nil {
			return err
		}
		n = d.delayed
	}
	d.fence = newFence(n, d.store, d.log)
	return nil
}

// join does what a node does once the catalog has a leader: it registers
// its store and creates the volumes its config declares, attached here.
func (d *daemon) join(ctx context.Context) error {
	if err := d.registerStorage(ctx); err != nil {
		return err
	}
	for _, vs := range d.cfg.Volumes {
		if _, err := d.catalog.Volume(vs.Name); err == nil {
			continue
		}
		spec := cluster.VolumeSpec{Name: vs.Name, Size: vs.Size, Replicas: vs.Replicas, LogicalBlockSize: vs.LogicalBlockSize}
		if d.cfg.Has(configs.RoleTarget) {
			spec.Target = d.cfg.NodeName
		}
		v, err := d.catalog.CreateVolume(ctx, spec)
		if err != nil && !errors.Is(err, cluster.ErrExists) {
			return fmt.Errorf("create declared volume %q: %w", vs.Name, err)
		}
		d.log.Info("created declared volume", "volume", v.Name, "id", v.ID, "size", v.Size)
	}
	return d.reconcile(ctx)
}

// watchCatalog opens, resizes and closes volumes as the catalog changes.
// With joining set (a cluster node, which did not wait for a leader at
// start), it first waits for one and joins.
func (d *daemon) watchCatalog(ctx context.Context, joining bool) {
	defer d.wg.Done()
	for joining {
		err := d.catalog.WaitLeader(ctx)
		if err == nil {
			if err = d.join(ctx); err == nil {
				d.log.Info("joined the cluster", "leader", d.catalog.Status().LeaderID)
				break
			}
		}
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("join the cluster; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(votersInterval):
		}
	}
	for {
		// Take the channel before reconciling, so that a change applied
		// while we reconcile wakes us again.
		changed := d.catalog.Changes()
		var retry <-chan time.Time
		if err := d.reconcile(ctx); err != nil {
			d.log.Error("reconcile volumes with catalog", "err", err)
			retry = time.After(reconcileRetry) // what failed is tried again
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-retry:
		}
	}
}

// reconcile makes this node match the catalog. As a target it serves the
// volumes attached here: it re-attaches (bumping the fencing generation)
// and opens new ones, applies resizes, and closes those deleted or moved
// away. As a storage node it raises each volume's fence to the catalog's
// generation and drops the data of deleted volumes once nothing is inside
// them. reconcileMu serializes reconciles (so a volume is attached once);
// d.mu is held only to read and change the map, never across a Raft apply
// or the store, so front-end lookups do not wait on the catalog.
func (d *daemon) reconcile(ctx context.Context) error {
	d.reconcileMu.Lock()
	defer d.reconcileMu.Unlock()
	all := d.catalog.Volumes()
	want := map[string]cluster.Volume{}
	for _, cv := range all {
		if d.cfg.Has(configs.RoleTarget) && cv.AttachedTo == d.cfg.NodeName {
			want[cv.Name] = cv
		}
	}
	type removal struct {
		name string
		v    *volume.Volume
	}
	var gone []removal
	var add []string
	var degraded, stopped []*replicaFailover
	d.mu.Lock()
	for name, v := range d.mu.vols {
		if cv, ok := want[name]; ok && cv.ID == v.ID() && cv.Generation == v.Generation() {
			v.SetSize(cv.Size)
			if fo := d.mu.failovers[name]; fo != nil {
				degraded = append(degraded, fo)
			}
			continue
		}
		delete(d.mu.vols, name) // no new lookups find it
		if fo := d.mu.failovers[name]; fo != nil {
			stopped = append(stopped, fo)
		}
		delete(d.mu.failovers, name)
		gone = append(gone, removal{name, v})
	}
	for name := range want {
		if _, ok := d.mu.vols[name]; !ok {
			add = append(add, name)
		}
	}
	d.mu.Unlock()

	var errs []error
	for _, fo := range stopped {
		fo.stop() // its catch-up ends before the volume closes
	}
	for _, fo := range degraded {
		// A replica another process took out (or one that caught up).
		errs = append(errs, fo.update(want[fo.name]))
	}
	for _, g := range gone {
		d.disconnect(g.name)
		// Close waits for the requests inside the volume: only then may its
		// data go, or a straggling write would leave orphaned keys.
		if err := g.v.Close(); err != nil {
			errs = append(errs, fmt.Errorf("volume %q: %w", g.name, err))
			continue
		}
		d.log.Info("volume closed", "volume", g.name, "id", g.v.ID())
	}
	if d.fence != nil {
		errs = append(errs, d.reconcileStorage(all))
		errs = append(errs, d.reconcileLineage(ctx, all))
	}
	errs = append(errs, d.reconcileSnapshots())
	for _, name := range add {
		if err := d.attach(ctx, want[name]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// attach re-attaches a volume the catalog attaches here, which bumps its
// fencing generation (so this attachment's writes carry higher seqs than
// any earlier one's and nodes refuse the old target's), and opens it.
func (d *daemon) attach(ctx context.Context, cv cluster.Volume) error {
	// Served only once every storage node holding it has its lineage:
	// their reports are catalog changes, which run reconcile again.
	if _, ok := d.lineageReady(cv.Name); !ok {
		return nil
	}
	av, err := d.catalog.Attach(ctx, cv.Name, d.cfg.NodeName)
	if err != nil {
		return fmt.Errorf("attach volume %q: %w", cv.Name, err)
	}
	if ok, _ := av.LineageReady(); !ok {
		return nil // changed under us (a rollback): the next round opens it
	}
	p, err := d.placement(av)
	if err != nil {
		return fmt.Errorf("open volume %q: %w", cv.Name, err)
	}
	opts := volume.Options{
		ID: av.ID, Size: av.Size, ChunkSize: av.ChunkSize,
		Generation: av.Generation, Epoch: av.Epoch,
		Placement:    p,
		Reservations: catalogReservations{d: d, name: cv.Name},
		OnHoldEnd:    d.holdEnded,
	}
	var fo *replicaFailover
	if cp, ok := p.(*chunkPlacement); ok && av.Replicas > 1 {
		// Replicated: a replica that fails is taken out and the volume goes on.
		fo = newReplicaFailover(d, av, cp)
		opts.Failover = fo
	}
	v, err := volume.Open(opts)
	if err != nil {
		return fmt.Errorf("open volume %q: %w", cv.Name, err)
	}
	if fo != nil {
		fo.v = v // before anyone can reach the volume
		fo.start()
	}
	d.mu.Lock()
	d.mu.vols[cv.Name] = v
	if fo != nil {
		d.mu.failovers[cv.Name] = fo
	} else {
		delete(d.mu.failovers, cv.Name)
	}
	d.mu.Unlock()
	d.log.Info("volume attached", "volume", cv.Name, "id", av.ID, "size", av.Size, "replicas", av.Replicas, "generation", av.Generation)
	return nil
}

// reconcileStorage raises the fence of every volume to its catalog
// generation and drops the data of volumes gone from the catalog.
func (d *daemon) reconcileStorage(all []cluster.Volume) error {
	live := map[uint64]bool{}
	for _, cv := range all {
		live[cv.ID] = true
		d.fence.setGeneration(cv.ID, cv.Generation)
	}
	var errs []error
	for _, id := range d.fence.known() {
		if live[id] {
			continue
		}
		if err := d.fence.drop(id); err != nil {
			errs = append(errs, fmt.Errorf("drop data of volume %d: %w", id, err))
			continue
		}
	}
	return errors.Join(errs...)
}

func (d *daemon) volume(name string) (*volume.Volume, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.mu.vols[name]
	return v, ok
}

// Close stops serving, makes every acknowledged write durable and closes the
// store and catalog. It is idempotent.
func (d *daemon) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		if d.cancel != nil {
			d.cancel()
		}
		if d.admin != nil {
			ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			errs = append(errs, d.admin.Shutdown(ctx))
			cancel()
		}
		if d.nbd != nil {
			errs = append(errs, d.nbd.Close())
		}
		if d.iscsi != nil {
			errs = append(errs, d.iscsi.Close())
		}
		d.mu.Lock()
		vols, snaps, fos := d.mu.vols, d.mu.snaps, d.mu.failovers
		d.mu.vols, d.mu.snaps, d.mu.failovers = map[string]*volume.Volume{}, map[string]*volume.Volume{}, map[string]*replicaFailover{}
		d.mu.Unlock()
		for _, fo := range fos {
			fo.stop()
		}
		for _, m := range []map[string]*volume.Volume{snaps, vols} {
			for _, v := range m {
				errs = append(errs, v.Close())
			}
		}
		if d.rpc != nil {
			errs = append(errs, d.rpc.Close())
		}
		if d.gossip != nil {
			if err := d.gossip.Leave(time.Second); err != nil {
				d.log.Warn("gossip leave", "err", err)
			}
			errs = append(errs, d.gossip.Close())
		}
		d.wg.Wait()
		errs = append(errs, d.closePeers())
		if d.delayed != nil {
			n, mean := d.delayed.Waited()
			d.log.Info("injected latency", "operations", n, "mean", mean)
			errs = append(errs, d.delayed.Close())
		}
		if d.store != nil {
			errs = append(errs, d.store.Sync(context.Background()), d.store.Close())
		}
		if d.catalog != nil {
			errs = append(errs, d.catalog.Close())
		}
		if d.unlockDir != nil {
			errs = append(errs, d.unlockDir())
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// exports serves the open volumes to the front ends.
type exports struct{ d *daemon }

func (e exports) Lookup(name string) (target.Device, bool) {
	if vol, snap, ok := splitSnapshot(name); ok {
		if v, ok := e.d.snapshotExport(vol, snap); ok {
			sn, _, ok := e.d.sealedSnapshot(vol, snap)
			if !ok {
				return nil, false // deleted since it was opened
			}
			return changeExport{Volume: v, d: e.d, name: vol, epoch: sn.Epoch}, true
		}
		return nil, false
	}
	v, ok := e.d.volume(name)
	if !ok {
		return nil, false
	}
	return changeExport{Volume: v, d: e.d, name: name}, true
}

func (e exports) List() []string {
	e.d.mu.Lock()
	defer e.d.mu.Unlock()
	names := make([]string, 0, len(e.d.mu.vols))
	for n := range e.d.mu.vols {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// iqn is the iSCSI target name of a volume.
func (d *daemon) iqn(volume string) string { return d.cfg.ISCSI.IQNPrefix + ":" + volume }

// sessions counts the front-end connections attached to a volume.
func (d *daemon) sessions(volume string) (nbdConns, iscsiSessions int) {
	if d.nbd != nil {
		nbdConns = d.nbd.Connections(volume)
	}
	if d.iscsi != nil {
		iscsiSessions = d.iscsi.Sessions(d.iqn(volume))
	}
	return nbdConns, iscsiSessions
}

// disconnect drops every front-end connection of a volume.
func (d *daemon) disconnect(volume string) {
	if d.nbd != nil {
		d.nbd.Disconnect(volume)
	}
	if d.iscsi != nil {
		d.iscsi.Disconnect(d.iqn(volume))
	}
}

// chap returns the CHAP credentials of a target ("" is discovery): a
// declared volume's own, else the [iscsi] ones.
func (d *daemon) chap(iqn string) (iscsi.Credentials, bool) {
	c := d.cfg.ISCSI
	global := iscsi.Credentials{User: c.ChapUser, Secret: c.ChapSecret, MutualUser: c.MutualUser, MutualSecret: c.MutualSecret}
	if iqn == "" {
		return global, c.DiscoveryAuth
	}
	for _, v := range d.cfg.Volumes {
		if v.ChapUser != "" && d.iqn(v.Name) == iqn {
			return iscsi.Credentials{User: v.ChapUser, Secret: v.ChapSecret, MutualUser: c.MutualUser, MutualSecret: c.MutualSecret}, true
		}
	}
	return global, c.ChapUser != ""
}

// iscsiTargets serves the open volumes as iSCSI targets <iqn_prefix>:<name>.
type iscsiTargets struct{ d *daemon }

func (t iscsiTargets) Lookup(iqn string) (target.Device, bool) {
	name, ok := strings.CutPrefix(iqn, t.d.cfg.ISCSI.IQNPrefix+":")
	if !ok {
		return nil, false
	}
	return exports(t).Lookup(name)
}

func (t iscsiTargets) List() []string {
	names := exports(t).List()
	for i, n := range names {
		names[i] = t.d.iqn(n)
	}
	return names
}

// node is the local storage node the volumes use: the store behind its
// fence.
func (d *daemon) node() volume.Node { return d.fence }

// catalogReservations keeps a volume's SCSI reservations in the catalog,
// so that they survive a restart of the daemon and follow the volume to
// another target. The volume checks every front end's requests against
// them; iSCSI changes them through the volume.
type catalogReservations struct {
	d    *daemon
	name string
}

func (r catalogReservations) Load(ctx context.Context) ([]byte, error) {
	return r.d.catalog.Reservations(r.name)
}

func (r catalogReservations) Save(ctx context.Context, state []byte) error {
	return r.d.catalog.SetReservations(ctx, r.name, state)
}

// scsiBlockSize is the logical block size a volume's iSCSI target presents.
func (d *daemon) scsiBlockSize(iqn string) int {
	name, _ := strings.CutPrefix(iqn, d.cfg.ISCSI.IQNPrefix+":")
	if vol, _, ok := splitSnapshot(name); ok {
		name = vol
	}
	if v, err := d.catalog.Volume(name); err == nil {
		return v.SCSIBlockSize()
	}
	return 512
}
