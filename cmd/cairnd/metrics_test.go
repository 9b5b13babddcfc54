package main

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cairn/backend/store"
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
