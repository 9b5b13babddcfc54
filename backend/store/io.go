package store

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// cursor holds the per-call buffers of a read-side call; pooled so that
// reads allocate nothing per block.
type cursor struct {
	lo, hi [blockPrefixLen]byte
	key    [keyLen]byte
	opts   pebble.IterOptions
	ranges []zrange
}

var cursorPool = sync.Pool{New: func() any { return &cursor{ranges: make([]zrange, 0, 8)} }}

// open positions c on vol's blocks [from, to) at epoch and opens an iterator
// bounded to them.
func (s *Store) open(c *cursor, vol, from, to, epoch uint64) (*pebble.Iterator, error) {
	c.ranges = c.ranges[:0]
	if v := s.lookup(vol); v != nil {
		c.ranges = v.ranges.Load().overlapping(c.ranges, from, to, epoch)
	}
	putBlockPrefix(c.lo[:], vol, from)
	putBlockPrefix(c.hi[:], vol, to)
	c.opts = pebble.IterOptions{LowerBound: c.lo[:], UpperBound: c.hi[:]}
	it, err := s.db.NewIter(&c.opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIO, err)
	}
	return it, nil
}

func (c *cursor) release() {
	if cap(c.ranges) > 64 {
		c.ranges = make([]zrange, 0, 8)
	}
	cursorPool.Put(c)
}

// version looks up the newest point version of block at epoch or below.
// ok is false when the block has none. data aliases the iterator's value.
func (c *cursor) version(it *pebble.Iterator, vol, block, epoch uint64) (ep, seq uint64, kd kind, data []byte, ok bool, err error) {
	putPointKey(c.key[:], vol, block, epoch)
	if !it.SeekGE(c.key[:]) {
		if err := it.Error(); err != nil {
			return 0, 0, 0, nil, false, fmt.Errorf("%w: %w", ErrIO, err)
		}
		return 0, 0, 0, nil, false, nil
	}
	k := it.Key()
	if len(k) < blockPrefixLen || !bytes.Equal(k[:blockPrefixLen], c.key[:blockPrefixLen]) {
		return 0, 0, 0, nil, false, nil
	}
	if _, _, ep, err = decodePointKey(k); err != nil {
		return 0, 0, 0, nil, false, fmt.Errorf("%w: %w", ErrIO, err)
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return 0, 0, 0, nil, false, fmt.Errorf("%w: %w", ErrIO, err)
	}
	seq, kd, data, err = decodeValue(v)
	if err != nil {
		return 0, 0, 0, nil, false, fmt.Errorf("%w: block %d: %w", ErrIO, block, err)
	}
	return ep, seq, kd, data, true, nil
}

func closeIter(it *pebble.Iterator, err *error) {
	if cerr := it.Close(); cerr != nil && *err == nil {
		*err = fmt.Errorf("%w: %w", ErrIO, cerr)
	}
}

// Write stores len(data)/BlockSize consecutive blocks of vol starting at
// block with stamp st. len(data) must be a non-zero multiple of BlockSize,
// at most RequestBytesMax. If sync, the data is durable before Write returns
// (FUA). Per (block, epoch) the version with the highest seq wins whatever
// the arrival order. Write does not retain data.
func (s *Store) Write(ctx context.Context, vol, block uint64, data []byte, st Stamp, sync bool) (err error) {
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
	v := s.volume(vol)
	v.raiseSeq(st.Seq)
	b := s.db.NewBatchWithSize(batchBytes(n), pebble.WithMaxRetainedSizeBytes(batchRetainedBytesMax))
	for i := range n {
		op := b.MergeDeferred(keyLen, dataValueLen)
		putPointKey(op.Key, vol, block+i, st.Epoch)
		putValueHeader(op.Value, st.Seq, kindData)
		copy(op.Value[valueHeaderLen:], data[i*BlockSize:(i+1)*BlockSize])
		if err := op.Finish(); err != nil {
			_ = b.Close()
			return fmt.Errorf("store: write vol %d block %d: %w: %w", vol, block, ErrIO, err)
		}
	}
	if err := s.commit(b, sync); err != nil {
		return fmt.Errorf("store: write vol %d blocks [%d, +%d): %w", vol, block, n, err)
	}
	return nil
}

// batchRetainedBytesMax: pooled pebble batches keep buffers up to this size,
// enough for a 1 MiB write (a chunk), so that chunk writes do not allocate.
const batchRetainedBytesMax = 2 << 20

// batchBytes is the size of a batch of n data merges: a 12-byte header,
// then per entry a kind byte, two varint lengths (pebble reserves 5 bytes
// each), key and value.
func batchBytes(n uint64) int {
	return 12 + int(n)*(1+2*5+keyLen+dataValueLen)
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
// zeros. An error reading from disk wraps ErrIO; p is then undefined.
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
	defer s.recoverFatal(&err)
	c := cursorPool.Get().(*cursor)
	defer c.release()
	it, err := s.open(c, vol, block, block+n, epoch)
	if err != nil {
		return fmt.Errorf("store: read vol %d block %d: %w", vol, block, err)
	}
	defer closeIter(it, &err)
	for i := range n {
		dst := p[i*BlockSize : (i+1)*BlockSize]
		ep, seq, kd, data, ok, err := c.version(it, vol, block+i, epoch)
		if err != nil {
			return fmt.Errorf("store: read vol %d block %d: %w", vol, block+i, err)
		}
		if ok && kd == kindData && !masks(c.ranges, block+i, ep, seq) {
			copy(dst, data)
			continue
		}
		clear(dst)
	}
	return nil
}

// Zero makes blocks [block, block+n) of vol read as zeros from stamp st on.
// It costs O(1) keys whatever n (ranges under zeroRangeBlocksMin blocks are
// written as per-block zero versions).
//
// Zero also reclaims space: when no retained epoch (SetRetained) is below
// st.Epoch, it deletes every point version of the range, all epochs, in the
// same atomic batch. Caller contract: no Write overlapping the range may be
// in flight on this store while Zero runs (the volume layer serializes
// them), and no version with a higher seq than st may already be stored in
// the range. A straggler Write with a lower seq arriving later stays masked
// by the zero record. As a guard, Zero does not reclaim when this process
// has stored a point version of vol with a seq above st.Seq since Open.
func (s *Store) Zero(ctx context.Context, vol, block, n uint64, st Stamp, sync bool) (err error) {
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
	v.mu.Lock()
	defer v.mu.Unlock()
	reclaim := v.reclaimable(st.Epoch) && v.seqHigh.Load() <= st.Seq

	b := s.db.NewBatch()
	if reclaim {
		var lo, hi [blockPrefixLen]byte
		putBlockPrefix(lo[:], vol, block)
		putBlockPrefix(hi[:], vol, block+n)
		_ = b.DeleteRange(lo[:], hi[:], nil)
	}
	points := n < zeroRangeBlocksMin
	var ed rangeEdit
	if !points {
		nr := zrange{epoch: st.Epoch, seq: st.Seq, start: block, end: block + n}
		var cur []zrange
		if set := v.ranges.Load(); set != nil {
			cur = set.rs
		}
		ed = planRange(cur, nr, reclaim)
		if len(ed.next) > rangesPerVolumeMax {
			if n > zeroPointsBlocksMax {
				_ = b.Close()
				return fmt.Errorf("store: zero vol %d blocks [%d, +%d): %w: %d zero ranges", vol, block, n, ErrLimit, rangesPerVolumeMax)
			}
			points = true
		}
		if !points {
			for _, r := range ed.deletes {
				_ = b.Delete(encodeRangeKey(r, vol), nil)
			}
			for _, r := range ed.trims {
				_ = b.Set(encodeRangeKey(r, vol), encodeRangeValue(r), nil)
			}
			if ed.add {
				_ = b.Set(encodeRangeKey(nr, vol), encodeRangeValue(nr), nil)
			}
		}
	}
	if points {
		v.raiseSeq(st.Seq)
		for i := range n {
			op := b.MergeDeferred(keyLen, valueHeaderLen)
			putPointKey(op.Key, vol, block+i, st.Epoch)
			putValueHeader(op.Value, st.Seq, kindZero)
			if err := op.Finish(); err != nil {
				_ = b.Close()
				return fmt.Errorf("store: zero vol %d block %d: %w: %w", vol, block, ErrIO, err)
			}
		}
	}
	if err := s.commit(b, sync); err != nil {
		return fmt.Errorf("store: zero vol %d blocks [%d, +%d): %w", vol, block, n, err)
	}
	if !points {
		v.ranges.Store(newRangeSet(ed.next))
	}
	return nil
}

// Sync makes every write that returned before the call durable.
func (s *Store) Sync(ctx context.Context) (err error) {
	if err := s.enter(ctx); err != nil {
		return fmt.Errorf("store: sync: %w", err)
	}
	defer s.life.RUnlock()
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: sync: %w", err)
		}
	}()
	defer s.recoverFatal(&err)
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	return nil
}

// Extents reports the allocation of vol's blocks [block, block+n) as seen at
// epoch, calling fn for consecutive runs in order until the range is
// covered or fn returns false. A block is allocated when its visible
// version holds data; zeroed and unwritten blocks are not. The cost is
// O(versions stored in the range). fn must not call Close.
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
	defer s.recoverFatal(&err)
	c := cursorPool.Get().(*cursor)
	defer c.release()
	end := block + n
	it, err := s.open(c, vol, block, end, epoch)
	if err != nil {
		return fmt.Errorf("store: extents vol %d: %w", vol, err)
	}
	defer closeIter(it, &err)

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

	var prefix [blockPrefixLen]byte
	next := block // first block not yet reported
	for pos := block; pos < end && !stopped; {
		putBlockPrefix(prefix[:], vol, pos)
		if !it.SeekGE(prefix[:]) {
			break
		}
		_, b, _, err := decodePointKey(it.Key())
		if err != nil {
			return fmt.Errorf("store: extents vol %d: %w: %w", vol, ErrIO, err)
		}
		ep, seq, kd, _, ok, err := c.version(it, vol, b, epoch)
		if err != nil {
			return fmt.Errorf("store: extents vol %d: %w", vol, err)
		}
		pos = b + 1
		if !ok || kd != kindData || masks(c.ranges, b, ep, seq) {
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
	if err := it.Error(); err != nil {
		return fmt.Errorf("store: extents vol %d: %w: %w", vol, ErrIO, err)
	}
	if stopped {
		return nil
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
// Extents). It walks every version of the volume.
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

// DropVolume removes every version, zero record and retained list of vol
// with range deletions (O(1) keys) and a synced commit. No other call on
// vol may be in flight.
func (s *Store) DropVolume(vol uint64) (err error) {
	if err := s.enter(context.Background()); err != nil {
		return fmt.Errorf("store: drop vol %d: %w", vol, err)
	}
	defer s.life.RUnlock()
	s.dropBegin(vol)
	v := s.volume(vol)
	v.mu.Lock()
	defer v.mu.Unlock()
	b := s.db.NewBatch()
	var k [volPrefixLen]byte
	for _, tag := range []byte{tagPoint, tagRange} {
		_ = b.DeleteRange(volPrefix(k[:], tag, vol), volEnd(tag, vol), nil)
	}
	_ = b.Delete(volPrefix(k[:], tagRetained, vol), nil)
	if err := s.commit(b, true); err != nil {
		return fmt.Errorf("store: drop vol %d: %w", vol, err)
	}
	s.vols.Lock()
	delete(s.vols.m, vol)
	s.vols.Unlock()
	s.log.Info("volume dropped", "vol", vol)
	return nil
}
