package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cairn/bench"
)

// These tests build cairnd and cairn, run the daemon as a process on
// loopback, and drive it with the real clients a user has: nbdinfo, nbdcopy,
// qemu-io, fio and the cairn CLI.

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cairn-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "cairn/cmd/cairnd", "cairn/cmd/cairn")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// need skips the test when a client tool is missing, or fails it when
// CAIRN_REQUIRE_TOOLS is set (make test installs them).
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CAIRN_REQUIRE_TOOLS") != "" {
				t.Fatalf("%s not installed (make test installs it)", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
}

// proc is a running cairnd.
type proc struct {
	t       *testing.T
	dir     string // holds cairn.toml and data/
	cmd     *exec.Cmd
	nbd     string // host:port
	iscsi   string
	admin   string
	logMu   sync.Mutex
	log     bytes.Buffer
	exited  chan struct{}
	exitErr error
	caFile  string // the CLI speaks HTTPS with this CA when set
}

const testConfig = `node_name = "test1"
data_dir = "data"
roles = ["target", "storage", "manager"]
[admin]
listen = "127.0.0.1:0"
[nbd]
listen = "127.0.0.1:0"
[iscsi]
listen = "127.0.0.1:0"
iqn_prefix = "iqn.2026-11.test.cairn"
[raft]
bind = "127.0.0.1:%d"
bootstrap_expect = 1
[gossip]
bind = "127.0.0.1:0"
[storage]
listen = "127.0.0.1:0"
[[volume]]
name = "vol0"
size = "1GiB"
[[volume]]
name = "secure"
size = "64MiB"
chap_user = "alice"
chap_secret = "correct-horse-battery"
[[volume]]
name = "native4k"
size = "64MiB"
logical_block_size = 4096
`

// freePort returns a loopback port that is free for TCP and UDP (gossip
// binds both) and was not handed out before in this test binary, from
// e2ePorts (see bench.PortRange for why not ":0").
func freePort(t *testing.T) int {
	t.Helper()
	port, err := e2ePorts.Free()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// e2ePorts are the ports freePort hands out, apart from bench's [12000,
// 20000): the bench test binary runs beside this one.
var e2ePorts = bench.NewPortRange(20000, 32000)

// startDaemon writes a config into a new directory and starts cairnd on it.
func startDaemon(t *testing.T) *proc {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(testConfig, freePort(t))
	if err := os.WriteFile(filepath.Join(dir, "cairn.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, dir: dir}
	p.run()
	t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	return p
}

var servingRE = regexp.MustCompile(`msg="cairnd serving".* nbd=(\S+) iscsi=(\S+) admin=(\S+)`)

// run starts the daemon on p.dir and waits until it serves.
func (p *proc) run() {
	t := p.t
	t.Helper()
	p.cmd = exec.Command(filepath.Join(binDir, "cairnd"), "--config", filepath.Join(p.dir, "cairn.toml"))
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.exited = make(chan struct{})
	ready := make(chan [3]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.logMu.Lock()
			p.log.WriteString(line + "\n")
			p.logMu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				ready <- [3]string{m[1], m[2], m[3]}
			}
		}
		p.exitErr = p.cmd.Wait()
		close(p.exited)
	}()
	select {
	case addrs := <-ready:
		p.nbd, p.iscsi, p.admin = addrs[0], addrs[1], addrs[2]
	case <-p.exited:
		t.Fatalf("cairnd exited before serving: %v\n%s", p.exitErr, p.logs())
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("cairnd not serving after 60 s\n%s", p.logs())
	}
}

func (p *proc) logs() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

// stop sends sig and waits for the process to exit.
func (p *proc) stop(sig syscall.Signal) {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		p.t.Errorf("cairnd did not exit on %v within 30 s\n%s", sig, p.logs())
	}
}

func (p *proc) uri(export string) string { return "nbd://" + p.nbd + "/" + export }

// sh runs a client command and returns its stdout; it fails the test on a
// non-zero exit.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := shErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func shErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func TestNBDInfo(t *testing.T) {
	need(t, "nbdinfo")
	p := startDaemon(t)
	var info struct {
		Exports []struct {
			Name          string   `json:"export-name"`
			Size          int64    `json:"export-size"`
			ReadOnly      bool     `json:"is_read_only"`
			CanFlush      bool     `json:"can_flush"`
			CanFUA        bool     `json:"can_fua"`
			CanTrim       bool     `json:"can_trim"`
			CanZero       bool     `json:"can_zero"`
			CanFastZero   bool     `json:"can_fast_zero"`
			CanCache      bool     `json:"can_cache"`
			CanMultiConn  bool     `json:"can_multi_conn"`
			BlockSizeMin  int64    `json:"block_size_minimum"`
			BlockSizePref int64    `json:"block_size_preferred"`
			BlockSizeMax  int64    `json:"block_size_maximum"`
			Contexts      []string `json:"contexts"`
		} `json:"exports"`
	}
	out := sh(t, "nbdinfo", "--json", p.uri("vol0"))
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	e := info.Exports[0]
	if e.Size != 1<<30 || e.ReadOnly || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanFastZero || !e.CanCache || !e.CanMultiConn {
		t.Errorf("nbdinfo: unexpected export properties: %+v", e)
	}
	if e.BlockSizeMin != 512 || e.BlockSizePref != 4096 || e.BlockSizeMax != 32<<20 {
		t.Errorf("nbdinfo: block sizes %d/%d/%d, want 512/4096/33554432", e.BlockSizeMin, e.BlockSizePref, e.BlockSizeMax)
	}
	if !strings.Contains(strings.Join(e.Contexts, ","), "base:allocation") {
		t.Errorf("nbdinfo: contexts %v lack base:allocation", e.Contexts)
	}
	if list := sh(t, "nbdinfo", "--list", "--json", "nbd://"+p.nbd); !strings.Contains(list, `"vol0"`) {
		t.Errorf("nbdinfo --list does not show vol0:\n%s", list)
	}

	// The allocation map: data where written, holes elsewhere.
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 64k", "-c", "write -P 0xcd 512M 4k", p.uri("vol0"))
	mp := sh(t, "nbdinfo", "--map", "--json", p.uri("vol0"))
	var ext []struct {
		Offset int64 `json:"offset"`
		Length int64 `json:"length"`
		Type   int   `json:"type"`
	}
	if err := json.Unmarshal([]byte(mp), &ext); err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, mp)
	}
	data := map[[2]int64]bool{}
	var total int64
	for _, x := range ext {
		total += x.Length
		if x.Type&1 == 0 { // not a hole
			data[[2]int64{x.Offset, x.Length}] = true
		}
	}
	want := map[[2]int64]bool{{1 << 20, 64 << 10}: true, {512 << 20, 4 << 10}: true}
	if total != 1<<30 || fmt.Sprint(data) != fmt.Sprint(want) {
		t.Errorf("nbdinfo --map: data extents %v (total %d), want %v\n%s", data, total, want, mp)
	}
}

func TestQemuIOPatterns(t *testing.T) {
	need(t, "qemu-io")
	p := startDaemon(t)
	const last = 1<<30 - 4096
	var cmds []string
	// start, middle, last block, across a chunk boundary (1 MiB), unaligned.
	for i, w := range []struct{ off, n int64 }{{0, 4096}, {512 << 20, 64 << 10}, {last, 4096}, {1<<20 - 8192, 16384}, {3<<20 - 512, 1024}, {7<<20 + 100, 9000}} {
		cmds = append(cmds, "-c", fmt.Sprintf("write -P 0x%02x %d %d", 0x11+i, w.off, w.n))
	}
	sh(t, "qemu-io", append(append([]string{"-f", "raw"}, cmds...), p.uri("vol0"))...)
	cmds = cmds[:0]
	for i, w := range []struct{ off, n int64 }{{0, 4096}, {512 << 20, 64 << 10}, {last, 4096}, {1<<20 - 8192, 16384}, {3<<20 - 512, 1024}, {7<<20 + 100, 9000}} {
		cmds = append(cmds, "-c", fmt.Sprintf("read -P 0x%02x %d %d", 0x11+i, w.off, w.n))
	}
	// Bytes around the unaligned writes are still zero.
	cmds = append(cmds, "-c", "read -P 0 3144704 512", "-c", fmt.Sprintf("read -P 0 %d 100", 7<<20))
	out := sh(t, "qemu-io", append(append([]string{"-f", "raw"}, cmds...), p.uri("vol0"))...)
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io read verification failed:\n%s", out)
	}
	// write -z then read zeros; discard then read zeros.
	out = sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 2M 1M", "-c", "write -z 2M 1M", "-c", "read -P 0 2M 1M",
		"-c", "write -P 0x78 8M 2M", "-c", "discard 8M 2M", "-c", "read -P 0 8M 2M",
		"-c", "write -P 0x79 12M 8k", "-c", fmt.Sprint("write -z ", 12<<20+1024, " 2048"), "-c", "read -P 0x79 12M 1024", "-c", fmt.Sprint("read -P 0 ", 12<<20+1024, " 2048"), "-c", fmt.Sprint("read -P 0x79 ", 12<<20+3072, " 5120"),
		p.uri("vol0"))
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io zero/discard verification failed:\n%s", out)
	}
	// Out of range: an error, and the daemon keeps serving.
	if out, err := shErr("qemu-io", "-f", "raw", "-c", fmt.Sprintf("read %d 8192", last), p.uri("vol0")); err == nil && !strings.Contains(out, "error") && !strings.Contains(out, "Input/output") {
		t.Errorf("read past the end succeeded:\n%s", out)
	}
	sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 4096", p.uri("vol0"))
}

// TestQemuIOConcurrentSubBlock writes the eight 512-byte sectors of one 4 KiB
// block from eight concurrent clients: every one must survive.
func TestConcurrentSubBlockWrites(t *testing.T) {
	need(t, "qemu-io")
	p := startDaemon(t)
	for round := 0; round < 5; round++ {
		base := int64(round) * 4096
		var wg sync.WaitGroup
		for s := 0; s < 8; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if out, err := shErr("qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %d 512", 0x21+s, base+int64(s)*512), p.uri("vol0")); err != nil {
					t.Errorf("write sector %d: %v\n%s", s, err, out)
				}
			}()
		}
		wg.Wait()
		var cmds []string
		for s := 0; s < 8; s++ {
			cmds = append(cmds, "-c", fmt.Sprintf("read -P 0x%02x %d 512", 0x21+s, base+int64(s)*512))
		}
		out := sh(t, "qemu-io", append(append([]string{"-f", "raw"}, cmds...), p.uri("vol0"))...)
		if strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("round %d: a concurrent sub-block write was lost:\n%s", round, out)
		}
	}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestNBDCopyRoundTrip(t *testing.T) {
	need(t, "nbdcopy")
	p := startDaemon(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	buf := make([]byte, 256<<20)
	rand.Read(buf)
	clear(buf[64<<20 : 80<<20]) // a zero run, which nbdcopy may send as a zero request
	if err := os.WriteFile(in, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "nbdcopy", "--flush", in, p.uri("vol0"))
	sh(t, "nbdcopy", p.uri("vol0"), out)
	if err := os.Truncate(out, int64(len(buf))); err != nil {
		t.Fatal(err)
	}
	if a, b := sha(t, in), sha(t, out); a != b {
		t.Fatalf("nbdcopy round trip: sha256 in %s, out %s", a, b)
	}
}

func TestFioVerify(t *testing.T) {
	need(t, "fio")
	p := startDaemon(t)
	host, port, _ := net.SplitHostPort(p.nbd)
	out := sh(t, "fio", "--name=verify", "--ioengine=nbd", "--uri=nbd://"+host+":"+port+"/vol0",
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--numjobs=4", "--size=32M", "--offset_increment=64M",
		"--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--do_verify=1", "--group_reporting", "--output-format=terse")
	// Terse v3: field 5 is the KiB read, here by the verify pass: 4 × 32 MiB.
	var terse []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "3;") {
			terse = strings.Split(l, ";")
		}
	}
	if len(terse) < 6 || terse[4] != "0" || terse[5] != "131072" {
		t.Fatalf("fio did not write and verify 128 MiB:\n%s", out)
	}
}

// TestKill9AfterFlush writes, flushes, kills the daemon with SIGKILL, restarts
// it on the same data directory and reads the data back.
func TestKill9AfterFlush(t *testing.T) {
	need(t, "qemu-io")
	p := startDaemon(t)
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x5b 100M 64k", "-c", fmt.Sprint("write -z ", 100<<20+4096, " 4096"), "-c", "flush",
		"-c", "write -f -P 0x5c 200M 4k", // FUA
		p.uri("vol0"))
	p.stop(syscall.SIGKILL)
	p.run()
	out := sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0x5b 100M 4096", "-c", fmt.Sprint("read -P 0 ", 100<<20+4096, " 4096"),
		"-c", fmt.Sprint("read -P 0x5b ", 100<<20+8192, " 56k"), "-c", "read -P 0x5c 200M 4k", p.uri("vol0"))
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("data lost across kill -9:\n%s", out)
	}
}

// cli runs the cairn CLI against p and returns stdout, stderr and the exit code.
func (p *proc) cli(args ...string) (string, string, int) {
	pre := []string{"--addr", p.admin}
	if p.caFile != "" {
		pre = append(pre, "--ca-file", p.caFile)
	}
	cmd := exec.Command(filepath.Join(binDir, "cairn"), append(pre, args...)...)
	cmd.Dir = p.dir // the CLI finds the token in data/admin.token
	cmd.Env = append(os.Environ(), "CAIRN_TOKEN=", "CAIRN_TOKEN_FILE=")
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		p.t.Fatal(err)
	}
	return so.String(), se.String(), code
}

func TestCLI(t *testing.T) {
	need(t, "nbdinfo", "qemu-io")
	p := startDaemon(t)
	ok := func(args ...string) string {
		t.Helper()
		so, se, code := p.cli(args...)
		if code != 0 {
			t.Fatalf("cairn %s: exit %d: %s", strings.Join(args, " "), code, se)
		}
		return so
	}
	fail := func(wantCode int, wantErr string, args ...string) {
		t.Helper()
		so, se, code := p.cli(args...)
		if code != wantCode || !strings.Contains(se, wantErr) || strings.Count(strings.TrimSpace(se), "\n") > 0 && wantCode == 1 {
			t.Fatalf("cairn %s: exit %d, stderr %q, stdout %q; want exit %d with %q on one line", strings.Join(args, " "), code, se, so, wantCode, wantErr)
		}
	}
	// Changes need the admin token, which the CLI found in data/; without
	// it, or with a wrong one, they are refused and reads still work.
	noToken := exec.Command(filepath.Join(binDir, "cairn"), "--addr", p.admin, "volume", "create", "x", "--size", "64MiB")
	noToken.Dir = t.TempDir() // no data/admin.token here
	noToken.Env = append(os.Environ(), "CAIRN_TOKEN=", "CAIRN_TOKEN_FILE=")
	if out, err := noToken.CombinedOutput(); err == nil || !strings.Contains(string(out), "needs the admin token") {
		t.Fatalf("volume create without a token: %v: %s", err, out)
	}
	bad := filepath.Join(p.dir, "bad.token")
	if err := os.WriteFile(bad, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fail(1, "needs the admin token", "--token-file", bad, "volume", "create", "x", "--size", "64MiB")
	if _, _, code := p.cli("--token-file", bad, "volume", "list"); code != 0 {
		t.Fatalf("volume list with a wrong token: exit %d, want 0 (reads are open)", code)
	}
	if st, err := os.Stat(filepath.Join(p.dir, "data", "admin.token")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v, mode %v; want 0600", err, st.Mode())
	}
	ok("volume", "create", "data1", "--size", "64MiB")
	var v struct {
		Name string `json:"name"`
		Size int64  `json:"size"`
		NBD  string `json:"nbd"`
	}
	if err := json.Unmarshal([]byte(ok("--json", "volume", "show", "data1")), &v); err != nil || v.Size != 64<<20 || v.Name != "data1" {
		t.Fatalf("volume show --json: %+v %v", v, err)
	}
	if list := ok("volume", "list"); !strings.Contains(list, "data1") || !strings.Contains(list, "vol0") {
		t.Fatalf("volume list:\n%s", list)
	}
	if out := sh(t, "nbdinfo", "--size", p.uri("data1")); strings.TrimSpace(out) != fmt.Sprint(64<<20) {
		t.Fatalf("nbdinfo --size data1: %s", out)
	}
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x42 0 64k", p.uri("data1"))
	ok("volume", "resize", "data1", "--size", "128MiB")
	if out := sh(t, "nbdinfo", "--size", p.uri("data1")); strings.TrimSpace(out) != fmt.Sprint(128<<20) {
		t.Fatalf("nbdinfo --size after resize: %s", out)
	}
	sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x42 0 64k", "-c", "read -P 0 100M 64k", p.uri("data1"))

	fail(1, "already exists", "volume", "create", "data1", "--size", "1GiB")
	fail(1, "not found", "volume", "show", "nope")
	fail(1, "shrink", "volume", "resize", "data1", "--size", "1MiB")
	fail(1, "--size", "volume", "create", "x", "--size", "12parsecs")
	fail(2, "needs --size", "volume", "create", "x")
	fail(2, "unknown command", "frobnicate")
	fail(1, "invalid", "volume", "create", "Bad/Name", "--size", "1GiB")

	// Delete is refused while a client is attached, and --force disconnects it.
	sess := exec.Command("qemu-io", "-f", "raw", p.uri("data1"))
	stdin, _ := sess.StdinPipe()
	var sessOut bytes.Buffer
	sess.Stdout = &sessOut
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); sess.Wait() }()
	io.WriteString(stdin, "read 0 4k\n")
	deadline := time.Now().Add(20 * time.Second)
	for {
		var vv struct {
			Connections int `json:"connections"`
		}
		json.Unmarshal([]byte(ok("--json", "volume", "show", "data1")), &vv)
		if vv.Connections > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the attached qemu-io session never shows as a connection")
		}
		time.Sleep(100 * time.Millisecond)
	}
	fail(1, "attached", "volume", "delete", "data1")
	ok("volume", "delete", "data1", "--force")
	fail(1, "not found", "volume", "show", "data1")
	if _, err := shErr("nbdinfo", p.uri("data1")); err == nil {
		t.Fatal("nbdinfo of a deleted volume succeeded")
	}
	var st struct {
		Node string `json:"node"`
		Raft struct {
			State string `json:"state"`
		} `json:"raft"`
	}
	if err := json.Unmarshal([]byte(ok("--json", "status")), &st); err != nil || st.Node != "test1" || st.Raft.State != "Leader" {
		t.Fatalf("status: %+v %v", st, err)
	}
	// The catalog survives a restart.
	ok("volume", "create", "keep", "--size", "8MiB")
	p.stop(syscall.SIGTERM)
	p.run()
	if list := ok("volume", "list"); !strings.Contains(list, "keep") || strings.Contains(list, "data1") {
		t.Fatalf("volume list after restart:\n%s", list)
	}
}

func TestBadConfig(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ name, body, want string }{
		{"unknown key", "node_name = \"n\"\n[nbd]\nlisen = \"127.0.0.1:1\"\n", "lisen"},
		{"bad size", "[[volume]]\nname = \"v\"\nsize = \"ten\"\n", "size"},
		{"bad role", "roles = [\"janitor\"]\n", "janitor"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".toml")
		os.WriteFile(path, []byte(c.body), 0o644)
		cmd := exec.Command(filepath.Join(binDir, "cairnd"), "--config", path)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) || strings.Contains(string(out), "panic") {
			t.Errorf("%s: exit %v, output %q; want an error naming %q", c.name, err, out, c.want)
		}
	}
}

func (p *proc) iscsiURI(volume string) string {
	return "iscsi://" + p.iscsi + "/iqn.2026-11.test.cairn:" + volume + "/0"
}

// TestISCSI drives the daemon's iSCSI target with libiscsi's tools and
// qemu-io, and checks that NBD and iSCSI see one volume.
func TestISCSI(t *testing.T) {
	need(t, "iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "qemu-io")
	p := startDaemon(t)
	const initiator = "iqn.2026-11.test:client"
	// Discovery lists every target; -s also logs in to each, which the
	// CHAP-protected one refuses without credentials.
	ls := sh(t, "iscsi-ls", "-i", initiator, "iscsi://"+p.iscsi)
	if out, err := shErr("iscsi-ls", "-s", "-i", initiator, "iscsi://"+p.iscsi); err == nil || !strings.Contains(out, "Authentication failure") || !strings.Contains(out, "DIRECT_ACCESS") {
		t.Errorf("iscsi-ls -s: want vol0's LUN listed and secure's login refused:\n%s", out)
	}
	for _, want := range []string{"iqn.2026-11.test.cairn:vol0", "iqn.2026-11.test.cairn:secure"} {
		if !strings.Contains(ls, want) {
			t.Errorf("iscsi-ls does not list %s:\n%s", want, ls)
		}
	}
	inq := sh(t, "iscsi-inq", "-i", initiator, p.iscsiURI("vol0"))
	if !strings.Contains(inq, "Peripheral Device Type") {
		t.Errorf("iscsi-inq:\n%s", inq)
	}
	for _, page := range []string{"0x00", "0x80", "0x83", "0xb0", "0xb1", "0xb2"} {
		sh(t, "iscsi-inq", "-i", initiator, "-e", "1", "-c", page, p.iscsiURI("vol0"))
	}
	rc := sh(t, "iscsi-readcapacity16", "-i", initiator, p.iscsiURI("vol0"))
	if !strings.Contains(rc, "RETURNED LOGICAL BLOCK ADDRESS:2097151") || !strings.Contains(rc, "LOGICAL BLOCK LENGTH IN BYTES:512") || !strings.Contains(rc, "LBPME:1 LBPRZ:1") {
		t.Errorf("iscsi-readcapacity16 of a 1 GiB volume with 512-byte blocks:\n%s", rc)
	}
	// A 4096-native volume presents 4096-byte logical blocks.
	rc = sh(t, "iscsi-readcapacity16", "-i", initiator, p.iscsiURI("native4k"))
	if !strings.Contains(rc, "RETURNED LOGICAL BLOCK ADDRESS:16383") || !strings.Contains(rc, "LOGICAL BLOCK LENGTH IN BYTES:4096") {
		t.Errorf("iscsi-readcapacity16 of a 64 MiB 4096-native volume:\n%s", rc)
	}
	out4k := sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x4b 8k 64k", "-c", "read -P 0x4b 8k 64k", "-c", "read -P 0 0 8k", p.iscsiURI("native4k"))
	if strings.Contains(out4k, "Pattern verification failed") {
		t.Fatalf("qemu-io on a 4096-native LUN:\n%s", out4k)
	}

	// Written over NBD, read over iSCSI, and back.
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 64k", "-c", "write -P 0x3d 1073676288 64k", p.uri("vol0"))
	out := sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 64k", "-c", "read -P 0x3d 1073676288 64k",
		"-c", "write -P 0x3e 512M 128k", "-c", "write -z 4M 1M", "-c", "read -P 0 4M 1M", "-c", "discard 8M 1M", "-c", "read -P 0 8M 1M",
		p.iscsiURI("vol0"))
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io over iSCSI:\n%s", out)
	}
	sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x3e 512M 128k", p.uri("vol0"))

	// CHAP: the right secret logs in, a wrong one and none are refused.
	secure := "iscsi://alice%correct-horse-battery@" + p.iscsi + "/iqn.2026-11.test.cairn:secure/0"
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5e 0 4k", "-c", "read -P 0x5e 0 4k", secure)
	for _, bad := range []string{
		"iscsi://alice%wrong-horse-battery@" + p.iscsi + "/iqn.2026-11.test.cairn:secure/0",
		p.iscsiURI("secure"),
	} {
		if out, err := shErr("iscsi-inq", "-i", initiator, bad); err == nil {
			t.Errorf("login with bad credentials succeeded (%s):\n%s", bad, out)
		}
	}
	// The daemon still serves after the refusals.
	sh(t, "iscsi-inq", "-i", initiator, p.iscsiURI("vol0"))
}

// TestISCSIIdle keeps an iSCSI session idle past the target's NOP-In
// keepalive interval (15 s) twice over, then does I/O on it.
func TestISCSIIdle(t *testing.T) {
	need(t, "qemu-io")
	if testing.Short() {
		t.Skip("idles 35 s")
	}
	t.Parallel()
	p := startDaemon(t)
	out := sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x61 0 64k", "-c", "sleep 35000",
		"-c", "read -P 0x61 0 64k", "-c", "write -P 0x62 64k 64k", "-c", "read -P 0x62 64k 64k", p.iscsiURI("vol0"))
	if strings.Contains(out, "Pattern verification failed") || strings.Count(out, "bytes at offset") != 4 {
		t.Fatalf("I/O after 35 s idle:\n%s", out)
	}
}

// TestISCSIReservations runs libiscsi's persistent reservation suites
// against the daemon, whose reservations live in the Raft catalog.
func TestISCSIReservations(t *testing.T) {
	need(t, "iscsi-test-cu")
	t.Parallel()
	p := startDaemon(t)
	for _, suite := range []string{"SCSI.PrinReadKeys", "SCSI.PrinReportCapabilities", "SCSI.ProutRegister", "SCSI.ProutReserve", "SCSI.ProutClear", "SCSI.ProutPreempt", "SCSI.Reserve6"} {
		out, err := shErr("iscsi-test-cu", "-d", "--test="+suite, "-i", "iqn.2026-11.test:pr1", "-I", "iqn.2026-11.test:pr2", p.iscsiURI("vol0"))
		if err != nil || !strings.Contains(out, "Run Summary") || regexp.MustCompile(`asserts\s+\d+\s+\d+\s+\d+\s+[1-9]`).MatchString(out) {
			t.Errorf("iscsi-test-cu --test=%s: %v\n%s", suite, err, out)
		}
		if strings.Contains(out, "not implemented") {
			t.Errorf("iscsi-test-cu --test=%s skipped as not implemented:\n%s", suite, out)
		}
	}
	if st := p.logs(); strings.Contains(st, "level=ERROR") {
		t.Errorf("daemon logged errors:\n%s", st)
	}
}

// TestDataDirInUse: a second cairnd on a running one's data_dir exits at
// once with a message naming the first one's PID.
func TestDataDirInUse(t *testing.T) {
	p := startDaemon(t)
	cmd := exec.Command(filepath.Join(binDir, "cairnd"), "--config", filepath.Join(p.dir, "cairn.toml"))
	out, err := cmd.CombinedOutput()
	want := fmt.Sprintf("in use by cairnd PID %d", p.cmd.Process.Pid)
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("second cairnd on one data_dir: %v\n%s\nwant %q", err, out, want)
	}
}
