package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Errors the harness classifies.
var (
	// ErrUnavailable: a system or driver cannot run here (tool missing,
	// feature not built yet).
	ErrUnavailable = errors.New("bench: unavailable")
	// ErrNoNumbers: a run finished without measuring anything.
	ErrNoNumbers = errors.New("bench: no numbers")
	// ErrRunsFailed: at least one run failed; the report has the rest.
	ErrRunsFailed = errors.New("bench: runs failed")
	// ErrUsage: bad flags or names.
	ErrUsage = errors.New("bench: usage")
)

// Options configure a harness run. The zero value works: unset counts and
// sizes take DefaultOptions' values (SmokeOptions' with Smoke); a zero Ramp
// or Settle means none.
type Options struct {
	// Repeat is how many times every (scenario, workload) pair runs.
	Repeat int
	// Runtime and Ramp are each run's measured and warm-up time.
	Runtime, Ramp time.Duration
	// SizeBytes is the size of every export.
	SizeBytes int64
	// Settle is the longest wait for a quiet host before each run.
	Settle time.Duration
	// IdleWindow is how long the host is sampled before each run.
	IdleWindow time.Duration
	// Systems names the scenarios to run (comma-separated); "" runs the
	// non-optional ones.
	Systems string
	// Workloads names the workloads (comma-separated); "" runs all.
	Workloads string
	// Smoke falls back to nbdkit memory as the subject when cairnd cannot
	// start, instead of failing.
	Smoke bool
	// Aged ages every export after its fill (agingOverwrites times its
	// size of 4 KiB random overwrites) before anything is measured, and
	// reports the space cairn's stores take after aging and at the end.
	Aged bool
	// WorkDir holds backing files and logs; "" makes (and removes) a
	// temporary directory.
	WorkDir string
	// Drivers are tried in order for each workload; nil means
	// DefaultDrivers.
	Drivers []Driver
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// DefaultOptions returns the full-run defaults.
func DefaultOptions() Options {
	return Options{
		Repeat:     3,
		Runtime:    20 * time.Second,
		Ramp:       3 * time.Second,
		SizeBytes:  1 << 30,
		Settle:     5 * time.Second,
		IdleWindow: idleWindow,
	}
}

// SmokeOptions returns the smoke-run defaults: seconds long, tiny sizes,
// one repetition, every workload.
func SmokeOptions() Options {
	return Options{
		Repeat:     1,
		Runtime:    500 * time.Millisecond,
		Ramp:       0,
		SizeBytes:  16 << 20,
		Settle:     0,
		IdleWindow: 100 * time.Millisecond,
		Systems:    "cairn-nbd,nbdkit-file",
		Smoke:      true,
	}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.Smoke {
		d = SmokeOptions()
	}
	if o.Repeat <= 0 {
		o.Repeat = d.Repeat
	}
	if o.Runtime <= 0 {
		o.Runtime = d.Runtime
	}
	if o.Ramp < 0 {
		o.Ramp = 0
	}
	if o.SizeBytes <= 0 {
		o.SizeBytes = d.SizeBytes
	}
	if o.IdleWindow <= 0 {
		o.IdleWindow = d.IdleWindow
	}
	if o.Drivers == nil {
		o.Drivers = DefaultDrivers()
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return o
}

// DefaultDrivers returns the drivers in order of preference: fio over
// NBD; over iSCSI iscsi-perf for reads (truly random offsets) and qemu-img
// bench for writes and the fill; the load generator in process.
func DefaultDrivers() []Driver {
	return []Driver{FIO{}, ISCSIPerf{}, QemuImgBench{}, Loadgen{}}
}

// sizeBytesMin keeps every connection of a multi-connection workload on at
// least a few MiB.
const sizeBytesMin = 4 << 20

// Report is one comparison: every run, and their summary.
type Report struct {
	Started  time.Time    `json:"started"`
	Finished time.Time    `json:"finished"`
	Machine  Machine      `json:"machine"`
	Settings Settings     `json:"settings"`
	Systems  []SystemInfo `json:"systems"`
	Work     []Workload   `json:"workloads"`
	Runs     []RunRecord  `json:"runs"`
	Cells    []Cell       `json:"cells"`
	Ratios   []Ratio      `json:"ratios"`
	// FrontEnds compare cairn over a front end with cairn in process at
	// the same injected latency (Subject over, Peer in process).
	FrontEnds []Ratio `json:"front_ends,omitempty"`
	// Pipelining is how close each injected-latency run came to its limit.
	Pipelining []Pipelining `json:"pipelining,omitempty"`
	// Aging is the aging job per system, when the run was aged; Space
	// the systems' space after it and at the end.
	Aging []Aging `json:"aging,omitempty"`
	Space []Space `json:"space,omitempty"`
	// Snapshots summarise the snapshot scenarios' activity (see
	// snapshotLoad): per system and workload, and over all workloads.
	Snapshots []SnapshotCell `json:"snapshots,omitempty"`
	Notes     []string       `json:"notes,omitempty"`
	Duration  time.Duration  `json:"duration_ns"`
}

// Settings are the options a report was made with.
type Settings struct {
	Repeat    int           `json:"repeat"`
	Runtime   time.Duration `json:"runtime_ns"`
	Ramp      time.Duration `json:"ramp_ns"`
	SizeBytes int64         `json:"size_bytes"`
	Smoke     bool          `json:"smoke"`
	Driver    string        `json:"driver"`
	// Aged: every export was aged before measuring (Report.Aging).
	Aged bool `json:"aged"`
}

// SystemInfo describes a scenario as it ran (or why it did not).
type SystemInfo struct {
	Name      string        `json:"name"`
	Describe  string        `json:"describe"`
	FrontEnd  FrontEnd      `json:"front_end"`
	LatencyNs time.Duration `json:"latency_ns"`
	// LatencyPerRPC: LatencyNs is per node data RPC, not per storage
	// operation (Scenario.LatencyPerRPC).
	LatencyPerRPC bool     `json:"latency_per_rpc,omitempty"`
	Subject       bool     `json:"subject"`
	Versus        []string `json:"versus,omitempty"` // see Scenario.Versus
	Skipped       string   `json:"skipped,omitempty"`
}

// RunRecord is one measured run.
type RunRecord struct {
	System   string       `json:"system"`
	Workload string       `json:"workload"`
	Driver   string       `json:"driver"`
	Rep      int          `json:"rep"`
	Seq      int          `json:"seq"` // position in the whole run
	Start    time.Time    `json:"start"`
	Result   *Measurement `json:"result,omitempty"`
	Host     HostSample   `json:"host"`
	// During is what the scenario's During activity did beside the run.
	During *DuringReport `json:"during,omitempty"`
	Error  string        `json:"error,omitempty"`
}

// running is a started scenario.
type running struct {
	sc   Scenario
	inst Instance
	// dir is the system's own directory (StartOptions.Dir).
	dir string
}

// Run starts the selected scenarios, fills their exports, runs every
// workload Repeat times interleaved across systems (the order rotates each
// repetition), stops everything, and summarises. A report is returned
// whenever runs happened, also with ErrRunsFailed.
func Run(ctx context.Context, all []Scenario, o Options) (rep *Report, err error) {
	o = o.withDefaults()
	if o.SizeBytes < sizeBytesMin {
		return nil, fmt.Errorf("%w: size %d below %d bytes", ErrUsage, o.SizeBytes, sizeBytesMin)
	}
	workloads, err := selectWorkloads(o.Workloads)
	if err != nil {
		return nil, err
	}
	scenarios, named, err := selectScenarios(all, o.Systems)
	if err != nil {
		return nil, err
	}
	rep = &Report{Started: time.Now(), Machine: machine(), Work: workloads,
		Settings: Settings{Repeat: o.Repeat, Runtime: o.Runtime, Ramp: o.Ramp, SizeBytes: o.SizeBytes, Smoke: o.Smoke, Driver: names(o.Drivers, Driver.Name), Aged: o.Aged}}
	logf := func(format string, args ...any) { fmt.Fprintf(o.Log, "bench: "+format+"\n", args...) }

	dir := o.WorkDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "cairn-bench-"); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}

	// Start every system; stop them all on the way out.
	var live []running
	defer func() {
		for i := len(live) - 1; i >= 0; i-- {
			if cerr := live[i].inst.Close(); cerr != nil {
				logf("stop %s: %v", live[i].sc.Name, cerr)
			}
		}
	}()
	for _, sc := range scenarios {
		info := SystemInfo{Name: sc.Name, FrontEnd: sc.frontEnd(), LatencyNs: sc.Latency, LatencyPerRPC: sc.LatencyPerRPC, Subject: sc.Subject, Versus: sc.Versus}
		sdir := filepath.Join(dir, sc.Name)
		if err := os.MkdirAll(sdir, 0o755); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
		logf("start %s", sc.Name)
		inst, err := sc.System.Start(ctx, StartOptions{Dir: sdir, Name: sc.Name, Export: "vol0",
			SizeBytes: o.SizeBytes, FrontEnd: sc.frontEnd(), Latency: sc.Latency, LatencyPerRPC: sc.LatencyPerRPC})
		info.Describe = sc.System.Describe(ctx)
		if err != nil {
			// A missing peer is skipped; a missing subject or a system
			// that was asked for by name is fatal, except that a smoke
			// run carries on without cairnd.
			skippable := errors.Is(err, ErrUnavailable) && ((!sc.Subject && !named) || o.Smoke)
			if !skippable {
				return nil, fmt.Errorf("start %s: %w", sc.Name, err)
			}
			info.Skipped = err.Error()
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s skipped: %v", sc.Name, err))
			logf("skip %s: %v", sc.Name, err)
			rep.Systems = append(rep.Systems, info)
			continue
		}
		live = append(live, running{sc: sc, inst: inst, dir: sdir})
		rep.Systems = append(rep.Systems, info)
	}
	if o.Smoke && !anySubject(live) {
		if err := addFallbackSubject(ctx, &live, rep, dir, o); err != nil {
			return nil, err
		}
	}
	if len(live) == 0 {
		return nil, fmt.Errorf("%w: no system could start", ErrUnavailable)
	}

	// Fill every export so reads find data everywhere.
	for _, r := range live {
		d := pickDriver(o.Drivers, r.sc.frontEnd(), fill)
		if d == nil {
			return rep, fmt.Errorf("%w: no driver for %s over %s", ErrUnavailable, fill.Name, r.sc.frontEnd())
		}
		logf("fill %s (%d MiB)", r.sc.Name, o.SizeBytes>>20)
		if _, err := d.Run(ctx, r.inst.Target(), fill, RunOptions{Dir: dir}); err != nil {
			return rep, fmt.Errorf("fill %s: %w", r.sc.Name, err)
		}
	}
	if o.Aged {
		if err := age(ctx, live, rep, o, dir, logf); err != nil {
			return rep, err
		}
	}

	failed := 0
	seq := 0
	for k := 0; k < o.Repeat; k++ {
		for wi, w := range workloads {
			n := len(live)
			for j := 0; j < n; j++ {
				r := live[(j+k+wi)%n] // rotate so no system always goes first
				if !r.sc.wants(w) {
					continue
				}
				d := pickDriver(o.Drivers, r.sc.frontEnd(), w)
				if d == nil {
					if k == 0 {
						rep.Notes = append(rep.Notes, fmt.Sprintf("%s: no driver runs %s over %s", r.sc.Name, w.Name, r.sc.frontEnd()))
					}
					continue
				}
				if err := ctx.Err(); err != nil {
					return rep, context.Cause(ctx)
				}
				seq++
				rec := runOne(ctx, d, r, w, o, dir, live)
				rec.Rep, rec.Seq = k+1, seq
				if rec.Error != "" {
					failed++
					logf("%s %s rep %d (%s): FAILED: %s", r.sc.Name, w.Name, k+1, d.Name(), rec.Error)
				} else {
					busy := ""
					if rec.Host.Busy {
						busy = "  [busy: " + rec.Host.Reason + "]"
					}
					logf("%-19s %-20s rep %d: %10.1f %-5s (%s)%s", r.sc.Name, w.Name, k+1, rec.Result.Value(w.Metric), w.Metric, d.Name(), busy)
				}
				rep.Runs = append(rep.Runs, rec)
			}
		}
	}
	if o.Aged {
		recordSpace(ctx, live, rep, "end", logf)
	}
	rep.Finished = time.Now()
	rep.Duration = rep.Finished.Sub(rep.Started)
	rep.Machine.LoadEnd = loadavg()
	summarize(rep)
	if failed > 0 {
		return rep, fmt.Errorf("%w: %d of %d", ErrRunsFailed, failed, len(rep.Runs))
	}
	if len(rep.Runs) == 0 {
		return rep, fmt.Errorf("%w: nothing ran", ErrNoNumbers)
	}
	return rep, nil
}

// runOne measures one run, with the scenario's During activity beside it.
// The CPU use of every live system counts as theirs, not the host's.
func runOne(ctx context.Context, d Driver, r running, w Workload, o Options, dir string, live []running) RunRecord {
	rec := RunRecord{System: r.sc.Name, Workload: w.Name, Driver: d.Name()}
	var pids []int
	for _, l := range live {
		pids = append(pids, l.inst.PIDs()...)
	}
	probe := settle(ctx, o.Settle, o.IdleWindow, pids)
	rec.Start = time.Now()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type during struct {
		rep *DuringReport
		err error
	}
	duringDone := make(chan during, 1)
	if r.sc.During != nil {
		go func() {
			rep, err := r.sc.During(rctx, r.inst, r.dir)
			duringDone <- during{rep, err}
		}()
	} else {
		duringDone <- during{}
	}
	m, err := d.Run(rctx, r.inst.Target(), w, RunOptions{Runtime: o.Runtime, Ramp: o.Ramp, Dir: dir})
	cancel()
	rec.Host = probe.done()
	dr := <-duringDone
	rec.During = dr.rep
	if err == nil && dr.err != nil && !errors.Is(dr.err, context.Canceled) {
		err = fmt.Errorf("during %s: %w", r.sc.Name, dr.err)
	}
	if err != nil {
		rec.Error = err.Error()
		return rec
	}
	rec.Result = &m
	return rec
}

func pickDriver(ds []Driver, fe FrontEnd, w Workload) Driver {
	for _, d := range ds {
		if d.Supports(fe, w) {
			return d
		}
	}
	return nil
}

func anySubject(live []running) bool {
	for _, r := range live {
		if r.sc.Subject {
			return true
		}
	}
	return false
}

// addFallbackSubject makes nbdkit memory the subject of a smoke run that
// could not start cairnd, so the harness itself is still exercised.
func addFallbackSubject(ctx context.Context, live *[]running, rep *Report, dir string, o Options) error {
	sc := Scenario{Name: "nbdkit-memory", System: NBDKit{Plugin: "memory"}, Subject: true}
	for i, r := range *live {
		if r.sc.Name == sc.Name { // already running as a peer: promote it
			(*live)[i].sc.Subject = true
			markSubject(rep, sc.Name)
			rep.Notes = append(rep.Notes, "smoke: nbdkit-memory stands in for cairn")
			return nil
		}
	}
	sdir := filepath.Join(dir, sc.Name)
	if err := os.MkdirAll(sdir, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	inst, err := sc.System.Start(ctx, StartOptions{Dir: sdir, Name: sc.Name, Export: "vol0", SizeBytes: o.SizeBytes, FrontEnd: NBD})
	if err != nil {
		return fmt.Errorf("smoke fallback %s: %w", sc.Name, err)
	}
	*live = append([]running{{sc: sc, inst: inst, dir: sdir}}, *live...)
	rep.Systems = append([]SystemInfo{{Name: sc.Name, Describe: sc.System.Describe(ctx), FrontEnd: NBD, Subject: true}}, rep.Systems...)
	rep.Notes = append(rep.Notes, "smoke: nbdkit-memory stands in for cairn")
	return nil
}

func markSubject(rep *Report, name string) {
	for i := range rep.Systems {
		if rep.Systems[i].Name == name {
			rep.Systems[i].Subject = true
		}
	}
}

// age runs the aging job on every live system, one after the other in the
// order they were filled, then records their space once the cleaners have
// gone quiet.
func age(ctx context.Context, live []running, rep *Report, o Options, dir string, logf func(string, ...any)) error {
	w := agingWorkload(o.SizeBytes)
	for _, r := range live {
		d := pickDriver(o.Drivers, r.sc.frontEnd(), w)
		if d == nil {
			return fmt.Errorf("%w: no driver for %s over %s", ErrUnavailable, w.Name, r.sc.frontEnd())
		}
		logf("age %s (%d MiB of 4 KiB random overwrites, %s)", r.sc.Name, w.IOBytes>>20, d.Name())
		m, err := d.Run(ctx, r.inst.Target(), w, RunOptions{Dir: dir})
		if err != nil {
			return fmt.Errorf("age %s: %w", r.sc.Name, err)
		}
		rep.Aging = append(rep.Aging, Aging{System: r.sc.Name, Driver: d.Name(), Bytes: w.IOBytes, Elapsed: m.Elapsed, IOPS: m.IOPS})
		logf("aged %s in %s (%.0f IOPS)", r.sc.Name, m.Elapsed.Round(time.Millisecond), m.IOPS)
	}
	recordSpace(ctx, live, rep, "after aging", logf)
	return ctx.Err()
}

// recordSpace samples every live system's space into rep.
func recordSpace(ctx context.Context, live []running, rep *Report, when string, logf func(string, ...any)) {
	for _, r := range live {
		sp := measureSpace(ctx, r, when)
		rep.Space = append(rep.Space, sp)
		switch {
		case sp.Error != "":
			logf("space %s (%s): %s", r.sc.Name, when, sp.Error)
		case sp.Store != nil:
			logf("space %s (%s): on disk %d MiB, segments %d MiB, live %d MiB: on-disk/live %.2f (settled %v after %s)",
				r.sc.Name, when, sp.DiskBytes>>20, sp.Store.SegmentBytes>>20, sp.Store.LiveBytes>>20, sp.DiskPerLive(), sp.Settled, sp.Waited.Round(time.Second))
		default:
			logf("space %s (%s): on disk %d MiB", r.sc.Name, when, sp.DiskBytes>>20)
		}
	}
}
