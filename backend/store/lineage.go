package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
)

// Lineage is how a volume's reads see data it did not write.
//
// A read of vol at epoch E sees the epochs of spans(E): with R the rollback
// of greatest To below E, the versions of vol with epoch in (R.To, E], then,
// where none of those covers a block, what a read at R.From sees (the same
// rule again); with no rollback below E, every version with epoch <= E.
// Where no visible version of vol covers a block, the read falls through to
// Parent at ParentEpoch (through Parent's own lineage), at most
// lineageDepthMax volumes deep (ErrLimit past that, so a cycle cannot
// loop). A zero record is a version: a zeroed block of a fork reads zeros,
// not its parent's data.
//
// When the rollbacks nest or are disjoint (every rollback's From lies
// outside the (From, To] of those before it), this is exactly "versions with
// epoch in (From, To] are hidden from reads above To". When a later rollback
// goes back to a snapshot taken before an earlier rollback (its From lies
// inside an earlier (From', To']), the rule above still gives what that
// snapshot saw, where hiding both ranges would not.
type Lineage struct {
	// Parent, if non-zero, is the volume vol was forked from at ParentEpoch:
	// a block with no version of vol visible at the read epoch reads as
	// Parent's block at ParentEpoch (recursively through Parent's lineage).
	Parent, ParentEpoch uint64
	// Rollbacks, ascending by To: {From, To} hides, from reads at epochs > To,
	// every version of vol with epoch in (From, To] (a rollback at epoch To to the snapshot at From).
	Rollbacks []Rollback
}

// Rollback is a rollback at epoch To to the snapshot at epoch From (From <
// To): reads above To see what a read at From saw, plus what was written
// after To.
type Rollback struct{ From, To uint64 }

// Lineage bounds.
const (
	// lineageDepthMax bounds the volumes a read falls through (a fork of a
	// fork of ...): past it a read fails with ErrLimit.
	lineageDepthMax = 16
	// rollbacksMax bounds the rollbacks of one volume.
	rollbacksMax = 1024
)

func (l *Lineage) isZero() bool { return l.Parent == 0 && len(l.Rollbacks) == 0 }

// check validates l as the lineage of vol.
func (l *Lineage) check(vol uint64) error {
	if l.Parent != 0 && l.Parent == vol {
		return fmt.Errorf("%w: volume %d is its own parent", ErrInvalid, vol)
	}
	if len(l.Rollbacks) > rollbacksMax {
		return fmt.Errorf("%w: %d rollbacks, at most %d", ErrLimit, len(l.Rollbacks), rollbacksMax)
	}
	for i, r := range l.Rollbacks {
		if r.From >= r.To {
			return fmt.Errorf("%w: rollback %d from epoch %d at epoch %d: From must be below To", ErrInvalid, i, r.From, r.To)
		}
		if i > 0 && r.To <= l.Rollbacks[i-1].To {
			return fmt.Errorf("%w: rollbacks not strictly ascending by To (%d after %d)", ErrInvalid, r.To, l.Rollbacks[i-1].To)
		}
	}
	return nil
}

// encodeLineage: parent(8) | parentEpoch(8) | (from(8) | to(8))*k.
func encodeLineage(l *Lineage) []byte {
	v := make([]byte, 16+16*len(l.Rollbacks))
	binary.BigEndian.PutUint64(v[0:], l.Parent)
	binary.BigEndian.PutUint64(v[8:], l.ParentEpoch)
	for i, r := range l.Rollbacks {
		binary.BigEndian.PutUint64(v[16+16*i:], r.From)
		binary.BigEndian.PutUint64(v[24+16*i:], r.To)
	}
	return v
}

// decodeLineage parses a lineage value of vol.
func decodeLineage(vol uint64, v []byte) (*Lineage, error) {
	if len(v) < 16 || (len(v)-16)%16 != 0 || (len(v)-16)/16 > rollbacksMax {
		return nil, fmt.Errorf("%w: lineage value of %d bytes", ErrCorrupt, len(v))
	}
	l := &Lineage{Parent: binary.BigEndian.Uint64(v[0:]), ParentEpoch: binary.BigEndian.Uint64(v[8:])}
	if k := (len(v) - 16) / 16; k > 0 {
		l.Rollbacks = make([]Rollback, k)
		for i := range l.Rollbacks {
			l.Rollbacks[i] = Rollback{From: binary.BigEndian.Uint64(v[16+16*i:]), To: binary.BigEndian.Uint64(v[24+16*i:])}
		}
	}
	if err := l.check(vol); err != nil {
		return nil, fmt.Errorf("%w: lineage of volume %d: %w", ErrCorrupt, vol, err)
	}
	if l.isZero() || (l.Parent == 0 && l.ParentEpoch != 0) {
		return nil, fmt.Errorf("%w: lineage of volume %d: empty, or a parent epoch without a parent", ErrCorrupt, vol)
	}
	return l, nil
}

// SetLineage durably replaces vol's lineage (nil-value Lineage: none).
// Every read that starts after it returns sees the new lineage. A Parent of
// 0 ignores ParentEpoch. Rollbacks must be ascending by To with From < To
// (ErrInvalid), at most rollbacksMax (ErrLimit); a volume cannot be its own
// parent (ErrInvalid; longer cycles fail reads with ErrLimit).
//
// Caller contract (see GC): the store keeps only what the live volume and
// the retained epochs of each volume see, and the ParentEpoch of every fork
// whose lineage it holds. A fork's ParentEpoch should also be in its
// parent's retained list, and a rollback's From in the volume's, for as
// long as the lineage needs them.
func (s *Store) SetLineage(vol uint64, l Lineage) error {
	if l.Parent == 0 {
		l.ParentEpoch = 0
	}
	if err := l.check(vol); err != nil {
		return fmt.Errorf("store: set lineage of vol %d: %w", vol, err)
	}
	if err := s.enter(context.Background()); err != nil {
		return fmt.Errorf("store: set lineage of vol %d: %w", vol, err)
	}
	defer s.life.RUnlock()
	v := s.volume(vol)
	v.mu.Lock()
	defer v.mu.Unlock()
	b := s.db.NewBatch()
	k := volPrefix(make([]byte, volPrefixLen), tagLineage, vol)
	if l.isZero() {
		_ = b.Delete(k, nil)
	} else {
		_ = b.Set(k, encodeLineage(&l), nil)
	}
	if err := s.commit(b, true); err != nil {
		return fmt.Errorf("store: set lineage of vol %d: %w", vol, err)
	}
	if l.isZero() {
		v.lin.Store(nil)
	} else {
		l.Rollbacks = slices.Clone(l.Rollbacks)
		v.lin.Store(&l)
	}
	v.gcGen.Add(1)
	s.linGen.Add(1)
	return nil
}

// GetLineage returns vol's lineage (the zero value when it has none).
func (s *Store) GetLineage(vol uint64) Lineage {
	if v := s.lookup(vol); v != nil {
		if l := v.lin.Load(); l != nil {
			return Lineage{Parent: l.Parent, ParentEpoch: l.ParentEpoch, Rollbacks: slices.Clone(l.Rollbacks)}
		}
	}
	return Lineage{}
}

// span is a closed range [lo, hi] of the epochs a read sees.
type span struct{ lo, hi uint64 }

// spans appends to out the epochs a read at epoch sees under rollbacks
// (ascending by To), newest first: at most len(rbs)+1 spans.
func spans(out []span, rbs []Rollback, epoch uint64) []span {
	for {
		// First rollback with To >= epoch; the one before it applies.
		k, _ := slices.BinarySearchFunc(rbs, epoch, func(r Rollback, e uint64) int { return cmpU64(r.To, e) })
		if k == 0 {
			return append(out, span{0, epoch})
		}
		r := rbs[k-1]
		out = append(out, span{r.To + 1, epoch})
		epoch = r.From // < r.To < epoch: the loop ends
	}
}

func (l *Lineage) rollbacks() []Rollback {
	if l == nil {
		return nil
	}
	return l.Rollbacks
}

// visibleRange reports whether zero range r lies in one of sp.
func visibleRange(r zrange, sp []span) bool {
	for _, s := range sp {
		if s.lo <= r.epoch && r.epoch <= s.hi {
			return true
		}
	}
	return false
}

// visibleIn returns the version of block that a read through sp sees in x
// (a zero range as a kindZero version with its stamp), or false when none
// does and the read falls through. rs holds the ranges overlapping the
// block (others are ignored). Caller holds x's lock.
func visibleIn(x *index, rs []zrange, sp []span, block uint64) (version, bool) {
	for _, s := range sp {
		ver, ok := x.lookup(block, s.hi)
		ok = ok && ver.epoch >= s.lo
		var zr zrange
		zok := false
		for _, r := range rs {
			if r.start <= block && block < r.end && s.lo <= r.epoch && r.epoch <= s.hi && (!zok || newer(r.epoch, r.seq, zr.epoch, zr.seq)) {
				zr, zok = r, true
			}
		}
		if zok && (!ok || newer(zr.epoch, zr.seq, ver.epoch, ver.seq)) {
			return version{epoch: zr.epoch, seq: zr.seq, kind: kindZero}, true
		}
		if ok {
			return ver, true
		}
	}
	return version{}, false
}

// kindFall marks, in a cursor only, a block whose version is not resolved
// yet: the read falls through to the next volume of the lineage.
const kindFall kind = 0xff

// resolve sets vers[i], for each i with kind kindFall, to the version of
// block+i that a read of v at epoch sees through v's lineage: a data
// version, or kind 0 for zeros. If lvl is not nil, lvl[i] is set to the
// lineage depth of the volume the version belongs to. Caller holds
// s.seg.files for reading (files before the index).
func (s *Store) resolve(c *cursor, v *volume, block uint64, vers []version, lvl []uint8, epoch uint64, depth int) error {
	if v == nil {
		for i := range vers {
			if vers[i].kind == kindFall {
				vers[i] = version{}
			}
		}
		return nil
	}
	l := v.lin.Load()
	n := uint64(len(vers))
	sb, rb := len(c.spans), len(c.ranges)
	c.spans = spans(c.spans, l.rollbacks(), epoch)
	c.ranges = v.ranges.Load().overlapping(c.ranges, block, block+n, epoch)
	sp, rs := c.spans[sb:], c.ranges[rb:]
	defer func() { c.spans, c.ranges = c.spans[:sb], c.ranges[:rb] }()
	pending := false
	v.idx.RLock()
	for i := range vers {
		if vers[i].kind != kindFall {
			continue
		}
		ver, ok := visibleIn(&v.idx, rs, sp, block+uint64(i))
		if !ok {
			pending = true
			continue
		}
		if ver.kind != kindData {
			ver = version{epoch: ver.epoch, seq: ver.seq}
		}
		vers[i] = ver
		if lvl != nil {
			lvl[i] = uint8(depth)
		}
	}
	v.idx.RUnlock()
	if !pending {
		return nil
	}
	if l == nil || l.Parent == 0 {
		return s.resolve(c, nil, block, vers, lvl, 0, depth)
	}
	if depth+1 > lineageDepthMax {
		return fmt.Errorf("%w: lineage of volume %d deeper than %d volumes (a cycle?)", ErrLimit, v.id, lineageDepthMax)
	}
	return s.resolve(c, s.lookup(l.Parent), block, vers, lvl, l.ParentEpoch, depth+1)
}

// readLineage is Read for a volume with a lineage: p gets blocks
// [block, +len(p)/BlockSize) of v at epoch.
func (s *Store) readLineage(v *volume, block uint64, p []byte, epoch uint64) error {
	n := len(p) / BlockSize
	c := cursorPool.Get().(*cursor)
	defer c.release()
	c.vers = c.vers[:0]
	for range n {
		c.vers = append(c.vers, version{kind: kindFall})
	}
	s.seg.files.RLock()
	defer s.seg.files.RUnlock()
	if err := s.resolve(c, v, block, c.vers, nil, epoch, 0); err != nil {
		return err
	}
	return readVersions(*s.seg.tab.Load(), p, c.vers, block)
}

// runs merges consecutive runs of one state and hands them to fn until fn
// returns false.
type runs struct {
	fn                   func(start, count uint64, state bool) bool
	start, count         uint64
	state, have, stopped bool
}

// add appends a run; false once fn has stopped the walk.
func (r *runs) add(start, count uint64, state bool) bool {
	if r.stopped || count == 0 {
		return !r.stopped
	}
	if r.have && r.state == state && r.start+r.count == start {
		r.count += count
		return true
	}
	if r.have && !r.fn(r.start, r.count, r.state) {
		r.stopped = true
		return false
	}
	r.start, r.count, r.state, r.have = start, count, state, true
	return true
}

// flush hands the last run to fn.
func (r *runs) flush() {
	if r.have && !r.stopped {
		r.stopped = !r.fn(r.start, r.count, r.state)
		r.have = false
	}
}

// iv is a block interval [start, end).
type iv struct{ start, end uint64 }

// zeroUnion returns the union, clipped to [lo, hi), of the ranges of rs
// visible through sp, as sorted disjoint intervals.
func zeroUnion(rs []zrange, sp []span, lo, hi uint64) []iv {
	var out []iv
	for _, r := range rs {
		if visibleRange(r, sp) && r.end > lo && r.start < hi {
			out = append(out, iv{max(r.start, lo), min(r.end, hi)})
		}
	}
	slices.SortFunc(out, func(a, b iv) int { return cmpU64(a.start, b.start) })
	merged := out[:0]
	for _, x := range out {
		if k := len(merged); k > 0 && x.start <= merged[k-1].end {
			merged[k-1].end = max(merged[k-1].end, x.end)
			continue
		}
		merged = append(merged, x)
	}
	return merged
}

// viewOf is what a walk over blocks of v at epoch needs.
type viewOf struct {
	sp []span
	rs []zrange // overlapping the walk, visible at epoch (some may be masked by rollbacks)
	zu []iv     // union of the visible ranges
}

func newView(v *volume, l *Lineage, lo, hi, epoch uint64) viewOf {
	w := viewOf{sp: spans(nil, l.rollbacks(), epoch)}
	w.rs = v.ranges.Load().overlapping(nil, lo, hi, epoch)
	w.zu = zeroUnion(w.rs, w.sp, lo, hi)
	return w
}

// zeroAt reports whether block b, in a gap of v's point versions, reads as
// zeros through w (else it falls through), and the end of that state
// within [b, hi).
func (w *viewOf) zeroAt(b, hi uint64) (bool, uint64) {
	i, _ := slices.BinarySearchFunc(w.zu, b, func(x iv, t uint64) int {
		if x.end <= t {
			return -1
		}
		if x.start > t {
			return 1
		}
		return 0
	})
	if i < len(w.zu) && w.zu[i].start <= b {
		return true, min(w.zu[i].end, hi)
	}
	if i < len(w.zu) {
		return false, min(w.zu[i].start, hi)
	}
	return false, hi
}

// extentsLineage reports the allocation of blocks [lo, hi) of v at epoch
// through v's lineage into r. It returns false once r stopped.
func (s *Store) extentsLineage(v *volume, lo, hi, epoch uint64, depth int, r *runs) (bool, error) {
	if v == nil {
		return r.add(lo, hi-lo, false), nil
	}
	l := v.lin.Load()
	w := newView(v, l, lo, hi, epoch)
	fall := func(a, b uint64) (bool, error) {
		if l == nil || l.Parent == 0 {
			return r.add(a, b-a, false), nil
		}
		if depth+1 > lineageDepthMax {
			return false, fmt.Errorf("%w: lineage of volume %d deeper than %d volumes (a cycle?)", ErrLimit, v.id, lineageDepthMax)
		}
		return s.extentsLineage(s.lookup(l.Parent), a, b, l.ParentEpoch, depth+1, r)
	}
	gap := func(a, b uint64) (bool, error) {
		for a < b {
			zero, end := w.zeroAt(a, b)
			if zero {
				if !r.add(a, end-a, false) {
					return false, nil
				}
			} else if ok, err := fall(a, end); !ok || err != nil {
				return false, err
			}
			a = end
		}
		return true, nil
	}
	v.idx.RLock()
	keys := v.idx.pageKeys(nil, lo, hi)
	v.idx.RUnlock()
	pos := lo
	var state [pageBlocks]kind
	for _, key := range keys {
		ps, pe := max(key<<pageShift, lo), min(key<<pageShift+pageBlocks, hi)
		if ok, err := gap(pos, ps); !ok || err != nil {
			return false, err
		}
		v.idx.RLock()
		for b := ps; b < pe; b++ {
			ver, ok := visibleIn(&v.idx, w.rs, w.sp, b)
			if !ok {
				ver.kind = kindFall
			}
			state[b-ps] = ver.kind
		}
		v.idx.RUnlock()
		for b := ps; b < pe; {
			k := state[b-ps]
			e := b + 1
			for e < pe && state[e-ps] == k {
				e++
			}
			if k == kindFall {
				if ok, err := fall(b, e); !ok || err != nil {
					return false, err
				}
			} else if !r.add(b, e-b, k == kindData) {
				return false, nil
			}
			b = e
		}
		pos = pe
	}
	return gap(pos, hi)
}
