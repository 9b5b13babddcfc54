package cluster

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
)

// TestFSMSnapshots: groups share an epoch; a reservation raises it and
// records the epoch before; seal and fail end a pending snapshot once;
// retained epochs list pending and sealed ones; deleting a volume deletes
// its snapshots and leaves its group.
func TestFSMSnapshots(t *testing.T) {
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
	for _, v := range []string{"a", "b", "c"} {
		step(opCreateVolume, createVolumeArgs{v, 1 << 20, 1, t0, 0, 0, ""}, nil)
	}
	s1 := step(opReserveSnapshot, reserveSnapshotArgs{Group: "a", Name: "s1", Created: t0}, nil).Snapshot
	if s1.Epoch != 1 || s1.State != SnapshotPending || len(s1.Volumes) != 1 {
		t.Fatalf("first snapshot of a: %+v", s1)
	}
	step(opReserveSnapshot, reserveSnapshotArgs{Group: "a", Name: "s1", Created: t0}, ErrExists)
	step(opCreateGroup, createGroupArgs{Name: "g", Volumes: []string{"b", "a"}}, nil)
	if a, b := f.mu.st.Volumes["a"].Epoch, f.mu.st.Volumes["b"].Epoch; a != 2 || b != 2 {
		t.Fatalf("group epochs %d %d, want both raised to 2", a, b)
	}
	step(opCreateGroup, createGroupArgs{Name: "h", Volumes: []string{"a"}}, ErrInvalid) // a is in g
	step(opCreateGroup, createGroupArgs{Name: "c", Volumes: []string{"c"}}, ErrExists)  // a volume's name
	step(opCreateGroup, createGroupArgs{Name: "h", Volumes: []string{"zz"}}, ErrNotFound)
	step(opReserveSnapshot, reserveSnapshotArgs{Group: "a", Name: "x", Created: t0}, ErrInvalid) // snapshot the group
	s2 := step(opReserveSnapshot, reserveSnapshotArgs{Group: "g", Name: "s2", Created: t0}, nil).Snapshot
	if s2.Epoch != 2 || len(s2.Volumes) != 2 || f.mu.st.Volumes["a"].Epoch != 3 || f.mu.st.Volumes["b"].Epoch != 3 {
		t.Fatalf("group snapshot: %+v", s2)
	}
	step(opEndSnapshot, endSnapshotArgs{ID: s1.ID, State: SnapshotSealed}, nil)
	step(opEndSnapshot, endSnapshotArgs{ID: s1.ID, State: SnapshotFailed}, ErrInvalid) // already ended
	step(opEndSnapshot, endSnapshotArgs{ID: s2.ID, State: "done"}, ErrInvalid)
	s3 := step(opReserveSnapshot, reserveSnapshotArgs{Group: "g", Name: "s3", Created: t0}, nil).Snapshot
	step(opEndSnapshot, endSnapshotArgs{ID: s3.ID, State: SnapshotFailed, Reason: "target node2 did not answer"}, nil)
	ida, idb := f.mu.st.Volumes["a"].ID, f.mu.st.Volumes["b"].ID
	if got, want := f.retained(), map[uint64][]uint64{ida: {1, 2}, idb: {2}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("retained %v, want %v (failed snapshots retain nothing)", got, want)
	}
	// Snapshot and restore keep all of it.
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	g := newFSM()
	restoreFrom(t, g, snap)
	if !reflect.DeepEqual(g.snapshots(), f.snapshots()) || !reflect.DeepEqual(g.groups(), f.groups()) {
		t.Fatal("restore lost groups or snapshots")
	}
	step(opDeleteVolume, deleteVolumeArgs{"a"}, nil)
	if gs := f.groups(); len(gs) != 1 || !reflect.DeepEqual(gs[0].Volumes, []string{"b"}) {
		t.Fatalf("groups after deleting a: %+v", gs)
	}
	for _, sn := range f.snapshots() {
		if sn.has(ida) {
			t.Fatalf("snapshot %+v of a deleted volume kept", sn)
		}
	}
	step(opDeleteSnapshot, deleteSnapshotArgs{ID: s2.ID}, nil)
	step(opDeleteSnapshot, deleteSnapshotArgs{ID: s2.ID}, ErrNotFound)
}

func rlog(data []byte) *raft.Log { return &raft.Log{Type: raft.LogCommand, Data: data} }

// restoreFrom restores f from another FSM's snapshot, as raft would.
func restoreFrom(t *testing.T, f *fsm, snap raft.FSMSnapshot) {
	t.Helper()
	data := []byte(snap.(snapshot))
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
}
