package cluster

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/hashicorp/raft"
)

// fsm is the raft.FSM over state. raft calls Apply, Snapshot and Restore
// from its single FSM goroutine; the read methods may be called from any
// goroutine.
type fsm struct {
	mu struct {
		sync.RWMutex
		st state
		// changed is closed, and replaced, after each change of st.
		changed chan struct{}
		// applied is the index of the last command Apply executed.
		applied uint64
	}
}

var _ raft.FSM = (*fsm)(nil)

func newFSM() *fsm {
	f := &fsm{}
	f.mu.st = newState()
	f.mu.changed = make(chan struct{})
	return f
}

// result is what Apply returns through raft's ApplyFuture.Response.
type result struct {
	out outcome
	err error
}

// Apply decodes and executes one committed command. A malformed or refused
// command changes nothing and yields an error result: it must not panic, as
// every replica would panic on the same entry at every restart.
func (f *fsm) Apply(l *raft.Log) any {
	cmd, err := decodeCommand(l.Data)
	f.mu.Lock()
	defer f.mu.Unlock()
	// Applied, if only as nothing: a wait for this index must end.
	f.mu.applied = max(f.mu.applied, l.Index)
	if err != nil {
		return result{err: err}
	}
	v, err := f.mu.st.apply(cmd)
	v.Volume = v.Volume.clone() // the caller's copy shares nothing with the state
	if invariants {
		if cerr := f.mu.st.check(); cerr != nil {
			panic(fmt.Sprintf("cluster: log index %d: state invariant broken after %T: %v", l.Index, cmd, cerr))
		}
	}
	if err == nil {
		f.notifyLocked()
	}
	return result{out: v, err: err}
}

// Snapshot encodes the state at once (it is small: volumesMax records), so
// that Persist runs on an immutable byte slice while Apply goes on.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	data, err := encodeSnapshot(&f.mu.st, f.mu.applied)
	if err != nil {
		return nil, err
	}
	return snapshot(data), nil
}

// Restore replaces the state with a snapshot's, after checking it; a bad
// snapshot leaves the state as it was.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, applied, err := decodeSnapshot(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.st = st
	// A restore replaces everything applied, the index too: a command
	// the snapshot covers is never applied here again, and a wait for it
	// (waitApplied) must see it as applied.
	f.mu.applied = applied
	f.notifyLocked()
	return nil
}

func (f *fsm) notifyLocked() {
	close(f.mu.changed)
	f.mu.changed = make(chan struct{})
}

// appliedIndex returns the index of the last command applied to the
// state: by Apply, or in the snapshot Restore installed.
func (f *fsm) appliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.mu.applied
}

func (f *fsm) changes() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.mu.changed
}

func (f *fsm) volume(name string) (Volume, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v, ok := f.mu.st.Volumes[name]
	return v.clone(), ok
}

// reservations returns a copy of a volume's reservation state (nil if
// none) and whether the volume exists.
func (f *fsm) reservations(name string) ([]byte, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if _, ok := f.mu.st.Volumes[name]; !ok {
		return nil, false
	}
	return bytes.Clone(f.mu.st.Reservations[name]), true
}

func (f *fsm) nodes() []Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ns := make([]Node, 0, len(f.mu.st.Nodes))
	for _, n := range f.mu.st.Nodes {
		ns = append(ns, n)
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i].Name < ns[j].Name })
	return ns
}

func (f *fsm) volumes() []Volume {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.mu.st.sorted()
}

// snapshot is an encoded state.
type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}
