package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Degraded volumes. A target writes every block to all of its chunk's
// replicas. When some replicas complete a write and others fail it, the
// target may acknowledge the write only after the failed ones are out of
// the volume for good, or a later reader could be sent to a replica that
// misses it: it records them as stale with opExcludeReplica, through Raft,
// and then goes on with the replicas left. A stale replica is skipped by
// every target until it has caught up: the attached target copies what
// it missed while sending it every new write, and once it has all of it
// (durably) takes it back with opIncludeReplica.

// opExcludeReplica marks a placement member of a volume stale.
const opExcludeReplica op = "volume.replica.exclude"

// ErrStaleAttachment: a target asked for a change to a volume with an
// attachment generation older than the catalog's. It has been fenced off;
// its view of the replicas does not count.
var ErrStaleAttachment = errors.New("cluster: stale attachment generation")

// ErrLastReplica: taking a replica out would leave some chunk with none.
var ErrLastReplica = errors.New("cluster: would leave a chunk without a replica")

type excludeReplicaArgs struct {
	Name string `json:"name"`
	Node string `json:"node"`
	// Generation is the attachment generation of the target that saw the
	// failure; it must be the volume's current one.
	Generation uint64 `json:"generation"`
}

// replicaMember returns volume name for a change to its member node asked
// by a target of attachment generation gen: the volume must exist, gen
// be its current generation, and node be in its placement.
func (s *state) replicaMember(name, node string, gen uint64) (Volume, error) {
	v, ok := s.Volumes[name]
	if !ok {
		return Volume{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if gen != v.Generation {
		if gen < v.Generation {
			return Volume{}, fmt.Errorf("volume %q: generation %d, the catalog's is %d: %w", name, gen, v.Generation, ErrStaleAttachment)
		}
		return Volume{}, fmt.Errorf("%w: volume %q: generation %d is ahead of the catalog's %d", ErrInvalid, name, gen, v.Generation)
	}
	if !slices.ContainsFunc(v.Placement, func(m Member) bool { return m.Node == node }) {
		return Volume{}, fmt.Errorf("%w: volume %q: node %q is not in its placement", ErrInvalid, name, node)
	}
	return v, nil
}

// excludeReplica marks a.Node stale in volume a.Name. Marking a node that
// is already stale changes nothing and succeeds (many requests see one
// failure). It refuses a target of an older attachment generation, a node
// outside the placement set, and an exclusion that could leave a chunk
// without a replica: at most Replicas-1 members may be stale, so that every
// chunk (on Replicas distinct members) keeps at least one.
func (s *state) excludeReplica(a *excludeReplicaArgs) (Volume, error) {
	v, err := s.replicaMember(a.Name, a.Node, a.Generation)
	if err != nil {
		return Volume{}, err
	}
	if slices.Contains(v.Stale, a.Node) {
		return v, nil
	}
	if len(v.Stale)+1 >= v.Replicas {
		return Volume{}, fmt.Errorf("volume %q: %d of %d replicas stale already (%v), not %q: %w", a.Name, len(v.Stale), v.Replicas, v.Stale, a.Node, ErrLastReplica)
	}
	v.Stale = append(slices.Clone(v.Stale), a.Node)
	slices.Sort(v.Stale)
	s.Volumes[a.Name] = v
	return v, nil
}

// opIncludeReplica takes a stale member of a volume back among its
// replicas, once it caught up.
const opIncludeReplica op = "volume.replica.include"

type includeReplicaArgs struct {
	Name string `json:"name"`
	Node string `json:"node"`
	// Generation is the attachment generation of the target that brought
	// the replica up to date; it must be the volume's current one (a
	// target fenced off since cannot vouch for what the node holds).
	Generation uint64 `json:"generation"`
}

// includeReplica removes a.Node from the stale list of volume a.Name. A
// node that is not stale changes nothing and succeeds (a retried
// change). It refuses a target of another attachment generation and a
// node outside the placement set.
func (s *state) includeReplica(a *includeReplicaArgs) (Volume, error) {
	v, err := s.replicaMember(a.Name, a.Node, a.Generation)
	if err != nil {
		return Volume{}, err
	}
	i := slices.Index(v.Stale, a.Node)
	if i < 0 {
		return v, nil
	}
	v.Stale = slices.Delete(slices.Clone(v.Stale), i, i+1)
	if len(v.Stale) == 0 {
		v.Stale = nil
	}
	s.Volumes[a.Name] = v
	return v, nil
}

// checkStale is the invariant check of a volume's stale list.
func checkStale(v Volume) error {
	if len(v.Stale) == 0 {
		return nil
	}
	if len(v.Stale) >= v.Replicas {
		return fmt.Errorf("volume %q: %d stale replicas of %d", v.Name, len(v.Stale), v.Replicas)
	}
	if !slices.IsSorted(v.Stale) || len(slices.Compact(slices.Clone(v.Stale))) != len(v.Stale) {
		return fmt.Errorf("volume %q: stale list %v not sorted and unique", v.Name, v.Stale)
	}
	for _, n := range v.Stale {
		if !slices.ContainsFunc(v.Placement, func(m Member) bool { return m.Node == n }) {
			return fmt.Errorf("volume %q: stale node %q outside its placement", v.Name, n)
		}
	}
	return nil
}

// ExcludeReplica takes node out of volume name's replicas as a target of
// attachment generation gen, through the Raft log (forwarded to the leader
// from a follower). It returns once this replica of the catalog has
// applied the change, with the volume as it is now.
func (c *Catalog) ExcludeReplica(ctx context.Context, name, node string, gen uint64) (Volume, error) {
	out, err := c.apply(ctx, opExcludeReplica, &excludeReplicaArgs{Name: name, Node: node, Generation: gen})
	if err != nil {
		return Volume{}, fmt.Errorf("cluster: exclude replica %s of %q: %w", node, name, err)
	}
	return out.Volume, nil
}

// IncludeReplica takes node back among volume name's replicas as the
// target of attachment generation gen that brought it up to date, through
// the Raft log. It returns once this replica of the catalog has applied
// the change, with the volume as it is now.
func (c *Catalog) IncludeReplica(ctx context.Context, name, node string, gen uint64) (Volume, error) {
	out, err := c.apply(ctx, opIncludeReplica, &includeReplicaArgs{Name: name, Node: node, Generation: gen})
	if err != nil {
		return Volume{}, fmt.Errorf("cluster: include replica %s of %q: %w", node, name, err)
	}
	return out.Volume, nil
}
