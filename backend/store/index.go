package store

import (
	"slices"
	"sync"
	"unsafe"
)

// The block index: per volume, pages of pageBlocks consecutive blocks, each
// block with its versions. A page keeps the version of the newest epoch of
// each block inline and older epochs' versions (rare: only blocks written
// in several epochs) in a side map. A version is 32 bytes, so a fully
// written volume costs about 8.2 GiB of index per TiB of data in one epoch
// (32 B per 4 KiB block plus the page map), bounded by Options.IndexBytes.
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

// page holds the versions of blocks [key<<pageShift, +pageBlocks).
type page struct {
	v     [pageBlocks]version
	older map[uint8][]version // per slot, epochs descending, all below v[slot].epoch
	used  int                 // slots of v holding a version
}

var (
	pageBytes    = int64(unsafe.Sizeof(page{})) + 48 // plus its map entry
	versionBytes = int64(unsafe.Sizeof(version{}))
)

// dkey names a (block, epoch) whose version changed since the last
// checkpoint.
type dkey struct{ block, epoch uint64 }

// index is a volume's block index. Guarded by its mutex; the checkpoint
// takes dirty and ops.
type index struct {
	sync.RWMutex
	pages map[uint64]*page
	dirty map[dkey]struct{}
	// ops are the pebble edits of zero ranges and reclaims since the last
	// checkpoint, in order.
	ops []ckOp
}

// lookup returns the version of block visible at epoch: the one with the
// greatest epoch <= epoch. Caller holds the lock.
func (x *index) lookup(block, epoch uint64) (version, bool) {
	p := x.pages[block>>pageShift]
	if p == nil {
		return version{}, false
	}
	i := block & (pageBlocks - 1)
	if v := p.v[i]; v.kind == 0 || v.epoch <= epoch {
		return v, v.kind != 0
	}
	for _, v := range p.older[uint8(i)] {
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
	i := block & (pageBlocks - 1)
	cur := &p.v[i]
	switch {
	case cur.kind == 0:
		*cur = nv
		p.used++
		return version{}, false, true, grew
	case cur.epoch == nv.epoch:
		if nv.seq <= cur.seq {
			return version{}, false, false, grew
		}
		old = *cur
		*cur = nv
		return old, true, true, grew
	case nv.epoch > cur.epoch:
		if p.older == nil {
			p.older = map[uint8][]version{}
		}
		p.older[uint8(i)] = slices.Insert(p.older[uint8(i)], 0, *cur)
		*cur = nv
		return version{}, false, true, grew + versionBytes
	}
	if p.older == nil {
		p.older = map[uint8][]version{}
	}
	list := p.older[uint8(i)]
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
	p.older[uint8(i)] = slices.Insert(list, j, nv)
	return version{}, false, true, grew + versionBytes
}

// deleteRange drops every version of blocks [from, to), calling fn for
// each, and returns the index bytes freed. The cost is O(min(pages of the
// range, pages of the volume)).
func (x *index) deleteRange(from, to uint64, fn func(version)) (freed int64) {
	drop := func(key uint64, p *page) {
		lo, hi := key<<pageShift, key<<pageShift+pageBlocks
		if from <= lo && hi <= to {
			for i := range p.v {
				if p.v[i].kind != 0 {
					fn(p.v[i])
				}
			}
			for _, list := range p.older {
				for _, v := range list {
					fn(v)
				}
				freed += int64(len(list)) * versionBytes
			}
			delete(x.pages, key)
			freed += pageBytes
			return
		}
		for b := max(lo, from); b < min(hi, to); b++ {
			i := b & (pageBlocks - 1)
			if p.v[i].kind != 0 {
				fn(p.v[i])
				p.v[i] = version{}
				p.used--
			}
			if list := p.older[uint8(i)]; list != nil {
				for _, v := range list {
					fn(v)
				}
				freed += int64(len(list)) * versionBytes
				delete(p.older, uint8(i))
			}
		}
		if p.used == 0 && len(p.older) == 0 {
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
		return freed
	}
	for key, p := range x.pages {
		if key >= first && key <= last {
			drop(key, p)
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
		for _, list := range p.older {
			for _, v := range list {
				fn(v)
			}
		}
	}
}

// bytes returns the index bytes held.
func (x *index) bytes() int64 {
	var b int64
	for _, p := range x.pages {
		b += pageBytes
		for _, list := range p.older {
			b += int64(len(list)) * versionBytes
		}
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
	i := block & (pageBlocks - 1)
	if v := &p.v[i]; v.kind != 0 && v.epoch == epoch {
		return v
	}
	list := p.older[uint8(i)]
	for j := range list {
		if list[j].epoch == epoch {
			return &list[j]
		}
	}
	return nil
}
