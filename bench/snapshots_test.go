package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const holdMetricsText = `# HELP cairn_snapshot_hold_seconds How long.
# TYPE cairn_snapshot_hold_seconds histogram
cairn_snapshot_hold_seconds_bucket{le="0.0001"} 1
cairn_snapshot_hold_seconds_bucket{le="0.0005"} 5
cairn_snapshot_hold_seconds_bucket{le="0.001"} 9
cairn_snapshot_hold_seconds_bucket{le="0.002"} 10
cairn_snapshot_hold_seconds_bucket{le="+Inf"} 11
cairn_snapshot_hold_seconds_sum 2.0045
cairn_snapshot_hold_seconds_count 11
# TYPE cairn_snapshot_holds_total counter
cairn_snapshot_holds_total{ended="bound"} 0
cairn_snapshot_holds_total{ended="deadline"} 1
cairn_snapshot_holds_total{ended="released"} 10
`

// TestParseHoldMetrics: the histogram and the holds by ending come out of
// cairnd's exposition; quantiles are bucket bounds, and one past the last
// finite bound is unknown, not a number.
func TestParseHoldMetrics(t *testing.T) {
	m, err := parseHoldMetrics([]byte(holdMetricsText))
	if err != nil {
		t.Fatal(err)
	}
	if m.hist.Count != 11 || m.hist.SumSeconds != 2.0045 || len(m.hist.Buckets) != 4 || m.ended["deadline"] != 1 || m.ended["released"] != 10 {
		t.Fatalf("parsed %+v", m)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
		ok   bool
	}{{0.05, 100 * time.Microsecond, true}, {0.5, 1 * time.Millisecond, true}, {0.9, 2 * time.Millisecond, true}, {0.99, 0, false}, {1, 0, false}} {
		if got, ok := m.hist.Quantile(c.q); got != c.want || ok != c.ok {
			t.Errorf("quantile %v = %v, %v; want %v, %v", c.q, got, ok, c.want, c.ok)
		}
	}
	earlier, err := parseHoldMetrics([]byte(strings.ReplaceAll(strings.ReplaceAll(holdMetricsText, `"0.002"} 10`, `"0.002"} 9`), "_count 11", "_count 10")))
	if err != nil {
		t.Fatal(err)
	}
	d, err := m.hist.sub(earlier.hist)
	if err != nil || d.Count != 1 || d.Buckets[3].Count != 1 || d.Buckets[2].Count != 0 {
		t.Fatalf("difference %+v, %v", d, err)
	}
	if q, ok := d.Quantile(1); !ok || q != 2*time.Millisecond {
		t.Fatalf("max of the difference %v %v", q, ok)
	}
	if _, err := earlier.hist.sub(m.hist); err == nil {
		t.Fatal("a histogram going back was accepted")
	}
	for _, bad := range []string{"", "cairn_snapshot_hold_seconds_count 3\n", strings.Replace(holdMetricsText, "_count 11", "_count x", 1)} {
		if _, err := parseHoldMetrics([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestWindowStats(t *testing.T) {
	var ns []int64
	for i := 100; i >= 1; i-- {
		ns = append(ns, int64(i)*1000)
	}
	p50, p99, mx, ok := windowStats(ns)
	if !ok || p50 != 50*time.Microsecond || p99 != 99*time.Microsecond || mx != 100*time.Microsecond {
		t.Fatalf("p50 %v p99 %v max %v %v", p50, p99, mx, ok)
	}
	if _, _, _, ok := windowStats(nil); ok {
		t.Fatal("stats of no windows")
	}
}

// TestSummarizeSnapshots: write p99 with snapshots is set against the
// Versus system's, and the windows are pooled per target.
func TestSummarizeSnapshots(t *testing.T) {
	m, err := parseHoldMetrics([]byte(holdMetricsText))
	if err != nil {
		t.Fatal(err)
	}
	w := Workloads()[1] // randwrite-4k-qd1
	side := func(p99 float64) *Measurement {
		return &Measurement{IOPS: 1000, Write: &Side{IOs: 1000, Percentiles: []Percentile{{P: 99, Ns: p99}}}}
	}
	snaps := func(windows ...int64) *DuringReport {
		return &DuringReport{Snapshots: &SnapshotRun{Taken: 3, Sealed: 2, Failed: 1, FailedBy: map[string]int{"timeout": 1},
			CreatesNs: []int64{int64(time.Millisecond)},
			Targets:   []TargetHolds{{Target: "n1", WindowsNs: windows, HeldMax: int64(len(windows)), Metric: m.hist, EndedBy: map[string]int64{"released": 2, "deadline": 1}}}}}
	}
	rep := &Report{Settings: Settings{Repeat: 2}, Work: []Workload{w},
		Systems: []SystemInfo{{Name: "snap", Subject: true, FrontEnd: NBD, Versus: []string{"plain"}}, {Name: "plain", Subject: true, FrontEnd: NBD}},
		Runs: []RunRecord{
			{System: "snap", Workload: w.Name, Result: side(300e3), During: snaps(100e3, 200e3)},
			{System: "snap", Workload: w.Name, Result: side(500e3), During: snaps(300e3, 900e3)},
			{System: "plain", Workload: w.Name, Result: side(200e3)},
			{System: "plain", Workload: w.Name, Result: side(200e3)},
		}}
	summarize(rep)
	if len(rep.Snapshots) != 2 {
		t.Fatalf("snapshot cells %+v", rep.Snapshots)
	}
	c := rep.Snapshots[0]
	if c.Runs != 2 || c.Taken != 6 || c.Sealed != 4 || c.Failed != 2 || c.FailedBy["timeout"] != 2 || c.WriteP99Ns != 400e3 {
		t.Fatalf("cell %+v", c)
	}
	if len(c.Versus) != 1 || c.Versus[0].Peer != "plain" || c.Versus[0].Ratio != 2 {
		t.Fatalf("versus %+v", c.Versus)
	}
	tw := c.Targets[0]
	if tw.Holds != 4 || tw.P50Ns != 200e3 || tw.P99Ns != 900e3 || tw.MaxNs != 900e3 || tw.MetricHolds != 22 ||
		tw.MetricP50Ns != int64(time.Millisecond) || tw.MetricEndedBy["deadline"] != 2 {
		t.Fatalf("target windows %+v", tw)
	}
	if a := rep.Snapshots[1]; a.Workload != "all" || a.Taken != 6 || a.WriteP99Ns != 0 {
		t.Fatalf("all-workloads cell %+v", a)
	}
	var b bytes.Buffer
	if err := rep.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Snapshots during the runs", "| snap | randwrite-4k-qd1 | 2 | 6 | 4 | 2 (timeout 2) | ", "| plain | 200.0 | 2.00× |", "| snap | randwrite-4k-qd1 | n1 | 4 | 200.0 | 900.0 | 900.0 | 2 | 22 | 1000.0 |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("results.md lacks %q:\n%s", want, b.String())
		}
	}
}

// TestSmokeSnapshots runs the four-target snapshot scenario beside the
// same system without snapshots: four cairnd on loopback form a cluster,
// a group of one volume at each target is snapshotted every 100 ms during
// the measured run while light writers keep the other three targets busy,
// and every sealed snapshot's hold shows at every target, exactly and in
// its metric.
func TestSmokeSnapshots(t *testing.T) {
	requireTools(t, "fio")
	t.Parallel()
	rep, out := smoke(t, "--systems", "cairn-4target-snap100ms,cairn-4target", "--workloads", "randwrite-4k-qd1", "--runtime", "1s")
	if ran := rep.ranSystems(); len(ran) != 2 {
		t.Fatalf("systems that ran: %v (%+v)", ran, rep.Systems)
	}
	var snapRuns int
	for _, r := range rep.Runs {
		if r.During == nil || r.During.Writers != 3 {
			t.Errorf("%s %s: during %+v, want 3 light writers", r.System, r.Workload, r.During)
			continue
		}
		sr := r.During.Snapshots
		if r.System != "cairn-4target-snap100ms" {
			if sr != nil {
				t.Errorf("%s took snapshots", r.System)
			}
			continue
		}
		snapRuns++
		if sr == nil || sr.Sealed < 1 || sr.Sealed+sr.Failed != sr.Taken || len(sr.Targets) != 4 {
			t.Fatalf("snapshots beside the run: %+v", sr)
		}
		for _, th := range sr.Targets {
			t.Logf("target %s: %d holds, most held at once %d", th.Target, len(th.WindowsNs), th.HeldMax)
			if len(th.WindowsNs) != sr.Sealed || th.Metric.Count < int64(sr.Sealed) || th.EndedBy["released"] < int64(sr.Sealed) {
				t.Errorf("target %s: %d exact windows, metric %d holds (%v), for %d sealed snapshots", th.Target, len(th.WindowsNs), th.Metric.Count, th.EndedBy, sr.Sealed)
			}
		}
	}
	if snapRuns != 1 {
		t.Fatalf("%d runs with snapshots", snapRuns)
	}
	var c *SnapshotCell
	for i := range rep.Snapshots {
		if rep.Snapshots[i].Workload == "randwrite-4k-qd1" {
			c = &rep.Snapshots[i]
		}
	}
	if c == nil || len(c.Versus) != 1 || c.Versus[0].Peer != "cairn-4target" || c.Versus[0].Ratio <= 0 {
		t.Fatalf("write p99 against the same system without snapshots: %+v", c)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil || !bytes.Contains(md, []byte("## Snapshots during the runs")) || !bytes.Contains(md, []byte("cairn-4target-snap100ms-n4")) {
		t.Fatalf("results.md lacks the snapshot section (%v):\n%s", err, md)
	}
}
