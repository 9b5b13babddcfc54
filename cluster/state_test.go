package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func mustEncode(t testing.TB, o op, args any) []byte {
	t.Helper()
	b, err := encodeCommand(o, args)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// applyTo feeds one command to f as raft would and checks the invariants.
func applyTo(t testing.TB, f *fsm, data []byte) (Volume, error) {
	t.Helper()
	r := f.Apply(&raft.Log{Type: raft.LogCommand, Data: data}).(result)
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.mu.st.check(); err != nil {
		t.Fatalf("invariant broken after %q: %v", data, err)
	}
	return r.out.Volume, r.err
}

func TestFSMApply(t *testing.T) {
	f := newFSM()
	type step struct {
		o    op
		args any
		err  error
		want Volume // when err == nil
	}
	vol := func(id uint64, name string, size int64, r int, gen uint64, node string) Volume {
		return Volume{ID: id, Name: name, Size: size, BlockSize: 4096, ChunkSize: 1 << 20, Replicas: r, Epoch: 1, Generation: gen, AttachedTo: node, Created: t0,
			Placement: []Member{{Node: "n1"}, {Node: "n2"}, {Node: "n3", Zone: "z3"}}}
	}
	for i, s := range []step{
		{opCreateVolume, createVolumeArgs{"a", 1 << 30, 1, t0, 0, 0, ""}, ErrInvalid, Volume{}}, // no storage node yet
		{opRegisterNode, registerNodeArgs{Name: "n3", Zone: "z3"}, nil, Volume{}},
		{opRegisterNode, registerNodeArgs{Name: "n2"}, nil, Volume{}},
		{opRegisterNode, registerNodeArgs{Name: "n1", Addr: "127.0.0.1:7000"}, nil, Volume{}},
		{opRegisterNode, registerNodeArgs{Name: "n 1"}, ErrInvalid, Volume{}},
		{opRegisterNode, registerNodeArgs{Name: "n4", Zone: "bad zone"}, ErrInvalid, Volume{}},
		{opSetNodeState, setNodeStateArgs{"n4", NodeOut}, ErrNotFound, Volume{}},
		{opSetNodeState, setNodeStateArgs{"n1", "gone"}, ErrInvalid, Volume{}},
		{opNodeUsage, nodeUsageArgs{"n1", 1 << 40, -1}, ErrInvalid, Volume{}},
		{opNodeUsage, nodeUsageArgs{"n1", 1 << 40, 1 << 30}, nil, Volume{}},
		{opCreateVolume, createVolumeArgs{"a", 1 << 30, 1, t0, 0, 0, ""}, nil, vol(1, "a", 1<<30, 1, 0, "")},
		{opCreateVolume, createVolumeArgs{"b", 8192, 3, t0, 0, 0, ""}, nil, vol(2, "b", 8192, 3, 0, "")},
		{opCreateVolume, createVolumeArgs{"a", 4096, 1, t0, 0, 0, ""}, ErrExists, Volume{}},
		{opCreateVolume, createVolumeArgs{"A", 4096, 1, t0, 0, 0, ""}, ErrInvalid, Volume{}},
		{opCreateVolume, createVolumeArgs{"c", 4095, 1, t0, 0, 0, ""}, ErrInvalid, Volume{}},
		{opCreateVolume, createVolumeArgs{"c", 0, 1, t0, 0, 0, ""}, ErrInvalid, Volume{}},
		{opCreateVolume, createVolumeArgs{"c", 4096, 1, t0, 1024, 0, ""}, ErrInvalid, Volume{}},
		{opCreateVolume, createVolumeArgs{"c", 65 << 40, 1, t0, 0, 0, ""}, ErrInvalid, Volume{}},
		{opCreateVolume, createVolumeArgs{"c", 4096, -1, t0, 0, 0, ""}, ErrInvalid, Volume{}},
		{opCreateVolume, createVolumeArgs{"c", 4096, 4, t0, 0, 0, ""}, ErrInvalid, Volume{}},    // 3 nodes in service
		{opCreateVolume, createVolumeArgs{"c", 4096, 1, t0, 0, 1000, ""}, ErrInvalid, Volume{}}, // chunk size
		{opCreateVolume, createVolumeArgs{"c", 4096, 1, t0, 0, 128 << 20, ""}, ErrInvalid, Volume{}},
		{opCreateVolume, createVolumeArgs{"c", 4096, 6, t0, 0, 0, ""}, ErrInvalid, Volume{}},
		{opResizeVolume, resizeVolumeArgs{"a", 2 << 30}, nil, vol(1, "a", 2<<30, 1, 0, "")},
		{opResizeVolume, resizeVolumeArgs{"a", 2 << 30}, nil, vol(1, "a", 2<<30, 1, 0, "")},
		{opResizeVolume, resizeVolumeArgs{"a", 1 << 30}, ErrShrink, Volume{}},
		{opResizeVolume, resizeVolumeArgs{"a", 3<<30 + 1}, ErrInvalid, Volume{}},
		{opResizeVolume, resizeVolumeArgs{"zz", 8192}, ErrNotFound, Volume{}},
		{opAttach, attachArgs{"a", "node1"}, nil, vol(1, "a", 2<<30, 1, 1, "node1")},
		{opAttach, attachArgs{"a", "node2"}, nil, vol(1, "a", 2<<30, 1, 2, "node2")},
		{opAttach, attachArgs{"a", ""}, ErrInvalid, Volume{}},
		{opAttach, attachArgs{"zz", "node1"}, ErrNotFound, Volume{}},
		{opDeleteVolume, deleteVolumeArgs{"b"}, nil, vol(2, "b", 8192, 3, 0, "")},
		{opDeleteVolume, deleteVolumeArgs{"b"}, ErrNotFound, Volume{}},
		// IDs are not reused after a delete.
		{opCreateVolume, createVolumeArgs{"b", 4096, 1, t0, 0, 0, ""}, nil, vol(3, "b", 4096, 1, 0, "")},
	} {
		got, err := applyTo(t, f, mustEncode(t, s.o, s.args))
		if !errors.Is(err, s.err) || (s.err != nil) != (err != nil) {
			t.Fatalf("step %d %s %+v: err %v, want %v", i, s.o, s.args, err, s.err)
		}
		if err == nil && !reflect.DeepEqual(got, s.want) {
			t.Fatalf("step %d %s: got %+v, want %+v", i, s.o, got, s.want)
		}
	}
	names := []string{}
	for _, v := range f.volumes() {
		names = append(names, v.Name)
	}
	if want := []string{"a", "b"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("volumes %q, want %q", names, want)
	}
}

func TestFSMFull(t *testing.T) {
	f := newFSM()
	f.mu.st.NextID = volumesMax + 1
	for i := range volumesMax {
		name := "v" + strconv.Itoa(i)
		f.mu.st.Volumes[name] = Volume{ID: uint64(i + 1), Name: name, Size: 4096, BlockSize: 4096, ChunkSize: 1 << 20, Replicas: 1, Epoch: 1}
	}
	if _, err := applyTo(t, f, mustEncode(t, opCreateVolume, createVolumeArgs{"one-more", 4096, 1, t0, 0, 0, ""})); !errors.Is(err, ErrFull) {
		t.Fatalf("err %v, want ErrFull", err)
	}
}

func TestFSMGarbage(t *testing.T) {
	f := newFSM()
	good := mustEncode(t, opCreateVolume, createVolumeArgs{"a", 4096, 1, t0, 0, 0, ""})
	for _, data := range []string{
		"",
		"null",
		"{}",
		"[]",
		"\x00\xff",
		`{"op":"volume.create"}`,
		`{"op":"volume.create","args":null}`,
		`{"op":"volume.create","args":{}}`,
		`{"op":"volume.create","args":[]}`,
		`{"op":"volume.create","args":{"name":"a","size":"4096","replicas":1}}`,
		`{"op":"volume.create","args":{"name":"a","size":4096,"replicas":1,"extra":1}}`,
		`{"op":"volume.create","args":{"name":"a","size":4096.5,"replicas":1}}`,
		`{"op":"volume.create","args":{"name":"a","size":99999999999999999999,"replicas":1}}`,
		`{"op":"volume.create","args":{"name":"a","size":4096,"replicas":1,"created":"yesterday"}}`,
		`{"op":"volume.drop","args":{"name":"a"}}`,
		`{"op":"volume.delete","args":{"name":"a"},"v":2}`,
		`{"op":"volume.delete","args":{"name":"a"}} {}`,
		`{"op":"volume.resize","args":{"name":"a","size":-4096}}`,
		string(good[:len(good)-1]),
		string(good) + "x",
		`{"op":"volume.delete","args":{"name":"` + strings.Repeat("a", commandBytesMax) + `"}}`,
	} {
		r := f.Apply(&raft.Log{Data: []byte(data)})
		res, ok := r.(result)
		if !ok || res.err == nil {
			t.Errorf("Apply(%.60q) = %+v, want an error result", data, r)
		}
	}
	if n := len(f.volumes()); n != 0 {
		t.Fatalf("garbage created %d volumes", n)
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func snapshotBytes(t testing.TB, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil || !sink.closed {
		t.Fatalf("Persist: %v (closed %v)", err, sink.closed)
	}
	return sink.Bytes()
}

// populate applies a fixed sequence of commands.
func populate(t testing.TB, f *fsm) {
	t.Helper()
	for _, c := range []struct {
		o    op
		args any
	}{
		{opRegisterNode, registerNodeArgs{Name: "n1"}},
		{opRegisterNode, registerNodeArgs{Name: "n2", Zone: "z2"}},
		{opRegisterNode, registerNodeArgs{Name: "n3"}},
		{opSetNodeState, setNodeStateArgs{"n3", NodeDraining}},
		{opRegisterNode, registerNodeArgs{Name: "n4", CapacityBytes: 1 << 40}},
		{opCreateVolume, createVolumeArgs{"a", 1 << 30, 1, t0, 0, 0, ""}},
		{opCreateVolume, createVolumeArgs{"b", 8192, 3, t0.Add(time.Second), 4096, 256 << 10, ""}},
		{opCreateVolume, createVolumeArgs{"c", 4096, 2, t0, 0, 0, ""}},
		{opAttach, attachArgs{"b", "node2"}},
		{opResizeVolume, resizeVolumeArgs{"a", 4 << 30}},
		{opDeleteVolume, deleteVolumeArgs{"c"}},
	} {
		if _, err := applyTo(t, f, mustEncode(t, c.o, c.args)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFSMSnapshotRestore(t *testing.T) {
	a := newFSM()
	populate(t, a)
	a.Apply(&raft.Log{Index: 42, Type: raft.LogCommand, Data: mustEncode(t, opRegisterNode, registerNodeArgs{Name: "n5"})})
	data := snapshotBytes(t, a)

	b := newFSM()
	ch := b.changes()
	if err := b.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("Restore did not signal a change")
	}
	if !reflect.DeepEqual(a.volumes(), b.volumes()) {
		t.Fatalf("restored %+v, want %+v", b.volumes(), a.volumes())
	}
	if !bytes.Equal(snapshotBytes(t, b), data) {
		t.Fatal("snapshot of the restored state differs")
	}
	// The index of the last command applied comes with the state: a
	// wait for a command the snapshot covers sees it applied.
	if b.appliedIndex() != 42 || a.appliedIndex() != 42 {
		t.Fatalf("applied index %d, restored %d, want 42", a.appliedIndex(), b.appliedIndex())
	}
	// Both allocate the same next ID.
	cmd := mustEncode(t, opCreateVolume, createVolumeArgs{"d", 4096, 1, t0, 0, 0, ""})
	va, _ := applyTo(t, a, cmd)
	vb, _ := applyTo(t, b, cmd)
	if va.ID != 4 || vb.ID != va.ID {
		t.Fatalf("next IDs %d and %d, want 4", va.ID, vb.ID)
	}
}

func TestFSMDeterministic(t *testing.T) {
	a, b := newFSM(), newFSM()
	populate(t, a)
	populate(t, b)
	if !bytes.Equal(snapshotBytes(t, a), snapshotBytes(t, b)) {
		t.Fatal("same commands, different snapshots")
	}
}

func TestFSMRestoreRejects(t *testing.T) {
	good := newFSM()
	populate(t, good)
	data := snapshotBytes(t, good)
	edit := func(fn func(*snapshotFile)) string {
		var f snapshotFile
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatal(err)
		}
		fn(&f)
		b, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for name, in := range map[string]string{
		"empty":      "",
		"garbage":    "\x00garbage",
		"truncated":  string(data[:len(data)/2]),
		"trailing":   string(data) + "{}",
		"version":    edit(func(f *snapshotFile) { f.Version = 2 }),
		"no volumes": edit(func(f *snapshotFile) { f.State.Volumes = nil }),
		"next id":    edit(func(f *snapshotFile) { f.State.NextID = 1 }),
		"misfiled":   edit(func(f *snapshotFile) { v := f.State.Volumes["a"]; v.Name = "z"; f.State.Volumes["a"] = v }),
		"bad size":   edit(func(f *snapshotFile) { v := f.State.Volumes["a"]; v.Size = 1; f.State.Volumes["a"] = v }),
		"shared id": edit(func(f *snapshotFile) {
			v := f.State.Volumes["a"]
			v.ID = f.State.Volumes["b"].ID
			f.State.Volumes["a"] = v
		}),
		"epoch 0":      edit(func(f *snapshotFile) { v := f.State.Volumes["a"]; v.Epoch = 0; f.State.Volumes["a"] = v }),
		"geometry":     edit(func(f *snapshotFile) { v := f.State.Volumes["a"]; v.BlockSize = 512; f.State.Volumes["a"] = v }),
		"attached gen": edit(func(f *snapshotFile) { v := f.State.Volumes["a"]; v.AttachedTo = "n"; f.State.Volumes["a"] = v }),
		"unknown key":  strings.Replace(string(data), `"next_id"`, `"frobs":{},"next_id"`, 1),
	} {
		f := newFSM()
		populate(t, f)
		before := snapshotBytes(t, f)
		if err := f.Restore(io.NopCloser(strings.NewReader(in))); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Restore = %v, want ErrInvalid", name, err)
		}
		if !bytes.Equal(snapshotBytes(t, f), before) {
			t.Errorf("%s: failed Restore changed the state", name)
		}
	}
}

func TestChangesCoalesce(t *testing.T) {
	f := newFSM()
	ch1 := f.changes()
	ch2 := f.changes()
	if ch1 != ch2 {
		t.Fatal("two watchers of one generation got different channels")
	}
	if _, err := applyTo(t, f, mustEncode(t, opDeleteVolume, deleteVolumeArgs{"nope"})); err == nil {
		t.Fatal("delete of a missing volume succeeded")
	}
	select {
	case <-ch1:
		t.Fatal("a refused command signalled a change")
	default:
	}
	populate(t, f) // several changes
	<-ch1
	<-ch2
	ch3 := f.changes()
	select {
	case <-ch3:
		t.Fatal("new generation's channel already closed")
	default:
	}
}

func FuzzFSMApply(f *testing.F) {
	for _, c := range []struct {
		o    op
		args any
	}{
		{opCreateVolume, createVolumeArgs{"a", 1 << 30, 1, t0, 0, 0, ""}},
		{opDeleteVolume, deleteVolumeArgs{"a"}},
		{opResizeVolume, resizeVolumeArgs{"a", 2 << 30}},
		{opAttach, attachArgs{"a", "node1"}},
		{opExcludeReplica, excludeReplicaArgs{"b", "n2", 1}},
		{opForkVolume, forkVolumeArgs{Volume: "a", Snapshot: "s", Name: "f", Created: t0}},
		{opRollbackVolume, rollbackVolumeArgs{Name: "a", Snapshot: "s", Force: true}},
		{opFlattenVolume, flattenVolumeArgs{Name: "f", Requested: t0}},
		{opFlattenReport, flattenReportArgs{Name: "f", ID: 5, Node: "n1", Done: 1, Total: 2, Finished: true, Updated: t0}},
		{opLineageApplied, lineageAppliedArgs{Name: "f", ID: 5, Node: "n1", Version: 1}},
	} {
		f.Add(mustEncode(f, c.o, c.args))
	}
	f.Add([]byte(`{"op":"volume.create","args":{"name":"a","size":4096,"replicas":1,"created":"2026-01-01T00:00:00Z"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := newFSM()
		populate(t, m)
		before := snapshotBytes(t, m)
		r := m.Apply(&raft.Log{Type: raft.LogCommand, Data: data})
		res, ok := r.(result)
		if !ok {
			t.Fatalf("Apply returned %T", r)
		}
		m.mu.RLock()
		err := m.mu.st.check()
		m.mu.RUnlock()
		if err != nil {
			t.Fatalf("invariant broken: %v", err)
		}
		if res.err != nil && !bytes.Equal(snapshotBytes(t, m), before) {
			t.Fatalf("failed command %q changed the state", data)
		}
		// A decodable command re-encodes and applies identically elsewhere.
		if res.err == nil {
			other := newFSM()
			populate(t, other)
			other.Apply(&raft.Log{Data: data})
			if !bytes.Equal(snapshotBytes(t, m), snapshotBytes(t, other)) {
				t.Fatal("same command, different states")
			}
		}
	})
}

func TestFSMReservations(t *testing.T) {
	f := newFSM()
	populate(t, f)
	big := bytes.Repeat([]byte{0xab}, ReservationBytesMax)
	for i, s := range []struct {
		name  string
		state []byte
		err   error
		want  string // of name afterwards, when err == nil
	}{
		{"nosuch", []byte("x"), ErrNotFound, ""},
		{"a", []byte("one"), nil, "one"},
		{"a", []byte("two"), nil, "two"},
		{"a", append(big, 0), ErrInvalid, ""},
		{"b", big, nil, string(big)},
		{"a", nil, nil, ""},
		{"a", []byte{}, nil, ""},
		{"a", []byte("three"), nil, "three"},
	} {
		_, err := applyTo(t, f, mustEncode(t, opSetReservations, setReservationsArgs{s.name, s.state}))
		if !errors.Is(err, s.err) || (err == nil) != (s.err == nil) {
			t.Fatalf("step %d: %v, want %v", i, err, s.err)
		}
		if err != nil {
			continue
		}
		if got, ok := f.reservations(s.name); !ok || string(got) != s.want {
			t.Fatalf("step %d: reservations %.20q (%v), want %.20q", i, got, ok, s.want)
		}
	}
	// A copy: changing it changes nothing.
	got, _ := f.reservations("a")
	got[0] = 'X'
	if again, _ := f.reservations("a"); string(again) != "three" {
		t.Fatalf("reservations aliased: %q", again)
	}
	// Snapshot and restore keep them; a volume's deletion drops them.
	data := snapshotBytes(t, f)
	g := newFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if r, _ := g.reservations("b"); !bytes.Equal(r, big) {
		t.Fatal("reservations lost in snapshot and restore")
	}
	if _, err := applyTo(t, g, mustEncode(t, opDeleteVolume, deleteVolumeArgs{"a"})); err != nil {
		t.Fatal(err)
	}
	if _, err := applyTo(t, g, mustEncode(t, opCreateVolume, createVolumeArgs{"a", 4096, 1, t0, 0, 0, ""})); err != nil {
		t.Fatal(err)
	}
	if r, ok := g.reservations("a"); !ok || r != nil {
		t.Fatalf("recreated volume inherits reservations %q", r)
	}
	// A snapshot with reservations of a missing volume is refused.
	var sf snapshotFile
	if err := json.Unmarshal(data, &sf); err != nil {
		t.Fatal(err)
	}
	sf.State.Reservations["ghost"] = []byte("x")
	bad, _ := json.Marshal(sf)
	if err := newFSM().Restore(io.NopCloser(bytes.NewReader(bad))); !errors.Is(err, ErrInvalid) {
		t.Fatalf("restore of reservations without volume: %v", err)
	}
}

// FuzzFSMRestore: whatever bytes a snapshot holds, Restore installs a
// state that passes its checks, with the applied index the snapshot
// names, or refuses it and leaves the state and index as they were.
func FuzzFSMRestore(f *testing.F) {
	m := newFSM()
	populate(f, m)
	m.Apply(&raft.Log{Index: 42, Type: raft.LogCommand, Data: mustEncode(f, opRegisterNode, registerNodeArgs{Name: "n5"})})
	f.Add(snapshotBytes(f, m))
	f.Add([]byte(`{"version":1,"state":{},"applied":7}`))
	f.Add([]byte(`{"version":2,"state":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newFSM()
		populate(t, b)
		before, index := snapshotBytes(t, b), b.appliedIndex()
		if err := b.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			if !bytes.Equal(snapshotBytes(t, b), before) || b.appliedIndex() != index {
				t.Fatalf("refused snapshot %q changed the state", data)
			}
			return
		}
		b.mu.RLock()
		err := b.mu.st.check()
		b.mu.RUnlock()
		if err != nil {
			t.Fatalf("restored state broken: %v", err)
		}
		var sf snapshotFile
		if json.Unmarshal(data, &sf) == nil && b.appliedIndex() != sf.Applied {
			t.Fatalf("applied index %d, snapshot names %d", b.appliedIndex(), sf.Applied)
		}
	})
}
