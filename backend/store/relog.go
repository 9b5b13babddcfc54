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
func (s *Store) relogSegment(sg *segment, buf *[]byte) (moved int64, ok bool, err error) {
	recs, ok, err := s.relogPlan(sg)
	if err != nil || !ok {
		return 0, ok, err
	}
	for _, r := range recs {
		n, err := s.relogRecord(sg, r, buf)
		if err != nil {
			return moved, false, err
		}
		moved += n
	}
	return moved, true, nil
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

// relogRecord appends a copy of data record r of sg, with its stamp, and
// points the index at it, if the record is still live whole.
func (s *Store) relogRecord(sg *segment, r relogEnt, buf *[]byte) (int64, error) {
	v := s.lookup(r.h.vol)
	if v == nil {
		return 0, nil
	}
	// No Zero or DropVolume of the volume from the check to the index
	// update (see the top of the file).
	v.mu.Lock()
	defer v.mu.Unlock()
	if s.lookup(r.h.vol) != v || s.liveBlocks(sg, &r.h, r.first) != int(r.h.n) {
		return 0, nil
	}
	n := int(r.h.n)
	hb := headerBytes(recData, r.h.n)
	if cap(*buf) < hb+n*BlockSize {
		*buf = make([]byte, hb+n*BlockSize)
	}
	hdr, data := (*buf)[:hb], (*buf)[hb:hb+n*BlockSize]
	clear(hdr)
	copy(hdr[recFixedLen:], r.crcs)
	if err := s.checkSpace(int64(hb+len(data)), s.reserve/2); err != nil {
		return 0, fmt.Errorf("relog segment %s: %w", segName(sg.id), err)
	}
	vers := make([]version, n)
	for i := range vers {
		vers[i] = version{seg: sg.id, page: r.first + uint32(i)*blockUnits, crc: binary.BigEndian.Uint32(r.crcs[4*i:]), kind: kindData}
	}
	s.seg.files.RLock()
	if s.seg.segment(sg.id) != sg {
		s.seg.files.RUnlock()
		return 0, nil
	}
	err := readRun(sg, data, vers)
	s.seg.files.RUnlock()
	if err != nil {
		return 0, fmt.Errorf("relog segment %s: vol %d block %d: %w", segName(sg.id), r.h.vol, r.h.block, err)
	}
	h := recHeader{typ: recData, vol: r.h.vol, block: r.h.block, n: r.h.n, epoch: r.h.epoch, seq: r.h.seq}
	s.apply.RLock()
	defer s.apply.RUnlock()
	at, _, err := s.seg.append(&h, hdr, data)
	if err != nil {
		return 0, fmt.Errorf("relog segment %s: %w", segName(sg.id), s.ioErr(err))
	}
	first := uint32((at.off + int64(hb)) / recAlign)
	d := liveDelta{log: s.seg}
	x := &v.idx
	var dr dirtyRun
	x.Lock()
	for i := range r.h.n {
		cur := x.ref(r.h.block+i, r.h.epoch)
		if cur == nil || cur.kind != kindData || cur.epoch != r.h.epoch || cur.seq != r.h.seq || cur.seg != sg.id || cur.page != r.first+uint32(i)*blockUnits {
			continue // overwritten since the check: the copy is dead
		}
		d.add(cur.seg, -1)
		cur.seg, cur.page = h.seg, first+uint32(i)*blockUnits
		d.add(cur.seg, 1)
		dr.mark(s, x, r.h.block+i, r.h.epoch)
	}
	dr.flush(s, x)
	x.Unlock()
	d.flush()
	return int64(len(data)), nil
}
