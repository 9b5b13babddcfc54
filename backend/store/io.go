package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// cursor holds the per-call buffers of a read-side call; pooled so that
// reads allocate nothing per block.
type cursor struct {
	ranges []zrange
	vers   []version
	keys   []uint64
	spans  []span
}

var cursorPool = sync.Pool{New: func() any { return &cursor{ranges: make([]zrange, 0, 8), vers: make([]version, 0, 256)} }}

func (c *cursor) release() {
	if cap(c.ranges) > 64 {
		c.ranges = make([]zrange, 0, 8)
	}
	if cap(c.keys) > 1<<16 {
		c.keys = nil
	}
	cursorPool.Put(c)
}

// smallRecordBytes: a Write of at most this many bytes is copied after its
// header and written with one write call.
const smallRecordBytes = 64 << 10

// hdrBuf is a record header buffer, large enough for a small record's
// data too; pooled.
type hdrBuf struct {
	b [max(recHeaderBytesMax, BlockSize+smallRecordBytes)]byte
}

var hdrPool = sync.Pool{New: func() any { return new(hdrBuf) }}

// Write stores len(data)/BlockSize consecutive blocks of vol starting at
// block with stamp st. len(data) must be a non-zero multiple of BlockSize,
// at most RequestBytesMax. If sync, the data is durable before Write returns
// (FUA). Per (block, epoch) the version with the highest seq wins whatever
// the arrival order. Write does not retain data.
//
// The blocks go to the active segment as one record (a header with a
// crc32c per block, then the data) in one write call; the index points at
// them once the write returned.
func (s *Store) Write(ctx context.Context, vol, block uint64, data []byte, st Stamp, sync bool) (err error) {
	return s.write(ctx, vol, block, data, nil, st, sync)
}

// WriteSummed is Write given the crc32c of each block of data in crcs, so
// that a caller that computed them (a storage node checking the node RPC
// frame the data came in: wire.SummedWriter) does not have the store
// compute them again. Only a caller that checked them may use it: the
// wire server does, since the frame's payload CRC, which the sender
// computed over the data, is checked from them. A wrong CRC is not
// detected here: its block then fails its CRC on every read (ErrCorrupt),
// never reads as other data, but replay after a crash takes the record
// for a torn one and stops at it, as at any record whose data does not
// match its header. An invariants build checks every CRC given.
func (s *Store) WriteSummed(ctx context.Context, vol, block uint64, data []byte, crcs []uint32, st Stamp, sync bool) (err error) {
	if len(crcs) != len(data)/BlockSize {
		return fmt.Errorf("store: write vol %d block %d: %w: %d crcs for %d bytes", vol, block, ErrInvalid, len(crcs), len(data))
	}
	return s.write(ctx, vol, block, data, crcs, st, sync)
}

// write is Write and WriteSummed; crcs nil: computed here.
func (s *Store) write(ctx context.Context, vol, block uint64, data []byte, crcs []uint32, st Stamp, sync bool) (err error) {
	if err := checkBuf(len(data)); err != nil {
		return fmt.Errorf("store: write vol %d block %d: %w", vol, block, err)
	}
	n := uint64(len(data) / BlockSize)
	if err := checkBlocks(block, n); err != nil {
		return fmt.Errorf("store: write vol %d: %w", vol, err)
	}
	if err := s.enter(ctx); err != nil {
		return fmt.Errorf("store: write vol %d block %d: %w", vol, block, err)
	}
	defer s.life.RUnlock()
	s.volEnter(vol, true)
	defer s.volExit(vol)
	if b := s.indexBytes.Load(); b >= s.indexMax {
		return fmt.Errorf("store: write vol %d block %d: %w: index holds %d bytes, bound %d (Options.IndexBytes)", vol, block, ErrLimit, b, s.indexMax)
	}
	if err := s.checkSpace(int64(len(data)+BlockSize), s.reserve); err != nil {
		return fmt.Errorf("store: write vol %d blocks [%d, +%d): %w", vol, block, n, err)
	}
	v := s.volume(vol)
	v.raiseSeq(st.Seq)
	v.raiseEpoch(st.Epoch)
	hb := hdrPool.Get().(*hdrBuf)
	defer hdrPool.Put(hb)
	hdr := hb.b[:headerBytes(recData, n)]
	putBlockCRCs(hdr, vol, block, data, crcs)
	h := recHeader{typ: recData, vol: vol, block: block, n: n, epoch: st.Epoch, seq: st.Seq}
	rec, rest := hdr, data
	if len(data) <= smallRecordBytes {
		rec = hb.b[:len(hdr)+len(data)]
		copy(rec[len(hdr):], data)
		rest = nil
	}
	s.apply.RLock()
	at, end, err := s.seg.append(&h, rec, rest)
	if err != nil {
		s.apply.RUnlock()
		return fmt.Errorf("store: write vol %d blocks [%d, +%d): %w", vol, block, n, s.ioErr(err))
	}
	s.applyData(v, &h, uint32((at.off+int64(len(hdr)))/recAlign), hdr[recFixedLen:])
	s.apply.RUnlock()
	if err := s.kickCheckpoint(); err != nil {
		return fmt.Errorf("store: write vol %d blocks [%d, +%d): %w", vol, block, n, err)
	}
	if sync {
		if err := s.seg.syncTo(end); err != nil {
			return fmt.Errorf("store: write vol %d blocks [%d, +%d): %w", vol, block, n, s.ioErr(err))
		}
	}
	return nil
}

// putBlockCRCs puts the crc32c of each block of data (blocks from block
// on) in a data record's header hdr: crcs if given (an invariants build
// checks them), else computed.
func putBlockCRCs(hdr []byte, vol, block uint64, data []byte, crcs []uint32) {
	for i := range uint64(len(data) / BlockSize) {
		var crc uint32
		if crcs == nil {
			crc = blockCRC(data[i*BlockSize : (i+1)*BlockSize])
		} else {
			crc = crcs[i]
			if invariants && crc != blockCRC(data[i*BlockSize:(i+1)*BlockSize]) {
				panic(fmt.Sprintf("store: WriteSummed vol %d block %d: crc %#08x given, data has %#08x", vol, block+i, crc, blockCRC(data[i*BlockSize:(i+1)*BlockSize])))
			}
		}
		binary.BigEndian.PutUint32(hdr[recFixedLen+4*i:], crc)
	}
}

// raiseSeq records that a point version with seq was written.
func (v *volume) raiseSeq(seq uint64) {
	for {
		cur := v.seqHigh.Load()
		if seq <= cur || v.seqHigh.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// Read fills p (a non-zero multiple of BlockSize, at most RequestBytesMax)
// with blocks of vol from block on, each as of epoch: the version with the
// greatest (epoch, seq) among those with epoch <= epoch, where a Zero
// covering the block counts as a version of zeros. Unwritten blocks read as
// zeros. Each block read from a segment is checked against its crc32c. An
// error reading from disk wraps ErrIO (a CRC mismatch also ErrCorrupt); p
// is then undefined.
func (s *Store) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) (err error) {
	if err := checkBuf(len(p)); err != nil {
		return fmt.Errorf("store: read vol %d block %d: %w", vol, block, err)
	}
	n := uint64(len(p) / BlockSize)
	if err := checkBlocks(block, n); err != nil {
		return fmt.Errorf("store: read vol %d: %w", vol, err)
	}
	if err := s.enter(ctx); err != nil {
		return fmt.Errorf("store: read vol %d block %d: %w", vol, block, err)
	}
	defer s.life.RUnlock()
	s.volEnter(vol, false)
	defer s.volExit(vol)
	v := s.lookup(vol)
	if v == nil {
		clear(p)
		return nil
	}
	if v.lin.Load() != nil {
		if err := s.readLineage(v, block, p, epoch); err != nil {
			clear(p)
			return fmt.Errorf("store: read vol %d: %w", vol, err)
		}
		return nil
	}
	c := cursorPool.Get().(*cursor)
	defer c.release()
	c.ranges = v.ranges.Load().overlapping(c.ranges[:0], block, block+n, epoch)
	// files before the index: a segment the index points at cannot be
	// removed until the read is done.
	s.seg.files.RLock()
	defer s.seg.files.RUnlock()
	c.vers = c.vers[:0]
	v.idx.RLock()
	for i := range n {
		ver, ok := v.idx.lookup(block+i, epoch)
		if !ok || ver.kind != kindData || masks(c.ranges, block+i, ver.epoch, ver.seq) {
			ver.kind = 0
		}
		c.vers = append(c.vers, ver)
	}
	v.idx.RUnlock()
	if err := readVersions(*s.seg.tab.Load(), p, c.vers, block); err != nil {
		clear(p)
		return fmt.Errorf("store: read vol %d: %w", vol, err)
	}
	if n >= defragBlocksMin {
		s.offerDefrag(vol, block, p, c.vers)
	}
	return nil
}

// readVersions fills p with the blocks of vers (those of kind kindData are
// read from their segment, the others are zeros), the first of them block;
// one ReadAt per run of blocks stored one after the other. Caller holds
// s.seg.files for reading since it looked the versions up.
func readVersions(tab map[uint32]*segment, p []byte, vers []version, block uint64) error {
	for i := 0; i < len(vers); {
		ver := vers[i]
		if ver.kind != kindData {
			clear(p[i*BlockSize : (i+1)*BlockSize])
			i++
			continue
		}
		j := i + 1
		for j < len(vers) && vers[j].kind == kindData && vers[j].seg == ver.seg && vers[j].page == vers[j-1].page+blockUnits {
			j++
		}
		if err := readRun(tab[ver.seg], p[i*BlockSize:j*BlockSize], vers[i:j]); err != nil {
			return fmt.Errorf("block %d: %w", block+uint64(i), err)
		}
		i = j
	}
	return nil
}

// readRun reads the blocks of vers, consecutive pages of sg, into p and
// checks their CRCs.
func readRun(sg *segment, p []byte, vers []version) error {
	if sg == nil {
		return fmt.Errorf("%w: %w: segment %s missing", ErrIO, ErrCorrupt, segName(vers[0].seg))
	}
	off := int64(vers[0].page) * recAlign
	if len(p) > viewRunMax || !viewRead(sg.view, p, off) {
		k, err := sg.f.ReadAt(p, off)
		if k < len(p) {
			if err == nil || errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: %w: segment %s: short read at page %d", ErrIO, ErrCorrupt, segName(sg.id), vers[0].page)
			}
			return fmt.Errorf("%w: segment %s: %w", ErrIO, segName(sg.id), err)
		}
	}
	for i, ver := range vers {
		if got := blockCRC(p[i*BlockSize : (i+1)*BlockSize]); got != ver.crc {
			return fmt.Errorf("%w: %w: segment %s page %d: crc %#x, want %#x", ErrIO, ErrCorrupt, segName(sg.id), ver.page, got, ver.crc)
		}
	}
	return nil
}

// Zero makes blocks [block, block+n) of vol read as zeros from stamp st on.
// It costs O(1) records and keys whatever n (ranges under
// zeroRangeBlocksMin blocks are written as per-block zero versions).
//
// Zero also reclaims space: when no retained epoch (SetRetained) is below
// st.Epoch, it drops every version of the range, all epochs, from the
// index; the segments' space comes back as they are cleaned. Caller
// contract: no Write overlapping the range may be in flight on this store
// while Zero runs (the volume layer serializes them), and no version with
// a higher seq than st may already be stored in the range. A straggler
// Write with a lower seq arriving later stays masked by the zero record. As
// a guard, Zero does not reclaim when this process has stored a point
// version of vol with a seq above st.Seq since Open.
func (s *Store) Zero(ctx context.Context, vol, block, n uint64, st Stamp, sync bool) (err error) {
	return s.zero(ctx, vol, block, n, st, sync, true)
}

// zero is Zero; reclaim false never drops older versions (Apply).
func (s *Store) zero(ctx context.Context, vol, block, n uint64, st Stamp, sync, reclaim bool) (err error) {
	if err := checkBlocks(block, n); err != nil {
		return fmt.Errorf("store: zero vol %d: %w", vol, err)
	}
	if err := s.enter(ctx); err != nil {
		return fmt.Errorf("store: zero vol %d block %d: %w", vol, block, err)
	}
	defer s.life.RUnlock()
	s.volEnter(vol, true)
	defer s.volExit(vol)
	v := s.volume(vol)
	v.raiseEpoch(st.Epoch)
	v.mu.Lock()
	defer v.mu.Unlock()
	h := recHeader{typ: recZero, vol: vol, block: block, n: n, epoch: st.Epoch, seq: st.Seq}
	if reclaim && v.reclaimable(st.Epoch) && v.seqHigh.Load() <= st.Seq {
		h.flags |= flagReclaim
	}
	points := n < zeroRangeBlocksMin
	var ed *rangeEdit
	if !points {
		nr := zrange{epoch: st.Epoch, seq: st.Seq, start: block, end: block + n}
		var cur []zrange
		if set := v.ranges.Load(); set != nil {
			cur = set.rs
		}
		e := planRange(cur, nr, h.flags&flagReclaim != 0)
		ed = &e
		if len(ed.next) > rangesPerVolumeMax {
			if n > zeroPointsBlocksMax {
				return fmt.Errorf("store: zero vol %d blocks [%d, +%d): %w: %d zero ranges", vol, block, n, ErrLimit, rangesPerVolumeMax)
			}
			points = true
		}
	}
	if points {
		if b := s.indexBytes.Load(); b >= s.indexMax {
			return fmt.Errorf("store: zero vol %d block %d: %w: index holds %d bytes, bound %d (Options.IndexBytes)", vol, block, ErrLimit, b, s.indexMax)
		}
		h.flags |= flagPoints
		v.raiseSeq(st.Seq)
	}
	hb := hdrPool.Get().(*hdrBuf)
	defer hdrPool.Put(hb)
	hdr := hb.b[:headerBytes(recZero, n)]
	s.apply.RLock()
	_, end, err := s.seg.append(&h, hdr, nil)
	if err != nil {
		s.apply.RUnlock()
		return fmt.Errorf("store: zero vol %d blocks [%d, +%d): %w", vol, block, n, s.ioErr(err))
	}
	s.applyZero(v, &h, ed)
	s.apply.RUnlock()
	if h.flags&flagReclaim != 0 && s.space.low.Load() {
		// Space is short: give the freed segments back now.
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	if err := s.kickCheckpoint(); err != nil {
		return fmt.Errorf("store: zero vol %d blocks [%d, +%d): %w", vol, block, n, err)
	}
	if sync {
		if err := s.seg.syncTo(end); err != nil {
			return fmt.Errorf("store: zero vol %d blocks [%d, +%d): %w", vol, block, n, s.ioErr(err))
		}
	}
	return nil
}

// Sync makes every write and zero that returned before the call durable
// (one SyncData shared with concurrent syncs).
func (s *Store) Sync(ctx context.Context) (err error) {
	if err := s.enter(ctx); err != nil {
		return fmt.Errorf("store: sync: %w", err)
	}
	defer s.life.RUnlock()
	if err := s.seg.syncTo(s.seg.end()); err != nil {
		return fmt.Errorf("store: sync: %w", s.ioErr(err))
	}
	return nil
}

// Extents reports the allocation of vol's blocks [block, block+n) as seen at
// epoch, calling fn for consecutive runs in order until the range is
// covered or fn returns false. A block is allocated when its visible
// version holds data; zeroed and unwritten blocks are not. The cost is
// O(index pages in the range); it reads no data. fn must not call Close.
func (s *Store) Extents(ctx context.Context, vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) (err error) {
	if err := checkBlocks(block, n); err != nil {
		return fmt.Errorf("store: extents vol %d: %w", vol, err)
	}
	if err := s.enter(ctx); err != nil {
		return fmt.Errorf("store: extents vol %d: %w", vol, err)
	}
	defer s.life.RUnlock()
	s.volEnter(vol, false)
	defer s.volExit(vol)
	end := block + n
	v := s.lookup(vol)
	if v == nil {
		fn(block, n, false)
		return nil
	}
	if v.lin.Load() != nil {
		r := runs{fn: fn}
		if _, err := s.extentsLineage(v, block, end, epoch, 0, &r); err != nil {
			return fmt.Errorf("store: extents vol %d: %w", vol, err)
		}
		r.flush()
		return nil
	}
	c := cursorPool.Get().(*cursor)
	defer c.release()
	c.ranges = v.ranges.Load().overlapping(c.ranges[:0], block, end, epoch)
	v.idx.RLock()
	c.keys = v.idx.pageKeys(c.keys[:0], block, end)
	v.idx.RUnlock()

	var run struct {
		start, count uint64
		alloc, have  bool
	}
	stopped := false
	add := func(start, count uint64, alloc bool) {
		if run.have && run.alloc == alloc && run.start+run.count == start {
			run.count += count
			return
		}
		if run.have && !fn(run.start, run.count, run.alloc) {
			stopped = true
			return
		}
		run.start, run.count, run.alloc, run.have = start, count, alloc, true
	}
	next := block // first block not yet reported
	for _, key := range c.keys {
		lo, hi := max(key<<pageShift, block), min(key<<pageShift+pageBlocks, end)
		var bits uint64 // bit i: block key<<pageShift + i allocated
		v.idx.RLock()
		for b := lo; b < hi; b++ {
			ver, ok := v.idx.lookup(b, epoch)
			if ok && ver.kind == kindData && !masks(c.ranges, b, ver.epoch, ver.seq) {
				bits |= 1 << (b & (pageBlocks - 1))
			}
		}
		v.idx.RUnlock()
		for b := lo; b < hi && !stopped; b++ {
			if bits&(1<<(b&(pageBlocks-1))) == 0 {
				continue
			}
			if b > next {
				add(next, b-next, false)
			}
			if !stopped {
				add(b, 1, true)
			}
			next = b + 1
		}
		if stopped {
			return nil
		}
	}
	if next < end {
		add(next, end-next, false)
	}
	if run.have && !stopped {
		fn(run.start, run.count, run.alloc)
	}
	return nil
}

// Allocated returns the number of blocks of vol allocated at epoch (see
// Extents). It walks the volume's index.
func (s *Store) Allocated(ctx context.Context, vol, epoch uint64) (blocks uint64, err error) {
	err = s.Extents(ctx, vol, 0, BlocksMax, epoch, func(_, count uint64, alloc bool) bool {
		if alloc {
			blocks += count
		}
		return true
	})
	if err != nil {
		return 0, fmt.Errorf("store: allocated: %w", err)
	}
	return blocks, nil
}

// DropVolume removes every version, zero record, retained list and lineage of vol:
// a drop record in the log (synced), the index forgotten, pebble's copy
// deleted with range deletions (O(1) keys) at the next checkpoint. No
// other call on vol may be in flight.
func (s *Store) DropVolume(vol uint64) (err error) {
	if err := s.enter(context.Background()); err != nil {
		return fmt.Errorf("store: drop vol %d: %w", vol, err)
	}
	defer s.life.RUnlock()
	s.dropBegin(vol)
	v := s.volume(vol)
	v.mu.Lock()
	defer v.mu.Unlock()
	h := recHeader{typ: recDrop, vol: vol}
	hb := hdrPool.Get().(*hdrBuf)
	defer hdrPool.Put(hb)
	s.apply.RLock()
	_, end, err := s.seg.append(&h, hb.b[:headerBytes(recDrop, 0)], nil)
	if err != nil {
		s.apply.RUnlock()
		return fmt.Errorf("store: drop vol %d: %w", vol, s.ioErr(err))
	}
	s.applyDrop(vol)
	s.apply.RUnlock()
	s.linGen.Add(1)
	if err := s.seg.syncTo(end); err != nil {
		return fmt.Errorf("store: drop vol %d: %w", vol, s.ioErr(err))
	}
	s.log.Info("volume dropped", "vol", vol)
	return nil
}
