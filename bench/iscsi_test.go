package bench

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseISCSIPerf(t *testing.T) {
	out, err := os.ReadFile("testdata/iscsi-perf.txt")
	if err != nil {
		t.Fatal(err)
	}
	iops, err := parseISCSIPerf(out, 4096)
	if err != nil || iops != 25700 { // the last average, not a progress line's
		t.Fatalf("iops %g, %v", iops, err)
	}
	if _, err := parseISCSIPerf(out, 1<<20); err == nil {
		t.Fatal("accepted a run with the wrong request size")
	}
	cut := out[:strings.Index(string(out), "iops average")]
	if _, err := parseISCSIPerf(cut, 4096); !errors.Is(err, ErrNoNumbers) {
		t.Fatalf("no average: %v", err)
	}
	if _, err := parseISCSIPerf([]byte("iscsi_connect failed. Connection refused"), 4096); err == nil {
		t.Fatal("parsed a failure")
	}
}

func TestParseQemuBench(t *testing.T) {
	out, err := os.ReadFile("testdata/qemu-img-bench.txt")
	if err != nil {
		t.Fatal(err)
	}
	d, err := parseQemuBench(out)
	if err != nil || d != 299*time.Millisecond {
		t.Fatalf("%s, %v", d, err)
	}
	if d, err := parseQemuBench([]byte("Run completed in 0.000 seconds.")); err != nil || d != time.Millisecond {
		t.Fatalf("instant run: %s, %v", d, err)
	}
	if _, err := parseQemuBench([]byte("qemu-img: Could not open 'iscsi://x': Failed to connect")); !errors.Is(err, ErrNoNumbers) {
		t.Fatalf("failure: %v", err)
	}
}

func TestISCSIArgs(t *testing.T) {
	tg := Target{FrontEnd: ISCSI, URI: "iscsi://127.0.0.1:1/iqn.x:vol0/0", SizeBytes: 64 << 20, LogicalBlockBytes: 512}
	w := Workloads()[0] // randread-4k-qd1
	a, err := ISCSIPerf{}.args(tg, w, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(a, " "); got != "iscsi-perf -i "+iscsiInitiatorPrefix+":perf-2 -m 1 -b 8 -t 3 -r "+tg.URI {
		t.Fatalf("iscsi-perf %s", got)
	}
	if _, err := (ISCSIPerf{}).args(Target{LogicalBlockBytes: 4096}, Workload{BlockBytes: 512}, 0, 1); !errors.Is(err, ErrUsage) {
		t.Fatalf("sub-block requests: %v", err)
	}
	q := strings.Join(QemuImgBench{}.args(tg, Workloads()[8], 100, 1<<20), " ") // write-1m-qd8
	if q != "qemu-img bench -f raw -c 100 -d 8 -s 1048576 -S 1048576 -o 1048576 -w "+tg.URI {
		t.Fatalf("qemu-img %s", q)
	}
	for _, tc := range []struct {
		w    Workload
		fe   FrontEnd
		perf bool
		qemu bool
	}{
		{Workloads()[0], ISCSI, true, true},
		{Workloads()[1], ISCSI, false, true},
		{Workloads()[4], ISCSI, false, false}, // randrw: neither mixes
		{fill, ISCSI, false, true},
		{Workloads()[0], NBD, false, false},
	} {
		if (ISCSIPerf{}).Supports(tc.fe, tc.w) != tc.perf || (QemuImgBench{}).Supports(tc.fe, tc.w) != tc.qemu {
			t.Errorf("%s over %s: supports perf %v qemu %v", tc.w.Name, tc.fe, !tc.perf, !tc.qemu)
		}
	}
	if d := pickDriver(DefaultDrivers(), ISCSI, fill); d == nil || d.Name() != "qemu-img bench" {
		t.Fatalf("fill over iSCSI: %v", d)
	}
}

// TestQemuStep checks that a strided "random" walk visits every position
// qemu-img bench can reach once per pass.
func TestQemuStep(t *testing.T) {
	for _, size := range []int64{16 << 20, 1 << 30, 100<<20 + 4096} {
		w := Workload{RW: "randwrite", BlockBytes: 4096}
		step := qemuStep(w, size)
		bs := int64(w.BlockBytes)
		n := (size - bs) / bs
		if step%bs != 0 || step/bs < n/2 {
			t.Fatalf("size %d: step %d", size, step)
		}
		seen := make(map[int64]bool, n)
		off := int64(0)
		for range n {
			if seen[off] {
				t.Fatalf("size %d: offset %d twice in a pass", size, off)
			}
			seen[off] = true
			off = (off + step) % (size - bs) // as qemu-img bench wraps
		}
	}
	if s := qemuStep(Workload{RW: "write", BlockBytes: 1 << 20}, 1<<30); s != 1<<20 {
		t.Fatalf("sequential step %d", s)
	}
}

// TestSmokeISCSI runs cairnd over iSCSI against tgtd with both iSCSI
// drivers: reads with iscsi-perf, writes with qemu-img bench, one and four
// connections.
func TestSmokeISCSI(t *testing.T) {
	requireTools(t, "tgtd", "tgtadm", "iscsi-perf", "qemu-img")
	if os.Geteuid() != 0 {
		if os.Getenv("CAIRN_REQUIRE_TOOLS") != "" {
			t.Fatal("tgtd needs root and CAIRN_REQUIRE_TOOLS is set")
		}
		t.Skip("tgtd needs root")
	}
	t.Parallel()
	systems := "cairn-iscsi,tgtd"
	if testing.Short() { // no cairnd build; in-process cairn keeps nbdkit from standing in
		systems = "cairn-inproc,tgtd"
	}
	workloads := []string{"randread-4k-qd1", "randwrite-4k-qd32", "randread-4k-qd8x4", "write-1m-qd8"}
	rep, _ := smoke(t, "--systems", systems, "--workloads", strings.Join(workloads, ","))
	ran := rep.ranSystems()
	if len(ran) != strings.Count(systems, ",")+1 {
		t.Fatalf("systems that ran: %v (%v)", ran, rep.Notes)
	}
	for _, s := range ran {
		if rep.system(s).FrontEnd != ISCSI {
			continue
		}
		for _, w := range workloads {
			c := rep.cell(s, w)
			if c == nil || c.Median <= 0 {
				t.Errorf("%s %s: no numbers (%+v)", s, w, c)
				continue
			}
			want := "qemu-img bench"
			if strings.Contains(w, "read") {
				want = "iscsi-perf"
			}
			if c.Driver != want || !c.MeanOnly || c.LatMeanNs <= 0 {
				t.Errorf("%s %s: driver %q mean-only %v mean %g", s, w, c.Driver, c.MeanOnly, c.LatMeanNs)
			}
		}
	}
	if !testing.Short() && len(rep.Ratios) != len(workloads) {
		t.Errorf("%d ratios, want %d: %+v", len(rep.Ratios), len(workloads), rep.Ratios)
	}
}
