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
	// view maps the file read-only for short reads (view.go); nil when
	// it is not an OS file or could not be mapped. Set before the segment
	// is published, removed when f is closed.
	view []byte
	// live counts the data blocks the index points at in this segment.
	live atomic.Int64
	// bytes is the size written (a sealed segment's final size).
	bytes atomic.Int64
	// meta: the segment holds a zero or drop record, whose effect no
	// live count shows, or the cleaner copied blocks out of it (its copy
	// records need it at replay, cleaner.go), so it is never reaped (see
	// segLog.reap).
	meta atomic.Bool
	// synced: a sync covered some of the segment (while it was active, or
	// sealed), so records in it may be durable and it is never reaped or
	// relogged.
	synced atomic.Bool
	// punched is the bytes of dead pages punched out (punch.go);
	// punchedLive the live count when they were found.
	punched, punchedLive atomic.Int64
	// fileBytes is the size of a reused file when the segment started in
	// it (0 for a new file): its tail past the records is cut at seal.
	fileBytes int64
}

// pos is a position in the log: a byte offset in a segment. Positions
// order by (seg, off).
type pos struct {
	seg uint32
	off int64
}

func (p pos) less(q pos) bool { return p.seg < q.seg || (p.seg == q.seg && p.off < q.off) }

// Spare segment files. A new file's pages cost the kernel far more to
// fill than resident pages cost to overwrite: on this project's VM,
// writing 1 GiB into a new file took 1.1–2.1 s of system time against
// 0.10–0.15 s overwriting it in place (dd, three runs), since every page is
// allocated (and the hypervisor backs guest pages freed to it afresh),
// and the file system allocates its blocks. A log that deletes dead
// segments and creates new ones pays that on every byte; a file
// overwritten in place (the peer, nbdkit file) never does. So the files of
// dead segments are kept, renamed to <id>.spare, and the next rolls reuse
// them: renamed to the new segment's name and written from offset 0 over
// the old bytes, whose pages are still in the page cache.
//
// Old bytes in a reused file are never taken for records: a record names
// its segment and its offset in its header (record.go) and every reader
// of records (replay, cleaner, relog) stops at the first record that does
// not parse, does not name this segment and offset or does not match its
// CRCs, exactly as at a torn write in a new file. Segment ids are never
// reused, so an old record never names the new segment. The renames need
// no sync of their own: a crash that undoes the rename of a dead segment
// to a spare brings back a segment file that nothing points into (as an
// undone unlink does), and the rename of a spare to a new segment is
// durable before any record in it is (syncTo syncs the directory before
// the active segment and after the sealed ones; a checkpoint syncs the
// log first). Spares left at Open are deleted.
const (
	// spareMax bounds the spare files kept; spareBytesMax their bytes.
	spareMax      = 16
	spareBytesMax = 1 << 30
	spareSuffix   = ".spare"
)

// spare is a dead segment's file kept for reuse.
type spare struct {
	name  string
	bytes int64
}

func spareName(id uint32) string { return fmt.Sprintf("%08x%s", id, spareSuffix) }

// segLog is the store's log of records over segment files in one
// directory. Appends are serialized (one write call per record part, or
// per batch of small records, in log order), so every byte before the
// current end is written; Sync makes
// a prefix durable with one SyncData per segment written since the last
// one, shared by every waiter (group commit).
//
// Sealing a segment does not sync it: a sealed segment joins unsynced,
// and the next syncTo syncs every one of them (and the directory) before
// the active segment. Until then its bytes are only in the page cache, so
// a sealed segment that was never synced and whose blocks all died (every
// one overwritten, zeroed or dropped from the index) can be deleted at
// once (reap) and the kernel never writes it: under overwrites, the log
// then costs the disk what a file overwritten in place costs, not every
// byte ever written.
type segLog struct {
	fs       vfs.FS
	dir      string
	segBytes int64

	// mu serializes appends and guards the active segment.
	mu     sync.Mutex
	active *segment
	off    int64  // end of the active segment
	nextID uint32 // id of the next segment
	// roll: the active segment must be sealed before the next append (a
	// write into it failed, or a roll did).
	roll bool
	// unsynced holds the sealed segments not synced since they were
	// sealed, ascending; dirDirty: a segment was created since the
	// directory was last synced.
	unsynced []*segment
	dirDirty bool
	// spares are files of dead segments kept for the next rolls (see
	// retire); rolls counts segments started.
	spares []spare
	rolls  int64
	reused atomic.Uint64 // rolls that reused a spare
	// appended counts every byte appended, reaped every byte of reaped
	// segments: the log's size past a checkpoint that is still on disk
	// (see Store.logGrew).
	appended, reaped atomic.Int64
	// sealed is signalled (without blocking) when a segment is sealed, so
	// that the background goroutine reaps.
	sealed chan struct{}

	// group is the queue of group appends (see appendGrouped).
	group struct {
		sync.Mutex
		pending []*appendReq // queued, in arrival order
		spare   []*appendReq // the last batch's slice, for reuse
		leading bool         // an appender is writing batches
		buf     []byte       // the leader's batch; under mu
	}

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
	l := &segLog{fs: fs, dir: dir, segBytes: segBytes, sealed: make(chan struct{}, 1)}
	l.sync.cond = sync.NewCond(&l.sync.Mutex)
	m := map[uint32]*segment{}
	l.tab.Store(&m)
	return l
}

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
		if strings.HasSuffix(name, spareSuffix) {
			if err := l.fs.Remove(l.fs.PathJoin(l.dir, name)); err != nil {
				return nil, fmt.Errorf("%w: remove spare segment file %s: %w", ErrIO, name, err)
			}
			continue
		}
		id, ok := parseSegName(name)
		if !ok {
			continue
		}
		f, err := l.fs.Open(l.path(id))
		if err != nil {
			for _, s := range segs {
				_ = s.f.Close()
				_ = unmapView(s.view)
			}
			return nil, fmt.Errorf("%w: open segment %s: %w", ErrIO, name, err)
		}
		s := &segment{id: id, f: f}
		if fi, err := f.Stat(); err == nil {
			s.bytes.Store(fi.Size())
		}
		s.view = mapView(f, max(l.segBytes, s.bytes.Load()))
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

// rollLocked seals the active segment (to unsynced: syncTo syncs it) and
// starts a new one; the directory is synced by the next syncTo. Caller
// holds mu.
func (l *segLog) rollLocked() error {
	l.cutTailLocked()
	if a := l.active; a != nil && l.off > 0 {
		l.unsynced = append(l.unsynced, a)
		select {
		case l.sealed <- struct{}{}:
		default:
		}
	}
	id := l.nextID
	l.dirDirty = true
	if n := len(l.spares); n > 0 {
		sp := l.spares[n-1]
		l.spares = l.spares[:n-1]
		if err := l.fs.Rename(l.fs.PathJoin(l.dir, sp.name), l.path(id)); err != nil {
			// Lost to reuse; the segment is made afresh below.
			_ = l.fs.Remove(l.fs.PathJoin(l.dir, sp.name))
		} else {
			l.reused.Add(1)
		}
	}
	f, err := l.fs.OpenReadWrite(l.path(id), vfs.WriteCategoryUnspecified)
	if err != nil {
		l.roll = true
		return fmt.Errorf("create segment %s: %w", segName(id), err)
	}
	l.nextID++
	l.rolls++
	s := &segment{id: id, f: f}
	if fi, err := f.Stat(); err == nil {
		s.fileBytes = fi.Size()
	}
	s.view = mapView(f, max(l.segBytes, s.fileBytes))
	l.publish(s, false)
	l.active, l.off, l.roll = s, 0, false
	return nil
}

// cutTailLocked cuts the active segment's file at the end of its records
// when it is a reused file longer than that: its old bytes past the last
// record are never read as records, but hold disk space. Not synced: a
// crash that undoes the cut leaves bytes that are never read either.
// Caller holds mu.
func (l *segLog) cutTailLocked() {
	a := l.active
	if a == nil || a.fileBytes <= l.off {
		return
	}
	if fd := a.f.Fd(); fd != vfs.InvalidFd {
		if err := ftruncate(fd, l.off); err == nil {
			a.fileBytes = l.off
		}
	}
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
//
// A record in one piece of at most groupRecordMax bytes (every 4 KiB
// write's) is appended with the others waiting at the same time: one of
// them writes them all with one write call (see appendGrouped).
func (l *segLog) append(h *recHeader, rec, data []byte) (at, end pos, err error) {
	if data == nil && len(rec) <= groupRecordMax {
		return l.appendGrouped(h, rec)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.appendLocked(h, rec, data)
}

func (l *segLog) appendLocked(h *recHeader, rec, data []byte) (at, end pos, err error) {
	size := int64(len(rec) + len(data))
	if err := l.rollIfLocked(size); err != nil {
		return pos{}, pos{}, err
	}
	a := l.active
	h.seg, h.off = a.id, l.off
	if h.typ == recZero || h.typ == recDrop {
		a.meta.Store(true)
	}
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
	l.advanceLocked(size)
	return at, pos{a.id, l.off}, nil
}

// rollIfLocked starts a new segment if the active one must be sealed or
// has no room for size more bytes. Caller holds mu.
func (l *segLog) rollIfLocked(size int64) error {
	if l.roll || l.active == nil || (l.off > 0 && l.off+size > l.segBytes) {
		return l.rollLocked()
	}
	return nil
}

// advanceLocked moves the end of the active segment past size bytes just
// written. Caller holds mu.
func (l *segLog) advanceLocked(size int64) {
	l.off += size
	l.active.bytes.Store(l.off)
	l.appended.Add(size)
	// No writeback is started here: what dies before a sync is never
	// written (see reap); the kernel's own writeback and the next sync
	// take the rest.
}

// Group appends. Appenders of small records queue; the first one finding
// no leader leads: it takes the queue, lays the records out one after the
// other in a buffer, writes it with one write call under mu and completes
// each appender, and goes on while the queue refills, at most
// groupRoundsMax times before it hands the lead to the oldest appender
// waiting. With many writes in flight (a replicated volume, a queue depth
// of 32) this turns one write call per record, each a hand-off of mu,
// into one per batch.
const (
	// groupRecordMax: records up to this size (a 64 KiB write with its
	// header) are grouped.
	groupRecordMax = smallRecordBytes + recHeaderBytesMax
	// groupBytesMax bounds one batch's write; a larger batch is written in
	// several.
	groupBytesMax = 1 << 20
	// groupRoundsMax bounds the batches one leader writes before it hands
	// the lead on, so that its own append returns.
	groupRoundsMax = 4
)

// appendReq is one queued append; its done is signalled once it is
// complete (or, with lead set, when its appender is to lead).
type appendReq struct {
	h        recHeader // a copy: the caller's stays on its stack
	rec      []byte
	at, end  pos
	err      error
	lead     bool
	finished bool
	done     chan struct{} // capacity 1
}

var appendReqPool = sync.Pool{New: func() any { return &appendReq{done: make(chan struct{}, 1)} }}

func (l *segLog) appendGrouped(h *recHeader, rec []byte) (at, end pos, err error) {
	var one [1]*appendReq
	l.enqueue(one[:], h, nil, [][]byte{rec})
	return l.await(one[0], h)
}

// appendMany appends records as appendGrouped does each of them, queued
// together so that they go out in as few write calls as they fit: rec[i]
// is record i in one piece (at most groupRecordMax bytes) with its header
// h[i] unsealed; at[i] gets its position, errs[i] its error.
func (l *segLog) appendMany(h []recHeader, rec [][]byte, at []pos, errs []error) {
	var qs [batchWritesMax]*appendReq
	l.enqueue(qs[:len(rec)], nil, h, rec)
	// Waited in queue order: a lead handed on goes to the oldest queued
	// record, so each earlier one of ours is finished by then.
	for i, q := range qs[:len(rec)] {
		at[i], _, errs[i] = l.await(q, &h[i])
	}
}

// enqueue queues the records rec (headers hs, or the one at h) as qs, in
// order, and leads if no one does.
func (l *segLog) enqueue(qs []*appendReq, h *recHeader, hs []recHeader, rec [][]byte) {
	g := &l.group
	g.Lock()
	for i := range rec {
		q := appendReqPool.Get().(*appendReq)
		if h != nil {
			q.h = *h
		} else {
			q.h = hs[i]
		}
		q.rec = rec[i]
		qs[i] = q
		g.pending = append(g.pending, q)
	}
	if !g.leading {
		g.leading = true
		l.lead() // unlocks g
	} else {
		g.Unlock()
	}
}

// await waits until q is written, leading when handed the lead, and
// returns its outcome (its position into h); q goes back to the pool.
func (l *segLog) await(q *appendReq, h *recHeader) (at, end pos, err error) {
	for {
		<-q.done
		if q.finished {
			break
		}
		// Handed the lead: q is still queued.
		l.group.Lock()
		q.lead = false
		l.lead()
	}
	at, end, err = q.at, q.end, q.err
	h.seg, h.off = q.h.seg, q.h.off
	*q = appendReq{done: q.done}
	appendReqPool.Put(q)
	return at, end, err
}

// lead writes the queued records, batch by batch, then gives up the lead
// or hands it on. Caller holds l.group, which lead unlocks.
func (l *segLog) lead() {
	g := &l.group
	for round := 0; len(g.pending) > 0; round++ {
		if round == groupRoundsMax {
			next := g.pending[0]
			next.lead = true
			g.Unlock()
			next.done <- struct{}{} // g.leading stays set: next leads
			return
		}
		batch := g.pending
		g.pending = g.spare[:0]
		g.Unlock()
		l.writeBatch(batch)
		clear(batch)
		g.Lock()
		g.spare = batch[:0]
	}
	g.leading = false
	g.Unlock()
}

// writeBatch appends the records of batch in order and completes each.
func (l *segLog) writeBatch(batch []*appendReq) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := 0; i < len(batch); {
		j := i + 1
		if err := l.rollIfLocked(int64(len(batch[i].rec))); err != nil {
			l.finish(batch[i:j], err)
			i = j
			continue
		}
		a := l.active
		// The records that fit in the active segment and in one write.
		size := int64(len(batch[i].rec))
		for j < len(batch) {
			n := int64(len(batch[j].rec))
			if l.off+size+n > l.segBytes || size+n > groupBytesMax {
				break
			}
			size += n
			j++
		}
		buf := l.group.buf[:0]
		off := l.off
		for _, q := range batch[i:j] {
			q.h.seg, q.h.off = a.id, off
			if q.h.typ == recZero || q.h.typ == recDrop {
				a.meta.Store(true)
			}
			encodeHeader(q.rec, &q.h)
			buf = append(buf, q.rec...)
			q.at = pos{a.id, off}
			off += int64(len(q.rec))
			q.end = pos{a.id, off}
		}
		if cap(buf) <= groupBytesMax+groupRecordMax {
			l.group.buf = buf[:0]
		}
		if n, err := a.f.WriteAt(buf, l.off); err != nil {
			// As for one record: nothing written, the next batch may go
			// to the same place; else the torn batch ends its segment.
			l.roll = n > 0
			l.finish(batch[i:j], fmt.Errorf("segment %s: write at %d: %w", segName(a.id), l.off, err))
			i = j
			continue
		}
		l.advanceLocked(size)
		l.finish(batch[i:j], nil)
		i = j
	}
}

// finish completes appends with err (their positions are set when nil).
func (l *segLog) finish(qs []*appendReq, err error) {
	for _, q := range qs {
		if err != nil {
			q.at, q.end = pos{}, pos{}
		}
		q.err, q.finished = err, true
		q.done <- struct{}{}
	}
}

// endAppended returns the end of the log and the bytes appended up to it.
func (l *segLog) endAppended() (pos, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.active == nil {
		return pos{}, l.appended.Load()
	}
	return pos{l.active.id, l.off}, l.appended.Load()
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

// syncTo makes every record before target durable: every sealed segment
// not yet synced, the directory if a segment was created, then the active
// segment, one SyncData each, shared by every waiter whose target they
// cover (group commit). A failed sync is sticky and wraps errSync.
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
	sealed := slices.Clone(l.unsynced)
	dir := l.dirDirty
	l.dirDirty = false
	l.mu.Unlock()
	var err error
	for _, sg := range sealed {
		sg.synced.Store(true)
		if err = sg.f.SyncData(); err != nil {
			err = fmt.Errorf("segment %s: %w", segName(sg.id), err)
			break
		}
	}
	if err == nil && dir {
		if err = syncDir(l.fs, l.dir); err != nil {
			err = fmt.Errorf("segments directory: %w", err)
		}
	}
	if err == nil && a != nil {
		a.synced.Store(true)
		if err = a.f.SyncData(); err != nil {
			err = fmt.Errorf("segment %s: %w", segName(a.id), err)
		}
	}
	if err == nil && len(sealed) > 0 {
		// Only a reap (which waits for syncing to end) or a roll (which
		// appends) changes unsynced meanwhile: the synced ones are its
		// first len(sealed).
		l.mu.Lock()
		l.unsynced = slices.Delete(l.unsynced, 0, len(sealed))
		l.mu.Unlock()
	}
	l.sync.Lock()
	l.sync.syncing = false
	l.sync.cond.Broadcast()
	if err != nil {
		if dir {
			l.mu.Lock()
			l.dirDirty = true
			l.mu.Unlock()
		}
		l.sync.err = errSync{err}
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

// reap deletes the sealed segments that no sync ever covered and hold no
// live block and no zero or drop record, and returns them (closed and
// removed) with their bytes. Such a segment is in no durable state: no
// checkpoint points into it (a checkpoint syncs the log first) and no
// sync covered it, so every write in it was unflushed, and each of them
// is dead in the index. A crash may lose those writes, which is allowed;
// without one, nothing reads them. Their superseding versions are later
// in the log, and are durable exactly when a later sync says so. Callers
// serialize reap with checkpoints (the checkpoint lock: a checkpoint
// that copied index entries pointing into a segment must sync it before
// it can be reaped) and with the cleaner (which reads segments it chose
// earlier).
//
// stable is called with the sync lock held and no sync running, and must
// return once no append that has not updated the index yet is in flight
// (a segment's live count is 0 from its first append until the index
// points at it); the func it returns is called when reap is done choosing.
func (l *segLog) reap(stable func() (done func())) (n int, bytes int64, err error) {
	l.sync.Lock()
	for l.sync.syncing {
		l.sync.cond.Wait()
	}
	if l.sync.err != nil {
		l.sync.Unlock()
		return 0, 0, nil
	}
	done := stable()
	defer done()
	l.files.Lock()
	l.mu.Lock()
	var dead []*segment
	keep := l.unsynced[:0]
	for _, sg := range l.unsynced {
		if sg.live.Load() == 0 && !sg.meta.Load() && !sg.synced.Load() {
			dead = append(dead, sg)
			l.publish(sg, true)
			continue
		}
		keep = append(keep, sg)
	}
	clear(l.unsynced[len(keep):])
	l.unsynced = keep
	l.mu.Unlock()
	l.files.Unlock()
	l.sync.Unlock()
	for _, sg := range dead {
		bytes += sg.bytes.Load()
	}
	err = l.retire(dead)
	l.reaped.Add(bytes)
	return len(dead), bytes, err
}

// unsyncedSealed returns the sealed segments that no sync has covered and
// that hold no zero or drop record (those relog may move), and the bytes
// of every sealed segment a sync would have to write.
func (l *segLog) unsyncedSealed() (segs []*segment, total int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, sg := range l.unsynced {
		total += sg.bytes.Load()
		if !sg.meta.Load() && !sg.synced.Load() {
			segs = append(segs, sg)
		}
	}
	return segs, total
}

// remove deletes segments (none of them active or referenced): readers in
// ReadAt finish first.
func (l *segLog) remove(segs []*segment) error {
	if len(segs) == 0 {
		return nil
	}
	// Out of the table under files: a reader holds files from before its
	// index lookup until its ReadAt ends, so none finds a segment gone.
	l.files.Lock()
	l.mu.Lock()
	for _, s := range segs {
		l.publish(s, true)
	}
	l.mu.Unlock()
	l.files.Unlock()
	return l.retire(segs)
}

// retire closes the files of dead segments (out of the table, no reader
// left) and keeps them as spares while there is room, else deletes them.
// A segment with punched holes is deleted: its pages are gone.
func (l *segLog) retire(segs []*segment) error {
	var errs []error
	for _, sg := range segs {
		if err := sg.f.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := unmapView(sg.view); err != nil {
			errs = append(errs, err)
		}
		if size := sg.bytes.Load(); sg.punched.Load() == 0 && size >= l.segBytes/2 && l.keepSpare(sg.id, size) {
			continue
		}
		if err := l.fs.Remove(l.path(sg.id)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keepSpare renames segment id's file (closed) to a spare if one of size
// bytes fits the bounds, and reports whether it did. Under mu, so the
// bounds hold exactly and a roll never sees a spare half made.
func (l *segLog) keepSpare(id uint32, size int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.spares) >= spareMax || l.spareBytesLocked()+size > spareBytesMax {
		return false
	}
	name := spareName(id)
	if err := l.fs.Rename(l.path(id), l.fs.PathJoin(l.dir, name)); err != nil {
		return false
	}
	l.spares = append(l.spares, spare{name: name, bytes: size})
	return true
}

// spareBytes returns the bytes held by spare files.
func (l *segLog) spareBytes() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.spareBytesLocked()
}

func (l *segLog) spareBytesLocked() (total int64) {
	for _, sp := range l.spares {
		total += sp.bytes
	}
	return total
}

// dropSpares deletes the spare files and returns their bytes: every time
// with force (space is short), else only when no segment was started
// since the roll count was ifRolls (the log is quiet). It returns the roll
// count for the next call.
func (l *segLog) dropSpares(force bool, ifRolls int64) (freed, rolls int64, err error) {
	l.mu.Lock()
	rolls = l.rolls
	if !force && rolls != ifRolls {
		l.mu.Unlock()
		return 0, rolls, nil
	}
	drop := l.spares
	l.spares = nil
	l.mu.Unlock()
	var errs []error
	for _, sp := range drop {
		if err := l.fs.Remove(l.fs.PathJoin(l.dir, sp.name)); err != nil {
			errs = append(errs, err)
			continue
		}
		freed += sp.bytes
	}
	return freed, rolls, errors.Join(errs...)
}

// close closes every segment file.
func (l *segLog) close() error {
	_, _, serr := l.dropSpares(true, 0)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cutTailLocked()
	l.files.Lock()
	defer l.files.Unlock()
	var errs []error
	for _, s := range *l.tab.Load() {
		if err := s.f.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := unmapView(s.view); err != nil {
			errs = append(errs, err)
		}
	}
	m := map[uint32]*segment{}
	l.tab.Store(&m)
	l.active = nil
	return errors.Join(append(errs, serr)...)
}
