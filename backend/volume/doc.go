// Package volume owns a logical volume: it maps byte ranges onto 4 KiB
// blocks and 1 MiB chunks, stamps every write with (epoch, seq), sends each
// chunk's part of a request to the chunk's replicas, and implements
// target.Device for the front ends.
//
// Invariants:
//   - seq only grows while a Volume is open, and its high bits are the
//     attachment generation from the catalog, so the writes of a later
//     attachment always carry higher seqs than any earlier one's.
//   - Two requests touching the same block never interleave a
//     read-modify-write: sub-block writes and zero ranges hold the block's
//     stripe lock exclusively; whole-block writes hold it shared (two
//     whole-block writes may land in either order, as on a disk).
//   - A compare-and-write (target.Comparer) holds the stripe locks of all
//     its blocks exclusively from the compare to the write, so no write,
//     zero or trim of those blocks, from any front end, lands in between.
//     A miscompare writes nothing.
//   - A write is acknowledged only when every replica in its chunk's set has
//     it (durably, for FUA).
//
// # Request lifecycle
//
// Every request of a front end takes one path: admit (counted in flight;
// refused once Close began, or when the volume's reservations exclude the
// requester) → block locks → one stamp → node calls, whose
// context carries the request's deadline → unlock → exit. The stamp comes
// after the locks so that two requests serialized on a block are stamped in
// that order. Exit is the one place a request leaves the volume. Close
// stops admitting and waits, bounded, for the requests inside; only after
// it returned nil may the volume's data be dropped.
// Barrier waits, bounded by its context, for the requests admitted before
// it: after SetPlacement and Barrier no request uses an older placement
// (a replica catch-up relies on it, see cmd/cairnd/catchup.go).
//
// # Reservations
//
// The volume keeps its SCSI reservations (a reservation.Unit over
// Options.Reservations, the catalog in cairnd) and checks every request
// against them at admission, whichever front end sent it: writes, zeroes
// and trims need write access, reads, extents and flushes read access;
// the requester is the nexus the request's context carries (none for an
// NBD connection). The iSCSI front end changes the state through
// Reservations. A request admitted before a change may complete after it,
// as commands already in a SCSI task set do; PREEMPT AND ABORT aborts
// the preempted iSCSI sessions' commands.
//
// Concurrency: all methods are safe for concurrent use. The Volume owns no
// long-lived goroutines. A write over several replicas starts its call on
// each Starter (the node RPC client sends the request and returns), makes
// the call of the one node that is not (the local store) on the request's
// goroutine meanwhile, then waits for the started ones: no goroutine per
// replica. The Starters of one write share a WriteMemo, so that work over
// the data (the node RPC's checksum) is done once per write. A batch of
// writes (WriteBatch, an NBD connection's writes found waiting together)
// goes the same way node by node: each Starter gets its writes in one
// StartWrites when it is a BatchStarter (one socket write), the local
// store its own in one WriteBatch, then the turn waits for them all.
// Other sets, and zeroes and flushes over several nodes, run their node
// calls on goroutines that end before the request returns.
package volume
