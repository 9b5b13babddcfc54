package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
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
func TestDegraded(t *testing.T) {
	need(t, "nbdcopy", "fio")
	procs := startCluster(t)
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
	buf := make([]byte, 1<<20)
	for _, n := range nodeList {
		if n.Name == vname {
			continue
		}
		c, err := wire.NewClient(n.Addr, wire.ClientOptions{Name: "test"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for off := 0; off < 64<<20; off += len(buf) {
			if err := c.Read(ctx, id, uint64(off/store.BlockSize), buf, 1<<63); err != nil {
				t.Fatalf("%s: read its replica at %d: %v", n.Name, off, err)
			}
			if !bytes.Equal(buf, served[off:off+len(buf)]) {
				t.Fatalf("%s: its replica of MiB %d differs from what the target serves", n.Name, off>>20)
			}
		}
		cancel()
		c.Close()
	}

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
}
