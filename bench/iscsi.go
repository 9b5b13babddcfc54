package bench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"time"
)

const (
	// iscsiInitiatorPrefix names the harness's initiators; connection i is
	// prefix:i, so parallel sessions are distinct I_T nexuses.
	iscsiInitiatorPrefix = "iqn.2026-11.dev.cairn.bench"
	// qemuProbeMin is the shortest calibration run of qemu-img bench
	// whose rate is trusted to size the measured run.
	qemuProbeMin = 200 * time.Millisecond
	// qemuCountMax bounds the requests of one qemu-img bench run (its -c
	// is an int; 2^28 is hours at any rate seen on loopback).
	qemuCountMax = 1 << 28
)

func iscsiURI(addr, iqn string, lun int) string {
	return "iscsi://" + addr + "/" + iqn + "/" + strconv.Itoa(lun)
}

// toolRun is one finished run of a driver tool.
type toolRun struct {
	out     []byte
	elapsed time.Duration
	cpu     time.Duration // user + system
}

// runTool runs argv to completion within timeout, killing its process
// group when ctx ends.
func runTool(ctx context.Context, timeout time.Duration, argv ...string) (toolRun, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	setProcAttrs(cmd)
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := toolRun{out: out.Bytes(), elapsed: time.Since(start)}
	if cmd.ProcessState != nil {
		r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		if cerr := context.Cause(ctx); cerr != nil {
			err = fmt.Errorf("%w (%w)", err, cerr)
		}
		return r, fmt.Errorf("%s: %w: %s", argv[0], err, tail(r.out))
	}
	return r, nil
}

// runConns runs argv(i) for every connection i at once and returns their
// runs in order; the first error wins.
func runConns(ctx context.Context, conns int, timeout time.Duration, argv func(i int) []string) ([]toolRun, error) {
	runs := make([]toolRun, conns)
	errs := make([]error, conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i], errs[i] = runTool(ctx, timeout, argv(i)...)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return runs, err
		}
	}
	return runs, nil
}

// meanOnlySide is a side measured as a rate alone: its mean latency
// follows from the requests in flight by Little's law.
func meanOnlySide(iops float64, blockBytes, inFlight int, elapsed time.Duration) *Side {
	return &Side{IOPS: iops, BytesPerSec: iops * float64(blockBytes), IOs: int64(iops * elapsed.Seconds()),
		LatMeanNs: float64(inFlight) / iops * 1e9, MeanOnly: true}
}

// withSide puts s on the read or write side of m as w says.
func withSide(m Measurement, w Workload, s *Side) Measurement {
	m.IOPS, m.BytesPerSec = s.IOPS, s.BytesPerSec
	if w.Writes() {
		m.Write = s
	} else {
		m.Read = s
	}
	return m
}

// cpuPct is the CPU the runs used, in % of one core over wall.
func cpuPct(runs []toolRun, wall time.Duration) float64 {
	var cpu time.Duration
	for _, r := range runs {
		cpu += r.cpu
	}
	if wall <= 0 {
		return 0
	}
	return 100 * cpu.Seconds() / wall.Seconds()
}

// blocksPerRequest checks that w's requests are whole logical blocks of t.
func blocksPerRequest(t Target, w Workload) (int, error) {
	lb := t.LogicalBlockBytes
	if lb <= 0 || w.BlockBytes%lb != 0 {
		return 0, fmt.Errorf("%w: %d-byte requests on %d-byte logical blocks", ErrUsage, w.BlockBytes, lb)
	}
	return w.BlockBytes / lb, nil
}

// ISCSIPerf drives reads with libiscsi's iscsi-perf: one session per
// connection, each keeping QueueDepth READ16s in flight for whole seconds,
// random (-r) or sequential from LBA 0. It reports IOPS only, so latency
// is a mean by Little's law. It cannot write (this version has no option
// for it), so writes fall to QemuImgBench. The zero value runs
// "iscsi-perf" from PATH.
type ISCSIPerf struct {
	// Path is the iscsi-perf binary; "" means "iscsi-perf".
	Path string
}

var _ Driver = ISCSIPerf{}

func (ISCSIPerf) Name() string { return "iscsi-perf" }

func (ISCSIPerf) Supports(fe FrontEnd, w Workload) bool {
	return fe == ISCSI && !w.Once && (w.RW == "read" || w.RW == "randread")
}

// args returns iscsi-perf's command line for connection i, running secs.
func (p ISCSIPerf) args(t Target, w Workload, i, secs int) ([]string, error) {
	blocks, err := blocksPerRequest(t, w)
	if err != nil {
		return nil, err
	}
	bin := p.Path
	if bin == "" {
		bin = "iscsi-perf"
	}
	a := []string{bin, "-i", iscsiInitiatorPrefix + ":perf-" + strconv.Itoa(i),
		"-m", strconv.Itoa(w.QueueDepth), "-b", strconv.Itoa(blocks), "-t", strconv.Itoa(secs)}
	if w.RW == "randread" {
		a = append(a, "-r")
	}
	return append(a, t.URI), nil
}

// wholeSeconds rounds d up to whole seconds, at least 1.
func wholeSeconds(d time.Duration) int {
	return max(int((d+time.Second-1)/time.Second), 1)
}

// Run runs iscsi-perf once per connection in parallel: first for the ramp
// (unmeasured, when at least a second), then measured for the runtime
// rounded up to whole seconds.
func (p ISCSIPerf) Run(ctx context.Context, t Target, w Workload, o RunOptions) (Measurement, error) {
	if !p.Supports(t.FrontEnd, w) {
		return Measurement{}, fmt.Errorf("%w: iscsi-perf cannot run %s over %s", ErrUnavailable, w.Name, t.FrontEnd)
	}
	conns := w.Connections()
	run := func(secs int) ([]toolRun, error) {
		return runConns(ctx, conns, time.Duration(secs)*time.Second+fioSlack, func(i int) []string {
			a, _ := p.args(t, w, i, secs)
			return a
		})
	}
	if _, err := p.args(t, w, 0, 1); err != nil {
		return Measurement{}, err
	}
	if o.Ramp >= time.Second {
		if _, err := run(int(o.Ramp / time.Second)); err != nil {
			return Measurement{}, fmt.Errorf("iscsi-perf %s ramp on %s: %w", w.Name, t.URI, err)
		}
	}
	secs := wholeSeconds(o.Runtime)
	start := time.Now()
	runs, err := run(secs)
	elapsed := time.Since(start)
	if err != nil {
		return Measurement{}, fmt.Errorf("iscsi-perf %s on %s: %w", w.Name, t.URI, err)
	}
	var iops float64
	for i, r := range runs {
		v, err := parseISCSIPerf(r.out, w.BlockBytes)
		if err != nil {
			return Measurement{}, fmt.Errorf("iscsi-perf %s on %s, connection %d: %w", w.Name, t.URI, i, err)
		}
		iops += v
	}
	runtime := time.Duration(secs) * time.Second
	m := withSide(Measurement{Elapsed: elapsed, DriverCPUPct: cpuPct(runs, runtime)}, w,
		meanOnlySide(iops, w.BlockBytes, w.QueueDepth*conns, runtime))
	return m, nil
}

var (
	iscsiPerfAvgRE  = regexp.MustCompile(`iops average (\d+) \(`)
	iscsiPerfSizeRE = regexp.MustCompile(`transfer size of \d+ blocks \((\d+) byte\)`)
)

// parseISCSIPerf returns the average IOPS of iscsi-perf's output (progress
// lines separated by carriage returns; the last average is the run's),
// checking that it used requests of blockBytes.
func parseISCSIPerf(out []byte, blockBytes int) (float64, error) {
	m := iscsiPerfSizeRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no transfer size in iscsi-perf output: %s", tail(out))
	}
	if n, _ := strconv.Atoi(string(m[1])); n != blockBytes {
		return 0, fmt.Errorf("iscsi-perf used %d-byte requests, want %d", n, blockBytes)
	}
	all := iscsiPerfAvgRE.FindAllSubmatch(out, -1)
	if len(all) == 0 {
		return 0, fmt.Errorf("%w: no average in iscsi-perf output: %s", ErrNoNumbers, tail(out))
	}
	iops, err := strconv.ParseFloat(string(all[len(all)-1][1]), 64)
	if err != nil || iops <= 0 {
		return 0, fmt.Errorf("%w: iscsi-perf average %q", ErrNoNumbers, all[len(all)-1][1])
	}
	return iops, nil
}

// QemuImgBench drives reads and writes with `qemu-img bench` over
// libiscsi: one process per connection, each sending COUNT requests with
// DEPTH in flight. qemu-img bench walks the device by a fixed step, so a
// "random" workload is strided: the step is a multiple of the request
// size near 0.618 of the device and coprime to the number of positions,
// visiting every position once per pass in a scattered order. It counts
// requests, not time, so each run is sized by calibration runs (which are
// the ramp) to last about the runtime; it reports only the elapsed time,
// so latency is a mean by Little's law. The zero value runs "qemu-img".
type QemuImgBench struct {
	// Path is the qemu-img binary; "" means "qemu-img".
	Path string
}

var _ Driver = QemuImgBench{}

func (QemuImgBench) Name() string { return "qemu-img bench" }

func (QemuImgBench) Supports(fe FrontEnd, w Workload) bool {
	return fe == ISCSI && w.RW != "randrw"
}

// qemuStep returns the byte step between requests of w on a device of
// size bytes.
func qemuStep(w Workload, size int64) int64 {
	bs := int64(w.BlockBytes)
	if w.RW != "randread" && w.RW != "randwrite" {
		return bs
	}
	// qemu-img bench wraps offsets modulo size-bs: positions 0..n-1.
	n := (size - bs) / bs
	if n <= 2 {
		return bs
	}
	k := n * 618 / 1000
	for gcd(k, n) != 1 {
		k++
	}
	return k * bs
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// args returns qemu-img bench's command line for count requests starting
// at offset.
func (q QemuImgBench) args(t Target, w Workload, count, offset int64) []string {
	bin := q.Path
	if bin == "" {
		bin = "qemu-img"
	}
	a := []string{bin, "bench", "-f", "raw", "-c", strconv.FormatInt(count, 10), "-d", strconv.Itoa(w.QueueDepth),
		"-s", strconv.Itoa(w.BlockBytes), "-S", strconv.FormatInt(qemuStep(w, t.SizeBytes), 10),
		"-o", strconv.FormatInt(offset, 10)}
	if w.Writes() {
		a = append(a, "-w")
	}
	return append(a, t.URI)
}

// Run calibrates (doubling the request count until a run takes
// qemuProbeMin and the ramp has passed), then runs every connection for
// about the runtime. A Once workload writes the whole device once.
func (q QemuImgBench) Run(ctx context.Context, t Target, w Workload, o RunOptions) (Measurement, error) {
	if !q.Supports(t.FrontEnd, w) {
		return Measurement{}, fmt.Errorf("%w: qemu-img bench cannot run %s over %s", ErrUnavailable, w.Name, t.FrontEnd)
	}
	if _, err := blocksPerRequest(t, w); err != nil {
		return Measurement{}, err
	}
	conns := int64(w.Connections())
	bs := int64(w.BlockBytes)
	slice := t.SizeBytes / conns / bs * bs
	run := func(count int64, timeout time.Duration) ([]toolRun, error) {
		return runConns(ctx, int(conns), timeout, func(i int) []string {
			return q.args(t, w, count, int64(i)*slice)
		})
	}
	if w.Once && w.IOBytes > 0 {
		// The aging job: IOBytes in all, over and over the device in the
		// scattered order of qemuStep (qemu-img bench has no random
		// offsets, so no seed either).
		count := w.IOBytes / conns / bs
		start := time.Now()
		runs, err := run(count, fioOnceTimeout)
		if err != nil {
			return Measurement{}, fmt.Errorf("qemu-img bench %s on %s: %w", w.Name, t.URI, err)
		}
		elapsed := time.Since(start)
		iops := float64(count*conns) / elapsed.Seconds()
		return withSide(Measurement{Elapsed: elapsed, DriverCPUPct: cpuPct(runs, elapsed)}, w,
			meanOnlySide(iops, w.BlockBytes, w.QueueDepth*int(conns), elapsed)), nil
	}
	if w.Once {
		// Offsets wrap before the last request: write it separately.
		n := t.SizeBytes / bs
		start := time.Now()
		runs, err := run(n-1, fioOnceTimeout)
		if err == nil {
			_, err = runTool(ctx, fioSlack, q.args(t, Workload{Name: w.Name, RW: w.RW, BlockBytes: w.BlockBytes, QueueDepth: 1}, 1, t.SizeBytes-bs)...)
		}
		if err != nil {
			return Measurement{}, fmt.Errorf("qemu-img bench %s on %s: %w", w.Name, t.URI, err)
		}
		elapsed := time.Since(start)
		iops := float64(n) / elapsed.Seconds()
		return withSide(Measurement{Elapsed: elapsed, DriverCPUPct: cpuPct(runs, elapsed)}, w,
			meanOnlySide(iops, w.BlockBytes, w.QueueDepth, elapsed)), nil
	}

	// Calibrate: the rate of the last probe sizes the measured run.
	count := int64(max(w.QueueDepth*16, 64))
	var probed time.Duration
	var rate float64 // requests per second per connection
	for {
		runs, err := run(count, o.Ramp+o.Runtime+fioSlack)
		if err != nil {
			return Measurement{}, fmt.Errorf("qemu-img bench %s calibration on %s: %w", w.Name, t.URI, err)
		}
		secs, err := slowest(runs)
		if err != nil {
			return Measurement{}, fmt.Errorf("qemu-img bench %s calibration on %s: %w", w.Name, t.URI, err)
		}
		probed += secs
		if secs < qemuProbeMin && count < qemuCountMax {
			count = min(count*4, qemuCountMax)
			continue
		}
		rate = float64(count) / secs.Seconds()
		if probed >= o.Ramp {
			break
		}
		count = min(max(int64(rate*(o.Ramp-probed).Seconds()), int64(w.QueueDepth)), qemuCountMax)
	}
	count = min(max(int64(rate*o.Runtime.Seconds()), int64(w.QueueDepth)), qemuCountMax)
	start := time.Now()
	runs, err := run(count, 4*o.Runtime+fioSlack)
	elapsed := time.Since(start)
	if err != nil {
		return Measurement{}, fmt.Errorf("qemu-img bench %s on %s: %w", w.Name, t.URI, err)
	}
	var iops float64
	var measured time.Duration
	for i, r := range runs {
		secs, err := parseQemuBench(r.out)
		if err != nil {
			return Measurement{}, fmt.Errorf("qemu-img bench %s on %s, connection %d: %w", w.Name, t.URI, i, err)
		}
		iops += float64(count) / secs.Seconds()
		measured = max(measured, secs)
	}
	return withSide(Measurement{Elapsed: elapsed, DriverCPUPct: cpuPct(runs, elapsed)}, w,
		meanOnlySide(iops, w.BlockBytes, w.QueueDepth*int(conns), measured)), nil
}

// slowest returns the longest of the runs' reported times.
func slowest(runs []toolRun) (time.Duration, error) {
	var d time.Duration
	for _, r := range runs {
		s, err := parseQemuBench(r.out)
		if err != nil {
			return 0, err
		}
		d = max(d, s)
	}
	return d, nil
}

var qemuBenchRE = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// parseQemuBench returns the time qemu-img bench reported for its run;
// a run too short to time counts as a millisecond.
func parseQemuBench(out []byte) (time.Duration, error) {
	m := qemuBenchRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("%w: no %q in qemu-img bench output: %s", ErrNoNumbers, "Run completed", tail(out))
	}
	s, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil || s < 0 {
		return 0, fmt.Errorf("qemu-img bench time %q: %v", m[1], err)
	}
	return max(time.Duration(s*float64(time.Second)), time.Millisecond), nil
}
