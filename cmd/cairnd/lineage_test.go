package main

import (
	"testing"
	"time"

	"cairn/cluster"
)

// TestFlattenStatus: the admin view of a flatten sums the holders'
// reports, gives a percent only once every holder has reported, and an
// ETA from the rate since the request (-1 while unknown).
func TestFlattenStatus(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	two := []cluster.Member{{Node: "n1"}, {Node: "n2"}}
	fork := cluster.Volume{Name: "f", Placement: two, Lineage: cluster.Lineage{Parent: 1, ParentName: "p", Version: 1}}
	with := func(f *cluster.Flatten) cluster.Volume { v := fork; v.Flatten = f; return v }
	for _, c := range []struct {
		name    string
		v       cluster.Volume
		state   string
		percent float64
		eta     float64
	}{
		{"none", fork, "none", 0, -1},
		{"requested", with(&cluster.Flatten{Requested: t0}), "running", 0, -1},
		{"one of two reported", with(&cluster.Flatten{Requested: t0, Nodes: map[string]cluster.FlattenNode{
			"n1": {Done: 50, Total: 100}}}), "running", 0, -1},
		{"both reported", with(&cluster.Flatten{Requested: t0, Nodes: map[string]cluster.FlattenNode{
			"n1": {Done: 50, Total: 100}, "n2": {Done: 25, Total: 100}}}), "running", 37.5, 10 * 125 / 75.0},
		{"nothing done yet", with(&cluster.Flatten{Requested: t0, Nodes: map[string]cluster.FlattenNode{
			"n1": {Total: 100}, "n2": {Total: 100}}}), "running", 0, -1},
		{"complete", with(&cluster.Flatten{Requested: t0, Completed: t0.Add(time.Second), Nodes: map[string]cluster.FlattenNode{
			"n1": {Done: 100, Total: 100, Finished: true}, "n2": {Done: 100, Total: 100, Finished: true}}}), "complete", 100, 0},
	} {
		st := flattenStatus(c.v, t0.Add(10*time.Second))
		if st.State != c.state || st.Percent != c.percent || st.ETASeconds != c.eta {
			t.Errorf("%s: state %s, %v%%, eta %v; want %s, %v%%, eta %v", c.name, st.State, st.Percent, st.ETASeconds, c.state, c.percent, c.eta)
		}
		if c.state == "running" && st.Parent != "p" {
			t.Errorf("%s: parent %q while running", c.name, st.Parent)
		}
	}
}
