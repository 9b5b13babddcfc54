package wire

import (
	"context"
	"fmt"

	"cairn/backend/store"
)

// Replica catch-up over the wire: OpVersionsSince streams, a reply at a
// time, the versions a healthy replica holds for a range of blocks;
// OpApplyVersions stores such a reply's records on the replica that
// catches up, each with its original stamp.
//
// A version record is a 32-byte header and, for data, its blocks:
//
//	offset size field
//	     0    1 kind: 1 data, 2 zero
//	     1    3 reserved, 0
//	     4    4 blocks (≥ 1)
//	     8    8 block
//	    16    8 epoch
//	    24    8 seq
//	    32      data: blocks × 4096 bytes (none for zero)
//
// A VersionsSince reply is the block to ask from next (u64; the end of the
// range when it is covered, FlagMore otherwise), then records. An
// ApplyVersions request is the attachment generation of the target that
// sends it (u64: a node that fences the volume at a newer generation
// refuses it, as it would the target's writes), the volume (u64), then
// records.

// Sizes of the catch-up ops.
const (
	VersionsRequestSize = 32 // vol, block, blocks, seq min u64
	ApplyRequestSize    = 16 // generation, vol u64; then records
	VersionRecordSize   = 32
	// VersionsReplyBytesMax bounds a VersionsSince reply (and so what one
	// catch-up stream holds in memory at a time).
	VersionsReplyBytesMax = 4 << 20
	// ApplyRecordsBytesMax bounds the records of one ApplyVersions request.
	ApplyRecordsBytesMax = PayloadBytesMax - ApplyRequestSize

	recordData = 1
	recordZero = 2
)

// VersionsRequest asks for the versions of blocks [Block, Block+Blocks) of
// Vol with seq ≥ SeqMin.
type VersionsRequest struct{ Vol, Block, Blocks, SeqMin uint64 }

// Put encodes q into b[:VersionsRequestSize].
func (q *VersionsRequest) Put(b []byte) {
	_ = b[VersionsRequestSize-1]
	be.PutUint64(b, q.Vol)
	be.PutUint64(b[8:], q.Block)
	be.PutUint64(b[16:], q.Blocks)
	be.PutUint64(b[24:], q.SeqMin)
}

// ParseVersionsRequest decodes a VersionsSince request body.
func ParseVersionsRequest(b []byte) (VersionsRequest, error) {
	if len(b) != VersionsRequestSize {
		return VersionsRequest{}, fmt.Errorf("%w: versions request of %d bytes", ErrProtocol, len(b))
	}
	q := VersionsRequest{Vol: be.Uint64(b), Block: be.Uint64(b[8:]), Blocks: be.Uint64(b[16:]), SeqMin: be.Uint64(b[24:])}
	if q.Blocks == 0 || q.Block >= store.BlocksMax || q.Blocks > store.BlocksMax-q.Block {
		return VersionsRequest{}, fmt.Errorf("%w: versions of blocks [%d, +%d)", store.ErrInvalid, q.Block, q.Blocks)
	}
	return q, nil
}

// ApplyRequest is the fixed part of an ApplyVersions request.
type ApplyRequest struct{ Generation, Vol uint64 }

// Put encodes q into b[:ApplyRequestSize].
func (q *ApplyRequest) Put(b []byte) {
	_ = b[ApplyRequestSize-1]
	be.PutUint64(b, q.Generation)
	be.PutUint64(b[8:], q.Vol)
}

// ParseApplyRequest decodes the fixed part of an ApplyVersions request.
func ParseApplyRequest(b []byte) (ApplyRequest, error) {
	if len(b) != ApplyRequestSize {
		return ApplyRequest{}, fmt.Errorf("%w: apply request of %d bytes", ErrProtocol, len(b))
	}
	return ApplyRequest{Generation: be.Uint64(b), Vol: be.Uint64(b[8:])}, nil
}

// RecordSize returns the encoded size of v.
func RecordSize(v store.Version) int {
	if v.Zero {
		return VersionRecordSize
	}
	return VersionRecordSize + len(v.Data)
}

// PutRecord encodes v into b[:RecordSize(v)].
func PutRecord(b []byte, v store.Version) int {
	_ = b[RecordSize(v)-1]
	b[0] = recordData
	if v.Zero {
		b[0] = recordZero
	}
	b[1], b[2], b[3] = 0, 0, 0
	be.PutUint32(b[4:], uint32(v.Blocks))
	be.PutUint64(b[8:], v.Block)
	be.PutUint64(b[16:], v.Stamp.Epoch)
	be.PutUint64(b[24:], v.Stamp.Seq)
	return VersionRecordSize + copy(b[VersionRecordSize:], v.Data)
}

// ParseRecords decodes the records in b, calling fn for each until it
// returns an error; a Version's Data points into b. A malformed record
// fails with ErrProtocol before fn sees it.
func ParseRecords(b []byte, fn func(store.Version) error) error {
	for len(b) > 0 {
		if len(b) < VersionRecordSize {
			return fmt.Errorf("%w: version record of %d bytes", ErrProtocol, len(b))
		}
		kind, blocks := b[0], uint64(be.Uint32(b[4:]))
		v := store.Version{Block: be.Uint64(b[8:]), Blocks: blocks, Stamp: store.Stamp{Epoch: be.Uint64(b[16:]), Seq: be.Uint64(b[24:])}}
		switch {
		case b[1]|b[2]|b[3] != 0:
			return fmt.Errorf("%w: version record with reserved bytes set", ErrProtocol)
		case blocks == 0 || v.Block >= store.BlocksMax || blocks > store.BlocksMax-v.Block:
			return fmt.Errorf("%w: version record of blocks [%d, +%d)", ErrProtocol, v.Block, blocks)
		case kind != recordData && kind != recordZero:
			return fmt.Errorf("%w: version record of kind %d", ErrProtocol, kind)
		}
		n := VersionRecordSize
		if kind == recordZero {
			v.Zero = true
		} else {
			if blocks > ReadBlocksMax || len(b)-n < int(blocks)*BlockSize {
				return fmt.Errorf("%w: data record of %d blocks with %d bytes left", ErrProtocol, blocks, len(b)-n)
			}
			v.Data = b[n : n+int(blocks)*BlockSize]
			n += len(v.Data)
		}
		if err := fn(v); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// Versioner is what a Backend also implements to serve the catch-up ops
// (*store.Store does): store.Store.VersionsSince and store.Store.Apply. A
// Server whose Backend does not implement it answers them with
// CodeUnsupported.
type Versioner interface {
	VersionsSince(ctx context.Context, vol, block, n, seqMin uint64, fn func(b uint64, vs []store.Version) bool) (next uint64, err error)
	Apply(ctx context.Context, vol uint64, v store.Version, sync bool) error
}

// Fencer is what a Backend that fences volumes by attachment generation
// also implements: AdmitGeneration fails when vol is fenced above gen or
// gone, else holds the volume (it is not dropped) until release.
// ApplyVersions is admitted by it, since the copies carry the stamps of
// older attachments.
type Fencer interface {
	AdmitGeneration(vol, gen uint64) (release func(), err error)
}

var _ Versioner = (*store.Store)(nil)

// FillVersions encodes, into out (at least 8 + VersionRecordSize +
// BlockSize bytes), the next block to ask from and the records of the
// versions vb reports for [block, block+n) with seq ≥ seqMin, as many
// blocks' as fit: a VersionsSince reply. Data records of consecutive
// blocks with one stamp are merged. A block whose versions alone do not
// fit fails with store.ErrLimit.
func FillVersions(ctx context.Context, vb Versioner, vol, block, n, seqMin uint64, out []byte) (used int, next uint64, err error) {
	k := 8
	last := -1 // offset of the last record, when it is data
	var stopAt uint64
	stopped := false
	var bad error
	next, err = vb.VersionsSince(ctx, vol, block, n, seqMin, func(b uint64, vs []store.Version) bool {
		need := 0
		for _, v := range vs {
			need += RecordSize(v)
		}
		if k+need > len(out) {
			if k == 8 {
				bad = fmt.Errorf("%w: block %d has %d bytes of versions, more than a reply of %d holds", store.ErrLimit, b, need, len(out))
				return false
			}
			stopAt, stopped = b, true
			return false
		}
		for _, v := range vs {
			if !v.Zero && last >= 0 && mergeable(out[last:k], v) {
				be.PutUint32(out[last+4:], be.Uint32(out[last+4:])+uint32(v.Blocks))
				k += copy(out[k:], v.Data)
				continue
			}
			last = -1
			if !v.Zero {
				last = k
			}
			k += PutRecord(out[k:], v)
		}
		return true
	})
	if err == nil {
		err = bad
	}
	if err != nil {
		return 0, 0, err
	}
	if stopped {
		next = stopAt
	}
	be.PutUint64(out, next)
	return k, next, nil
}

// mergeable reports whether data version v extends the data record rec.
func mergeable(rec []byte, v store.Version) bool {
	blocks := uint64(be.Uint32(rec[4:]))
	return blocks+v.Blocks <= ReadBlocksMax && be.Uint64(rec[8:])+blocks == v.Block &&
		be.Uint64(rec[16:]) == v.Stamp.Epoch && be.Uint64(rec[24:]) == v.Stamp.Seq
}

// ApplyRecords stores the records of recs on vb, the last one with sync
// when sync is set (which makes every one before it durable too).
func ApplyRecords(ctx context.Context, vb Versioner, vol uint64, recs []byte, sync bool) error {
	if err := ParseRecords(recs, func(store.Version) error { return nil }); err != nil {
		return err
	}
	left := recs
	return ParseRecords(recs, func(v store.Version) error {
		left = left[RecordSize(v):]
		return vb.Apply(ctx, vol, v, sync && len(left) == 0)
	})
}

// VersionsSince asks the node for one reply of the versions of blocks
// [block, block+n) of vol with seq ≥ seqMin, into buf (at least
// VersionsReplyBytesMax bytes). It returns the records (in buf; see
// ParseRecords) and the block to ask from next: block+n once the range
// is covered. A node whose backend cannot answer fails it with
// ErrUnsupported.
func (c *Client) VersionsSince(ctx context.Context, vol, block, n, seqMin uint64, buf []byte) (recs []byte, next uint64, err error) {
	if len(buf) < VersionsReplyBytesMax {
		return nil, 0, fmt.Errorf("wire: versions vol %d: %w: buffer of %d bytes, want %d", vol, store.ErrInvalid, len(buf), VersionsReplyBytesMax)
	}
	a := args{op: OpVersionsSince, fixedLen: VersionsRequestSize, reply: buf[:VersionsReplyBytesMax]}
	(&VersionsRequest{Vol: vol, Block: block, Blocks: n, SeqMin: seqMin}).Put(a.fixed[:])
	m, more, err := c.do(ctx, &a)
	if err == nil {
		recs, next, err = checkVersionsReply(buf[:m], block, n, more)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("wire: versions vol %d blocks [%d, +%d) seq ≥ %d on %s: %w", vol, block, n, seqMin, c.addr, err)
	}
	return recs, next, nil
}

// checkVersionsReply checks a VersionsSince reply for [block, block+n).
func checkVersionsReply(b []byte, block, n uint64, more bool) (recs []byte, next uint64, err error) {
	if len(b) < 8 {
		return nil, 0, fmt.Errorf("%w: versions reply of %d bytes", ErrProtocol, len(b))
	}
	next, recs = be.Uint64(b), b[8:]
	if next <= block || next > block+n || more != (next < block+n) {
		return nil, 0, fmt.Errorf("%w: versions reply resumes at %d (more %v) for [%d, +%d)", ErrProtocol, next, more, block, n)
	}
	err = ParseRecords(recs, func(v store.Version) error {
		if v.Block < block || v.Block+v.Blocks > block+n {
			return fmt.Errorf("%w: version record of [%d, +%d) outside [%d, +%d)", ErrProtocol, v.Block, v.Blocks, block, n)
		}
		return nil
	})
	return recs, next, err
}

// ApplyVersions stores version records (as VersionsSince returned them)
// on the node, on behalf of a target of attachment generation gen; with
// sync they are durable when it returns.
func (c *Client) ApplyVersions(ctx context.Context, gen, vol uint64, recs []byte, sync bool) error {
	if len(recs) > ApplyRecordsBytesMax {
		return fmt.Errorf("wire: apply versions to vol %d: %w: %d bytes of records, at most %d", vol, store.ErrInvalid, len(recs), ApplyRecordsBytesMax)
	}
	a := args{op: OpApplyVersions, fixedLen: ApplyRequestSize, data: recs}
	if sync {
		a.flags = FlagSync
	}
	(&ApplyRequest{Generation: gen, Vol: vol}).Put(a.fixed[:])
	if _, _, err := c.do(ctx, &a); err != nil {
		return fmt.Errorf("wire: apply versions to vol %d on %s: %w", vol, c.addr, err)
	}
	return nil
}
