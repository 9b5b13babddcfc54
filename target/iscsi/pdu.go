package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Opcodes (RFC 7143 §11.1.1). Initiator opcodes are below 0x20.
const (
	opNOPOut       = 0x00
	opSCSICmd      = 0x01
	opTaskMgmt     = 0x02
	opLogin        = 0x03
	opText         = 0x04
	opDataOut      = 0x05
	opLogout       = 0x06
	opSNACK        = 0x10
	opNOPIn        = 0x20
	opSCSIResp     = 0x21
	opTaskMgmtResp = 0x22
	opLoginResp    = 0x23
	opTextResp     = 0x24
	opDataIn       = 0x25
	opLogoutResp   = 0x26
	opR2T          = 0x31
	opAsync        = 0x32
	opReject       = 0x3f
)

// Wire sizes.
const (
	bhsBytes    = 48
	digestBytes = 4
	// ahsBytesMax: TotalAHSLength is one byte counting 4-byte words.
	ahsBytesMax = 255 * 4
	// dataSegmentBytesMax: DataSegmentLength is three bytes; RFC 7143
	// bounds MaxRecvDataSegmentLength to 2^24-1.
	dataSegmentBytesMax = 1<<24 - 1
)

// Flag bits of BHS byte 0 and 1.
const (
	flagImmediate = 0x40 // byte 0
	flagFinal     = 0x80 // byte 1
)

// reservedTag is the all-ones ITT/TTT meaning "none".
const reservedTag = 0xffffffff

// Codec errors. errShort means the buffer holds less than a whole PDU.
var (
	errShort        = errors.New("iscsi: short PDU")
	errHeaderDigest = errors.New("iscsi: header digest mismatch")
	errDataDigest   = errors.New("iscsi: data digest mismatch")
	errTooLong      = errors.New("iscsi: data segment too long")
	errAHS          = errors.New("iscsi: bad AHS")
)

// crc32c returns the iSCSI digest of b: CRC32C, sent least significant byte
// first (RFC 7143 §13.1, Appendix B.4 test vectors).
// castagnoli is hash/crc32's, not backend/crc32c's faster folding: a
// front end may not import the backend (imports point downward,
// DESIGN.md §6). Header digests are 48 bytes, where hash/crc32 is as fast;
// data digests, off unless the initiator asks, cost what they did.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// digests says which digests a connection uses.
type digests struct{ header, data bool }

// header is a Basic Header Segment. Accessors decode fields in place.
type header [bhsBytes]byte

func (h *header) opcode() byte       { return h[0] & 0x3f }
func (h *header) immediate() bool    { return h[0]&flagImmediate != 0 }
func (h *header) final() bool        { return h[1]&flagFinal != 0 }
func (h *header) ahsBytes() int      { return int(h[4]) * 4 }
func (h *header) dataBytes() int     { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }
func (h *header) lun() uint64        { return binary.BigEndian.Uint64(h[8:16]) }
func (h *header) itt() uint32        { return binary.BigEndian.Uint32(h[16:20]) }
func (h *header) u32(off int) uint32 { return binary.BigEndian.Uint32(h[off : off+4]) }
func (h *header) u16(off int) uint16 { return binary.BigEndian.Uint16(h[off : off+2]) }

func (h *header) setOpcode(op byte)        { h[0] = op }
func (h *header) setU32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:off+4], v) }
func (h *header) setU16(off int, v uint16) { binary.BigEndian.PutUint16(h[off:off+2], v) }
func (h *header) setITT(v uint32)          { h.setU32(16, v) }
func (h *header) setLUN(v uint64)          { binary.BigEndian.PutUint64(h[8:16], v) }

// setDataBytes stores DataSegmentLength; n must fit 24 bits.
func (h *header) setDataBytes(n int) {
	if n < 0 || n > dataSegmentBytesMax {
		panic(fmt.Sprintf("iscsi: data segment of %d bytes", n))
	}
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// Fields common to initiator PDUs.
func (h *header) cmdSN() uint32     { return h.u32(24) }
func (h *header) expStatSN() uint32 { return h.u32(28) }

// PDU is one decoded protocol data unit. AHS and Data alias the buffer they
// were parsed from; Data excludes padding and digests.
type PDU struct {
	hdr  header
	ahs  []byte
	data []byte
}

// pad4 returns the padding after n bytes of data segment.
func pad4(n int) int { return (4 - n&3) & 3 }

// wireBytes returns the encoded size of a PDU with ahs and data bytes.
func wireBytes(ahs, data int, d digests) int {
	n := bhsBytes + ahs
	if d.header {
		n += digestBytes
	}
	if data > 0 {
		n += data + pad4(data)
		if d.data {
			n += digestBytes
		}
	}
	return n
}

// parsePDU decodes one PDU from the start of b. It returns errShort if b
// holds less than a whole PDU, and the number of bytes used otherwise. A
// data segment longer than dataMax is errTooLong. It does no I/O and never
// panics on any input.
func parsePDU(b []byte, d digests, dataMax int) (p PDU, n int, err error) {
	if len(b) < bhsBytes {
		return p, 0, errShort
	}
	copy(p.hdr[:], b)
	ahs, data := p.hdr.ahsBytes(), p.hdr.dataBytes()
	if data > dataMax {
		return p, 0, fmt.Errorf("%w: %d > %d bytes", errTooLong, data, dataMax)
	}
	n = wireBytes(ahs, data, d)
	if len(b) < n {
		return p, 0, errShort
	}
	off := bhsBytes + ahs
	if d.header {
		if got, want := binary.LittleEndian.Uint32(b[off:]), crc32c(b[:off]); got != want {
			return p, 0, errHeaderDigest
		}
		off += digestBytes
	}
	if err := checkAHS(b[bhsBytes : bhsBytes+ahs]); err != nil {
		return p, 0, err
	}
	if ahs > 0 {
		p.ahs = b[bhsBytes : bhsBytes+ahs]
	}
	if data > 0 {
		p.data = b[off : off+data]
		padded := data + pad4(data)
		if d.data {
			if got, want := binary.LittleEndian.Uint32(b[off+padded:]), crc32c(b[off:off+padded]); got != want {
				return p, 0, errDataDigest
			}
		}
	}
	return p, n, nil
}

// checkAHS checks that the AHS segments tile ahs exactly (RFC 7143 §11.2.2).
func checkAHS(ahs []byte) error {
	for len(ahs) > 0 {
		if len(ahs) < 4 {
			return errAHS
		}
		l := int(binary.BigEndian.Uint16(ahs)) // excludes the 3-byte type/length header
		seg := 3 + l
		seg += pad4(seg)
		if seg > len(ahs) {
			return fmt.Errorf("%w: segment of %d bytes in %d", errAHS, seg, len(ahs))
		}
		ahs = ahs[seg:]
	}
	return nil
}

// appendPDU encodes p (header, AHS, data, padding, digests) onto dst. It
// sets TotalAHSLength and DataSegmentLength from p.ahs and p.data.
func appendPDU(dst []byte, p *PDU, d digests) []byte {
	if len(p.ahs)%4 != 0 || len(p.ahs) > ahsBytesMax {
		panic(fmt.Sprintf("iscsi: AHS of %d bytes", len(p.ahs)))
	}
	p.hdr[4] = byte(len(p.ahs) / 4)
	p.hdr.setDataBytes(len(p.data))
	start := len(dst)
	dst = append(dst, p.hdr[:]...)
	dst = append(dst, p.ahs...)
	if d.header {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(dst[start:]))
	}
	if len(p.data) > 0 {
		ds := len(dst)
		dst = append(dst, p.data...)
		dst = append(dst, make([]byte, pad4(len(p.data)))...)
		if d.data {
			dst = binary.LittleEndian.AppendUint32(dst, crc32c(dst[ds:]))
		}
	}
	return dst
}

// opName names an opcode for logs.
func opName(op byte) string {
	switch op {
	case opNOPOut:
		return "NOP-Out"
	case opSCSICmd:
		return "SCSI-Command"
	case opTaskMgmt:
		return "Task-Management"
	case opLogin:
		return "Login"
	case opText:
		return "Text"
	case opDataOut:
		return "Data-Out"
	case opLogout:
		return "Logout"
	case opSNACK:
		return "SNACK"
	case opNOPIn:
		return "NOP-In"
	case opSCSIResp:
		return "SCSI-Response"
	case opTaskMgmtResp:
		return "Task-Management-Response"
	case opLoginResp:
		return "Login-Response"
	case opTextResp:
		return "Text-Response"
	case opDataIn:
		return "Data-In"
	case opLogoutResp:
		return "Logout-Response"
	case opR2T:
		return "R2T"
	case opAsync:
		return "Async-Message"
	case opReject:
		return "Reject"
	}
	return fmt.Sprintf("opcode-%#02x", op)
}
