package wire

import (
	"encoding/binary"
	"fmt"

	"cairn/backend/crc32c"
	"cairn/backend/store"
)

// The codec: pure functions from values to bytes and back. No I/O, no
// allocation except where a name becomes a string (Hello).

var be = binary.BigEndian

// Checksum returns the crc32c of b, as a frame header's payload sum.
func Checksum(b []byte) uint32 { return crc32c.Checksum(b) }

// UpdateChecksum extends a crc32c over more bytes of a payload.
func UpdateChecksum(sum uint32, b []byte) uint32 { return crc32c.Update(sum, b) }

// Header is the fixed header of a frame. Its layout is in doc.go.
type Header struct {
	Op     Op
	Flags  Flags
	ID     uint64 // chosen by the requester; a reply carries its request's
	Length uint32 // payload bytes after the header
	Status Code   // replies only
	Sum    uint32 // crc32c of the payload (0 for none)
}

// Put encodes h into b[:HeaderSize], with the version and header checksum.
func (h *Header) Put(b []byte) {
	_ = b[HeaderSize-1]
	be.PutUint32(b[0:], Magic)
	b[4] = Version
	b[5] = byte(h.Op)
	be.PutUint16(b[6:], uint16(h.Flags))
	be.PutUint64(b[8:], h.ID)
	be.PutUint32(b[16:], h.Length)
	be.PutUint16(b[20:], uint16(h.Status))
	be.PutUint16(b[22:], 0)
	be.PutUint32(b[24:], h.Sum)
	be.PutUint32(b[28:], crc32c.Checksum(b[:28]))
}

// ParseHeader decodes the header in b[:HeaderSize]. Errors wrap
// ErrProtocol; a header of another version fails with ErrVersion and the
// returned Header still carries the ID (bytes 8–16 keep their meaning in
// every version, so that the mismatch can be answered); a bad header
// checksum wraps ErrChecksum. Any op is accepted: the server answers the
// ones it does not know.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes, want %d", ErrProtocol, len(b), HeaderSize)
	}
	if m := be.Uint32(b); m != Magic {
		return Header{}, fmt.Errorf("%w: bad magic %#08x", ErrProtocol, m)
	}
	h := Header{ID: be.Uint64(b[8:])}
	if v := b[4]; v != Version {
		return h, fmt.Errorf("%w: peer speaks version %d, this end %d", ErrVersion, v, Version)
	}
	if got, want := be.Uint32(b[28:]), crc32c.Checksum(b[:28]); got != want {
		return Header{}, fmt.Errorf("%w: header crc %#08x, computed %#08x", ErrChecksum, got, want)
	}
	h.Op = Op(b[5])
	h.Flags = Flags(be.Uint16(b[6:]))
	h.Length = be.Uint32(b[16:])
	h.Status = Code(be.Uint16(b[20:]))
	h.Sum = be.Uint32(b[24:])
	switch {
	case be.Uint16(b[22:]) != 0:
		return Header{}, fmt.Errorf("%w: reserved header bytes %#04x", ErrProtocol, be.Uint16(b[22:]))
	case h.Flags&^flagsKnown != 0:
		return Header{}, fmt.Errorf("%w: unknown flags %#04x", ErrProtocol, uint16(h.Flags&^flagsKnown))
	case h.Flags&FlagReply == 0 && h.Status != CodeOK:
		return Header{}, fmt.Errorf("%w: request with status %d", ErrProtocol, h.Status)
	case h.Length > PayloadBytesMax:
		return h, fmt.Errorf("%w: payload of %d bytes, at most %d", ErrProtocol, h.Length, PayloadBytesMax)
	}
	return h, nil
}

// Hello is the handshake body, the same both ways. The client sends its
// name and zeros for the limits; the node answers with its name and limits.
type Hello struct {
	Features        uint64 // feature bits; none defined yet, must be 0
	RequestBytesMax uint32 // node: largest Read or Write data
	InFlightMax     uint32 // node: requests it executes at once per connection
	Name            string // at most NameBytesMax bytes
}

// AppendHello appends h's encoding to b. It panics on a name over
// NameBytesMax (a programmer error; callers check).
func AppendHello(b []byte, h Hello) []byte {
	if len(h.Name) > NameBytesMax {
		panic(fmt.Sprintf("wire: hello name of %d bytes", len(h.Name)))
	}
	b = be.AppendUint64(b, h.Features)
	b = be.AppendUint32(b, h.RequestBytesMax)
	b = be.AppendUint32(b, h.InFlightMax)
	b = append(b, byte(len(h.Name)))
	return append(b, h.Name...)
}

// ParseHello decodes a Hello body.
func ParseHello(b []byte) (Hello, error) {
	if len(b) < HelloSizeMin || len(b) != HelloSizeMin+int(b[16]) {
		return Hello{}, fmt.Errorf("%w: hello of %d bytes", ErrProtocol, len(b))
	}
	return Hello{
		Features:        be.Uint64(b),
		RequestBytesMax: be.Uint32(b[8:]),
		InFlightMax:     be.Uint32(b[12:]),
		Name:            string(b[HelloSizeMin:]),
	}, nil
}

// ReadRequest is the body of OpRead.
type ReadRequest struct {
	Vol, Block, Epoch uint64
	Blocks            uint32 // at most ReadBlocksMax
}

// Put encodes r into b[:ReadRequestSize].
func (r *ReadRequest) Put(b []byte) {
	_ = b[ReadRequestSize-1]
	be.PutUint64(b, r.Vol)
	be.PutUint64(b[8:], r.Block)
	be.PutUint64(b[16:], r.Epoch)
	be.PutUint32(b[24:], r.Blocks)
}

// ParseReadRequest decodes an OpRead body.
func ParseReadRequest(b []byte) (ReadRequest, error) {
	if len(b) != ReadRequestSize {
		return ReadRequest{}, fmt.Errorf("%w: read request of %d bytes", ErrProtocol, len(b))
	}
	r := ReadRequest{Vol: be.Uint64(b), Block: be.Uint64(b[8:]), Epoch: be.Uint64(b[16:]), Blocks: be.Uint32(b[24:])}
	if r.Blocks > ReadBlocksMax {
		return ReadRequest{}, fmt.Errorf("%w: read of %d blocks, at most %d", ErrProtocol, r.Blocks, ReadBlocksMax)
	}
	return r, nil
}

// WriteRequest is the fixed part of an OpWrite body; the data follows it.
type WriteRequest struct {
	Vol, Block uint64
	Stamp      store.Stamp
}

// Put encodes r into b[:WriteRequestSize].
func (r *WriteRequest) Put(b []byte) {
	_ = b[WriteRequestSize-1]
	be.PutUint64(b, r.Vol)
	be.PutUint64(b[8:], r.Block)
	be.PutUint64(b[16:], r.Stamp.Epoch)
	be.PutUint64(b[24:], r.Stamp.Seq)
}

// ParseWriteRequest decodes the fixed part of an OpWrite body, b of at
// least WriteRequestSize bytes; the rest of b is the data.
func ParseWriteRequest(b []byte) (WriteRequest, []byte, error) {
	if len(b) < WriteRequestSize || len(b) > PayloadBytesMax {
		return WriteRequest{}, nil, fmt.Errorf("%w: write request of %d bytes", ErrProtocol, len(b))
	}
	r := WriteRequest{Vol: be.Uint64(b), Block: be.Uint64(b[8:]),
		Stamp: store.Stamp{Epoch: be.Uint64(b[16:]), Seq: be.Uint64(b[24:])}}
	return r, b[WriteRequestSize:], nil
}

// ZeroRequest is the body of OpZero.
type ZeroRequest struct {
	Vol, Block, Blocks uint64
	Stamp              store.Stamp
}

// Put encodes r into b[:ZeroRequestSize].
func (r *ZeroRequest) Put(b []byte) {
	_ = b[ZeroRequestSize-1]
	be.PutUint64(b, r.Vol)
	be.PutUint64(b[8:], r.Block)
	be.PutUint64(b[16:], r.Blocks)
	be.PutUint64(b[24:], r.Stamp.Epoch)
	be.PutUint64(b[32:], r.Stamp.Seq)
}

// ParseZeroRequest decodes an OpZero body.
func ParseZeroRequest(b []byte) (ZeroRequest, error) {
	if len(b) != ZeroRequestSize {
		return ZeroRequest{}, fmt.Errorf("%w: zero request of %d bytes", ErrProtocol, len(b))
	}
	return ZeroRequest{Vol: be.Uint64(b), Block: be.Uint64(b[8:]), Blocks: be.Uint64(b[16:]),
		Stamp: store.Stamp{Epoch: be.Uint64(b[24:]), Seq: be.Uint64(b[32:])}}, nil
}

// ExtentsRequest is the body of OpExtents.
type ExtentsRequest struct {
	Vol, Block, Blocks, Epoch uint64
}

// Put encodes r into b[:ExtentsRequestSize].
func (r *ExtentsRequest) Put(b []byte) {
	_ = b[ExtentsRequestSize-1]
	be.PutUint64(b, r.Vol)
	be.PutUint64(b[8:], r.Block)
	be.PutUint64(b[16:], r.Blocks)
	be.PutUint64(b[24:], r.Epoch)
}

// ParseExtentsRequest decodes an OpExtents body.
func ParseExtentsRequest(b []byte) (ExtentsRequest, error) {
	if len(b) != ExtentsRequestSize {
		return ExtentsRequest{}, fmt.Errorf("%w: extents request of %d bytes", ErrProtocol, len(b))
	}
	return ExtentsRequest{Vol: be.Uint64(b), Block: be.Uint64(b[8:]), Blocks: be.Uint64(b[16:]), Epoch: be.Uint64(b[24:])}, nil
}

// ChangedRequest is the body of OpChanged: the blocks of [Block,
// Block+Blocks) of Vol whose content at epoch To may differ from that at
// From. Its reply is runs as for Extents, Allocated meaning changed.
type ChangedRequest struct {
	Vol, Block, Blocks, From, To uint64
}

// Put encodes r into b[:ChangedRequestSize].
func (r *ChangedRequest) Put(b []byte) {
	_ = b[ChangedRequestSize-1]
	be.PutUint64(b, r.Vol)
	be.PutUint64(b[8:], r.Block)
	be.PutUint64(b[16:], r.Blocks)
	be.PutUint64(b[24:], r.From)
	be.PutUint64(b[32:], r.To)
}

// ParseChangedRequest decodes an OpChanged body. The node's store checks
// the blocks and epochs (from below to).
func ParseChangedRequest(b []byte) (ChangedRequest, error) {
	if len(b) != ChangedRequestSize {
		return ChangedRequest{}, fmt.Errorf("%w: changed request of %d bytes", ErrProtocol, len(b))
	}
	return ChangedRequest{Vol: be.Uint64(b), Block: be.Uint64(b[8:]), Blocks: be.Uint64(b[16:]), From: be.Uint64(b[24:]), To: be.Uint64(b[32:])}, nil
}

// ExtentRun is one run of an Extents reply: blocks [Start, Start+Count)
// share one allocation state.
type ExtentRun struct {
	Start, Count uint64 // Count in [1, 2^63)
	Allocated    bool
}

const runAllocated = 1 << 63

// Put encodes r into b[:ExtentRunSize]. Count must be in [1, 2^63).
func (r *ExtentRun) Put(b []byte) {
	if r.Count == 0 || r.Count&runAllocated != 0 {
		panic(fmt.Sprintf("wire: extent run of %d blocks", r.Count))
	}
	c := r.Count
	if r.Allocated {
		c |= runAllocated
	}
	be.PutUint64(b, r.Start)
	be.PutUint64(b[8:], c)
}

// CheckExtentsReply validates an Extents reply payload and returns its
// number of runs; ExtentRunAt then decodes each.
func CheckExtentsReply(b []byte) (int, error) {
	if len(b)%ExtentRunSize != 0 || len(b) > ExtentsReplyBytesMax {
		return 0, fmt.Errorf("%w: extents reply of %d bytes", ErrProtocol, len(b))
	}
	n := len(b) / ExtentRunSize
	for i := range n {
		if be.Uint64(b[i*ExtentRunSize+8:])&^runAllocated == 0 {
			return 0, fmt.Errorf("%w: extents reply run %d of 0 blocks", ErrProtocol, i)
		}
	}
	return n, nil
}

// ExtentRunAt decodes run i of an Extents reply checked by CheckExtentsReply.
func ExtentRunAt(b []byte, i int) ExtentRun {
	p := b[i*ExtentRunSize:]
	c := be.Uint64(p[8:])
	return ExtentRun{Start: be.Uint64(p), Count: c &^ runAllocated, Allocated: c&runAllocated != 0}
}
