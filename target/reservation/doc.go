// Package reservation owns the reservation state of a volume, shared by
// every front end that exports it: SCSI persistent reservations (SPC-4
// §5.9) and SPC-2 RESERVE/RELEASE, as a pure state machine (State: from
// nexus, PERSISTENT RESERVE OUT CDB and parameter list to a new immutable
// state with its unit attentions and aborts; PERSISTENT RESERVE IN; the
// conflict rule; a versioned, bounded encoding, fuzzed) and a Unit that
// loads a volume's state from its Store at first use, saves every change
// there before it returns, and publishes it for lock-free checks.
//
// The requester of a request is a Nexus carried by the request's context
// (WithNexus): an iSCSI session sets its I_T nexus; an NBD connection sets
// nothing and is the zero Nexus, which cannot register. A device that
// keeps a Unit (Holder) checks every request against it (Unit.Check):
// writes, zeroes and trims need AccessWrite, reads AccessRead, so that a
// reservation taken over iSCSI fences NBD clients too. The SCSI front end
// keeps the SCSI parts: its per-command conflict table, unit attentions
// and aborts for its sessions, and the sense data errors map to.
//
// Invariants: a published State is never modified; every registration has
// a non-zero key and a non-empty initiator name; a holder (types other
// than all registrants) is registered; at most RegistrationsMax
// registrations, encoded in at most StateBytesMax bytes. A change is
// visible to Check only once the Store saved it.
//
// This package imports only target: backend/volume and target/iscsi both
// use it.
package reservation
