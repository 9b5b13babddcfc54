package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cairn/target/targettest"
)

// Interoperability with real clients: libnbd's nbdinfo and nbdcopy, QEMU's
// qemu-io, fio's nbd engine. Each test skips when its tool is missing.

const toolTimeout = 20 * time.Second

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CAIRN_REQUIRE_TOOLS") != "" {
			t.Fatalf("%s not installed (CAIRN_REQUIRE_TOOLS is set): %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// runTool runs a tool and returns its combined output, failing on a non-zero
// exit.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, needTool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// interopServer serves "disk" (1 GiB, sparse), "small" (64 MiB) and "ro"
// (read-only, 1 MiB) on loopback and returns the nbd:// URI prefix.
func interopServer(t *testing.T) (string, map[string]*targettest.MemDevice) {
	devs := map[string]*targettest.MemDevice{
		"disk":  targettest.NewMemDevice(targettest.MemOptions{CanMultiConn: true}),
		"small": targettest.NewMemDevice(targettest.MemOptions{Size: 64 << 20, CanMultiConn: true}),
		"ro":    targettest.NewMemDevice(targettest.MemOptions{Size: 1 << 20, ReadOnly: true}),
	}
	exports := mapExports{}
	for n, d := range devs {
		exports[n] = d
	}
	s := newServer(t, exports, Options{Default: "disk"})
	return "nbd://" + listen(t, s) + "/", devs
}

func TestInteropNbdinfo(t *testing.T) {
	needTool(t, "nbdinfo")
	uri, devs := interopServer(t)

	var info struct {
		Exports []struct {
			Name         string   `json:"export-name"`
			Size         int64    `json:"export-size"`
			ReadOnly     bool     `json:"is_read_only"`
			CanFlush     bool     `json:"can_flush"`
			CanFUA       bool     `json:"can_fua"`
			CanTrim      bool     `json:"can_trim"`
			CanZero      bool     `json:"can_zero"`
			CanFastZero  bool     `json:"can_fast_zero"`
			CanCache     bool     `json:"can_cache"`
			CanDF        bool     `json:"can_df"`
			CanMultiConn bool     `json:"can_multi_conn"`
			Contexts     []string `json:"contexts"`
			BlockMin     int      `json:"block_size_minimum"`
			BlockPref    int      `json:"block_size_preferred"`
			BlockMax     int      `json:"block_size_maximum"`
		} `json:"exports"`
		Structured bool `json:"structured"`
	}
	out := runTool(t, "nbdinfo", "--no-content", "--json", uri+"disk")
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	e := info.Exports[0]
	if e.Size != 1<<30 || e.ReadOnly || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanFastZero ||
		!e.CanCache || !e.CanDF || !e.CanMultiConn || e.BlockMin != 512 || e.BlockPref != 4096 || e.BlockMax != 32<<20 ||
		!info.Structured || fmt.Sprint(e.Contexts) != "[base:allocation]" {
		t.Errorf("nbdinfo --json disagrees:\n%s", out)
	}

	out = runTool(t, "nbdinfo", "--no-content", "--json", uri+"ro")
	if err := json.Unmarshal([]byte(out), &info); err != nil || !info.Exports[0].ReadOnly || info.Exports[0].CanTrim {
		t.Errorf("read-only export: %v\n%s", err, out)
	}

	out = runTool(t, "nbdinfo", "--no-content", "--list", "--json", uri)
	for _, n := range []string{`"disk"`, `"small"`, `"ro"`} {
		if !strings.Contains(out, n) {
			t.Errorf("nbdinfo --list lacks %s:\n%s", n, out)
		}
	}

	// --map after writes: data where written, holes elsewhere.
	d := devs["disk"]
	d.WriteAt(t.Context(), bytes.Repeat([]byte{1}, 64<<10), 1<<20, 0)
	d.Zero(t.Context(), 2<<20, 64<<10, 0)
	d.WriteAt(t.Context(), bytes.Repeat([]byte{2}, 4096), 1<<30-4096, 0)
	out = runTool(t, "nbdinfo", "--map", "--json", uri+"disk")
	var extents []struct {
		Offset int64 `json:"offset"`
		Length int64 `json:"length"`
		Type   int   `json:"type"`
	}
	if err := json.Unmarshal([]byte(out), &extents); err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	got := fmt.Sprint(extents)
	want := fmt.Sprint([]struct {
		Offset int64 `json:"offset"`
		Length int64 `json:"length"`
		Type   int   `json:"type"`
	}{{0, 1 << 20, 3}, {1 << 20, 64 << 10, 0}, {1<<20 + 64<<10, 1<<30 - 4096 - (1<<20 + 64<<10), 3}, {1<<30 - 4096, 4096, 0}})
	if got != want {
		t.Errorf("map %s, want %s\n%s", got, want, out)
	}
}

func TestInteropQemuIO(t *testing.T) {
	needTool(t, "qemu-io")
	uri, _ := interopServer(t)
	end := int64(1 << 30)
	cmds := []string{
		"write -P 0xa1 0 64k", "read -P 0xa1 0 64k",
		"write -P 0xb2 512m 1m", "read -P 0xb2 512m 1m",
		fmt.Sprintf("write -P 0xc3 %d 64k", end-64<<10), fmt.Sprintf("read -P 0xc3 %d 64k", end-64<<10),
		"write -P 0xd4 100k 3584", "read -P 0xd4 100k 3584", // sub-block, 512-aligned
		"write -z 512m 256k", "read -P 0 512m 256k", "read -P 0xb2 524544k 768k",
		"write -z -u 0 32k", "read -P 0 0 32k", "read -P 0xa1 32k 32k",
		"discard 32k 32k", "read -P 0 0 64k",
		"write -f -P 0xe5 4m 4k", "flush", "read -P 0xe5 4m 4k",
		"aio_write -P 0x11 8m 64k", "aio_write -P 0x22 9m 64k", "aio_flush", "read -P 0x11 8m 64k", "read -P 0x22 9m 64k",
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := runTool(t, "qemu-io", append(args, uri+"disk")...)
	if strings.Contains(out, "failed") || strings.Contains(out, "error") || strings.Contains(out, "Pattern verification") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	reads := 0
	for _, c := range cmds {
		if strings.HasPrefix(c, "read ") {
			reads++
		}
	}
	if n := strings.Count("\n"+out, "\nread "); n != reads {
		t.Fatalf("qemu-io: %d reads done, want %d:\n%s", n, reads, out)
	}
	// A read past the end fails cleanly and the session goes on.
	b, _ := exec.Command("qemu-io", "-f", "raw", "-c", "read 1023m 2m", "-c", "read -P 0xe5 4m 4k", uri+"disk").CombinedOutput()
	if !strings.Contains(string(b), "read 4096/4096 bytes at offset 4194304") {
		t.Fatalf("qemu-io after a read past the end:\n%s", b)
	}
}

func TestInteropNbdcopy(t *testing.T) {
	needTool(t, "nbdcopy")
	uri, devs := interopServer(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.img"), filepath.Join(dir, "out.img")

	// 64 MiB: random data with holes and zero runs between.
	img := make([]byte, 64<<20)
	for off := 0; off < len(img); off += 4 << 20 {
		rand.Read(img[off : off+1<<20+off/64])
	}
	if err := os.WriteFile(in, img, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "nbdcopy", "--flush", in, uri+"small")
	runTool(t, "nbdcopy", uri+"small", out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(img) {
		t.Fatal("nbdcopy round trip differs")
	}
	if st := devs["small"].Stats(); st.Writes == 0 || st.Flushes == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestInteropFio(t *testing.T) {
	needTool(t, "fio")
	uri, _ := interopServer(t)
	out := runTool(t, "fio", "--name=randwrite", "--ioengine=nbd", "--uri="+uri+"disk",
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--numjobs=4", "--size=16m", "--offset_increment=16m",
		"--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--do_verify=1", "--group_reporting", "--output-format=terse")
	// Terse v3: field 5 is the KiB read, here by the verify pass.
	var terse []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "3;") {
			terse = strings.Split(l, ";")
		}
	}
	if len(terse) < 6 || terse[2] != "randwrite" || terse[4] != "0" || terse[5] != "65536" {
		t.Fatalf("fio did not write and verify 64 MiB:\n%s", out)
	}
}
