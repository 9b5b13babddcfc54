package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Forwarder carries a change a follower received to the leader: it sends
// the encoded command to the catalog of the node named leader (whose
// ApplyForwarded runs it) and returns the reply bytes ApplyForwarded
// produced. It must honour ctx. The daemon implements it over its node
// transport; nil makes changes on a follower fail with ErrNotLeader.
type Forwarder func(ctx context.Context, leader string, cmd []byte) ([]byte, error)

// forwardReply is the encoding of a forwarded change's result.
type forwardReply struct {
	Volume   *Volume   `json:"volume,omitempty"`
	Node     *Node     `json:"node,omitempty"`
	Snapshot *Snapshot `json:"snapshot,omitempty"`
	Error    string    `json:"error,omitempty"`
	Kind     string    `json:"kind,omitempty"`
	// Index is the log index of the change, which the follower waits to
	// have applied before it returns, so that its reads see the change.
	Index uint64 `json:"index,omitempty"`
}

// errorKinds name the sentinels a forwarded error keeps across the hop.
var errorKinds = []struct {
	kind string
	err  error
}{
	{"not_found", ErrNotFound},
	{"exists", ErrExists},
	{"invalid", ErrInvalid},
	{"shrink", ErrShrink},
	{"full", ErrFull},
	{"not_leader", ErrNotLeader},
	{"timeout", ErrTimeout},
	{"closed", ErrClosed},
	{"stale_attachment", ErrStaleAttachment},
	{"last_replica", ErrLastReplica},
	{"busy", ErrBusy},
}

// forwardedError is an error the leader reported; it matches its sentinel.
type forwardedError struct {
	msg  string
	kind error
}

func (e *forwardedError) Error() string { return e.msg }
func (e *forwardedError) Unwrap() error { return e.kind }

// ApplyForwarded runs a command another node's catalog forwarded (see
// Forwarder) on this node, which must be the leader, and returns the reply
// to send back. Only a malformed command is an error; a refused change is
// a reply carrying the refusal.
func (c *Catalog) ApplyForwarded(ctx context.Context, cmd []byte) ([]byte, error) {
	o, _, err := decodeOp(cmd)
	if err != nil {
		return nil, fmt.Errorf("cluster: forwarded command: %w", err)
	}
	out, index, _, err := c.applyLocal(ctx, o, cmd)
	r := forwardReply{Index: index}
	if err != nil {
		r.Error = err.Error()
		for _, k := range errorKinds {
			if errors.Is(err, k.err) {
				r.Kind = k.kind
				break
			}
		}
	} else {
		if out.Volume.Name != "" {
			r.Volume = &out.Volume
		}
		if out.Node.Name != "" {
			r.Node = &out.Node
		}
		if out.Snapshot.ID != 0 {
			r.Snapshot = &out.Snapshot
		}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("cluster: forwarded reply: %w", err)
	}
	return b, nil
}

// forward sends a change to the leader through the Forwarder.
func (c *Catalog) forward(ctx context.Context, o op, data []byte) (outcome, error) {
	_, id := c.raft.LeaderWithID()
	if id == "" || c.forwarder == nil || string(id) == c.id {
		return outcome{}, c.raftError(string(o), raft.ErrNotLeader)
	}
	b, err := c.forwarder(ctx, string(id), data)
	if err != nil {
		// The leader may be gone (an election is under way) or may have
		// applied the change and failed to answer: unavailable, retry.
		return outcome{}, fmt.Errorf("cluster: %s: forward to leader %s: %w: %w", o, id, ErrNotLeader, err)
	}
	out, index, err := decodeForwardReply(b)
	if errors.Is(err, errBadReply) {
		return outcome{}, fmt.Errorf("cluster: %s: reply of leader %s: %w", o, id, err)
	}
	if err != nil {
		return outcome{}, err
	}
	// Reads that follow a change see it: wait until this replica applied
	// the leader's index of the change.
	return out, c.waitApplied(ctx, index)
}

// errBadReply: a forwarded change's reply does not parse.
var errBadReply = fmt.Errorf("%w: malformed reply", ErrInvalid)

// decodeForwardReply parses what ApplyForwarded answered: the outcome and
// log index of the change, or the refusal as an error matching its
// sentinel. Bytes that do not parse are errBadReply; it never panics
// (FuzzForwardReply).
func decodeForwardReply(b []byte) (outcome, uint64, error) {
	var r forwardReply
	if len(b) > commandBytesMax*4 {
		return outcome{}, 0, fmt.Errorf("%w: %d bytes", errBadReply, len(b))
	}
	if err := decodeStrict(b, &r); err != nil {
		return outcome{}, 0, fmt.Errorf("%w: %w", errBadReply, err)
	}
	if r.Error != "" {
		fe := &forwardedError{msg: r.Error}
		for _, k := range errorKinds {
			if k.kind == r.Kind {
				fe.kind = k.err
			}
		}
		return outcome{}, 0, fe
	}
	var out outcome
	if r.Volume != nil {
		out.Volume = *r.Volume
	}
	if r.Node != nil {
		out.Node = *r.Node
	}
	if r.Snapshot != nil {
		out.Snapshot = *r.Snapshot
	}
	return out, r.Index, nil
}

// waitApplied waits until this replica's FSM applied the command at index
// (a command's index: raft's own entries never reach the FSM), bounded by
// ctx and the apply timeout.
func (c *Catalog) waitApplied(ctx context.Context, index uint64) error {
	if c.fsm.appliedIndex() >= index {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.applyTimeout)
	defer cancel()
	t := time.NewTicker(waitLeaderPoll)
	defer t.Stop()
	for {
		// Taken before the check: a change applied after it closes this
		// channel, so none is missed. Only the FSM's own index counts:
		// raft advances its AppliedIndex once it has handed the entries
		// to the FSM goroutine, before the FSM applied them, so a read
		// after it could miss the change. The ticker covers commands that
		// change nothing (refused ones), which notify no one.
		changed := c.fsm.changes()
		if c.fsm.appliedIndex() >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: change applied at the leader, not yet here (index %d, applied %d): %w: %w",
				index, c.fsm.appliedIndex(), ErrTimeout, ctx.Err())
		case <-changed:
		case <-t.C:
		}
	}
}
