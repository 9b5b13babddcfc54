package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Checkpoints and recovery.
//
// The segment log is the ordered record of every mutation (data writes,
// zeros, drops); the in-memory index is derived from it. A checkpoint
// copies the index entries changed since the previous one into pebble, in
// one batch with the log position they reflect (the watermark), after the
// log is synced up to that position: pebble never points at data that is
// not durable. Open loads pebble's copy and replays the records from the
// watermark on, in log order, stopping in each segment at the first record
// that is torn or fails its CRC. Every sync covers every segment written
// since the last one, so what follows a bad record was never acknowledged
// as durable; later segments may still hold valid records (sealing does
// not sync), which are writes that were not flushed: replaying them
// applies some of the unflushed writes, each whole, which a disk may do.
//
// A segment with no live block that lies wholly before a durable
// watermark is never read again (replay starts after it, no index entry
// points into it) and is deleted; one that no sync ever covered is
// deleted as soon as its last block dies (segLog.reap), with no
// checkpoint.

// Checkpoint triggers (variables so that tests can make them small).
var (
	// ckDirtyMax: a checkpoint starts when this many index entries are
	// dirty (2 GiB of distinct blocks; about 40 bytes of memory each); a
	// writer finding 4x as many runs one itself (backpressure).
	ckDirtyMax int64 = 1 << 19
	// ckLogBytes: a checkpoint starts when the log past the last one holds
	// this much (reaped segments do not count), which bounds replay at
	// Open. A checkpoint syncs the log, so it is also how much unsynced
	// data may pile up in the page cache; it is above a 1 GiB volume
	// overwritten again and again, whose dead segments are reaped before
	// anything writes them.
	ckLogBytes int64 = 2 << 30
	// ckInterval: idle checkpoints, so that a quiet store is not left with
	// a long replay.
	ckInterval = 10 * time.Second
	// spareIdle: spare segment files are deleted when no segment was
	// started for this long.
	spareIdle = 2 * time.Second
	// ckIntervalMax: a checkpoint at least this often under writes, which
	// bounds how old the durable index is (replay length is bounded by
	// ckLogBytes).
	ckIntervalMax = time.Minute
)

// ckEnt is a dirty index entry as a checkpoint copied it.
type ckEnt struct {
	dk  dkey
	ver version
	ok  bool // false: the entry is gone
}

// ckGroup is one volume's part of a checkpoint: its ops, then its entries
// ents[from:to].
type ckGroup struct {
	vol      uint64
	ops      []ckOp
	from, to int
}

// ckOp is one pebble edit recorded for the next checkpoint.
type ckOp struct {
	del, delRange bool
	key, end, val []byte
}

func (o ckOp) apply(b *pebble.Batch) {
	switch {
	case o.delRange:
		_ = b.DeleteRange(o.key, o.end, nil)
	case o.del:
		_ = b.Delete(o.key, nil)
	default:
		_ = b.Set(o.key, o.val, nil)
	}
}

// counters are the store's exported statistics (see Stats).
type counters struct {
	checkpoints      atomic.Uint64
	segmentsRemoved  atomic.Uint64
	bytesReclaimed   atomic.Uint64
	recordsReplayed  atomic.Uint64
	cleanerBytes     atomic.Uint64
	segmentsCleaned  atomic.Uint64
	segmentsReaped   atomic.Uint64
	segmentsRelogged atomic.Uint64
	relogBytes       atomic.Uint64
	flattenedBlocks  atomic.Uint64
	bytesPunched     atomic.Uint64
	defragBytes      atomic.Uint64
	batchWrites      atomic.Uint64
	batchTurns       atomic.Uint64
	gcCounters
}

// Stats are the store's counters and gauges.
type Stats struct {
	Segments         int    // segment files
	SegmentBytes     int64  // bytes in segment files, less the holes punched in them
	LiveBytes        int64  // bytes of block data the index points at
	IndexBytes       int64  // memory of the block index
	Checkpoints      uint64 // index checkpoints written
	SegmentsRemoved  uint64 // segments deleted (SegmentsReaped included)
	SegmentsReaped   uint64 // segments deleted dead before any sync wrote them
	SegmentsRelogged uint64 // unsynced segments emptied by moving their live records (relog.go)
	RelogBytes       uint64 // bytes of the records relog moved
	SegmentsReused   uint64 // segments started in a dead segment's file (segment.go: spares)
	SpareBytes       int64  // bytes of dead segments' files kept for reuse
	BytesReclaimed   uint64 // bytes of segments deleted (less what was punched out of them)
	BytesPunched     uint64 // bytes of dead blocks punched out of segments (punch.go)
	RecordsReplayed  uint64 // records replayed at Open
	LowSpace         bool   // writes fail with ErrNoSpace (see Options.ReserveBytes)
	CleanerBytes     uint64 // bytes of live blocks the cleaner copied
	DefragBytes      uint64 // bytes of fragmented reads rewritten as one run (defrag.go)
	SegmentsCleaned  uint64 // segments the cleaner emptied
	// The cleaner's cost (cleaner.go): bytes it read (record headers and
	// blocks), bytes of copy records it appended, CPU time of its passes.
	CleanerReadBytes     uint64
	CleanerAppendedBytes uint64
	CleanerCPU           time.Duration
	// The deep idle passes (cleaner.go): passes that copied, bytes of
	// blocks they copied, of copy records they appended, of segments they
	// emptied. Emptied less appended is the space they gave back; copied
	// per byte of it their write amplification.
	CleanerDeepPasses        uint64
	CleanerDeepCopiedBytes   uint64
	CleanerDeepAppendedBytes uint64
	CleanerDeepEmptiedBytes  uint64
	FlattenedBlocks          uint64 // blocks Flatten copied from parents
	// WriteBatch (batch.go): writes appended together, and the turns
	// (appends of up to batchWritesMax writes) they took.
	BatchWrites, BatchTurns uint64
	// GC (gc.go): passes run, versions dropped, and bytes of block data
	// they held (no longer live; the cleaner and the checkpoint give the
	// space back, counted in BytesReclaimed).
	GCPasses          uint64
	GCVersionsDropped uint64
	GCBytesDropped    uint64
}

// Stats returns the store's statistics.
func (s *Store) Stats() Stats {
	st := Stats{
		IndexBytes:       s.indexBytes.Load(),
		Checkpoints:      s.stats.checkpoints.Load(),
		SegmentsRemoved:  s.stats.segmentsRemoved.Load(),
		SegmentsReaped:   s.stats.segmentsReaped.Load(),
		SegmentsRelogged: s.stats.segmentsRelogged.Load(),
		RelogBytes:       s.stats.relogBytes.Load(),
		SegmentsReused:   s.seg.reused.Load(),
		SpareBytes:       s.seg.spareBytes(),
		BytesReclaimed:   s.stats.bytesReclaimed.Load(),
		BytesPunched:     s.stats.bytesPunched.Load(),
		RecordsReplayed:  s.stats.recordsReplayed.Load(),
		LowSpace:         s.space.low.Load(),
		CleanerBytes:     s.stats.cleanerBytes.Load(),
		DefragBytes:      s.stats.defragBytes.Load(),
		SegmentsCleaned:  s.stats.segmentsCleaned.Load(),

		CleanerReadBytes:     uint64(s.cl.read.Load()),
		CleanerAppendedBytes: uint64(s.cl.appended.Load()),
		CleanerCPU:           time.Duration(s.cl.cpu.Load()),

		CleanerDeepPasses:        uint64(s.cl.deepPasses.Load()),
		CleanerDeepCopiedBytes:   uint64(s.cl.deepCopied.Load()),
		CleanerDeepAppendedBytes: uint64(s.cl.deepAppended.Load()),
		CleanerDeepEmptiedBytes:  uint64(s.cl.deepEmptied.Load()),
		FlattenedBlocks:          s.stats.flattenedBlocks.Load(),
		BatchWrites:              s.stats.batchWrites.Load(),
		BatchTurns:               s.stats.batchTurns.Load(),

		GCPasses:          s.stats.gcPasses.Load(),
		GCVersionsDropped: s.stats.gcVersions.Load(),
		GCBytesDropped:    s.stats.gcBytes.Load(),
	}
	for _, sg := range *s.seg.tab.Load() {
		st.Segments++
		st.SegmentBytes += sg.bytes.Load() - sg.punched.Load()
		st.LiveBytes += sg.live.Load() * BlockSize
	}
	return st
}

// background runs checkpoints when triggered, reaps and GC, until Close
// (the cleaner has its own goroutine, cleaner.go).
func (s *Store) background() {
	defer s.wg.Done()
	t := time.NewTicker(ckInterval)
	defer t.Stop()
	lastAppended := s.seg.appended.Load()
	gt := time.NewTicker(gcInterval)
	defer gt.Stop()
	// Spare segment files go once the log is quiet (segment.go).
	spt := time.NewTicker(spareIdle)
	defer spt.Stop()
	rolls := int64(-1)
	for {
		select {
		case <-s.done:
			return
		case <-spt.C:
			freed, r, err := s.seg.dropSpares(false, rolls)
			rolls = r
			if err != nil {
				s.log.Error("remove spare segment files", "err", err)
			} else if freed > 0 {
				s.log.Debug("spare segment files removed", "bytes", freed)
			}
			continue
		case <-gt.C:
			if s.failed.Load() != nil {
				continue
			}
			if _, err := s.gc(context.Background()); err != nil && !errors.Is(err, ErrClosed) {
				s.log.Error("gc", "err", err)
			}
			continue
		case <-s.seg.sealed:
			if s.failed.Load() != nil {
				continue
			}
			if err := s.reap(); err != nil {
				s.log.Error("reap segments", "err", err)
			}
			if moved, err := s.relog(); err != nil {
				s.log.Error("relog segments", "err", err)
			} else if moved {
				if err := s.reap(); err != nil {
					s.log.Error("reap segments", "err", err)
				}
			}
			continue
		case <-s.kick:
		case <-t.C:
			if s.dirty.Load() == 0 && !s.logGrew(1) {
				continue
			}
			// Idle, or ckIntervalMax since the last one: a store under
			// writes checkpoints by ckLogBytes and ckDirtyMax, so that
			// its log is not synced (written to the device) every
			// interval while overwrites still kill most of it in memory.
			if a := s.seg.appended.Load(); a != lastAppended && time.Since(time.Unix(0, s.ck.when.Load())) < ckIntervalMax {
				lastAppended = a
				continue
			}
		}
		if s.failed.Load() != nil {
			continue
		}
		if err := s.checkpoint(); err != nil {
			s.log.Error("checkpoint", "err", err)
		}
	}
}

// logGrew reports whether the log past the last checkpoint holds at least
// n bytes (reaped segments, gone from the disk, do not count).
func (s *Store) logGrew(n int64) bool {
	// Lock-free: every Write asks, and a checkpoint holds ck across a
	// sync and a commit.
	return s.seg.appended.Load()-s.seg.reaped.Load()-s.ck.base.Load() >= n
}

// reap deletes the sealed segments that died before any sync wrote them
// (segLog.reap), between checkpoints.
func (s *Store) reap() error {
	s.cleanMu.Lock()
	defer s.cleanMu.Unlock()
	s.ck.Lock()
	defer s.ck.Unlock()
	n, bytes, err := s.seg.reap(func() func() {
		// Appends hold apply for reading until the index points at them.
		s.apply.Lock()
		return s.apply.Unlock
	})
	if n > 0 {
		s.stats.segmentsReaped.Add(uint64(n))
		s.stats.segmentsRemoved.Add(uint64(n))
		s.stats.bytesReclaimed.Add(uint64(bytes))
		s.log.Debug("segments reaped", "segments", n, "bytes", bytes)
	}
	return err
}

// kickCheckpoint asks the background goroutine for a checkpoint when one is
// due, and runs one inline when the dirty entries are far past the bound.
func (s *Store) kickCheckpoint() error {
	d := s.dirty.Load()
	if d < ckDirtyMax && !s.logGrew(ckLogBytes) {
		return nil
	}
	if d >= 4*ckDirtyMax {
		return s.checkpoint()
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return nil
}

// checkpoint writes the dirty index entries, the zero-range edits and the
// drops since the last checkpoint to pebble with the watermark, after the
// log is durable to it, then deletes the segments that are dead before it.
func (s *Store) checkpoint() (err error) {
	s.ck.Lock()
	defer s.ck.Unlock()
	if f := s.failed.Load(); f != nil {
		return fmt.Errorf("%w: %w: %w", ErrIO, ErrFailed, *f)
	}
	if s.space.low.Load() {
		// Seal an active segment holding no live block, so that this
		// checkpoint can delete it.
		s.seg.mu.Lock()
		if a := s.seg.active; a != nil && s.seg.off > 0 && a.live.Load() == 0 {
			if err := s.seg.rollLocked(); err != nil {
				s.seg.mu.Unlock()
				if err := s.ioErr(err); errors.Is(err, ErrFailed) {
					return fmt.Errorf("checkpoint: %w", err)
				}
				s.log.Warn("checkpoint: seal empty segment", "err", err)
				s.seg.mu.Lock()
			}
		}
		s.seg.mu.Unlock()
	}
	b := s.db.NewBatch()
	var k [keyLen]byte
	var val [indexValueLen]byte

	// Under the apply lock, only copy what changed; the batch is built
	// after, so that writers wait for a memory copy, not for pebble.
	s.apply.Lock()
	end, appended := s.seg.endAppended()
	reaped := s.seg.reaped.Load() // stable: reap takes ck
	s.dropsMu.Lock()
	drops := s.drops
	s.drops = nil
	s.dropsMu.Unlock()
	ents, groups := s.ck.ents[:0], s.ck.groups[:0]
	s.vols.RLock()
	for vol, v := range s.vols.m {
		x := &v.idx
		x.Lock()
		if len(x.ops) == 0 && len(x.dirty) == 0 {
			x.Unlock()
			continue
		}
		g := ckGroup{vol: vol, ops: x.ops, from: len(ents)}
		x.ops = nil
		for dk, bits := range x.dirty {
			for ; bits != 0; bits &= bits - 1 {
				block := dk.block<<pageShift | uint64(trailingZeros(bits))
				ver, ok := x.exact(block, dk.epoch)
				ents = append(ents, ckEnt{dk: dkey{block, dk.epoch}, ver: ver, ok: ok})
			}
		}
		g.to = len(ents)
		groups = append(groups, g)
		clear(x.dirty)
		x.Unlock()
	}
	s.vols.RUnlock()
	s.dirty.Store(0)
	var dead []*segment
	for id, sg := range *s.seg.tab.Load() {
		if id < end.seg && sg.live.Load() == 0 {
			dead = append(dead, sg)
		}
	}
	s.apply.Unlock()

	for _, vol := range drops {
		for _, tag := range []byte{tagPoint, tagRange} {
			_ = b.DeleteRange(volPrefix(k[:], tag, vol), volEnd(tag, vol), nil)
		}
		_ = b.Delete(volPrefix(k[:], tagRetained, vol), nil)
		_ = b.Delete(volPrefix(k[:], tagLineage, vol), nil)
	}
	for _, g := range groups {
		for _, op := range g.ops {
			op.apply(b)
		}
		for _, e := range ents[g.from:g.to] {
			putPointKey(k[:], g.vol, e.dk.block, e.dk.epoch)
			if e.ok {
				_ = b.Set(k[:], encodeIndexValue(val[:], e.ver), nil)
			} else {
				_ = b.Delete(k[:], nil)
			}
		}
	}
	if cap(ents) <= 4*int(ckDirtyMax) {
		s.ck.ents = ents[:0]
	}
	clear(groups)
	s.ck.groups = groups[:0]

	if err := s.seg.syncTo(end); err != nil {
		_ = b.Close()
		return fmt.Errorf("checkpoint: %w", s.ioErr(err))
	}
	_ = b.Set([]byte{tagWatermark}, encodePos(end), nil)
	if err := s.commit(b, true); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	s.ck.last = end
	s.ck.base.Store(appended - reaped)
	s.ck.when.Store(time.Now().UnixNano())
	s.stats.checkpoints.Add(1)
	var freed int64
	for _, sg := range dead {
		freed += sg.bytes.Load() - sg.punched.Load()
	}
	if err := s.seg.remove(dead); err != nil {
		s.log.Error("remove segments", "err", err)
	} else if len(dead) > 0 {
		s.stats.segmentsRemoved.Add(uint64(len(dead)))
		s.stats.bytesReclaimed.Add(uint64(freed))
		s.log.Debug("segments removed", "segments", len(dead), "bytes", freed)
	}
	return nil
}

// liveDelta accumulates segment live-count changes of one apply. It
// looks a segment up in the log's table when it comes to it, under the
// index lock the apply holds, not in a copy of the table taken before:
// a version the apply displaces may have moved meanwhile to a segment
// published after such a copy (a cleaner's or relog's copy record that
// rolled the log, applied between this apply's append and its taking the
// index lock), and its -1 would be lost, leaving that segment counted
// live forever (never deleted; in TestSnapshotSpace at 1 GiB, 6 blocks
// counted live that the index did not hold, so the test never settled).
// The segment's publication happens before the copy's apply, which
// happens before this apply takes the lock, so the lookup finds it.
//
// It keeps two segments' counts, since an apply alternates between the
// segment it writes to (+1) and the one the displaced version was in (-1):
// with one, every block of a 1 MiB overwrite was two atomic adds (3.7% of
// cairnd's CPU under fio nbd 1 MiB writes, pprof).
type liveDelta struct {
	log *segLog
	e   [2]liveEnt // e[1] the most recently added
}

// liveEnt is one segment's count in a liveDelta.
type liveEnt struct {
	sg *segment
	n  int64
}

func (d *liveDelta) add(seg uint32, n int64) {
	for i := range d.e {
		if e := &d.e[i]; e.sg != nil && e.sg.id == seg {
			e.n += n
			return
		}
	}
	d.e[0].flush()
	d.e[0] = d.e[1]
	d.e[1] = liveEnt{sg: (*d.log.tab.Load())[seg], n: n}
}

func (d *liveDelta) flush() {
	d.e[0].flush()
	d.e[1].flush()
}

func (e *liveEnt) flush() {
	if e.sg != nil && e.n != 0 {
		e.sg.live.Add(e.n)
	}
	e.n = 0
}

// applyData puts the versions of data record h (its data pages start at
// page first; crcs holds their CRCs) into v's index.
func (s *Store) applyData(v *volume, h *recHeader, first uint32, crcs []byte) {
	d := liveDelta{log: s.seg}
	var grew int64
	x := &v.idx
	var dr dirtyRun
	x.Lock()
	for i := range h.n {
		nv := version{epoch: h.epoch, seq: h.seq, seg: h.seg, page: first + uint32(i)*blockUnits, crc: binary.BigEndian.Uint32(crcs[4*i:]), kind: kindData}
		old, displaced, stored, g := x.put(h.block+i, nv)
		grew += g
		if displaced && old.kind == kindData {
			d.add(old.seg, -1)
		}
		if stored {
			d.add(nv.seg, 1)
			dr.mark(s, x, h.block+i, h.epoch)
		}
	}
	dr.flush(s, x)
	x.Unlock()
	d.flush()
	s.indexBytes.Add(grew)
}

// markDirty marks (block, epoch) of x for the next checkpoint. Caller
// holds x's lock.
func (s *Store) markDirty(x *index, block, epoch uint64) {
	s.markDirtyBits(x, dkey{block >> pageShift, epoch}, 1<<(block&(pageBlocks-1)))
}

// markDirtyBits marks the blocks of page key dk.block whose bits are set.
func (s *Store) markDirtyBits(x *index, dk dkey, bits uint64) {
	m := x.dirty[dk]
	if add := bits &^ m; add != 0 {
		x.dirty[dk] = m | bits
		s.dirty.Add(int64(popcount(add)))
	}
}

// dirtyRun gathers the blocks of one page that a loop over consecutive
// blocks marks, so that the dirty map is touched once per page, not once
// per block.
type dirtyRun struct {
	dk   dkey
	bits uint64
}

func (r *dirtyRun) mark(s *Store, x *index, block, epoch uint64) {
	if k := (dkey{block >> pageShift, epoch}); k != r.dk {
		r.flush(s, x)
		r.dk = k
	}
	r.bits |= 1 << (block & (pageBlocks - 1))
}

func (r *dirtyRun) flush(s *Store, x *index) {
	if r.bits != 0 {
		s.markDirtyBits(x, r.dk, r.bits)
		r.bits = 0
	}
}

// applyZero applies zero record h to v. ed is the range edit planned by
// Zero (nil: plan it here, as replay does). Caller holds v.mu.
func (s *Store) applyZero(v *volume, h *recHeader, ed *rangeEdit) {
	reclaim, points := h.flags&flagReclaim != 0, h.flags&flagPoints != 0
	nr := zrange{epoch: h.epoch, seq: h.seq, start: h.block, end: h.block + h.n}
	if !points && ed == nil {
		var cur []zrange
		if set := v.ranges.Load(); set != nil {
			cur = set.rs
		}
		e := planRange(cur, nr, reclaim)
		ed = &e
	}
	d := liveDelta{log: s.seg}
	var grew int64
	x := &v.idx
	x.Lock()
	if reclaim {
		var lo, hi [blockPrefixLen]byte
		putBlockPrefix(lo[:], v.id, nr.start)
		putBlockPrefix(hi[:], v.id, nr.end)
		x.ops = append(x.ops, ckOp{delRange: true, key: lo[:], end: hi[:]})
		grew -= x.deleteRange(nr.start, nr.end, func(old version) {
			if old.kind == kindData {
				d.add(old.seg, -1)
			}
		})
	}
	if points {
		for b := nr.start; b < nr.end; b++ {
			old, displaced, stored, g := x.put(b, version{epoch: h.epoch, seq: h.seq, kind: kindZero})
			grew += g
			if displaced && old.kind == kindData {
				d.add(old.seg, -1)
			}
			if stored {
				s.markDirty(x, b, h.epoch)
			}
		}
	} else {
		for _, r := range ed.deletes {
			x.ops = append(x.ops, ckOp{del: true, key: encodeRangeKey(r, v.id)})
		}
		for _, r := range ed.trims {
			x.ops = append(x.ops, ckOp{key: encodeRangeKey(r, v.id), val: encodeRangeValue(r)})
		}
		if ed.add {
			x.ops = append(x.ops, ckOp{key: encodeRangeKey(nr, v.id), val: encodeRangeValue(nr)})
		}
		v.ranges.Store(newRangeSet(ed.next))
	}
	x.Unlock()
	d.flush()
	s.indexBytes.Add(grew)
}

// applyDrop forgets vol and records the drop for the next checkpoint.
func (s *Store) applyDrop(vol uint64) {
	s.vols.Lock()
	v := s.vols.m[vol]
	delete(s.vols.m, vol)
	s.vols.Unlock()
	s.dropsMu.Lock()
	s.drops = append(s.drops, vol)
	s.dropsMu.Unlock()
	if v == nil {
		return
	}
	d := liveDelta{log: s.seg}
	x := &v.idx
	x.Lock()
	var marked int64
	for _, bits := range x.dirty {
		marked += int64(popcount(bits))
	}
	s.dirty.Add(-marked)
	freed := x.bytes()
	x.each(func(old version) {
		if old.kind == kindData {
			d.add(old.seg, -1)
		}
	})
	x.pages, x.older, x.ops = map[uint64]*page{}, nil, nil
	clear(x.dirty)
	x.Unlock()
	d.flush()
	s.indexBytes.Add(-freed)
}

// load reads pebble's copy of the index, the range records and retained
// epochs, replays the log after the watermark and starts a new segment.
func (s *Store) load() error {
	if err := s.checkFormat(); err != nil {
		return err
	}
	byVol := map[uint64][]zrange{}
	if err := s.scan(tagRange, func(k, v []byte) error {
		vol, r, err := decodeRange(k, v)
		if err != nil {
			return err
		}
		if len(byVol[vol]) >= rangesPerVolumeMax {
			return fmt.Errorf("volume %d: %w: more than %d ranges", vol, ErrCorrupt, rangesPerVolumeMax)
		}
		byVol[vol] = append(byVol[vol], r)
		return nil
	}); err != nil {
		return fmt.Errorf("load ranges: %w", err)
	}
	for vol, rs := range byVol {
		s.volume(vol).ranges.Store(newRangeSet(rs))
	}
	if err := s.scan(tagRetained, func(k, v []byte) error {
		if len(k) != volPrefixLen {
			return fmt.Errorf("%w: key %x", ErrCorrupt, k)
		}
		epochs, err := decodeRetained(v)
		if err != nil {
			return err
		}
		s.volume(binary.BigEndian.Uint64(k[1:])).retained = epochs
		return nil
	}); err != nil {
		return fmt.Errorf("load retained: %w", err)
	}
	if err := s.scan(tagLineage, func(k, v []byte) error {
		if len(k) != volPrefixLen {
			return fmt.Errorf("%w: key %x", ErrCorrupt, k)
		}
		vol := binary.BigEndian.Uint64(k[1:])
		l, err := decodeLineage(vol, v)
		if err != nil {
			return err
		}
		s.volume(vol).lin.Store(l)
		return nil
	}); err != nil {
		return fmt.Errorf("load lineage: %w", err)
	}

	segs, err := s.seg.openExisting()
	if err != nil {
		return err
	}
	tab := *s.seg.tab.Load()
	var cur *volume
	if err := s.scan(tagPoint, func(k, val []byte) error {
		vol, block, ver, err := decodeIndex(k, val)
		if err != nil {
			return err
		}
		if cur == nil || cur.id != vol {
			cur = s.volume(vol)
		}
		if ver.kind == kindData {
			sg := tab[ver.seg]
			if sg == nil {
				return fmt.Errorf("%w: vol %d block %d: segment %s missing", ErrCorrupt, vol, block, segName(ver.seg))
			}
			sg.live.Add(1)
		}
		_, _, _, g := cur.idx.put(block, ver)
		s.indexBytes.Add(g)
		return nil
	}); err != nil {
		return fmt.Errorf("load index: %w", err)
	}

	var wm pos
	if v, closer, err := s.db.Get([]byte{tagWatermark}); err == nil {
		wm, err = decodePos(v)
		_ = closer.Close()
		if err != nil {
			return fmt.Errorf("load watermark: %w: %w", ErrIO, err)
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("load watermark: %w: %w", ErrIO, err)
	}
	s.ck.last = wm
	buf := make([]byte, recHeaderBytesMax+RequestBytesMax)
	for _, sg := range segs {
		if sg.id < wm.seg {
			continue
		}
		off := int64(0)
		if sg.id == wm.seg {
			off = wm.off
		}
		if err := s.replay(sg, off, buf); err != nil {
			return err
		}
	}
	s.seg.mu.Lock()
	s.seg.nextID = max(s.seg.nextID, wm.seg+1)
	err = s.seg.rollLocked()
	s.seg.mu.Unlock()
	if err != nil {
		return s.ioErr(err)
	}
	if err := s.checkpoint(); err != nil {
		return err
	}
	return nil
}

// checkFormat refuses a store of the format that kept data in pebble, and
// marks a new one.
func (s *Store) checkFormat() error {
	v, closer, err := s.db.Get([]byte{tagFormat})
	if err == nil {
		defer func() { _ = closer.Close() }()
		if string(v) != formatName {
			return fmt.Errorf("%w: %w: store format %q, want %q", ErrIO, ErrCorrupt, v, formatName)
		}
		return nil
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	legacy := false
	if err := s.scan(tagPoint, func(_, _ []byte) error {
		legacy = true
		return io.EOF
	}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if legacy {
		return fmt.Errorf("%w: %w: the store holds block data in pebble (format v1); it cannot be opened by this version", ErrIO, ErrCorrupt)
	}
	b := s.db.NewBatch()
	_ = b.Set([]byte{tagFormat}, []byte(formatName), nil)
	return s.commit(b, true)
}

// scan calls fn for every key with tag.
func (s *Store) scan(tag byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tag}, UpperBound: []byte{tag + 1}})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("%w: %w", ErrIO, err)
		}
		if err := fn(it.Key(), v); err != nil {
			_ = it.Close()
			if errors.Is(err, ErrCorrupt) {
				return fmt.Errorf("%w: %w", ErrIO, err)
			}
			return err
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	return nil
}

// replay applies the records of sg from off on, up to the first invalid
// one, then syncs sg (what it kept is now part of the state). A read error
// other than the end of the file fails Open.
func (s *Store) replay(sg *segment, off int64, buf []byte) error {
	n := 0
	for {
		h, first, next, ok, err := readRecord(sg, off, buf, true)
		if err != nil {
			return fmt.Errorf("replay segment %s at %d: %w: %w", segName(sg.id), off, ErrIO, err)
		}
		if !ok {
			break
		}
		s.applyRecord(&h, first, buf)
		n++
		off = next
	}
	if err := sg.f.SyncData(); err != nil {
		return fmt.Errorf("replay segment %s: sync: %w: %w", segName(sg.id), ErrIO, err)
	}
	if n > 0 {
		s.stats.recordsReplayed.Add(uint64(n))
		s.log.Info("segment replayed", "segment", segName(sg.id), "records", n, "end", off)
	}
	return nil
}

// applyRecord applies a valid record read from the log; hdr holds its
// header.
func (s *Store) applyRecord(h *recHeader, first uint32, hdr []byte) {
	switch h.typ {
	case recData:
		v := s.volume(h.vol)
		v.raiseSeq(h.seq)
		s.applyData(v, h, first, hdr[recFixedLen:])
	case recCopy:
		s.applyCopy(h, first, hdr)
	case recZero:
		v := s.volume(h.vol)
		if h.flags&flagPoints != 0 {
			v.raiseSeq(h.seq)
		}
		s.applyZero(v, h, nil)
	case recDrop:
		s.applyDrop(h.vol)
	}
}

// readRecord reads and checks the record of sg at off into buf (header,
// then, if verify, the data, checked against its CRCs). ok is false when
// there is no valid record there; err is set only for a read error that is
// not the end of the file.
func readRecord(sg *segment, off int64, buf []byte, verify bool) (h recHeader, first uint32, next int64, ok bool, err error) {
	read := func(p []byte, at int64) (bool, error) {
		// The mapping first: the relog and the cleaner read every header
		// of a segment, one system call each otherwise (see view.go).
		if viewRead(sg.view, p, at) {
			return true, nil
		}
		n, err := sg.f.ReadAt(p, at)
		if n == len(p) {
			return true, nil
		}
		if err == nil || errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	if ok, err := read(buf[:recAlign], off); !ok {
		return h, 0, 0, false, err
	}
	fh, hl, perr := parseFixed(buf[:recAlign])
	if perr != nil || fh.seg != sg.id || fh.off != off {
		return h, 0, 0, false, nil
	}
	hb := headerBytes(fh.typ, fh.n)
	if hl > recAlign {
		if ok, err := read(buf[recAlign:hb], off+recAlign); !ok {
			return h, 0, 0, false, err
		}
	}
	if h, perr = decodeHeader(buf[:hl]); perr != nil {
		return h, 0, 0, false, nil
	}
	next = off + h.recordBytes()
	if next/recAlign > 1<<32-1 {
		return h, 0, 0, false, nil
	}
	first = uint32((off + int64(hb)) / recAlign)
	if hasData(h.typ) && verify {
		data := buf[hb : hb+int(h.n)*BlockSize]
		if ok, err := read(data, off+int64(hb)); !ok {
			return h, 0, 0, false, err
		}
		for i := range int(h.n) {
			if blockCRC(data[i*BlockSize:(i+1)*BlockSize]) != crcOf(h.typ, buf, i) {
				return h, 0, 0, false, nil
			}
		}
	}
	return h, first, next, true, nil
}
