// Package membership owns this process's place in the gossip pool: discovery
// of the other cairn processes, their liveness, and the metadata each one
// announces (roles, service addresses, capacity, zone). It is a thin layer
// over hashicorp/memberlist (SWIM: UDP probes, indirect probes, TCP
// push/pull sync) on port 7946. Gossip is eventually consistent and decides
// nothing: placement and attachments are catalog entries (package cluster);
// this package only tells who is there and where.
//
// # Pool
//
// Start binds UDP and TCP on Options.BindAddr (port 0 takes a free port,
// read back with Pool.Addr), creates the memberlist and joins the seeds in
// Options.Join. No seeds means a new pool; seeds none of which answers is
// ErrJoin. Members lists every node this one knows, itself included, with its
// state and decoded metadata; Subscribe streams the changes. UpdateMeta
// re-announces this node's metadata. Leave tells the pool that the node goes
// on purpose (peers see StateLeft and EventLeave); Close without Leave looks
// like a crash (peers see StateDead and EventFailed once failure detection
// runs its course: a few probe intervals, see Timing).
//
// With Options.SecretKey set, every packet and stream is AES-GCM encrypted
// and authenticated with memberlist's keyring, and incoming and outgoing
// gossip are both verified: a peer without the key, or with another one,
// cannot join, and its join fails with ErrJoin.
//
// # Metadata
//
// Meta travels as memberlist node metadata, at most MetaBytesMax (512)
// bytes; EncodeMeta refuses more with ErrMetaTooLarge. The encoding is a
// versioned compact binary (see EncodeMeta). DecodeMeta accepts any bytes
// without panicking (FuzzDecodeMeta) and only canonical encodings. A peer
// whose metadata does not decode, or names another node, is still listed,
// with Member.MetaErr set and a zero Meta.
//
// # Invariants
//
//   - The member table holds one entry per node name, updated only from
//     memberlist's events, so Members and the event stream agree.
//   - memberlist v0.7.0 reports a departure (NotifyLeave) without saying
//     whether the node left or failed: the Node it passes has a State field
//     that memberlist never sets. So Leave first marks this node's metadata
//     with a leaving flag, gossips it and pushes it to each live peer over
//     TCP (a push/pull state sync, as Join does), and only then sends
//     memberlist's leave; a departure of a node whose last metadata carries
//     the flag is EventLeave/StateLeft, any other is EventFailed/StateDead.
//     A peer Leave could not reach in time reports the leave as a failure:
//     the safe direction.
//   - memberlist raises no event when a node becomes suspect and keeps that
//     state private, so a suspect node is reported as StateAlive until it is
//     declared dead (EventFailed) or refutes the suspicion.
//   - Dead and left entries stay until the node returns (EventJoin) or, past
//     1024 of them, the oldest is forgotten (no event).
//   - This node's encoded metadata is always valid and ≤ MetaBytesMax.
//
// # Subscribers
//
// A subscriber channel is bounded (its bufLen) and delivery never blocks
// gossip: an event that does not fit is dropped (drop, not coalesce),
// counted in Stats.EventsDropped, and reported in the Missed field of the
// next event that subscriber gets. Missed > 0 means "resync from Members".
// A subscriber that drains its channel after a burst, and needs the final
// state even if nothing else changes, reads Members then. Events are
// delivered in the order memberlist raised them. At most 64 subscribers at
// once; more is a programmer error (panic), as is a bufLen over 65536.
//
// # Concurrency
//
// Every Pool method may be called from any goroutine. memberlist calls this
// package's delegates (metadata, join/leave/update events) from its own
// goroutines, with its node lock held: they only decode, update the table
// under Pool's mutex and make non-blocking sends; they never call back into
// memberlist, and no Pool method calls memberlist while holding that mutex.
// memberlist's log lines are parsed for their "[LEVEL]" prefix and sent to
// Options.Logger. The pool starts no goroutines of its own; memberlist's
// (listeners, probe, gossip, push/pull, handler) are stopped by Close,
// which is idempotent. Leave, UpdateMeta and Join after Close return
// ErrClosed.
package membership
