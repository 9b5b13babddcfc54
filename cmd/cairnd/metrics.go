package main

import (
	"github.com/prometheus/client_golang/prometheus"
)

// volumeCollector exports the open volumes' counters at scrape time.
type volumeCollector struct{ d *daemon }

var (
	volOpsDesc    = prometheus.NewDesc("cairn_volume_ops_total", "Requests a volume served, by operation.", []string{"volume", "op"}, nil)
	volBytesDesc  = prometheus.NewDesc("cairn_volume_bytes_total", "Bytes a volume served, by operation.", []string{"volume", "op"}, nil)
	volErrorsDesc = prometheus.NewDesc("cairn_volume_errors_total", "Requests a volume failed.", []string{"volume"}, nil)
	volSizeDesc   = prometheus.NewDesc("cairn_volume_size_bytes", "Size of a volume.", []string{"volume"}, nil)
	nbdConnsDesc  = prometheus.NewDesc("cairn_nbd_connections", "Live NBD connections per export.", []string{"volume"}, nil)
	iscsiSessDesc = prometheus.NewDesc("cairn_iscsi_sessions", "Live iSCSI sessions per target.", []string{"volume"}, nil)
)

func (c *volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{volOpsDesc, volBytesDesc, volErrorsDesc, volSizeDesc, nbdConnsDesc, iscsiSessDesc} {
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
	}
}
