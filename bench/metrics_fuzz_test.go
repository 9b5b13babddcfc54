package bench

import "testing"

// FuzzParseMetrics: the parsers of a cairnd's /metrics text (store space,
// snapshot holds) answer any input with a value or an error, never a
// panic, and a parsed histogram's buckets are in order.
func FuzzParseMetrics(f *testing.F) {
	f.Add([]byte("cairn_store_segment_bytes 4096\ncairn_store_live_bytes 1024\n"))
	f.Add([]byte("cairn_snapshot_hold_seconds_bucket{le=\"0.0001\"} 3\ncairn_snapshot_hold_seconds_bucket{le=\"+Inf\"} 4\n" +
		"cairn_snapshot_hold_seconds_count 4\ncairn_snapshot_hold_seconds_sum 0.002\n" +
		"cairn_snapshot_holds_total{ended=\"deadline\"} 1\n"))
	f.Add([]byte("cairn_snapshot_hold_seconds_bucket{le=\"x\"} NaN\n# HELP x\n\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		_, _ = parseStoreMetrics(text)
		m, err := parseHoldMetrics(text)
		if err != nil {
			return
		}
		for i := 1; i < len(m.hist.Buckets); i++ {
			if m.hist.Buckets[i-1].LeSeconds > m.hist.Buckets[i].LeSeconds {
				t.Fatalf("buckets out of order: %v", m.hist.Buckets)
			}
		}
	})
}
