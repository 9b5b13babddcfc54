package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestForwardToLeader: a change sent to any of three managers is carried
// to the leader and applied once; the follower that took it reads it at
// once after; refusals keep their sentinel across the hop; after the
// leader dies, changes sent to a survivor still succeed.
func TestForwardToLeader(t *testing.T) {
	var mu sync.Mutex
	byID := map[string]*Catalog{}
	forward := func(ctx context.Context, leader string, cmd []byte) ([]byte, error) {
		mu.Lock()
		c := byID[leader]
		mu.Unlock()
		if c == nil || c.closed.Load() {
			return nil, fmt.Errorf("node %s unreachable", leader)
		}
		return c.ApplyForwarded(ctx, cmd)
	}
	var cats []*Catalog
	var servers []Server
	for i := range 3 {
		o := TestOptions(t.TempDir())
		o.NodeID = fmt.Sprintf("m%d", i)
		o.BootstrapExpect = 3
		o.HeartbeatTimeout, o.ElectionTimeout, o.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 200*time.Millisecond
		o.Forward = forward
		c := open(t, o)
		mu.Lock()
		byID[o.NodeID] = c
		mu.Unlock()
		cats = append(cats, c)
		servers = append(servers, Server{ID: o.NodeID, Address: c.Status().Address})
	}
	for _, c := range cats {
		if err := c.Bootstrap(servers); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, c := range cats {
		if err := c.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Every change goes to every node in turn, followers included.
	for i, c := range cats {
		if _, err := c.RegisterNode(ctx, Node{Name: fmt.Sprintf("s%d", i)}); err != nil {
			t.Fatalf("register through %s: %v", c.id, err)
		}
	}
	for i, c := range cats {
		name := fmt.Sprintf("v%d", i)
		v, err := c.CreateVolume(ctx, VolumeSpec{Name: name, Size: 1 << 20, Target: c.id})
		if err != nil {
			t.Fatalf("create through %s (leader %v): %v", c.id, c.IsLeader(), err)
		}
		if v.Replicas != 3 || v.AttachedTo != c.id || v.Generation != 1 || len(v.Placement) != 3 {
			t.Fatalf("created through %s: %+v", c.id, v)
		}
		if got, err := c.Volume(name); err != nil || got.ID != v.ID {
			t.Fatalf("%s reads its own change: %+v %v", c.id, got, err)
		}
		if _, err := c.CreateVolume(ctx, VolumeSpec{Name: name, Size: 1 << 20}); !errors.Is(err, ErrExists) {
			t.Fatalf("second create through %s: %v, want ErrExists", c.id, err)
		}
		if _, err := c.CreateVolume(ctx, VolumeSpec{Name: "big" + name, Size: 1 << 20, Replicas: 4}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("4 replicas over 3 nodes through %s: %v, want ErrInvalid", c.id, err)
		}
	}
	// Forks, rollbacks and flattens go through followers too, and their
	// refusals keep their sentinel across the hop.
	sn, err := cats[0].ReserveSnapshot(ctx, "v0", "s")
	if err == nil {
		_, err = cats[0].EndSnapshot(ctx, sn.ID, SnapshotSealed, "")
	}
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cats {
		name := fmt.Sprintf("f%d", i)
		fk, err := c.Fork(ctx, "v0", "s", name, "")
		if err != nil || fk.Lineage.Parent == 0 || fk.PlacementKey == 0 {
			t.Fatalf("fork through %s: %+v %v", c.id, fk, err)
		}
		if _, err := c.Rollback(ctx, "v0", "s", false); !errors.Is(err, ErrBusy) {
			t.Fatalf("rollback of an attached volume through %s: %v, want ErrBusy", c.id, err)
		}
		if v, err := c.Rollback(ctx, "v0", "s", true); err != nil || len(v.Lineage.Rollbacks) != i+1 {
			t.Fatalf("forced rollback through %s: %+v %v", c.id, v, err)
		}
		if v, err := c.Flatten(ctx, name); err != nil || v.Flatten == nil {
			t.Fatalf("flatten through %s: %+v %v", c.id, v, err)
		}
		if _, err := c.ReportLineage(ctx, name, fk.ID, "s0", 1); err != nil {
			t.Fatalf("lineage report through %s: %v", c.id, err)
		}
		if err := c.DeleteSnapshot(ctx, sn.ID); !errors.Is(err, ErrBusy) {
			t.Fatalf("delete of a forked snapshot through %s: %v, want ErrBusy", c.id, err)
		}
	}
	var leader *Catalog
	var alive []*Catalog
	for _, c := range cats {
		if c.IsLeader() {
			leader = c
		} else {
			alive = append(alive, c)
		}
	}
	if leader == nil {
		t.Fatal("no leader among the three")
	}
	if err := leader.Close(); err != nil {
		t.Fatal(err)
	}
	// A survivor takes a change: it is forwarded to (or made by) the new
	// leader once one is elected; retry only while there is none.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := alive[0].ResizeVolume(ctx, "v0", 2<<20)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
			t.Fatalf("resize through a survivor after the leader died: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The new leader applied the resize before it answered; its FSM's
	// index covers it (raft's LastIndex may be an entry of its own, which
	// no FSM applies).
	var index uint64
	for _, c := range alive {
		index = max(index, c.fsm.appliedIndex())
	}
	for _, c := range alive {
		if err := c.waitApplied(ctx, index); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := alive[1].Volume("v0"); err != nil || v.Size != 2<<20 {
		t.Fatalf("other survivor: %+v %v", v, err)
	}
}

// FuzzForwardReply: whatever a leader (or an impostor) answers a
// forwarded change with, the follower gets an outcome or an error, never
// a panic; a refusal keeps its sentinel.
func FuzzForwardReply(f *testing.F) {
	f.Add([]byte(`{"volume":{"id":1,"name":"a"},"index":7}`))
	f.Add([]byte(`{"error":"volume \"a\": not found","kind":"not_found"}`))
	f.Add([]byte(`{"snapshot":{"id":2,"name":"s","state":"sealed"},"index":9}`))
	f.Add([]byte(`{"node":{"name":"n1"},"extra":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		out, index, err := decodeForwardReply(b)
		var fe *forwardedError
		switch {
		case err == nil:
			_, _ = out, index
		case errors.Is(err, errBadReply), errors.As(err, &fe):
		default:
			t.Fatalf("%q: error %v is neither a refusal nor a bad reply", b, err)
		}
		if errors.As(err, &fe) && fe.kind != nil && !errors.Is(err, fe.kind) {
			t.Fatalf("%q: refusal %v does not match its kind", b, err)
		}
	})
}

// TestWaitAppliedTrustsOnlyTheFSM: raft's AppliedIndex runs ahead of the
// FSM (raft advances it once the entries are handed to the FSM's
// goroutine), so a wait that took it for the FSM's could let a read miss
// the change it waited for. Here the catalog's FSM is swapped for one that
// applied nothing while raft's AppliedIndex is past the index waited for:
// the wait must time out, and end once the FSM applies that index.
func TestWaitAppliedTrustsOnlyTheFSM(t *testing.T) {
	c := openLeader(t, TestOptions(t.TempDir()))
	ctx := context.Background()
	if _, err := c.CreateVolume(ctx, VolumeSpec{Name: "v0", Size: 1 << 20, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	index := c.fsm.appliedIndex()
	if index == 0 {
		t.Fatal("the FSM applied nothing")
	}
	// raft's AppliedIndex may lag the FSM as well as lead it: wait until
	// it covers index, the state in which the old check returned early.
	for deadline := time.Now().Add(10 * time.Second); c.raft.AppliedIndex() < index; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("raft's AppliedIndex %d never reached the FSM's %d", c.raft.AppliedIndex(), index)
		}
	}
	real := c.fsm
	behind := newFSM()
	c.fsm = behind
	defer func() { c.fsm = real }()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := c.waitApplied(short, index); !errors.Is(err, ErrTimeout) {
		t.Fatalf("wait with the FSM behind raft: %v, want a timeout", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.waitApplied(ctx, index) }()
	behind.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: []byte("not a command")})
	if err := <-done; err != nil {
		t.Fatalf("wait after the FSM applied the index: %v", err)
	}
}
