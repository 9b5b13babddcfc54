package store

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// segment is one append-only segment file. Only the active segment is
// written; every segment is read.
type segment struct {
	id uint32
	f  vfs.File
	// live counts the data blocks the index points at in this segment.
	live atomic.Int64
	// bytes is the size written (a sealed segment's final size).
	bytes atomic.Int64
	// punched is the bytes of dead pages punched out (punch.go);
	// punchedLive the live count when they were found.
	punched, punchedLive atomic.Int64
}

// pos is a position in the log: a byte offset in a segment. Positions
// order by (seg, off).
type pos struct {
	seg uint32
	off int64
}

func (p pos) less(q pos) bool { return p.seg < q.seg || (p.seg == q.seg && p.off < q.off) }

// segLog is the store's log of records over segment files in one
// directory. Appends are serialized (one write call per record part, in
// log order), so every byte before the current end is written; Sync makes
// a prefix durable with one SyncData shared by every waiter (group commit).
type segLog struct {
	fs       vfs.FS
	dir      string
	segBytes int64

	// mu serializes appends and guards the active segment.
	mu     sync.Mutex
	active *segment
	off    int64 // end of the active segment
	// written is where writeback was last started in the active segment.
	written int64
	nextID  uint32 // id of the next segment
	// roll: the active segment must be sealed before the next append (a
	// write into it failed, or a roll did).
	roll bool

	// tab maps ids to segments; replaced, never mutated (under mu).
	tab atomic.Pointer[map[uint32]*segment]
	// files guards the lifetime of segment files: readers hold it for
	// reading across ReadAt; removal takes it for writing.
	files sync.RWMutex

	sync struct {
		sync.Mutex
		cond    *sync.Cond
		syncing bool
		durable pos   // every record before durable is synced
		err     error // a failed sync: sticky
	}
}

func newSegLog(fs vfs.FS, dir string, segBytes int64) *segLog {
	l := &segLog{fs: fs, dir: dir, segBytes: segBytes}
	l.sync.cond = sync.NewCond(&l.sync.Mutex)
	m := map[uint32]*segment{}
	l.tab.Store(&m)
	return l
}

// writebackBytes: every this many bytes appended, writeback of the active
// segment is started (as pebble's BytesPerSync does for its files).
const writebackBytes = 4 << 20

func segName(id uint32) string { return fmt.Sprintf("%08x.seg", id) }

func parseSegName(name string) (uint32, bool) {
	hex, ok := strings.CutSuffix(name, ".seg")
	if !ok || len(hex) != 8 {
		return 0, false
	}
	id, err := strconv.ParseUint(hex, 16, 32)
	return uint32(id), err == nil
}

func (l *segLog) path(id uint32) string { return l.fs.PathJoin(l.dir, segName(id)) }

// segment returns segment id or nil.
func (l *segLog) segment(id uint32) *segment { return (*l.tab.Load())[id] }

// publish adds (or with f nil removes) segment s in the table. Caller
// holds mu.
func (l *segLog) publish(s *segment, remove bool) {
	m := make(map[uint32]*segment, len(*l.tab.Load())+1)
	for id, x := range *l.tab.Load() {
		m[id] = x
	}
	if remove {
		delete(m, s.id)
	} else {
		m[s.id] = s
	}
	l.tab.Store(&m)
}

// openExisting lists and opens the directory's segments, ascending.
func (l *segLog) openExisting() ([]*segment, error) {
	if err := l.fs.MkdirAll(l.dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: mkdir %s: %w", ErrIO, l.dir, err)
	}
	// The directory entry of the segments directory must be durable before
	// any segment in it counts.
	if err := syncDir(l.fs, l.fs.PathDir(l.dir)); err != nil {
		return nil, fmt.Errorf("%w: sync %s: %w", ErrIO, l.fs.PathDir(l.dir), err)
	}
	names, err := l.fs.List(l.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: list %s: %w", ErrIO, l.dir, err)
	}
	var segs []*segment
	for _, name := range names {
		id, ok := parseSegName(name)
		if !ok {
			continue
		}
		f, err := l.fs.Open(l.path(id))
		if err != nil {
			for _, s := range segs {
				_ = s.f.Close()
			}
			return nil, fmt.Errorf("%w: open segment %s: %w", ErrIO, name, err)
		}
		s := &segment{id: id, f: f}
		if fi, err := f.Stat(); err == nil {
			s.bytes.Store(fi.Size())
		}
		segs = append(segs, s)
	}
	slices.SortFunc(segs, func(a, b *segment) int { return cmpU64(uint64(a.id), uint64(b.id)) })
	l.mu.Lock()
	for _, s := range segs {
		l.publish(s, false)
		l.nextID = max(l.nextID, s.id+1)
	}
	l.mu.Unlock()
	return segs, nil
}

// errSync marks an error of a segment sync: the store fails (see
// ErrFailed), since what the kernel dropped cannot be known.
type errSync struct{ err error }

func (e errSync) Error() string { return "segment sync: " + e.err.Error() }
func (e errSync) Unwrap() error { return e.err }

// rollLocked seals the active segment (synced) and starts a new one whose
// directory entry is durable. Caller holds mu.
func (l *segLog) rollLocked() error {
	if a := l.active; a != nil && l.off > 0 {
		if err := a.f.SyncData(); err != nil {
			return errSync{fmt.Errorf("segment %s: %w", segName(a.id), err)}
		}
		l.markDurable(pos{a.id, l.off})
	}
	id := l.nextID
	f, err := l.fs.OpenReadWrite(l.path(id), vfs.WriteCategoryUnspecified)
	if err != nil {
		l.roll = true
		return fmt.Errorf("create segment %s: %w", segName(id), err)
	}
	if err := syncDir(l.fs, l.dir); err != nil {
		_ = f.Close()
		_ = l.fs.Remove(l.path(id))
		l.roll = true
		return fmt.Errorf("create segment %s: sync dir: %w", segName(id), err)
	}
	l.nextID++
	s := &segment{id: id, f: f}
	l.publish(s, false)
	l.active, l.off, l.written, l.roll = s, 0, 0, false
	return nil
}

func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// append writes a record: rec starts with its header (sealed here) and
// may hold the data after it already; data, if not nil, follows. It returns the position of the record and the end of the log after
// it. A failed write leaves a torn record that recovery stops at; the next
// append starts a new segment.
func (l *segLog) append(h *recHeader, rec, data []byte) (at, end pos, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	size := int64(len(rec) + len(data))
	if l.roll || l.active == nil || (l.off > 0 && l.off+size > l.segBytes) {
		if err := l.rollLocked(); err != nil {
			return pos{}, pos{}, err
		}
	}
	a := l.active
	h.seg, h.off = a.id, l.off
	encodeHeader(rec, h)
	if n, err := a.f.WriteAt(rec, l.off); err != nil {
		// Nothing written (ENOSPC, typically): the next record may go to
		// the same place. Otherwise the torn record must stay the last one
		// of its segment, since bytes after it are never read as records.
		l.roll = n > 0
		return pos{}, pos{}, fmt.Errorf("segment %s: write at %d: %w", segName(a.id), l.off, err)
	}
	if len(data) > 0 {
		if _, err := a.f.WriteAt(data, l.off+int64(len(rec))); err != nil {
			l.roll = true
			return pos{}, pos{}, fmt.Errorf("segment %s: write at %d: %w", segName(a.id), l.off, err)
		}
	}
	at = pos{a.id, l.off}
	l.off += size
	a.bytes.Store(l.off)
	if l.off-l.written >= writebackBytes {
		// Start writeback of what was appended (sync_file_range, no wait),
		// so that a later SyncData (a FLUSH, a checkpoint) finds little
		// left to write. Advisory: errors are ignored.
		_, _ = a.f.SyncTo(l.off)
		l.written = l.off
	}
	return at, pos{a.id, l.off}, nil
}

// end returns the end of the log.
func (l *segLog) end() pos {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.active == nil {
		return pos{}
	}
	return pos{l.active.id, l.off}
}

func (l *segLog) markDurable(p pos) {
	l.sync.Lock()
	if l.sync.durable.less(p) {
		l.sync.durable = p
	}
	l.sync.Unlock()
}

// syncTo makes every record before target durable: one SyncData of the
// active segment serves every waiter whose target it covers (sealed
// segments were synced when they were sealed). A failed sync is sticky and
// wraps errSync.
func (l *segLog) syncTo(target pos) error {
	l.sync.Lock()
	defer l.sync.Unlock()
	for {
		if l.sync.err != nil {
			return l.sync.err
		}
		if !l.sync.durable.less(target) {
			return nil
		}
		if !l.sync.syncing {
			break
		}
		l.sync.cond.Wait()
	}
	l.sync.syncing = true
	l.sync.Unlock()
	l.mu.Lock()
	a, e := l.active, pos{}
	if a != nil {
		e = pos{a.id, l.off}
	}
	l.mu.Unlock()
	var err error
	if a != nil {
		err = a.f.SyncData()
	}
	l.sync.Lock()
	l.sync.syncing = false
	l.sync.cond.Broadcast()
	if err != nil {
		l.sync.err = errSync{fmt.Errorf("segment %s: %w", segName(a.id), err)}
		return l.sync.err
	}
	if l.sync.durable.less(e) {
		l.sync.durable = e
	}
	if l.sync.durable.less(target) {
		// Not reached: target was taken before e.
		return fmt.Errorf("%w: sync to %v reached only %v", ErrIO, target, e)
	}
	return nil
}

// remove deletes segments (none of them active or referenced): readers in
// ReadAt finish first.
func (l *segLog) remove(segs []*segment) error {
	if len(segs) == 0 {
		return nil
	}
	l.mu.Lock()
	for _, s := range segs {
		l.publish(s, true)
	}
	l.mu.Unlock()
	l.files.Lock()
	defer l.files.Unlock()
	var errs []error
	for _, s := range segs {
		if err := s.f.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := l.fs.Remove(l.path(s.id)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// close closes every segment file.
func (l *segLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.files.Lock()
	defer l.files.Unlock()
	var errs []error
	for _, s := range *l.tab.Load() {
		if err := s.f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	m := map[uint32]*segment{}
	l.tab.Store(&m)
	l.active = nil
	return errors.Join(errs...)
}
