package bench

import (
	"sort"
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
				if r.Host.Busy {
					c.Busy++
				}
				vals = append(vals, r.Result.Value(w.Metric))
				cpu = append(cpu, r.Result.DriverCPUPct)
				if side := r.Result.latencySide(); side != nil {
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
	subjects, peers := rep.roles()
	for _, sub := range subjects {
		for _, peer := range peers {
			for _, w := range rep.Work {
				a, b := rep.cell(sub, w.Name), rep.cell(peer, w.Name)
				if a == nil || b == nil || b.Median == 0 || b.Min == 0 || b.Max == 0 {
					continue
				}
				rep.Ratios = append(rep.Ratios, Ratio{Subject: sub, Peer: peer, Workload: w.Name,
					Median: a.Median / b.Median, Low: a.Min / b.Max, High: a.Max / b.Min})
			}
		}
	}
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
