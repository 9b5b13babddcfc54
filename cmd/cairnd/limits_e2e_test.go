package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

const limitsConfig = `node_name = "limits"
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
[gossip]
bind = "127.0.0.1:0"
[storage]
listen = "127.0.0.1:0"
cache_size = "16MiB"
[limits]
inflight_bytes = "64MiB"
reply_timeout = "2s"
[[volume]]
name = "vol0"
size = "256MiB"
`

// rssBytes reads a process's resident set size from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no VmRSS in /proc/%d/status", pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// stalledReader opens an NBD connection to export, sends reads reads of
// n bytes each and never reads a reply, with a 4 KiB receive buffer.
func stalledReader(t *testing.T, addr, export string, reads int, n uint32) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetReadBuffer(4096)
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(c, greeting); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	// Client flags: fixed newstyle, no zeroes; then NBD_OPT_EXPORT_NAME.
	msg := binary.BigEndian.AppendUint32(nil, 3)
	msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054) // IHAVEOPT
	msg = binary.BigEndian.AppendUint32(msg, 1)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
	msg = append(msg, export...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 10) // size, transmission flags
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatalf("export name reply: %v", err)
	}
	for i := range reads {
		req := binary.BigEndian.AppendUint32(nil, 0x25609513)
		req = binary.BigEndian.AppendUint16(req, 0)
		req = binary.BigEndian.AppendUint16(req, 0) // NBD_CMD_READ
		req = binary.BigEndian.AppendUint64(req, uint64(i+1))
		req = binary.BigEndian.AppendUint64(req, uint64(i)*uint64(n)%(128<<20))
		req = binary.BigEndian.AppendUint32(req, n)
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// TestStalledReaders: 12 NBD clients each ask for four 32 MiB reads and
// never read the replies (1.5 GiB wanted at once) against a daemon whose
// in-flight budget is 64 MiB: its RSS stays within the budget and a stated
// overhead, a well-behaved client is still served, the stalled clients
// are disconnected after reply_timeout, and RSS falls back afterwards.
func TestStalledReaders(t *testing.T) {
	need(t, "qemu-io")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cairn.toml"), []byte(fmt.Sprintf(limitsConfig, freePort(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, dir: dir}
	p.run()
	t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	pid := p.cmd.Process.Pid
	idle := rssBytes(t, pid)
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 128M", p.uri("vol0"))
	base := rssBytes(t, pid)
	t.Logf("RSS: %d MiB idle, %d MiB after a 128 MiB fill", idle>>20, base>>20)
	const clients, overhead = 12, 160 << 20 // overhead: Go heap slack, pools, page tables
	var conns []net.Conn
	for range clients {
		conns = append(conns, stalledReader(t, p.nbd, "vol0", 4, 32<<20))
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var peak int64
	deadline := time.Now().Add(1500 * time.Millisecond) // inside reply_timeout: all stalled now
	for time.Now().Before(deadline) {
		peak = max(peak, rssBytes(t, pid))
		time.Sleep(50 * time.Millisecond)
	}
	// A well-behaved client is served (at worst once the stalled ones are
	// cut at reply_timeout).
	sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 64M 1M", p.uri("vol0"))
	peak = max(peak, rssBytes(t, pid))
	t.Logf("RSS: %d MiB before, %d MiB at most with %d stalled clients (%d MiB asked for)", base>>20, peak>>20, clients, clients*4*32)
	if peak > base+64<<20+overhead {
		t.Fatalf("RSS rose from %d to %d MiB with a 64 MiB budget (+%d MiB overhead allowed)", base>>20, peak>>20, overhead>>20)
	}
	// The stalled clients are disconnected after reply_timeout (2 s),
	// without ever reading: count them in /metrics, then see each
	// connection end after what the kernel had buffered.
	metric := func(re string) int {
		resp, err := http.Get("http://" + p.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(re + ` (\d+)`).FindSubmatch(b)
		if m == nil {
			return -1
		}
		n, _ := strconv.Atoi(string(m[1]))
		return n
	}
	// The server drops them (closing its side; a client that never reads
	// would see the FIN only after what is still queued to it).
	waitFor(t, p, "the stalled clients disconnected for reply_timeout", func() bool {
		return metric(`cairn_disconnects_total\{frontend="nbd",reason="reply_timeout"\}`) >= clients &&
			metric(`cairn_connections\{frontend="nbd"\}`) == 0
	})
	if n := metric(`cairn_inflight_bytes`); n != 0 {
		t.Fatalf("%d in-flight bytes still held after every client went", n)
	}
	// The burst is over: the daemon hands the heap it took back to the OS
	// (the runtime alone would keep it for minutes). RSS falls back to
	// within 32 MiB of the idle daemon's, below what the fill left.
	after := min(idle+32<<20, base)
	waitFor(t, p, "RSS to fall back after the burst", func() bool {
		return metric(`cairn_memory_releases_total`) >= 1 && rssBytes(t, pid) <= after
	})
	t.Logf("RSS after the stalled clients went: %d MiB (at most %d MiB asked)", rssBytes(t, pid)>>20, after>>20)
}
