package bench

import (
	"sort"
	"time"
)

// Cell summarises one (system, workload) pair over its repetitions.
type Cell struct {
	System   string `json:"system"`
	Workload string `json:"workload"`
	Metric   string `json:"metric"`
	// N is the number of successful runs; Busy how many were flagged.
	N    int `json:"n"`
	Busy int `json:"busy"`
	// Median, Min and Max are of the headline metric.
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// Latencies (ns) of the workload's reported side, medians over runs.
	LatMeanNs float64 `json:"lat_mean_ns"`
	P50Ns     float64 `json:"p50_ns"`
	P99Ns     float64 `json:"p99_ns"`
	P999Ns    float64 `json:"p99_9_ns"`
	// CDF is the median latency at each percentile fio reported.
	CDF          []Percentile `json:"cdf"`
	DriverCPUPct float64      `json:"driver_cpu_pct"`
	// Driver generated the load; MeanOnly marks latencies that are a mean
	// by Little's law with no distribution.
	Driver   string `json:"driver"`
	MeanOnly bool   `json:"mean_only,omitempty"`
}

// Pipelining is one injected-latency cell against its limit: with
// InFlight requests in flight and LatencyNs per storage operation (or per
// node RPC, whose round trip it lengthens by as much), at most
// InFlight/latency requests complete per second.
type Pipelining struct {
	System    string        `json:"system"`
	Workload  string        `json:"workload"`
	LatencyNs time.Duration `json:"latency_ns"`
	InFlight  int           `json:"in_flight"`
	LimitIOPS float64       `json:"limit_iops"`
	IOPS      float64       `json:"iops"`
	// Fraction is IOPS/LimitIOPS.
	Fraction float64 `json:"fraction"`
}

// Ratio compares a subject with a peer on one workload; above 1 the
// subject is faster (more IOPS or MiB/s).
type Ratio struct {
	Subject  string  `json:"subject"`
	Peer     string  `json:"peer"`
	Workload string  `json:"workload"`
	Median   float64 `json:"median"` // median(subject) / median(peer)
	// Low and High bound the ratio over the spreads:
	// min(subject)/max(peer) and max(subject)/min(peer).
	Low  float64 `json:"low"`
	High float64 `json:"high"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func minMax(xs []float64) (lo, hi float64) {
	for i, x := range xs {
		if i == 0 || x < lo {
			lo = x
		}
		if i == 0 || x > hi {
			hi = x
		}
	}
	return lo, hi
}

// summarize fills rep.Cells and rep.Ratios from rep.Runs.
func summarize(rep *Report) {
	rep.Cells, rep.Ratios = nil, nil
	for _, s := range rep.Systems {
		if s.Skipped != "" {
			continue
		}
		for _, w := range rep.Work {
			var vals, mean, p50, p99, p999, cpu []float64
			cdf := map[float64][]float64{}
			c := Cell{System: s.Name, Workload: w.Name, Metric: w.Metric.String()}
			for _, r := range rep.Runs {
				if r.System != s.Name || r.Workload != w.Name || r.Result == nil {
					continue
				}
				c.N++
				c.Driver = r.Driver
				if r.Host.Busy {
					c.Busy++
				}
				vals = append(vals, r.Result.Value(w.Metric))
				cpu = append(cpu, r.Result.DriverCPUPct)
				if side := r.Result.latencySide(); side != nil {
					c.MeanOnly = c.MeanOnly || side.MeanOnly
					mean = append(mean, side.LatMeanNs)
					p50, p99, p999 = append(p50, side.At(50)), append(p99, side.At(99)), append(p999, side.At(99.9))
					for _, q := range side.Percentiles {
						cdf[q.P] = append(cdf[q.P], q.Ns)
					}
				}
			}
			if c.N == 0 {
				continue
			}
			c.Median = median(vals)
			c.Min, c.Max = minMax(vals)
			c.LatMeanNs, c.P50Ns, c.P99Ns, c.P999Ns = median(mean), median(p50), median(p99), median(p999)
			c.DriverCPUPct = median(cpu)
			for p, ns := range cdf {
				c.CDF = append(c.CDF, Percentile{P: p, Ns: median(ns)})
			}
			sort.Slice(c.CDF, func(a, b int) bool { return c.CDF[a].P < c.CDF[b].P })
			rep.Cells = append(rep.Cells, c)
		}
	}
	summarizeSnapshots(rep)
	rep.FrontEnds, rep.Pipelining = nil, nil
	subjects, _ := rep.roles()
	for _, sub := range subjects {
		for _, peer := range rep.peersOf(sub) {
			rep.Ratios = append(rep.Ratios, rep.ratios(sub, peer, true)...)
		}
	}
	// What the front end costs: cairn over it against cairn in process.
	for _, sub := range subjects {
		s := rep.system(sub)
		if s.FrontEnd == InProc {
			continue
		}
		for _, in := range subjects {
			if i := rep.system(in); i.FrontEnd == InProc && sameLatency(i, s) {
				rep.FrontEnds = append(rep.FrontEnds, rep.ratios(sub, in, false)...)
			}
		}
	}
	for _, s := range rep.Systems {
		if s.LatencyNs <= 0 || s.Skipped != "" {
			continue
		}
		for _, w := range rep.Work {
			c := rep.cell(s.Name, w.Name)
			if c == nil || w.Metric != IOPS {
				continue
			}
			inFlight := w.QueueDepth * w.Connections()
			limit := float64(inFlight) / s.LatencyNs.Seconds()
			rep.Pipelining = append(rep.Pipelining, Pipelining{System: s.Name, Workload: w.Name, LatencyNs: s.LatencyNs,
				InFlight: inFlight, LimitIOPS: limit, IOPS: c.Median, Fraction: c.Median / limit})
		}
	}
}

// comparable reports whether a ratio of a and b means something: the same
// front end (and so the same drivers) at the same injected latency.
func comparable(a, b SystemInfo) bool {
	return a.FrontEnd == b.FrontEnd && sameLatency(a, b)
}

// sameLatency: the same latency injected at the same place.
func sameLatency(a, b SystemInfo) bool {
	return a.LatencyNs == b.LatencyNs && (a.LatencyNs == 0 || a.LatencyPerRPC == b.LatencyPerRPC)
}

// peersOf returns what subject sub is compared with, in order: the peers
// that ran on its front end at its injected latency, then the systems it
// names in Versus that ran at its latency (see Scenario.Versus: they may
// be on another front end, hence the ratios of one driver only).
func (rep *Report) peersOf(sub string) []string {
	s := rep.system(sub)
	_, peers := rep.roles()
	var out []string
	for _, p := range peers {
		if comparable(s, rep.system(p)) {
			out = append(out, p)
		}
	}
	for _, v := range s.Versus {
		if vs := rep.system(v); vs.Name != "" && vs.Skipped == "" && sameLatency(vs, s) && v != sub && !contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// ratios returns a/b for every workload both have numbers for (with
// sameDriver, numbers from one driver).
func (rep *Report) ratios(a, b string, sameDriver bool) []Ratio {
	var out []Ratio
	for _, w := range rep.Work {
		x, y := rep.cell(a, w.Name), rep.cell(b, w.Name)
		if x == nil || y == nil || y.Median == 0 || y.Min == 0 || y.Max == 0 || (sameDriver && x.Driver != y.Driver) {
			continue
		}
		out = append(out, Ratio{Subject: a, Peer: b, Workload: w.Name,
			Median: x.Median / y.Median, Low: x.Min / y.Max, High: x.Max / y.Min})
	}
	return out
}

// system returns the named system's description (zero if unknown).
func (rep *Report) system(name string) SystemInfo {
	for _, s := range rep.Systems {
		if s.Name == name {
			return s
		}
	}
	return SystemInfo{}
}

// roles returns the systems that ran, split into subjects and peers. With
// no subject the first system that ran is the subject.
func (rep *Report) roles() (subjects, peers []string) {
	var ran []SystemInfo
	for _, s := range rep.Systems {
		if s.Skipped == "" {
			ran = append(ran, s)
		}
	}
	for _, s := range ran {
		if s.Subject {
			subjects = append(subjects, s.Name)
		} else {
			peers = append(peers, s.Name)
		}
	}
	if len(subjects) == 0 && len(ran) > 0 {
		subjects, peers = []string{ran[0].Name}, peers[1:]
	}
	return subjects, peers
}

// cell returns the summary of a pair, or nil.
func (rep *Report) cell(system, workload string) *Cell {
	for i := range rep.Cells {
		if rep.Cells[i].System == system && rep.Cells[i].Workload == workload {
			return &rep.Cells[i]
		}
	}
	return nil
}
