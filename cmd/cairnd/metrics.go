package main

import (
	"github.com/prometheus/client_golang/prometheus"
)

// volumeCollector exports the open volumes' counters at scrape time.
type volumeCollector struct{ d *daemon }

var (
	volOpsDesc        = prometheus.NewDesc("cairn_volume_ops_total", "Requests a volume served, by operation.", []string{"volume", "op"}, nil)
	volBytesDesc      = prometheus.NewDesc("cairn_volume_bytes_total", "Bytes a volume served, by operation.", []string{"volume", "op"}, nil)
	volErrorsDesc     = prometheus.NewDesc("cairn_volume_errors_total", "Requests a volume failed.", []string{"volume"}, nil)
	volSizeDesc       = prometheus.NewDesc("cairn_volume_size_bytes", "Size of a volume.", []string{"volume"}, nil)
	nbdConnsDesc      = prometheus.NewDesc("cairn_nbd_connections", "Live NBD connections per export.", []string{"volume"}, nil)
	iscsiSessDesc     = prometheus.NewDesc("cairn_iscsi_sessions", "Live iSCSI sessions per target.", []string{"volume"}, nil)
	catchupCopiedDesc = prometheus.NewDesc("cairn_replica_catchup_chunks_copied", "Chunks the running (or last) catch-up of a stale replica copied.", []string{"volume", "node"}, nil)
	catchupTotalDesc  = prometheus.NewDesc("cairn_replica_catchup_chunks_total", "Chunks the running (or last) catch-up of a stale replica has to copy.", []string{"volume", "node"}, nil)
	catchupActiveDesc = prometheus.NewDesc("cairn_replica_catchup_running", "1 while a catch-up of a stale replica runs.", []string{"volume", "node"}, nil)
)

func (c *volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{volOpsDesc, volBytesDesc, volErrorsDesc, volSizeDesc, nbdConnsDesc, iscsiSessDesc, catchupCopiedDesc, catchupTotalDesc, catchupActiveDesc} {
		ch <- d
	}
}

func (c *volumeCollector) Collect(ch chan<- prometheus.Metric) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	for name, v := range c.d.mu.vols {
		s := v.Stats()
		for _, m := range []struct {
			op       string
			ops, byt uint64
		}{{"read", s.Reads, s.ReadBytes}, {"write", s.Writes, s.WriteBytes}, {"zero", s.Zeros, s.ZeroBytes}, {"flush", s.Flushes, 0}} {
			ch <- prometheus.MustNewConstMetric(volOpsDesc, prometheus.CounterValue, float64(m.ops), name, m.op)
			if m.op != "flush" {
				ch <- prometheus.MustNewConstMetric(volBytesDesc, prometheus.CounterValue, float64(m.byt), name, m.op)
			}
		}
		ch <- prometheus.MustNewConstMetric(volErrorsDesc, prometheus.CounterValue, float64(s.Errors), name)
		ch <- prometheus.MustNewConstMetric(volSizeDesc, prometheus.GaugeValue, float64(v.Info().Size), name)
		n, i := c.d.sessions(name)
		ch <- prometheus.MustNewConstMetric(nbdConnsDesc, prometheus.GaugeValue, float64(n), name)
		ch <- prometheus.MustNewConstMetric(iscsiSessDesc, prometheus.GaugeValue, float64(i), name)
		if fo := c.d.mu.failovers[name]; fo != nil {
			if p, ok := fo.progress(); ok {
				running := 0.0
				if p.running {
					running = 1
				}
				ch <- prometheus.MustNewConstMetric(catchupCopiedDesc, prometheus.GaugeValue, float64(p.copied), name, p.node)
				ch <- prometheus.MustNewConstMetric(catchupTotalDesc, prometheus.GaugeValue, float64(p.total), name, p.node)
				ch <- prometheus.MustNewConstMetric(catchupActiveDesc, prometheus.GaugeValue, running, name, p.node)
			}
		}
	}
}

// daemonCollector exports the daemon-wide gauges and counters: the
// in-flight budget, front-end connections and disconnects, the node RPC
// server, the gossip pool and the block store (space, GC, cleaner).
type daemonCollector struct{ d *daemon }

var (
	inflightDesc     = prometheus.NewDesc("cairn_inflight_bytes", "Request payload bytes held by the front ends now.", nil, nil)
	inflightPeakDesc = prometheus.NewDesc("cairn_inflight_peak_bytes", "Most request payload bytes the front ends held at once.", nil, nil)
	budgetDesc       = prometheus.NewDesc("cairn_inflight_budget_bytes", "The front ends' in-flight byte budget ([limits] inflight_bytes).", nil, nil)
	budgetWaitDesc   = prometheus.NewDesc("cairn_inflight_waiting", "Requests waiting for in-flight budget.", nil, nil)
	connsDesc        = prometheus.NewDesc("cairn_connections", "Live front-end connections, by front end.", []string{"frontend"}, nil)
	disconnectsDesc  = prometheus.NewDesc("cairn_disconnects_total", "Front-end connections ended, by front end and reason.", []string{"frontend", "reason"}, nil)
	gossipDesc       = prometheus.NewDesc("cairn_gossip_members", "Gossip members this node knows, by state.", []string{"state"}, nil)
	gossipDropDesc   = prometheus.NewDesc("cairn_gossip_events_dropped_total", "Membership events a slow subscriber missed.", nil, nil)
	memReleaseDesc   = prometheus.NewDesc("cairn_memory_releases_total", "Times the free heap was returned to the OS after a burst of in-flight bytes.", nil, nil)

	storeBytesDesc    = prometheus.NewDesc("cairn_store_bytes", "The block store's bytes: segments on disk, block data the index points at (live), index memory, dead segments' files kept for reuse (spare).", []string{"kind"}, nil)
	storeSegmentsDesc = prometheus.NewDesc("cairn_store_segments", "Segment files of the block store.", nil, nil)
	storeGCDesc       = prometheus.NewDesc("cairn_store_gc_dropped_total", "What GC dropped: versions no reader sees, and their block data bytes.", []string{"what"}, nil)
	storeReclaimDesc  = prometheus.NewDesc("cairn_store_reclaimed_bytes_total", "Bytes of segment files deleted (space returned to the filesystem).", nil, nil)
	storeReusedDesc   = prometheus.NewDesc("cairn_store_segments_reused_total", "Segments started in the kept file of a dead segment (resident pages overwritten, not new ones allocated).", nil, nil)
	storeCleanerDesc  = prometheus.NewDesc("cairn_store_cleaner_copied_bytes_total", "Bytes of live blocks the cleaner copied out of emptying segments.", nil, nil)
	storeDefragDesc   = prometheus.NewDesc("cairn_store_defrag_bytes_total", "Bytes of fragmented reads rewritten as one run, so that the next read of the range is one copy.", nil, nil)
	// The cleaner's throughput and cost: rate() of these over rate() of
	// cairn_volume_bytes_total{op="write"} is its write amplification, and
	// rate() of the CPU seconds its share of a core.
	storeCleanerReadDesc     = prometheus.NewDesc("cairn_store_cleaner_read_bytes_total", "Bytes the cleaner read from segments (record headers and live blocks).", nil, nil)
	storeCleanerWrittenDesc  = prometheus.NewDesc("cairn_store_cleaner_written_bytes_total", "Bytes of copy records the cleaner appended to the log (live blocks and their headers).", nil, nil)
	storeCleanerSegmentsDesc = prometheus.NewDesc("cairn_store_cleaner_segments_total", "Segments the cleaner emptied (deleted by the next checkpoint).", nil, nil)
	storeCleanerCPUDesc      = prometheus.NewDesc("cairn_store_cleaner_cpu_seconds_total", "CPU time (user and system) of the cleaner's copies: their block reads and checks by getrusage(RUSAGE_THREAD), their appends, index updates and header scans at wall-clock time (an upper bound).", nil, nil)
	// The deep idle compaction (store/cleaner.go): emptied less appended is
	// the space it gave back, copied over that its write amplification.
	storeCleanerDeepDesc = prometheus.NewDesc("cairn_store_cleaner_deep_bytes_total", "Bytes of the cleaner's deep idle passes: live blocks copied, copy records appended, segments emptied.", []string{"what"}, nil)
	storePunchedDesc     = prometheus.NewDesc("cairn_store_punched_bytes_total", "Bytes of dead blocks punched out of segments while space was low.", nil, nil)
	storeBatchDesc       = prometheus.NewDesc("cairn_store_batch_total", "Writes the block store appended in batches (a front end's writes that arrived together), and the appends they took.", []string{"what"}, nil)
	storeRelogDesc       = prometheus.NewDesc("cairn_store_relog_total", "Unsynced segments the block store emptied by moving their live records to the head of the log (so they are deleted unwritten), and the bytes moved.", []string{"what"}, nil)
	storeLowSpaceDesc    = prometheus.NewDesc("cairn_store_low_space", "1 while the block store's file system has less free space than its reserve: writes fail with ENOSPC until space is freed.", nil, nil)

	// The node RPC server of a storage node (the calls other nodes make
	// to it; cairn_node_rpc_seconds is the calls this node makes).
	rpcServedDesc = prometheus.NewDesc("cairn_node_rpc_served_total", "Node RPC requests this storage node served: all executed, those its connection's reader executed itself (plain writes, no hand-off to a worker), and replies with an error status.", []string{"what"}, nil)
	rpcConnsDesc  = prometheus.NewDesc("cairn_node_rpc_server_connections_total", "Node RPC connections to this storage node: served (handshake errors included), refused at once (too many), and of the served those that failed the TLS or Hello handshake.", []string{"what"}, nil)
)

func (c *daemonCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{inflightDesc, inflightPeakDesc, budgetDesc, budgetWaitDesc, connsDesc, disconnectsDesc, gossipDesc, gossipDropDesc, memReleaseDesc,
		storeBytesDesc, storeSegmentsDesc, storeGCDesc, storeReclaimDesc, storeCleanerDesc, storeDefragDesc, storeReusedDesc, storePunchedDesc, storeLowSpaceDesc, storeBatchDesc, storeRelogDesc,
		storeCleanerReadDesc, storeCleanerWrittenDesc, storeCleanerSegmentsDesc, storeCleanerCPUDesc, storeCleanerDeepDesc, rpcServedDesc, rpcConnsDesc} {
		ch <- d
	}
}

func (c *daemonCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	if b := d.budget; b != nil {
		ch <- prometheus.MustNewConstMetric(inflightDesc, prometheus.GaugeValue, float64(b.InUse()))
		ch <- prometheus.MustNewConstMetric(inflightPeakDesc, prometheus.GaugeValue, float64(b.Peak()))
		ch <- prometheus.MustNewConstMetric(budgetDesc, prometheus.GaugeValue, float64(b.Max()))
		ch <- prometheus.MustNewConstMetric(budgetWaitDesc, prometheus.GaugeValue, float64(b.Waiting()))
	}
	if d.memory != nil {
		ch <- prometheus.MustNewConstMetric(memReleaseDesc, prometheus.CounterValue, float64(d.memory.releases.Load()))
	}
	frontend := func(name string, conns int, disc map[string]uint64) {
		ch <- prometheus.MustNewConstMetric(connsDesc, prometheus.GaugeValue, float64(conns), name)
		for reason, n := range disc {
			ch <- prometheus.MustNewConstMetric(disconnectsDesc, prometheus.CounterValue, float64(n), name, reason)
		}
	}
	if d.nbd != nil {
		st := d.nbd.Stats()
		frontend("nbd", st.Connections, st.Disconnects)
	}
	if d.iscsi != nil {
		st := d.iscsi.Stats()
		frontend("iscsi", st.Connections, st.Disconnects)
	}
	if d.gossip != nil {
		st := d.gossip.Stats()
		ch <- prometheus.MustNewConstMetric(gossipDesc, prometheus.GaugeValue, float64(st.Alive), "alive")
		ch <- prometheus.MustNewConstMetric(gossipDesc, prometheus.GaugeValue, float64(st.Dead), "dead")
		ch <- prometheus.MustNewConstMetric(gossipDesc, prometheus.GaugeValue, float64(st.Left), "left")
		ch <- prometheus.MustNewConstMetric(gossipDropDesc, prometheus.CounterValue, float64(st.EventsDropped))
	}
	if d.rpc != nil {
		st := d.rpc.Stats()
		for _, m := range []struct {
			desc  *prometheus.Desc
			n     uint64
			label string
		}{
			{rpcServedDesc, st.Requests, "requests"}, {rpcServedDesc, st.Inlined, "inlined"}, {rpcServedDesc, st.ErrorReplies, "error_replies"},
			{rpcConnsDesc, st.Connections, "served"}, {rpcConnsDesc, st.Refused, "refused"}, {rpcConnsDesc, st.HandshakeErrors, "handshake_errors"},
		} {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.n), m.label)
		}
	}
	if d.store != nil {
		st := d.store.Stats()
		ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(st.SegmentBytes), "segments")
		ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(st.LiveBytes), "live")
		ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(st.IndexBytes), "index")
		ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(st.SpareBytes), "spare")
		ch <- prometheus.MustNewConstMetric(storeReusedDesc, prometheus.CounterValue, float64(st.SegmentsReused))
		ch <- prometheus.MustNewConstMetric(storeSegmentsDesc, prometheus.GaugeValue, float64(st.Segments))
		ch <- prometheus.MustNewConstMetric(storeGCDesc, prometheus.CounterValue, float64(st.GCVersionsDropped), "versions")
		ch <- prometheus.MustNewConstMetric(storeGCDesc, prometheus.CounterValue, float64(st.GCBytesDropped), "bytes")
		ch <- prometheus.MustNewConstMetric(storeReclaimDesc, prometheus.CounterValue, float64(st.BytesReclaimed))
		ch <- prometheus.MustNewConstMetric(storeCleanerDesc, prometheus.CounterValue, float64(st.CleanerBytes))
		ch <- prometheus.MustNewConstMetric(storeDefragDesc, prometheus.CounterValue, float64(st.DefragBytes))
		ch <- prometheus.MustNewConstMetric(storeCleanerReadDesc, prometheus.CounterValue, float64(st.CleanerReadBytes))
		ch <- prometheus.MustNewConstMetric(storeCleanerWrittenDesc, prometheus.CounterValue, float64(st.CleanerAppendedBytes))
		ch <- prometheus.MustNewConstMetric(storeCleanerSegmentsDesc, prometheus.CounterValue, float64(st.SegmentsCleaned))
		ch <- prometheus.MustNewConstMetric(storeCleanerCPUDesc, prometheus.CounterValue, st.CleanerCPU.Seconds())
		ch <- prometheus.MustNewConstMetric(storeCleanerDeepDesc, prometheus.CounterValue, float64(st.CleanerDeepCopiedBytes), "copied")
		ch <- prometheus.MustNewConstMetric(storeCleanerDeepDesc, prometheus.CounterValue, float64(st.CleanerDeepAppendedBytes), "appended")
		ch <- prometheus.MustNewConstMetric(storeCleanerDeepDesc, prometheus.CounterValue, float64(st.CleanerDeepEmptiedBytes), "emptied")
		ch <- prometheus.MustNewConstMetric(storePunchedDesc, prometheus.CounterValue, float64(st.BytesPunched))
		ch <- prometheus.MustNewConstMetric(storeBatchDesc, prometheus.CounterValue, float64(st.BatchWrites), "writes")
		ch <- prometheus.MustNewConstMetric(storeBatchDesc, prometheus.CounterValue, float64(st.BatchTurns), "appends")
		ch <- prometheus.MustNewConstMetric(storeRelogDesc, prometheus.CounterValue, float64(st.SegmentsRelogged), "segments")
		ch <- prometheus.MustNewConstMetric(storeRelogDesc, prometheus.CounterValue, float64(st.RelogBytes), "bytes")
		low := 0.0
		if st.LowSpace {
			low = 1
		}
		ch <- prometheus.MustNewConstMetric(storeLowSpaceDesc, prometheus.GaugeValue, low)
	}
}
