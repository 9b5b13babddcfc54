package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestSnapshots: a group of two volumes is snapshotted; the sealed
// snapshot is served read-only over NBD (and iSCSI) with the data of the
// cut while the live volumes move on; snapshots taken while fio writes and
// verifies cost it no error; a deleted snapshot's export goes, and the
// store's GC shows in the metrics.
func TestSnapshots(t *testing.T) {
	need(t, "qemu-io", "fio", "nbdinfo")
	p := startDaemon(t)
	ok := func(args ...string) string {
		t.Helper()
		so, se, code := p.cli(args...)
		if code != 0 {
			t.Fatalf("cairn %s: exit %d: %s", strings.Join(args, " "), code, se)
		}
		return so
	}
	ok("group", "create", "g", "--volumes", "vol0,native4k")
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", p.uri("vol0"))
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x21 4M 1M", p.uri("native4k"))
	out := ok("snapshot", "create", "g", "--name", "s1")
	if !strings.Contains(out, "state          sealed") && !strings.Contains(out, "sealed") || !strings.Contains(out, "held acks for") {
		t.Fatalf("snapshot create:\n%s", out)
	}
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x12 0 1M", p.uri("vol0"))
	sh(t, "qemu-io", "-f", "raw", "-c", "write -z 4M 1M", p.uri("native4k"))
	check := func(uri, cmd string) {
		t.Helper()
		if o := sh(t, "qemu-io", "-f", "raw", "-r", "-c", cmd, uri); strings.Contains(o, "Pattern verification failed") {
			t.Fatalf("%s on %s:\n%s", cmd, uri, o)
		}
	}
	check(p.uri("vol0@s1"), "read -P 0x11 0 1M")
	check(p.uri("native4k@s1"), "read -P 0x21 4M 1M")
	check(p.uri("vol0"), "read -P 0x12 0 1M")
	check(p.uri("native4k"), "read -P 0 4M 1M")
	check(p.iscsiURI("vol0:s1"), "read -P 0x11 0 1M")
	if o, err := shErr("qemu-io", "-f", "raw", "-c", "write -P 0x13 0 4k", p.uri("vol0@s1")); err == nil && !strings.Contains(o, "failed") && !strings.Contains(o, "read-only") && !strings.Contains(o, "Read-only") {
		t.Fatalf("write to a snapshot export succeeded:\n%s", o)
	}
	if info := sh(t, "nbdinfo", p.uri("vol0@s1")); !strings.Contains(info, "is_read_only: true") {
		t.Fatalf("snapshot export not read-only:\n%s", info)
	}

	// Snapshots under load: fio writes and verifies while they are taken.
	host, port, _ := net.SplitHostPort(p.nbd)
	var wg sync.WaitGroup
	var fio string
	wg.Go(func() {
		fio = sh(t, "fio", "--name=verify", "--ioengine=nbd", "--uri=nbd://"+host+":"+port+"/vol0",
			"--rw=randwrite", "--bs=4k", "--iodepth=16", "--numjobs=2", "--size=16M", "--offset=64M", "--offset_increment=64M",
			"--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--do_verify=1", "--group_reporting", "--output-format=terse")
	})
	for i := range 5 {
		ok("snapshot", "create", "g", "--name", "load"+string(rune('a'+i)))
	}
	wg.Wait()
	if !strings.Contains(fio, "3;") || strings.Contains(fio, "verify: bad") {
		t.Fatalf("fio under snapshots:\n%s", fio)
	}
	if list := ok("snapshot", "list"); strings.Count(list, "sealed") != 6 {
		t.Fatalf("snapshot list:\n%s", list)
	}
	ok("snapshot", "delete", "s1")
	if _, err := shErr("nbdinfo", "--size", p.uri("vol0@s1")); err == nil {
		t.Fatal("a deleted snapshot is still exported")
	}
	// GC runs and the metrics show it: among what it drops are the 256
	// versions of vol0's first MiB that only s1 read (the store's own tests
	// check which versions go; this checks the daemon runs it and exports
	// it).
	dropped := regexp.MustCompile(`(?m)^cairn_store_gc_dropped_total\{what="versions"\} (\d+)$`)
	waitFor(t, p, "GC drops what only the deleted snapshot read", func() bool {
		resp, err := http.Get("http://" + p.admin + "/metrics")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := dropped.FindSubmatch(body)
		if m == nil {
			return false
		}
		n, _ := strconv.Atoi(string(m[1]))
		return n >= 256 && bytes.Contains(body, []byte(`cairn_store_bytes{kind="live"}`))
	})
}
