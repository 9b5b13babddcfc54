package bench

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// metricsSample is /metrics text as cairnd serves it, store part and a
// few neighbours.
const metricsSample = `# HELP cairn_inflight_bytes Request payload bytes held by the front ends now.
# TYPE cairn_inflight_bytes gauge
cairn_inflight_bytes 0
# HELP cairn_store_bytes The block store's bytes: segments on disk, block data the index points at (live), index memory.
# TYPE cairn_store_bytes gauge
cairn_store_bytes{kind="index"} 131072
cairn_store_bytes{kind="live"} 2.68435456e+08
cairn_store_bytes{kind="segments"} 3.221225472e+09
# HELP cairn_store_cleaner_copied_bytes_total Bytes of live blocks the cleaner copied out of emptying segments.
# TYPE cairn_store_cleaner_copied_bytes_total counter
cairn_store_cleaner_copied_bytes_total 1.2e+07
# TYPE cairn_store_gc_dropped_total counter
cairn_store_gc_dropped_total{what="bytes"} 4096
cairn_store_gc_dropped_total{what="versions"} 1
# TYPE cairn_store_reclaimed_bytes_total counter
cairn_store_reclaimed_bytes_total 6.7108864e+07
# TYPE cairn_store_segments gauge
cairn_store_segments 5
cairn_volume_size_bytes{volume="vol0"} 2.68435456e+08
`

func TestParseStoreMetrics(t *testing.T) {
	sp, err := parseStoreMetrics([]byte(metricsSample))
	if err != nil {
		t.Fatal(err)
	}
	want := StoreSpace{SegmentBytes: 3 << 30, LiveBytes: 256 << 20, IndexBytes: 128 << 10, Segments: 5,
		CleanerBytes: 12_000_000, GCBytesDropped: 4096, ReclaimedBytes: 64 << 20}
	if sp != want {
		t.Fatalf("parsed %+v, want %+v", sp, want)
	}
	for _, tc := range []struct {
		name, text string
		is         error
	}{
		{"no store", "cairn_inflight_bytes 0\n", ErrNoNumbers},
		{"one missing", strings.Replace(metricsSample, `cairn_store_bytes{kind="live"}`, `cairn_store_bytes{kind="alive"}`, 1), ErrNoNumbers},
		{"negative", strings.Replace(metricsSample, "cairn_store_segments 5", "cairn_store_segments -5", 1), nil},
		{"NaN", strings.Replace(metricsSample, "cairn_store_segments 5", "cairn_store_segments NaN", 1), nil},
		{"garbage value", strings.Replace(metricsSample, "cairn_store_segments 5", "cairn_store_segments five", 1), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp, err := parseStoreMetrics([]byte(tc.text))
			if err == nil {
				t.Fatalf("no error, parsed %+v", sp)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want %v", err, tc.is)
			}
		})
	}
}

func TestSpaceRatios(t *testing.T) {
	sp := Space{DiskBytes: 300, Store: &StoreSpace{SegmentBytes: 250, LiveBytes: 200}}
	if sp.DiskPerLive() != 1.5 || sp.SegmentsPerLive() != 1.25 {
		t.Fatalf("on-disk/live %g, segments/live %g", sp.DiskPerLive(), sp.SegmentsPerLive())
	}
	for _, s := range []Space{{DiskBytes: 300}, {DiskBytes: 300, Store: &StoreSpace{}}, {Store: &StoreSpace{LiveBytes: 1}}} {
		if s.DiskPerLive() != 0 {
			t.Errorf("%+v: on-disk/live %g, want 0 (unknown)", s, s.DiskPerLive())
		}
	}
}

func TestCleanerQuiet(t *testing.T) {
	a := StoreSpace{SegmentBytes: 100, CleanerBytes: 10, GCBytesDropped: 1, ReclaimedBytes: 5}
	for _, tc := range []struct {
		name  string
		b     StoreSpace
		quiet bool
	}{
		{"same", a, true},
		{"segments grew", StoreSpace{SegmentBytes: 120, CleanerBytes: 10, GCBytesDropped: 1, ReclaimedBytes: 5}, true},
		{"segments fell", StoreSpace{SegmentBytes: 90, CleanerBytes: 10, GCBytesDropped: 1, ReclaimedBytes: 5}, false},
		{"cleaner copied", StoreSpace{SegmentBytes: 100, CleanerBytes: 11, GCBytesDropped: 1, ReclaimedBytes: 5}, false},
		{"gc dropped", StoreSpace{SegmentBytes: 100, CleanerBytes: 10, GCBytesDropped: 2, ReclaimedBytes: 5}, false},
		{"reclaimed", StoreSpace{SegmentBytes: 100, CleanerBytes: 10, GCBytesDropped: 1, ReclaimedBytes: 6}, false},
	} {
		if got := cleanerQuiet(a, tc.b); got != tc.quiet {
			t.Errorf("%s: quiet %v, want %v", tc.name, got, tc.quiet)
		}
	}
}

func TestDiskBytes(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "data"), bytes.Repeat([]byte{1}, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil { // a hole: nothing allocated
		t.Fatal(err)
	}
	f.Close()
	n, err := diskBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The 64 KiB file, a little more on filesystems that allocate ahead;
	// the 1 GiB hole not.
	if n < 64<<10 || n > 1<<20 {
		t.Fatalf("disk bytes %d, want 64 KiB to 1 MiB", n)
	}
	if _, err := diskBytes(filepath.Join(dir, "missing")); err != nil {
		t.Fatalf("missing dir: %v", err)
	}
}

func TestAgingFIOArgs(t *testing.T) {
	tg := Target{FrontEnd: NBD, URI: "nbd://127.0.0.1:1/vol0", SizeBytes: 256 << 20}
	w := agingWorkload(tg.SizeBytes)
	argv, err := FIO{}.args(tg, w, RunOptions{}, "/out.json")
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(argv, " ")
	for _, a := range []string{"--rw=randwrite", "--bs=4096", "--iodepth=32", "--numjobs=1", "--size=268435456",
		"--io_size=805306368", "--norandommap", "--randrepeat=1", "--randseed=51730"} {
		if !strings.Contains(args, a) {
			t.Errorf("%q missing from %s", a, args)
		}
	}
	for _, a := range []string{"--time_based", "--runtime", "--randrepeat=0"} {
		if strings.Contains(args, a) {
			t.Errorf("%q in %s", a, args)
		}
	}
	// Measured workloads keep clock-seeded offsets.
	argv0, err := FIO{}.args(tg, Workloads()[0], RunOptions{}, "/o")
	if err != nil {
		t.Fatal(err)
	}
	if args := strings.Join(argv0, " "); !strings.Contains(args, "--randrepeat=0") || strings.Contains(args, "--randseed") || strings.Contains(args, "--io_size") {
		t.Errorf("measured workload: %s", args)
	}
}

func TestAgingQemuArgs(t *testing.T) {
	tg := Target{FrontEnd: ISCSI, URI: "iscsi://127.0.0.1:1/iqn.x/0", SizeBytes: 64 << 20, LogicalBlockBytes: 512}
	w := agingWorkload(tg.SizeBytes)
	if !(QemuImgBench{}).Supports(ISCSI, w) {
		t.Fatal("qemu-img bench cannot age an iSCSI LUN")
	}
	args := strings.Join(QemuImgBench{}.args(tg, w, w.IOBytes/int64(w.BlockBytes), 0), " ")
	for _, a := range []string{"-c 49152", "-d 32", "-s 4096", "-w"} {
		if !strings.Contains(args, a) {
			t.Errorf("%q missing from %s", a, args)
		}
	}
	if step := qemuStep(w, tg.SizeBytes); step == int64(w.BlockBytes) || step%int64(w.BlockBytes) != 0 {
		t.Errorf("step %d: not scattered", step)
	}
}

// TestSmokeAged runs `cairn bench --smoke --aged` on one workload: every
// system is aged before measuring, and cairnd's store space is reported
// after aging and at the end, in results.json and results.md.
func TestSmokeAged(t *testing.T) {
	requireTools(t, "fio", "nbdkit")
	t.Parallel()
	rep, out := smoke(t, "--aged", "--workloads", "randwrite-4k-qd32")
	if !rep.Settings.Aged {
		t.Fatal("settings do not say the run was aged")
	}
	ran := rep.ranSystems()
	if len(rep.Aging) != len(ran) {
		t.Fatalf("aging records %+v for systems %v", rep.Aging, ran)
	}
	for _, a := range rep.Aging {
		if a.Bytes != agingOverwrites*rep.Settings.SizeBytes || a.Elapsed <= 0 || a.IOPS <= 0 {
			t.Errorf("aging %+v", a)
		}
	}
	if len(rep.Space) != 2*len(ran) {
		t.Fatalf("space records %+v for systems %v", rep.Space, ran)
	}
	stores := 0
	for _, sp := range rep.Space {
		if sp.Error != "" {
			t.Errorf("space %s %s: %s", sp.System, sp.When, sp.Error)
		}
		if sp.Store == nil {
			continue
		}
		stores++
		// Every filled block is live; the store holds at least that.
		if sp.Store.LiveBytes != rep.Settings.SizeBytes || sp.Store.SegmentBytes < sp.Store.LiveBytes || sp.DiskBytes < sp.Store.SegmentBytes/2 || sp.DiskPerLive() <= 0 {
			t.Errorf("space %s %s: %+v store %+v", sp.System, sp.When, sp, *sp.Store)
		}
	}
	if rep.system("cairn-nbd").Skipped == "" && stores != 2 {
		t.Errorf("cairn-nbd ran but %d store space records", stores)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil || !bytes.Contains(md, []byte("## Aging and space")) || !bytes.Contains(md, []byte("**Aged**")) {
		t.Fatalf("results.md lacks the aging (%v):\n%s", err, md)
	}
}

func TestSpaceMarkdown(t *testing.T) {
	rep := syntheticReport()
	rep.Settings.Aged = true
	rep.Aging = []Aging{{System: "cairn", Driver: "fio", Bytes: 3 << 30, Elapsed: 90e9, IOPS: 8738}}
	rep.Space = []Space{
		{System: "cairn", When: "after aging", DiskBytes: 1536 << 20, Settled: true, Waited: 4e9,
			Store: &StoreSpace{SegmentBytes: 1280 << 20, LiveBytes: 1 << 30, IndexBytes: 8 << 20, Segments: 20, CleanerBytes: 2 << 30}},
		{System: "peer", When: "after aging", DiskBytes: 1 << 30, Settled: true},
		{System: "cairn", When: "end", Error: "metrics: connection refused | x"},
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"- **Aged**: after its fill every export took 3×",
		"| cairn | fio | 3072.0 MiB | 1m30s | 8738 |",
		"| cairn | after aging | 1536.0 MiB | 1280.0 MiB | 1024.0 MiB | 8.0 MiB | 20 | 2048.0 MiB | 1.50× | 1.25× | yes (4s) |",
		"| peer | after aging | 1024.0 MiB | — | — | — | — | — | — | — | yes (0s) |",
		`no (0s) — metrics: connection refused \| x |`,
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
}
