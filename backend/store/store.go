package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

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
	// cacheBytesDefault is the block cache size when Options.CacheBytes is 0.
	cacheBytesDefault = 256 << 20
	// sstBlockBytes is the sstable data block size. Point values are 4 KiB;
	// a read of a merged key also steps to the next key (pebble looks for
	// older merge operands), which with pebble's 4 KiB default lies in the
	// next block: 16 KiB blocks hold a few versions each.
	sstBlockBytes = 16 << 10
	// memTableBytes is pebble's memtable size.
	memTableBytes = 64 << 20
)

// Errors. Every error from the store wraps one of these; errors from pebble
// or the file system wrap ErrIO.
var (
	ErrClosed  = errors.New("store: closed")
	ErrInvalid = errors.New("store: invalid request")
	ErrIO      = errors.New("store: I/O error")
	// ErrCorrupt: bytes read from disk do not parse. Always wrapped with ErrIO.
	ErrCorrupt = errors.New("store: corrupt record")
	// ErrFailed: pebble hit a fatal error (a WAL or MANIFEST write or sync
	// failed). The store refuses every further call; the process must
	// restart so that recovery rebuilds a state from what is durable.
	// Always wrapped with ErrIO.
	ErrFailed = errors.New("store: failed, restart required")
	// ErrLimit: a bound was reached (too many zero ranges in one volume).
	ErrLimit = errors.New("store: limit reached")
)

// Stamp orders the versions of a block: epoch is the volume group's epoch,
// seq a per-volume counter that only grows. (Epoch, Seq) pairs compare
// lexicographically.
type Stamp struct{ Epoch, Seq uint64 }

// Options configure Open. The zero value works.
type Options struct {
	FS         vfs.FS       // nil: vfs.Default
	CacheBytes int64        // pebble block cache; 0: cacheBytesDefault
	Logger     *slog.Logger // nil: slog.Default()
}

// Store is a node-local versioned block store. All methods are safe for
// concurrent use.
type Store struct {
	db  *pebble.DB
	log *slog.Logger

	// failed holds the fatal error once pebble failed (see ErrFailed).
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

	calls calls // invariants builds only
}

// volume is the in-memory state of one volume.
type volume struct {
	// ranges is the current zero-range index; replaced, never mutated.
	ranges atomic.Pointer[rangeSet]
	// seqHigh is the highest seq of a point version written since Open; a
	// Zero with a lower seq does not reclaim (see Zero).
	seqHigh atomic.Uint64
	// mu serializes Zero, SetRetained and DropVolume on this volume.
	mu       sync.Mutex
	retained []uint64 // ascending; guarded by mu
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.CacheBytes < 0 {
		return nil, fmt.Errorf("store: open %s: %w: CacheBytes %d", dir, ErrInvalid, opts.CacheBytes)
	}
	if opts.CacheBytes == 0 {
		opts.CacheBytes = cacheBytesDefault
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Store{log: opts.Logger.With("component", "store", "dir", dir)}
	s.vols.m = make(map[uint64]*volume)
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref()
	po := &pebble.Options{
		FS:                 opts.FS,
		Cache:              cache,
		Merger:             merger,
		Logger:             pebbleLogger{s.log},
		MemTableSize:       memTableBytes,
		FormatMajorVersion: pebble.FormatNewest,
	}
	for i := range po.Levels {
		po.Levels[i].BlockSize = sstBlockBytes
	}
	// Block data is mostly incompressible (file systems, databases,
	// encrypted and compressed media): snappy cost 29% of the CPU of a
	// 1 MiB sequential write load and saved nothing on it.
	po.ApplyCompressionSettings(func() pebble.DBCompressionSettings { return pebble.DBCompressionNone })
	db, err := openDB(dir, po)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w: %w", dir, ErrIO, err)
	}
	s.db = db
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	s.log.Info("store opened", "volumes", len(s.vols.m))
	return s, nil
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

// load reads the range records and retained epochs into memory.
func (s *Store) load() error {
	byVol := map[uint64][]zrange{}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tagRange}, UpperBound: []byte{tagRange + 1}})
	if err != nil {
		return fmt.Errorf("load ranges: %w: %w", ErrIO, err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("load: %w: %w", ErrIO, err)
		}
		vol, r, err := decodeRange(it.Key(), v)
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("load ranges: %w: %w", ErrIO, err)
		}
		if len(byVol[vol]) >= rangesPerVolumeMax {
			_ = it.Close()
			return fmt.Errorf("load ranges: volume %d: %w: %w: more than %d ranges", vol, ErrIO, ErrCorrupt, rangesPerVolumeMax)
		}
		byVol[vol] = append(byVol[vol], r)
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("load ranges: %w: %w", ErrIO, err)
	}
	for vol, rs := range byVol {
		s.volume(vol).ranges.Store(newRangeSet(rs))
	}

	it, err = s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tagRetained}, UpperBound: []byte{tagRetained + 1}})
	if err != nil {
		return fmt.Errorf("load retained: %w: %w", ErrIO, err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("load: %w: %w", ErrIO, err)
		}
		k := it.Key()
		if len(k) != volPrefixLen {
			_ = it.Close()
			return fmt.Errorf("load retained: %w: %w: key %x", ErrIO, ErrCorrupt, k)
		}
		epochs, err := decodeRetained(v)
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("load retained: %w: %w", ErrIO, err)
		}
		s.volume(binary.BigEndian.Uint64(k[1:])).retained = epochs
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("load retained: %w: %w", ErrIO, err)
	}
	return nil
}

// Close closes the store. It waits for calls in progress; later calls
// return ErrClosed. Close is idempotent (later calls return nil). A failed
// store is closed without closing pebble, whose commit pipeline may be
// stuck, and Close returns an error wrapping ErrFailed; the process should
// exit soon after.
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.life.closed {
		return nil
	}
	s.life.closed = true
	if f := s.failed.Load(); f != nil {
		s.log.Error("store closed after a fatal error; pebble left open")
		return fmt.Errorf("store: close: %w: %w: %w", ErrIO, ErrFailed, *f)
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w: %w", ErrIO, err)
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
		v = &volume{}
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
	var fe error = f
	s.failed.CompareAndSwap(nil, &fe)
	s.log.Error("store failed", "err", f.msg)
	*err = fmt.Errorf("%w: %w: %w", ErrIO, ErrFailed, f)
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

// SetRetained records the snapshot epochs of vol that must stay readable
// (none by default). A Zero at epoch e reclaims the space of older versions
// only when no retained epoch is below e. The list is persisted (without a
// sync of its own; the next sync write or Sync makes it durable) and capped
// at retainedEpochsMax, keeping the oldest epochs.
func (s *Store) SetRetained(vol uint64, epochs []uint64) {
	if err := s.enter(context.Background()); err != nil {
		s.log.Error("set retained", "vol", vol, "err", err)
		return
	}
	defer s.life.RUnlock()
	es := slices.Clone(epochs)
	slices.Sort(es)
	es = slices.Compact(es)
	if len(es) > retainedEpochsMax {
		s.log.Error("too many retained epochs; keeping the oldest", "vol", vol, "epochs", len(es), "max", retainedEpochsMax)
		es = es[:retainedEpochsMax]
	}
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
	if err := s.commit(b, false); err != nil {
		// Keep the in-memory list anyway: it only restricts reclaiming.
		s.log.Error("set retained: persist", "vol", vol, "err", err)
	}
	v.retained = es
}

// reclaimable reports whether a Zero at epoch may drop older versions: no
// retained epoch is below it. Caller holds v.mu.
func (v *volume) reclaimable(epoch uint64) bool {
	return len(v.retained) == 0 || v.retained[0] >= epoch
}
