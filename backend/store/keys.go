package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// Key and value layout. Every integer is big-endian so that byte order is
// numeric order; epochs and range seqs are stored complemented (^x) so that
// the newest sorts first and a SeekGE lands on the newest version <= a bound.
//
//	point key   'b' | vol(8) | block(8) | ^epoch(8)            (25 bytes)
//	point value kind(1) | seq(8) | seg(4) | page(4) | crc(4)    (21 bytes; seg, page, crc 0 for kindZero)
//	range key   'z' | vol(8) | ^epoch(8) | ^seq(8)             (25 bytes)
//	range value start(8) | end(8)                              (16 bytes, start < end)
//	retained    'r' | vol(8) -> epoch(8)*k, ascending          (k <= retainedEpochsMax)
//	lineage     'l' | vol(8) -> parent(8) | parentEpoch(8) | (from(8) | to(8))*k
//	                                                           (k <= rollbacksMax; see lineage.go)
//	watermark   'w' -> seg(4) | off(8)                         (the log position the index reflects)
//	format      'f' -> formatName
//
// Block data lives in segment files (record.go); point and range entries
// are the durable copy of the in-memory index up to the watermark, written
// by checkpoints (checkpoint.go). The point keys of format v1 (data values
// written with a merge operator) are not readable by this format: Open
// refuses such a store. The merge operator stays registered because pebble
// refuses to open a database whose OPTIONS name a merger it lacks.
const (
	tagPoint     = 'b'
	tagRange     = 'z'
	tagRetained  = 'r'
	tagLineage   = 'l'
	tagWatermark = 'w'
	tagFormat    = 'f'

	formatName    = "cairn.store.segments.v2" // v2: records 512-byte aligned
	indexValueLen = 21
	watermarkLen  = 12

	keyLen         = 25
	blockPrefixLen = 17 // tag | vol | block: bounds of one block's versions
	volPrefixLen   = 9  // tag | vol

	valueHeaderLen = 9
	dataValueLen   = valueHeaderLen + BlockSize
	rangeValueLen  = 16
)

// kind is the type of a point version.
type kind byte

const (
	kindData kind = 1 // value carries BlockSize bytes of data
	kindZero kind = 2 // the block reads as zeros at this version
)

// mergerName is stored by pebble in the OPTIONS file; changing it makes
// existing stores unopenable, so it carries a version.
const mergerName = "cairn.store.maxseq.v1"

func putPointKey(k []byte, vol, block, epoch uint64) {
	_ = k[keyLen-1]
	k[0] = tagPoint
	binary.BigEndian.PutUint64(k[1:9], vol)
	binary.BigEndian.PutUint64(k[9:17], block)
	binary.BigEndian.PutUint64(k[17:25], ^epoch)
}

// putBlockPrefix writes 'b'|vol|block: it sorts before every version of block
// and after every version of block-1.
func putBlockPrefix(k []byte, vol, block uint64) {
	_ = k[blockPrefixLen-1]
	k[0] = tagPoint
	binary.BigEndian.PutUint64(k[1:9], vol)
	binary.BigEndian.PutUint64(k[9:17], block)
}

// decodePointKey parses a point key.
func decodePointKey(k []byte) (vol, block, epoch uint64, err error) {
	if len(k) != keyLen || k[0] != tagPoint {
		return 0, 0, 0, fmt.Errorf("%w: point key %x", ErrCorrupt, k)
	}
	return binary.BigEndian.Uint64(k[1:9]), binary.BigEndian.Uint64(k[9:17]), ^binary.BigEndian.Uint64(k[17:25]), nil
}

func putValueHeader(v []byte, seq uint64, kd kind) {
	_ = v[valueHeaderLen-1]
	binary.BigEndian.PutUint64(v[0:8], seq)
	v[8] = byte(kd)
}

// decodeValue parses a point value. data aliases v and is BlockSize long for
// kindData, empty for kindZero.
func decodeValue(v []byte) (seq uint64, kd kind, data []byte, err error) {
	if len(v) < valueHeaderLen {
		return 0, 0, nil, fmt.Errorf("%w: value of %d bytes", ErrCorrupt, len(v))
	}
	seq = binary.BigEndian.Uint64(v[0:8])
	kd = kind(v[8])
	switch {
	case kd == kindData && len(v) == dataValueLen:
		return seq, kd, v[valueHeaderLen:], nil
	case kd == kindZero && len(v) == valueHeaderLen:
		return seq, kd, nil, nil
	}
	return 0, 0, nil, fmt.Errorf("%w: value kind %d of %d bytes", ErrCorrupt, kd, len(v))
}

func encodeIndexValue(b []byte, v version) []byte {
	b = b[:indexValueLen]
	b[0] = byte(v.kind)
	binary.BigEndian.PutUint64(b[1:9], v.seq)
	binary.BigEndian.PutUint32(b[9:13], v.seg)
	binary.BigEndian.PutUint32(b[13:17], v.page)
	binary.BigEndian.PutUint32(b[17:21], v.crc)
	return b
}

// decodeIndex parses a point entry.
func decodeIndex(k, val []byte) (vol, block uint64, v version, err error) {
	vol, block, epoch, err := decodePointKey(k)
	if err != nil {
		return 0, 0, version{}, err
	}
	if len(val) != indexValueLen {
		return 0, 0, version{}, fmt.Errorf("%w: index value of %d bytes", ErrCorrupt, len(val))
	}
	v = version{
		epoch: epoch,
		kind:  kind(val[0]),
		seq:   binary.BigEndian.Uint64(val[1:9]),
		seg:   binary.BigEndian.Uint32(val[9:13]),
		page:  binary.BigEndian.Uint32(val[13:17]),
		crc:   binary.BigEndian.Uint32(val[17:21]),
	}
	if v.kind != kindData && v.kind != kindZero || (v.kind == kindZero && (v.seg|v.page|v.crc) != 0) {
		return 0, 0, version{}, fmt.Errorf("%w: index value %x", ErrCorrupt, val)
	}
	return vol, block, v, nil
}

func encodePos(p pos) []byte {
	b := make([]byte, watermarkLen)
	binary.BigEndian.PutUint32(b[0:4], p.seg)
	binary.BigEndian.PutUint64(b[4:12], uint64(p.off))
	return b
}

func decodePos(b []byte) (pos, error) {
	if len(b) != watermarkLen {
		return pos{}, fmt.Errorf("%w: watermark of %d bytes", ErrCorrupt, len(b))
	}
	p := pos{seg: binary.BigEndian.Uint32(b[0:4]), off: int64(binary.BigEndian.Uint64(b[4:12]))}
	if p.off < 0 {
		return pos{}, fmt.Errorf("%w: watermark offset %d", ErrCorrupt, p.off)
	}
	return p, nil
}

// volPrefix writes tag|vol into k and returns it.
func volPrefix(k []byte, tag byte, vol uint64) []byte {
	k = k[:volPrefixLen]
	k[0] = tag
	binary.BigEndian.PutUint64(k[1:9], vol)
	return k
}

// volEnd returns the smallest key after every key of tag|vol.
func volEnd(tag byte, vol uint64) []byte {
	if vol == ^uint64(0) {
		return []byte{tag + 1}
	}
	return volPrefix(make([]byte, volPrefixLen), tag, vol+1)
}

func encodeRangeKey(r zrange, vol uint64) []byte {
	k := make([]byte, keyLen)
	k[0] = tagRange
	binary.BigEndian.PutUint64(k[1:9], vol)
	binary.BigEndian.PutUint64(k[9:17], ^r.epoch)
	binary.BigEndian.PutUint64(k[17:25], ^r.seq)
	return k
}

func encodeRangeValue(r zrange) []byte {
	v := make([]byte, rangeValueLen)
	binary.BigEndian.PutUint64(v[0:8], r.start)
	binary.BigEndian.PutUint64(v[8:16], r.end)
	return v
}

// decodeRange parses a range record.
func decodeRange(k, v []byte) (vol uint64, r zrange, err error) {
	if len(k) != keyLen || k[0] != tagRange || len(v) != rangeValueLen {
		return 0, zrange{}, fmt.Errorf("%w: range record %x=%x", ErrCorrupt, k, v)
	}
	r = zrange{
		epoch: ^binary.BigEndian.Uint64(k[9:17]),
		seq:   ^binary.BigEndian.Uint64(k[17:25]),
		start: binary.BigEndian.Uint64(v[0:8]),
		end:   binary.BigEndian.Uint64(v[8:16]),
	}
	if r.start >= r.end || r.end > BlocksMax {
		return 0, zrange{}, fmt.Errorf("%w: range record %x=%x: bad bounds", ErrCorrupt, k, v)
	}
	return binary.BigEndian.Uint64(k[1:9]), r, nil
}

func encodeRetained(epochs []uint64) []byte {
	v := make([]byte, 8*len(epochs))
	for i, e := range epochs {
		binary.BigEndian.PutUint64(v[8*i:], e)
	}
	return v
}

// decodeRetained parses a retained-epochs value: ascending, no duplicates.
func decodeRetained(v []byte) ([]uint64, error) {
	if len(v)%8 != 0 || len(v)/8 > retainedEpochsMax {
		return nil, fmt.Errorf("%w: retained value of %d bytes", ErrCorrupt, len(v))
	}
	epochs := make([]uint64, len(v)/8)
	for i := range epochs {
		epochs[i] = binary.BigEndian.Uint64(v[8*i:])
		if i > 0 && epochs[i] <= epochs[i-1] {
			return nil, fmt.Errorf("%w: retained epochs not ascending", ErrCorrupt)
		}
	}
	return epochs, nil
}

// newerValue reports whether point value a beats b. Values order by their
// bytes, which start with the big-endian seq, so the highest seq wins and
// ties break by content; values too short to hold a seq lose against every
// other. It is a strict total order, so the outcome never depends on the
// order operands meet (a malformed winner is reported on read).
func newerValue(a, b []byte) bool {
	if aw, bw := len(a) >= 8, len(b) >= 8; aw != bw {
		return aw
	}
	return bytes.Compare(a, b) > 0
}

// maxSeqMerger keeps the newest operand. Instances are pooled; the pebble
// iterator closes the io.Closer returned by Finish when it is done with the
// value, which returns the merger to the pool.
type maxSeqMerger struct {
	buf []byte
}

var mergerPool = sync.Pool{New: func() any { return &maxSeqMerger{buf: make([]byte, 0, dataValueLen)} }}

func (m *maxSeqMerger) take(v []byte) {
	m.buf = append(m.buf[:0], v...)
}

func (m *maxSeqMerger) MergeNewer(v []byte) error {
	if newerValue(v, m.buf) {
		m.take(v)
	}
	return nil
}

func (m *maxSeqMerger) MergeOlder(v []byte) error { return m.MergeNewer(v) }

func (m *maxSeqMerger) Finish(includesBase bool) ([]byte, io.Closer, error) {
	return m.buf, m, nil
}

func (m *maxSeqMerger) Close() error {
	if cap(m.buf) <= dataValueLen {
		mergerPool.Put(m)
	}
	return nil
}

var merger = &pebble.Merger{
	Name: mergerName,
	Merge: func(key, value []byte) (pebble.ValueMerger, error) {
		m := mergerPool.Get().(*maxSeqMerger)
		m.take(value)
		return m, nil
	},
}
