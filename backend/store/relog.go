package store

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
)

// Relogging: moving the live records of sealed segments that no sync has
// written yet to the head of the log, so that those segments can be reaped
// (deleted with their pages never written to the device) instead of being
// synced by the next checkpoint and cleaned later.
//
// Why: a volume overwritten at random in large blocks leaves every
// segment partly live for a long time (with 1 MiB writes over a 1 GiB
// volume, a 64 MiB segment is all dead only after about 4.6 GiB more), so
// reaping alone never catches up, the log past the last checkpoint reaches
// ckLogBytes, and the checkpoint's sync writes every byte the user wrote to
// the device: the store then writes at the device's speed while a file
// overwritten in place (the peer) writes at memory speed. Moving the few
// live records of the oldest unsynced segments costs a copy in memory; a
// segment written L bytes of log ago is e^(-L/size) live under uniform
// overwrites, so with relogBytes of unsynced log a copy is rarely needed.
//
// Why it keeps the crash contract (after a crash: every durable call and a
// subset of the unflushed ones, each whole): only sealed segments that no
// sync covered are relogged, so every record moved is an unflushed write,
// and it is moved whole — a record is relogged only when every block of it
// is live; a segment holding a record that is partly live, a copy record
// or a zero or drop record is left alone. The copy is a data record with
// the original stamp, so replay applies it like the write itself (the
// highest seq per (block, epoch) wins): if the copy survives a crash and
// the segment it came from does not, the write survives whole; if neither
// survives, the write is not in the subset, which it may not be as it was
// never flushed. The volume's mutex is held from the liveness check to the
// index update, so no Zero or DropVolume of the volume lands between them:
// the copy never follows a zero or drop record that killed it.

// Relog settings (variables so that tests can change them).
var (
	// relogBytes: when the sealed segments no sync has covered hold this
	// much (1.5 GiB), the emptiest of them are relogged until they hold 3/4
	// of it.
	// Below ckLogBytes, so that a checkpoint is not what frees them; below
	// the kernel's background writeback threshold on a machine with a few
	// GiB, so that the kernel does not write them either.
	relogBytes int64 = 3 << 29
	// relogLiveMax: a segment more live than this is not relogged (the
	// copy would cost more than the sync it saves).
	relogLiveMax = 0.5
)

// relog relogs unsynced sealed segments when they hold relogBytes or
// more; the background goroutine reaps what it emptied. It reports
// whether it relogged any.
func (s *Store) relog() (bool, error) { return s.relogOver(relogBytes) }

// relogOver is relog with limit for relogBytes.
func (s *Store) relogOver(limit int64) (bool, error) {
	if s.space.low.Load() {
		return false, nil // the copies need room; punching is what helps
	}
	cands, total := s.seg.unsyncedSealed()
	if total < limit {
		return false, nil
	}
	type cand struct {
		sg   *segment
		frac float64
	}
	cs := make([]cand, 0, len(cands))
	for _, sg := range cands {
		if size := sg.bytes.Load(); size > 0 {
			cs = append(cs, cand{sg, float64(sg.live.Load()*BlockSize) / float64(size)})
		}
	}
	slices.SortFunc(cs, func(a, b cand) int {
		if c := cmp.Compare(a.frac, b.frac); c != 0 {
			return c
		}
		return cmp.Compare(a.sg.id, b.sg.id)
	})
	s.cleanMu.Lock()
	defer s.cleanMu.Unlock()
	var buf []byte
	relogged := false
	for _, c := range cs {
		if total <= limit*3/4 || c.frac > relogLiveMax {
			break
		}
		select {
		case <-s.done:
			return relogged, nil
		default:
		}
		moved, ok, err := s.relogSegment(c.sg, &buf)
		if err != nil {
			return relogged, err
		}
		if ok {
			relogged = true
			total -= c.sg.bytes.Load()
			s.stats.segmentsRelogged.Add(1)
			s.stats.relogBytes.Add(uint64(moved))
		}
	}
	return relogged, nil
}

// relogEnt is a record of a relog victim.
type relogEnt struct {
	off   int64 // the record's offset in the segment
	first uint32
	h     recHeader
	crcs  []byte // the header's crc array (recData)
}

// relogSegment moves every live record of sg to the head of the log. It
// reports ok when sg could be emptied that way (every record live whole or
// dead whole, all of them data records); otherwise it moves nothing.
//
// Consecutive small records of one volume are moved together (relogGroup):
// under 4 KiB random writes the relogged records are 4 KiB ones, and
// moving them one by one — two write calls each under the log's lock,
// which the foreground's appends wait for — was 31% of cairnd's CPU (fio
// nbd randwrite 4 KiB qd32 after a 1 GiB fill, pprof).
func (s *Store) relogSegment(sg *segment, buf *[]byte) (moved int64, ok bool, err error) {
	recs, ok, err := s.relogPlan(sg)
	if err != nil || !ok {
		return 0, ok, err
	}
	for i := 0; i < len(recs); {
		j, size := i+1, relogEntBytes(&recs[i])
		if size <= groupRecordMax {
			for j < len(recs) && j-i < batchWritesMax && recs[j].h.vol == recs[i].h.vol {
				n := relogEntBytes(&recs[j])
				if n > groupRecordMax || size+n > groupBytesMax {
					break
				}
				size += n
				j++
			}
		}
		n, err := s.relogGroup(sg, recs[i:j], buf)
		moved += n
		if err != nil {
			return moved, false, err
		}
		i = j
	}
	return moved, true, nil
}

// relogEntBytes is the size of r's copy: header and data.
func relogEntBytes(r *relogEnt) int {
	return headerBytes(recData, r.h.n) + int(r.h.n)*BlockSize
}

// relogGroup appends copies of the data records rs of sg, all of one
// volume, with their stamps, and points the index at those still live
// whole; several records (each at most groupRecordMax bytes) go out
// together in one grouped append, a larger one alone in one write.
func (s *Store) relogGroup(sg *segment, rs []relogEnt, buf *[]byte) (int64, error) {
	v := s.lookup(rs[0].h.vol)
	if v == nil {
		return 0, nil
	}
	// No Zero or DropVolume of the volume from the check to the index
	// update (see the top of the file).
	v.mu.Lock()
	defer v.mu.Unlock()
	if s.lookup(rs[0].h.vol) != v {
		return 0, nil
	}
	total := 0
	for i := range rs {
		total += relogEntBytes(&rs[i])
	}
	if err := s.checkSpace(int64(total), s.reserve/2); err != nil {
		return 0, fmt.Errorf("relog segment %s: %w", segName(sg.id), err)
	}
	if cap(*buf) < total {
		*buf = make([]byte, total)
	}
	var (
		hs   [batchWritesMax]recHeader
		recs [batchWritesMax][]byte
		at   [batchWritesMax]pos
		errs [batchWritesMax]error
		ents [batchWritesMax]*relogEnt
		vers []version
	)
	k, off := 0, 0
	s.seg.files.RLock()
	if s.seg.segment(sg.id) != sg {
		s.seg.files.RUnlock()
		return 0, nil
	}
	for i := range rs {
		r := &rs[i]
		if s.liveBlocks(sg, &r.h, r.first) != int(r.h.n) {
			continue
		}
		n, hb := int(r.h.n), headerBytes(recData, r.h.n)
		rec := (*buf)[off : off+hb+n*BlockSize]
		clear(rec[:hb])
		copy(rec[recFixedLen:], r.crcs)
		vers = vers[:0]
		for b := range n {
			vers = append(vers, version{seg: sg.id, page: r.first + uint32(b)*blockUnits, crc: binary.BigEndian.Uint32(r.crcs[4*b:]), kind: kindData})
		}
		if err := readRun(sg, rec[hb:], vers); err != nil {
			s.seg.files.RUnlock()
			return 0, fmt.Errorf("relog segment %s: vol %d block %d: %w", segName(sg.id), r.h.vol, r.h.block, err)
		}
		hs[k] = recHeader{typ: recData, vol: r.h.vol, block: r.h.block, n: r.h.n, epoch: r.h.epoch, seq: r.h.seq}
		recs[k], ents[k] = rec, r
		k++
		off += len(rec)
	}
	s.seg.files.RUnlock()
	if k == 0 {
		return 0, nil
	}
	s.apply.RLock()
	defer s.apply.RUnlock()
	if k == 1 && len(recs[0]) > groupRecordMax {
		at[0], _, errs[0] = s.seg.append(&hs[0], recs[0], nil)
	} else {
		s.seg.appendMany(hs[:k], recs[:k], at[:k], errs[:k])
	}
	var moved int64
	var failed error
	d := liveDelta{log: s.seg}
	x := &v.idx
	var dr dirtyRun
	x.Lock()
	for i, r := range ents[:k] {
		if errs[i] != nil {
			failed = cmp.Or(failed, errs[i]) // that copy is not in the log: the index keeps the original
			continue
		}
		first := uint32((at[i].off + int64(headerBytes(recData, r.h.n))) / recAlign)
		for b := range r.h.n {
			cur := x.ref(r.h.block+b, r.h.epoch)
			if cur == nil || cur.kind != kindData || cur.epoch != r.h.epoch || cur.seq != r.h.seq || cur.seg != sg.id || cur.page != r.first+uint32(b)*blockUnits {
				continue // overwritten since the check: the copy is dead
			}
			d.add(cur.seg, -1)
			cur.seg, cur.page = at[i].seg, first+uint32(b)*blockUnits
			d.add(cur.seg, 1)
			dr.mark(s, x, r.h.block+b, r.h.epoch)
		}
		moved += int64(r.h.n) * BlockSize
	}
	dr.flush(s, x)
	x.Unlock()
	d.flush()
	if failed != nil {
		return moved, fmt.Errorf("relog segment %s: %w", segName(sg.id), s.ioErr(failed))
	}
	return moved, nil
}

// relogPlan reads sg's record headers and returns its records with live
// blocks; ok is false when sg cannot be relogged (see relogSegment).
func (s *Store) relogPlan(sg *segment) (recs []relogEnt, ok bool, err error) {
	hdr := make([]byte, recHeaderBytesMax)
	s.seg.files.RLock()
	defer s.seg.files.RUnlock()
	if s.seg.segment(sg.id) != sg {
		return nil, false, nil
	}
	for off := int64(0); ; {
		h, first, next, valid, err := readRecord(sg, off, hdr, false)
		if err != nil {
			return nil, false, fmt.Errorf("relog segment %s at %d: %w: %w", segName(sg.id), off, ErrIO, err)
		}
		if !valid {
			return recs, true, nil
		}
		if h.typ != recData {
			return nil, false, nil
		}
		live := s.liveBlocks(sg, &h, first)
		switch {
		case live == 0:
		case live == int(h.n):
			recs = append(recs, relogEnt{off: off, first: first, h: h, crcs: slices.Clone(hdr[recFixedLen : recFixedLen+4*h.n])})
		default:
			return nil, false, nil
		}
		off = next
	}
}

// liveBlocks counts the blocks of data record h (data from page first of
// sg on) that the index points at.
func (s *Store) liveBlocks(sg *segment, h *recHeader, first uint32) int {
	v := s.lookup(h.vol)
	if v == nil {
		return 0
	}
	v.idx.RLock()
	defer v.idx.RUnlock()
	live := 0
	for i := range h.n {
		cur, ok := v.idx.exact(h.block+i, h.epoch)
		if ok && cur.kind == kindData && cur.seq == h.seq && cur.seg == sg.id && cur.page == first+uint32(i)*blockUnits {
			live++
		}
	}
	return live
}
