package cluster

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// lineageFSM is an FSM with two storage nodes, volume a (R=1) attached to
// t1 with two sealed snapshots s1 (epoch 1) and s2 (epoch 2), and a step
// function that checks every command's result and the invariants after
// it.
func lineageFSM(t *testing.T) (*fsm, func(o op, args any, want error) outcome) {
	t.Helper()
	f := newFSM()
	step := func(o op, args any, want error) outcome {
		t.Helper()
		r := f.Apply(rlog(mustEncode(t, o, args))).(result)
		if !errors.Is(r.err, want) || (want == nil) != (r.err == nil) {
			t.Fatalf("%s %+v: %v, want %v", o, args, r.err, want)
		}
		f.mu.RLock()
		defer f.mu.RUnlock()
		if err := f.mu.st.check(); err != nil {
			t.Fatalf("invariant after %s: %v", o, err)
		}
		return r.out
	}
	step(opRegisterNode, registerNodeArgs{Name: "n1"}, nil)
	step(opRegisterNode, registerNodeArgs{Name: "n2"}, nil)
	step(opCreateVolume, createVolumeArgs{Name: "a", Size: 1 << 30, Replicas: 1, Created: t0, ChunkSize: 256 << 10, Target: "t1"}, nil)
	for _, name := range []string{"s1", "s2"} {
		sn := step(opReserveSnapshot, reserveSnapshotArgs{Group: "a", Name: name, Created: t0}, nil).Snapshot
		step(opEndSnapshot, endSnapshotArgs{ID: sn.ID, State: SnapshotSealed}, nil)
	}
	return f, step
}

// TestFSMFork: a fork takes its parent's geometry and placement (key,
// set), points at the snapshot's epoch, is in no group, keeps that epoch
// retained on its parent, and blocks the deletion of the snapshot and of
// the parent, naming itself; forks of forks are bounded in depth.
func TestFSMFork(t *testing.T) {
	f, step := lineageFSM(t)
	a, _ := f.volume("a")
	step(opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "nope", Name: "f", Created: t0}, ErrNotFound)
	step(opForkVolume, forkVolumeArgs{Volume: "zz", Snapshot: "s1", Name: "f", Created: t0}, ErrNotFound)
	step(opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "s1", Name: "a", Created: t0}, ErrExists)
	step(opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "s1", Name: "Bad!", Created: t0}, ErrInvalid)
	pend := step(opReserveSnapshot, reserveSnapshotArgs{Group: "a", Name: "p", Created: t0}, nil).Snapshot
	step(opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "p", Name: "f", Created: t0}, ErrInvalid) // pending
	step(opEndSnapshot, endSnapshotArgs{ID: pend.ID, State: SnapshotFailed}, nil)

	fk := step(opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "s1", Name: "f", Created: t0, Target: "t2"}, nil).Volume
	if fk.Size != a.Size || fk.ChunkSize != a.ChunkSize || fk.Replicas != a.Replicas || fk.BlockSize != a.BlockSize ||
		!reflect.DeepEqual(fk.Placement, a.Placement) || fk.PlacementKey != a.ID {
		t.Fatalf("fork %+v does not inherit the geometry and placement of %+v", fk, a)
	}
	if fk.ID == a.ID || fk.Epoch != 1 || fk.AttachedTo != "t2" || fk.Generation != 1 {
		t.Fatalf("fork record %+v", fk)
	}
	if l := fk.Lineage; l.Parent != a.ID || l.ParentName != "a" || l.ParentEpoch != 1 || l.Version != 1 {
		t.Fatalf("fork lineage %+v", l)
	}
	pa, pf := NewPlacer(a), NewPlacer(fk)
	for c := range uint64(64) {
		if x, y := pa.Replicas(c, nil), pf.Replicas(c, nil); !reflect.DeepEqual(x, y) {
			t.Fatalf("chunk %d: parent on %v, fork on %v", c, x, y)
		}
	}
	if f.groups() != nil && len(f.groups()) != 0 {
		t.Fatalf("fork made a group: %+v", f.groups())
	}
	if got := f.retained()[a.ID]; !reflect.DeepEqual(got, []uint64{1, 2}) {
		t.Fatalf("retained of the parent %v, want [1 2] (s1 is also the fork's base, once)", got)
	}

	// A fork of the fork's own snapshot falls through twice; the depth
	// is bounded.
	sf := step(opReserveSnapshot, reserveSnapshotArgs{Group: "f", Name: "fs", Created: t0}, nil).Snapshot
	step(opEndSnapshot, endSnapshotArgs{ID: sf.ID, State: SnapshotSealed}, nil)
	ff := step(opForkVolume, forkVolumeArgs{Volume: "f", Snapshot: "fs", Name: "ff", Created: t0}, nil).Volume
	if ff.Lineage.Parent != fk.ID || ff.PlacementKey != a.ID || ff.AttachedTo != "" {
		t.Fatalf("fork of a fork: %+v", ff)
	}
	f.mu.RLock()
	depth := f.mu.st.depth(ff)
	f.mu.RUnlock()
	if depth != 2 {
		t.Fatalf("depth %d, want 2", depth)
	}

	// Dependents block deletion, and the error names them.
	s1 := findSnap(t, f, "a", "s1")
	r := f.Apply(rlog(mustEncode(t, opDeleteSnapshot, deleteSnapshotArgs{ID: s1.ID}))).(result)
	if !errors.Is(r.err, ErrBusy) || !strings.Contains(r.err.Error(), `"f"`) && !strings.Contains(r.err.Error(), " f:") {
		t.Fatalf("delete of a forked snapshot: %v, want ErrBusy naming f", r.err)
	}
	r = f.Apply(rlog(mustEncode(t, opDeleteVolume, deleteVolumeArgs{"a"}))).(result)
	if !errors.Is(r.err, ErrBusy) || !strings.Contains(r.err.Error(), "f") {
		t.Fatalf("delete of a forked volume: %v, want ErrBusy naming f", r.err)
	}
	step(opDeleteVolume, deleteVolumeArgs{"f"}, ErrBusy) // ff reads through it
	step(opDeleteSnapshot, deleteSnapshotArgs{ID: findSnap(t, f, "a", "s2").ID}, nil)
	step(opDeleteVolume, deleteVolumeArgs{"ff"}, nil)
	step(opDeleteVolume, deleteVolumeArgs{"f"}, nil)
	step(opDeleteSnapshot, deleteSnapshotArgs{ID: s1.ID}, nil)
	step(opDeleteVolume, deleteVolumeArgs{"a"}, nil)
}

func TestFSMForkDepth(t *testing.T) {
	f, step := lineageFSM(t)
	parent, snap := "a", "s1"
	for i := range lineageDepthMax + 1 {
		name := "f" + string(rune('a'+i))
		want := error(nil)
		if i == lineageDepthMax {
			want = ErrInvalid
		}
		step(opForkVolume, forkVolumeArgs{Volume: parent, Snapshot: snap, Name: name, Created: t0}, want)
		if want != nil {
			break
		}
		sn := step(opReserveSnapshot, reserveSnapshotArgs{Group: name, Name: "s", Created: t0}, nil).Snapshot
		step(opEndSnapshot, endSnapshotArgs{ID: sn.ID, State: SnapshotSealed}, nil)
		parent, snap = name, "s"
	}
	_ = f
}

func findSnap(t *testing.T, f *fsm, vol, name string) Snapshot {
	t.Helper()
	v, _ := f.volume(vol)
	for _, sn := range f.snapshots() {
		if sn.Name == name && sn.has(v.ID) {
			return sn
		}
	}
	t.Fatalf("no snapshot %s of %s", name, vol)
	return Snapshot{}
}

// TestFSMRollback: refused while attached unless forced; appends
// {From: snapshot epoch, To: group epoch}, raises the epoch of the whole
// group past To, bumps the generation of an attached volume and the
// lineage version; snapshots in between keep their epochs retained and
// so does From.
func TestFSMRollback(t *testing.T) {
	f, step := lineageFSM(t)
	step(opCreateVolume, createVolumeArgs{Name: "b", Size: 1 << 20, Replicas: 1, Created: t0}, nil)
	step(opCreateGroup, createGroupArgs{Name: "g", Volumes: []string{"a", "b"}}, nil)
	a, _ := f.volume("a")
	if a.Epoch != 3 {
		t.Fatalf("epoch %d, want 3", a.Epoch)
	}
	step(opRollbackVolume, rollbackVolumeArgs{Name: "a", Snapshot: "s1"}, ErrBusy) // attached to t1
	step(opRollbackVolume, rollbackVolumeArgs{Name: "a", Snapshot: "nope", Force: true}, ErrNotFound)
	step(opRollbackVolume, rollbackVolumeArgs{Name: "zz", Snapshot: "s1", Force: true}, ErrNotFound)
	got := step(opRollbackVolume, rollbackVolumeArgs{Name: "a", Snapshot: "s1", Force: true}, nil).Volume
	if want := []Rollback{{From: 1, To: 3}}; !reflect.DeepEqual(got.Lineage.Rollbacks, want) {
		t.Fatalf("rollbacks %+v, want %+v", got.Lineage.Rollbacks, want)
	}
	if got.Epoch != 4 || got.Generation != a.Generation+1 || got.AttachedTo != "t1" || got.Lineage.Version != 1 {
		t.Fatalf("after rollback: %+v", got)
	}
	if b, _ := f.volume("b"); b.Epoch != 4 {
		t.Fatalf("group member b at epoch %d, want 4", b.Epoch)
	}
	// An unattached volume needs no force; a second rollback orders
	// after the first.
	step(opRollbackVolume, rollbackVolumeArgs{Name: "b", Snapshot: "s1"}, ErrNotFound) // s1 is a's alone
	sn := step(opReserveSnapshot, reserveSnapshotArgs{Group: "g", Name: "s3", Created: t0}, nil).Snapshot
	step(opEndSnapshot, endSnapshotArgs{ID: sn.ID, State: SnapshotSealed}, nil)
	got = step(opRollbackVolume, rollbackVolumeArgs{Name: "b", Snapshot: "s3"}, nil).Volume
	if want := []Rollback{{From: 4, To: 5}}; !reflect.DeepEqual(got.Lineage.Rollbacks, want) || got.Generation != 0 {
		t.Fatalf("b after rollback: %+v", got)
	}
	got = step(opRollbackVolume, rollbackVolumeArgs{Name: "a", Snapshot: "s2", Force: true}, nil).Volume
	if want := []Rollback{{From: 1, To: 3}, {From: 2, To: 6}}; !reflect.DeepEqual(got.Lineage.Rollbacks, want) || got.Lineage.Version != 2 {
		t.Fatalf("second rollback: %+v", got.Lineage)
	}
	// Deleting s1 and s2 keeps their epochs retained: the live volume
	// reads through them.
	step(opDeleteSnapshot, deleteSnapshotArgs{ID: findSnap(t, f, "a", "s1").ID}, nil)
	step(opDeleteSnapshot, deleteSnapshotArgs{ID: findSnap(t, f, "a", "s2").ID}, nil)
	if r := f.retained()[a.ID]; !reflect.DeepEqual(r, []uint64{1, 2, 4}) {
		t.Fatalf("retained %v, want [1 2 4]", r)
	}
	// Snapshot and restore keep lineages.
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	g := newFSM()
	restoreFrom(t, g, snap)
	if !reflect.DeepEqual(g.volumes(), f.volumes()) {
		t.Fatal("restore lost lineage")
	}
}

// TestFSMFlatten: only a fork flattens; reports come from holders only;
// the last holder's finished report completes it and clears the parent,
// after which the snapshot and the parent may be deleted. Lineage
// reports advance per node and make the volume ready once all holders
// hold the current version.
func TestFSMFlatten(t *testing.T) {
	f, step := lineageFSM(t)
	step(opFlattenVolume, flattenVolumeArgs{Name: "a", Requested: t0}, ErrInvalid) // not a fork
	// R=1 over n1, n2: both hold chunks of a 1 GiB volume.
	step(opCreateVolume, createVolumeArgs{Name: "w", Size: 1 << 30, Replicas: 1, Created: t0, ChunkSize: 256 << 10}, nil)
	sn := step(opReserveSnapshot, reserveSnapshotArgs{Group: "w", Name: "ws", Created: t0}, nil).Snapshot
	step(opEndSnapshot, endSnapshotArgs{ID: sn.ID, State: SnapshotSealed}, nil)
	fk := step(opForkVolume, forkVolumeArgs{Volume: "w", Snapshot: "ws", Name: "f", Created: t0}, nil).Volume
	if h := fk.Holders(); !reflect.DeepEqual(h, []string{"n1", "n2"}) {
		t.Fatalf("holders %v", h)
	}
	if ok, behind := fk.LineageReady(); ok || !reflect.DeepEqual(behind, []string{"n1", "n2"}) {
		t.Fatalf("ready %v behind %v, want neither node ready", ok, behind)
	}
	step(opLineageApplied, lineageAppliedArgs{Name: "f", ID: fk.ID, Node: "n1", Version: 2}, ErrInvalid) // from the future
	step(opLineageApplied, lineageAppliedArgs{Name: "f", ID: fk.ID, Node: "n3", Version: 1}, ErrInvalid) // not a holder
	step(opLineageApplied, lineageAppliedArgs{Name: "f", ID: fk.ID + 99, Node: "n1", Version: 1}, ErrNotFound)
	step(opLineageApplied, lineageAppliedArgs{Name: "f", ID: fk.ID, Node: "n1", Version: 1}, nil)
	v := step(opLineageApplied, lineageAppliedArgs{Name: "f", ID: fk.ID, Node: "n2", Version: 1}, nil).Volume
	if ok, _ := v.LineageReady(); !ok {
		t.Fatalf("not ready after both reports: %+v", v.Lineage)
	}

	rep := func(node string, done, total uint64, fin bool, want error) Volume {
		t.Helper()
		return step(opFlattenReport, flattenReportArgs{Name: "f", ID: fk.ID, Node: node, Done: done, Total: total, Finished: fin, Updated: t0.Add(time.Minute)}, want).Volume
	}
	rep("n1", 1, 2, false, ErrInvalid) // none requested
	step(opFlattenVolume, flattenVolumeArgs{Name: "f", Requested: t0}, nil)
	step(opFlattenVolume, flattenVolumeArgs{Name: "f", Requested: t0.Add(time.Hour)}, nil) // idempotent
	if v, _ := f.volume("f"); !v.Flatten.Requested.Equal(t0) {
		t.Fatalf("second request restarted the flatten: %+v", v.Flatten)
	}
	fs := step(opReserveSnapshot, reserveSnapshotArgs{Group: "f", Name: "fs", Created: t0}, nil).Snapshot
	step(opEndSnapshot, endSnapshotArgs{ID: fs.ID, State: SnapshotSealed}, nil)
	step(opRollbackVolume, rollbackVolumeArgs{Name: "f", Snapshot: "fs"}, ErrBusy) // flattening
	rep("n1", 3, 2, false, ErrInvalid)
	rep("n9", 1, 2, false, ErrInvalid)
	rep("n1", 1, 4, false, nil)
	v = rep("n1", 4, 4, true, nil)
	if d, tot, done := v.Flatten.Progress(); d != 4 || tot != 4 || done || v.Lineage.Parent == 0 {
		t.Fatalf("one holder of two finished: %d/%d complete %v parent %d", d, tot, done, v.Lineage.Parent)
	}
	step(opDeleteSnapshot, deleteSnapshotArgs{ID: sn.ID}, ErrBusy)
	v = rep("n2", 6, 6, true, nil)
	if d, tot, done := v.Flatten.Progress(); d != 10 || tot != 10 || !done {
		t.Fatalf("both finished: %d/%d complete %v", d, tot, done)
	}
	if v.Lineage.Parent != 0 || v.Lineage.Version != 2 {
		t.Fatalf("parent not cleared: %+v", v.Lineage)
	}
	if ok, _ := v.LineageReady(); ok {
		t.Fatal("ready before the nodes applied the cleared lineage")
	}
	if r := f.retained()[findVol(t, f, "w").ID]; !reflect.DeepEqual(r, []uint64{sn.Epoch}) {
		t.Fatalf("retained of the parent %v, want only its snapshot", r)
	}
	rep("n2", 6, 6, true, ErrInvalid)                                              // complete: no more reports
	step(opFlattenVolume, flattenVolumeArgs{Name: "f", Requested: t0}, ErrInvalid) // flattened
	step(opDeleteSnapshot, deleteSnapshotArgs{ID: sn.ID}, nil)
	if r := f.retained()[findVol(t, f, "w").ID]; len(r) != 0 {
		t.Fatalf("retained of the parent %v after its snapshot went", r)
	}
	step(opDeleteVolume, deleteVolumeArgs{"w"}, nil)
	step(opRollbackVolume, rollbackVolumeArgs{Name: "f", Snapshot: "fs"}, nil) // flattened: free to roll back
}

func findVol(t *testing.T, f *fsm, name string) Volume {
	t.Helper()
	v, ok := f.volume(name)
	if !ok {
		t.Fatalf("no volume %s", name)
	}
	return v
}

// TestVolumeCopies: the records the catalog hands out share no map or
// slice with its state.
func TestVolumeCopies(t *testing.T) {
	f, step := lineageFSM(t)
	fk := step(opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "s1", Name: "f", Created: t0}, nil).Volume
	fk.Lineage.Applied = map[string]uint64{"x": 1}
	v := findVol(t, f, "f")
	v.Placement[0].Node = "mutated"
	if w := findVol(t, f, "f"); w.Placement[0].Node == "mutated" || w.Lineage.Applied != nil {
		t.Fatalf("a caller's copy changed the state: %+v", w)
	}
}

// TestFSMRestoreRejectsLineage: a snapshot whose lineage breaks the
// invariants is refused.
func TestFSMRestoreRejectsLineage(t *testing.T) {
	f, step := lineageFSM(t)
	step(opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "s1", Name: "f", Created: t0}, nil)
	for name, edit := range map[string]func(*state){
		"dangling parent": func(s *state) { v := s.Volumes["f"]; v.Lineage.Parent = 999; s.Volumes["f"] = v },
		"wrong epoch":     func(s *state) { v := s.Volumes["f"]; v.Lineage.ParentEpoch = 2; s.Volumes["f"] = v },
		"placement":       func(s *state) { v := s.Volumes["f"]; v.PlacementKey = 77; s.Volumes["f"] = v },
		"rollback order": func(s *state) {
			v := s.Volumes["a"]
			v.Lineage = Lineage{Rollbacks: []Rollback{{From: 2, To: 1}}, Version: 1}
			s.Volumes["a"] = v
		},
		"rollback future": func(s *state) {
			v := s.Volumes["a"]
			v.Lineage = Lineage{Rollbacks: []Rollback{{From: 1, To: v.Epoch}}, Version: 1}
			s.Volumes["a"] = v
		},
		"version 0": func(s *state) { v := s.Volumes["f"]; v.Lineage.Version = 0; s.Volumes["f"] = v },
		"applied": func(s *state) {
			v := s.Volumes["f"]
			v.Lineage.Applied = map[string]uint64{"n1": 5}
			s.Volumes["f"] = v
		},
		"flatten done": func(s *state) {
			v := s.Volumes["f"]
			v.Flatten = &Flatten{Requested: t0, Completed: t0}
			s.Volumes["f"] = v
		},
	} {
		f.mu.RLock()
		st := f.mu.st
		data, err := encodeState(&st)
		f.mu.RUnlock()
		if err != nil {
			t.Fatal(err)
		}
		s, err := decodeState(strings.NewReader(string(data)))
		if err != nil {
			t.Fatal(err)
		}
		edit(&s)
		if err := s.check(); err == nil {
			t.Errorf("%s: check accepted the state", name)
		}
	}
}
