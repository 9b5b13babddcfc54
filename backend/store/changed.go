package store

import (
	"context"
	"fmt"
)

// Changed reports, over [block, block+n) of vol, consecutive runs of blocks
// whose content read at epoch `to` may differ from their content read at
// epoch `from` (from < to; to = math.MaxUint64 for the live volume). It must
// never miss a changed block; it may report an unchanged block only where
// it cannot tell cheaply (document when). fn as in Extents.
//
// A block is unchanged when both reads see the same version (the same
// (epoch, seq) of the same volume), both see zeros (unwritten, zeroed or
// trimmed), or both fall through to the parent (which is read at its one
// fork epoch). It is reported changed, though its bytes may be equal, when
// the two reads see different versions: a block rewritten with the same
// data, or a block of a fork's own against its parent's. Runs are maximal
// and cover the range in order. from and to must each be the live epoch
// or an epoch retained on vol (SetRetained): GC drops the versions only
// other epochs see. The cost is O(index pages in the range)
// plus, where one read falls through to the parent and the other sees
// zeros, the parent's Extents over those blocks; it reads no data.
func (s *Store) Changed(ctx context.Context, vol, block, n, from, to uint64, fn func(start, count uint64, changed bool) bool) error {
	if err := checkBlocks(block, n); err != nil {
		return fmt.Errorf("store: changed vol %d: %w", vol, err)
	}
	if from >= to {
		return fmt.Errorf("store: changed vol %d: %w: from epoch %d not below to epoch %d", vol, ErrInvalid, from, to)
	}
	if err := s.enter(ctx); err != nil {
		return fmt.Errorf("store: changed vol %d: %w", vol, err)
	}
	defer s.life.RUnlock()
	s.volEnter(vol, false)
	defer s.volExit(vol)
	v := s.lookup(vol)
	if v == nil {
		fn(block, n, false)
		return nil
	}
	r := runs{fn: fn}
	if _, err := s.changedIn(v, block, block+n, from, to, &r); err != nil {
		return fmt.Errorf("store: changed vol %d: %w", vol, err)
	}
	r.flush()
	return nil
}

// Block states of a Changed walk.
const (
	chSame    = iota // both reads see the same thing
	chDiffer         // they see different versions
	chOneZero        // one sees zeros, the other falls through to the parent
)

// changedIn reports into r the changes of blocks [lo, hi) of v between
// epochs from and to. It returns false once r stopped.
func (s *Store) changedIn(v *volume, lo, hi, from, to uint64, r *runs) (bool, error) {
	l := v.lin.Load()
	wf, wt := newView(v, l, lo, hi, from), newView(v, l, lo, hi, to)
	// oneZero: where the parent holds data, its blocks differ from zeros.
	oneZero := func(a, b uint64) (bool, error) {
		if l == nil || l.Parent == 0 {
			return r.add(a, b-a, false), nil
		}
		return s.extentsLineage(s.lookup(l.Parent), a, b, l.ParentEpoch, 1, r)
	}
	gap := func(a, b uint64) (bool, error) {
		for a < b {
			zf, ef := wf.zeroAt(a, b)
			zt, et := wt.zeroAt(a, b)
			end := min(ef, et)
			if zf == zt {
				if !r.add(a, end-a, false) {
					return false, nil
				}
			} else if ok, err := oneZero(a, end); !ok || err != nil {
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
	var state [pageBlocks]uint8
	for _, key := range keys {
		ps, pe := max(key<<pageShift, lo), min(key<<pageShift+pageBlocks, hi)
		if ok, err := gap(pos, ps); !ok || err != nil {
			return false, err
		}
		v.idx.RLock()
		for b := ps; b < pe; b++ {
			vf, okf := visibleIn(&v.idx, wf.rs, wf.sp, b)
			vt, okt := visibleIn(&v.idx, wt.rs, wt.sp, b)
			st := uint8(chSame)
			switch {
			case okf && okt:
				if !sameContent(vf, vt) {
					st = chDiffer
				}
			case okf != okt:
				own := vf
				if okt {
					own = vt
				}
				st = chDiffer
				if own.kind != kindData {
					st = chOneZero
				}
			}
			state[b-ps] = st
		}
		v.idx.RUnlock()
		for b := ps; b < pe; {
			k := state[b-ps]
			e := b + 1
			for e < pe && state[e-ps] == k {
				e++
			}
			if k == chOneZero {
				if ok, err := oneZero(b, e); !ok || err != nil {
					return false, err
				}
			} else if !r.add(b, e-b, k == chDiffer) {
				return false, nil
			}
			b = e
		}
		pos = pe
	}
	return gap(pos, hi)
}

// sameContent reports whether two versions of one block of one volume, as
// visibleIn returns them, read the same: both zeros, or the same version.
func sameContent(a, b version) bool {
	if a.kind != kindData || b.kind != kindData {
		return a.kind != kindData && b.kind != kindData
	}
	return a.epoch == b.epoch && a.seq == b.seq
}
