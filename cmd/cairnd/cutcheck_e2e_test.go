package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/backend/wire"
	"cairn/cluster"
	"cairn/cluster/admin"
	"cairn/snapshot"
)

// The cut check across processes (snapshot/cutcheck.go has the checker):
// writers over NBD on volumes attached at different cairnd issue dependent
// writes while the group is snapshotted; every sealed snapshot is read
// back over NBD as <volume>@<snapshot> and checked as a consistent cut,
// and every replica of it is read from its storage node over the node RPC
// at the snapshot's epoch and compared block for block.

const (
	ccSlots      = 32       // blocks per writer
	ccPerVolume  = 2        // writers per volume
	ccChunkBytes = 64 << 10 // the smallest chunk: a writer's slots span two chunks
	ccBlockBytes = 4096
	ccVolumeSize = "1MiB"
	ccReplicasN  = 2
	// ccIOTimeout bounds one NBD request of a writer or reader: longer
	// than a SIGSTOPped target stays stopped, so that its writer waits
	// instead of failing.
	ccIOTimeout = 2 * time.Minute
	// ccStepSeconds is the coordinator's step deadline (the default) and
	// ccHoldSeconds a target's own hold deadline (2 × step).
	ccStepSeconds = 2.0
	ccHoldSeconds = 2 * ccStepSeconds
)

// ccSnapshots is the number of snapshots of the cut check: 20 in make
// test, more by CAIRN_CUTCHECK_SNAPSHOTS.
func ccSnapshots(t *testing.T) int {
	s := os.Getenv("CAIRN_CUTCHECK_SNAPSHOTS")
	if s == "" {
		return 20
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("CAIRN_CUTCHECK_SNAPSHOTS=%q: want a positive number", s)
	}
	return n
}

// nbdConn is a minimal NBD client: fixed newstyle, NBD_OPT_EXPORT_NAME,
// simple replies, one request at a time, every request bounded by
// ccIOTimeout.
type nbdConn struct {
	c      net.Conn
	size   uint64
	handle uint64
}

const (
	nbdCmdRead   = 0
	nbdCmdWrite  = 1
	nbdCmdDisc   = 2
	nbdCmdFlush  = 3
	nbdFlagFUA   = 1
	nbdReqMagic  = 0x25609513
	nbdRepMagic  = 0x67446698
	nbdOptMagic  = 0x49484156454F5054 // IHAVEOPT
	nbdOptExport = 1
)

func dialNBD(addr, export string) (*nbdConn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	n := &nbdConn{c: c}
	if err := n.handshake(export); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd %s/%s: %w", addr, export, err)
	}
	return n, nil
}

func (n *nbdConn) handshake(export string) error {
	_ = n.c.SetDeadline(time.Now().Add(30 * time.Second))
	greeting := make([]byte, 18) // NBDMAGIC, IHAVEOPT, handshake flags
	if _, err := io.ReadFull(n.c, greeting); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	msg := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	msg = binary.BigEndian.AppendUint64(msg, nbdOptMagic)
	msg = binary.BigEndian.AppendUint32(msg, nbdOptExport)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
	msg = append(msg, export...)
	if _, err := n.c.Write(msg); err != nil {
		return err
	}
	reply := make([]byte, 10) // size, transmission flags
	if _, err := io.ReadFull(n.c, reply); err != nil {
		return fmt.Errorf("export %q refused: %w", export, err)
	}
	n.size = binary.BigEndian.Uint64(reply)
	return nil
}

// do sends one request and waits for its reply; data is the payload of a
// write, into that of a read.
func (n *nbdConn) do(cmd, flags uint16, off uint64, data, into []byte) error {
	n.handle++
	length := len(data) + len(into)
	req := make([]byte, 28, 28+len(data))
	binary.BigEndian.PutUint32(req[0:], nbdReqMagic)
	binary.BigEndian.PutUint16(req[4:], flags)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint64(req[8:], n.handle)
	binary.BigEndian.PutUint64(req[16:], off)
	binary.BigEndian.PutUint32(req[24:], uint32(length))
	req = append(req, data...)
	_ = n.c.SetDeadline(time.Now().Add(ccIOTimeout))
	if _, err := n.c.Write(req); err != nil {
		return err
	}
	var rep [16]byte
	if _, err := io.ReadFull(n.c, rep[:]); err != nil {
		return err
	}
	if m, h := binary.BigEndian.Uint32(rep[0:]), binary.BigEndian.Uint64(rep[8:]); m != nbdRepMagic || h != n.handle {
		return fmt.Errorf("reply magic %x handle %d, want handle %d", m, h, n.handle)
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return fmt.Errorf("nbd error %d on command %d at %d", e, cmd, off)
	}
	if into != nil {
		if _, err := io.ReadFull(n.c, into); err != nil {
			return err
		}
	}
	return nil
}

func (n *nbdConn) Close() {
	var req [28]byte
	binary.BigEndian.PutUint32(req[0:], nbdReqMagic)
	binary.BigEndian.PutUint16(req[6:], nbdCmdDisc)
	_ = n.c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = n.c.Write(req[:])
	n.c.Close()
}

// ccVolume is a volume of a cut-check group and the target serving it.
type ccVolume struct {
	name string
	at   *proc
	id   uint64
}

// ccLoad is the writers on a group's volumes.
type ccLoad struct {
	t     *testing.T
	group string
	vols  []ccVolume
	cut   snapshot.Cut

	acked    []atomic.Uint64
	errs     atomic.Int64
	firstErr atomic.Pointer[error]
	stop     chan struct{}
	wg       sync.WaitGroup
}

func newLoad(t *testing.T, group string, vols []ccVolume) *ccLoad {
	l := &ccLoad{t: t, group: group, vols: vols, stop: make(chan struct{})}
	l.cut = snapshot.Cut{Writers: len(vols) * ccPerVolume, Slots: ccSlots}
	l.acked = make([]atomic.Uint64, l.cut.Writers)
	return l
}

// start connects every writer, then runs them.
func (l *ccLoad) start() {
	conns := make([]*nbdConn, l.cut.Writers)
	for w := range conns {
		v := l.vols[w/ccPerVolume]
		c, err := dialNBD(v.at.nbd, v.name)
		if err != nil {
			l.t.Fatal(err)
		}
		conns[w] = c
	}
	for w, c := range conns {
		l.wg.Go(func() {
			defer c.Close()
			l.writer(w, c)
		})
	}
}

func (l *ccLoad) writer(w int, c *nbdConn) {
	base := uint64(w%ccPerVolume) * ccSlots
	p := make([]byte, ccBlockBytes)
	cw := snapshot.CutWrite{Writer: w, Frontier: make([]uint64, l.cut.Writers)}
	for seq := uint64(1); ; seq++ {
		select {
		case <-l.stop:
			return
		default:
		}
		for u := range cw.Frontier {
			cw.Frontier[u] = l.acked[u].Load()
		}
		cw.Seq = seq
		cw.Encode(p)
		var flags uint16
		if seq%16 == 0 {
			flags = nbdFlagFUA
		}
		err := c.do(nbdCmdWrite, flags, (base+uint64(l.cut.Slot(seq)))*ccBlockBytes, p, nil)
		if err == nil && seq%32 == 0 {
			err = c.do(nbdCmdFlush, 0, 0, nil, nil)
		}
		if err != nil {
			err = fmt.Errorf("writer %d on %s, write %d: %w", w, l.vols[w/ccPerVolume].name, seq, err)
			if l.errs.Add(1) == 1 {
				l.firstErr.Store(&err)
			}
			return
		}
		l.acked[w].Store(seq)
	}
}

// halt stops the writers, waits for them, and fails the test if a write
// erred.
func (l *ccLoad) halt() {
	select {
	case <-l.stop:
		return
	default:
	}
	close(l.stop)
	l.wg.Wait()
	l.checkErrs()
}

func (l *ccLoad) checkErrs() {
	if n := l.errs.Load(); n > 0 {
		l.t.Errorf("group %s: %d writes erred, the first: %v", l.group, n, *l.firstErr.Load())
	}
}

func (l *ccLoad) ackedNow() []uint64 {
	a := make([]uint64, len(l.acked))
	for i := range a {
		a[i] = l.acked[i].Load()
	}
	return a
}

// progress waits until every writer in ws acknowledged a write past a,
// or fails after a minute (a writer stuck behind a hold that never ends).
func (l *ccLoad) progress(what string, ws []int, a []uint64) {
	l.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for _, w := range ws {
		for l.acked[w].Load() <= a[w] {
			if l.errs.Load() > 0 {
				l.t.Fatalf("%s: %v", what, *l.firstErr.Load())
			}
			if time.Now().After(deadline) {
				l.t.Fatalf("%s: writer %d stuck at write %d", what, w, a[w])
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// ccTaken is a snapshot taken and what was acknowledged before create began.
type ccTaken struct {
	sn    admin.Snapshot
	acked []uint64
}

// ccReplicas reads replicas from the storage nodes over the node RPC.
type ccReplicas struct {
	members []cluster.Member
	clients map[string]*wire.Client
}

func newReplicas(t *testing.T, p *proc) *ccReplicas {
	r := &ccReplicas{clients: map[string]*wire.Client{}}
	for _, n := range nodes(t, p) {
		if n.Addr == "" {
			continue
		}
		c, err := wire.NewClient(n.Addr, wire.ClientOptions{Name: "cutcheck"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		r.clients[n.Name] = c
		r.members = append(r.members, cluster.Member{Node: n.Name})
	}
	slices.SortFunc(r.members, func(a, b cluster.Member) int { return strings.Compare(a.Node, b.Node) })
	return r
}

// placer returns a volume's replica placement, checked against the
// chunks per node the catalog reports for it.
func (r *ccReplicas) placer(t *testing.T, p *proc, v ccVolume) *cluster.Placer {
	vv := showVolume(t, p, v.name)
	pl := cluster.NewPlacer(cluster.Volume{ID: vv.ID, Replicas: ccReplicasN, Placement: r.members})
	count := map[string]int64{}
	var out []string
	for c := uint64(0); c < uint64(1<<20/ccChunkBytes); c++ {
		for _, n := range pl.Replicas(c, out[:0]) {
			count[n]++
		}
	}
	for n, k := range vv.ChunksPerNode {
		if count[n] != k {
			t.Fatalf("volume %s: placement gives %v chunks per node, the catalog %v", v.name, count, vv.ChunksPerNode)
		}
	}
	return pl
}

// check reads a sealed snapshot back over NBD, checks it is a consistent
// cut, and checks every replica of every chunk of each volume agrees with
// what the export read.
func (l *ccLoad) check(s ccTaken, reps *ccReplicas, placers []*cluster.Placer) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	imgs := make([][]byte, len(l.vols))
	for i, v := range l.vols {
		export := v.name + "@" + s.sn.Name
		var c *nbdConn
		var err error
		deadline := time.Now().Add(30 * time.Second) // the target learns of the seal through the catalog
		for c, err = dialNBD(v.at.nbd, export); err != nil; c, err = dialNBD(v.at.nbd, export) {
			if time.Now().After(deadline) {
				return fmt.Errorf("snapshot %s: %w", s.sn.Name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		imgs[i] = make([]byte, c.size)
		for off := 0; off < len(imgs[i]); off += ccChunkBytes {
			if err = c.do(nbdCmdRead, 0, uint64(off), nil, imgs[i][off:off+ccChunkBytes]); err != nil {
				break
			}
		}
		c.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", export, err)
		}
		buf := make([]byte, ccChunkBytes)
		var out []string
		for ch := uint64(0); ch < uint64(len(imgs[i])/ccChunkBytes); ch++ {
			for _, n := range placers[i].Replicas(ch, out[:0]) {
				if err := reps.clients[n].Read(ctx, v.id, ch*ccChunkBytes/store.BlockSize, buf, s.sn.Epoch); err != nil {
					return fmt.Errorf("snapshot %s: %s's replica of %s chunk %d: %w", s.sn.Name, n, v.name, ch, err)
				}
				if !bytes.Equal(buf, imgs[i][ch*ccChunkBytes:(ch+1)*ccChunkBytes]) {
					return fmt.Errorf("snapshot %s at epoch %d: %s's replica of %s chunk %d differs from the export", s.sn.Name, s.sn.Epoch, n, v.name, ch)
				}
			}
		}
	}
	_, err := l.cut.Check(s.acked, func(w, j int) []byte {
		o := (w%ccPerVolume*ccSlots + j) * ccBlockBytes
		return imgs[w/ccPerVolume][o : o+ccBlockBytes]
	})
	if err != nil {
		return fmt.Errorf("snapshot %s at epoch %d: %w", s.sn.Name, s.sn.Epoch, err)
	}
	return nil
}

var snapFailedRE = regexp.MustCompile(`failed \((\w+)\)`)

// create takes a snapshot of the group through p's CLI. A failed
// snapshot returns its reason.
func (l *ccLoad) create(p *proc, name string) (ccTaken, string, error) {
	a := l.ackedNow()
	so, se, code := p.cli("--json", "snapshot", "create", l.group, "--name", name)
	if code != 0 {
		reason := "?"
		if m := snapFailedRE.FindStringSubmatch(se); m != nil {
			reason = m[1]
		}
		return ccTaken{}, reason, fmt.Errorf("snapshot create %s: exit %d: %s", name, code, strings.TrimSpace(se))
	}
	var sn admin.Snapshot
	if err := json.Unmarshal([]byte(so), &sn); err != nil {
		return ccTaken{}, "", fmt.Errorf("snapshot create --json: %w: %s", err, so)
	}
	if sn.State != "sealed" {
		return ccTaken{}, sn.State, fmt.Errorf("snapshot %s: %s (%s)", name, sn.State, sn.Reason)
	}
	return ccTaken{sn: sn, acked: a}, "", nil
}

// heldWindows summarizes the held windows the create calls reported.
func heldWindows(ss []ccTaken) string {
	var ws []time.Duration
	for _, s := range ss {
		if s.sn.Protocol != nil {
			ws = append(ws, time.Duration(s.sn.Protocol.HeldWindowMaxSeconds*float64(time.Second)))
		}
	}
	if len(ws) == 0 {
		return "no held windows"
	}
	slices.Sort(ws)
	return fmt.Sprintf("%d held windows (longest per snapshot): p50 %v p99 %v max %v", len(ws), ws[len(ws)/2], ws[len(ws)*99/100], ws[len(ws)-1])
}

// metric reads one sample of p's /metrics (0 if absent).
func metric(t *testing.T, p *proc, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %q", name, line)
			}
			return f
		}
	}
	return 0
}

// targetOnly starts a cairnd with the target role alone that joins the
// cluster through seed's gossip.
func targetOnly(t *testing.T, name string, seed *proc) *proc {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(seed.dir, "cairn.toml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`\[gossip\]\nbind = "([^"]+)"`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no gossip bind in %s's config", seed.dir)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`node_name = %q
data_dir = "data"
roles = ["target"]
[admin]
listen = "127.0.0.1:0"
[nbd]
listen = "127.0.0.1:0"
[iscsi]
listen = "127.0.0.1:0"
iqn_prefix = "iqn.2026-11.test.cairn"
[gossip]
bind = "127.0.0.1:0"
join = [%q]
[raft]
bind = "127.0.0.1:%d"
[storage]
listen = "127.0.0.1:0"
`, name, m[1], freePort(t))
	if err := os.WriteFile(filepath.Join(dir, "cairn.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, dir: dir}
	p.run()
	t.Cleanup(func() {
		if p.cmd.Process != nil {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
		}
		p.stop(syscall.SIGTERM)
	})
	return p
}

// TestClusterCutCheck: three storage+manager+target nodes and a
// target-only fourth on loopback. Group g has a volume attached at node1
// and one at node2, R=2 over the three storage nodes; writers over NBD
// issue dependent writes on both while g is snapshotted every ~100 ms.
// Every sealed snapshot is a consistent cut of what the exports read, and
// every replica of it agrees with the export block for block.
//
// Then group h has a volume at node2 and one at the target-only node4,
// which is SIGSTOPped: snapshots of h fail within the deadlines, node2's
// holds end within them (its hold-window metric), no write at node2 errs;
// after SIGCONT node4's writers go on without error (its hold ended) and
// snapshots of h seal as consistent cuts again.
//
// Last, a target-only node5 coordinates a snapshot of h while node4 does
// not answer and is SIGKILLed with the record pending: node2's hold ends
// at its own deadline (its writers go on), the catalog leader fails the
// record as abandoned, and the next snapshot of h seals.
func TestClusterCutCheck(t *testing.T) {
	procs := startCluster(t)
	n1, n2 := procs[0], procs[1]
	n4 := targetOnly(t, "node4", n1)
	ok := func(args ...string) string {
		t.Helper()
		so, se, code := n1.cli(args...)
		if code != 0 {
			t.Fatalf("cairn %s: exit %d: %s", strings.Join(args, " "), code, se)
		}
		return so
	}
	byName := map[string]*proc{"node1": n1, "node2": n2, "node4": n4}
	mkvol := func(name, node string) ccVolume {
		t.Helper()
		var se string
		var code int
		deadline := time.Now().Add(60 * time.Second) // node4 joins gossip first
		for {
			if _, se, code = n1.cli("volume", "create", name, "--size", ccVolumeSize, "--replicas", strconv.Itoa(ccReplicasN),
				"--chunk-size", strconv.Itoa(ccChunkBytes), "--target", node); code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("create %s at %s: %s", name, node, se)
			}
			time.Sleep(200 * time.Millisecond)
		}
		at := byName[node]
		waitFor(t, at, name+" served by "+node, func() bool {
			c, err := dialNBD(at.nbd, name)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		return ccVolume{name: name, at: at, id: showVolume(t, n1, name).ID}
	}
	ga, gb := mkvol("cca", "node1"), mkvol("ccb", "node2")
	hc, hd := mkvol("cch", "node2"), mkvol("ccd", "node4")
	ok("group", "create", "g", "--volumes", "cca,ccb")
	ok("group", "create", "h", "--volumes", "cch,ccd")
	reps := newReplicas(t, n1)
	if len(reps.members) != 3 {
		t.Fatalf("storage nodes %v, want 3", reps.members)
	}

	// Part 1: the cut check of g.
	n := ccSnapshots(t)
	s := uint64(time.Now().UnixNano())
	t.Logf("seed %d", s)
	rng := rand.New(rand.NewPCG(s, 1))
	g := newLoad(t, "g", []ccVolume{ga, gb})
	gPlacers := []*cluster.Placer{reps.placer(t, n1, ga), reps.placer(t, n1, gb)}
	g.start()
	t.Cleanup(g.halt)
	var sealed []ccTaken
	failures := map[string]int{}
	checked := 0
	for i := range n {
		time.Sleep(time.Duration(50+rng.IntN(100)) * time.Millisecond)
		s, reason, err := g.create(n1, fmt.Sprintf("g%03d", i))
		if err != nil {
			failures[reason]++
			t.Errorf("%v", err)
			continue
		}
		sealed = append(sealed, s)
	}
	// Check while the writers still run: the exports read under load.
	for _, s := range sealed {
		if err := g.check(s, reps, gPlacers); err != nil {
			t.Error(err)
			continue
		}
		checked++
	}
	g.halt()
	var writes uint64
	for _, a := range g.ackedNow() {
		writes += a
	}
	t.Logf("group g: %d snapshots, %d sealed and checked as consistent cuts with agreeing replicas, failures by reason %v, %d writes; %s; node1 hold metric: %v windows, %.3f s total; node2: %v windows, %.3f s total",
		n, checked, failures, writes, heldWindows(sealed),
		metric(t, n1, "cairn_snapshot_hold_seconds_count"), metric(t, n1, "cairn_snapshot_hold_seconds_sum"),
		metric(t, n2, "cairn_snapshot_hold_seconds_count"), metric(t, n2, "cairn_snapshot_hold_seconds_sum"))
	if checked != n {
		t.Fatalf("%d of %d snapshots sealed and checked", checked, n)
	}

	// Part 2: node4, a target alone, stops answering.
	h := newLoad(t, "h", []ccVolume{hc, hd})
	hPlacers := []*cluster.Placer{reps.placer(t, n1, hc), reps.placer(t, n1, hd)}
	h.start()
	t.Cleanup(h.halt)
	atNode2, atNode4 := []int{0, 1}, []int{2, 3}
	h.progress("writers of h before the stop", []int{0, 1, 2, 3}, make([]uint64, 4))
	if s, _, err := h.create(n1, "h-before"); err != nil {
		t.Fatal(err)
	} else if err := h.check(s, reps, hPlacers); err != nil {
		t.Fatal(err)
	}
	if err := n4.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = n4.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	const stopSnapshots = 3
	stopReasons := map[string]int{}
	for i := range stopSnapshots {
		count0 := metric(t, n2, "cairn_snapshot_hold_seconds_count")
		sum0 := metric(t, n2, "cairn_snapshot_hold_seconds_sum")
		a := h.ackedNow()
		begin := time.Now()
		_, reason, err := h.create(n1, fmt.Sprintf("h-stopped%d", i))
		took := time.Since(begin)
		if err == nil {
			t.Fatalf("a snapshot of h sealed with node4 stopped")
		}
		stopReasons[reason]++
		// Generous: a loaded -race machine. A coordinator waiting on the
		// stopped target would never return.
		if took.Seconds() > 2*ccStepSeconds+5 {
			t.Errorf("snapshot with node4 stopped failed after %v; the steps' deadlines are %v s each", took, ccStepSeconds)
		}
		// node2's hold ended, by the coordinator's release or at its own
		// deadline: its writers go on, and the window it saw is bounded.
		h.progress("node2's writers after a failed snapshot", atNode2, a)
		if c := metric(t, n2, "cairn_snapshot_hold_seconds_count") - count0; c > 0 {
			if w := (metric(t, n2, "cairn_snapshot_hold_seconds_sum") - sum0) / c; w > ccHoldSeconds+1 {
				t.Errorf("node2 held acknowledgements for %.3f s, its own deadline is %v s", w, ccHoldSeconds)
			} else {
				t.Logf("failed in %v (%s): node2 held for %.3f s", took, reason, w)
			}
		} else if reason != snapshot.ReasonTarget {
			// A target found dead in gossip is never asked to hold;
			// otherwise node2 held and reported at release.
			t.Errorf("snapshot failed (%s) and node2 reported no held window: %v", reason, err)
		} else {
			t.Logf("failed in %v (%s: node4 out of gossip): node2 never held", took, reason)
		}
	}
	if err := n4.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	a := h.ackedNow()
	h.progress("node4's writers after SIGCONT", atNode4, a)
	// Snapshots of h seal again once node4 is back in gossip.
	var after []ccTaken
	deadline := time.Now().Add(90 * time.Second)
	afterFailures := map[string]int{}
	for i := 0; len(after) < 5; i++ {
		time.Sleep(time.Duration(50+rng.IntN(100)) * time.Millisecond)
		s, reason, err := h.create(n1, fmt.Sprintf("h-after%d", i))
		if err != nil {
			afterFailures[reason]++
			if time.Now().After(deadline) {
				t.Fatalf("snapshots of h after SIGCONT: %v (failures by reason %v)", err, afterFailures)
			}
			continue
		}
		after = append(after, s)
	}
	for _, s := range after {
		if err := h.check(s, reps, hPlacers); err != nil {
			t.Error(err)
		}
	}
	h.progress("every writer of h at the end", []int{0, 1, 2, 3}, h.ackedNow())

	// Part 3: a coordinator dies mid-protocol. node5, a target alone,
	// takes a snapshot of h while node4 does not answer, and is killed
	// while the record is pending: node2's hold ends at its own deadline
	// and the catalog leader fails the record.
	n5 := targetOnly(t, "node5", n1)
	waitFor(t, n5, "node5 follows the catalog and sees node2 and node4 alive", func() bool {
		if so, _, code := n5.cli("volume", "list"); code != 0 || !strings.Contains(so, "ccd") {
			return false // no leader known yet: the reservation could not be forwarded
		}
		alive := 0
		for _, n := range nodes(t, n5) {
			if (n.Name == "node2" || n.Name == "node4") && n.Gossip == "alive" {
				alive++
			}
		}
		return alive == 2
	})
	if err := n4.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped = true
	deadlineHolds := `cairn_snapshot_holds_total{ended="deadline"}`
	deadline0 := metric(t, n2, deadlineHolds)
	// Every hold node2 ended, however: the coordinator may be killed
	// between reserving h-orphan and sending node2 its hold.
	allHolds := func() float64 {
		n := 0.0
		for _, e := range []string{"released", "deadline", "bound", "closed"} {
			n += metric(t, n2, `cairn_snapshot_holds_total{ended="`+e+`"}`)
		}
		return n
	}
	holds0 := allHolds()
	orphan := make(chan string, 1)
	go func() {
		cmd := exec.Command(filepath.Join(binDir, "cairn"), "--addr", n5.admin, "snapshot", "create", "h", "--name", "h-orphan")
		cmd.Dir = n5.dir
		cmd.Env = append(os.Environ(), "CAIRN_TOKEN=", "CAIRN_TOKEN_FILE=")
		out, err := cmd.CombinedOutput()
		orphan <- fmt.Sprintf("%v: %s", err, out)
	}()
	a = h.ackedNow()
	snapState := func(name string) (admin.Snapshot, bool) {
		so, _, code := n1.cli("--json", "snapshot", "list")
		var ss []admin.Snapshot
		if code != 0 || json.Unmarshal([]byte(so), &ss) != nil {
			return admin.Snapshot{}, false
		}
		for _, s := range ss {
			if s.Name == name {
				return s, true
			}
		}
		return admin.Snapshot{}, false
	}
	var early string
	waitFor(t, n1, "h-orphan reserved", func() bool {
		select {
		case early = <-orphan:
			return true // the create ended before it was seen pending
		default:
		}
		s, ok := snapState("h-orphan")
		return ok && s.State == "pending"
	})
	if early != "" {
		t.Fatalf("snapshot create at node5 ended before its coordinator was killed: %s\n%s", early, lastLines(n5.logs(), 30))
	}
	n5.stop(syscall.SIGKILL)
	killed := time.Now()
	t.Logf("coordinator node5 killed with h-orphan pending; its CLI: %s", strings.TrimSpace(<-orphan))
	if err := n4.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	h.progress("node2's writers after their coordinator died", atNode2, a)
	h.progress("node4's writers after SIGCONT", atNode4, a)
	var abandoned admin.Snapshot
	waitFor(t, n1, "the leader fails h-orphan", func() bool {
		s, ok := snapState("h-orphan")
		abandoned = s
		return ok && s.State != "pending"
	})
	if abandoned.State != "failed" || abandoned.Reason != snapshot.ReasonAbandoned {
		t.Fatalf("h-orphan after its coordinator died: %s (%s), want failed (%s)", abandoned.State, abandoned.Reason, snapshot.ReasonAbandoned)
	}
	t.Logf("h-orphan failed (%s) %v after its coordinator was killed", abandoned.Reason, time.Since(killed).Round(time.Millisecond))
	// node2's hold had nobody to release it: it ended at its deadline
	// and counts in the metrics as such.
	switch d, all := metric(t, n2, deadlineHolds)-deadline0, allHolds()-holds0; {
	case all == 0:
		t.Logf("node2 never got a hold of h-orphan (its coordinator died before sending it)")
	case d < 1:
		t.Errorf("node2 ended %v holds since h-orphan, none in %s", all, deadlineHolds)
	}
	if s, _, err := h.create(n1, "h-after-orphan"); err != nil {
		t.Fatal(err)
	} else if err := h.check(s, reps, hPlacers); err != nil {
		t.Fatal(err)
	}
	h.halt()
	t.Logf("group h: %d snapshots failed with node4 stopped, by reason %v; after SIGCONT %d failed (by reason %v) before %d sealed and checked; %s; coordinator outcomes: sealed %v, timeout %v, target %v",
		stopSnapshots, stopReasons, sum(afterFailures), afterFailures, len(after), heldWindows(after),
		metric(t, n1, `cairn_snapshots_total{outcome="sealed"}`), metric(t, n1, `cairn_snapshots_total{outcome="timeout"}`), metric(t, n1, `cairn_snapshots_total{outcome="target"}`))
}

func sum(m map[string]int) int {
	n := 0
	for _, k := range m {
		n += k
	}
	return n
}
