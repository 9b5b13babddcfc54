package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"cairn/configs"
)

// resultsRoot is where full runs put their results by default, relative to
// the repository root.
const resultsRoot = "bench/results"

// Main is `cairn bench`: it parses args, runs the comparison, and writes
// results.md, results.json and the charts into the output directory. It
// returns the process exit code: 0, 1 when something failed (the results
// written so far are kept), 2 for bad usage.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cairn bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: cairn bench [flags]\n\nRuns cairnd and peer servers side by side on loopback — NBD (fio) against nbdkit,\nqemu-nbd and nbd-server; iSCSI (iscsi-perf, qemu-img bench) against tgtd; Ceph RBD\n(fio's rbd engine) when Ceph is installed; cairn's storage in process (Go load\ngenerator); and the same with latency injected below the front ends — and reports\nmedians, spreads and cairn/peer ratios (results.md, results.json, bars.png,\nlatency.png).\n\nflags:\n")
		fs.PrintDefaults()
	}
	d := DefaultOptions()
	out := fs.String("out", "", "results directory (default "+resultsRoot+"/<date>-<host>; a temporary directory with --smoke)")
	smoke := fs.Bool("smoke", false, "seconds-long run with tiny sizes and one repetition, to check the harness")
	repeat := fs.Int("repeat", 0, fmt.Sprintf("repetitions per workload and system (default %d; 1 with --smoke)", d.Repeat))
	runtime := fs.Duration("runtime", 0, fmt.Sprintf("measured time per run (default %s; %s with --smoke)", d.Runtime, SmokeOptions().Runtime))
	var ramp, settle optDuration
	fs.Var(&ramp, "ramp", fmt.Sprintf("unmeasured warm-up per run (default %s; 0 with --smoke)", d.Ramp))
	size := fs.String("size", "", "export size, e.g. 1GiB (default 1GiB; 16MiB with --smoke)")
	systems := fs.String("systems", "", "comma-separated systems (default: all non-optional; "+SmokeOptions().Systems+" with --smoke; see --list)")
	workloads := fs.String("workloads", "", "comma-separated workloads (default: all; see --list)")
	cairnd := fs.String("cairnd", "", "cairnd binary (default: go build cairn/cmd/cairnd)")
	baseline := fs.String("baseline-cairnd", "", "another cairnd binary, run as the peers cairn-nbd-baseline and cairn-iscsi-baseline (an A/B of two builds in one run)")
	fs.Var(&settle, "settle", fmt.Sprintf("longest wait for a quiet host before each run (default %s; 0 with --smoke)", d.Settle))
	aged := fs.Bool("aged", false, fmt.Sprintf("age every export after its fill (%d× its size of 4 KiB random overwrites at queue depth 32, fixed seed) before measuring, and report the space cairn's stores take after aging and at the end", agingOverwrites))
	workDir := fs.String("workdir", "", "keep backing files and server logs here (default: a temporary directory, removed)")
	list := fs.Bool("list", false, "list systems and workloads and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cairn bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *cairnd != "" {
		// Systems run in their own directories: a relative path would not
		// resolve there.
		abs, err := filepath.Abs(*cairnd)
		if err != nil {
			fmt.Fprintf(stderr, "cairn bench: --cairnd: %v\n", err)
			return 2
		}
		*cairnd = abs
	}
	bin := &Binary{Path: *cairnd}
	all := Scenarios(bin)
	if *baseline != "" {
		abs, err := filepath.Abs(*baseline)
		if err != nil {
			fmt.Fprintf(stderr, "cairn bench: --baseline-cairnd: %v\n", err)
			return 2
		}
		all = append(all, BaselineScenarios(&Binary{Path: abs})...)
	}
	if *list {
		printList(stdout, all)
		return 0
	}

	o := DefaultOptions()
	if *smoke {
		o = SmokeOptions()
	}
	if *repeat > 0 {
		o.Repeat = *repeat
	}
	if *runtime > 0 {
		o.Runtime = *runtime
	}
	if ramp.set {
		o.Ramp = ramp.d
	}
	if settle.set {
		o.Settle = settle.d
	}
	if *size != "" {
		n, err := configs.ParseSize(*size)
		if err != nil {
			fmt.Fprintf(stderr, "cairn bench: --size: %v\n", err)
			return 2
		}
		o.SizeBytes = n
	}
	if *systems != "" {
		o.Systems = *systems
	}
	o.Workloads, o.WorkDir, o.Log, o.Aged = *workloads, *workDir, stderr, *aged

	if _, err := lookTool("fio"); err != nil {
		fmt.Fprintf(stderr, "cairn bench: %v (apt-get install fio)\n", err)
		return 1
	}
	dir, err := outDir(*out, *smoke)
	if err != nil {
		fmt.Fprintf(stderr, "cairn bench: %v\n", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, runErr := Run(ctx, all, o)
	if rep == nil {
		fmt.Fprintf(stderr, "cairn bench: %v\n", runErr)
		if errors.Is(runErr, ErrUsage) {
			return 2
		}
		return 1
	}
	if rep.Finished.IsZero() { // stopped early: summarise what ran
		rep.Finished = time.Now()
		rep.Duration = rep.Finished.Sub(rep.Started)
		rep.Machine.LoadEnd = loadavg()
		summarize(rep)
	}
	if runErr != nil {
		rep.Notes = append(rep.Notes, "incomplete: "+runErr.Error())
	}
	files, err := rep.write(dir)
	if err != nil {
		fmt.Fprintf(stderr, "cairn bench: %v\n", err)
		return 1
	}
	rep.WriteMarkdown(stdout)
	fmt.Fprintf(stdout, "\nwrote %s\n", strings.Join(files, ", "))
	if runErr != nil {
		fmt.Fprintf(stderr, "cairn bench: %v\n", runErr)
		return 1
	}
	return 0
}

// write puts results.md, results.json and the charts into dir.
func (rep *Report) write(dir string) ([]string, error) {
	var files []string
	for _, f := range []struct {
		name  string
		write func(io.Writer) error
	}{{"results.md", rep.WriteMarkdown}, {"results.json", rep.WriteJSON}} {
		path := filepath.Join(dir, f.name)
		fh, err := os.Create(path)
		if err != nil {
			return files, err
		}
		err = f.write(fh)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return files, fmt.Errorf("%s: %w", path, err)
		}
		files = append(files, path)
	}
	charts, err := rep.WriteCharts(dir)
	return append(files, charts...), err
}

// outDir makes the results directory: the one asked for, a temporary one
// for smoke runs, else resultsRoot/<date>-<host>[-N].
func outDir(out string, smoke bool) (string, error) {
	switch {
	case out != "":
		return out, os.MkdirAll(out, 0o755)
	case smoke:
		return os.MkdirTemp("", "cairn-bench-smoke-")
	}
	host, _ := os.Hostname()
	if i := strings.IndexByte(host, '.'); i > 0 {
		host = host[:i]
	}
	base := filepath.Join(resultsRoot, time.Now().Format("2006-01-02")+"-"+host)
	for n := 1; n < 100; n++ {
		dir := base
		if n > 1 {
			dir = fmt.Sprintf("%s-%d", base, n)
		}
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return "", err
		}
		if err := os.Mkdir(dir, 0o755); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("results: %s-* all taken", base)
}

func printList(w io.Writer, all []Scenario) {
	fmt.Fprintln(w, "systems:")
	for _, s := range all {
		var tags []string
		if s.Subject {
			tags = append(tags, "subject")
		}
		if s.Optional {
			tags = append(tags, "optional")
		}
		switch {
		case s.Latency != 0 && s.LatencyPerRPC:
			tags = append(tags, "latency "+s.Latency.String()+" per node RPC")
		case s.Latency != 0:
			tags = append(tags, "latency "+s.Latency.String())
		}
		if s.Workloads != nil {
			tags = append(tags, "only "+strings.Join(s.Workloads, ","))
		}
		fmt.Fprintf(w, "  %-20s %-6s %s\n", s.Name, s.frontEnd(), strings.Join(tags, ", "))
	}
	fmt.Fprintln(w, "workloads:")
	for _, wl := range Workloads() {
		fmt.Fprintf(w, "  %-20s %-9s bs=%-7d qd=%-3d conns=%d  (%s)\n", wl.Name, wl.RW, wl.BlockBytes, wl.QueueDepth, wl.Connections(), wl.Metric)
	}
}

// optDuration is a duration flag that knows whether it was given.
type optDuration struct {
	d   time.Duration
	set bool
}

func (o *optDuration) String() string {
	if o == nil || !o.set {
		return ""
	}
	return o.d.String()
}

func (o *optDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if d < 0 {
		return fmt.Errorf("negative duration %s", s)
	}
	o.d, o.set = d, true
	return nil
}
