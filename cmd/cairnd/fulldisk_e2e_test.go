package main

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts
// it when the test ends (register it before the daemon, whose stop runs
// first). Mounting needs root: without it the test skips, or fails when
// CAIRN_REQUIRE_TOOLS is set.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	need(t, "mount", "umount")
	if os.Geteuid() != 0 {
		if os.Getenv("CAIRN_REQUIRE_TOOLS") != "" {
			t.Fatal("mounting a tmpfs needs root (make test runs as root)")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir
}

// usedBytes is what the file system holding dir has in use.
func usedBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// metricValue returns the value of the sample matching re in p's /metrics,
// or -1.
func metricValue(t *testing.T, p *proc, re string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + re + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("metric %s: %v", re, err)
	}
	return v
}

const (
	lowSpaceLog   = `msg="store low on space`
	spaceAgainLog = `msg="store has space again"`
)

// fillChunk is the unit the full-disk test writes: chunk i holds the byte
// 0x20+i at offset fillBase+i*fillChunk.
const (
	fillBase   = 16 << 20
	fillChunk  = 4 << 20
	fillChunks = 120 // 480 MiB: more than the tmpfs holds
)

func chunkOff(i int) int64 { return fillBase + int64(i)*fillChunk }

var wroteRE = regexp.MustCompile(`wrote \d+/\d+ bytes at offset (\d+)`)

// fill writes chunks in order in one qemu-io session, then flushes; it
// returns the chunks written (acknowledged, then flushed) and the
// session's output.
func fill(t *testing.T, uri string, chunks []int) (map[int]bool, string) {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, i := range chunks {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %d %d", 0x20+i, chunkOff(i), fillChunk))
	}
	args = append(args, "-c", "flush", uri)
	out, _ := shErr("qemu-io", args...) // exits non-zero: some writes failed
	if strings.Contains(out, "flush failed") {
		t.Fatalf("flush on a full disk failed:\n%s", out)
	}
	ok := map[int]bool{}
	for _, m := range wroteRE.FindAllStringSubmatch(out, -1) {
		off, _ := strconv.ParseInt(m[1], 10, 64)
		ok[int((off-fillBase)/fillChunk)] = true
	}
	return ok, out
}

// TestFullDisk tries a full disk as a new user would: data_dir on a
// 300 MiB tmpfs, a 1 GiB volume, writes until it fills. Writes past the
// space get ENOSPC (NBD) and DATA PROTECT / SPACE ALLOCATION FAILED WRITE
// PROTECT (iSCSI); reads go on; TRIM and WRITE ZEROES free space and writes
// work again without a restart; the daemon stops on SIGTERM and starts on
// the still-full disk and serves reads; the low state is in /metrics and
// logged once, not per request; every flushed write survives.
func TestFullDisk(t *testing.T) {
	need(t, "qemu-io", "nbdcopy", "fallocate")
	mnt := mountTmpfs(t, 300<<20)
	data := filepath.Join(mnt, "data")
	p := startDaemonWith(t, "")
	p.stop(syscall.SIGTERM)
	cfg, err := os.ReadFile(filepath.Join(p.dir, "cairn.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg = []byte(strings.Replace(string(cfg), `data_dir = "data"`, fmt.Sprintf("data_dir = %q", data), 1))
	if err := os.WriteFile(filepath.Join(p.dir, "cairn.toml"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	p.run()

	// Space overhead: 16 MiB of data, flushed.
	base := usedBytes(t, mnt)
	dir := t.TempDir()
	first := filepath.Join(dir, "first")
	buf := make([]byte, fillBase)
	rand.Read(buf)
	if err := os.WriteFile(first, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, "nbdcopy", "--flush", first, p.uri("vol0"))
	used16 := usedBytes(t, mnt)
	t.Logf("space: %d bytes in use on the tmpfs after start, %d after 16 MiB of data", base, used16)
	if used16 > 48<<20 {
		t.Errorf("16 MiB of data takes %d bytes on disk (%d before it), want at most 48 MiB", used16, base)
	}

	// Fill it.
	all := make([]int, fillChunks)
	for i := range all {
		all[i] = i
	}
	ok, out := fill(t, p.uri("vol0"), all)
	if !strings.Contains(out, "write failed: No space left on device") || len(ok) == 0 || len(ok) == fillChunks {
		t.Fatalf("filling a 300 MiB disk: %d of %d chunks written; want ENOSPC past the space:\n%s", len(ok), fillChunks, lastLines(out, 20))
	}
	t.Logf("filled: %d chunks of 4 MiB written, %d bytes in use", len(ok), usedBytes(t, mnt))
	if v := metricValue(t, p, "cairn_store_low_space"); v != 1 {
		t.Errorf("cairn_store_low_space = %v on a full disk, want 1", v)
	}
	// More refused writes, over NBD and iSCSI, of the size that found no
	// room (a smaller one may still fit in what is left above the reserve).
	// (at a chunk never written nor checked).
	refused := fmt.Sprintf("write -P 0x11 %d %d", chunkOff(fillChunks), fillChunk)
	for range 5 {
		out, err := shErr("qemu-io", "-f", "raw", "-c", refused, p.uri("vol0"))
		if err == nil || !strings.Contains(out, "No space left on device") {
			t.Fatalf("write over NBD on a full disk: %v\n%s", err, out)
		}
	}
	out, err = shErr("qemu-io", "-f", "raw", "-c", refused, p.iscsiURI("vol0"))
	if err == nil || !strings.Contains(out, "SENSE KEY:DATA PROTECTION(7)") || !strings.Contains(out, "(0x2707)") {
		t.Fatalf("write over iSCSI on a full disk: want DATA PROTECT, 27h/07h: %v\n%s", err, out)
	}
	refusedWrites := fillChunks - len(ok) + 6
	if n := strings.Count(p.logs(), lowSpaceLog); n != 1 {
		t.Errorf("low space logged %d times, want once:\n%s", n, lastLines(p.logs(), 30))
	}
	t.Logf("%d writes refused, %d 'low on space' log lines, %d log lines in all", refusedWrites, strings.Count(p.logs(), lowSpaceLog), strings.Count(p.logs(), "\n"))
	// Reads go on.
	check := func(ok map[int]bool, zeroed map[int]bool, when string) {
		t.Helper()
		args := []string{"-f", "raw"}
		for i := range fillChunks {
			switch {
			case zeroed[i]:
				args = append(args, "-c", fmt.Sprintf("read -P 0 %d %d", chunkOff(i), fillChunk))
			case ok[i]:
				args = append(args, "-c", fmt.Sprintf("read -P 0x%02x %d %d", 0x20+i, chunkOff(i), fillChunk))
			}
		}
		out, err := shErr("qemu-io", append(args, p.uri("vol0"))...)
		if err != nil || strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
			t.Fatalf("%s: flushed data does not read back: %v\n%s\ncairnd:\n%s", when, err, lastLines(out, 20), lastLines(p.logs(), 30))
		}
		back := filepath.Join(dir, "back")
		sh(t, "nbdcopy", p.uri("vol0"), back)
		if err := os.Truncate(back, fillBase); err != nil {
			t.Fatal(err)
		}
		if a, b := sha(t, first), sha(t, back); a != b {
			t.Fatalf("%s: the first 16 MiB read back with sha256 %s, wrote %s", when, b, a)
		}
	}
	check(ok, nil, "on a full disk")

	// Free every other chunk (TRIM) and one by WRITE ZEROES: the freed
	// blocks lie between live ones in every segment.
	zeroed := map[int]bool{}
	args := []string{"-f", "raw"}
	for i := range fillChunks {
		if ok[i] && i%2 == 1 {
			args = append(args, "-c", fmt.Sprintf("discard %d %d", chunkOff(i), fillChunk))
			zeroed[i] = true
		}
	}
	args = append(args, "-c", fmt.Sprintf("write -z %d %d", chunkOff(0), fillChunk), "-c", "flush")
	zeroed[0] = true
	sh(t, "qemu-io", append(args, p.uri("vol0"))...)
	// Space comes back in the background: writes work again.
	waitFor(t, p, "a write after TRIM freed space", func() bool {
		_, err := shErr("qemu-io", "-f", "raw", "-c", refused, p.uri("vol0"))
		return err == nil
	})
	t.Logf("after TRIM of %d chunks: %d bytes in use, %v bytes punched", len(zeroed), usedBytes(t, mnt), metricValue(t, p, "cairn_store_punched_bytes_total"))
	if v := metricValue(t, p, "cairn_store_low_space"); v != 0 {
		t.Errorf("cairn_store_low_space = %v after space came back, want 0", v)
	}
	if n := strings.Count(p.logs(), spaceAgainLog); n != 1 {
		t.Errorf("space back logged %d times, want once", n)
	}
	check(ok, zeroed, "after TRIM")

	// Fill it again, into the freed chunks and those never written (no
	// overwrite: the restart below must find little to reclaim).
	var again []int
	for i := range fillChunks {
		if zeroed[i] || !ok[i] {
			again = append(again, i)
		}
	}
	ok2, out := fill(t, p.uri("vol0"), again)
	if !strings.Contains(out, "No space left on device") {
		t.Fatalf("refilling: no ENOSPC:\n%s", lastLines(out, 10))
	}
	for _, i := range again {
		if ok2[i] {
			ok[i], zeroed[i] = true, false
		} else if zeroed[i] {
			// A refused write leaves its range undefined.
			delete(zeroed, i)
			delete(ok, i)
		}
	}
	t.Logf("refilled: %d more chunks written, %d bytes in use", len(ok2), usedBytes(t, mnt))

	// SIGTERM and restart on the still-full disk.
	p.stop(syscall.SIGTERM)
	if p.exitErr != nil || !strings.Contains(p.logs(), `msg="store closed"`) {
		t.Fatalf("cairnd on SIGTERM with a full disk: %v\n%s", p.exitErr, lastLines(p.logs(), 30))
	}
	// Fill the disk with files, as other data on it would, to 8 MiB free
	// (the store keeps 64 MiB), so that the restart is on a disk where the
	// store refuses writes.
	fillers := 0
	topUp := func() {
		t.Helper()
		var st syscall.Statfs_t
		if err := syscall.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		if avail := int64(st.Bavail) * st.Bsize; avail > 8<<20 {
			fillers++
			sh(t, "fallocate", "-l", fmt.Sprint(avail-8<<20), filepath.Join(mnt, fmt.Sprint("filler", fillers)))
		}
	}
	topUp()
	p.log.Reset()
	p.run()
	t.Logf("restarted: %d bytes in use", usedBytes(t, mnt))
	if l := p.logs(); !strings.Contains(l[:strings.Index(l, `msg="cairnd serving"`)], lowSpaceLog) {
		t.Errorf("restart on a full disk: low space not logged at start:\n%s", grepLines(l, "store"))
	}
	check(ok, zeroed, "after a restart on a full disk")
	// The store may still find space to reclaim (pebble's recycled WAL
	// files, blocks the cleaner moved): top the disk up until a write is
	// refused, then the state must show.
	waitFor(t, p, "a write refused after a restart on a full disk", func() bool {
		topUp()
		_, err := shErr("qemu-io", "-f", "raw", "-c", refused, p.uri("vol0"))
		return err != nil
	})
	if v := metricValue(t, p, "cairn_store_low_space"); v != 1 {
		t.Errorf("cairn_store_low_space = %v after a restart on a full disk, want 1\n%s", v, grepLines(p.logs(), "space"))
	}
	for range 3 {
		if _, err := shErr("qemu-io", "-f", "raw", "-c", refused, p.uri("vol0")); err == nil {
			t.Fatal("a write on a full disk after restart succeeded")
		}
	}
	// Logged once per change of state, not per request.
	if lows, backs := strings.Count(p.logs(), lowSpaceLog), strings.Count(p.logs(), spaceAgainLog); lows != backs+1 {
		t.Errorf("after restart: low space logged %d times, space back %d times; want one more low than back:\n%s", lows, backs, grepLines(p.logs(), "space"))
	}
	if lines := strings.Count(p.logs(), "\n"); lines > 200 {
		t.Errorf("after restart: %d log lines:\n%s", lines, lastLines(p.logs(), 30))
	}
	t.Logf("after restart on a full disk (%d filler files): %d 'low on space' log lines, %d log lines in all", fillers, strings.Count(p.logs(), lowSpaceLog), strings.Count(p.logs(), "\n"))
	p.stop(syscall.SIGTERM)
	if p.exitErr != nil {
		t.Fatalf("cairnd on SIGTERM after a restart on a full disk: %v\n%s", p.exitErr, lastLines(p.logs(), 30))
	}

	// With no byte free, recovery cannot flush: cairnd exits at once with
	// a clear error (it used to retry forever). Freed, it starts again.
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	sh(t, "fallocate", "-l", fmt.Sprint(int64(st.Bavail)*st.Bsize), filepath.Join(mnt, "filler-all"))
	out, err = shErr(filepath.Join(binDir, "cairnd"), "--config", filepath.Join(p.dir, "cairn.toml"))
	if err == nil || !strings.Contains(out, "free space on this file system") || strings.Count(out, "\n") > 100 {
		t.Fatalf("cairnd on a disk with no byte free: %v, want a clear error:\n%s", err, lastLines(out, 20))
	}
	t.Logf("on a disk with no byte free: %s", lastLines(out, 1))
	if err := os.Remove(filepath.Join(mnt, "filler-all")); err != nil {
		t.Fatal(err)
	}
	p.log.Reset()
	p.run()
	check(ok, zeroed, "after a restart with space freed")
	p.stop(syscall.SIGTERM)
	if p.exitErr != nil {
		t.Fatalf("cairnd on SIGTERM: %v\n%s", p.exitErr, lastLines(p.logs(), 30))
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
