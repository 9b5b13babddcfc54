package bench

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// SnapshotCell summarises the snapshot activity of one (system, workload)
// pair over its repetitions, or of all its workloads together (Workload
// "all").
type SnapshotCell struct {
	System   string `json:"system"`
	Workload string `json:"workload"`
	Runs     int    `json:"runs"`
	// Taken, Sealed, Failed, Late and FailedBy are summed over the runs.
	Taken    int            `json:"taken"`
	Sealed   int            `json:"sealed"`
	Failed   int            `json:"failed"`
	Late     int            `json:"late"`
	FailedBy map[string]int `json:"failed_by,omitempty"`
	// CreateP50Ns and CreateP99Ns are of every create's time.
	CreateP50Ns int64 `json:"create_p50_ns"`
	CreateP99Ns int64 `json:"create_p99_ns"`
	// Phases are the p50 and p99 of each protocol step of the sealed
	// creates, as their coordinators measured them.
	Phases PhaseStats `json:"phases"`
	// WriteP99Ns is the median over the runs of the write side's p99
	// (fio's total latency); 0 if the workload does not write or the
	// driver measured no distribution.
	WriteP99Ns float64 `json:"write_p99_ns"`
	// Versus sets it against the system's Versus scenarios, the same
	// system without the snapshots, measured in the same run.
	Versus []WriteP99Ratio `json:"versus,omitempty"`
	// Targets are the held windows per target, pooled over the runs.
	Targets []TargetWindows `json:"targets"`
}

// PhaseStats are p50 and p99 of each protocol step, ns.
type PhaseStats struct {
	ReserveP50Ns int64 `json:"reserve_p50_ns"`
	ReserveP99Ns int64 `json:"reserve_p99_ns"`
	HoldP50Ns    int64 `json:"hold_p50_ns"`
	HoldP99Ns    int64 `json:"hold_p99_ns"`
	ReleaseP50Ns int64 `json:"release_p50_ns"`
	ReleaseP99Ns int64 `json:"release_p99_ns"`
	SealP50Ns    int64 `json:"seal_p50_ns"`
	SealP99Ns    int64 `json:"seal_p99_ns"`
}

func phaseStats(p SnapshotPhases) PhaseStats {
	var s PhaseStats
	q := func(ns []int64, p50, p99 *int64) {
		if a, b, _, ok := windowStats(ns); ok {
			*p50, *p99 = int64(a), int64(b)
		}
	}
	q(p.ReserveNs, &s.ReserveP50Ns, &s.ReserveP99Ns)
	q(p.HoldNs, &s.HoldP50Ns, &s.HoldP99Ns)
	q(p.ReleaseNs, &s.ReleaseP50Ns, &s.ReleaseP99Ns)
	q(p.SealNs, &s.SealP50Ns, &s.SealP99Ns)
	return s
}

// WriteP99Ratio is write p99 with snapshots over write p99 without: above
// 1 the snapshots cost latency.
type WriteP99Ratio struct {
	Peer       string  `json:"peer"`
	WriteP99Ns float64 `json:"write_p99_ns"`
	Ratio      float64 `json:"ratio"`
}

// TargetWindows are one target's held windows: exact order statistics of
// the windows the create replies reported, and bucket upper bounds from
// its cairn_snapshot_hold_seconds histogram (which also counts holds of
// failed snapshots and holds ended at their own deadline).
type TargetWindows struct {
	Target string `json:"target"`
	Holds  int    `json:"holds"`
	P50Ns  int64  `json:"p50_ns"`
	P99Ns  int64  `json:"p99_ns"`
	MaxNs  int64  `json:"max_ns"`
	// HeldMax is the most acknowledgements held at once in one hold.
	HeldMax int64 `json:"held_max"`
	// MetricHolds and the MetricP* bounds are from the histogram; a bound
	// is 0 when the quantile fell in no finite bucket.
	MetricHolds   int64            `json:"metric_holds"`
	MetricP50Ns   int64            `json:"metric_p50_le_ns"`
	MetricP99Ns   int64            `json:"metric_p99_le_ns"`
	MetricMaxNs   int64            `json:"metric_max_le_ns"`
	MetricMeanNs  int64            `json:"metric_mean_ns"`
	MetricEndedBy map[string]int64 `json:"metric_ended_by,omitempty"`
}

// summarizeSnapshots fills rep.Snapshots from the runs' snapshot records.
func summarizeSnapshots(rep *Report) {
	rep.Snapshots = nil
	for _, s := range rep.Systems {
		if s.Skipped != "" {
			continue
		}
		var all []RunRecord
		for _, w := range rep.Work {
			var runs []RunRecord
			for _, r := range rep.Runs {
				if r.System == s.Name && r.Workload == w.Name && r.Result != nil && r.During != nil && r.During.Snapshots != nil {
					runs = append(runs, r)
				}
			}
			if len(runs) == 0 {
				continue
			}
			all = append(all, runs...)
			c := snapshotCell(s.Name, w.Name, runs)
			if c.WriteP99Ns > 0 {
				for _, v := range s.Versus {
					if p := rep.writeP99(v, w.Name); p > 0 {
						c.Versus = append(c.Versus, WriteP99Ratio{Peer: v, WriteP99Ns: p, Ratio: c.WriteP99Ns / p})
					}
				}
			}
			rep.Snapshots = append(rep.Snapshots, c)
		}
		if len(all) > 0 {
			c := snapshotCell(s.Name, "all", all)
			c.WriteP99Ns = 0 // a median across workloads means nothing
			rep.Snapshots = append(rep.Snapshots, c)
		}
	}
}

// writeP99 is the median write p99 of a system's successful runs of a
// workload; 0 for none.
func (rep *Report) writeP99(system, workload string) float64 {
	var p99 []float64
	for _, r := range rep.Runs {
		if r.System == system && r.Workload == workload && r.Result != nil {
			if p := writeP99(r.Result); p > 0 {
				p99 = append(p99, p)
			}
		}
	}
	return median(p99)
}

func writeP99(m *Measurement) float64 {
	if m.Write == nil || m.Write.IOs == 0 {
		return 0
	}
	return m.Write.At(99)
}

func snapshotCell(system, workload string, runs []RunRecord) SnapshotCell {
	c := SnapshotCell{System: system, Workload: workload, Runs: len(runs)}
	var p99 []float64
	windows := map[string][]int64{}
	hist := map[string]HoldHistogram{}
	heldMax := map[string]int64{}
	ended := map[string]map[string]int64{}
	var order []string
	var creates []int64
	var phases SnapshotPhases
	for _, r := range runs {
		sr := r.During.Snapshots
		creates = append(creates, sr.CreatesNs...)
		phases.add(sr.Phases)
		c.Taken += sr.Taken
		c.Sealed += sr.Sealed
		c.Failed += sr.Failed
		c.Late += sr.Late
		for why, n := range sr.FailedBy {
			if c.FailedBy == nil {
				c.FailedBy = map[string]int{}
			}
			c.FailedBy[why] += n
		}
		if p := writeP99(r.Result); p > 0 {
			p99 = append(p99, p)
		}
		for _, t := range sr.Targets {
			if _, ok := hist[t.Target]; !ok {
				order = append(order, t.Target)
				ended[t.Target] = map[string]int64{}
			}
			windows[t.Target] = append(windows[t.Target], t.WindowsNs...)
			heldMax[t.Target] = max(heldMax[t.Target], t.HeldMax)
			hist[t.Target] = hist[t.Target].add(t.Metric)
			for how, n := range t.EndedBy {
				ended[t.Target][how] += n
			}
		}
	}
	c.WriteP99Ns = median(p99)
	if p50, p99, _, ok := windowStats(creates); ok {
		c.CreateP50Ns, c.CreateP99Ns = int64(p50), int64(p99)
	}
	c.Phases = phaseStats(phases)
	sort.Strings(order)
	for _, t := range order {
		tw := TargetWindows{Target: t, Holds: len(windows[t]), HeldMax: heldMax[t]}
		if p50, p99, mx, ok := windowStats(windows[t]); ok {
			tw.P50Ns, tw.P99Ns, tw.MaxNs = int64(p50), int64(p99), int64(mx)
		}
		h := hist[t]
		tw.MetricHolds = h.Count
		if h.Count > 0 {
			tw.MetricMeanNs = int64(h.SumSeconds / float64(h.Count) * float64(time.Second))
		}
		q := func(p float64) int64 { d, _ := h.Quantile(p); return int64(d) }
		tw.MetricP50Ns, tw.MetricP99Ns, tw.MetricMaxNs = q(0.50), q(0.99), q(1)
		if len(ended[t]) > 0 {
			tw.MetricEndedBy = ended[t]
		}
		c.Targets = append(c.Targets, tw)
	}
	return c
}

// writeSnapshots writes the snapshot section.
func (rep *Report) writeSnapshots(b *strings.Builder) {
	b.WriteString("\n## Snapshots during the runs\n\n")
	b.WriteString("A snapshot of the measured volume's group every 100 ms beside every measured run (the last 8 kept, older ones deleted as it goes). Write p99 is fio's total write latency, the median over the repetitions; the ratio sets it against the same system without snapshots (its Versus), measured in the same run: goal ≤ 1.20×.\n\n")
	b.WriteString("Late ticks passed while the create before was still running (create p50/p99: each create's time through the admin API).\n\n")
	b.WriteString("| system | workload | runs | taken | sealed | failed | late ticks | create p50/p99 ms | write p99 µs | vs | its write p99 µs | ratio |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n")
	for _, c := range rep.Snapshots {
		failed := fmt.Sprint(c.Failed)
		if len(c.FailedBy) > 0 {
			failed += " " + fmtCounts(c.FailedBy)
		}
		row := fmt.Sprintf("| %s | %s | %d | %d | %d | %s | %d | %.1f/%.1f | %s |", c.System, c.Workload, c.Runs, c.Taken, c.Sealed, failed, c.Late,
			float64(c.CreateP50Ns)/1e6, float64(c.CreateP99Ns)/1e6, us(c.WriteP99Ns))
		if len(c.Versus) == 0 {
			b.WriteString(row + " — | — | — |\n")
		}
		for _, v := range c.Versus {
			fmt.Fprintf(b, "%s %s | %s | %.2f× |\n", row, v.Peer, us(v.WriteP99Ns), v.Ratio)
		}
	}
	b.WriteString("\nWhere a create's time goes: p50/p99 in ms of each protocol step of the sealed creates as their coordinator measured it (reserve: the catalog commit of the epoch and the pending record; hold: until every target switched; release: until every target let go; seal: the drain and the catalog commit of the seal). The rest of the create time is the admin API and the coordinator's setup.\n\n")
	b.WriteString("| system | workload | reserve | hold | release | seal |\n|---|---|---:|---:|---:|---:|\n")
	for _, c := range rep.Snapshots {
		p := c.Phases
		ms := func(a, b int64) string { return fmt.Sprintf("%.1f/%.1f", float64(a)/1e6, float64(b)/1e6) }
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", c.System, c.Workload, ms(p.ReserveP50Ns, p.ReserveP99Ns),
			ms(p.HoldP50Ns, p.HoldP99Ns), ms(p.ReleaseP50Ns, p.ReleaseP99Ns), ms(p.SealP50Ns, p.SealP99Ns))
	}
	b.WriteString("\nHeld-acknowledgement window per target (goal p99 ≤ 1 ms with 4 targets on loopback), pooled over the runs. *Exact*: order statistics (nearest rank) of every hold of the sealed snapshots as the target reported it at release (the create replies). Most held: the most acknowledgements one hold kept waiting. *Metric*: the change of the target's `cairn_snapshot_hold_seconds` over each run — it also counts holds of failed snapshots and holds that ended at their own deadline — where a quantile is the upper bound of its bucket (≤; buckets 100 µs apart up to 1 ms); ended by is `cairn_snapshot_holds_total`.\n\n")
	b.WriteString("| system | workload | target | holds | p50 µs | p99 µs | max µs | most held | metric holds | p50 ≤ µs | p99 ≤ µs | max ≤ µs | mean µs | ended by |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, c := range rep.Snapshots {
		for _, t := range c.Targets {
			fmt.Fprintf(b, "| %s | %s | %s | %d | %s | %s | %s | %d | %d | %s | %s | %s | %s | %s |\n", c.System, c.Workload, t.Target, t.Holds,
				us(float64(t.P50Ns)), us(float64(t.P99Ns)), us(float64(t.MaxNs)), t.HeldMax, t.MetricHolds,
				us(float64(t.MetricP50Ns)), us(float64(t.MetricP99Ns)), us(float64(t.MetricMaxNs)), us(float64(t.MetricMeanNs)), fmtCounts(t.MetricEndedBy))
		}
	}
}

// fmtCounts formats counts by key, sorted: "(deadline 2, released 40)".
func fmtCounts[N int | int64](m map[string]N) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
