package cluster

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
)

// TestExcludeReplica: a target of the current generation takes failed
// replicas out, once each, never the last one of a chunk; a fenced target
// cannot; the stale list survives a snapshot and restore of the FSM.
func TestExcludeReplica(t *testing.T) {
	f := newFSM()
	for _, n := range []string{"n1", "n2", "n3"} {
		if _, err := applyTo(t, f, mustEncode(t, opRegisterNode, registerNodeArgs{Name: n})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := applyTo(t, f, mustEncode(t, opCreateVolume, createVolumeArgs{Name: "a", Size: 1 << 30, Replicas: 3, Created: t0, Target: "n1"})); err != nil {
		t.Fatal(err)
	}
	if _, err := applyTo(t, f, mustEncode(t, opCreateVolume, createVolumeArgs{Name: "one", Size: 1 << 30, Replicas: 1, Created: t0, Target: "n1"})); err != nil {
		t.Fatal(err)
	}
	for i, s := range []struct {
		args  excludeReplicaArgs
		err   error
		stale []string
	}{
		{excludeReplicaArgs{"zz", "n2", 1}, ErrNotFound, nil},
		{excludeReplicaArgs{"a", "n9", 1}, ErrInvalid, nil},
		{excludeReplicaArgs{"a", "n2", 0}, ErrStaleAttachment, nil},
		{excludeReplicaArgs{"a", "n2", 2}, ErrInvalid, nil},
		{excludeReplicaArgs{"a", "n2", 1}, nil, []string{"n2"}},
		{excludeReplicaArgs{"a", "n2", 1}, nil, []string{"n2"}}, // again: no change
		{excludeReplicaArgs{"a", "n1", 1}, nil, []string{"n1", "n2"}},
		{excludeReplicaArgs{"a", "n3", 1}, ErrLastReplica, []string{"n1", "n2"}},
		{excludeReplicaArgs{"one", "n1", 1}, ErrLastReplica, nil},
	} {
		_, err := applyTo(t, f, mustEncode(t, opExcludeReplica, s.args))
		if !errors.Is(err, s.err) || (s.err == nil) != (err == nil) {
			t.Fatalf("step %d %+v: %v, want %v", i, s.args, err, s.err)
		}
		f.mu.RLock()
		got := f.mu.st.Volumes[s.args.Name].Stale
		f.mu.RUnlock()
		if s.args.Name == "a" && !slices.Equal(got, s.stale) {
			t.Fatalf("step %d: stale %v, want %v", i, got, s.stale)
		}
	}
	// A move to another target bumps the generation: the old one is fenced.
	if _, err := applyTo(t, f, mustEncode(t, opAttach, attachArgs{"a", "n3"})); err != nil {
		t.Fatal(err)
	}
	if _, err := applyTo(t, f, mustEncode(t, opExcludeReplica, excludeReplicaArgs{"one", "n1", 1})); !errors.Is(err, ErrLastReplica) {
		t.Fatalf("R=1 exclusion: %v", err)
	}
	if _, err := applyTo(t, f, mustEncode(t, opExcludeReplica, excludeReplicaArgs{"a", "n3", 1})); !errors.Is(err, ErrStaleAttachment) {
		t.Fatalf("fenced target's exclusion: %v", err)
	}
	g := newFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	if got := g.mu.st.Volumes["a"].Stale; !slices.Equal(got, []string{"n1", "n2"}) {
		t.Fatalf("stale after snapshot and restore: %v", got)
	}
}

// TestForkKeepsStale: a fork of a degraded volume reads through to its
// parent's replicas, so it leaves out the ones the parent left out.
func TestForkKeepsStale(t *testing.T) {
	f := newFSM()
	for _, n := range []string{"n1", "n2", "n3"} {
		if _, err := applyTo(t, f, mustEncode(t, opRegisterNode, registerNodeArgs{Name: n})); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		o    op
		args any
	}{
		{opCreateVolume, createVolumeArgs{Name: "a", Size: 1 << 30, Replicas: 3, Created: t0, Target: "n1"}},
		{opExcludeReplica, excludeReplicaArgs{"a", "n2", 1}},
		{opReserveSnapshot, reserveSnapshotArgs{Group: "a", Name: "s", Created: t0}},
	}
	var sn Snapshot
	for _, s := range steps {
		r := f.Apply(rlog(mustEncode(t, s.o, s.args))).(result)
		if r.err != nil {
			t.Fatalf("%s: %v", s.o, r.err)
		}
		sn = r.out.Snapshot
	}
	if _, err := applyTo(t, f, mustEncode(t, opEndSnapshot, endSnapshotArgs{ID: sn.ID, State: SnapshotSealed})); err != nil {
		t.Fatal(err)
	}
	fork, err := applyTo(t, f, mustEncode(t, opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "s", Name: "f", Created: t0}))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fork.Stale, []string{"n2"}) {
		t.Fatalf("fork's stale replicas %v, want [n2]", fork.Stale)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.mu.st.check(); err != nil {
		t.Fatal(err)
	}
}

// TestIncludeReplica: a target of the current generation takes a caught-up
// replica back (again: no change); a fenced target, an unknown volume or
// a node outside the placement cannot; after it, the node may be taken
// out again.
func TestIncludeReplica(t *testing.T) {
	f := newFSM()
	for _, n := range []string{"n1", "n2", "n3"} {
		if _, err := applyTo(t, f, mustEncode(t, opRegisterNode, registerNodeArgs{Name: n})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := applyTo(t, f, mustEncode(t, opCreateVolume, createVolumeArgs{Name: "a", Size: 1 << 30, Replicas: 3, Created: t0, Target: "n1"})); err != nil {
		t.Fatal(err)
	}
	if _, err := applyTo(t, f, mustEncode(t, opExcludeReplica, excludeReplicaArgs{"a", "n2", 1})); err != nil {
		t.Fatal(err)
	}
	for i, s := range []struct {
		args  includeReplicaArgs
		err   error
		stale []string
	}{
		{includeReplicaArgs{"zz", "n2", 1}, ErrNotFound, []string{"n2"}},
		{includeReplicaArgs{"a", "n9", 1}, ErrInvalid, []string{"n2"}},
		{includeReplicaArgs{"a", "n2", 0}, ErrStaleAttachment, []string{"n2"}},
		{includeReplicaArgs{"a", "n2", 2}, ErrInvalid, []string{"n2"}},
		{includeReplicaArgs{"a", "n2", 1}, nil, nil},
		{includeReplicaArgs{"a", "n2", 1}, nil, nil}, // again: no change
	} {
		_, err := applyTo(t, f, mustEncode(t, opIncludeReplica, s.args))
		if !errors.Is(err, s.err) || (s.err == nil) != (err == nil) {
			t.Fatalf("step %d %+v: %v, want %v", i, s.args, err, s.err)
		}
		f.mu.RLock()
		got := f.mu.st.Volumes["a"].Stale
		f.mu.RUnlock()
		if !slices.Equal(got, s.stale) {
			t.Fatalf("step %d: stale %v, want %v", i, got, s.stale)
		}
	}
	if _, err := applyTo(t, f, mustEncode(t, opExcludeReplica, excludeReplicaArgs{"a", "n3", 1})); err != nil {
		t.Fatalf("exclude after the include: %v", err)
	}
}
