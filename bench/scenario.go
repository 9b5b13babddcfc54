package bench

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Scenario is one system set up one way: what runs, which front end
// reaches it, what is injected below it, and which workloads it gets. A
// run compares every subject scenario (cairn) with every peer.
type Scenario struct {
	Name   string
	System System
	// FrontEnd is the protocol the drivers use; "" means NBD.
	FrontEnd FrontEnd
	// Latency is injected per storage operation below the front end, or
	// with LatencyPerRPC per node data RPC (a cairnd cluster only: every
	// reply from another node is taken Latency after it arrived, a network
	// of that much longer round trip; the local replica is not delayed).
	Latency       time.Duration
	LatencyPerRPC bool
	// Workloads limits the scenario to these workload names; nil runs every
	// selected workload a driver supports on the front end.
	Workloads []string
	// Subject marks the system being judged: ratios are subject/peer.
	Subject bool
	// Optional scenarios run only when --systems names them.
	Optional bool
	// Versus names scenarios this subject is also compared with, as if
	// they were its peers (a 3-node cluster against one node), at the same
	// injected latency and on the workloads one driver measured on both —
	// also across front ends (cairn over NBD against Ceph over librbd,
	// both with fio).
	Versus []string
	// During, when set, runs beside every measured run until its context
	// ends (a snapshot storm, a node kill) and reports what it did, which
	// the run records; an error from it fails the run. dir is a scratch
	// directory for whatever it starts.
	During func(ctx context.Context, inst Instance, dir string) (*DuringReport, error)
}

func (s Scenario) frontEnd() FrontEnd {
	if s.FrontEnd == "" {
		return NBD
	}
	return s.FrontEnd
}

func (s Scenario) wants(w Workload) bool {
	if s.Workloads == nil {
		return true
	}
	for _, n := range s.Workloads {
		if n == w.Name {
			return true
		}
	}
	return false
}

// snapshotCadence is the snapshot scenarios' cadence (issue 10's).
const snapshotCadence = 100 * time.Millisecond

// latencyWorkloads are what the injected-latency scenarios run: at queue
// depth 32 and latency L per storage operation the limit is 32/L IOPS.
var latencyWorkloads = []string{"randread-4k-qd32", "randwrite-4k-qd32"}

// Scenarios returns the standard scenarios, subjects first; cairnd
// scenarios share bin. Ratios compare a subject with the peers on its
// front end at the same injected latency, and with the scenarios it names
// in Versus; the in-process scenarios are the yardstick for what each
// front end costs.
//
// A new scenario is one more entry; the snapshot scenarios are examples
// of one with an activity beside every run.
func Scenarios(bin *Binary) []Scenario {
	const lat = time.Millisecond
	snap100ms := snapshotLoad{every: snapshotCadence}
	fourTargets := Cairnd{Bin: bin, Nodes: 4, Replicas: 1, VolumePerNode: true}
	return []Scenario{
		{Name: "cairn-nbd", System: Cairnd{Bin: bin}, Subject: true, Versus: []string{"ceph-rbd"}},
		{Name: "cairn-iscsi", System: Cairnd{Bin: bin}, FrontEnd: ISCSI, Subject: true},
		{Name: "cairn-inproc", System: Embedded{}, FrontEnd: InProc, Subject: true},
		// Show how well each front end pipelines: at qd32 and 1 ms per
		// storage operation the limit is 32k IOPS.
		{Name: "cairn-lat1ms", System: Cairnd{Bin: bin}, Latency: lat, Workloads: latencyWorkloads, Subject: true},
		{Name: "cairn-iscsi-lat1ms", System: Cairnd{Bin: bin}, FrontEnd: ISCSI, Latency: lat, Workloads: latencyWorkloads, Subject: true},
		{Name: "cairn-inproc-lat1ms", System: Embedded{}, FrontEnd: InProc, Latency: lat, Workloads: latencyWorkloads, Subject: true},
		// Three processes on this host, every chunk on all three: what
		// replication costs beside one node, and how well the replica
		// fan-out pipelines over a network of 1 ms more round trip (issue
		// 8's "1 ms injected per node RPC"; injected per storage
		// operation, the nodes' servers lost their inline and batched
		// paths, which no network takes away).
		{Name: "cairn-3node-r3", System: Cairnd{Bin: bin, Nodes: 3, Replicas: 3}, Subject: true, Optional: true, Versus: []string{"cairn-nbd", "ceph-rbd-r3"}},
		{Name: "cairn-3node-r3-lat1ms", System: Cairnd{Bin: bin, Nodes: 3, Replicas: 3}, Latency: lat, LatencyPerRPC: true, Workloads: latencyWorkloads,
			Subject: true, Optional: true},
		// What a snapshot every 100 ms costs the writes: the same system
		// without the snapshots is its Versus, measured in the same run
		// (the report's snapshot section sets write p99 against it). One
		// node, and four targets on loopback each serving one volume of
		// the group (fio on the first, light writers on the others, with
		// and without snapshots).
		{Name: "cairn-snap100ms", System: Cairnd{Bin: bin}, Subject: true, Optional: true, Versus: []string{"cairn-nbd"}, During: snap100ms.run},
		{Name: "cairn-4target", System: fourTargets, Subject: true, Optional: true, During: snapshotLoad{writers: true}.run},
		{Name: "cairn-4target-snap100ms", System: fourTargets, Subject: true, Optional: true, Versus: []string{"cairn-4target"},
			During: snapshotLoad{every: snapshotCadence, writers: true}.run},
		{Name: "nbdkit-memory", System: NBDKit{Plugin: "memory"}},
		{Name: "nbdkit-file", System: NBDKit{Plugin: "file"}},
		{Name: "qemu-nbd", System: QemuNBD{}},
		{Name: "nbd-server", System: NBDServer{}},
		{Name: "tgtd", System: TGTD{}, FrontEnd: ISCSI},
		// What users would run instead: Ceph RBD through librbd (fio's
		// rbd engine), one OSD against one cairn node and three OSDs
		// with every object on each against the 3-node R=3 cluster.
		// Another front end, so compared only as their subjects' Versus.
		{Name: "ceph-rbd", System: CephRBD{OSDs: 1}, FrontEnd: RBD},
		{Name: "ceph-rbd-r3", System: CephRBD{OSDs: 3}, FrontEnd: RBD, Optional: true},
	}
}

// BaselineScenarios are every cairnd scenario of Scenarios again, with
// cairnd from another build, named <name>-baseline and run as peers: the
// ratios are then one build against the other, measured interleaved in
// one run (cairn-nbd / cairn-nbd-baseline, cairn-3node-r3 /
// cairn-3node-r3-baseline, …). A baseline keeps its scenario's activity
// (the snapshot storm) and its Versus, renamed, so the snapshot section
// reports the baseline's own with/without ratio. They run when --systems
// names them.
func BaselineScenarios(bin *Binary) []Scenario {
	var out []Scenario
	for _, sc := range Scenarios(bin) {
		if _, ok := sc.System.(Cairnd); !ok {
			continue
		}
		sc.Name += baselineSuffix
		sc.Subject = false
		sc.Optional = true
		var vs []string
		for _, v := range sc.Versus {
			if strings.HasPrefix(v, "cairn-") {
				vs = append(vs, v+baselineSuffix)
			}
		}
		sc.Versus = vs
		out = append(out, sc)
	}
	return out
}

const baselineSuffix = "-baseline"

// selectScenarios returns the scenarios named in list (comma-separated), in
// list order, or every non-optional one for "".
func selectScenarios(all []Scenario, list string) (sel []Scenario, named bool, err error) {
	if strings.TrimSpace(list) == "" {
		for _, s := range all {
			if !s.Optional {
				sel = append(sel, s)
			}
		}
		return sel, false, nil
	}
	seen := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		found := false
		for _, s := range all {
			if s.Name == n {
				sel, found = append(sel, s), true
				break
			}
		}
		if !found {
			return nil, true, fmt.Errorf("%w: system %q (have %s)", ErrUsage, n, names(all, func(s Scenario) string { return s.Name }))
		}
	}
	return sel, true, nil
}
