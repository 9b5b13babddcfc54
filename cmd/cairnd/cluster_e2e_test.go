package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/backend/wire"
	"cairn/cluster/pki"
)

const clusterNodeConfig = `node_name = "%s"
data_dir = "data"
roles = ["target", "storage", "manager"]
[admin]
listen = "127.0.0.1:0"
[nbd]
listen = "127.0.0.1:0"
[iscsi]
listen = "127.0.0.1:0"
iqn_prefix = "iqn.2026-11.test.cairn"
[gossip]
bind = "127.0.0.1:%d"
join = [%s]
[raft]
bind = "127.0.0.1:%d"
bootstrap_expect = 3
[storage]
listen = "127.0.0.1:0"
cache_size = "64MiB"
`

// startCluster starts three cairnd on loopback, each every role, that find
// each other by gossip and bootstrap the catalog from it, and waits until
// all three are storage nodes in service.
func startCluster(t *testing.T) []*proc { return startClusterWith(t, nil, "") }

// startClusterWith is startCluster with extra config text per node name,
// and the CA the CLI trusts when the nodes serve HTTPS.
func startClusterWith(t *testing.T, extra func(node string) string, ca string) []*proc {
	t.Helper()
	gossip := []int{freePort(t), freePort(t), freePort(t)}
	var procs []*proc
	for i := range 3 {
		var seeds []string
		for j, g := range gossip {
			if j != i {
				seeds = append(seeds, fmt.Sprintf("%q", fmt.Sprintf("127.0.0.1:%d", g)))
			}
		}
		dir := t.TempDir()
		name := fmt.Sprintf("node%d", i+1)
		cfg := fmt.Sprintf(clusterNodeConfig, name, gossip[i], strings.Join(seeds, ", "), freePort(t))
		if extra != nil {
			cfg += extra(name)
		}
		if err := os.WriteFile(filepath.Join(dir, "cairn.toml"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		p := &proc{t: t, dir: dir, caFile: ca}
		p.run()
		t.Cleanup(func() { p.stop(syscall.SIGTERM) })
		procs = append(procs, p)
	}
	for _, p := range procs {
		waitFor(t, p, "three storage nodes in service", func() bool {
			ns := nodes(t, p)
			in := 0
			for _, n := range ns {
				if n.State == "in_service" && n.Gossip == "alive" {
					in++
				}
			}
			return in == 3
		})
	}
	return procs
}

type nodeView struct {
	Name   string `json:"name"`
	Gossip string `json:"gossip"`
	State  string `json:"state"`
	Addr   string `json:"addr"`

	CapacityBytes int64 `json:"capacity_bytes"`
	UsedBytes     int64 `json:"used_bytes"`
}

func nodes(t *testing.T, p *proc) []nodeView {
	so, se, code := p.cli("--json", "node", "list")
	if code != 0 {
		t.Logf("node list: %s", se)
		return nil
	}
	var ns []nodeView
	if err := json.Unmarshal([]byte(so), &ns); err != nil {
		t.Fatalf("node list --json: %v: %s", err, so)
	}
	return ns
}

// waitFor polls cond for up to a minute.
func waitFor(t *testing.T, p *proc, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60 s\n%s", what, lastLines(p.logs(), 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type volumeView struct {
	ID            uint64           `json:"id"`
	Replicas      int              `json:"replicas"`
	Generation    uint64           `json:"generation"`
	AttachedTo    string           `json:"attached_to"`
	ChunksPerNode map[string]int64 `json:"chunks_per_node"`
}

func showVolume(t *testing.T, p *proc, name string) volumeView {
	t.Helper()
	so, se, code := p.cli("--json", "volume", "show", name)
	if code != 0 {
		t.Fatalf("volume show %s: %s", name, se)
	}
	var v volumeView
	if err := json.Unmarshal([]byte(so), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestCluster: three processes, a 1 GiB volume with three replicas. Data
// copied in over NBD reads back through NBD and iSCSI, and every node holds
// every chunk — read from each node's own store over the node RPC, not
// taken from the writer's word. fio's verify passes. A one-replica volume
// spreads its chunks over all three. A manager killed with SIGKILL leaves
// a catalog that takes changes sent to any node; restarted, it catches up.
// The volume moves to another node's target, which serves the same data,
// and the nodes refuse writes stamped with the old generation.
func TestCluster(t *testing.T) {
	need(t, "nbdcopy", "qemu-io", "fio")
	procs := startCluster(t)
	n1 := procs[0]
	if _, se, code := n1.cli("volume", "create", "cvol0", "--size", "1GiB", "--replicas", "3"); code != 0 {
		t.Fatalf("create cvol0: %s", se)
	}
	if _, se, code := n1.cli("volume", "create", "spread", "--size", "64MiB", "--replicas", "1"); code != 0 {
		t.Fatalf("create spread: %s", se)
	}
	if _, se, code := n1.cli("volume", "create", "big", "--size", "64MiB", "--replicas", "4"); code == 0 || !strings.Contains(se, "4 replicas requested, 3 storage nodes") {
		t.Fatalf("4 replicas over 3 nodes: exit %d, %s", code, se)
	}
	waitFor(t, n1, "cvol0 served by node1", func() bool { _, err := shErr("nbdinfo", "--size", n1.uri("cvol0")); return err == nil })

	// 64 MiB of random data in and out over NBD, then read on iSCSI.
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	data := make([]byte, 64<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "nbdcopy", "--flush", src, n1.uri("cvol0"))
	out := filepath.Join(dir, "out")
	sh(t, "nbdcopy", n1.uri("cvol0"), out)
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got[:len(data)], data) || !bytes.Equal(got[len(data):], make([]byte, len(got)-len(data))) {
		t.Fatalf("cvol0 did not read back what nbdcopy wrote (%v)", err)
	}
	iscsiOut := sh(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("read -v %d 16", 40<<20), n1.iscsiURI("cvol0"))
	if !strings.Contains(iscsiOut, fmt.Sprintf("%02x %02x", data[40<<20], data[40<<20+1])) {
		t.Fatalf("iSCSI read of cvol0 at 40 MiB:\n%s\nwant bytes % x", iscsiOut, data[40<<20:40<<20+2])
	}

	// Every node holds every chunk of cvol0: read each node's store.
	cv := showVolume(t, n1, "cvol0")
	ns := nodes(t, n1)
	buf := make([]byte, 1<<20)
	for _, n := range ns {
		c, err := wire.NewClient(n.Addr, wire.ClientOptions{Name: "test"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for off := 0; off < len(data); off += len(buf) {
			if err := c.Read(ctx, cv.ID, uint64(off/store.BlockSize), buf, 1); err != nil {
				t.Fatalf("%s: read its replica of cvol0 at %d: %v", n.Name, off, err)
			}
			if !bytes.Equal(buf, data[off:off+len(buf)]) {
				t.Fatalf("%s: its replica of chunk %d differs from what was written", n.Name, off>>20)
			}
		}
		cancel()
		c.Close()
	}
	// cairn node show: each node itself says it holds the 64 MiB copied in.
	for _, n := range ns {
		so, se, code := n1.cli("--json", "node", "show", n.Name)
		if code != 0 {
			t.Fatalf("node show %s: %s", n.Name, se)
		}
		var nd struct {
			Volumes []struct {
				Name   string `json:"name"`
				Chunks int64  `json:"chunks"`
				Bytes  int64  `json:"bytes"`
			} `json:"volumes"`
		}
		if err := json.Unmarshal([]byte(so), &nd); err != nil {
			t.Fatal(err)
		}
		ok := false
		for _, v := range nd.Volumes {
			ok = ok || v.Name == "cvol0" && v.Chunks == 1024 && v.Bytes == int64(len(data))
		}
		if !ok {
			t.Fatalf("node show %s: %s; want cvol0 with 1024 chunks and %d bytes held", n.Name, so, len(data))
		}
	}
	if _, se, code := n1.cli("node", "show", "nobody"); code == 0 || !strings.Contains(se, "not found") {
		t.Fatalf("node show of an unknown node: exit %d, %s", code, se)
	}
	if sv := showVolume(t, n1, "spread"); len(sv.ChunksPerNode) != 3 {
		t.Fatalf("R=1 volume over 3 nodes: chunks per node %v, want all three", sv.ChunksPerNode)
	}

	host, port, _ := net.SplitHostPort(n1.nbd)
	fio := sh(t, "fio", "--name=verify", "--ioengine=nbd", "--uri=nbd://"+host+":"+port+"/cvol0",
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs=2", "--size=8M", "--offset=128M", "--offset_increment=64M",
		"--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--do_verify=1", "--group_reporting", "--output-format=terse")
	if !strings.Contains(fio, "3;") || strings.Contains(fio, "verify: bad") {
		t.Fatalf("fio verify on the R=3 volume:\n%s", fio)
	}

	// A manager dies: changes still go through any survivor.
	n3 := procs[2]
	n3.stop(syscall.SIGKILL)
	for _, p := range procs[:2] {
		name := "after-" + filepath.Base(p.dir)
		deadline := time.Now().Add(60 * time.Second)
		for {
			_, se, code := p.cli("volume", "create", name, "--size", "8MiB", "--replicas", "2")
			if code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("create through a survivor with node3 dead: %s\n%s", se, p.logs())
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	n3.run()
	var last string
	waitFor(t, n3, "node3 catches up", func() bool {
		so, se, code := n3.cli("volume", "list")
		last = so + se
		return code == 0 && strings.Count(so, "\nafter-") == 2
	})
	t.Logf("node3 after restart:\n%s", last)

	// Move cvol0 to node2's target: node2 serves the same data, node1 no
	// longer does, and the nodes refuse the old generation's writes.
	n2 := procs[1]
	if _, se, code := n3.cli("volume", "attach", "cvol0", "--target", "node2"); code != 0 {
		t.Fatalf("attach cvol0 to node2: %s", se)
	}
	waitFor(t, n2, "cvol0 served by node2", func() bool {
		return showVolume(t, n2, "cvol0").AttachedTo == "node2" && func() bool { _, err := shErr("nbdinfo", "--size", n2.uri("cvol0")); return err == nil }()
	})
	waitFor(t, n1, "node1 stops serving cvol0", func() bool { _, err := shErr("nbdinfo", "--size", n1.uri("cvol0")); return err != nil })
	if o, err := shErr("qemu-io", "-f", "raw", "-c", "read 0 4k", n1.uri("cvol0")); err == nil || !strings.Contains(o, "node2") || !strings.Contains(o, n2.nbd) {
		t.Fatalf("qemu-io of cvol0 at node1 after the move: %v: %s; want an error naming node2 at %s", err, o, n2.nbd)
	}
	// An iSCSI login at node1 is redirected to node2, and libiscsi follows.
	sh(t, "qemu-io", "-f", "raw", "-r", "-c", "read 0 4k", n1.iscsiURI("cvol0"))
	out2 := filepath.Join(dir, "out2")
	sh(t, "nbdcopy", n2.uri("cvol0"), out2)
	if got, _ := os.ReadFile(out2); !bytes.Equal(got[:1<<20], data[:1<<20]) {
		t.Fatal("node2 does not serve what node1 wrote")
	}
	moved := showVolume(t, n2, "cvol0")
	c, err := wire.NewClient(ns[0].Addr, wire.ClientOptions{Name: "stale-target"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stale := store.Stamp{Epoch: 1, Seq: (moved.Generation-1)<<40 | 1}
	waitFor(t, n1, "node1's store refuses the old generation", func() bool {
		return c.Write(context.Background(), moved.ID, 0, make([]byte, store.BlockSize), stale, false) != nil
	})
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestGossipKey: with a cluster key, a process with the same key joins the
// pool; one with another key, or none, never appears in it.
func TestGossipKey(t *testing.T) {
	dir := t.TempDir()
	writeKey := func(name string) string {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good, other := writeKey("good.key"), writeKey("other.key")
	seedPort := freePort(t)
	start := func(name, key string, port int, join string) *proc {
		d := t.TempDir()
		cfg := fmt.Sprintf(`node_name = %q
data_dir = "data"
roles = ["storage", "manager"]
[admin]
listen = "127.0.0.1:0"
[gossip]
bind = "127.0.0.1:%d"
join = [%s]
[raft]
bind = "127.0.0.1:%d"
bootstrap_expect = 1
[storage]
listen = "127.0.0.1:0"
cache_size = "16MiB"
`, name, port, join, freePort(t))
		if key != "" {
			cfg = strings.Replace(cfg, "join = ", fmt.Sprintf("secret_key_file = %q\njoin = ", key), 1)
		}
		if err := os.WriteFile(filepath.Join(d, "cairn.toml"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		p := &proc{t: t, dir: d}
		p.run()
		t.Cleanup(func() { p.stop(syscall.SIGTERM) })
		return p
	}
	seed := fmt.Sprintf("%q", fmt.Sprintf("127.0.0.1:%d", seedPort))
	a := start("keyed-a", good, seedPort, "")
	intruder := start("intruder", other, freePort(t), seed)
	plain := start("plain", "", freePort(t), seed)
	b := start("keyed-b", good, freePort(t), seed)
	alive := func(p *proc) map[string]bool {
		m := map[string]bool{}
		for _, n := range nodes(t, p) {
			if n.Gossip == "alive" {
				m[n.Name] = true
			}
		}
		return m
	}
	waitFor(t, a, "keyed-b joins keyed-a", func() bool { return alive(a)["keyed-b"] && alive(b)["keyed-a"] })
	// The seed loop retries every 2 s: give the others several tries.
	time.Sleep(6 * time.Second)
	for _, p := range []*proc{a, b} {
		if m := alive(p); m["intruder"] || m["plain"] {
			t.Fatalf("a node without the cluster key joined: %v", m)
		}
	}
	for _, p := range []*proc{intruder, plain} {
		if m := alive(p); len(m) != 1 {
			t.Fatalf("%s sees %v: it joined without the cluster key", filepath.Base(p.dir), m)
		}
	}
}

// TestClusterTLS: three nodes with certificates from cairn cluster certs
// run Raft, the node RPC and their internal calls over mutual TLS and the
// admin API over HTTPS; an NBD export that requires TLS serves nbds://
// with the CA and refuses plain nbd://; a client without a certificate
// gets nothing from a node's RPC.
func TestClusterTLS(t *testing.T) {
	need(t, "nbdinfo", "qemu-io")
	certs := t.TempDir()
	if err := pki.WriteCluster(certs, []string{"node1", "node2", "node3"}, nil); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(certs, pki.CACertFile)
	procs := startClusterWith(t, func(node string) string {
		cert, key := pki.NodeFiles(certs, node)
		return fmt.Sprintf("[tls]\nca_file = %q\ncert_file = %q\nkey_file = %q\n", ca, cert, key)
	}, ca)
	// nbd.tls is in [nbd], which the base config has already opened; a
	// second [nbd] table is a TOML error, so node1 gets it by rewrite.
	n1 := procs[0]
	cfgPath := filepath.Join(n1.dir, "cairn.toml")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, []byte(strings.Replace(string(b), "[nbd]\n", "[nbd]\ntls = \"require\"\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	n1.stop(syscall.SIGTERM)
	n1.run()
	tlsCLI := func(p *proc, args ...string) (string, string, int) { return p.cli(args...) }
	waitFor(t, n1, "node1 back in the TLS cluster", func() bool {
		in := 0
		for _, n := range nodes(t, n1) {
			if n.State == "in_service" && n.Gossip == "alive" {
				in++
			}
		}
		return in == 3
	})
	n1.caFile = ""
	if _, se, code := n1.cli("volume", "list"); code == 0 {
		t.Fatalf("plain HTTP to an HTTPS admin API worked: %s", se)
	}
	n1.caFile = ca
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, se, code := tlsCLI(n1, "volume", "create", "tvol", "--size", "64MiB", "--replicas", "3")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("create over HTTPS: %s\n%s", se, lastLines(n1.logs(), 30))
		}
		time.Sleep(500 * time.Millisecond)
	}
	nbdCerts := t.TempDir()
	pem, _ := os.ReadFile(ca)
	if err := os.WriteFile(filepath.Join(nbdCerts, "ca-cert.pem"), pem, 0o644); err != nil {
		t.Fatal(err)
	}
	secure := "nbds://" + n1.nbd + "/tvol?tls-certificates=" + nbdCerts
	waitFor(t, n1, "tvol served over nbds://", func() bool { _, err := shErr("nbdinfo", "--size", secure); return err == nil })
	host, port, _ := net.SplitHostPort(n1.nbd)
	sh(t, "qemu-io", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+nbdCerts, "--image-opts",
		"-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M",
		"driver=nbd,server.type=inet,server.host="+host+",server.port="+port+",export=tvol,tls-creds=tls0")
	if o, err := shErr("nbdinfo", "--size", n1.uri("tvol")); err == nil {
		t.Fatalf("plain nbd:// to a TLS-only export worked: %s", o)
	}
	// A snapshot of a group with a volume at node2: node1 coordinates and
	// reaches node2's target over the node RPC's mutual TLS.
	if _, se, code := tlsCLI(n1, "volume", "create", "tvol2", "--size", "64MiB", "--replicas", "2", "--target", "node2"); code != 0 {
		t.Fatalf("create tvol2 at node2: %s", se)
	}
	if _, se, code := tlsCLI(n1, "group", "create", "tg", "--volumes", "tvol,tvol2"); code != 0 {
		t.Fatalf("group create: %s", se)
	}
	var sealed string
	waitFor(t, n1, "a snapshot of tvol and tvol2 sealed", func() bool {
		so, se, code := tlsCLI(n1, "--json", "snapshot", "create", "tg")
		sealed = so + se
		return code == 0 && strings.Contains(so, `"state": "sealed"`) && strings.Contains(so, "tvol2@")
	})
	t.Logf("snapshot over TLS:\n%s", sealed)

	// The node RPC refuses a client without a certificate.
	var addr string
	for _, n := range nodes(t, n1) {
		if n.Name == "node2" {
			addr = n.Addr
		}
	}
	c, err := wire.NewClient(addr, wire.ClientOptions{Name: "intruder"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Read(ctx, 1, 0, make([]byte, store.BlockSize), 1); err == nil {
		t.Fatal("a plain client read from a TLS node's RPC")
	}
}
