package main

import (
	"context"
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
	"cairn/cluster"
	"cairn/cluster/admin"
	"cairn/configs"
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
	catalog *cluster.Catalog
	nbd     *nbd.Server
	iscsi   *iscsi.Server
	admin   *http.Server

	nbdAddr, iscsiAddr, adminAddr string
	latency                       time.Duration   // injected below the volumes (benchmarks)
	delayed                       *volume.Latency // the store behind latency, when latency > 0

	reconcileMu sync.Mutex // serializes reconcile
	mu          struct {
		sync.Mutex
		vols map[string]*volume.Volume
	}

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// start opens the store and catalog, creates declared volumes, and starts
// serving. On error everything started so far is stopped.
func start(ctx context.Context, cfg *configs.Config, log *slog.Logger, latency time.Duration) (_ *daemon, err error) {
	d := &daemon{cfg: cfg, log: log, start: time.Now(), latency: latency}
	d.mu.vols = map[string]*volume.Volume{}
	ctx, d.cancel = context.WithCancel(ctx)
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if cfg.TLS.Enabled() || cfg.Gossip.SecretKeyFile != "" {
		// Raft and gossip still run plain on loopback: refuse rather than
		// run a cluster the config says is encrypted when it is not.
		return nil, errors.New("[tls] and gossip.secret_key_file: this cairnd does not run the cluster transports yet; use a loopback single node")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if d.store, err = store.Open(filepath.Join(cfg.DataDir, "blocks"), store.Options{Logger: log, CacheBytes: int64(cfg.Storage.CacheSize)}); err != nil {
		return nil, fmt.Errorf("open block store: %w", err)
	}
	if latency > 0 {
		if d.delayed, err = volume.NewLatency(d.store, latency); err != nil {
			return nil, err
		}
	}
	if d.catalog, err = cluster.Open(cluster.Options{
		NodeID:          cfg.NodeName,
		Dir:             filepath.Join(cfg.DataDir, "catalog"),
		Bind:            cfg.Raft.Bind,
		BootstrapExpect: cfg.Raft.BootstrapExpect,
		Logger:          log,
	}); err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, catalogWait)
	err = d.catalog.WaitLeader(wctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("catalog: no leader within %s: %w", catalogWait, err)
	}
	if cfg.Has(configs.RoleStorage) {
		// A storage node is in the catalog before any volume is placed.
		if _, err := d.catalog.RegisterNode(ctx, cluster.Node{Name: cfg.NodeName}); err != nil {
			return nil, fmt.Errorf("register storage node %q: %w", cfg.NodeName, err)
		}
	}
	for _, vs := range cfg.Volumes {
		if _, err := d.catalog.Volume(vs.Name); err == nil {
			continue
		}
		v, err := d.catalog.CreateVolume(ctx, cluster.VolumeSpec{Name: vs.Name, Size: vs.Size, Replicas: vs.Replicas, LogicalBlockSize: vs.LogicalBlockSize})
		if err != nil && !errors.Is(err, cluster.ErrExists) {
			return nil, fmt.Errorf("create declared volume %q: %w", vs.Name, err)
		}
		log.Info("created declared volume", "volume", v.Name, "id", v.ID, "size", v.Size)
	}
	if err := d.reconcile(ctx); err != nil {
		return nil, err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &volumeCollector{d: d})

	d.nbd = nbd.NewServer(nbd.Options{Exports: exports{d}, Logger: log})
	nl, err := net.Listen("tcp", cfg.NBD.Listen)
	if err != nil {
		return nil, fmt.Errorf("[nbd] listen: %w", err)
	}
	d.nbdAddr = nl.Addr().String()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.nbd.Serve(nl); err != nil {
			log.Error("nbd server stopped", "err", err)
		}
	}()

	d.iscsi = iscsi.NewServer(iscsi.Options{Targets: iscsiTargets{d}, Logger: log, CHAP: d.chap, Reservations: reservations{d}, BlockSize: d.scsiBlockSize})
	il, err := net.Listen("tcp", cfg.ISCSI.Listen)
	if err != nil {
		return nil, fmt.Errorf("[iscsi] listen: %w", err)
	}
	d.iscsiAddr = il.Addr().String()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.iscsi.Serve(il); err != nil {
			log.Error("iscsi server stopped", "err", err)
		}
	}()

	al, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return nil, fmt.Errorf("[admin] listen: %w", err)
	}
	d.adminAddr = al.Addr().String()
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
	d.admin = &http.Server{Handler: admin.RequireToken(token, mux), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.admin.Serve(al); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server stopped", "err", err)
		}
	}()

	d.wg.Add(1)
	go d.watchCatalog(ctx)

	log.Info("cairnd serving", "node", cfg.NodeName, "nbd", d.nbdAddr, "iscsi", d.iscsiAddr, "admin", d.adminAddr,
		"data_dir", cfg.DataDir, "volumes", len(d.catalog.Volumes()))
	return d, nil
}

// watchCatalog opens, resizes and closes volumes as the catalog changes.
func (d *daemon) watchCatalog(ctx context.Context) {
	defer d.wg.Done()
	for {
		// Take the channel before reconciling, so that a change applied
		// while we reconcile wakes us again.
		changed := d.catalog.Changes()
		if err := d.reconcile(ctx); err != nil {
			d.log.Error("reconcile volumes with catalog", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// reconcile makes the open volumes match the catalog: it attaches and opens
// new ones, applies resizes, and closes and drops the data of deleted ones.
// reconcileMu serializes reconciles (so a volume is attached once); d.mu is
// held only to read and change the map, never across a Raft apply or the
// store, so front-end lookups do not wait on the catalog.
func (d *daemon) reconcile(ctx context.Context) error {
	d.reconcileMu.Lock()
	defer d.reconcileMu.Unlock()
	want := map[string]cluster.Volume{}
	for _, cv := range d.catalog.Volumes() {
		want[cv.Name] = cv
	}
	type removal struct {
		name string
		v    *volume.Volume
	}
	var gone []removal
	var add []string
	d.mu.Lock()
	for name, v := range d.mu.vols {
		if cv, ok := want[name]; ok && cv.ID == v.ID() {
			v.SetSize(cv.Size)
			continue
		}
		delete(d.mu.vols, name) // no new lookups find it
		gone = append(gone, removal{name, v})
	}
	for name := range want {
		if _, ok := d.mu.vols[name]; !ok {
			add = append(add, name)
		}
	}
	d.mu.Unlock()

	var errs []error
	for _, g := range gone {
		d.disconnect(g.name)
		// Close waits for the requests inside the volume: only then may its
		// data go, or a straggling write would leave orphaned keys.
		if err := g.v.Close(); err != nil {
			errs = append(errs, fmt.Errorf("volume %q: data kept: %w", g.name, err))
			continue
		}
		if err := d.store.DropVolume(g.v.ID()); err != nil {
			errs = append(errs, fmt.Errorf("drop data of volume %q: %w", g.name, err))
		}
		d.log.Info("volume removed", "volume", g.name, "id", g.v.ID())
	}
	for _, name := range add {
		// Attaching bumps the fencing generation, so this attachment's
		// writes carry higher seqs than any earlier one's.
		av, err := d.catalog.Attach(ctx, name, d.cfg.NodeName)
		if err != nil {
			errs = append(errs, fmt.Errorf("attach volume %q: %w", name, err))
			continue
		}
		v, err := volume.Open(volume.Options{
			ID: av.ID, Size: av.Size, ChunkSize: av.ChunkSize,
			Generation: av.Generation, Epoch: av.Epoch,
			Placement: volume.NewLocal(d.node()),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("open volume %q: %w", name, err))
			continue
		}
		d.mu.Lock()
		d.mu.vols[name] = v
		d.mu.Unlock()
		d.log.Info("volume attached", "volume", name, "id", av.ID, "size", av.Size, "generation", av.Generation)
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
		d.wg.Wait()
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
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// exports serves the open volumes to the front ends.
type exports struct{ d *daemon }

func (e exports) Lookup(name string) (target.Device, bool) {
	v, ok := e.d.volume(name)
	if !ok {
		return nil, false
	}
	return v, true
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

// node is the local storage node the volumes use.
func (d *daemon) node() volume.Node {
	if d.delayed != nil {
		return d.delayed
	}
	return d.store
}

// reservations keeps iSCSI persistent reservations in the catalog, so they
// survive a restart of the daemon.
type reservations struct{ d *daemon }

func (r reservations) volume(iqn string) (string, error) {
	v, ok := strings.CutPrefix(iqn, r.d.cfg.ISCSI.IQNPrefix+":")
	if !ok {
		return "", fmt.Errorf("iqn %q is outside the prefix %q", iqn, r.d.cfg.ISCSI.IQNPrefix)
	}
	return v, nil
}

func (r reservations) LoadReservations(ctx context.Context, iqn string) ([]byte, error) {
	v, err := r.volume(iqn)
	if err != nil {
		return nil, err
	}
	return r.d.catalog.Reservations(v)
}

func (r reservations) SaveReservations(ctx context.Context, iqn string, state []byte) error {
	v, err := r.volume(iqn)
	if err != nil {
		return err
	}
	return r.d.catalog.SetReservations(ctx, v, state)
}

// scsiBlockSize is the logical block size a volume's iSCSI target presents.
func (d *daemon) scsiBlockSize(iqn string) int {
	name, _ := strings.CutPrefix(iqn, d.cfg.ISCSI.IQNPrefix+":")
	if v, err := d.catalog.Volume(name); err == nil {
		return v.SCSIBlockSize()
	}
	return 512
}
