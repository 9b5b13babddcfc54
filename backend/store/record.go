package store

import (
	"encoding/binary"
	"fmt"

	"cairn/backend/crc32c"
)

// Segment records. A segment file is a sequence of records, each starting
// on a recAlign (512-byte) boundary: a header padded to a multiple of
// recAlign, then (data and copy records) n blocks of data. Every integer
// is big-endian. Positions of block data (version.page) count recAlign
// units, so a 4 KiB write costs 4.5 KiB of log, not 8.
//
//	0  magic u32        recMagic
//	4  type u8          recData, recZero or recDrop
//	5  flags u8         recZero: flagReclaim | flagPoints; otherwise 0
//	6  zero u16
//	8  seg u32          the segment holding the record
//	12 zero u32
//	16 vol u64
//	24 block u64        first block
//	32 n u64            blocks covered (recDrop: 0)
//	40 epoch u64
//	48 seq u64
//	56 off u64          byte offset of the record in its segment
//	64 hcrc u32         crc32c of bytes [0,64) and of the crc array
//	68 zero u32
//	72 crc u32 * n      recData only: crc32c of each data block
//	72 entry * n        recCopy only: block u64 | epoch u64 | seq u64 |
//	                    crc u32 | zero u32 (copyEntryLen bytes each)
//
// The header is padded with zeros to a multiple of recAlign. The header
// CRC covers the per-block CRCs, which cover the data, so a record is valid
// when its header parses and every block matches; seg and off make a record
// copied to the wrong place (or left over from elsewhere) invalid.
const (
	recMagic = 0x63726e31 // "crn1"

	recData = 1 // n blocks of data follow the header
	recZero = 2 // blocks [block, block+n) read as zeros from (epoch, seq) on
	recDrop = 3 // volume vol is dropped
	recCopy = 4 // the cleaner moved n blocks of vol here (entries below)

	flagReclaim = 1 // recZero: older versions of the range are deleted
	flagPoints  = 2 // recZero: stored as per-block zero versions, not a range

	recFixedLen = 72
	// recAlign is the alignment of records and of the block data in them.
	recAlign = 512
	// blockUnits is a block's length in recAlign units.
	blockUnits = BlockSize / recAlign
	// recDataBlocksMax bounds the blocks of one data record (one Write).
	recDataBlocksMax = RequestBytesMax / BlockSize
	copyEntryLen     = 32
	// copyBlocksMax: a copy record's header fits one page.
	copyBlocksMax = (BlockSize - recFixedLen) / copyEntryLen
	// recHeaderBytesMax is the largest header, padded.
	recHeaderBytesMax = (recFixedLen + 4*recDataBlocksMax + recAlign - 1) / recAlign * recAlign
)

func blockCRC(p []byte) uint32 { return crc32c.Checksum(p) }

// recHeader is a decoded record header.
type recHeader struct {
	typ, flags    uint8
	seg           uint32
	vol, block, n uint64
	epoch, seq    uint64
	off           int64
}

// headerLen is the unpadded header length of a record of typ covering n
// blocks; headerBytes the padded one.
func headerLen(typ uint8, n uint64) int {
	switch typ {
	case recData:
		return recFixedLen + 4*int(n)
	case recCopy:
		return recFixedLen + copyEntryLen*int(n)
	}
	return recFixedLen
}

// hasData reports whether records of typ carry n data blocks.
func hasData(typ uint8) bool { return typ == recData || typ == recCopy }

// crcOf returns the CRC of block i of a data or copy record from its
// header bytes.
func crcOf(typ uint8, hdr []byte, i int) uint32 {
	if typ == recCopy {
		return binary.BigEndian.Uint32(hdr[recFixedLen+copyEntryLen*i+24:])
	}
	return binary.BigEndian.Uint32(hdr[recFixedLen+4*i:])
}

// copyEntry is one block of a copy record.
type copyEntry struct {
	block, epoch, seq uint64
	crc               uint32
}

func putCopyEntry(hdr []byte, i int, e copyEntry) {
	b := hdr[recFixedLen+copyEntryLen*i:]
	binary.BigEndian.PutUint64(b[0:8], e.block)
	binary.BigEndian.PutUint64(b[8:16], e.epoch)
	binary.BigEndian.PutUint64(b[16:24], e.seq)
	binary.BigEndian.PutUint32(b[24:28], e.crc)
	binary.BigEndian.PutUint32(b[28:32], 0)
}

func getCopyEntry(hdr []byte, i int) copyEntry {
	b := hdr[recFixedLen+copyEntryLen*i:]
	return copyEntry{
		block: binary.BigEndian.Uint64(b[0:8]),
		epoch: binary.BigEndian.Uint64(b[8:16]),
		seq:   binary.BigEndian.Uint64(b[16:24]),
		crc:   binary.BigEndian.Uint32(b[24:28]),
	}
}

func headerBytes(typ uint8, n uint64) int {
	return (headerLen(typ, n) + recAlign - 1) / recAlign * recAlign
}

// recordBytes is the size of the whole record on disk.
func (h *recHeader) recordBytes() int64 {
	b := int64(headerBytes(h.typ, h.n))
	if hasData(h.typ) {
		b += int64(h.n) * BlockSize
	}
	return b
}

// encodeHeader writes h into b[:headerBytes] and seals it with the header
// CRC. For a data record the caller has already put the per-block CRCs at
// b[recFixedLen:]; the padding after them is cleared here.
func encodeHeader(b []byte, h *recHeader) {
	hl, hb := headerLen(h.typ, h.n), headerBytes(h.typ, h.n)
	_ = b[hb-1]
	binary.BigEndian.PutUint32(b[0:4], recMagic)
	b[4], b[5] = h.typ, h.flags
	binary.BigEndian.PutUint16(b[6:8], 0)
	binary.BigEndian.PutUint32(b[8:12], h.seg)
	binary.BigEndian.PutUint32(b[12:16], 0)
	binary.BigEndian.PutUint64(b[16:24], h.vol)
	binary.BigEndian.PutUint64(b[24:32], h.block)
	binary.BigEndian.PutUint64(b[32:40], h.n)
	binary.BigEndian.PutUint64(b[40:48], h.epoch)
	binary.BigEndian.PutUint64(b[48:56], h.seq)
	binary.BigEndian.PutUint64(b[56:64], uint64(h.off))
	binary.BigEndian.PutUint32(b[68:72], 0)
	clear(b[hl:hb])
	binary.BigEndian.PutUint32(b[64:68], headerCRC(b[:hl]))
}

func headerCRC(b []byte) uint32 {
	return crc32c.Update(crc32c.Checksum(b[:64]), b[recFixedLen:])
}

// parseFixed validates the fixed part of a header (b holds at least
// recFixedLen bytes) and returns it with the unpadded header length. It
// does not check the header CRC, which may need more bytes (decodeHeader).
func parseFixed(b []byte) (recHeader, int, error) {
	if len(b) < recFixedLen {
		return recHeader{}, 0, fmt.Errorf("%w: record header of %d bytes", ErrCorrupt, len(b))
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != recMagic {
		return recHeader{}, 0, fmt.Errorf("%w: record magic %#x", ErrCorrupt, m)
	}
	h := recHeader{
		typ:   b[4],
		flags: b[5],
		seg:   binary.BigEndian.Uint32(b[8:12]),
		vol:   binary.BigEndian.Uint64(b[16:24]),
		block: binary.BigEndian.Uint64(b[24:32]),
		n:     binary.BigEndian.Uint64(b[32:40]),
		epoch: binary.BigEndian.Uint64(b[40:48]),
		seq:   binary.BigEndian.Uint64(b[48:56]),
		off:   int64(binary.BigEndian.Uint64(b[56:64])),
	}
	if binary.BigEndian.Uint16(b[6:8]) != 0 || binary.BigEndian.Uint32(b[12:16]) != 0 || binary.BigEndian.Uint32(b[68:72]) != 0 {
		return recHeader{}, 0, fmt.Errorf("%w: record header padding", ErrCorrupt)
	}
	if h.off < 0 || h.off%recAlign != 0 {
		return recHeader{}, 0, fmt.Errorf("%w: record offset %d", ErrCorrupt, h.off)
	}
	switch h.typ {
	case recData:
		if h.flags != 0 || h.n > recDataBlocksMax || checkBlocks(h.block, h.n) != nil {
			return recHeader{}, 0, fmt.Errorf("%w: data record [%d, +%d) flags %#x", ErrCorrupt, h.block, h.n, h.flags)
		}
	case recZero:
		if h.flags&^(flagReclaim|flagPoints) != 0 || checkBlocks(h.block, h.n) != nil ||
			(h.flags&flagPoints != 0 && h.n > zeroPointsBlocksMax) {
			return recHeader{}, 0, fmt.Errorf("%w: zero record [%d, +%d) flags %#x", ErrCorrupt, h.block, h.n, h.flags)
		}
	case recCopy:
		if h.flags != 0 || h.n == 0 || h.n > copyBlocksMax || h.block != 0 || h.epoch != 0 || h.seq != 0 {
			return recHeader{}, 0, fmt.Errorf("%w: copy record of %d blocks", ErrCorrupt, h.n)
		}
	case recDrop:
		if h.flags != 0 || h.block != 0 || h.n != 0 || h.epoch != 0 || h.seq != 0 {
			return recHeader{}, 0, fmt.Errorf("%w: drop record with fields set", ErrCorrupt)
		}
	default:
		return recHeader{}, 0, fmt.Errorf("%w: record type %d", ErrCorrupt, h.typ)
	}
	return h, headerLen(h.typ, h.n), nil
}

// decodeHeader parses and checks a whole header; b holds at least its
// unpadded length. For a data record, the per-block CRCs are at
// b[recFixedLen:recFixedLen+4n].
func decodeHeader(b []byte) (recHeader, error) {
	h, hl, err := parseFixed(b)
	if err != nil {
		return recHeader{}, err
	}
	if len(b) < hl {
		return recHeader{}, fmt.Errorf("%w: record header of %d bytes, want %d", ErrCorrupt, len(b), hl)
	}
	if got, want := headerCRC(b[:hl]), binary.BigEndian.Uint32(b[64:68]); got != want {
		return recHeader{}, fmt.Errorf("%w: record header crc %#x, want %#x", ErrCorrupt, got, want)
	}
	if h.typ == recCopy {
		for i := range int(h.n) {
			e := getCopyEntry(b, i)
			if e.block >= BlocksMax || binary.BigEndian.Uint32(b[recFixedLen+copyEntryLen*i+28:]) != 0 {
				return recHeader{}, fmt.Errorf("%w: copy entry %d: block %d", ErrCorrupt, i, e.block)
			}
		}
	}
	return h, nil
}
