package store

import (
	"math/bits"
	"slices"
	"sync"
	"unsafe"
)

// The block index: per volume, pages of pageBlocks consecutive blocks
// holding the version of each block's newest epoch, and a side map of the
// older epochs' versions (rare: only blocks written in several epochs). A
// version is 32 bytes and a page exactly 2 KiB (a malloc size class), so a
// volume written in one epoch costs 32.4 bytes of heap per 4 KiB block,
// about 8.1 GiB per TiB (TestIndexMemory), bounded by Options.IndexBytes.
const (
	pageShift  = 6
	pageBlocks = 1 << pageShift
)

// version is one version of a block: data in a segment or zeros.
type version struct {
	epoch, seq uint64
	seg, page  uint32 // data: segment and page (BlockSize unit) in it
	crc        uint32 // data: crc32c of the block
	kind       kind   // 0: no version
}

// page holds the newest-epoch versions of blocks [key<<pageShift,
// +pageBlocks).
type page struct {
	v [pageBlocks]version
}

func (p *page) empty() bool {
	for i := range p.v {
		if p.v[i].kind != 0 {
			return false
		}
	}
	return true
}

var (
	pageBytes    = int64(unsafe.Sizeof(page{})) + 24 // plus its map entry
	versionBytes = int64(unsafe.Sizeof(version{}))
	olderBytes   = int64(unsafe.Sizeof([]version{})) + 16 // a side map entry
)

// dkey names a (block, epoch); as a key of index.dirty, block is a page
// key (block >> pageShift) and the value has a bit per block of the page.
type dkey struct{ block, epoch uint64 }

func popcount(x uint64) int      { return bits.OnesCount64(x) }
func trailingZeros(x uint64) int { return bits.TrailingZeros64(x) }

// index is a volume's block index. Guarded by its mutex; the checkpoint
// takes dirty and ops.
type index struct {
	sync.RWMutex
	pages map[uint64]*page
	// older holds per block the versions of epochs below the one in its
	// page slot, epochs descending.
	older map[uint64][]version
	// dirty holds the (block, epoch)s changed since the last checkpoint,
	// a bit per block by (page key, epoch).
	dirty map[dkey]uint64
	// ops are the pebble edits of zero ranges and reclaims since the last
	// checkpoint, in order.
	ops []ckOp
	// olderAdds counts the versions put into older: GC looks at a volume
	// again only when it or the volume's metadata changed (see gc.go).
	olderAdds uint64
}

// lookup returns the version of block visible at epoch: the one with the
// greatest epoch <= epoch. Caller holds the lock.
func (x *index) lookup(block, epoch uint64) (version, bool) {
	p := x.pages[block>>pageShift]
	if p == nil {
		return version{}, false
	}
	if v := p.v[block&(pageBlocks-1)]; v.kind == 0 || v.epoch <= epoch {
		return v, v.kind != 0
	}
	for _, v := range x.older[block] {
		if v.epoch <= epoch {
			return v, true
		}
	}
	return version{}, false
}

// exact returns the version of block at exactly epoch.
func (x *index) exact(block, epoch uint64) (version, bool) {
	v, ok := x.lookup(block, epoch)
	return v, ok && v.epoch == epoch
}

// pointsAt reports whether the version of block at exactly epoch is data
// stored at page of segment seg: whether the block found there is live.
func (x *index) pointsAt(block, epoch uint64, seg, page uint32) bool {
	cur, ok := x.exact(block, epoch)
	return ok && cur.kind == kindData && cur.seg == seg && cur.page == page
}

// put stores nv for block unless a version of the same epoch with a higher
// (or equal) seq is there. It returns the version nv displaced, if any, and
// whether nv was stored. grew is the index bytes added.
func (x *index) put(block uint64, nv version) (old version, displaced, stored bool, grew int64) {
	key := block >> pageShift
	p := x.pages[key]
	if p == nil {
		p = &page{}
		x.pages[key] = p
		grew += pageBytes
	}
	cur := &p.v[block&(pageBlocks-1)]
	switch {
	case cur.kind == 0:
		*cur = nv
		return version{}, false, true, grew
	case cur.epoch == nv.epoch:
		if nv.seq <= cur.seq {
			return version{}, false, false, grew
		}
		old = *cur
		*cur = nv
		return old, true, true, grew
	}
	if x.older == nil {
		x.older = map[uint64][]version{}
	}
	list := x.older[block]
	if len(list) == 0 {
		grew += olderBytes
	}
	x.olderAdds++
	if nv.epoch > cur.epoch {
		x.older[block] = slices.Insert(list, 0, *cur)
		*cur = nv
		return version{}, false, true, grew + versionBytes
	}
	j := 0
	for j < len(list) && list[j].epoch > nv.epoch {
		j++
	}
	if j < len(list) && list[j].epoch == nv.epoch {
		if nv.seq <= list[j].seq {
			return version{}, false, false, grew
		}
		old = list[j]
		list[j] = nv
		return old, true, true, grew
	}
	x.older[block] = slices.Insert(list, j, nv)
	return version{}, false, true, grew + versionBytes
}

// remove drops the version of block at exactly epoch, if there is one, and
// returns it and the index bytes freed. The next older version, if any,
// takes the page slot, so that an empty slot still means no version.
func (x *index) remove(block, epoch uint64) (old version, ok bool, freed int64) {
	key := block >> pageShift
	p := x.pages[key]
	if p == nil {
		return version{}, false, 0
	}
	cur := &p.v[block&(pageBlocks-1)]
	if cur.kind == 0 {
		return version{}, false, 0
	}
	list := x.older[block]
	j := -1
	if cur.epoch == epoch {
		old = *cur
		if len(list) == 0 {
			*cur = version{}
			if p.empty() {
				delete(x.pages, key)
				freed += pageBytes
			}
			return old, true, freed
		}
		*cur, j = list[0], 0
	} else {
		for i := range list {
			if list[i].epoch == epoch {
				old, j = list[i], i
				break
			}
		}
		if j < 0 {
			return version{}, false, 0
		}
	}
	freed += versionBytes
	if len(list) == 1 {
		delete(x.older, block)
		return old, true, freed + olderBytes
	}
	x.older[block] = slices.Delete(list, j, j+1)
	return old, true, freed
}

// dropOlder drops the older versions of block, calling fn for each, and
// returns the bytes freed.
func (x *index) dropOlder(block uint64, fn func(version)) int64 {
	list, ok := x.older[block]
	if !ok {
		return 0
	}
	for _, v := range list {
		fn(v)
	}
	delete(x.older, block)
	return olderBytes + int64(len(list))*versionBytes
}

// deleteRange drops every version of blocks [from, to), calling fn for
// each, and returns the index bytes freed. The cost is O(min(pages of the
// range, pages of the volume)) plus the older versions of the volume when
// it has any.
func (x *index) deleteRange(from, to uint64, fn func(version)) (freed int64) {
	drop := func(key uint64, p *page) {
		lo, hi := key<<pageShift, key<<pageShift+pageBlocks
		for b := max(lo, from); b < min(hi, to); b++ {
			i := b & (pageBlocks - 1)
			if p.v[i].kind != 0 {
				fn(p.v[i])
				p.v[i] = version{}
			}
		}
		if p.empty() {
			delete(x.pages, key)
			freed += pageBytes
		}
	}
	first, last := from>>pageShift, (to-1)>>pageShift
	if last-first+1 <= uint64(len(x.pages)) {
		for key := first; key <= last; key++ {
			if p := x.pages[key]; p != nil {
				drop(key, p)
			}
		}
	} else {
		for key, p := range x.pages {
			if key >= first && key <= last {
				drop(key, p)
			}
		}
	}
	if to-from <= uint64(len(x.older)) {
		for b := from; b < to; b++ {
			freed += x.dropOlder(b, fn)
		}
	} else {
		for b := range x.older {
			if from <= b && b < to {
				freed += x.dropOlder(b, fn)
			}
		}
	}
	return freed
}

// each calls fn for every version in the index.
func (x *index) each(fn func(version)) {
	for _, p := range x.pages {
		for i := range p.v {
			if p.v[i].kind != 0 {
				fn(p.v[i])
			}
		}
	}
	for _, list := range x.older {
		for _, v := range list {
			fn(v)
		}
	}
}

// bytes returns the index bytes held.
func (x *index) bytes() int64 {
	b := int64(len(x.pages)) * pageBytes
	for _, list := range x.older {
		b += olderBytes + int64(len(list))*versionBytes
	}
	return b
}

// pageKeys appends the keys of the pages overlapping blocks [from, to),
// ascending.
func (x *index) pageKeys(out []uint64, from, to uint64) []uint64 {
	first, last := from>>pageShift, (to-1)>>pageShift
	if last-first+1 <= uint64(len(x.pages)) {
		for key := first; key <= last; key++ {
			if x.pages[key] != nil {
				out = append(out, key)
			}
		}
		return out
	}
	start := len(out)
	for key := range x.pages {
		if key >= first && key <= last {
			out = append(out, key)
		}
	}
	slices.Sort(out[start:])
	return out
}

// ref returns the version of block at exactly epoch, for update in place,
// or nil.
func (x *index) ref(block, epoch uint64) *version {
	p := x.pages[block>>pageShift]
	if p == nil {
		return nil
	}
	if v := &p.v[block&(pageBlocks-1)]; v.kind != 0 && v.epoch == epoch {
		return v
	}
	list := x.older[block]
	for j := range list {
		if list[j].epoch == epoch {
			return &list[j]
		}
	}
	return nil
}
