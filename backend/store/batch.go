package store

import (
	"context"
	"fmt"
	"sync"
)

// Batched writes. A front end that finds several small writes waiting
// at once (the NBD server, reading a queue depth of 32 from one socket)
// hands them over together: their records go to the log in one write
// call, and the caller answers them together. One by one, each went
// through its own group append, and they rarely overlapped: under fio nbd
// 4 KiB random writes at queue depth 32, cairnd made 0.74 pwrite(2) calls
// and 0.68 reply write(2) calls per request, each a few µs.

// BatchWrite is one write of a WriteBatch: len(Data)/BlockSize blocks
// from Block on, with Stamp. CRCs, if set, are the crc32c of each block
// (as WriteSummed takes them); nil: computed here. Err is its result.
type BatchWrite struct {
	Block uint64
	Data  []byte
	CRCs  []uint32
	Stamp Stamp
	Err   error
}

// writeOne is w written on its own, with its checks.
func (s *Store) writeOne(ctx context.Context, vol uint64, w *BatchWrite) error {
	if w.CRCs != nil {
		return s.WriteSummed(ctx, vol, w.Block, w.Data, w.CRCs, w.Stamp, false)
	}
	return s.write(ctx, vol, w.Block, w.Data, nil, w.Stamp, false)
}

const (
	// batchWritesMax bounds the writes one WriteBatch appends together;
	// more are taken in turns.
	batchWritesMax = 64
	// batchBytesMax bounds their records' bytes together; a write that
	// would pass it starts the next turn.
	batchBytesMax = 1 << 20
)

// batchBuf holds one turn of a WriteBatch: the records laid out one after
// the other, and their appends. Pooled.
type batchBuf struct {
	recs [batchBytesMax + batchWritesMax*recAlign]byte
	hs   [batchWritesMax]recHeader
	rec  [batchWritesMax][]byte
	at   [batchWritesMax]pos
	errs [batchWritesMax]error
}

var batchPool = sync.Pool{New: func() any { return new(batchBuf) }}

// WriteBatch stores each write of ws to vol as Write would without sync,
// and sets its Err. Writes of at most smallRecordBytes are appended
// together (one write call for up to batchBytesMax of records); a larger
// one is written on its own. Writes in one batch may overlap: per (block,
// epoch) the highest seq wins as always. Nothing is durable before a
// Sync.
func (s *Store) WriteBatch(ctx context.Context, vol uint64, ws []BatchWrite) {
	for len(ws) > 0 {
		n, bytes := 0, 0
		for n < len(ws) && n < batchWritesMax {
			w := &ws[n]
			if len(w.Data) > smallRecordBytes || checkBuf(len(w.Data)) != nil ||
				w.CRCs != nil && len(w.CRCs) != len(w.Data)/BlockSize {
				break
			}
			b := headerBytes(recData, uint64(len(w.Data)/BlockSize)) + len(w.Data)
			if n > 0 && bytes+b > batchBytesMax {
				break
			}
			bytes += b
			n++
		}
		if n == 0 { // not for a batch: on its own (checks included)
			ws[0].Err = s.writeOne(ctx, vol, &ws[0])
			ws = ws[1:]
			continue
		}
		s.writeTurn(ctx, vol, ws[:n], int64(bytes))
		ws = ws[n:]
	}
}

// writeTurn is one turn of WriteBatch: ws are small writes whose records
// hold bytes together.
func (s *Store) writeTurn(ctx context.Context, vol uint64, ws []BatchWrite, bytes int64) {
	fail := func(err error) {
		for i := range ws {
			ws[i].Err = fmt.Errorf("store: write vol %d block %d: %w", vol, ws[i].Block, err)
		}
	}
	for i := range ws {
		if checkBlocks(ws[i].Block, uint64(len(ws[i].Data)/BlockSize)) != nil {
			// One is out of range: each on its own, for its own error.
			for i := range ws {
				ws[i].Err = s.writeOne(ctx, vol, &ws[i])
			}
			return
		}
	}
	if err := s.enter(ctx); err != nil {
		fail(err)
		return
	}
	defer s.life.RUnlock()
	s.volEnter(vol, true)
	defer s.volExit(vol)
	if b := s.indexBytes.Load(); b >= s.indexMax {
		fail(fmt.Errorf("%w: index holds %d bytes, bound %d (Options.IndexBytes)", ErrLimit, b, s.indexMax))
		return
	}
	if err := s.checkSpace(bytes+int64(len(ws))*BlockSize, s.reserve); err != nil {
		fail(err)
		return
	}
	v := s.volume(vol)
	bb := batchPool.Get().(*batchBuf)
	defer batchPool.Put(bb)
	off := 0
	for i := range ws {
		w := &ws[i]
		n := uint64(len(w.Data) / BlockSize)
		v.raiseSeq(w.Stamp.Seq)
		v.raiseEpoch(w.Stamp.Epoch)
		hl := headerBytes(recData, n)
		rec := bb.recs[off : off+hl+len(w.Data)]
		putBlockCRCs(rec, vol, w.Block, w.Data, w.CRCs)
		copy(rec[hl:], w.Data)
		bb.hs[i] = recHeader{typ: recData, vol: vol, block: w.Block, n: n, epoch: w.Stamp.Epoch, seq: w.Stamp.Seq}
		bb.rec[i] = rec
		off += len(rec)
	}
	k := len(ws)
	s.apply.RLock()
	s.seg.appendMany(bb.hs[:k], bb.rec[:k], bb.at[:k], bb.errs[:k])
	for i := range ws {
		w := &ws[i]
		if err := bb.errs[i]; err != nil {
			w.Err = fmt.Errorf("store: write vol %d blocks [%d, +%d): %w", vol, w.Block, len(w.Data)/BlockSize, s.ioErr(err))
			continue
		}
		hl := headerBytes(recData, bb.hs[i].n)
		s.applyData(v, &bb.hs[i], uint32((bb.at[i].off+int64(hl))/recAlign), bb.rec[i][recFixedLen:hl])
		w.Err = nil
	}
	s.apply.RUnlock()
	s.stats.batchWrites.Add(uint64(k))
	s.stats.batchTurns.Add(1)
	clear(bb.rec[:k])
	clear(bb.errs[:k])
	if err := s.kickCheckpoint(); err != nil {
		for i := range ws {
			if ws[i].Err == nil {
				ws[i].Err = fmt.Errorf("store: write vol %d block %d: %w", vol, ws[i].Block, err)
			}
		}
	}
}
