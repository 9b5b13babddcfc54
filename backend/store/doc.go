// Package store is the node-local versioned block store of a storage node:
// it keeps 4 KiB blocks of many volumes, each block in versions stamped
// (epoch, seq), in one pebble database.
//
// # What it owns
//
// A Store owns its pebble directory: block versions, zero-range records and
// each volume's retained snapshot epochs (see keys.go for the layout), plus
// an in-memory index of the zero ranges, loaded at Open.
//
// # Invariants
//
//   - Per (volume, block, epoch) the version with the highest seq wins;
//     the state depends only on the set of writes, never their order
//     (a pebble merge operator keeps the highest seq; no read per write).
//   - Read at epoch E returns, per block, the version with the greatest
//     (epoch, seq) among those with epoch <= E; a zero record covering the
//     block is such a version (zeros). Unwritten blocks read as zeros and
//     use no space.
//   - Zero costs O(1) keys whatever its length: one range record (or, under
//     64 blocks, per-block zero versions) plus, when no retained epoch is
//     below its epoch, one pebble range deletion that reclaims the space of
//     every older version in the range. See Store.Zero for the contract
//     this puts on callers.
//   - The zero-range records of a volume stay bounded: a new record deletes
//     or trims the records it dominates, and a volume holds at most
//     rangesPerVolumeMax of them (ErrLimit past that).
//   - A write or Zero with sync, and every call that returned before a
//     Sync, is durable when the call returns; nothing is reported durable
//     that pebble did not sync.
//
// # Failures
//
// Errors from pebble or the file system wrap ErrIO. Pebble treats a failed
// WAL write or sync as fatal (it calls Logger.Fatalf, whose default exits
// the process) because its commit pipeline cannot go on. The store's logger
// panics instead; the committing call recovers, marks the store failed and
// returns an error wrapping ErrIO and ErrFailed; every later call fails the
// same way without touching pebble, and the process should restart so that
// pebble's recovery rebuilds the durable state. Calls already inside pebble
// at that moment may block until then. A fatal error in a background flush
// or compaction (a MANIFEST sync) ends the process, as pebble's default
// does.
//
// # Concurrency
//
// All methods are safe for concurrent use from any goroutine. Close waits
// for calls in progress. The volume layer above must not issue a Write that
// overlaps a Zero in flight, nor any call on a volume being dropped.
package store
