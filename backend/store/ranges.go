package store

import (
	"slices"
)

// zrange is a zero range record: blocks [start, end) read as zeros at
// stamp (epoch, seq) and later.
type zrange struct {
	epoch, seq uint64
	start, end uint64
}

// newer reports whether stamp (e1, s1) is greater than (e2, s2).
func newer(e1, s1, e2, s2 uint64) bool {
	return e1 > e2 || (e1 == e2 && s1 > s2)
}

// rangeSet is an immutable snapshot of a volume's zero ranges, sorted by
// start, with the running maximum of end so that an overlap query can stop
// early. Writers build a new set and publish it atomically.
type rangeSet struct {
	rs     []zrange
	maxEnd []uint64 // maxEnd[i] = max(rs[0..i].end)
}

func newRangeSet(rs []zrange) *rangeSet {
	slices.SortFunc(rs, func(a, b zrange) int {
		switch {
		case a.start != b.start:
			return cmpU64(a.start, b.start)
		case a.epoch != b.epoch:
			return cmpU64(a.epoch, b.epoch)
		}
		return cmpU64(a.seq, b.seq)
	})
	set := &rangeSet{rs: rs, maxEnd: make([]uint64, len(rs))}
	var m uint64
	for i, r := range rs {
		m = max(m, r.end)
		set.maxEnd[i] = m
	}
	return set
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (set *rangeSet) len() int {
	if set == nil {
		return 0
	}
	return len(set.rs)
}

// overlapping appends to out the ranges that intersect [from, to) and are
// visible at epoch (epoch <= at).
func (set *rangeSet) overlapping(out []zrange, from, to, at uint64) []zrange {
	if set == nil {
		return out
	}
	// First range starting at or after to; candidates lie before it.
	i, _ := slices.BinarySearchFunc(set.rs, to, func(r zrange, t uint64) int { return cmpU64(r.start, t) })
	for i--; i >= 0 && set.maxEnd[i] > from; i-- {
		r := set.rs[i]
		if r.end > from && r.epoch <= at {
			out = append(out, r)
		}
	}
	return out
}

// masks reports whether a range in rs covers block with a stamp newer than
// (epoch, seq).
func masks(rs []zrange, block, epoch, seq uint64) bool {
	for _, r := range rs {
		if r.start <= block && block < r.end && newer(r.epoch, r.seq, epoch, seq) {
			return true
		}
	}
	return false
}

// rangeEdit is the change a new range makes to a volume's range records.
type rangeEdit struct {
	add     bool     // write the new record (false: an existing record makes it redundant)
	deletes []zrange // records to delete
	trims   []zrange // records to rewrite with new bounds (same stamp)
	next    []zrange // the volume's ranges afterwards
}

// planRange computes the edit for adding n. A record is dominated by n where
// n covers it and every read that sees it prefers n: same epoch and lower
// seq, or (when no retained epoch is older than n.epoch, reclaim) any older
// epoch. Dominated records fully covered by n are deleted; partially covered
// ones are trimmed when what is left is one piece. If a record at n's epoch
// with a higher seq covers n, n itself is redundant. The plan keeps the
// number of records bounded by the number of distinct live ranges.
func planRange(cur []zrange, n zrange, reclaim bool) rangeEdit {
	var ed rangeEdit
	dup, redundant := false, false
	ed.next = make([]zrange, 0, len(cur)+1)
	for _, r := range cur {
		if r.epoch == n.epoch && r.seq == n.seq && r.start <= n.start && n.end <= r.end {
			// Same stamp and covered: a replay of the same Zero, already
			// recorded. (One stamp over other blocks is another part of
			// the same request, such as the next chunk's: recorded too.)
			dup = true
			ed.next = append(ed.next, r)
			continue
		}
		if r.epoch == n.epoch && r.seq > n.seq && r.start <= n.start && n.end <= r.end {
			redundant = true
		}
		dominated := newer(n.epoch, n.seq, r.epoch, r.seq) && (r.epoch == n.epoch || reclaim)
		if !dominated || r.end <= n.start || n.end <= r.start {
			ed.next = append(ed.next, r)
			continue
		}
		switch {
		case n.start <= r.start && r.end <= n.end:
			ed.deletes = append(ed.deletes, r)
			continue
		case r.start < n.start && r.end <= n.end:
			r.end = n.start
			ed.trims = append(ed.trims, r)
		case n.start <= r.start && n.end < r.end:
			r.start = n.end
			ed.trims = append(ed.trims, r)
		}
		// Otherwise n lies strictly inside r: leave r whole.
		ed.next = append(ed.next, r)
	}
	ed.add = !dup && !redundant
	if ed.add {
		ed.next = append(ed.next, n)
	}
	return ed
}
