package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteJSON writes the whole report, every run included.
func (rep *Report) WriteJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(rep)
}

// ReadReport decodes a report written by WriteJSON.
func ReadReport(r io.Reader) (*Report, error) {
	var rep Report
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return nil, fmt.Errorf("bench report: %w", err)
	}
	return &rep, nil
}

// WriteMarkdown writes the summary tables.
func (rep *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	ran := rep.ranSystems()
	subjects, _ := rep.roles()
	m := rep.Machine
	fmt.Fprintf(&b, "# cairn bench — %s on %s\n\n", rep.Started.Format("2006-01-02 15:04 MST"), m.Hostname)
	if rep.Settings.Smoke {
		b.WriteString("**Smoke run**: tiny sizes and sub-second runs; the numbers show the harness works, not how fast anything is.\n\n")
	}
	fmt.Fprintf(&b, "- Machine: %s, %d cores, %.1f GiB RAM, Linux %s, %s; load average %s at start, %s at end.\n",
		orDash(m.CPUModel), m.Cores, float64(m.MemBytes)/(1<<30), orDash(m.Kernel), m.GoVersion, fmtLoad(m.Load), fmtLoad(m.LoadEnd))
	fmt.Fprintf(&b, "- Settings: %d repetition(s) of %s (after %s ramp) per workload and system, interleaved across systems; exports of %s filled before measuring; driver %s; took %s.\n",
		rep.Settings.Repeat, rep.Settings.Runtime, rep.Settings.Ramp, fmtBytes(rep.Settings.SizeBytes), rep.Settings.Driver, rep.Duration.Round(time.Second))
	if rep.Settings.Aged {
		fmt.Fprintf(&b, "- **Aged**: after its fill every export took %d× its size of 4 KiB random overwrites (queue depth 32, fixed seed) before anything was measured; see Aging and space.\n", agingOverwrites)
	}
	if d := rep.driverSummary(); d != "" {
		b.WriteString("- Drivers: " + d + ".\n")
	}
	b.WriteString("- Systems:\n")
	for _, s := range rep.Systems {
		role := ""
		if s.Subject {
			role = " (subject)"
		}
		extra := ""
		switch {
		case s.LatencyNs != 0 && s.LatencyPerRPC:
			extra = fmt.Sprintf(", %s injected per node data RPC (each reply from another node taken that long after it arrived)", s.LatencyNs)
		case s.LatencyNs != 0:
			extra = fmt.Sprintf(", %s injected per storage operation", s.LatencyNs)
		}
		if s.Skipped != "" {
			fmt.Fprintf(&b, "  - ~~%s~~: skipped — %s\n", s.Name, s.Skipped)
			continue
		}
		fmt.Fprintf(&b, "  - **%s**%s: %s over %s%s\n", s.Name, role, s.Describe, s.FrontEnd, extra)
	}

	b.WriteString("\n## Results\n\nMedian [min–max] over the repetitions; IOPS or MiB/s, higher is better. † marks a cell with a run taken while the host was busy.\n\n")
	b.WriteString("| workload | unit |")
	for _, s := range ran {
		fmt.Fprintf(&b, " %s |", s)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|", len(ran)) + "\n")
	for _, wl := range rep.Work {
		fmt.Fprintf(&b, "| %s | %s |", wl.Name, wl.Metric)
		for _, s := range ran {
			c := rep.cell(s, wl.Name)
			if c == nil {
				b.WriteString(" — |")
				continue
			}
			dag := ""
			if c.Busy > 0 {
				dag = " †"
			}
			if c.N == 1 {
				fmt.Fprintf(&b, " %s%s |", fmtNum(c.Median), dag)
			} else {
				fmt.Fprintf(&b, " %s [%s–%s]%s |", fmtNum(c.Median), fmtNum(c.Min), fmtNum(c.Max), dag)
			}
		}
		b.WriteString("\n")
	}

	for _, sub := range subjects {
		peers := rep.peersOf(sub)
		if len(peers) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n## Ratios %s / peer\n\nRatio of medians (low–high over the spreads); above 1.00× %s is faster. Peers on the same front end (so the same drivers), and the systems the subject is declared against (its Versus) on the workloads one driver measured on both.\n\n| workload |", sub, sub)
		for _, p := range peers {
			fmt.Fprintf(&b, " vs %s |", p)
		}
		b.WriteString("\n|---|" + strings.Repeat("---:|", len(peers)) + "\n")
		for _, wl := range rep.Work {
			fmt.Fprintf(&b, "| %s |", wl.Name)
			for _, p := range peers {
				r := rep.ratio(sub, p, wl.Name)
				switch {
				case r == nil:
					b.WriteString(" — |")
				case rep.Settings.Repeat == 1:
					fmt.Fprintf(&b, " %.2f× |", r.Median)
				default:
					fmt.Fprintf(&b, " %.2f× (%.2f–%.2f) |", r.Median, r.Low, r.High)
				}
			}
			b.WriteString("\n")
		}
	}

	if len(rep.FrontEnds) > 0 {
		b.WriteString("\n## What the front end costs\n\ncairn over a front end as a share of cairn in process (same storage, same injected latency, no protocol): median over median.\n\n| system | vs | workload | share |\n|---|---|---|---:|\n")
		for _, r := range rep.FrontEnds {
			fmt.Fprintf(&b, "| %s | %s | %s | %.2f× |\n", r.Subject, r.Peer, r.Workload, r.Median)
		}
	}
	if len(rep.Pipelining) > 0 {
		b.WriteString("\n## Pipelining under injected latency\n\nWith N requests in flight and L per storage operation (or per node RPC: see the system list) at most N/L complete per second; the share of that limit reached shows how well the path pipelines.\n\n| system | workload | latency | in flight | limit IOPS | IOPS | of limit |\n|---|---|---:|---:|---:|---:|---:|\n")
		for _, p := range rep.Pipelining {
			fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %s | %.0f%% |\n", p.System, p.Workload, p.LatencyNs, p.InFlight, fmtNum(p.LimitIOPS), fmtNum(p.IOPS), 100*p.Fraction)
		}
	}

	if len(rep.Aging) > 0 || len(rep.Space) > 0 {
		rep.writeSpace(&b)
	}
	if len(rep.Snapshots) > 0 {
		rep.writeSnapshots(&b)
	}

	anyLatency := false
	for _, wl := range rep.Work {
		anyLatency = anyLatency || wl.Latency
	}
	if anyLatency {
		b.WriteString("\n## Latency\n\nAt queue depth 1, and of 1 MiB writes at queue depth 8. Latency in µs from submission to completion (fio's lat; its clat leaves out the submission, in which libnbd sends the request; the load generator's call of the device), medians over the repetitions. iscsi-perf and qemu-img bench measure only a rate: their mean (marked *) is requests in flight / IOPS by Little's law, with no percentiles.\n\n| workload | system | mean | p50 | p99 | p99.9 |\n|---|---|---:|---:|---:|---:|\n")
		for _, wl := range rep.Work {
			if !wl.Latency {
				continue
			}
			for _, s := range ran {
				if c := rep.cell(s, wl.Name); c != nil {
					mean := us(c.LatMeanNs)
					if c.MeanOnly {
						mean += "*"
					}
					fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", wl.Name, s, mean, us(c.P50Ns), us(c.P99Ns), us(c.P999Ns))
				}
			}
		}
	}

	busy, failed := 0, 0
	for _, r := range rep.Runs {
		if r.Host.Busy {
			busy++
		}
		if r.Error != "" {
			failed++
		}
	}
	fmt.Fprintf(&b, "\n## Runs\n\n%d runs, %d failed, %d taken while the host was busy (processes other than the systems under test used more than %.0f%% of the CPUs just before the run, or more than %.0f%% was stolen during it).\n",
		len(rep.Runs), failed, busy, busyBeforePctMax, stealPctMax)
	if busy+failed > 0 {
		b.WriteString("\n| # | system | workload | rep | host CPU before | of which servers | steal | note |\n|---:|---|---|---:|---:|---:|---:|---|\n")
		for _, r := range rep.Runs {
			if !r.Host.Busy && r.Error == "" {
				continue
			}
			note := r.Host.Reason
			if r.Error != "" {
				note = "FAILED: " + strings.ReplaceAll(oneLine(r.Error), "|", "\\|")
			}
			fmt.Fprintf(&b, "| %d | %s | %s | %d | %.0f%% | %.0f%% | %.1f%% | %s |\n", r.Seq, r.System, r.Workload, r.Rep, r.Host.BusyBeforePct, r.Host.ServersBeforePct, r.Host.StealPct, note)
		}
	}
	if len(rep.Notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(&b, "- %s\n", oneLine(n))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// driverSummary says which driver ran which workloads on each front end.
func (rep *Report) driverSummary() string {
	type key struct {
		fe     FrontEnd
		driver string
	}
	var order []key
	work := map[key][]string{}
	for _, r := range rep.Runs {
		if r.Driver == "" {
			continue
		}
		k := key{rep.system(r.System).FrontEnd, r.Driver}
		if _, ok := work[k]; !ok {
			order = append(order, k)
		}
		if !contains(work[k], r.Workload) {
			work[k] = append(work[k], r.Workload)
		}
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%s over %s (%s)", k.driver, k.fe, strings.Join(work[k], ", ")))
	}
	return strings.Join(parts, "; ")
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func (rep *Report) ranSystems() []string {
	var out []string
	for _, s := range rep.Systems {
		if s.Skipped == "" {
			out = append(out, s.Name)
		}
	}
	return out
}

func (rep *Report) ratio(sub, peer, workload string) *Ratio {
	for i := range rep.Ratios {
		r := &rep.Ratios[i]
		if r.Subject == sub && r.Peer == peer && r.Workload == workload {
			return r
		}
	}
	return nil
}

func fmtNum(v float64) string {
	switch {
	case v >= 100_000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 10_000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}

func us(ns float64) string {
	if ns == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f", ns/1000)
}

func fmtLoad(l []float64) string {
	if len(l) < 3 {
		return "—"
	}
	return fmt.Sprintf("%.2f/%.2f/%.2f", l[0], l[1], l[2])
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// writeSpace writes the aging job's times and the systems' space.
func (rep *Report) writeSpace(b *strings.Builder) {
	b.WriteString("\n## Aging and space\n\n")
	if len(rep.Aging) > 0 {
		b.WriteString("The aging job per system (it counts in the run's time).\n\n| system | driver | written | took | IOPS |\n|---|---|---:|---:|---:|\n")
		for _, a := range rep.Aging {
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", a.System, a.Driver, fmtMiB(a.Bytes), a.Elapsed.Round(100*time.Millisecond), fmtNum(a.IOPS))
		}
		b.WriteString("\n")
	}
	if len(rep.Space) == 0 {
		return
	}
	fmt.Fprintf(b, "Space after aging and at the end of the run, sampled once the store's cleaner had gone quiet (segment bytes no longer falling, nothing copied or dropped for %d polls %s apart; at most %s). On disk is what du counts under the system's storage (cairn's data directory; a peer's backing file); live is the block data the store's index points at; a cluster sums its nodes, so live counts every replica.\n\n",
		spaceQuietPolls, spacePollEvery, spaceSettleMax)
	b.WriteString("| system | when | on disk | segments | live | index | segment files | cleaner copied | on-disk / live | segments / live | settled |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, sp := range rep.Space {
		settled := "no"
		if sp.Settled {
			settled = "yes"
		}
		settled += " (" + sp.Waited.Round(time.Second).String() + ")"
		if sp.Error != "" {
			settled += " — " + strings.ReplaceAll(oneLine(sp.Error), "|", "\\|")
		}
		if sp.Store == nil {
			fmt.Fprintf(b, "| %s | %s | %s | — | — | — | — | — | — | — | %s |\n", sp.System, sp.When, fmtMiB(sp.DiskBytes), settled)
			continue
		}
		st := sp.Store
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %d | %s | %s | %s | %s |\n", sp.System, sp.When, fmtMiB(sp.DiskBytes),
			fmtMiB(st.SegmentBytes), fmtMiB(st.LiveBytes), fmtMiB(st.IndexBytes), st.Segments, fmtMiB(st.CleanerBytes),
			fmtRatio(sp.DiskPerLive()), fmtRatio(sp.SegmentsPerLive()), settled)
	}
}

// fmtMiB formats bytes in MiB with one decimal.
func fmtMiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func fmtRatio(r float64) string {
	if r == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", r)
}
