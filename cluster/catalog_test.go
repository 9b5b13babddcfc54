package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// testLogger discards unless CAIRN_TEST_LOG is set (then Raft logs go to
// stderr at debug level).
func testLogger() *slog.Logger {
	if os.Getenv("CAIRN_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func open(t *testing.T, opts Options) *Catalog {
	t.Helper()
	opts.Logger = testLogger()
	c, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func openLeader(t *testing.T, opts Options) *Catalog {
	t.Helper()
	c := open(t, opts)
	if err := c.WaitLeader(ctx(t)); err != nil {
		t.Fatal(err)
	}
	registerNodes(t, c)
	return c
}

// registerNodes puts storage nodes s1..s3 in service, so that volumes of up
// to 3 replicas can be placed.
func registerNodes(t *testing.T, c *Catalog) {
	t.Helper()
	for _, n := range []string{"s1", "s2", "s3"} {
		if _, err := c.RegisterNode(ctx(t), Node{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCatalogVolumes(t *testing.T) {
	c := openLeader(t, TestOptions(t.TempDir()))
	ctx := ctx(t)
	if s := c.Status(); s.State != "Leader" || s.LeaderID != "test" || s.Address == "" || strings.HasSuffix(s.Address, ":0") {
		t.Fatalf("status %+v", s)
	}
	ch := c.Changes()
	before := time.Now()
	v, err := c.CreateVolume(ctx, VolumeSpec{Name: "vol0", Size: 1 << 30, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	<-ch // closed by the change
	if v.ID != 1 || v.Name != "vol0" || v.Size != 1<<30 || v.BlockSize != 4096 || v.ChunkSize != 1<<20 ||
		v.Replicas != 1 || v.Epoch != 1 || v.Generation != 0 || v.Created.Before(before.Add(-time.Second)) {
		t.Fatalf("created %+v", v)
	}
	if got, err := c.Volume("vol0"); err != nil || !reflect.DeepEqual(got, v) {
		t.Fatalf("Volume = %+v, %v; want %+v", got, err, v)
	}
	w, err := c.CreateVolume(ctx, VolumeSpec{Name: "a", Size: 8192, Replicas: 2})
	if err != nil {
		t.Fatal(err)
	}
	if w.ID != 2 {
		t.Fatalf("second ID %d", w.ID)
	}
	if vs := c.Volumes(); len(vs) != 2 || vs[0].Name != "a" || vs[1].Name != "vol0" {
		t.Fatalf("Volumes %+v", vs)
	}
	if v, err = c.ResizeVolume(ctx, "vol0", 2<<30); err != nil || v.Size != 2<<30 {
		t.Fatalf("resize: %+v, %v", v, err)
	}
	if v, err = c.Attach(ctx, "vol0", "node1"); err != nil || v.Generation != 1 || v.AttachedTo != "node1" {
		t.Fatalf("attach: %+v, %v", v, err)
	}
	if v, err = c.Attach(ctx, "vol0", "node2"); err != nil || v.Generation != 2 || v.AttachedTo != "node2" {
		t.Fatalf("attach: %+v, %v", v, err)
	}
	if err := c.DeleteVolume(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Volume("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted volume: %v", err)
	}
}

func TestCatalogErrors(t *testing.T) {
	c := openLeader(t, TestOptions(t.TempDir()))
	ctx := ctx(t)
	if _, err := c.CreateVolume(ctx, VolumeSpec{Name: "v", Size: 1 << 20, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	last := c.Status().LastIndex
	for _, tc := range []struct {
		name   string
		do     func() error
		want   error
		logged bool // whether the request reaches the log
	}{
		{"create exists", func() error {
			_, err := c.CreateVolume(ctx, VolumeSpec{Name: "v", Size: 4096, Replicas: 1})
			return err
		}, ErrExists, true},
		{"create bad name", func() error {
			_, err := c.CreateVolume(ctx, VolumeSpec{Name: "V!", Size: 4096, Replicas: 1})
			return err
		}, ErrInvalid, false},
		{"create bad size", func() error {
			_, err := c.CreateVolume(ctx, VolumeSpec{Name: "w", Size: 1000, Replicas: 1})
			return err
		}, ErrInvalid, false},
		{"create zero size", func() error { _, err := c.CreateVolume(ctx, VolumeSpec{Name: "w", Size: 0, Replicas: 1}); return err }, ErrInvalid, false},
		{"create replicas", func() error {
			_, err := c.CreateVolume(ctx, VolumeSpec{Name: "w", Size: 4096, Replicas: -1})
			return err
		}, ErrInvalid, false},
		{"delete missing", func() error { return c.DeleteVolume(ctx, "w") }, ErrNotFound, true},
		{"delete bad name", func() error { return c.DeleteVolume(ctx, "") }, ErrInvalid, false},
		{"resize shrink", func() error { _, err := c.ResizeVolume(ctx, "v", 4096); return err }, ErrShrink, true},
		{"resize missing", func() error { _, err := c.ResizeVolume(ctx, "w", 4096); return err }, ErrNotFound, true},
		{"resize unaligned", func() error { _, err := c.ResizeVolume(ctx, "v", 1<<21+1); return err }, ErrInvalid, false},
		{"attach missing", func() error { _, err := c.Attach(ctx, "w", "n"); return err }, ErrNotFound, true},
		{"attach bad node", func() error { _, err := c.Attach(ctx, "v", ""); return err }, ErrInvalid, false},
		{"cancelled", func() error {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			_, err := c.CreateVolume(cctx, VolumeSpec{Name: "w", Size: 4096, Replicas: 1})
			return err
		}, context.Canceled, false},
		{"volume missing", func() error { _, err := c.Volume("w"); return err }, ErrNotFound, false},
	} {
		err := tc.do()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
		idx := c.Status().LastIndex
		if logged := idx > last; logged != tc.logged {
			t.Errorf("%s: reached the log: %v, want %v", tc.name, logged, tc.logged)
		}
		last = idx
	}
	if vs := c.Volumes(); len(vs) != 1 || vs[0].Size != 1<<20 {
		t.Fatalf("errors changed the catalog: %+v", vs)
	}
}

func TestCatalogRestart(t *testing.T) {
	dir := t.TempDir()
	opts := TestOptions(dir)
	opts.UnsafeNoSync = false  // the production path
	opts.SnapshotThreshold = 4 // some state from a snapshot, some from the log
	c := openLeader(t, opts)
	ctx := ctx(t)
	for i := range 10 {
		if _, err := c.CreateVolume(ctx, VolumeSpec{Name: fmt.Sprintf("v%d", i), Size: 4096 * int64(i+1), Replicas: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Attach(ctx, "v3", "node7"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, "v5"); err != nil {
		t.Fatal(err)
	}
	// Reservations: one in the snapshot, one in the log after it.
	if err := c.SetReservations(ctx, "v1", []byte("in the snapshot")); err != nil {
		t.Fatal(err)
	}
	if err := c.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ResizeVolume(ctx, "v0", 1<<30); err != nil { // after the snapshot
		t.Fatal(err)
	}
	if err := c.SetReservations(ctx, "v2", []byte("in the log")); err != nil {
		t.Fatal(err)
	}
	want := c.Volumes()
	addr := c.Status().Address
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.CreateVolume(ctx, VolumeSpec{Name: "x", Size: 4096, Replicas: 1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("create after Close: %v", err)
	}
	if snaps, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*")); len(snaps) == 0 {
		t.Fatal("no snapshot on disk")
	}

	opts.Bind = addr // same address, as a restarted daemon would have
	c2 := openLeader(t, opts)
	if got := c2.Volumes(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after restart:\n%+v\nwant\n%+v", got, want)
	}
	for name, want := range map[string]string{"v1": "in the snapshot", "v2": "in the log", "v0": ""} {
		if got, err := c2.Reservations(name); err != nil || string(got) != want {
			t.Fatalf("reservations of %s after restart: %q, %v; want %q", name, got, err, want)
		}
	}
	v, err := c2.CreateVolume(ctx, VolumeSpec{Name: "new", Size: 4096, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	if v.ID != 11 {
		t.Fatalf("ID after restart %d, want 11", v.ID)
	}
	if err := c2.Bootstrap([]Server{{ID: "test", Address: addr}}); !errors.Is(err, ErrBootstrapped) {
		t.Fatalf("Bootstrap on existing state: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	good := TestOptions(dir)
	for name, edit := range map[string]func(*Options){
		"node id":      func(o *Options) { o.NodeID = "" },
		"dir":          func(o *Options) { o.Dir = "" },
		"bind":         func(o *Options) { o.Bind = "127.0.0.1" },
		"raft timings": func(o *Options) { o.LeaderLeaseTimeout = 2 * o.HeartbeatTimeout },
	} {
		o := good
		edit(&o)
		if c, err := Open(o); !errors.Is(err, ErrInvalid) {
			if c != nil {
				c.Close()
			}
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
	unspecified := good
	unspecified.Bind = "0.0.0.0:0"
	if c, err := Open(unspecified); err == nil {
		c.Close()
		t.Error("Open on 0.0.0.0: no error")
	}
	// The directory is locked by the first catalog; the second fails fast
	// and releases what it took.
	c := open(t, good)
	if c2, err := Open(good); !errors.Is(err, bbolt.ErrTimeout) {
		if c2 != nil {
			c2.Close()
		}
		t.Fatalf("second Open on a locked dir: %v, want a lock timeout", err)
	}
	c.Close()
	c3 := openLeader(t, good)
	c3.Close()
}

// TestCatalogThreeNodes bootstraps three managers the way the gossip layer
// will, checks replication, follower errors and a failover.
func TestCatalogThreeNodes(t *testing.T) {
	var cats []*Catalog
	var servers []Server
	for i := range 3 {
		o := TestOptions(t.TempDir())
		o.NodeID = fmt.Sprintf("m%d", i)
		o.BootstrapExpect = 3
		// Slower than the preset: three nodes under -race on a loaded
		// machine must not keep electing.
		o.HeartbeatTimeout, o.ElectionTimeout, o.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 200*time.Millisecond
		c := open(t, o)
		cats = append(cats, c)
		servers = append(servers, Server{ID: o.NodeID, Address: c.Status().Address})
	}
	if err := cats[0].Bootstrap(servers[1:]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Bootstrap without self: %v", err)
	}
	for _, c := range cats {
		if err := c.Bootstrap(servers); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range cats {
		if err := c.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	leader := func(alive []*Catalog) *Catalog {
		t.Helper()
		for {
			for _, c := range alive {
				if c.Status().State == "Leader" {
					if err := c.WaitLeader(ctx); err != nil {
						t.Fatal(err)
					}
					return c
				}
			}
			select {
			case <-ctx.Done():
				var st []Status
				for _, c := range alive {
					st = append(st, c.Status())
				}
				t.Fatalf("no leader: %+v", st)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	// create retries through a leadership change, as a client would.
	create := func(alive []*Catalog, name string) Volume {
		t.Helper()
		for {
			v, err := leader(alive).CreateVolume(ctx, VolumeSpec{Name: name, Size: 4096, Replicas: 3})
			if errors.Is(err, ErrNotLeader) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	waitVolume := func(c *Catalog, name string) Volume {
		t.Helper()
		for {
			ch := c.Changes()
			if v, err := c.Volume(name); err == nil {
				return v
			}
			select {
			case <-ch:
			case <-ctx.Done():
				t.Fatalf("%s never saw %s", c.Status().NodeID, name)
			}
		}
	}
	registerNodes(t, leader(cats))
	v := create(cats, "shared")
	for _, c := range cats {
		if got := waitVolume(c, "shared"); !reflect.DeepEqual(got, v) {
			t.Fatalf("%s has %+v, want %+v", c.Status().NodeID, got, v)
		}
	}
	l := leader(cats)
	var follower *Catalog
	var alive []*Catalog
	for _, c := range cats {
		if c != l {
			alive = append(alive, c)
			follower = c
		}
	}
	_, err := follower.CreateVolume(ctx, VolumeSpec{Name: "nope", Size: 4096, Replicas: 1})
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("create on a follower: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	w := create(alive, "after")
	if w.ID != v.ID+1 {
		t.Fatalf("ID after failover %d, want %d", w.ID, v.ID+1)
	}
	for _, c := range alive {
		waitVolume(c, "after")
	}
}

// TestConcurrentClients runs creates and reads from many goroutines (for
// the race detector) and checks that IDs are unique.
func TestConcurrentClients(t *testing.T) {
	c := openLeader(t, TestOptions(t.TempDir()))
	ctx := ctx(t)
	var wg sync.WaitGroup
	ids := make([]uint64, 16)
	for i := range ids {
		wg.Go(func() {
			v, err := c.CreateVolume(ctx, VolumeSpec{Name: fmt.Sprintf("v%02d", i), Size: 4096, Replicas: 1})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = v.ID
			_ = c.Volumes()
			_ = c.Status()
		})
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for _, id := range ids {
		if id == 0 || seen[id] {
			t.Fatalf("IDs %v", ids)
		}
		seen[id] = true
	}
}

// recorder is a slog.Handler that keeps records.
type recorder struct {
	attrs []slog.Attr
	log   *recLog // shared by the handlers WithAttrs derives
}

type recLog struct {
	mu   sync.Mutex
	recs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	s := rec.Level.String() + " " + rec.Message
	for _, a := range r.attrs {
		s += " " + a.String()
	}
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	r.log.recs = append(r.log.recs, s)
	return nil
}
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{attrs: append(r.attrs[:len(r.attrs):len(r.attrs)], as...), log: r.log}
}
func (r *recorder) WithGroup(string) slog.Handler { return r }

func TestRaftLogsToSlog(t *testing.T) {
	h := &recorder{log: &recLog{}}
	o := TestOptions(t.TempDir())
	o.Logger = slog.New(h)
	c, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitLeader(ctx(t)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	h.log.mu.Lock()
	defer h.log.mu.Unlock()
	for _, r := range h.log.recs {
		if strings.Contains(r, "INFO entering leader state") && strings.Contains(r, "component=raft") {
			return
		}
	}
	t.Fatalf("no leader line from raft in %q", h.log.recs)
}
