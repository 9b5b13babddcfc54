package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// startDaemonWith starts a daemon whose test config has extra keys in its
// [storage] table.
func startDaemonWith(t *testing.T, storage string) *proc {
	t.Helper()
	dir := t.TempDir()
	base := fmt.Sprintf(testConfig, freePort(t))
	const table = "[storage]\nlisten = \"127.0.0.1:0\"\n"
	if !strings.Contains(base, table) {
		t.Fatal("testConfig has no [storage] table to extend")
	}
	cfg := strings.Replace(base, table, table+storage+"\n", 1)
	if err := os.WriteFile(filepath.Join(dir, "cairn.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, dir: dir}
	p.run()
	t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	return p
}

// flattenView is the CLI's --json view of a flatten.
type flattenView struct {
	State       string  `json:"state"`
	Parent      string  `json:"parent"`
	DoneBlocks  uint64  `json:"done_blocks"`
	TotalBlocks uint64  `json:"total_blocks"`
	Percent     float64 `json:"percent"`
	ETA         float64 `json:"eta_seconds"`
}

var flattenFinishedRE = regexp.MustCompile(`msg="flatten finished on this node" volume=f1 id=\d+ blocks=(\d+)`)

// TestFlatten: a flatten of a fork, throttled ([storage] flatten_rate),
// survives a restart of the daemon in the middle and resumes where it
// stopped (the resumed run has fewer blocks left than the whole); the CLI
// waits for it with --json lines carrying percent and eta_seconds; after
// it the fork reads exactly as before, no longer reads through, and its
// parent's snapshot and then the parent itself can be deleted without
// changing a byte of the fork.
func TestFlatten(t *testing.T) {
	need(t, "qemu-io", "nbdcopy")
	p := startDaemonWith(t, `flatten_rate = "1MiB"`)
	ok := okCLI(t, p)
	const M = 1 << 20
	ok("volume", "create", "lv", "--size", "64MiB")
	write(t, p.uri("lv"), "write -P 0x11 0 12M")
	write(t, p.uri("lv"), "write -P 0x12 20M 1M")
	ok("snapshot", "create", "lv", "--name", "s1")
	write(t, p.uri("lv"), "write -P 0x21 0 1M") // the parent moves on
	ok("volume", "fork", "lv@s1", "f1")
	write(t, p.uri("f1"), "write -P 0x31 4M 1M")
	before := dump(t, p, "f1")
	if !bytes.Equal(before[:M], bytes.Repeat([]byte{0x11}, M)) || !bytes.Equal(before[4*M:5*M], bytes.Repeat([]byte{0x31}, M)) {
		t.Fatal("the fork does not read as its snapshot plus its own write")
	}
	// 12 MiB reads through to the parent: 3072 blocks, 12 s at 1 MiB/s.
	const throughBlocks = 12 * M / 4096

	status := func(args ...string) flattenView {
		t.Helper()
		var st flattenView
		out := ok(append([]string{"--json", "volume", "flatten", "f1"}, args...)...)
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("flatten --json: %v\n%s", err, out)
		}
		return st
	}
	if st := status("--no-wait"); st.State != "running" || st.Parent != "lv" {
		t.Fatalf("flatten started: %+v", st)
	}
	var mid flattenView
	waitFor(t, p, "flatten progress", func() bool {
		mid = status("--no-wait") // a running flatten's request changes nothing
		return mid.DoneBlocks > 0 || mid.State != "running"
	})
	if mid.State != "running" || mid.TotalBlocks != throughBlocks || mid.Percent <= 0 || mid.Percent >= 100 {
		t.Fatalf("flatten in progress: %+v (want running, %d blocks in all)", mid, throughBlocks)
	}
	t.Logf("restarting at %+v", mid)
	p.stop(syscall.SIGTERM)
	p.run()

	out := ok("--json", "volume", "flatten", "f1") // waits
	var last flattenView
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range lines {
		if !strings.Contains(l, `"eta_seconds"`) || !strings.Contains(l, `"percent"`) {
			t.Fatalf("flatten --json line without percent and eta_seconds: %s", l)
		}
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatalf("flatten --json: %v\n%s", err, out)
	}
	if last.State != "complete" || last.Percent != 100 {
		t.Fatalf("flatten ended: %+v\n%s", last, out)
	}
	m := flattenFinishedRE.FindAllStringSubmatch(p.logs(), -1)
	if len(m) != 1 {
		t.Fatalf("%d flatten finished lines for f1:\n%s", len(m), p.logs())
	}
	if n, _ := strconv.Atoi(m[0][1]); n <= 0 || n >= throughBlocks {
		t.Fatalf("the flatten after the restart copied %d blocks: it did not resume (%d in all)", n, throughBlocks)
	}

	if got := dump(t, p, "f1"); !bytes.Equal(got, before) {
		t.Fatal("the flattened fork reads differently")
	}
	if so := ok("volume", "show", "f1"); strings.Contains(so, "fork of") {
		t.Fatalf("the flattened fork still reads through:\n%s", so)
	}
	ok("snapshot", "delete", "s1")
	ok("volume", "delete", "lv")
	write(t, p.uri("f1"), "write -P 0x41 30M 1M")
	got := dump(t, p, "f1")
	if !bytes.Equal(got[:30*M], before[:30*M]) || !bytes.Equal(got[31*M:], before[31*M:]) {
		t.Fatal("with its parent deleted the fork reads differently")
	}
	if _, se, code := p.cli("volume", "flatten", "f1"); code == 0 || !strings.Contains(se, "not a fork") {
		t.Fatalf("flatten of a flattened volume: exit %d: %s", code, se)
	}
}

// TestClusterForks: on three nodes with a volume of two replicas spread
// over them, the changed-block map crosses the node RPC, a fork is served
// only once every node holding it has its lineage and reads through to
// its parent's snapshot inside each node's store, and a flatten finishes
// only when every holder has copied its share, after which the parent's
// snapshot goes and the fork reads the same.
func TestClusterForks(t *testing.T) {
	need(t, "nbdcopy", "qemu-io", "nbdinfo")
	procs := startCluster(t)
	n1 := procs[0]
	ok := okCLI(t, n1)
	const M = 1 << 20
	ok("volume", "create", "cv", "--size", "64MiB", "--replicas", "2")
	waitFor(t, n1, "cv served by node1", func() bool { _, err := shErr("nbdinfo", "--size", n1.uri("cv")); return err == nil })
	data := make([]byte, 32*M)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "nbdcopy", "--flush", src, n1.uri("cv"))
	ok("snapshot", "create", "cv", "--name", "s1")
	write(t, n1.uri("cv"), "write -P 0x77 8M 1M")
	write(t, n1.uri("cv"), "write -P 0x78 40M 64k")
	if got, want := changedExtents(t, n1, "cv", "s1"), [][2]int64{{8 * M, M}, {40 * M, 64 << 10}}; !slices.Equal(got, want) {
		t.Fatalf("changed since s1 across the nodes: %v, want %v", got, want)
	}

	ok("volume", "fork", "cv@s1", "f")
	waitFor(t, n1, "the fork served", func() bool { _, err := shErr("nbdinfo", "--size", n1.uri("f")); return err == nil })
	write(t, n1.uri("f"), "write -P 0x31 2M 1M")
	want := make([]byte, 64*M)
	copy(want, data)
	copy(want[2*M:3*M], bytes.Repeat([]byte{0x31}, M))
	if got := dump(t, n1, "f"); !bytes.Equal(got, want) {
		t.Fatal("the fork does not read as its parent's snapshot plus its own write")
	}
	if got := dump(t, n1, "cv@s1"); !bytes.Equal(got[:32*M], data) {
		t.Fatal("the parent's snapshot changed")
	}

	out := ok("--json", "volume", "flatten", "f")
	var st struct {
		State string          `json:"state"`
		Nodes map[string]bool `json:"nodes"`
	}
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		if err := dec.Decode(&st); err != nil {
			t.Fatalf("flatten --json: %v\n%s", err, out)
		}
	}
	if st.State != "complete" || len(st.Nodes) != 3 {
		t.Fatalf("flatten: %+v, want complete on 3 holders\n%s", st, out)
	}
	for n, fin := range st.Nodes {
		if !fin {
			t.Fatalf("flatten complete with %s not finished: %+v", n, st)
		}
	}
	ok("snapshot", "delete", "s1")
	if got := dump(t, n1, "f"); !bytes.Equal(got, want) {
		t.Fatal("the flattened fork reads differently once its parent's snapshot is gone")
	}
}
