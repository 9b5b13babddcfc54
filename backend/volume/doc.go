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
//   - A write is acknowledged only when every replica in its chunk's set has
//     it (durably, for FUA).
//
// Concurrency: all methods are safe for concurrent use. The Volume does not
// start goroutines of its own.
package volume
