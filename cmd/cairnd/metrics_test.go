package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cairn/backend/store"
	"cairn/backend/wire"
)

// TestStoreCleanerMetrics ages a real store (a volume written, then three
// quarters of it overwritten: every segment of the first pass is a quarter
// live) and checks that its cleaner's throughput and CPU show in the
// daemon's /metrics collector once the store's own cleaner goroutine ran.
func TestStoreCleanerMetrics(t *testing.T) {
	s, err := store.Open(t.TempDir(), store.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	const blocks = 1024 // 4 MiB
	buf := make([]byte, 16*store.BlockSize)
	seq := uint64(0)
	write := func(b uint64, p []byte) {
		t.Helper()
		seq++
		if err := s.Write(context.Background(), 1, b, p, store.Stamp{Epoch: 1, Seq: seq}, false); err != nil {
			t.Fatal(err)
		}
	}
	for b := uint64(0); b < blocks; b += 16 {
		write(b, buf)
	}
	for b := uint64(0); b < blocks; b++ {
		if b%4 != 0 {
			write(b, buf[:store.BlockSize])
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(&daemonCollector{d: &daemon{store: s}})
	names := []string{"cairn_store_cleaner_copied_bytes_total", "cairn_store_cleaner_read_bytes_total",
		"cairn_store_cleaner_written_bytes_total", "cairn_store_cleaner_segments_total", "cairn_store_cleaner_cpu_seconds_total"}
	// The cleaner looks every second; bounded wait, no timing asserted.
	deadline := time.Now().Add(60 * time.Second)
	var got map[string]float64
	for {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got = map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if c := m.GetCounter(); c != nil {
					got[mf.GetName()] = c.GetValue()
				}
			}
		}
		// The thread's CPU time moves at scheduler ticks: it may lag the
		// segment count by one.
		if got["cairn_store_cleaner_segments_total"] > 0 && (got["cairn_store_cleaner_cpu_seconds_total"] > 0 || runtime.GOOS != "linux") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no segment cleaned, or no cleaner CPU counted, after 60 s: %v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%v", got)
	for _, name := range names {
		v, ok := got[name]
		if !ok || v <= 0 && (name != "cairn_store_cleaner_cpu_seconds_total" || runtime.GOOS == "linux") {
			t.Errorf("%s = %v (present %v), want > 0 once a segment was cleaned", name, v, ok)
		}
	}
	if got["cairn_store_cleaner_written_bytes_total"] < got["cairn_store_cleaner_copied_bytes_total"] || got["cairn_store_cleaner_read_bytes_total"] < got["cairn_store_cleaner_copied_bytes_total"] {
		t.Errorf("the cleaner wrote or read less than it copied: %v", got)
	}
}

// TestNodeRPCMetrics: the node RPC server's counters show in /metrics —
// requests served, the plain writes its reader ran itself, connections.
func TestNodeRPCMetrics(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := store.Open(t.TempDir(), store.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	srv, err := wire.NewServer(s, wire.ServerOptions{Name: "n1", Logger: quiet, InlineWrites: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	c, err := wire.NewClient(l.Addr().String(), wire.ClientOptions{Name: "t1", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	p := make([]byte, store.BlockSize)
	for i := range uint64(4) {
		// Three plain writes, one sync: one at a time, so each plain one
		// arrives with nothing behind it.
		if err := c.Write(ctx, 1, i, p, store.Stamp{Epoch: 1, Seq: i + 1}, i == 3); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(&daemonCollector{d: &daemon{rpc: srv}})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 {
				got[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	want := map[string]float64{
		"cairn_node_rpc_served_total/requests": 4, "cairn_node_rpc_served_total/inlined": 3, "cairn_node_rpc_served_total/error_replies": 0,
		"cairn_node_rpc_server_connections_total/served": 1, "cairn_node_rpc_server_connections_total/refused": 0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}
