package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Thresholds above which a run is flagged as taken on a busy host.
const (
	busyBeforePctMax = 15.0 // host CPU busy (% of all cores) while idle before a run
	stealPctMax      = 2.0  // CPU stolen by the hypervisor during a run
	idleWindow       = 300 * time.Millisecond
)

// Machine is what the report says about the host.
type Machine struct {
	Hostname  string    `json:"hostname"`
	Cores     int       `json:"cores"`
	CPUModel  string    `json:"cpu_model"`
	MemBytes  int64     `json:"mem_bytes"`
	Kernel    string    `json:"kernel"`
	GoVersion string    `json:"go_version"`
	Load      []float64 `json:"loadavg_start"` // 1, 5, 15 minutes
	LoadEnd   []float64 `json:"loadavg_end"`
}

func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), Load: loadavg()}
	m.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		m.MemBytes = kb << 10
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// loadavg returns the 1, 5 and 15 minute load averages, or nil.
func loadavg() []float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return nil
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return nil
	}
	out := make([]float64, 3)
	for i := range out {
		out[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return out
}

// cpuTimes is the aggregate line of /proc/stat, in clock ticks.
type cpuTimes struct {
	busy, idle, steal, total uint64
}

func readCPU() (cpuTimes, bool) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTimes{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return cpuTimes{}, false
	}
	return parseCPULine(sc.Bytes())
}

// parseCPULine parses "cpu user nice system idle iowait irq softirq steal
// guest guest_nice". Guest time is already counted in user and nice.
func parseCPULine(line []byte) (cpuTimes, bool) {
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return cpuTimes{}, false
	}
	var v [8]uint64
	for i := range v {
		n, err := strconv.ParseUint(string(f[i+1]), 10, 64)
		if err != nil {
			return cpuTimes{}, false
		}
		v[i] = n
	}
	user, nice, system, idle, iowait, irq, softirq, steal := v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
	t := cpuTimes{idle: idle + iowait, steal: steal, busy: user + nice + system + irq + softirq}
	t.total = t.busy + t.idle + t.steal
	return t, true
}

// procTicks returns the CPU time (user+system, in clock ticks like
// /proc/stat) the processes have used, skipping any that are gone.
func procTicks(pids []int) uint64 {
	var sum uint64
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state is field 3, utime
		// and stime are fields 14 and 15.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		sum += u + st
	}
	return sum
}

// pct returns a's share of the ticks between two samples, in percent.
func pct(part, total uint64) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(part) / float64(total)
}

// HostSample is the host's state around one run.
type HostSample struct {
	Load1Before float64 `json:"load1_before"`
	Load1After  float64 `json:"load1_after"`
	// BusyBeforePct is the host's CPU use in the idle window just before
	// the run, when only idle servers should be running; ServersBeforePct
	// is the part of it the systems under test used themselves (a store
	// compacting after the last run), which does not make the host busy.
	BusyBeforePct    float64 `json:"busy_before_pct"`
	ServersBeforePct float64 `json:"servers_before_pct"`
	// CPUPct and StealPct are the host's CPU use and steal during the run,
	// in percent of all cores.
	CPUPct   float64 `json:"cpu_pct"`
	StealPct float64 `json:"steal_pct"`
	// Busy flags a run whose numbers the host's other work may have moved.
	Busy   bool   `json:"busy"`
	Reason string `json:"reason,omitempty"`
}

// hostProbe measures the host around one run.
type hostProbe struct {
	s     HostSample
	start cpuTimes
	ok    bool
}

// foreignBeforePct is the CPU use before the run of everything but the
// systems under test.
func (s HostSample) foreignBeforePct() float64 { return max(s.BusyBeforePct-s.ServersBeforePct, 0) }

// settle waits until the host is quiet apart from the systems under test
// (pids), at most maxWait, measures its CPU use over window, and starts the
// run's sample.
func settle(ctx context.Context, maxWait, window time.Duration, pids []int) *hostProbe {
	h := &hostProbe{}
	deadline := time.Now().Add(maxWait)
	for {
		a, okA := readCPU()
		pa := procTicks(pids)
		select {
		case <-ctx.Done():
			return h
		case <-time.After(window):
		}
		b, okB := readCPU()
		pb := procTicks(pids)
		if okA && okB {
			h.s.BusyBeforePct = pct(b.busy-a.busy, b.total-a.total)
			h.s.ServersBeforePct = min(pct(pb-pa, b.total-a.total), h.s.BusyBeforePct)
		}
		if h.s.foreignBeforePct() <= busyBeforePctMax || !time.Now().Before(deadline) {
			break
		}
	}
	if l := loadavg(); l != nil {
		h.s.Load1Before = l[0]
	}
	h.start, h.ok = readCPU()
	return h
}

// done ends the sample and decides whether the host was busy.
func (h *hostProbe) done() HostSample {
	if end, ok := readCPU(); ok && h.ok {
		d := end.total - h.start.total
		h.s.CPUPct = pct(end.busy-h.start.busy, d)
		h.s.StealPct = pct(end.steal-h.start.steal, d)
	}
	if l := loadavg(); l != nil {
		h.s.Load1After = l[0]
	}
	var why []string
	if f := h.s.foreignBeforePct(); f > busyBeforePctMax {
		why = append(why, fmt.Sprintf("other processes used %.0f%% CPU before the run", f))
	}
	if h.s.StealPct > stealPctMax {
		why = append(why, fmt.Sprintf("%.1f%% steal", h.s.StealPct))
	}
	h.s.Busy, h.s.Reason = len(why) > 0, strings.Join(why, ", ")
	return h.s
}
