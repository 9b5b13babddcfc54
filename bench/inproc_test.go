package bench

import (
	"context"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for _, ns := range []int64{0, 1, 15, 16, 17, 31, 32, 33, 1000, 1 << 20, 1<<40 + 12345, math.MaxInt64} {
		i := histBucket(ns)
		if i < prev || i >= histBuckets {
			t.Fatalf("bucket(%d) = %d after %d", ns, i, prev)
		}
		prev = i
		low, width := histBounds(i)
		if ns < low || ns-low >= width || (ns >= histSub && float64(width)/float64(low) > 1.0/histSub) {
			t.Fatalf("%d in bucket %d [%d, +%d)", ns, i, low, width)
		}
	}
	// Every bucket starts where the previous one ends.
	for i := 1; i < histBuckets; i++ {
		l0, w0 := histBounds(i - 1)
		if l1, _ := histBounds(i); l1 != l0+w0 {
			t.Fatalf("bucket %d starts at %d, bucket %d ends at %d", i, l1, i-1, l0+w0)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	rng := rand.New(rand.NewPCG(1, 2))
	vals := make([]float64, 100_000)
	for i := range vals {
		ns := int64(math.Exp(rng.NormFloat64()*0.8 + 11)) // log-normal around 60 µs
		vals[i] = float64(ns)
		h.add(time.Duration(ns))
	}
	sort.Float64s(vals)
	for _, p := range percentileList {
		want := vals[int(p/100*float64(len(vals)))]
		if got := h.quantile(p); math.Abs(got-want)/want > 1.0/histSub {
			t.Errorf("p%g = %g, want %g within %.1f%%", p, got, want, 100.0/histSub)
		}
	}
	if a := testing.AllocsPerRun(1000, func() { h.add(time.Microsecond) }); a != 0 {
		t.Fatalf("add allocates %g times", a)
	}
}

// startEmbedded starts in-process cairn in a temporary directory.
func startEmbedded(t *testing.T, size int64, lat time.Duration) Instance {
	t.Helper()
	inst, err := Embedded{}.Start(context.Background(), StartOptions{Dir: t.TempDir(), Name: "inproc", Export: "vol0",
		SizeBytes: size, FrontEnd: InProc, Latency: lat})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := inst.Close(); err != nil {
			t.Error(err)
		}
	})
	return inst
}

func TestLoadgen(t *testing.T) {
	inst := startEmbedded(t, 8<<20, 0)
	ctx := context.Background()
	o := RunOptions{Runtime: 300 * time.Millisecond, Ramp: 20 * time.Millisecond}
	if _, err := (Loadgen{}).Run(ctx, inst.Target(), fill, RunOptions{}); err != nil {
		t.Fatalf("fill: %v", err)
	}
	for _, w := range Workloads() {
		o := o
		if w.Metric == Throughput {
			o.Runtime = time.Second // 1 MiB requests are slow under the race detector
		}
		m, err := Loadgen{}.Run(ctx, inst.Target(), w, o)
		if err != nil {
			t.Fatalf("%s: %v", w.Name, err)
		}
		if (m.Read != nil) != w.Reads() || (m.Write != nil) != w.Writes() || m.Value(w.Metric) <= 0 {
			t.Fatalf("%s: %+v", w.Name, m)
		}
		s := m.latencySide()
		t.Logf("%-20s %10.1f %s, p50 %.0f µs", w.Name, m.Value(w.Metric), w.Metric, s.At(50)/1e3)
		if len(s.Percentiles) != len(percentileList) || s.At(50) <= 0 || s.At(99.9) < s.At(50) || s.MeanOnly {
			t.Fatalf("%s: latencies %+v", w.Name, s)
		}
	}
	if _, err := (Loadgen{}).Run(ctx, Target{FrontEnd: NBD, URI: "nbd://x"}, fill, RunOptions{}); err == nil {
		t.Fatal("ran without a device")
	}
}

// TestLoadgenLatency checks that injected latency is below the device: no
// request completes sooner, so the rate cannot pass in-flight/latency.
func TestLoadgenLatency(t *testing.T) {
	const lat = 2 * time.Millisecond
	inst := startEmbedded(t, 8<<20, lat)
	w := Workload{Name: "randread-4k-qd4", RW: "randread", BlockBytes: 4096, QueueDepth: 4}
	m, err := Loadgen{}.Run(context.Background(), inst.Target(), w, RunOptions{Runtime: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The percentiles come from a histogram whose buckets are up to
	// 6.25% wide: p1 may be reported just under the injected latency.
	if limit := 4 / lat.Seconds(); m.IOPS > limit*1.05 || m.Read.Percentiles[0].Ns < 0.9*float64(lat) {
		t.Fatalf("IOPS %g (limit %g), p1 %g ns with %s injected", m.IOPS, limit, m.Read.Percentiles[0].Ns, lat)
	}
}

// TestSmokeLatency runs the injected-latency scenarios over every path
// (NBD, iSCSI, in process) and the in-process yardstick, and checks the
// pipelining and front-end tables.
func TestSmokeLatency(t *testing.T) {
	requireTools(t, "fio", "iscsi-perf", "qemu-img")
	if testing.Short() {
		t.Skip("builds and starts cairnd")
	}
	t.Parallel()
	systems := []string{"cairn-inproc", "cairn-lat1ms", "cairn-iscsi-lat1ms", "cairn-inproc-lat1ms"}
	rep, _ := smoke(t, "--systems", strings.Join(systems, ","), "--workloads", strings.Join(latencyWorkloads, ","))
	if ran := rep.ranSystems(); len(ran) != len(systems) {
		t.Fatalf("systems that ran: %v (%v)", ran, rep.Notes)
	}
	if len(rep.Pipelining) != 3*len(latencyWorkloads) {
		t.Fatalf("pipelining rows %+v", rep.Pipelining)
	}
	for _, p := range rep.Pipelining {
		if p.LimitIOPS != 32_000 || p.Fraction <= 0 || p.Fraction > 1.05 {
			t.Errorf("%+v", p)
		}
	}
	// cairn-lat1ms and cairn-iscsi-lat1ms against cairn-inproc-lat1ms.
	if len(rep.FrontEnds) != 2*len(latencyWorkloads) {
		t.Errorf("front-end rows %+v", rep.FrontEnds)
	}
	for _, r := range rep.FrontEnds {
		if r.Peer != "cairn-inproc-lat1ms" {
			t.Errorf("%s compared with %s", r.Subject, r.Peer)
		}
	}
	if len(rep.Ratios) != 0 {
		t.Errorf("ratios between subjects: %+v", rep.Ratios)
	}
}
