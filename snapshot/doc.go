// Package snapshot takes crash-consistent snapshots of a group of volumes
// attached at one or many targets without stopping their I/O (DESIGN.md §3).
//
// # What it owns
//
// The Coordinator runs the protocol for one snapshot at a time per group:
//
//	reserve → hold (every target, in parallel) → release → seal
//
// reserve asks the Catalog for the group's epoch e, the snapshot's id and
// its volumes, having committed the group's epoch e+1 and a pending record;
// hold asks every Target with a volume of the group to stamp that volume's
// new writes e+1 and hold their acknowledgements; release lets them go once
// every target has switched; seal waits until every target reports no
// write stamped ≤ e in flight and then seals the record. A step that errs or
// passes its deadline (Options.StepTimeout, 2 s by default) releases every
// target and fails the record: an I/O never waits on a broken snapshot, and
// the targets end a hold on their own at Options.HoldTimeout should the
// coordinator die.
//
// LocalTarget is the Target of the volumes of one process; the lead adds a
// transport that carries Target calls between processes.
//
// cutcheck.go is a test tool: the payload of a dependent write and the
// check that what a snapshot holds of them is a consistent cut.
//
// # Invariants
//
//   - Release is sent to no target before every target's Hold returned nil:
//     a write acknowledged anywhere after a switch cannot have been
//     depended on by a write stamped e elsewhere.
//   - A snapshot is sealed only if every volume's hold ended by Release (a
//     hold that ended at its own deadline or bound may have let
//     acknowledgements go before every target switched) and every target
//     reported Drained(e).
//   - Every Snapshot call that got a reservation ends it: Seal or Fail.
//
// # Concurrency
//
// Coordinator.Snapshot is safe for concurrent use; calls for the same group
// do not overlap (the second gets ErrBusy). Target implementations must be
// safe for concurrent use and must return once their ctx is done: the
// coordinator stops waiting at its deadlines but a call that never returns
// keeps its goroutine. LocalTarget's methods are safe for concurrent use.
package snapshot
