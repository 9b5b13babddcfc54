package bench

import (
	"context"
	"time"

	"cairn/target"
)

// FrontEnd is the protocol a scenario's system is reached by.
type FrontEnd string

const (
	NBD   FrontEnd = "nbd"
	ISCSI FrontEnd = "iscsi"
	// InProc is no front end: the driver calls the device interface
	// (target.Device) in the harness's own process, which shows what the
	// storage costs without any protocol.
	InProc FrontEnd = "inproc"
	// RBD is a Ceph RBD image reached with librbd in the driver's own
	// process (fio's rbd engine), which talks to the OSDs directly.
	RBD FrontEnd = "rbd"
)

// Target is a running system as a driver sees it.
type Target struct {
	FrontEnd FrontEnd
	// URI names the export: nbd://127.0.0.1:10809/vol0,
	// iscsi://127.0.0.1:3260/iqn.../0 or, as QEMU writes it,
	// rbd:pool/image:id=admin:conf=/path/ceph.conf.
	URI string
	// SizeBytes is the export size.
	SizeBytes int64
	// LogicalBlockBytes is the SCSI logical block size of an iSCSI LUN
	// (512 for cairnd and tgtd); 0 for other front ends.
	LogicalBlockBytes int
	// Device is the device itself for InProc; nil otherwise.
	Device target.Device
}

// RunOptions bound one driver run.
type RunOptions struct {
	// Runtime is the measured time; Ramp runs before it, unmeasured.
	// Both are ignored by Once workloads.
	Runtime, Ramp time.Duration
	// Dir is a scratch directory the driver may write files in.
	Dir string
}

// Driver generates a workload against a target and measures it: fio with
// its nbd and rbd engines (FIO), iscsi-perf (ISCSIPerf) and qemu-img bench
// (QemuImgBench) over iSCSI, and a Go load generator on the device
// interface in process (Loadgen).
//
// Run is called from one goroutine at a time per driver; it must stop, and
// kill whatever it started, when ctx is done.
type Driver interface {
	Name() string
	// Supports reports whether the driver can run w over front end fe.
	Supports(fe FrontEnd, w Workload) bool
	// Run runs w against t once. A run that completes but measures no I/O
	// is an error (ErrNoNumbers).
	Run(ctx context.Context, t Target, w Workload, o RunOptions) (Measurement, error)
}

// Measurement is what one run measured.
type Measurement struct {
	// IOPS and BytesPerSec are over reads and writes together.
	IOPS        float64 `json:"iops"`
	BytesPerSec float64 `json:"bytes_per_sec"`
	Read        *Side   `json:"read,omitempty"`
	Write       *Side   `json:"write,omitempty"`
	// DriverCPUPct is the load generator's own CPU use (user+system, % of
	// one core), so a saturated client is visible.
	DriverCPUPct float64       `json:"driver_cpu_pct"`
	Elapsed      time.Duration `json:"elapsed_ns"`
}

// Side is one direction of a measurement.
type Side struct {
	IOPS        float64 `json:"iops"`
	BytesPerSec float64 `json:"bytes_per_sec"`
	IOs         int64   `json:"ios"`
	// LatMeanNs and Percentiles are total latency, from before the
	// request is submitted to its completion (fio's lat).
	LatMeanNs   float64      `json:"lat_mean_ns"`
	Percentiles []Percentile `json:"percentiles"`
	// ClatMeanNs is fio's completion latency (clat), which leaves out
	// the submission.
	ClatMeanNs float64 `json:"clat_mean_ns"`
	// MeanOnly marks a side whose driver measures no distribution: its
	// LatMeanNs is derived by Little's law (requests in flight / IOPS)
	// and Percentiles is empty (iscsi-perf, qemu-img bench).
	MeanOnly bool `json:"mean_only,omitempty"`
}

// Percentile is one point of a latency distribution.
type Percentile struct {
	P  float64 `json:"p"` // 0..100
	Ns float64 `json:"ns"`
}

// At returns the latency at percentile p, or 0 if it was not measured.
func (s *Side) At(p float64) float64 {
	if s == nil {
		return 0
	}
	for _, q := range s.Percentiles {
		if q.P == p {
			return q.Ns
		}
	}
	return 0
}

// Value returns the measurement's headline number for metric m: IOPS, or
// MiB/s.
func (m Measurement) Value(metric Metric) float64 {
	if metric == Throughput {
		return m.BytesPerSec / (1 << 20)
	}
	return m.IOPS
}

// latencySide returns the side whose latency a workload reports: the read
// side of a read or mixed workload, else the write side.
func (m Measurement) latencySide() *Side {
	if m.Read != nil && m.Read.IOs > 0 {
		return m.Read
	}
	return m.Write
}
