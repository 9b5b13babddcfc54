package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// BlockSize is the size of a block in bytes.
const BlockSize = 4096

// Bounds.
const (
	// BlocksMax bounds block addresses: a volume spans at most 2^64 bytes.
	BlocksMax = 1 << 52
	// RequestBytesMax bounds one Read or Write.
	RequestBytesMax = 16 << 20
	// zeroRangeBlocksMin: Zero of fewer blocks writes per-block zero points
	// instead of a range record.
	zeroRangeBlocksMin = 64
	// zeroPointsBlocksMax: when a volume's range records are at
	// rangesPerVolumeMax, a Zero of at most this many blocks falls back to
	// zero points; a larger one fails with ErrLimit.
	zeroPointsBlocksMax = 4096
	// rangesPerVolumeMax bounds the range records (and the in-memory index)
	// of one volume.
	rangesPerVolumeMax = 1 << 16
	// retainedEpochsMax bounds SetRetained's list per volume.
	retainedEpochsMax = 4096
	// cacheBytesDefault is the pebble block cache size when
	// Options.CacheBytes is 0. Pebble holds only metadata; block reads are
	// served from segment files through the page cache.
	cacheBytesDefault = 64 << 20
	// memTableBytes is pebble's memtable size (and so its WAL file size).
	memTableBytes = 8 << 20
	// segmentBytesDefault is the size at which a segment is sealed.
	segmentBytesDefault = 64 << 20
	// reserveBytesDefault is the free space kept for pebble (a WAL file, a
	// flush), zero records and the cleaner when data writes are refused.
	reserveBytesDefault = 64 << 20
	// indexBytesDefault bounds the in-memory index: about 500 GiB of
	// blocks written in one epoch.
	indexBytesDefault = 4 << 30
)

// Errors. Every error from the store wraps one of these; errors from pebble
// or the file system wrap ErrIO.
var (
	ErrClosed  = errors.New("store: closed")
	ErrInvalid = errors.New("store: invalid request")
	ErrIO      = errors.New("store: I/O error")
	// ErrCorrupt: bytes read from disk do not parse. Always wrapped with ErrIO.
	ErrCorrupt = errors.New("store: corrupt record")
	// ErrFailed: a segment sync failed, or pebble hit a fatal error (a WAL
	// or MANIFEST write or sync failed). The store refuses every further call; the process must
	// restart so that recovery rebuilds a state from what is durable.
	// Always wrapped with ErrIO.
	ErrFailed = errors.New("store: failed, restart required")
	// ErrNoSpace: the file system has no room for the data of a write (it
	// hit ENOSPC, or its free space is below Options.ReserveBytes, which is
	// kept for metadata, Zero and the cleaner). Not wrapped with ErrIO and
	// not fatal: reads go on, Zero and DropVolume free space, and writes
	// succeed again once there is room.
	ErrNoSpace = errors.New("store: no space")
	// ErrLimit: a bound was reached (too many zero ranges in one volume,
	// the index memory bound Options.IndexBytes).
	ErrLimit = errors.New("store: limit reached")
)

// Stamp orders the versions of a block: epoch is the volume group's epoch,
// seq a per-volume counter that only grows. (Epoch, Seq) pairs compare
// lexicographically.
type Stamp struct{ Epoch, Seq uint64 }

// Options configure Open. The zero value works.
type Options struct {
	FS         vfs.FS       // nil: vfs.Default
	CacheBytes int64        // pebble block cache (metadata only); 0: cacheBytesDefault
	Logger     *slog.Logger // nil: slog.Default()
	// SegmentBytes is the size at which a segment file is sealed and the
	// next one started; 0: segmentBytesDefault.
	SegmentBytes int64
	// IndexBytes bounds the memory of the in-memory block index (about
	// 8.1 GiB per TiB of blocks written); writes past it fail with
	// ErrLimit. 0: indexBytesDefault.
	IndexBytes int64
	// ReserveBytes is the free space kept for metadata, zeros and the
	// cleaner: a write fails with ErrNoSpace while the file system has
	// less available. 0: reserveBytesDefault.
	ReserveBytes int64
	// FlattenBytesPerSec throttles the copies of Flatten; 0:
	// flattenBytesPerSecDefault (64 MiB/s).
	FlattenBytesPerSec int64
	// GCBytesPerSec throttles the background GC pass by the bytes of block
	// versions it examines (see gc.go); 0: gcBytesPerSecDefault.
	GCBytesPerSec int64
}

// Store is a node-local versioned block store. All methods are safe for
// concurrent use.
type Store struct {
	db  *pebble.DB
	log *slog.Logger
	seg *segLog

	indexMax   int64
	indexBytes atomic.Int64 // bytes of every volume's index
	fs         vfs.FS
	dir        string
	reserve    int64 // Options.ReserveBytes
	// flattenRate and gcRate are Options.FlattenBytesPerSec and
	// Options.GCBytesPerSec.
	flattenRate, gcRate int64
	space               space

	// punchOff: punching holes failed (not supported); see punch.go.
	punchOff atomic.Bool

	// failed holds the fatal error once pebble or a segment sync failed
	// (see ErrFailed).
	failed atomic.Pointer[error]

	// life guards db against Close: every call holds it for reading.
	life struct {
		sync.RWMutex
		closed bool
	}

	vols struct {
		sync.RWMutex
		m map[uint64]*volume
	}

	// apply is held for reading from a record's append to the end of its
	// index update, for writing by a checkpoint: a checkpoint sees the
	// index exactly as of a log position.
	apply sync.RWMutex
	// drops are the volumes dropped since the last checkpoint (under
	// dropsMu).
	dropsMu sync.Mutex
	drops   []uint64
	// dirty counts the dirty index entries of every volume.
	dirty atomic.Int64

	ck struct {
		sync.Mutex // one checkpoint at a time
		last       pos
		// base is the log's appended minus reaped bytes at last, read
		// without the mutex (logGrew: every Write asks, and a checkpoint
		// holds the mutex across a sync and a commit).
		base   atomic.Int64
		when   atomic.Int64 // unix nanoseconds of the last checkpoint
		ents   []ckEnt
		groups []ckGroup
	}
	cleanMu sync.Mutex  // one cleaning pass at a time
	cl      cleanState  // cleaner.go
	df      defragState // defrag.go
	gcMu    sync.Mutex  // one GC pass at a time
	// linGen counts SetLineage and DropVolume calls: a fork's lineage
	// changes the readers of its parent (see gc.go).
	linGen atomic.Uint64
	kick   chan struct{}
	done   chan struct{}
	wg     sync.WaitGroup

	stats counters

	calls calls // invariants builds only
}

// volume is the in-memory state of one volume.
type volume struct {
	id uint64
	// ranges is the current zero-range index; replaced, never mutated.
	ranges atomic.Pointer[rangeSet]
	// seqHigh is the highest seq of a point version written since Open; a
	// Zero with a lower seq does not reclaim (see Zero).
	seqHigh atomic.Uint64
	// epochHigh is the highest epoch of a Write or Zero since Open.
	epochHigh atomic.Uint64
	// mu serializes Zero, SetRetained and DropVolume on this volume.
	mu       sync.Mutex
	retained []uint64 // ascending; guarded by mu
	// retainedSet: SetRetained was called since Open, when epochHigh was
	// retainedAt (under mu). GC waits for a call that saw the newest epoch.
	retainedSet bool
	retainedAt  uint64
	// through: the retained list is complete below this epoch, and
	// epochs from it on may be read too (SetRetainedThrough); 0: no bound
	// given, the guard above applies. Under mu.
	through uint64
	// lin is the volume's lineage, nil for none; replaced, never mutated
	// (written under mu).
	lin atomic.Pointer[Lineage]
	// gcGen counts the changes that may make versions unreachable (see gc.go).
	gcGen atomic.Uint64
	// gcLast is the volume as the last GC pass saw it (under mu).
	gcLast gcMark
	idx    index
}

// Open opens (creating if needed) the store in dir: pebble's files in dir,
// segments in dir/segments. It replays the records written after the last
// checkpoint, stopping in each segment at the first torn or corrupt record.
func Open(dir string, opts Options) (*Store, error) {
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.CacheBytes < 0 || opts.SegmentBytes < 0 || opts.IndexBytes < 0 || opts.ReserveBytes < 0 || opts.FlattenBytesPerSec < 0 || opts.GCBytesPerSec < 0 {
		return nil, fmt.Errorf("store: open %s: %w: CacheBytes %d, SegmentBytes %d, IndexBytes %d, ReserveBytes %d, FlattenBytesPerSec %d, GCBytesPerSec %d",
			dir, ErrInvalid, opts.CacheBytes, opts.SegmentBytes, opts.IndexBytes, opts.ReserveBytes, opts.FlattenBytesPerSec, opts.GCBytesPerSec)
	}
	if opts.FlattenBytesPerSec == 0 {
		opts.FlattenBytesPerSec = flattenBytesPerSecDefault
	}
	if opts.GCBytesPerSec == 0 {
		opts.GCBytesPerSec = gcBytesPerSecDefault
	}
	if opts.ReserveBytes == 0 {
		opts.ReserveBytes = reserveBytesDefault
	}
	if opts.CacheBytes == 0 {
		opts.CacheBytes = cacheBytesDefault
	}
	if opts.SegmentBytes == 0 {
		opts.SegmentBytes = segmentBytesDefault
	}
	if opts.IndexBytes == 0 {
		opts.IndexBytes = indexBytesDefault
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Store{
		log:         opts.Logger.With("component", "store", "dir", dir),
		indexMax:    opts.IndexBytes,
		fs:          opts.FS,
		dir:         dir,
		reserve:     opts.ReserveBytes,
		flattenRate: opts.FlattenBytesPerSec,
		gcRate:      opts.GCBytesPerSec,
		kick:        make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	s.vols.m = make(map[uint64]*volume)
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref()
	po := &pebble.Options{
		FS:                 opts.FS,
		Cache:              cache,
		Merger:             merger,
		Logger:             pebbleLogger{s.log},
		Cleaner:            walCleaner{},
		MemTableSize:       memTableBytes,
		FormatMajorVersion: pebble.FormatNewest,
	}
	po.ApplyCompressionSettings(func() pebble.DBCompressionSettings { return pebble.DBCompressionNone })
	if err := opts.FS.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("store: open %s: %w: %w", dir, ErrIO, err)
	}
	if err := checkOpenSpace(opts.FS, dir); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	db, err := openDB(dir, po)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w: %w", dir, ErrIO, err)
	}
	s.db = db
	s.seg = newSegLog(opts.FS, opts.FS.PathJoin(dir, "segments"), opts.SegmentBytes)
	if err := s.load(); err != nil {
		_ = s.seg.close()
		_ = db.Close()
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	// A store opened on a full disk says so now, not at the first write.
	_ = s.checkSpace(0, s.reserve)
	s.df.q = make(chan *defragReq, defragQueue)
	s.wg.Add(3)
	go s.background()
	go s.cleaner()
	go s.defragger()
	s.log.Info("store opened", "volumes", len(s.vols.m), "segments", len(*s.seg.tab.Load()), "index_bytes", s.indexBytes.Load())
	return s, nil
}

// walCleaner deletes pebble's obsolete files, as pebble's default
// DeleteCleaner does, and keeps pebble from recycling WAL files. A
// recycled WAL keeps the size of the largest batch stream it ever took
// (a checkpoint after GC dropped a million versions is tens of MiB of
// deletes), and pebble keeps MemTableStopWritesThreshold+1 of them: in
// TestSnapshotSpace at 1 GiB, 44 MiB of WALs in two files after the
// snapshots were deleted, 4% of the live data. Pebble recycles only when
// its cleaner does not implement base.NeedsFileContents (which it asks
// of ArchiveCleaner, the one cleaner that keeps the files); the embedded
// ArchiveCleaner is there for that mark alone, one level deeper than
// DeleteCleaner, whose Clean and String are the ones that count. The
// store's pebble commits are checkpoints and small metadata edits, a few a
// second at most, so a new WAL file per memtable costs nothing that
// matters; an obsolete WAL is one whose memtable pebble flushed and whose
// flush the MANIFEST records, so deleting it instead of keeping it for
// reuse loses nothing (TestWALNotRecycled pins that they go).
type walCleaner struct {
	pebble.DeleteCleaner
	walCleanerMark
}

type walCleanerMark struct{ pebble.ArchiveCleaner }

// openSpaceSlackBytes is the room pebble's Open needs besides the bytes of
// its WALs: the index blocks of the table it flushes them to, a new WAL,
// OPTIONS and MANIFEST files.
const openSpaceSlackBytes = 2 << 20

// checkOpenSpace fails with ErrNoSpace when the file system of dir has no
// room for pebble's Open, which flushes the WALs it replays and retries a
// failed flush forever (logging each try): on a full disk Open would never
// return. It needs the WALs' bytes (recycled WAL files count too, so this
// errs on the safe side), plus openSpaceSlackBytes. A file system that does
// not report its usage passes.
func checkOpenSpace(fs vfs.FS, dir string) error {
	du, err := fs.GetDiskUsage(dir)
	if err != nil {
		return nil
	}
	names, err := fs.List(dir)
	if err != nil {
		return fmt.Errorf("%w: list: %w", ErrIO, err)
	}
	var wal int64
	for _, name := range names {
		if strings.HasSuffix(name, ".log") {
			if fi, err := fs.Stat(fs.PathJoin(dir, name)); err == nil {
				wal += fi.Size()
			}
		}
	}
	if need := wal + openSpaceSlackBytes; du.AvailBytes < uint64(need) {
		return fmt.Errorf("%w: %d bytes available, recovery needs %d (its %d bytes of WAL flushed, and new metadata files): free space on this file system and start again",
			ErrNoSpace, du.AvailBytes, need, wal)
	}
	return nil
}

// openDB calls pebble.Open, turning a fatal error during recovery into an
// error return.
func openDB(dir string, po *pebble.Options) (db *pebble.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatalError)
			if !ok {
				panic(r)
			}
			err = f
		}
	}()
	return pebble.Open(dir, po)
}

// Close closes the store: it waits for calls in progress, writes a last
// checkpoint (so that the next Open replays nothing) and closes the files;
// later calls return ErrClosed. Close is idempotent (later calls return
// nil). A failed store is closed without closing pebble, whose commit
// pipeline may be stuck, and Close returns an error wrapping ErrFailed; the
// process should exit soon after.
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.life.closed {
		return nil
	}
	s.life.closed = true
	close(s.done)
	s.wg.Wait()
	if f := s.failed.Load(); f != nil {
		s.log.Error("store closed after a fatal error; pebble left open")
		return fmt.Errorf("store: close: %w: %w: %w", ErrIO, ErrFailed, *f)
	}
	err := s.checkpoint()
	if f := s.failed.Load(); f != nil {
		s.log.Error("store closed after a fatal error; pebble left open")
		return fmt.Errorf("store: close: %w: %w: %w", ErrIO, ErrFailed, *f)
	}
	if cerr := s.seg.close(); cerr != nil && err == nil {
		err = fmt.Errorf("%w: %w", ErrIO, cerr)
	}
	if cerr := s.db.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("%w: %w", ErrIO, cerr)
	}
	if err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	s.log.Info("store closed")
	return nil
}

// enter starts a call: it fails if ctx is done or the store is closed or
// failed. On
// success the caller must call s.life.RUnlock.
func (s *Store) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.life.RLock()
	if s.life.closed {
		s.life.RUnlock()
		return ErrClosed
	}
	if f := s.failed.Load(); f != nil {
		s.life.RUnlock()
		return fmt.Errorf("%w: %w: %w", ErrIO, ErrFailed, *f)
	}
	return nil
}

// volume returns the state of vol, creating it.
func (s *Store) volume(vol uint64) *volume {
	s.vols.RLock()
	v := s.vols.m[vol]
	s.vols.RUnlock()
	if v != nil {
		return v
	}
	s.vols.Lock()
	defer s.vols.Unlock()
	if v = s.vols.m[vol]; v == nil {
		v = &volume{id: vol}
		v.idx.pages = make(map[uint64]*page)
		v.idx.dirty = make(map[dkey]uint64)
		s.vols.m[vol] = v
	}
	return v
}

// lookup returns the state of vol or nil.
func (s *Store) lookup(vol uint64) *volume {
	s.vols.RLock()
	defer s.vols.RUnlock()
	return s.vols.m[vol]
}

// commit applies b and closes it. A fatal pebble error (which pebble reports
// through Logger.Fatalf, see pebbleLogger) marks the store failed and is
// returned wrapped in ErrIO and ErrFailed: a write is never reported done
// unless pebble returned success.
func (s *Store) commit(b *pebble.Batch, sync bool) (err error) {
	defer s.recoverFatal(&err)
	wo := pebble.NoSync
	if sync {
		wo = pebble.Sync
	}
	if err := b.Commit(wo); err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	// Close only after a successful commit: after a failed one pebble may
	// still reference the batch.
	_ = b.Close()
	return nil
}

// recoverFatal turns a fatalError panic raised in this goroutine into an
// error and marks the store failed. Other panics propagate.
func (s *Store) recoverFatal(err *error) {
	r := recover()
	if r == nil {
		return
	}
	f, ok := r.(fatalError)
	if !ok {
		panic(r)
	}
	*err = s.fail(f)
}

// fail marks the store failed with cause and returns the error to report.
func (s *Store) fail(cause error) error {
	if s.failed.CompareAndSwap(nil, &cause) {
		s.log.Error("store failed", "err", cause)
	}
	return fmt.Errorf("%w: %w: %w", ErrIO, ErrFailed, cause)
}

// ioErr classifies an error of a segment operation: a failed sync fails
// the store; ENOSPC wraps ErrNoSpace; anything else wraps ErrIO.
func (s *Store) ioErr(err error) error {
	var es errSync
	if errors.As(err, &es) {
		return s.fail(es)
	}
	if errors.Is(err, syscall.ENOSPC) {
		s.space.setLow(s, true, 0)
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return fmt.Errorf("%w: %w", ErrIO, err)
}

// fatalError is the panic value of pebbleLogger.Fatalf.
type fatalError struct{ msg string }

func (f fatalError) Error() string { return "pebble fatal: " + f.msg }

// pebbleLogger adapts slog to pebble's Logger. Pebble calls Fatalf when it
// cannot go on: a failed WAL write or sync in the commit path ("fatal commit
// error"), a failed MANIFEST write or sync in a background flush or
// compaction. Its default logger then exits the process. Fatalf here logs
// and panics instead: in a committing goroutine Store.commit recovers it and
// fails the store; in a background goroutine the panic ends the process, as
// pebble's default would. Fatalf never returns, so a failed sync can never
// be reported as success.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Info(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg, "source", "pebble", "fatal", true)
	panic(fatalError{msg})
}

func checkBlocks(block, n uint64) error {
	if n == 0 || block >= BlocksMax || n > BlocksMax-block {
		return fmt.Errorf("%w: blocks [%d, +%d) outside [0, %d)", ErrInvalid, block, n, uint64(BlocksMax))
	}
	return nil
}

func checkBuf(n int) error {
	if n == 0 || n%BlockSize != 0 || n > RequestBytesMax {
		return fmt.Errorf("%w: buffer of %d bytes (want a non-zero multiple of %d, at most %d)", ErrInvalid, n, BlockSize, RequestBytesMax)
	}
	return nil
}

// SetRetained records the snapshot epochs of vol that must stay readable; durable when it returns nil.
//
// Durable means that after a crash the store keeps at least these epochs
// readable: a list with an epoch the previous one lacks is written and
// synced before it returns; a list that only drops epochs is written
// without a sync (it becomes durable with the store's next sync), since
// either list a crash may leave holds every epoch of the new one. A
// snapshot's deletion then costs no sync (cairn issue 10: one fdatasync
// fewer per snapshot rotated).
//
// Reads at these epochs, and at the live epoch, keep seeing what they saw:
// a Zero at epoch e reclaims older versions only when no retained epoch is
// below e, and GC drops only versions that neither the live volume nor a
// retained epoch can see. The list replaces the previous one; more than
// retainedEpochsMax distinct epochs fail with ErrLimit and change nothing.
// Caller contract: the list holds the epoch of every snapshot of vol that
// is sealed or may still be sealed (pending snapshots too), and the
// ParentEpoch of every fork of vol (see SetLineage). As a guard against a
// list that lags the epochs, GC leaves vol alone until a SetRetained call
// made since Open and after the first Write or Zero of vol's newest epoch
// (see gc.go): call it again after each epoch change.
func (s *Store) SetRetained(vol uint64, epochs []uint64) error {
	return s.SetRetainedThrough(vol, epochs, 0)
}

// SetRetainedThrough is SetRetained for a list known complete below the
// epoch through: the caller's catalog shows vol at write epoch through,
// and epochs holds every snapshot (and fork base) epoch below it. Epochs
// from through on may have readers the caller does not know of yet (a
// snapshot reserved after the catalog state the list came from), so
// every version that a read at some epoch ≥ through can see is kept: what
// a read at through sees and every version stamped above through, and a
// Zero stamped above through reclaims nothing. A
// list that lags is then only less space returned, never lost data; the
// epochHigh guard of SetRetained is not needed. through = 0: no bound
// (SetRetained).
func (s *Store) SetRetainedThrough(vol uint64, epochs []uint64, through uint64) error {
	es := slices.Clone(epochs)
	slices.Sort(es)
	es = slices.Compact(es)
	if len(es) > retainedEpochsMax {
		return fmt.Errorf("store: set retained of vol %d: %w: %d epochs, at most %d", vol, ErrLimit, len(es), retainedEpochsMax)
	}
	if err := s.enter(context.Background()); err != nil {
		return fmt.Errorf("store: set retained of vol %d: %w", vol, err)
	}
	defer s.life.RUnlock()
	v := s.volume(vol)
	v.mu.Lock()
	defer v.mu.Unlock()
	b := s.db.NewBatch()
	k := volPrefix(make([]byte, volPrefixLen), tagRetained, vol)
	if len(es) == 0 {
		_ = b.Delete(k, nil)
	} else {
		_ = b.Set(k, encodeRetained(es), nil)
	}
	// v.retained is the list last written (loaded at Open, or the last
	// call's): each list a crash may leave on disk holds every epoch of
	// it, by induction.
	if err := s.commit(b, !subsetSorted(es, v.retained)); err != nil {
		return fmt.Errorf("store: set retained of vol %d: %w", vol, err)
	}
	v.retained = es
	v.retainedSet, v.retainedAt, v.through = true, v.epochHigh.Load(), through
	v.gcGen.Add(1)
	return nil
}

// subsetSorted reports whether every element of a is in b; both
// ascending without duplicates.
func subsetSorted(a, b []uint64) bool {
	j := 0
	for _, x := range a {
		for j < len(b) && b[j] < x {
			j++
		}
		if j == len(b) || b[j] != x {
			return false
		}
		j++
	}
	return true
}

// raiseEpoch records that a Write or Zero stamped epoch arrived.
func (v *volume) raiseEpoch(epoch uint64) {
	for {
		cur := v.epochHigh.Load()
		if epoch <= cur || v.epochHigh.CompareAndSwap(cur, epoch) {
			return
		}
	}
}

// reclaimable reports whether a Zero at epoch may drop older versions: no
// retained epoch is below it. Caller holds v.mu.
func (v *volume) reclaimable(epoch uint64) bool {
	if v.through != 0 && epoch > v.through {
		return false // readers in [through, epoch) may exist
	}
	return len(v.retained) == 0 || v.retained[0] >= epoch
}
