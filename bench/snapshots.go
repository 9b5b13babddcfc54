package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"cairn/cluster/admin"
)

// The snapshot activity: a Scenario's During that takes a snapshot of the
// measured volume's group at a fixed cadence beside every measured run
// (and, on a multi-target system, keeps light writers on the group's
// other volumes), so that the report can set the write latency it costs
// against the same system without it, measured in the same run, and give
// the held-acknowledgement window each target saw.
//
// Held windows come from two places, both recorded per run and target:
//   - exactly, from every sealed snapshot's create reply, which carries
//     each volume's hold as its target reported it at release (the
//     volume gate's HoldResult.Window, on the node RPC's ReleaseReply for
//     a remote target): p50/p99/max are order statistics of those;
//   - from the target's own cairn_snapshot_hold_seconds histogram, the
//     difference of its buckets over the run: this also counts holds of
//     failed snapshots and holds that ended at their own deadline, but a
//     quantile from buckets is only the upper bound of the bucket it
//     falls in (100 µs wide up to 1 ms).

const (
	// snapshotCallTimeout bounds one create or delete through the admin
	// API: the protocol's steps end at 2 s each.
	snapshotCallTimeout = 30 * time.Second
	// snapshotsKept is how many of its snapshots the activity keeps: older
	// ones are deleted as it goes, as a user rotating snapshots would, so
	// retained epochs do not pile up over a long run.
	snapshotsKept = 8
	// snapshotsPerRunMax bounds the snapshots one run records.
	snapshotsPerRunMax = 1 << 16
	// lightWriterIOPS is the rate of each light writer.
	lightWriterIOPS = 200
)

// DuringReport is what a scenario's During activity did beside one run.
type DuringReport struct {
	// Writers is the number of light writers that ran beside the driver.
	Writers   int          `json:"writers,omitempty"`
	Snapshots *SnapshotRun `json:"snapshots,omitempty"`
}

// SnapshotRun is what the snapshot activity did beside one run.
type SnapshotRun struct {
	Group   string        `json:"group"`
	EveryNs time.Duration `json:"every_ns"`
	// Taken counts the creates issued; each was Sealed or Failed.
	Taken    int            `json:"taken"`
	Sealed   int            `json:"sealed"`
	Failed   int            `json:"failed"`
	FailedBy map[string]int `json:"failed_by,omitempty"`
	// Late counts the cadence's ticks that passed with no create issued
	// because the one before was still running.
	Late int `json:"late"`
	// CreatesNs are how long each create took, through the admin API.
	CreatesNs []int64 `json:"creates_ns"`
	// Phases are the protocol's step durations of each sealed create, as
	// its coordinator measured them (the create reply).
	Phases  SnapshotPhases `json:"phases"`
	Deleted int            `json:"deleted"`
	// Targets are the nodes whose targets serve the group's volumes.
	Targets []TargetHolds `json:"targets"`
}

// SnapshotPhases are per-snapshot step durations, one entry a sealed
// snapshot in each: reserve (the catalog commit of the epoch and the
// pending record), hold (every target switched), release (every target
// let go), seal (drain and the catalog commit of the seal).
type SnapshotPhases struct {
	ReserveNs []int64 `json:"reserve_ns,omitempty"`
	HoldNs    []int64 `json:"hold_ns,omitempty"`
	ReleaseNs []int64 `json:"release_ns,omitempty"`
	SealNs    []int64 `json:"seal_ns,omitempty"`
}

func (p *SnapshotPhases) add(o SnapshotPhases) {
	p.ReserveNs = append(p.ReserveNs, o.ReserveNs...)
	p.HoldNs = append(p.HoldNs, o.HoldNs...)
	p.ReleaseNs = append(p.ReleaseNs, o.ReleaseNs...)
	p.SealNs = append(p.SealNs, o.SealNs...)
}

// TargetHolds are one target's held windows in one run.
type TargetHolds struct {
	Target string `json:"target"`
	// WindowsNs are the exact windows of its volumes' holds in the sealed
	// snapshots (the create replies).
	WindowsNs []int64 `json:"windows_ns"`
	// HeldMax is the most acknowledgements its volumes held at once in
	// any of those holds (0: no write was in flight at any cut).
	HeldMax int64 `json:"held_max"`
	// Metric is the change of its cairn_snapshot_hold_seconds over the run.
	Metric HoldHistogram `json:"metric"`
	// EndedBy is the change of cairn_snapshot_holds_total by how the
	// holds ended (released, deadline, bound, closed).
	EndedBy map[string]int64 `json:"ended_by,omitempty"`
}

// HoldHistogram is a cairn_snapshot_hold_seconds histogram, or the
// difference of two.
type HoldHistogram struct {
	Count      int64        `json:"count"`
	SumSeconds float64      `json:"sum_seconds"`
	Buckets    []HoldBucket `json:"buckets,omitempty"` // ascending, cumulative, finite (+Inf is Count)
}

// HoldBucket is one cumulative bucket.
type HoldBucket struct {
	LeSeconds float64 `json:"le_seconds"`
	Count     int64   `json:"count"`
}

// sub returns h minus an earlier sample of the same histogram.
func (h HoldHistogram) sub(old HoldHistogram) (HoldHistogram, error) {
	d := HoldHistogram{Count: h.Count - old.Count, SumSeconds: h.SumSeconds - old.SumSeconds}
	if len(old.Buckets) != 0 && len(old.Buckets) != len(h.Buckets) {
		return HoldHistogram{}, fmt.Errorf("hold histogram changed buckets (%d, then %d)", len(old.Buckets), len(h.Buckets))
	}
	for i, b := range h.Buckets {
		if len(old.Buckets) != 0 {
			if old.Buckets[i].LeSeconds != b.LeSeconds {
				return HoldHistogram{}, fmt.Errorf("hold histogram bucket %d changed bound", i)
			}
			b.Count -= old.Buckets[i].Count
		}
		d.Buckets = append(d.Buckets, b)
	}
	if d.Count < 0 {
		return HoldHistogram{}, fmt.Errorf("hold histogram went back (count %d)", d.Count)
	}
	return d, nil
}

// add returns the sum of two histograms of the same buckets (h may be
// empty).
func (h HoldHistogram) add(o HoldHistogram) HoldHistogram {
	if len(h.Buckets) == 0 {
		h.Buckets = append([]HoldBucket(nil), o.Buckets...)
		h.Count, h.SumSeconds = o.Count, o.SumSeconds
		return h
	}
	h.Count += o.Count
	h.SumSeconds += o.SumSeconds
	for i := range h.Buckets {
		if i < len(o.Buckets) && o.Buckets[i].LeSeconds == h.Buckets[i].LeSeconds {
			h.Buckets[i].Count += o.Buckets[i].Count
		}
	}
	return h
}

// Quantile returns the upper bound of the bucket in which quantile q
// (0 < q ≤ 1) of the observations falls, and false if there are none (or
// it falls past the last finite bound).
func (h HoldHistogram) Quantile(q float64) (time.Duration, bool) {
	if h.Count <= 0 {
		return 0, false
	}
	rank := int64(math.Ceil(q * float64(h.Count)))
	for _, b := range h.Buckets {
		if b.Count >= rank {
			return time.Duration(b.LeSeconds * float64(time.Second)), true
		}
	}
	return 0, false
}

// holdMetrics is a target's hold histogram and holds by ending, parsed
// from its /metrics.
type holdMetrics struct {
	hist  HoldHistogram
	ended map[string]int64
}

// parseHoldMetrics reads cairn_snapshot_hold_seconds and
// cairn_snapshot_holds_total out of Prometheus text exposition.
func parseHoldMetrics(text []byte) (holdMetrics, error) {
	m := holdMetrics{ended: map[string]int64{}}
	const hist = "cairn_snapshot_hold_seconds"
	sawCount := false
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		series, val := line[:i], line[i+1:]
		f, err := strconv.ParseFloat(val, 64)
		if err != nil || math.IsNaN(f) || f < 0 {
			if strings.HasPrefix(series, hist) || strings.HasPrefix(series, "cairn_snapshot_holds_total") {
				return holdMetrics{}, fmt.Errorf("metric %s: value %q", series, val)
			}
			continue
		}
		switch {
		case series == hist+"_count":
			m.hist.Count, sawCount = int64(f), true
		case series == hist+"_sum":
			m.hist.SumSeconds = f
		case strings.HasPrefix(series, hist+`_bucket{le="`):
			le := strings.TrimSuffix(strings.TrimPrefix(series, hist+`_bucket{le="`), `"}`)
			b, err := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
			if err != nil {
				return holdMetrics{}, fmt.Errorf("metric %s: bound %q", series, le)
			}
			if math.IsInf(b, 1) {
				continue // the count, and not representable in JSON
			}
			m.hist.Buckets = append(m.hist.Buckets, HoldBucket{LeSeconds: b, Count: int64(f)})
		case strings.HasPrefix(series, `cairn_snapshot_holds_total{ended="`):
			how := strings.TrimSuffix(strings.TrimPrefix(series, `cairn_snapshot_holds_total{ended="`), `"}`)
			m.ended[how] = int64(f)
		}
	}
	if err := sc.Err(); err != nil {
		return holdMetrics{}, fmt.Errorf("metrics: %w", err)
	}
	if !sawCount || len(m.hist.Buckets) == 0 {
		return holdMetrics{}, fmt.Errorf("metrics: no %s histogram", hist)
	}
	sort.Slice(m.hist.Buckets, func(i, j int) bool { return m.hist.Buckets[i].LeSeconds < m.hist.Buckets[j].LeSeconds })
	return m, nil
}

func scrapeHolds(ctx context.Context, adminAddr string) (holdMetrics, error) {
	return scrape(ctx, adminAddr, parseHoldMetrics)
}

// snapshotSystem is a running system the snapshot activity can drive:
// cairnd, one node or a cluster.
type snapshotSystem interface {
	snapshotSetup() snapshotSetup
}

// snapshotSetup is where the snapshot activity finds what it needs.
type snapshotSetup struct {
	admin     string // the coordinator's admin listener (the first node)
	tokenFile string // its admin token
	group     string // the measured volume's group (the volume itself if in none)
	// targets are the nodes serving the group's volumes: name and admin
	// listener (for their metrics).
	targets []nodeAdmin
	// others are the group's volumes besides the measured one, over NBD.
	others []Target
}

type nodeAdmin struct{ name, admin string }

// snapshotLoad is a During activity on a cairnd system: light writers on
// the group's other volumes (writers) and a snapshot of the group every
// every (0: none).
type snapshotLoad struct {
	every   time.Duration
	writers bool
}

func (l snapshotLoad) run(ctx context.Context, inst Instance, dir string) (*DuringReport, error) {
	ss, ok := inst.(snapshotSystem)
	if !ok {
		return nil, fmt.Errorf("%w: snapshots during the run need cairnd", ErrUsage)
	}
	setup := ss.snapshotSetup()
	rep := &DuringReport{}
	var errs []error
	if l.writers {
		stop, n, err := startLightWriters(ctx, setup.others, dir)
		if err != nil {
			return nil, err
		}
		rep.Writers = n
		defer func() {
			if err := stop(); err != nil {
				errs = append(errs, err)
			}
		}()
	}
	if l.every <= 0 {
		<-ctx.Done()
		return rep, nil
	}
	run, err := takeSnapshots(ctx, setup, l.every)
	rep.Snapshots = run
	if err != nil {
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

// startLightWriters starts one rate-limited fio writer (4 KiB random
// writes at queue depth 1, lightWriterIOPS) on each target, and returns
// what stops them: an error if one exited before it was stopped. The
// caller must call it (also when ctx ends).
func startLightWriters(ctx context.Context, ts []Target, dir string) (func() error, int, error) {
	var ps []*proc
	stop := func() error {
		var errs []error
		for _, p := range ps {
			select {
			case <-p.exited:
				errs = append(errs, fmt.Errorf("light writer %s exited during the run: %v: %s", p.name, p.waitErr, p.logTail()))
			default:
			}
			_ = p.stop()
		}
		return errors.Join(errs...)
	}
	for i, t := range ts {
		if t.FrontEnd != NBD {
			_ = stop()
			return nil, 0, fmt.Errorf("%w: light writers over %s", ErrUnavailable, t.FrontEnd)
		}
		// Not ended by ctx: only stop ends them, so that one that exits
		// before is seen as the failure it is.
		p, err := startProc(context.WithoutCancel(ctx), dir, fmt.Sprintf("light-writer-%d", i+1), nil, FIO{}.bin(),
			"--name=light", "--ioengine=nbd", "--uri="+t.URI, "--rw=randwrite", "--bs=4096", "--iodepth=1",
			"--rate_iops="+strconv.Itoa(lightWriterIOPS), "--norandommap", "--randrepeat=0",
			"--size="+strconv.FormatInt(t.SizeBytes, 10), "--time_based", "--runtime=24h")
		if err != nil {
			_ = stop()
			return nil, 0, fmt.Errorf("light writer on %s: %w", t.URI, err)
		}
		ps = append(ps, p)
	}
	return stop, len(ps), nil
}

// takeSnapshots snapshots the group every every until ctx ends, keeping
// the last snapshotsKept, then deletes the rest, and reports what it did
// and what the targets' metrics saw meanwhile. A snapshot that fails
// counts (by reason); an admin call that errs otherwise ends it with that
// error.
func takeSnapshots(ctx context.Context, s snapshotSetup, every time.Duration) (*SnapshotRun, error) {
	tok, err := admin.ReadToken(s.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	cl := &admin.Client{Addr: s.admin, Token: tok}
	run := &SnapshotRun{Group: s.group, EveryNs: every}
	// Calls go on past the run's end (bounded): a create cut off midway
	// would leave its outcome unknown.
	bg := context.WithoutCancel(ctx)
	before := make([]holdMetrics, len(s.targets))
	for i, t := range s.targets {
		if before[i], err = scrapeHolds(bg, t.admin); err != nil {
			return nil, fmt.Errorf("snapshots: target %s: %w", t.name, err)
		}
	}
	windows := map[string][]int64{}
	heldMax := map[string]int64{}
	var kept []string
	prefix := fmt.Sprintf("bench-%x", time.Now().UnixNano())
	start := time.Now()
	loopErr := func() error {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for run.Taken < snapshotsPerRunMax {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			name := fmt.Sprintf("%s-%d", prefix, run.Taken)
			cctx, cancel := context.WithTimeout(bg, snapshotCallTimeout)
			began := time.Now()
			sn, err := cl.CreateSnapshot(cctx, admin.SnapshotRequest{Group: s.group, Name: name})
			run.CreatesNs = append(run.CreatesNs, int64(time.Since(began)))
			cancel()
			run.Taken++
			switch {
			case err == nil:
				run.Sealed++
				if pr := sn.Protocol; pr != nil {
					ns := func(s float64) int64 { return int64(s * float64(time.Second)) }
					run.Phases.ReserveNs = append(run.Phases.ReserveNs, ns(pr.ReserveSeconds))
					run.Phases.HoldNs = append(run.Phases.HoldNs, ns(pr.HoldSeconds))
					run.Phases.ReleaseNs = append(run.Phases.ReleaseNs, ns(pr.ReleaseSeconds))
					run.Phases.SealNs = append(run.Phases.SealNs, ns(pr.SealSeconds))
				}
				if sn.Protocol != nil {
					for _, h := range sn.Protocol.Holds {
						windows[h.Target] = append(windows[h.Target], int64(h.WindowSeconds*float64(time.Second)))
						heldMax[h.Target] = max(heldMax[h.Target], h.Held)
					}
				}
			case errors.Is(err, admin.ErrConflict):
				run.Failed++
				if run.FailedBy == nil {
					run.FailedBy = map[string]int{}
				}
				run.FailedBy[failReason(bg, cl, name)]++
			default:
				return fmt.Errorf("snapshot %s of %s: %w", name, s.group, err)
			}
			kept = append(kept, name)
			for len(kept) > snapshotsKept {
				if err := deleteSnapshot(bg, cl, kept[0]); err != nil {
					return err
				}
				kept = kept[1:]
				run.Deleted++
			}
		}
		return nil
	}()
	// The ticker drops the ticks a long create covers.
	run.Late = max(int(time.Since(start)/every)-run.Taken, 0)
	var errs []error
	if loopErr != nil {
		errs = append(errs, loopErr)
	}
	for _, name := range kept {
		if err := deleteSnapshot(bg, cl, name); err != nil {
			errs = append(errs, err)
			continue
		}
		run.Deleted++
	}
	for i, t := range s.targets {
		th := TargetHolds{Target: t.name, WindowsNs: windows[t.name], HeldMax: heldMax[t.name]}
		after, err := scrapeHolds(bg, t.admin)
		if err == nil {
			th.Metric, err = after.hist.sub(before[i].hist)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("snapshots: target %s: %w", t.name, err))
		}
		for how, n := range after.ended {
			if d := n - before[i].ended[how]; d != 0 {
				if th.EndedBy == nil {
					th.EndedBy = map[string]int64{}
				}
				th.EndedBy[how] = d
			}
		}
		run.Targets = append(run.Targets, th)
	}
	return run, errors.Join(errs...)
}

// failReason returns the recorded reason of a failed snapshot.
func failReason(ctx context.Context, cl *admin.Client, name string) string {
	ctx, cancel := context.WithTimeout(ctx, snapshotCallTimeout)
	defer cancel()
	ss, err := cl.Snapshots(ctx)
	if err != nil {
		return "unknown"
	}
	for _, sn := range ss {
		if sn.Name == name && sn.Reason != "" {
			return sn.Reason
		}
	}
	return "unknown"
}

// deleteSnapshot deletes a snapshot the activity took, waiting a little
// for the node's catalog replica to have it, or to have ended it.
func deleteSnapshot(ctx context.Context, cl *admin.Client, name string) error {
	deadline := time.Now().Add(snapshotCallTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, snapshotCallTimeout)
		err := cl.DeleteSnapshot(cctx, name)
		cancel()
		if err == nil {
			return nil
		}
		if !(errors.Is(err, admin.ErrNotFound) || errors.Is(err, admin.ErrConflict)) || time.Now().After(deadline) {
			return fmt.Errorf("delete snapshot %s: %w", name, err)
		}
		time.Sleep(2 * probeEvery)
	}
}

// windowStats returns the p50, p99 and max of exact windows (nearest
// rank), and false for none.
func windowStats(ns []int64) (p50, p99, maxNs time.Duration, ok bool) {
	if len(ns) == 0 {
		return 0, 0, 0, false
	}
	s := append([]int64(nil), ns...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(q float64) time.Duration {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return time.Duration(s[max(i, 0)])
	}
	return rank(0.50), rank(0.99), time.Duration(s[len(s)-1]), true
}
