package bench

import (
	"fmt"
	"strings"
)

// Metric is what a workload is judged by.
type Metric int

const (
	// IOPS judges a workload by operations per second; queue depth 1
	// workloads are IOPS workloads whose latency percentiles matter too.
	IOPS Metric = iota
	// Throughput judges a workload by bytes per second (reported in MiB/s).
	Throughput
)

func (m Metric) String() string {
	if m == Throughput {
		return "MiB/s"
	}
	return "IOPS"
}

// Workload is one I/O pattern, described independently of the driver that
// generates it.
type Workload struct {
	Name string
	// RW is the pattern in fio's words: read, write, randread, randwrite,
	// randrw.
	RW string
	// BlockBytes is the size of every request.
	BlockBytes int
	// QueueDepth is the requests in flight per connection.
	QueueDepth int
	// Conns is the number of connections (fio jobs), each with QueueDepth
	// in flight over its own slice of the device; 0 means 1.
	Conns int
	// ReadPercent is the share of reads in a randrw mix.
	ReadPercent int
	// Metric is the headline number.
	Metric Metric
	// Latency marks workloads whose latency percentiles are reported
	// (queue depth 1, and 1 MiB writes, whose p99 the store issue sets
	// against the peer's).
	Latency bool
	// Once runs the pattern over the whole device once instead of for the
	// runtime (the fill that precedes measurement).
	Once bool
	// IOBytes, for a Once workload, is the bytes it transfers in all
	// (over and over the device: the aging job); 0 covers the device once.
	IOBytes int64
	// Seed fixes the random offsets (fio's randseed, the load
	// generator's); 0 seeds from the clock.
	Seed uint64
}

// Connections returns the number of connections, at least 1.
func (w Workload) Connections() int { return max(w.Conns, 1) }

// Reads reports whether the workload issues reads; Writes likewise.
func (w Workload) Reads() bool  { return strings.Contains(w.RW, "read") || w.RW == "randrw" }
func (w Workload) Writes() bool { return strings.Contains(w.RW, "write") || w.RW == "randrw" }

// Workloads returns the standard workload set, in report order.
func Workloads() []Workload {
	const k4, m1 = 4 << 10, 1 << 20
	return []Workload{
		{Name: "randread-4k-qd1", RW: "randread", BlockBytes: k4, QueueDepth: 1, Latency: true},
		{Name: "randwrite-4k-qd1", RW: "randwrite", BlockBytes: k4, QueueDepth: 1, Latency: true},
		{Name: "randread-4k-qd32", RW: "randread", BlockBytes: k4, QueueDepth: 32},
		{Name: "randwrite-4k-qd32", RW: "randwrite", BlockBytes: k4, QueueDepth: 32},
		{Name: "randrw70-4k-qd32", RW: "randrw", ReadPercent: 70, BlockBytes: k4, QueueDepth: 32},
		// Multi-connection: 4 connections × 8 in flight, the same 32
		// requests in flight as the single-connection qd32 rows.
		{Name: "randread-4k-qd8x4", RW: "randread", BlockBytes: k4, QueueDepth: 8, Conns: 4},
		{Name: "randwrite-4k-qd8x4", RW: "randwrite", BlockBytes: k4, QueueDepth: 8, Conns: 4},
		{Name: "read-1m-qd8", RW: "read", BlockBytes: m1, QueueDepth: 8, Metric: Throughput},
		{Name: "write-1m-qd8", RW: "write", BlockBytes: m1, QueueDepth: 8, Metric: Throughput, Latency: true},
	}
}

// fill writes every byte of the device once before measurement, so reads
// find data on every system rather than holes some serve for free.
var fill = Workload{Name: "fill", RW: "write", BlockBytes: 1 << 20, QueueDepth: 8, Metric: Throughput, Once: true}

// selectWorkloads returns the workloads named in the comma-separated list
// (all of them for ""), in report order.
func selectWorkloads(list string) ([]Workload, error) {
	all := Workloads()
	if strings.TrimSpace(list) == "" {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	var out []Workload
	for _, w := range all {
		if want[w.Name] {
			out = append(out, w)
			delete(want, w.Name)
		}
	}
	for n := range want {
		return nil, fmt.Errorf("%w: workload %q (have %s)", ErrUsage, n, names(all, func(w Workload) string { return w.Name }))
	}
	return out, nil
}

func names[T any](xs []T, name func(T) string) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = name(x)
	}
	return strings.Join(s, ", ")
}
