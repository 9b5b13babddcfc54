package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/backend/wire"
)

// TestDegraded: a storage node holding a replica of every chunk of an R=3
// volume is killed with SIGKILL while fio writes to the volume — the
// catalog's leader when that is not the volume's target, so that taking
// the replica out waits for an election. The writes
// go on (fio's own verify passes: no write failed and every block reads
// back what was written), the catalog lists the dead node's replica as
// stale, `volume show` says the volume is degraded, and the two replicas
// left hold exactly what the target serves — read from each node's store
// over the node RPC.
//
// Then the victim catches up: more writes and trims while it is down,
// then it restarts, and while fio goes on writing (and verifying) and
// trims go on elsewhere, the target forwards the new writes to it and
// copies what it missed from the others (a snapshot is taken meanwhile);
// it leaves the stale list, and all three replicas hold, block for block,
// what the target serves, live and at the snapshot's epoch.
func TestDegraded(t *testing.T) {
	need(t, "nbdcopy", "fio", "qemu-io")
	// The catch-up copies about 60 MiB: at 8 MiB/s it runs for several of
	// the fio passes that go on under it.
	procs := startClusterWith(t, func(string) string { return "catchup_rate = \"8MiB\"\n" }, "")
	n1 := procs[0]
	victim, vname := procs[2], "node3"
	var st struct {
		Raft struct {
			Leader string `json:"leader"`
		} `json:"raft"`
	}
	if so, se, code := n1.cli("--json", "status"); code != 0 || json.Unmarshal([]byte(so), &st) != nil {
		t.Fatalf("status: %s%s", so, se)
	}
	if st.Raft.Leader == "node2" {
		victim, vname = procs[1], "node2"
	}
	t.Logf("leader %s; killing %s", st.Raft.Leader, vname)
	if _, se, code := n1.cli("volume", "create", "dvol", "--size", "128MiB", "--replicas", "3"); code != 0 {
		t.Fatalf("create dvol: %s", se)
	}
	waitFor(t, n1, "dvol served by node1", func() bool { _, err := shErr("nbdinfo", "--size", n1.uri("dvol")); return err == nil })

	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	base := make([]byte, 16<<20)
	if _, err := rand.Read(base); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, base, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "nbdcopy", "--flush", src, n1.uri("dvol"))

	// fio writes 32 MiB at 32 MiB in 4 KiB blocks, at most 800 a second
	// (so for at least ten seconds, however fast the machine), then
	// verifies every block.
	host, port, _ := net.SplitHostPort(n1.nbd)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=degraded", "--ioengine=nbd", "--uri=nbd://"+host+":"+port+"/dvol",
		"--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=32M", "--offset=32M", "--rate_iops=800",
		"--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--do_verify=1", "--output-format=terse")
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioDone := make(chan error, 1)
	go func() { fioDone <- fio.Wait() }()

	// Once the victim's store has taken some of fio's writes, kill it.
	nodeList := nodes(t, n1)
	id := showVolume(t, n1, "dvol").ID
	var vaddr string
	for _, n := range nodeList {
		if n.Name == vname {
			vaddr = n.Addr
		}
	}
	c3, err := wire.NewClient(vaddr, wire.ClientOptions{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, victim, "fio's writes on "+vname, func() bool {
		written := false
		c3.Extents(context.Background(), id, (32<<20)/store.BlockSize, (32<<20)/store.BlockSize, 1<<63,
			func(_, _ uint64, allocated bool) bool { written = written || allocated; return !written })
		return written
	})
	c3.Close()
	select {
	case err := <-fioDone:
		t.Fatalf("fio finished before %s was killed (%v): the test must kill it mid-write\n%s", vname, err, fioOut.String())
	default:
	}
	victim.stop(syscall.SIGKILL)

	if err := <-fioDone; err != nil || strings.Contains(fioOut.String(), "verify: bad") {
		t.Fatalf("fio with %s killed under it: %v\n%s\n%s", vname, err, fioOut.String(), lastLines(n1.logs(), 30))
	}

	// The catalog says the victim's replica is stale; the CLI says degraded.
	var v struct {
		Stale []string `json:"stale"`
	}
	so, se, code := n1.cli("--json", "volume", "show", "dvol")
	if code != 0 {
		t.Fatalf("volume show: %s", se)
	}
	if err := json.Unmarshal([]byte(so), &v); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Stale, []string{vname}) {
		t.Fatalf("stale replicas of dvol %v, want [%s]\n%s", v.Stale, vname, lastLines(n1.logs(), 30))
	}
	if so, _, _ := n1.cli("volume", "show", "dvol"); !strings.Contains(so, "degraded") || !strings.Contains(so, vname) {
		t.Fatalf("volume show of a degraded volume does not say so:\n%s", so)
	}

	// What the target serves is what both surviving replicas hold.
	out := filepath.Join(dir, "out")
	sh(t, "nbdcopy", n1.uri("dvol"), out)
	served, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(served[:len(base)], base) {
		t.Fatalf("dvol's first 16 MiB are not what nbdcopy wrote before the kill (%v)", err)
	}
	checkReplicas(t, nodeList, id, served[:64<<20], 1<<63, vname)

	// The survivors report what their stores hold: at least the 16 MiB
	// copied in and the 32 MiB fio wrote, on a filesystem at least as big.
	// (A report goes out every 10 s when a figure moved.)
	waitFor(t, n1, "node usage reported", func() bool {
		for _, n := range nodes(t, n1) {
			if n.Name != vname && (n.UsedBytes < 48<<20 || n.CapacityBytes < n.UsedBytes) {
				return false
			}
		}
		return true
	})
	if so, _, code := n1.cli("node", "list"); code != 0 || !strings.Contains(so, "MiB") {
		t.Fatalf("node list does not show the usage:\n%s", so)
	}

	// node1 timed its writes to the surviving peer, and none is left in flight.
	peer := "node2"
	if vname == "node2" {
		peer = "node3"
	}
	resp, err := http.Get("http://" + n1.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	count := regexp.MustCompile(`(?m)^cairn_node_rpc_seconds_count\{node="` + peer + `",op="write"\} (\d+)$`).FindSubmatch(body)
	if count == nil || string(count[1]) == "0" || !bytes.Contains(body, []byte(`cairn_node_rpc_in_flight{node="`+peer+`"} 0`)) {
		t.Fatalf("node1's metrics of its RPC calls to %s: write count %q\n%s", peer, count, body)
	}

	catchUp(t, n1, victim, vname, id)
}

// catchUp is TestDegraded's second part: vname (victim's node), stale in
// dvol (id) served by n1, misses writes, zeroes and trims (a range record
// and per-block points), restarts, and catches up under fio and trims;
// then every node's replica is read over the node RPC and compared with
// what the target serves, and with what was written.
func catchUp(t *testing.T, n1, victim *proc, vname string, id uint64) {
	// Missed while down: a pattern, a 4 MiB trim (a range record), a
	// 64 KiB trim (per-block zero points), write-zeroes over a fio block.
	out := sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 16M 4M", "-c", "discard 17M 2M", "-c", "discard 20M 64k",
		"-c", "write -z 40M 1M", "-c", "write -P 0x6b 120M 1M", n1.uri("dvol"))
	if strings.Contains(out, "error") {
		t.Fatalf("qemu-io on the degraded volume: %s", out)
	}

	// fio writes and verifies 8 MiB at a time at 64 MiB on, again and
	// again, and trims go on at 96 MiB, until the victim is back in service.
	host, port, _ := net.SplitHostPort(n1.nbd)
	stop := make(chan struct{})
	loopDone := make(chan error, 1)
	var passes int
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				loopDone <- nil
				return
			default:
			}
			off := 64<<20 + (i%4)*(8<<20)
			fio := exec.Command("fio", "--name=catchup", "--ioengine=nbd", "--uri=nbd://"+host+":"+port+"/dvol",
				"--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=8M", fmt.Sprintf("--offset=%d", off), "--rate_iops=1500",
				"--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--do_verify=1", "--output-format=terse")
			if o, err := fio.CombinedOutput(); err != nil || strings.Contains(string(o), "verify: bad") {
				loopDone <- fmt.Errorf("fio pass %d at %d MiB: %v\n%s", i, off>>20, err, o)
				return
			}
			trim := fmt.Sprintf("discard %d %d", 96<<20+(i%8)<<20, 512<<10)
			if o, err := shErr("qemu-io", "-f", "raw", "-c", trim, "-c", fmt.Sprintf("write -P 0x%02x %d 64k", 0x20+i%64, 97<<20+(i%8)<<20), n1.uri("dvol")); err != nil || strings.Contains(o, "error") {
				loopDone <- fmt.Errorf("trim pass %d: %v\n%s", i, err, o)
				return
			}
			passes++
		}
	}()
	victim.run()
	// A snapshot while the copy runs (and fio writes): once included, the
	// victim's replica holds it as the others do.
	waitFor(t, n1, "the catch-up copying", func() bool { return strings.Contains(n1.logs(), "replica catch-up started") })
	if _, se, code := n1.cli("snapshot", "create", "dvol", "--name", "mid"); code != 0 {
		t.Fatalf("snapshot during the catch-up: %s", se)
	}
	var snap struct {
		Epoch uint64 `json:"epoch"`
	}
	if so, se, code := n1.cli("--json", "snapshot", "show", "mid"); code != 0 || json.Unmarshal([]byte(so), &snap) != nil || snap.Epoch == 0 {
		t.Fatalf("snapshot show mid: %s%s", so, se)
	}
	waitFor(t, n1, vname+" caught up and out of the stale list", func() bool {
		var v struct {
			Stale []string `json:"stale"`
		}
		select {
		case err := <-loopDone:
			t.Fatalf("writes under the catch-up: %v\n%s", err, lastLines(n1.logs(), 30))
		default:
		}
		so, _, code := n1.cli("--json", "volume", "show", "dvol")
		return code == 0 && json.Unmarshal([]byte(so), &v) == nil && len(v.Stale) == 0
	})
	close(stop)
	if err := <-loopDone; err != nil {
		t.Fatalf("writes under the catch-up: %v\n%s", err, lastLines(n1.logs(), 30))
	}
	t.Logf("%s caught up under %d fio passes", vname, passes)
	var shown struct {
		CatchUp struct {
			Node         string `json:"node"`
			ChunksCopied uint64 `json:"chunks_copied"`
			ChunksTotal  uint64 `json:"chunks_total"`
			Running      bool   `json:"running"`
		} `json:"catch_up"`
	}
	if so, se, code := n1.cli("--json", "volume", "show", "dvol"); code != 0 || json.Unmarshal([]byte(so), &shown) != nil ||
		shown.CatchUp.Node != vname || shown.CatchUp.ChunksTotal != 128 || shown.CatchUp.ChunksCopied != 128 || shown.CatchUp.Running {
		t.Fatalf("volume show after the catch-up: %+v\n%s%s", shown, so, se)
	}
	if so, _, _ := n1.cli("volume", "show", "dvol"); !strings.Contains(so, "128 of 128 chunks copied (done)") {
		t.Fatalf("volume show does not show the catch-up:\n%s", so)
	}
	if !strings.Contains(n1.logs(), "replica caught up and back in service") {
		t.Fatalf("node1 did not log the catch-up\n%s", lastLines(n1.logs(), 30))
	}
	resp, err := http.Get("http://" + n1.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	copied := regexp.MustCompile(`(?m)^cairn_replica_catchup_chunks_copied\{node="` + vname + `",volume="dvol"\} (\d+)$`).FindSubmatch(body)
	total := regexp.MustCompile(`(?m)^cairn_replica_catchup_chunks_total\{node="` + vname + `",volume="dvol"\} (\d+)$`).FindSubmatch(body)
	if copied == nil || total == nil || string(copied[1]) != string(total[1]) || string(total[1]) != "128" ||
		!bytes.Contains(body, []byte(`cairn_replica_catchup_runs_total{result="included"} 1`)) {
		t.Fatalf("catch-up metrics: copied %q of %q chunks\n%s", copied, total, body)
	}

	// Every replica, the victim's too, holds what the target serves, which
	// is what was written where nothing wrote after.
	dir := t.TempDir()
	out2 := filepath.Join(dir, "out")
	sh(t, "nbdcopy", n1.uri("dvol"), out2)
	served, err := os.ReadFile(out2)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		off, n int
		b      byte
	}{{16 << 20, 1 << 20, 0x5a}, {17 << 20, 2 << 20, 0}, {19 << 20, 1 << 20, 0x5a}, {20 << 20, 64 << 10, 0}, {40 << 20, 1 << 20, 0}, {120 << 20, 1 << 20, 0x6b}} {
		if !bytes.Equal(served[r.off:r.off+r.n], bytes.Repeat([]byte{r.b}, r.n)) {
			t.Fatalf("dvol at %d MiB +%d does not read %#x", r.off>>20, r.n, r.b)
		}
	}
	checkReplicas(t, nodes(t, n1), id, served, 1<<63, "")
	waitFor(t, n1, "snapshot mid sealed", func() bool {
		so, _, code := n1.cli("snapshot", "show", "mid")
		return code == 0 && strings.Contains(so, "sealed")
	})
	sh(t, "nbdcopy", n1.uri("dvol@mid"), out2)
	if served, err = os.ReadFile(out2); err != nil {
		t.Fatal(err)
	}
	checkReplicas(t, nodes(t, n1), id, served, snap.Epoch, "")
}

// checkReplicas reads every node's replica of volume id (all its chunks:
// the volume has a replica of each on every node) at epoch over the node
// RPC and compares it, block for block, with want; skip names a node left
// out.
func checkReplicas(t *testing.T, ns []nodeView, id uint64, want []byte, epoch uint64, skip string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for _, n := range ns {
		if n.Name == skip {
			continue
		}
		c, err := wire.NewClient(n.Addr, wire.ClientOptions{Name: "test"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for off := 0; off < len(want); off += len(buf) {
			if err := c.Read(ctx, id, uint64(off/store.BlockSize), buf, epoch); err != nil {
				t.Fatalf("%s: read its replica at %d: %v", n.Name, off, err)
			}
			for b := 0; b < len(buf); b += store.BlockSize {
				if !bytes.Equal(buf[b:b+store.BlockSize], want[off+b:off+b+store.BlockSize]) {
					t.Fatalf("%s: its replica of block %d at epoch %d differs from what the target serves", n.Name, (off+b)/store.BlockSize, epoch)
				}
			}
		}
		cancel()
		c.Close()
	}
}
