// Package store is the node-local versioned block store of a storage node:
// it keeps 4 KiB blocks of many volumes, each block in versions stamped
// (epoch, seq). Block data lives in append-only segment files; pebble keeps
// the small metadata.
//
// # What it owns
//
// A Store owns its directory: pebble's files (the durable copy of the block
// index, zero-range records, each volume's retained snapshot epochs; see
// keys.go; each volume's lineage: the parent it was forked from and its
// rollbacks, lineage.go) and dir/segments, the log of records (record.go): data records
// (a header with a crc32c per block, then the blocks; 512-byte aligned), zero
// records, drop records and the cleaner's copy records. In memory it
// holds the block index (index.go: per volume, pages of 64 blocks,
// (block, epoch) -> (segment, page, seq, crc)) and the zero ranges,
// loaded at Open.
//
// The index's resident heap (HeapInuse; `go test ./backend/store -run
// TestIndexMemory -v`) is 32.8 bytes per 4 KiB block written in one epoch,
// 8.2 GiB per TiB, whether the blocks came sequentially or as random 4 KiB
// writes covering the volume; 33.8 bytes (8.4 GiB per TiB) with the dirty
// bitmap that a checkpoint empties. Random 4 KiB writes scattered over a
// volume 16 times the data (a page of 64 blocks then holds about 4) take
// 514 bytes per block, 129 GiB per TiB: a page costs the same however few
// of its blocks are written. Options.IndexBytes (4 GiB by default, 500 GiB
// written densely) bounds what Stats.IndexBytes counts (within 2% of the
// measured heap): past it a Write, or a Zero of fewer than 64 blocks,
// fails with an error wrapping ErrLimit that names the bound; reads go
// on, and a range Zero or DropVolume shrinks the index (TestIndexBound).
//
// # Invariants
//
//   - Per (volume, block, epoch) the version with the highest seq wins;
//     the state depends only on the set of writes, never their order (the
//     index keeps the highest seq; no read per write).
//   - Read at epoch E returns, per block, the version with the greatest
//     (epoch, seq) among those with epoch <= E; a zero record covering the
//     block is such a version (zeros). Unwritten blocks read as zeros and
//     use no space. A read is an index lookup and, per run of blocks
//     stored one after the other, a copy out of the segment's read-only
//     mapping (runs up to viewRunMax) or one ReadAt (view.go); every
//     block is checked against its crc32c, and a mismatch is an error
//     wrapping ErrIO and ErrCorrupt, never data.
//   - A volume with a lineage (SetLineage) reads, where none of its own
//     versions is visible, through its parent at the fork epoch (forks of
//     forks up to lineageDepthMax deep, ErrLimit past it); its rollbacks
//     make reads above a rollback's epoch see the snapshot it went back to
//     (lineage.go). Read and Extents honour both; a volume without a
//     lineage pays one atomic load for it. SetRetained and SetLineage are
//     durable (pebble synced) when they return nil. Changed (changed.go)
//     compares two epochs from the index alone. Flatten (flatten.go)
//     copies what a fork reads through its parent into the fork, stamped
//     (0, 0) below every real version, so that its Parent can be cleared.
//   - GC (gc.go), in the background goroutine, drops the versions that no
//     reader sees: not the live volume, a retained epoch, nor a fork's
//     ParentEpoch, through the rollbacks. Callers must keep every epoch
//     that may still be read in the retained list (see SetRetained).
//   - Zero costs O(1) records and keys whatever its length: one range
//     record (or, under 64 blocks, per-block zero versions) plus, when no
//     retained epoch is below its epoch, the removal of every older version
//     of the range from the index (one pebble range deletion at the next
//     checkpoint). A segment whose blocks are all dead is deleted once a
//     checkpoint past it is durable; the cleaner (cleaner.go, its own
//     goroutine) empties sealed segments by copying their live blocks,
//     sorted by (volume, block), to the active segment: in cost-benefit
//     order, while writes go on those less than half live (more as the
//     file system fills), throttled; once the store is idle, until the
//     segments hold at most 1.15 times the live data, and once nothing
//     but the cleaner appended for 10 s, 1.03 times (stopping at the
//     first foreground append either way). A read of 32 or more blocks
//     found scattered has them rewritten as one run in the background by
//     the same copy records (defrag.go, throttled). After issue 9's
//     aging run (1 GiB filled, then 3 GiB of 4 KiB random overwrites) the
//     store's directory takes 1.04 times the live data on disk
//     (`CAIRN_STORE_AGING_BYTES=1G go test ./backend/store -run
//     TestAgingSpace -v`; make test runs it at 64 MiB). It leaves the
//     segments no sync has covered to relog (relog.go), which moves the
//     whole live records of the emptiest of them to the head of the log
//     once 1.5 GiB are unsynced, so that they are deleted before the
//     kernel writes them: overwrites cost the device what they cost a
//     file overwritten in place, not every byte written. See Store.Zero
//     for the contract this puts on callers.
//   - VersionsSince (versions.go) reports a range's versions with seq ≥
//     a bound, every kept epoch, data and zero records, for a replica
//     catch-up; Apply stores such a copy with its original stamp (a
//     copied zero record never reclaims). Applied in any order, mixed
//     with new writes, the copies leave the replica reading as the source
//     does at every epoch the source keeps (TestVersionsCatchUp).
//   - The zero-range records of a volume stay bounded: a new record deletes
//     or trims the records it dominates, and a volume holds at most
//     rangesPerVolumeMax of them (ErrLimit past that).
//   - The log is the order of mutations: appends are serialized, so every
//     byte before the log's end is written. Small records appended at the
//     same time are written together, in one write call by one of their
//     appenders (group append, segment.go). A write or Zero with sync, and
//     every call that returned before a Sync, is durable when the call
//     returns (one SyncData per segment written since the last sync,
//     shared by every waiter; sealing a segment does not sync it, so data
//     that dies before a sync is never written to the disk: segLog).
//   - Pebble never points at data that is not durable: a checkpoint
//     (checkpoint.go) syncs the log up to a position, then commits the
//     index entries changed before it with that position (the watermark).
//     Open replays the records after the watermark in log order and stops
//     in each segment at the first torn or corrupt record, so the state
//     after a crash holds every durable call and some of the others, each
//     whole (as a disk keeps some unflushed writes, in no order).
//
// # Failures
//
// Errors from pebble or the file system wrap ErrIO. A failed segment write
// fails only that call (the next record starts a new segment if any byte
// of the failed one was written). A full disk is not a failure: a write
// that finds less than Options.ReserveBytes available, or hits ENOSPC,
// returns an error wrapping ErrNoSpace (and not ErrIO); reads go on, Zero
// and DropVolume (whose records fit in the reserve) free space, which the
// next checkpoint gives back, and writes succeed again. While space is low
// the cleaner's goroutine first punches the dead blocks out of sealed
// segments (punch.go), which needs no room, unlike the cleaner's copies.
// The low state is checked at Open, logged when it starts and ends (it
// has hysteresis: once a write is refused, writes are refused until a
// quarter of the reserve more is free, see space.go) and shown in Stats.
// Open refuses a disk without room for pebble's recovery with ErrNoSpace
// (pebble would retry its flush forever). A failed
// segment sync, or a fatal pebble error (pebble calls Logger.Fatalf on a
// failed WAL write or sync; the store's logger panics and the committing
// call recovers it), marks the store failed: that call returns an error
// wrapping ErrIO and ErrFailed, every later call fails the same way, and
// the process should restart so that recovery rebuilds the durable state.
// A fatal error in a background pebble flush or compaction (a MANIFEST
// sync) ends the process, as pebble's default does.
//
// # Concurrency
//
// All methods are safe for concurrent use from any goroutine. Close waits
// for calls in progress and stops the background goroutines (checkpoints
// and GC; the cleaner); a throttled Flatten waiting then returns ErrClosed. The volume
// layer above must not issue a Write that overlaps a Zero in flight, nor
// any call on a volume being dropped.
package store
