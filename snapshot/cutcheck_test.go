package snapshot

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/target"
)

var cutLong = flag.Bool("cutcheck.long", os.Getenv("CAIRN_CUTCHECK_LONG") != "", "run the cut check at length (200 snapshots)")

const (
	cutSlots         = 32       // blocks per writer
	cutPerVolume     = 2        // writers per volume
	cutChunkBytes    = 64 << 10 // 16 blocks: a volume's 64 blocks span 4 chunks
	cutVolumeBytes   = cutPerVolume * cutSlots * cutBlockBytes
	cutStoresN       = 3
	cutReplicasN     = 2
	cutSnapIntervalN = 80 // ms of spread above 20 ms between snapshots
)

// r2 places chunk c on stores c%3 and (c+1)%3.
type r2 struct{ nodes []volume.Node }

func (p r2) Replicas(c uint64) []volume.Node {
	i := int(c % uint64(len(p.nodes)))
	return []volume.Node{p.nodes[i], p.nodes[(i+1)%len(p.nodes)]}[:cutReplicasN:cutReplicasN]
}
func (p r2) Nodes() []volume.Node { return p.nodes }

// memCatalog is the catalog of one group.
type memCatalog struct {
	mu    sync.Mutex
	epoch uint64
	id    uint64
	vols  []VolumeRef
	recs  map[uint64]*memRecord
}

type memRecord struct {
	epoch  uint64
	state  string // pending, sealed, failed
	reason string
}

func (c *memCatalog) Reserve(_ context.Context, group string) (Reservation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.epoch
	c.epoch++
	c.id++
	c.recs[c.id] = &memRecord{epoch: e, state: "pending"}
	return Reservation{SnapshotID: c.id, Epoch: e, Volumes: slices.Clone(c.vols)}, nil
}

func (c *memCatalog) end(id uint64, state, reason string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.recs[id]
	if r == nil || r.state != "pending" {
		return fmt.Errorf("snapshot %d: not pending: %+v", id, r)
	}
	r.state, r.reason = state, reason
	return nil
}

func (c *memCatalog) Seal(_ context.Context, id uint64) error { return c.end(id, "sealed", "") }
func (c *memCatalog) Fail(_ context.Context, id uint64, reason string) error {
	return c.end(id, "failed", reason)
}

// rig is volumes over R=2 placement on 3 real stores, attached at
// in-process targets, with writers issuing dependent writes.
type rig struct {
	t       *testing.T
	stores  []*store.Store
	place   r2
	vols    []*volume.Volume
	names   []string
	locals  map[string]*LocalTarget
	wrap    map[string]Target // overrides of locals, set before start
	catalog *memCatalog
	cut     Cut

	acked     []atomic.Uint64
	writeErrs atomic.Int64
	firstErr  atomic.Pointer[error]
	stop      chan struct{}
	wg        sync.WaitGroup
}

// newRig opens targetsN targets of volsPerTarget volumes each.
func newRig(t *testing.T, targetsN, volsPerTarget int) *rig {
	r := &rig{t: t, locals: map[string]*LocalTarget{}, wrap: map[string]Target{}, stop: make(chan struct{})}
	for i := range cutStoresN {
		s, err := store.Open(t.TempDir(), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		r.stores = append(r.stores, s)
		r.place.nodes = append(r.place.nodes, s)
		_ = i
	}
	r.catalog = &memCatalog{epoch: 1, recs: map[uint64]*memRecord{}}
	for ti := range targetsN {
		node := fmt.Sprintf("t%d", ti)
		byName := map[string]*volume.Volume{}
		for k := range volsPerTarget {
			id := uint64(len(r.vols) + 1)
			v, err := volume.Open(volume.Options{ID: id, Size: cutVolumeBytes, ChunkSize: cutChunkBytes, Generation: 1, Epoch: 1, Placement: r.place})
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("v%d", id)
			t.Cleanup(func() { v.Close() })
			r.vols = append(r.vols, v)
			r.names = append(r.names, name)
			byName[name] = v
			r.catalog.vols = append(r.catalog.vols, VolumeRef{Name: name, ID: id, Target: node})
			_ = k
		}
		r.locals[node] = NewLocalTarget(func(n string) (*volume.Volume, bool) { v, ok := byName[n]; return v, ok })
	}
	r.cut = Cut{Writers: len(r.vols) * cutPerVolume, Slots: cutSlots}
	r.acked = make([]atomic.Uint64, r.cut.Writers)
	return r
}

func (r *rig) coordinator(step time.Duration) *Coordinator {
	c, err := New(Options{Catalog: r.catalog, StepTimeout: step, Targets: func(node string) (Target, error) {
		if t, ok := r.wrap[node]; ok {
			return t, nil
		}
		if t, ok := r.locals[node]; ok {
			return startingTarget{t}, nil
		}
		return nil, fmt.Errorf("no target %s", node)
	}})
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// start runs the writers.
func (r *rig) start() {
	for w := range r.cut.Writers {
		r.wg.Go(func() { r.writer(w) })
	}
}

// halt stops the writers and waits for them.
func (r *rig) halt() {
	close(r.stop)
	r.wg.Wait()
	if n := r.writeErrs.Load(); n > 0 {
		r.t.Errorf("%d writes erred, the first: %v", n, *r.firstErr.Load())
	}
}

func (r *rig) writer(w int) {
	v := r.vols[w/cutPerVolume]
	base := int64(w%cutPerVolume) * cutSlots
	p := make([]byte, cutBlockBytes)
	cw := CutWrite{Writer: w, Frontier: make([]uint64, r.cut.Writers)}
	for seq := uint64(1); ; seq++ {
		select {
		case <-r.stop:
			return
		default:
		}
		for u := range cw.Frontier {
			cw.Frontier[u] = r.acked[u].Load()
		}
		cw.Seq = seq
		cw.Encode(p)
		var flags target.WriteFlags
		if seq%16 == 0 {
			flags = target.FUA
		}
		err := v.WriteAt(context.Background(), p, (base+int64(r.cut.Slot(seq)))*cutBlockBytes, flags)
		if err == nil && seq%32 == 0 {
			err = v.Flush(context.Background())
		}
		if err != nil {
			if r.writeErrs.Add(1) == 1 {
				r.firstErr.Store(&err)
			}
			return
		}
		r.acked[w].Store(seq)
	}
}

func (r *rig) ackedNow() []uint64 {
	a := make([]uint64, len(r.acked))
	for i := range a {
		a[i] = r.acked[i].Load()
	}
	return a
}

// taken is a snapshot the rig took and what was acknowledged before.
type taken struct {
	res   Result
	acked []uint64
}

// check checks a sealed snapshot: a consistent cut read through a
// read-only volume at its epoch, and replicas that agree block for block.
func (r *rig) check(s taken) error {
	ctx := context.Background()
	imgs := make([][]byte, len(r.vols))
	for i, lv := range r.vols {
		v, err := volume.Open(volume.Options{ID: lv.ID(), Size: cutVolumeBytes, ChunkSize: cutChunkBytes, Generation: 1, Epoch: s.res.Epoch, ReadOnly: true, Placement: r.place})
		if err != nil {
			return err
		}
		imgs[i] = make([]byte, cutVolumeBytes)
		err = v.ReadAt(ctx, imgs[i], 0)
		v.Close()
		if err != nil {
			return err
		}
		chunkBlocks := uint64(cutChunkBytes / cutBlockBytes)
		for c := uint64(0); c < cutVolumeBytes/cutChunkBytes; c++ {
			var first []byte
			for k, nd := range r.place.Replicas(c) {
				p := make([]byte, cutChunkBytes)
				if err := nd.Read(ctx, lv.ID(), c*chunkBlocks, p, s.res.Epoch); err != nil {
					return err
				}
				if k == 0 {
					first = p
				} else if !bytes.Equal(first, p) {
					return fmt.Errorf("snapshot %d: volume %d chunk %d: replicas differ", s.res.SnapshotID, lv.ID(), c)
				}
			}
		}
	}
	_, err := r.cut.Check(s.acked, func(w, j int) []byte {
		o := (w%cutPerVolume*cutSlots + j) * cutBlockBytes
		return imgs[w/cutPerVolume][o : o+cutBlockBytes]
	})
	if err != nil {
		return fmt.Errorf("snapshot %d at epoch %d: %w", s.res.SnapshotID, s.res.Epoch, err)
	}
	return nil
}

// snapshots takes n snapshots 20–100 ms apart under the writers' load.
func (r *rig) snapshots(c *Coordinator, n int, rng *rand.Rand) (sealed []taken, failed []error) {
	for range n {
		time.Sleep(time.Duration(20+rng.IntN(cutSnapIntervalN)) * time.Millisecond)
		a := r.ackedNow()
		res, err := c.Snapshot(context.Background(), "g")
		if err != nil {
			failed = append(failed, err)
			continue
		}
		sealed = append(sealed, taken{res, a})
	}
	return sealed, failed
}

func windows(ss []taken) string {
	var ws []time.Duration
	for _, s := range ss {
		for _, tr := range s.res.Targets {
			for _, h := range tr.Report.Volumes {
				ws = append(ws, h.Window)
			}
		}
	}
	if len(ws) == 0 {
		return "no windows"
	}
	slices.Sort(ws)
	return fmt.Sprintf("%d held windows: p50 %v p99 %v max %v", len(ws), ws[len(ws)/2], ws[len(ws)*99/100], ws[len(ws)-1])
}

func seed(t *testing.T) *rand.Rand {
	s := uint64(time.Now().UnixNano())
	t.Logf("seed %d", s)
	return rand.New(rand.NewPCG(s, 1))
}

// TestCutCheck: snapshots under dependent writes on 4 volumes behind 2
// targets, R=2 over 3 stores, are consistent cuts whose replicas agree.
func TestCutCheck(t *testing.T) {
	n := 20
	if *cutLong {
		n = 200
	}
	r := newRig(t, 2, 2)
	c := r.coordinator(0)
	r.start()
	sealed, failed := r.snapshots(c, n, seed(t))
	r.halt()
	for _, err := range failed {
		t.Errorf("snapshot failed: %v", err)
	}
	for _, s := range sealed {
		if err := r.check(s); err != nil {
			t.Error(err)
		}
	}
	var writes uint64
	for _, a := range r.ackedNow() {
		writes += a
	}
	t.Logf("%d sealed, %d failed, %d writes; %s", len(sealed), len(failed), writes, windows(sealed))
	if len(sealed) < n {
		t.Errorf("%d of %d snapshots sealed", len(sealed), n)
	}
}

// stuck is a target that stops answering Hold (a SIGSTOPped process): it
// ignores ctx until resume is closed, then fails the call.
type stuck struct {
	Target
	resume chan struct{}
	calls  atomic.Int32
}

func (s *stuck) Hold(ctx context.Context, vols []string, next uint64, timeout time.Duration) error {
	s.calls.Add(1)
	<-s.resume
	return errors.New("stuck target: answered too late")
}

// TestCutCheckStuckTarget: with one target not answering Hold the snapshot
// fails within the step deadline, the other targets' holds are released
// (their writers go on), no write errs; once the target answers again the
// snapshots seal and are consistent cuts.
func TestCutCheckStuckTarget(t *testing.T) {
	const step = 300 * time.Millisecond
	r := newRig(t, 3, 1)
	st := &stuck{Target: r.locals["t2"], resume: make(chan struct{})}
	r.wrap["t2"] = st
	c := r.coordinator(step)
	r.start()
	defer func() {
		select {
		case <-r.stop:
		default:
			r.halt()
		}
	}()
	rng := seed(t)
	for range 3 {
		time.Sleep(time.Duration(20+rng.IntN(cutSnapIntervalN)) * time.Millisecond)
		begin := time.Now()
		res, err := c.Snapshot(context.Background(), "g")
		took := time.Since(begin)
		if !errors.Is(err, ErrFailed) || res.Reason != ReasonTimeout {
			t.Fatalf("snapshot with a stuck target: %v (reason %q)", err, res.Reason)
		}
		if took > step+2*time.Second { // generous: a loaded -race machine; a coordinator waiting on the stuck target would never return
			t.Errorf("snapshot with a stuck target took %v, step deadline %v", took, step)
		}
		for _, node := range []string{"t0", "t1"} {
			if n := r.locals[node].Holding(); n != 0 {
				t.Errorf("%s still holds %d volumes after the failed snapshot", node, n)
			}
		}
		for _, tr := range res.Targets {
			if tr.Node != "t2" && !tr.Report.released() {
				t.Errorf("target %s: %+v", tr.Node, tr.Report)
			}
		}
		if rec := r.catalog.recs[res.SnapshotID]; rec.state != "failed" || rec.reason != ReasonTimeout {
			t.Errorf("record %d: %+v", res.SnapshotID, rec)
		}
		// Every writer goes on.
		a := r.ackedNow()
		deadline := time.Now().Add(10 * time.Second)
		for w := range a {
			for r.acked[w].Load() <= a[w] {
				if time.Now().After(deadline) {
					t.Fatalf("writer %d stuck at %d after the failed snapshot", w, a[w])
				}
				time.Sleep(time.Millisecond)
			}
		}
		t.Logf("failed in %v: %v", took, err)
	}
	close(st.resume)
	delete(r.wrap, "t2")
	sealed, failed := r.snapshots(c, 5, rng)
	r.halt()
	for _, err := range failed {
		t.Errorf("snapshot after the target came back: %v", err)
	}
	for _, s := range sealed {
		if err := r.check(s); err != nil {
			t.Error(err)
		}
	}
	t.Logf("%s", windows(sealed))
}

// early is a broken target: it releases its holds at once instead of
// waiting for the coordinator's Release, and reports them released.
// startingTarget is a LocalTarget that is a ReleaseStarter, as cairnd's
// is: the coordinator's last leg releases it in line. The wrappers below
// that embed *LocalTarget are not, so their Release is the one called.
type startingTarget struct{ *LocalTarget }

func (s startingTarget) StartRelease(ctx context.Context, vols []string, next uint64) (func() (HoldReport, error), error) {
	rep, err := s.Release(ctx, vols, next)
	return func() (HoldReport, error) { return rep, err }, nil
}

var _ ReleaseStarter = startingTarget{}

type early struct{ *LocalTarget }

func (e early) Hold(ctx context.Context, vols []string, next uint64, timeout time.Duration) error {
	if err := e.LocalTarget.Hold(ctx, vols, next, timeout); err != nil {
		return err
	}
	_, err := e.LocalTarget.Release(ctx, vols, next)
	return err
}

func (e early) Release(_ context.Context, vols []string, _ uint64) (HoldReport, error) {
	rep := HoldReport{}
	for _, v := range vols {
		rep.Volumes = append(rep.Volumes, VolumeHold{Volume: v, Reason: reasonReleased})
	}
	return rep, nil
}

// slow delays its Hold, so that a broken target's early release has a
// window to leak into.
type slow struct {
	Target
	d time.Duration
}

func (s slow) Hold(ctx context.Context, vols []string, next uint64, timeout time.Duration) error {
	time.Sleep(s.d)
	return s.Target.Hold(ctx, vols, next, timeout)
}

// TestCutCheckCatchesEarlyRelease: the checker can fail. A target that
// lets its acknowledgements go before the others switched leaks writes
// stamped e+1 into the dependencies of writes stamped e elsewhere; the
// checker must find such a snapshot.
func TestCutCheckCatchesEarlyRelease(t *testing.T) {
	r := newRig(t, 2, 2)
	r.wrap["t0"] = early{r.locals["t0"]}
	r.wrap["t1"] = slow{r.locals["t1"], 20 * time.Millisecond}
	c := r.coordinator(0)
	r.start()
	rng := seed(t)
	caught := 0
	var sealed []taken
	for i := 0; i < 30 && caught == 0; i++ {
		ss, failed := r.snapshots(c, 1, rng)
		for _, err := range failed {
			t.Logf("snapshot failed: %v", err)
		}
		for _, s := range ss {
			sealed = append(sealed, s)
			if err := r.check(s); errors.Is(err, ErrCut) {
				caught++
				t.Logf("caught after %d snapshots: %v", i+1, err)
			} else if err != nil {
				t.Error(err)
			}
		}
	}
	r.halt()
	if caught == 0 {
		t.Errorf("the checker passed %d snapshots of a broken protocol", len(sealed))
	}
}

// frozen is a target that switched and then stopped answering anything
// (SIGSTOP after the switch); once resume is closed its late calls go
// through.
type frozen struct {
	*LocalTarget
	resume chan struct{}
}

func (f frozen) Hold(ctx context.Context, vols []string, next uint64, timeout time.Duration) error {
	if err := f.LocalTarget.Hold(ctx, vols, next, timeout); err != nil {
		return err
	}
	<-f.resume
	return errors.New("frozen target: answered too late")
}

func (f frozen) Release(ctx context.Context, vols []string, next uint64) (HoldReport, error) {
	<-f.resume
	return f.LocalTarget.Release(ctx, vols, next)
}

// TestCutCheckFrozenTarget: a target that switched and then froze fails
// the snapshot within the step deadline; the others are released by the
// coordinator, the frozen one's holds end at their own deadline, no write
// errs; after it thaws, its late Release of the abandoned snapshot leaves
// newer holds alone and the next snapshots are consistent cuts.
func TestCutCheckFrozenTarget(t *testing.T) {
	const step = 300 * time.Millisecond
	r := newRig(t, 3, 1)
	fz := frozen{r.locals["t2"], make(chan struct{})}
	r.wrap["t2"] = fz
	c := r.coordinator(step)
	r.start()
	rng := seed(t)
	begin := time.Now()
	res, err := c.Snapshot(context.Background(), "g")
	took := time.Since(begin)
	if !errors.Is(err, ErrFailed) || res.Reason != ReasonTimeout {
		t.Fatalf("snapshot with a frozen target: %v (reason %q)", err, res.Reason)
	}
	if took > step+2*time.Second { // generous: a loaded -race machine; a coordinator waiting on the stuck target would never return
		t.Errorf("snapshot with a frozen target took %v, step deadline %v", took, step)
	}
	// Every writer goes on, the frozen target's once its holds expire.
	a := r.ackedNow()
	deadline := time.Now().Add(10 * time.Second)
	for w := range a {
		for r.acked[w].Load() <= a[w] {
			if time.Now().After(deadline) {
				t.Fatalf("writer %d stuck at %d", w, a[w])
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.Logf("failed in %v, writers went on after %v", took, time.Since(begin))
	delete(r.wrap, "t2")
	close(fz.resume) // the late Hold answer and Release arrive now
	sealed, failed := r.snapshots(c, 8, rng)
	r.halt()
	for _, err := range failed {
		t.Errorf("snapshot after the target thawed: %v", err)
	}
	for _, s := range sealed {
		if err := r.check(s); err != nil {
			t.Error(err)
		}
	}
	t.Logf("%s", windows(sealed))
}
