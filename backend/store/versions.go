package store

import (
	"context"
	"fmt"
	"slices"
)

// Replica catch-up: a replica that missed writes is brought up to date by
// copying, from a replica that has them, every version it may lack, each
// with its original stamp. Because the state depends only on the set of
// versions (per (block, epoch) the highest seq wins; a zero range masks
// what it covers with a lower stamp), the copies may be applied in any
// order, interleaved with new writes, and the copy converges to the
// source's state at every epoch the source keeps.

// Version is one version of blocks of a volume, as VersionsSince reports
// it and Apply stores it: data (Blocks consecutive blocks, Data holding
// Blocks×BlockSize bytes, all with one stamp) or a zero record (Zero set,
// Data nil).
type Version struct {
	Block, Blocks uint64
	Stamp         Stamp
	Zero          bool
	Data          []byte
}

// VersionsSince reports the versions of vol held for blocks [block,
// block+n) with seq ≥ seqMin, block by block in ascending order: fn is
// called once per block that has any, with the zero ranges that start
// there (clipped to [block, block+n): a range starting before block is
// reported at block), then the block's own versions, every epoch the index
// keeps (data and zero points). vs and the slices it holds are valid only
// during the call, which runs with the segment files held for reading
// (fn must not call the store). fn returns false to stop after that block;
// VersionsSince then returns the block to resume from, else block+n.
//
// Only the volume's own versions are reported: what a fork reads through
// its parent is the parent's (SetLineage is set on every replica by the
// catalog). Versions GC dropped are not reported; GC drops only what no
// reader sees, so what is reported is all a reader of any kept epoch can
// see. Data is read from the segments and checked against its crc32c.
func (s *Store) VersionsSince(ctx context.Context, vol, block, n, seqMin uint64, fn func(b uint64, vs []Version) bool) (next uint64, err error) {
	if err := checkBlocks(block, n); err != nil {
		return 0, fmt.Errorf("store: versions of vol %d: %w", vol, err)
	}
	if err := s.enter(ctx); err != nil {
		return 0, fmt.Errorf("store: versions of vol %d: %w", vol, err)
	}
	defer s.life.RUnlock()
	s.volEnter(vol, false)
	defer s.volExit(vol)
	end := block + n
	v := s.lookup(vol)
	if v == nil {
		return end, nil
	}
	// Zero ranges by clipped start.
	var ranges []zrange
	for _, r := range v.ranges.Load().overlapping(nil, block, end, ^uint64(0)) {
		if r.seq >= seqMin {
			r.start, r.end = max(r.start, block), min(r.end, end)
			ranges = append(ranges, r)
		}
	}
	v.idx.RLock()
	keys := v.idx.pageKeys(nil, block, end)
	v.idx.RUnlock()
	var (
		vers []version
		out  []Version
		buf  []byte
	)
	emit := func(b uint64) (bool, error) {
		out = out[:0]
		for _, r := range ranges {
			if r.start == b {
				out = append(out, Version{Block: b, Blocks: r.end - r.start, Stamp: Stamp{r.epoch, r.seq}, Zero: true})
			}
		}
		// files before the index, as Read: a segment the index points at
		// cannot be removed until the read is done.
		s.seg.files.RLock()
		defer s.seg.files.RUnlock()
		vers = vers[:0]
		v.idx.RLock()
		if p := v.idx.pages[b>>pageShift]; p != nil {
			if cur := p.v[b&(pageBlocks-1)]; cur.kind != 0 {
				vers = append(vers, cur)
				vers = append(vers, v.idx.older[b]...)
			}
		}
		v.idx.RUnlock()
		ndata := 0
		for _, ver := range vers {
			if ver.seq >= seqMin && ver.kind == kindData {
				ndata++
			}
		}
		if need := ndata * BlockSize; cap(buf) < need {
			buf = make([]byte, need)
		}
		k := 0
		for _, ver := range vers {
			if ver.seq < seqMin {
				continue
			}
			if ver.kind != kindData {
				out = append(out, Version{Block: b, Blocks: 1, Stamp: Stamp{ver.epoch, ver.seq}, Zero: true})
				continue
			}
			p := buf[k*BlockSize : (k+1)*BlockSize]
			k++
			if err := readRun((*s.seg.tab.Load())[ver.seg], p, []version{ver}); err != nil {
				return false, err
			}
			out = append(out, Version{Block: b, Blocks: 1, Stamp: Stamp{ver.epoch, ver.seq}, Data: p})
		}
		if len(out) == 0 {
			return true, nil
		}
		return fn(b, out), nil
	}
	// Walk the blocks that have index pages or where a range starts.
	starts := make(map[uint64]bool, len(ranges))
	for _, r := range ranges {
		starts[r.start] = true
	}
	var todo []uint64
	for _, key := range keys {
		for b := max(key<<pageShift, block); b < min(key<<pageShift+pageBlocks, end); b++ {
			todo = append(todo, b)
			delete(starts, b)
		}
	}
	for b := range starts {
		todo = append(todo, b)
	}
	slices.Sort(todo)
	for _, b := range todo {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("store: versions of vol %d: %w", vol, err)
		}
		goOn, err := emit(b)
		if err != nil {
			return 0, fmt.Errorf("store: versions of vol %d block %d: %w", vol, b, err)
		}
		if !goOn {
			return b + 1, nil
		}
	}
	return end, nil
}

// Apply stores a version copied from another replica with its original
// stamp: data as Write stores it; a zero record as Zero does, except that
// it never reclaims older versions (a copied zero record may be older
// than versions already here; it masks only what its stamp beats). Apply
// does not retain ver.Data.
func (s *Store) Apply(ctx context.Context, vol uint64, ver Version, sync bool) error {
	if ver.Zero {
		if ver.Data != nil {
			return fmt.Errorf("store: apply to vol %d: %w: zero record with data", vol, ErrInvalid)
		}
		return s.zero(ctx, vol, ver.Block, ver.Blocks, ver.Stamp, sync, false)
	}
	if uint64(len(ver.Data)) != ver.Blocks*BlockSize {
		return fmt.Errorf("store: apply to vol %d: %w: %d blocks with %d bytes", vol, ErrInvalid, ver.Blocks, len(ver.Data))
	}
	return s.Write(ctx, vol, ver.Block, ver.Data, ver.Stamp, sync)
}
