package store

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// The cleaner reclaims segments whose live data fell below a fraction of
// their size: it reads the record headers of the emptiest sealed segment
// (the log is its own reverse map), keeps the blocks the index still
// points at, and rewrites them sorted by (volume, block) as copy records
// in the active segment, throttled. A copy moves a version only if the
// index still holds that exact version (same epoch and seq): a block
// overwritten or zeroed meanwhile stays as it is, in the live store and in
// replay alike. The emptied segment is deleted by the next checkpoint.

// Cleaner settings (variables so that tests can change them).
var (
	// cleanLiveMax: a sealed segment with less than this fraction of its
	// bytes live is cleaned.
	cleanLiveMax = 0.5
	// cleanBytesPerSec throttles the bytes the cleaner copies.
	cleanBytesPerSec int64 = 64 << 20
	// cleanInterval is how often the background goroutine looks for work.
	cleanInterval = time.Second
)

// liveRef is a live block found in a victim segment.
type liveRef struct {
	vol  uint64
	e    copyEntry
	page uint32
}

// victim returns the segment before active with the smallest live
// fraction below limit, or nil.
func (s *Store) victim(limit float64, skip map[uint32]bool, active uint32) *segment {
	var best *segment
	bestFrac := limit
	for id, sg := range *s.seg.tab.Load() {
		if id >= active || skip[id] {
			continue
		}
		if !sg.synced.Load() && !s.space.low.Load() {
			// Never synced: relog or reap frees it without a sync (the
			// cleaner's checkpoint would write it to the device).
			continue
		}
		size := sg.bytes.Load()
		if size == 0 || sg.live.Load() == 0 {
			continue // nothing to copy: a checkpoint deletes it
		}
		frac := float64(sg.live.Load()*BlockSize) / float64(size)
		if frac < bestFrac || (frac == bestFrac && best != nil && sg.id < best.id) {
			best, bestFrac = sg, frac
		}
	}
	return best
}

// clean cleans segments below limit (a live fraction) until none is left
// or done closes, then checkpoints so that they are deleted. It returns the
// bytes copied.
func (s *Store) clean(limit float64) (copied int64, err error) {
	return s.cleanPass(limit, true)
}

// cleanPass is clean; without ck, the emptied segments are deleted by the
// next checkpoint, not by one of its own: a checkpoint syncs the whole log,
// and under overwrites most of the log not synced yet dies in memory (see
// relog.go), so the background cleaner forces one only when space is low.
func (s *Store) cleanPass(limit float64, ck bool) (copied int64, err error) {
	s.cleanMu.Lock()
	defer s.cleanMu.Unlock()
	tried := map[uint32]bool{}
	// Only segments sealed before this pass: the copies it makes are not
	// cleaned again by it.
	active := s.seg.end().seg
	for {
		select {
		case <-s.done:
			return copied, nil
		default:
		}
		sg := s.victim(limit, tried, active)
		if sg == nil {
			break
		}
		tried[sg.id] = true
		n, err := s.cleanSegment(sg)
		copied += n
		if err != nil {
			return copied, err
		}
	}
	if len(tried) == 0 || !ck {
		return copied, nil
	}
	return copied, s.checkpoint()
}

// cleanSegment moves the live blocks of sg to the active segment.
func (s *Store) cleanSegment(sg *segment) (copied int64, err error) {
	start := time.Now()
	refs, err := s.liveRefs(sg)
	if err != nil {
		return 0, err
	}
	slices.SortFunc(refs, func(a, b liveRef) int {
		if c := cmp.Compare(a.vol, b.vol); c != 0 {
			return c
		}
		if c := cmp.Compare(a.e.block, b.e.block); c != 0 {
			return c
		}
		return cmp.Compare(a.e.epoch, b.e.epoch)
	})
	buf := make([]byte, headerBytes(recCopy, copyBlocksMax)+copyBlocksMax*BlockSize)
	for len(refs) > 0 {
		k := 1
		for k < len(refs) && k < copyBlocksMax && refs[k].vol == refs[0].vol {
			k++
		}
		batch := refs[:k]
		refs = refs[k:]
		n, err := s.copyBatch(sg, batch, buf)
		copied += n
		if err != nil {
			return copied, err
		}
		s.stats.cleanerBytes.Add(uint64(n))
		// Throttle: at most cleanBytesPerSec on average.
		if want := time.Duration(copied * int64(time.Second) / cleanBytesPerSec); want > time.Since(start) {
			select {
			case <-s.done:
				return copied, nil
			case <-time.After(want - time.Since(start)):
			}
		}
	}
	s.stats.segmentsCleaned.Add(1)
	s.log.Debug("segment cleaned", "segment", segName(sg.id), "bytes_copied", copied, "took", time.Since(start))
	return copied, nil
}

// liveRefs reads the record headers of sg and returns its blocks that the
// index points at.
func (s *Store) liveRefs(sg *segment) ([]liveRef, error) {
	var refs []liveRef
	err := s.eachDataBlock(sg, "clean", func(vol uint64, e copyEntry, page uint32, live bool) bool {
		if live {
			refs = append(refs, liveRef{vol: vol, e: e, page: page})
		}
		return true
	})
	return refs, err
}

// eachDataBlock calls fn for every data block of sg's records, in log
// order, with whether the index points at it (live), until fn returns
// false. It holds the segment files for reading; a segment removed
// meanwhile has no blocks. op names the caller in errors.
func (s *Store) eachDataBlock(sg *segment, op string, fn func(vol uint64, e copyEntry, page uint32, live bool) bool) error {
	hdr := make([]byte, recHeaderBytesMax)
	s.seg.files.RLock()
	defer s.seg.files.RUnlock()
	if s.seg.segment(sg.id) != sg {
		return nil
	}
	for off := int64(0); ; {
		h, first, next, ok, err := readRecord(sg, off, hdr, false)
		if err != nil {
			return fmt.Errorf("%s segment %s at %d: %w: %w", op, segName(sg.id), off, ErrIO, err)
		}
		if !ok {
			return nil
		}
		off = next
		if !hasData(h.typ) {
			continue
		}
		v := s.lookup(h.vol)
		if v != nil {
			v.idx.RLock()
		}
		more := true
		for i := 0; i < int(h.n) && more; i++ {
			e := copyEntry{block: h.block + uint64(i), epoch: h.epoch, seq: h.seq, crc: crcOf(h.typ, hdr, i)}
			if h.typ == recCopy {
				e = getCopyEntry(hdr, i)
			}
			page := first + uint32(i)*blockUnits
			live := false
			if v != nil {
				cur, ok := v.idx.exact(e.block, e.epoch)
				live = ok && cur.kind == kindData && cur.seg == sg.id && cur.page == page
			}
			more = fn(h.vol, e, page, live)
		}
		if v != nil {
			v.idx.RUnlock()
		}
		if !more {
			return nil
		}
	}
}

// copyBatch reads the blocks of batch (one volume) from sg, checks them
// and appends them as one copy record.
func (s *Store) copyBatch(sg *segment, batch []liveRef, buf []byte) (int64, error) {
	n := len(batch)
	hb := headerBytes(recCopy, uint64(n))
	if err := s.checkSpace(int64(hb+n*BlockSize), s.reserve/2); err != nil {
		return 0, fmt.Errorf("clean segment %s: %w", segName(sg.id), err)
	}
	rec := buf[:hb+n*BlockSize]
	s.seg.files.RLock()
	if s.seg.segment(sg.id) != sg {
		s.seg.files.RUnlock()
		return 0, nil // removed meanwhile: nothing in it was live
	}
	for i, r := range batch {
		dst := rec[hb+i*BlockSize : hb+(i+1)*BlockSize]
		if err := readRun(sg, dst, []version{{seg: sg.id, page: r.page, crc: r.e.crc}}); err != nil {
			s.seg.files.RUnlock()
			return 0, fmt.Errorf("clean segment %s: vol %d block %d: %w", segName(sg.id), r.vol, r.e.block, err)
		}
		putCopyEntry(rec, i, r.e)
	}
	s.seg.files.RUnlock()
	h := recHeader{typ: recCopy, vol: batch[0].vol, n: uint64(n)}
	s.apply.RLock()
	at, _, err := s.seg.append(&h, rec, nil)
	if err != nil {
		s.apply.RUnlock()
		return 0, fmt.Errorf("clean segment %s: %w", segName(sg.id), s.ioErr(err))
	}
	s.applyCopy(&h, uint32((at.off+int64(hb))/recAlign), rec)
	s.apply.RUnlock()
	return int64(n) * BlockSize, nil
}

// applyCopy moves the versions of copy record h (data pages from first on)
// to their new place where the index still holds them.
func (s *Store) applyCopy(h *recHeader, first uint32, hdr []byte) {
	v := s.lookup(h.vol)
	if v == nil {
		return
	}
	d := liveDelta{tab: *s.seg.tab.Load()}
	x := &v.idx
	x.Lock()
	for i := range int(h.n) {
		e := getCopyEntry(hdr, i)
		cur := x.ref(e.block, e.epoch)
		if cur == nil || cur.kind != kindData || cur.seq != e.seq || cur.crc != e.crc {
			continue
		}
		d.add(cur.seg, -1)
		cur.seg, cur.page = h.seg, first+uint32(i)*blockUnits
		d.add(cur.seg, 1)
		s.markDirty(x, e.block, e.epoch)
	}
	x.Unlock()
	d.flush()
}
