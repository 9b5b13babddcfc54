package bench

import (
	"bytes"
	"errors"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cairn/configs"
)

func TestParseFIO(t *testing.T) {
	randrw, err := os.ReadFile("testdata/fio-randrw.json")
	if err != nil {
		t.Fatal(err)
	}
	randread, err := os.ReadFile("testdata/fio-randread-4conn.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		data      []byte
		read      bool
		write     bool
		wantErr   error // nil: success
		wantError bool
	}{
		{name: "randrw", data: randrw, read: true, write: true},
		{name: "randread 4 conns", data: randread, read: true},
		{name: "notice before JSON", data: append([]byte("fio: connected to NBD server\n"), randread...), read: true},
		{name: "job error", data: bytes.Replace(randread, []byte(`"error" : 0`), []byte(`"error" : 5`), 1), wantError: true},
		{name: "no I/O", data: bytes.ReplaceAll(randread, []byte(`"total_ios" : `), []byte(`"total_ios" : 0, "x" : `)), wantErr: ErrNoNumbers},
		{name: "no jobs", data: []byte(`{"jobs": []}`), wantError: true},
		{name: "garbage", data: []byte("fio: engine nbd not loadable"), wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := parseFIO(tc.data)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			case tc.wantError:
				if err == nil {
					t.Fatalf("no error, measurement %+v", m)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if (m.Read != nil) != tc.read || (m.Write != nil) != tc.write {
				t.Fatalf("read %v write %v, want %v %v", m.Read != nil, m.Write != nil, tc.read, tc.write)
			}
			if m.IOPS <= 0 || m.BytesPerSec <= 0 {
				t.Fatalf("no throughput: %+v", m)
			}
			s := m.latencySide()
			if len(s.Percentiles) != len(percentileList) {
				t.Fatalf("%d percentiles, want %d", len(s.Percentiles), len(percentileList))
			}
			for i, q := range s.Percentiles {
				if q.P != percentileList[i] || q.Ns <= 0 || (i > 0 && q.Ns < s.Percentiles[i-1].Ns) {
					t.Fatalf("percentile %d = %+v (want p%g, positive, non-decreasing)", i, q, percentileList[i])
				}
			}
			if s.At(50) <= 0 || s.At(99.9) < s.At(50) || s.LatMeanNs < s.ClatMeanNs {
				t.Fatalf("latencies: p50 %g p99.9 %g mean %g clat mean %g", s.At(50), s.At(99.9), s.LatMeanNs, s.ClatMeanNs)
			}
		})
	}
}

func TestFIOArgs(t *testing.T) {
	tg := Target{FrontEnd: NBD, URI: "nbd://127.0.0.1:1/vol0", SizeBytes: 100 << 20}
	o := RunOptions{Runtime: 1500 * time.Millisecond, Ramp: time.Second}
	for _, tc := range []struct {
		w        Workload
		want     []string
		wantNone []string
	}{
		{w: Workloads()[0], want: []string{"--rw=randread", "--iodepth=1", "--numjobs=1", "--size=104857600", "--runtime=1500ms", "--ramp_time=1000ms", "--lat_percentiles=1"},
			wantNone: []string{"--offset_increment", "--rwmixread"}},
		{w: Workload{Name: "x", RW: "randwrite", BlockBytes: 4096, QueueDepth: 8, Conns: 3},
			// 100 MiB / 3, rounded down to 4 KiB
			want: []string{"--numjobs=3", "--size=34951168", "--offset_increment=34951168"}},
		{w: Workload{Name: "m", RW: "randrw", ReadPercent: 70, BlockBytes: 4096, QueueDepth: 32}, want: []string{"--rwmixread=70"}},
		{w: fill, want: []string{"--rw=write", "--bs=1048576"}, wantNone: []string{"--time_based", "--runtime"}},
	} {
		argv, err := FIO{}.args(tg, tc.w, o, "/out.json")
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Join(argv, " ")
		for _, a := range tc.want {
			if !strings.Contains(args, a) {
				t.Errorf("%s: %q missing from %s", tc.w.Name, a, args)
			}
		}
		for _, a := range tc.wantNone {
			if strings.Contains(args, a) {
				t.Errorf("%s: %q in %s", tc.w.Name, a, args)
			}
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in         []float64
		med, lo, h float64
	}{
		{[]float64{3}, 3, 3, 3},
		{[]float64{5, 1, 3}, 3, 1, 5},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
	} {
		lo, hi := minMax(tc.in)
		if m := median(tc.in); m != tc.med || lo != tc.lo || hi != tc.h {
			t.Errorf("%v: median %g min %g max %g", tc.in, m, lo, hi)
		}
	}
}

func TestParseCPULine(t *testing.T) {
	c, ok := parseCPULine([]byte("cpu  100 5 20 800 10 1 2 7 0 0"))
	if !ok || c.busy != 128 || c.idle != 810 || c.steal != 7 || c.total != 945 {
		t.Fatalf("%+v %v", c, ok)
	}
	if _, ok := parseCPULine([]byte("cpu0 1 2 3")); ok {
		t.Fatal("parsed a short per-CPU line")
	}
}

func TestSelect(t *testing.T) {
	all := Scenarios(&Binary{})
	def, named, err := selectScenarios(all, "")
	if err != nil || named {
		t.Fatal(err, named)
	}
	for _, s := range def {
		if s.Optional {
			t.Errorf("optional %s selected by default", s.Name)
		}
	}
	sel, _, err := selectScenarios(all, "nbd-server, cairn-lat1ms")
	if err != nil || len(sel) != 2 || sel[0].Name != "nbd-server" || sel[1].Name != "cairn-lat1ms" {
		t.Fatalf("%v %v", sel, err)
	}
	if _, _, err := selectScenarios(all, "cairn,nope"); !errors.Is(err, ErrUsage) {
		t.Fatalf("unknown system: %v", err)
	}
	if _, err := selectWorkloads("write-1m-qd8,bogus"); !errors.Is(err, ErrUsage) {
		t.Fatalf("unknown workload: %v", err)
	}
	ws, err := selectWorkloads("write-1m-qd8,randread-4k-qd1")
	if err != nil || len(ws) != 2 || ws[0].Name != "randread-4k-qd1" {
		t.Fatalf("%v %v", ws, err)
	}
}

// syntheticReport is a report with two systems, three repetitions each.
func syntheticReport() *Report {
	rep := &Report{Started: time.Unix(1_800_000_000, 0), Machine: Machine{Hostname: "h", Cores: 2},
		Settings: Settings{Repeat: 3, Runtime: time.Second, SizeBytes: 1 << 30, Driver: "fio"},
		Systems:  []SystemInfo{{Name: "cairn", Subject: true, FrontEnd: NBD}, {Name: "peer", FrontEnd: NBD}, {Name: "gone", Skipped: "not installed"}},
		Work:     []Workload{Workloads()[0], Workloads()[7]}}
	side := func(scale float64) *Side {
		s := &Side{IOs: 1, LatMeanNs: 50e3 * scale}
		for _, p := range percentileList {
			s.Percentiles = append(s.Percentiles, Percentile{P: p, Ns: scale * (10e3 + 1e3*p)})
		}
		return s
	}
	for k, f := range []float64{1, 2, 3} {
		for _, s := range []struct {
			name  string
			scale float64
		}{{"cairn", 2}, {"peer", 1}} {
			rep.Runs = append(rep.Runs,
				RunRecord{System: s.name, Workload: "randread-4k-qd1", Rep: k + 1, Result: &Measurement{IOPS: 1000 * f * s.scale, BytesPerSec: 4e6, Read: side(f)}},
				RunRecord{System: s.name, Workload: "read-1m-qd8", Rep: k + 1, Result: &Measurement{IOPS: 100, BytesPerSec: 100 * f * s.scale * (1 << 20), Read: side(f)},
					Host: HostSample{Busy: k == 0, Reason: "test"}})
		}
	}
	rep.Runs = append(rep.Runs, RunRecord{System: "peer", Workload: "read-1m-qd8", Rep: 4, Error: "fio: connection reset | x"})
	summarize(rep)
	return rep
}

func TestSummarize(t *testing.T) {
	rep := syntheticReport()
	c := rep.cell("cairn", "read-1m-qd8")
	if c == nil || c.N != 3 || c.Busy != 1 || c.Median != 400 || c.Min != 200 || c.Max != 600 {
		t.Fatalf("cell %+v", c)
	}
	if c := rep.cell("peer", "randread-4k-qd1"); c == nil || c.Median != 2000 || c.P50Ns != 2*(10e3+50e3) || len(c.CDF) != len(percentileList) {
		t.Fatalf("cell %+v", c)
	}
	if rep.cell("gone", "read-1m-qd8") != nil {
		t.Fatal("skipped system has a cell")
	}
	r := rep.ratio("cairn", "peer", "read-1m-qd8")
	if r == nil || r.Median != 2 || r.Low != 200.0/300 || r.High != 600.0/100 {
		t.Fatalf("ratio %+v", r)
	}
	if len(rep.Ratios) != 2 {
		t.Fatalf("%d ratios, want 2", len(rep.Ratios))
	}
}

func TestReportOutputs(t *testing.T) {
	rep := syntheticReport()
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| read-1m-qd8 | MiB/s | 400 [200–600] † | 200 [100–300] † |",
		"| read-1m-qd8 | 2.00× (0.67–6.00) |",
		"| randread-4k-qd1 | cairn | 100.0 | 120.0 |",
		"~~gone~~: skipped — not installed",
		`FAILED: fio: connection reset \| x`,
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(&js)
	if err != nil || len(back.Runs) != len(rep.Runs) || len(back.Ratios) != len(rep.Ratios) {
		t.Fatalf("JSON round trip: %v", err)
	}
	dir := t.TempDir()
	files, err := rep.WriteCharts(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 4 {
		t.Fatalf("charts %v", files)
	}
	checkPNG(t, filepath.Join(dir, "bars.png"))
	checkPNG(t, filepath.Join(dir, "latency.png"))
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
		t.Fatalf("%s: %v", path, b)
	}
}

// TestSmoke runs `cairn bench --smoke`: every workload against cairnd (or
// nbdkit memory standing in when cairnd cannot be built) and nbdkit file,
// and fails if a run measures nothing or a process outlives the run. With
// -short it leaves cairnd out.
func TestSmoke(t *testing.T) {
	requireTools(t, "fio", "nbdkit")
	t.Parallel()
	var extra []string
	if testing.Short() {
		extra = []string{"--systems", "nbdkit-memory,nbdkit-file"}
	}
	rep, out := smoke(t, extra...)
	ran := rep.ranSystems()
	if len(ran) < 2 {
		t.Fatalf("systems that ran: %v", ran)
	}
	for _, s := range ran {
		for _, w := range Workloads() {
			c := rep.cell(s, w.Name)
			if c == nil || c.N == 0 || c.Median <= 0 {
				t.Errorf("%s %s: no numbers (%+v)", s, w.Name, c)
				continue
			}
			if w.Latency && (c.P50Ns <= 0 || c.P999Ns < c.P50Ns) {
				t.Errorf("%s %s: latencies p50 %g p99.9 %g", s, w.Name, c.P50Ns, c.P999Ns)
			}
		}
	}
	if subjects, peers := rep.roles(); len(rep.Ratios) != len(subjects)*len(peers)*len(Workloads()) {
		t.Errorf("%d ratios for %v vs %v", len(rep.Ratios), subjects, peers)
	}
	for _, name := range []string{"results.md", "bars.png", "bars.svg", "latency.png", "latency.svg"} {
		if fi, err := os.Stat(filepath.Join(out, name)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// requireTools skips the test when a tool is missing, or fails it when
// CAIRN_REQUIRE_TOOLS is set.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CAIRN_REQUIRE_TOOLS") != "" {
				t.Fatalf("%s not installed and CAIRN_REQUIRE_TOOLS is set", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
}

// smoke runs `cairn bench --smoke` with extra flags, checks it exits 0 and
// leaves no process behind, and returns its report and output directory.
func smoke(t *testing.T, extra ...string) (*Report, string) {
	t.Helper()
	out, work := t.TempDir(), t.TempDir()
	args := append([]string{"--smoke", "--out", out, "--workdir", work}, extra...)
	var stdout, stderr bytes.Buffer
	code := Main(args, &stdout, &stderr)
	t.Logf("cairn bench %s:\n%s\n%s", strings.Join(args, " "), stderr.String(), stdout.String())
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	if left := processesUnder(work); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}
	f, err := os.Open(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := ReadReport(f)
	if err != nil {
		t.Fatal(err)
	}
	return rep, out
}

// processesUnder lists live processes whose working directory or command
// line mentions dir.
func processesUnder(dir string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' || pid == fmt.Sprint(os.Getpid()) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", pid, "cwd"))
		if strings.HasPrefix(cwd, dir) || bytes.Contains(cmdline, []byte(dir)) {
			out = append(out, pid+" "+string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
	}
	return out
}

// TestCairndConfig checks the harness's cairnd config against the config
// package, so a renamed key fails here rather than in a bench run.
func TestCairndConfig(t *testing.T) {
	dir := t.TempDir()
	text, err := Cairnd{Replicas: 1}.config(StartOptions{Dir: dir, Name: "cairn", Export: "vol0", SizeBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Parse([]byte(text), dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if len(cfg.Volumes) != 1 || cfg.Volumes[0].Name != "vol0" || cfg.Volumes[0].Size != 256<<20 {
		t.Fatalf("volumes %+v", cfg.Volumes)
	}
	if cfg.DataDir != filepath.Join(dir, "data") {
		t.Fatalf("data_dir %q", cfg.DataDir)
	}
	if cfg.ISCSI.IQNPrefix != cairnIQNPrefix {
		t.Fatalf("iqn_prefix %q", cfg.ISCSI.IQNPrefix)
	}
	for _, a := range []string{cfg.NBD.Listen, cfg.ISCSI.Listen, cfg.Admin.Listen, cfg.Raft.Bind} {
		if !strings.HasPrefix(a, "127.0.0.1:") || strings.HasSuffix(a, ":0") {
			t.Errorf("listener %q is not a free loopback port", a)
		}
	}
}

// TestClusterNodeConfig checks a bench cluster node's config against the
// config package: it parses, joins the other nodes and expects them all.
func TestClusterNodeConfig(t *testing.T) {
	dir := t.TempDir()
	text := nodeConfig("b-n2", "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:5", []string{"127.0.0.1:6", "127.0.0.1:7"}, 3)
	cfg, err := configs.Parse([]byte(text), dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if cfg.NodeName != "b-n2" || cfg.Raft.BootstrapExpect != 3 || len(cfg.Gossip.Join) != 2 || cfg.Gossip.Bind != "127.0.0.1:4" || len(cfg.Volumes) != 0 {
		t.Fatalf("parsed %+v", cfg)
	}
}

// TestSmokeCluster runs the three-node scenario beside one node: the
// cluster forms, serves the volume, is measured and compared with the
// single node, and leaves no process behind.
func TestSmokeCluster(t *testing.T) {
	requireTools(t, "fio")
	t.Parallel()
	rep, out := smoke(t, "--systems", "cairn-3node-r3,cairn-nbd", "--workloads", "randwrite-4k-qd32,randread-4k-qd1")
	if ran := rep.ranSystems(); len(ran) != 2 {
		t.Fatalf("systems that ran: %v (%+v)", ran, rep.Systems)
	}
	found := 0
	for _, r := range rep.Ratios {
		if r.Subject == "cairn-3node-r3" && r.Peer == "cairn-nbd" && r.Median > 0 {
			found++
		}
	}
	if found != 2 {
		t.Fatalf("ratios of cairn-3node-r3 to cairn-nbd: %d, want one per workload (%+v)", found, rep.Ratios)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil || !bytes.Contains(md, []byte("## Ratios cairn-3node-r3 / peer")) || !bytes.Contains(md, []byte("| vs cairn-nbd |")) {
		t.Fatalf("results.md lacks the cluster's ratios to one node (%v):\n%s", err, md)
	}
}

func TestServingLine(t *testing.T) {
	line := `time=2026-11-22T22:56:01.123Z level=INFO msg="cairnd serving" node=cairn nbd=127.0.0.1:41234 iscsi=127.0.0.1:41236 admin=127.0.0.1:41235 data_dir=/d volumes=1`
	m := servingRE.FindStringSubmatch(line)
	if m == nil || m[1] != "127.0.0.1:41234" || m[2] != "127.0.0.1:41236" || m[3] != "127.0.0.1:41235" {
		t.Fatalf("match %q", m)
	}
	o := StartOptions{Export: "vol0", SizeBytes: 1 << 20}
	if tg := cairnTarget(ISCSI, m[1], m[2], o); tg.URI != "iscsi://127.0.0.1:41236/iqn.2026-11.dev.cairn:vol0/0" || tg.LogicalBlockBytes != 512 {
		t.Fatalf("iSCSI target %+v", tg)
	}
	if tg := cairnTarget(NBD, m[1], m[2], o); tg.URI != "nbd://127.0.0.1:41234/vol0" {
		t.Fatalf("NBD target %+v", tg)
	}
	if servingRE.MatchString(`level=INFO msg="created declared volume" nbd=x`) {
		t.Fatal("matched another line")
	}
}

func TestProcTicks(t *testing.T) {
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for procTicks([]int{os.Getpid()}) == 0 && time.Now().Before(deadline) {
		for i := range 1_000_000 {
			x += i
		}
	}
	if procTicks([]int{os.Getpid()}) == 0 {
		t.Fatalf("no CPU ticks for this process (%d)", x)
	}
	if procTicks([]int{1 << 30}) != 0 {
		t.Fatal("ticks for a process that does not exist")
	}
}
