package bench

import (
	"testing"
	"time"
)

// TestSummarizeFrontEnds checks that ratios stay within a front end and a
// latency (a declared Versus may cross front ends, within one driver), that each front end is set against cairn in process at its
// latency, and the pipelining limit.
func TestSummarizeFrontEnds(t *testing.T) {
	w := Workloads()[3] // randwrite-4k-qd32
	rep := &Report{Work: []Workload{w}, Systems: []SystemInfo{
		{Name: "cairn-nbd", FrontEnd: NBD, Subject: true, Versus: []string{"ceph-rbd", "nbdkit", "cairn-nbd"}},
		{Name: "cairn-iscsi", FrontEnd: ISCSI, Subject: true},
		{Name: "cairn-inproc", FrontEnd: InProc, Subject: true},
		{Name: "cairn-lat1ms", FrontEnd: NBD, LatencyNs: time.Millisecond, Subject: true},
		{Name: "cairn-inproc-lat1ms", FrontEnd: InProc, LatencyNs: time.Millisecond, Subject: true},
		{Name: "cairn-3node", FrontEnd: NBD, Subject: true, Versus: []string{"cairn-nbd", "cairn-lat1ms", "absent", "ceph-other"}},
		{Name: "nbdkit", FrontEnd: NBD},
		{Name: "tgtd", FrontEnd: ISCSI},
		{Name: "ceph-rbd", FrontEnd: RBD},
		{Name: "ceph-other", FrontEnd: RBD},
	}}
	iops := map[string]float64{"cairn-nbd": 50e3, "cairn-iscsi": 40e3, "cairn-inproc": 100e3,
		"cairn-lat1ms": 16e3, "cairn-inproc-lat1ms": 24e3, "nbdkit": 25e3, "tgtd": 80e3, "cairn-3node": 20e3,
		"ceph-rbd": 10e3, "ceph-other": 5e3}
	for s, v := range iops {
		d := "d"
		if s == "ceph-other" {
			d = "other"
		}
		rep.Runs = append(rep.Runs, RunRecord{System: s, Workload: w.Name, Driver: d, Result: &Measurement{IOPS: v, BytesPerSec: v * 4096}})
	}
	summarize(rep)
	// cairn-3node against its peer and the one of its Versus that is
	// comparable (cairn-lat1ms is at another latency; absent never ran;
	// ceph-other was measured by another driver); cairn-nbd against its
	// Versus on another front end, nbdkit once though named twice, never
	// against itself.
	want := map[[2]string]float64{{"cairn-nbd", "nbdkit"}: 2, {"cairn-nbd", "ceph-rbd"}: 5, {"cairn-iscsi", "tgtd"}: 0.5,
		{"cairn-3node", "nbdkit"}: 0.8, {"cairn-3node", "cairn-nbd"}: 0.4}
	if len(rep.Ratios) != len(want) {
		t.Fatalf("ratios %+v", rep.Ratios)
	}
	for _, r := range rep.Ratios {
		if want[[2]string{r.Subject, r.Peer}] != r.Median {
			t.Errorf("ratio %+v", r)
		}
	}
	fe := map[[2]string]float64{{"cairn-nbd", "cairn-inproc"}: 0.5, {"cairn-iscsi", "cairn-inproc"}: 0.4, {"cairn-lat1ms", "cairn-inproc-lat1ms"}: 16.0 / 24,
		{"cairn-3node", "cairn-inproc"}: 0.2}
	if len(rep.FrontEnds) != len(fe) {
		t.Fatalf("front ends %+v", rep.FrontEnds)
	}
	for _, r := range rep.FrontEnds {
		if fe[[2]string{r.Subject, r.Peer}] != r.Median {
			t.Errorf("front end %+v", r)
		}
	}
	if len(rep.Pipelining) != 2 {
		t.Fatalf("pipelining %+v", rep.Pipelining)
	}
	for _, p := range rep.Pipelining {
		if p.LimitIOPS != 32_000 || p.Fraction != iops[p.System]/32_000 {
			t.Errorf("pipelining %+v", p)
		}
	}
}

// TestSameLatency: latency per node RPC and per storage operation are
// different injections, never compared with each other; at no latency
// the flag means nothing.
func TestSameLatency(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		a, b SystemInfo
		want bool
	}{
		{SystemInfo{LatencyNs: ms}, SystemInfo{LatencyNs: ms}, true},
		{SystemInfo{LatencyNs: ms, LatencyPerRPC: true}, SystemInfo{LatencyNs: ms, LatencyPerRPC: true}, true},
		{SystemInfo{LatencyNs: ms, LatencyPerRPC: true}, SystemInfo{LatencyNs: ms}, false},
		{SystemInfo{LatencyNs: ms}, SystemInfo{LatencyNs: 2 * ms}, false},
		{SystemInfo{LatencyPerRPC: true}, SystemInfo{}, true},
	} {
		if got := sameLatency(c.a, c.b); got != c.want {
			t.Errorf("sameLatency(%+v, %+v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}
