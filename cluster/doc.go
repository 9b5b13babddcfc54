// Package cluster owns the catalog: the strongly consistent record of
// volumes (and, in later issues, groups, snapshots, placement and
// attachments), replicated with hashicorp/raft among the manager-role
// processes. Gossip membership and placement will join it here.
//
// # Catalog
//
// Open starts one Raft node: log and stable store in raft-boltdb/v2
// (Dir/raft.db), snapshots in Dir/snapshots, TCP transport on Bind, which is
// also the address advertised to peers. A node with BootstrapExpect 1 and no
// Raft state bootstraps itself as the only voter; a restart reloads the
// snapshot and log. For 3 or 5 managers the gossip layer calls Bootstrap
// with the servers it found once it has seen bootstrap_expect of them, on
// every one of them, like Consul.
//
// Changes go through the leader's log as JSON commands (an op name and its
// arguments, decoded strictly) that the FSM applies to an in-memory state.
// Reads (Volume, Volumes) are served from the local state without a Raft
// round trip: on a follower they may lag the leader.
//
// # Invariants
//
//   - The FSM is deterministic: no clock (times travel in commands, set by
//     the proposer), no randomness, no map-order dependence; ID allocation
//     uses the state's NextID. Replicas fed the same log hold equal states.
//   - A command is checked completely before it changes anything, and the
//     FSM never panics on a log entry: a malformed or refused command is an
//     error result and a no-op. Proposers validate the same rules first so
//     that bad requests fail without a log entry.
//   - Volume IDs are never reused; Epoch starts at 1 and Generation at 0, and
//     both only grow.
//   - Lineage (lineage.go): a fork has its parent's placement key,
//     placement set, chunk size, replicas and block sizes; while it reads
//     through, its parent volume and that snapshot exist (deleting either
//     is ErrBusy, naming the forks) and the snapshot's epoch is retained.
//     Rollbacks are ascending by To, each From < To < the volume's epoch.
//     Lineage.Version grows with every change of the parent or rollbacks,
//     and a target serves a volume only once every holder reported it.
//   - Unknown ops and fields are errors, not skipped: during a rolling
//     upgrade, upgrade every manager before using a new command.
//
// # Concurrency
//
// Every Catalog method may be called from any goroutine. raft calls the FSM
// from its own goroutine; reads share the state under a RWMutex. Changes
// hands out a channel closed at the next change, for any number of
// watchers. Close stops Raft and releases Dir and the port; it is idempotent.
package cluster
