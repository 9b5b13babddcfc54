package wire

import (
	"errors"
	"fmt"

	"cairn/backend/store"
	"cairn/target"
)

// Version is the protocol version this package speaks. A peer that sends
// another version is answered with a CodeVersion error frame and hung up on.
const Version = 1

// Magic opens every frame: "CRNW".
const Magic uint32 = 0x43524e57

// Sizes and bounds, in bytes unless named otherwise.
const (
	// HeaderSize is the size of the fixed frame header.
	HeaderSize = 32
	// BlockSize is the store's block size; data payloads are multiples of it.
	BlockSize = store.BlockSize
	// RequestBytesMax bounds the data of one Read or Write: the store's bound.
	RequestBytesMax = store.RequestBytesMax
	// ReadBlocksMax bounds the blocks of one Read request.
	ReadBlocksMax = RequestBytesMax / BlockSize
	// PayloadBytesMax bounds the payload of any frame: a Write's fixed part
	// plus RequestBytesMax of data. A header announcing more is a protocol
	// error that ends the connection.
	PayloadBytesMax = WriteRequestSize + RequestBytesMax
	// ExtentRunsMax bounds the runs of one Extents reply; a longer answer
	// sets FlagMore and the client asks again from where it stopped.
	ExtentRunsMax = 4096
	// ExtentsReplyBytesMax is the largest Extents reply payload.
	ExtentsReplyBytesMax = ExtentRunsMax * ExtentRunSize
	// ErrorMessageMax bounds the text of an error reply.
	ErrorMessageMax = 1024
	// NameBytesMax bounds the node or client name in a Hello.
	NameBytesMax = 255
)

// Fixed body sizes.
const (
	ReadRequestSize    = 28 // vol, block, epoch u64; blocks u32
	WriteRequestSize   = 32 // vol, block, epoch, seq u64; then data
	ZeroRequestSize    = 40 // vol, block, blocks, epoch, seq u64
	ExtentsRequestSize = 32 // vol, block, blocks, epoch u64
	ChangedRequestSize = 40 // vol, block, blocks, from, to u64
	// fixedBodyMax is the largest fixed request body (the request buffers
	// of the client and the server hold ZeroRequestSize bytes).
	fixedBodyMax  = ZeroRequestSize
	ExtentRunSize = 16 // start u64; count u64 with bit 63 = allocated
	HelloSizeMin  = 17 // features u64, request bytes max u32, in-flight max u32, name length u8; then name
)

// The request buffers hold every fixed body (a compile error otherwise).
const _ = uint(fixedBodyMax-ChangedRequestSize) + uint(fixedBodyMax-ExtentsRequestSize) + uint(fixedBodyMax-ReadRequestSize) + uint(fixedBodyMax-WriteRequestSize)

// Op is a frame's operation. A reply carries the op of its request.
type Op uint8

// Ops. Numbers are never reused; the reserved ones are answered with
// CodeUnsupported until they are implemented.
const (
	OpHello   Op = 1 // handshake: must be the first frame on a connection, both ways
	OpRead    Op = 2 // ReadRequest → blocks×BlockSize bytes of data
	OpWrite   Op = 3 // WriteRequest + data, FlagSync = FUA → empty
	OpZero    Op = 4 // ZeroRequest, FlagSync → empty (TRIM and WRITE ZEROES are Zero at the store)
	OpSync    Op = 5 // empty → empty
	OpExtents Op = 6 // ExtentsRequest → runs, FlagMore if the range is not covered
	OpChanged Op = 7 // ChangedRequest → runs (bit 63: changed), FlagMore as for OpExtents

	// Replica catch-up (versions.go); served by a Backend that implements Versioner.
	OpVersionsSince Op = 16 // VersionsRequest → next block u64 + version records, FlagMore if the range is not covered
	OpApplyVersions Op = 22 // ApplyRequest + version records, FlagSync → empty

	// Reserved for what comes next (not implemented; CodeUnsupported).
	OpSetRetained Op = 17 // the retained snapshot epochs of a volume, for GC of unreachable versions
	OpHold        Op = 18 // snapshot hold: pin an epoch of a volume while a snapshot is sealed
	OpRelease     Op = 19 // snapshot release: drop a pin taken by OpHold
	OpFence       Op = 20 // fence generation: refuse writes of a volume with a lower attachment generation
	OpDropVolume  Op = 21 // delete every version of a volume

	// A snapshot coordinator's calls to a target (snapshot.go); served by
	// nodes with ServerOptions.Snapshot.
	OpTargetHold    Op = 32 // TargetRequest → empty: switch the volumes to the epoch and hold their acks
	OpTargetRelease Op = 33 // TargetRequest → ReleaseReply: let the held acks go, report each hold
	OpTargetDrained Op = 34 // TargetRequest → 1 byte: nothing stamped ≤ the epoch in flight
)

func (o Op) String() string {
	switch o {
	case OpHello:
		return "hello"
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpZero:
		return "zero"
	case OpSync:
		return "sync"
	case OpExtents:
		return "extents"
	case OpChanged:
		return "changed"
	case OpVersionsSince:
		return "versions-since"
	case OpSetRetained:
		return "set-retained"
	case OpHold:
		return "hold"
	case OpRelease:
		return "release"
	case OpFence:
		return "fence"
	case OpDropVolume:
		return "drop-volume"
	case OpApplyVersions:
		return "apply-versions"
	case OpTargetHold:
		return "target-hold"
	case OpTargetRelease:
		return "target-release"
	case OpTargetDrained:
		return "target-drained"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Flags modify a frame.
type Flags uint16

const (
	FlagReply Flags = 1 << 0 // the frame is a reply
	FlagSync  Flags = 1 << 1 // Write, Zero: durable before the reply (FUA)
	FlagMore  Flags = 1 << 2 // Extents, Changed, VersionsSince reply: the answer stops before the end of the range

	flagsKnown = FlagReply | FlagSync | FlagMore
)

// requestFlags are the flags each op accepts in a request (FlagReply aside).
func requestFlags(op Op) Flags {
	switch op {
	case OpWrite, OpZero, OpApplyVersions:
		return FlagSync
	}
	return 0
}

// Code is a reply's status: 0 for success, else the class of the error. The
// client turns it back into an error that matches the same sentinels as the
// server's error did (see codeOf and Code.Err).
type Code uint16

const (
	CodeOK          Code = 0
	CodeInvalid     Code = 1  // store.ErrInvalid
	CodeIO          Code = 2  // store.ErrIO
	CodeCorrupt     Code = 3  // store.ErrIO + store.ErrCorrupt
	CodeFailed      Code = 4  // store.ErrIO + store.ErrFailed
	CodeLimit       Code = 5  // store.ErrLimit
	CodeClosed      Code = 6  // store.ErrClosed (the node's store is closed)
	CodeNoSpace     Code = 7  // target.ErrNoSpace + store.ErrIO
	CodeCanceled    Code = 8  // the node gave up on the request (shutting down)
	CodeUnsupported Code = 9  // ErrUnsupported: op not implemented by this node
	CodeProtocol    Code = 10 // ErrProtocol: malformed frame
	CodeVersion     Code = 11 // ErrVersion: the node speaks another version
	CodeChecksum    Code = 12 // ErrChecksum: a payload failed its checksum
	CodeFenced      Code = 13 // reserved for OpFence: stale attachment generation
)

// Errors of this package. Each also matches the target error the volume
// layer would classify it as.
var (
	// ErrProtocol: a frame does not parse or breaks the protocol.
	ErrProtocol = fmt.Errorf("wire: protocol error: %w", target.ErrIO)
	// ErrVersion: the peer speaks another protocol version.
	ErrVersion = fmt.Errorf("wire: protocol version mismatch: %w", ErrProtocol)
	// ErrChecksum: a header or payload checksum does not match.
	ErrChecksum = fmt.Errorf("wire: checksum mismatch: %w", target.ErrIO)
	// ErrUnsupported: the node does not implement the op.
	ErrUnsupported = fmt.Errorf("wire: operation not supported: %w", target.ErrIO)
	// ErrFenced: reserved for OpFence.
	ErrFenced = fmt.Errorf("wire: stale attachment generation: %w", target.ErrIO)
	// ErrDisconnected: the connection broke with the call in flight; the
	// call may or may not have taken effect on the node.
	ErrDisconnected = fmt.Errorf("wire: connection lost: %w", target.ErrIO)
	// ErrUnavailable: the node could not be reached (dial or handshake
	// failed, or the client is backing off after such a failure).
	ErrUnavailable = fmt.Errorf("wire: node unavailable: %w", target.ErrIO)
	// ErrClosed: the Client or Server was closed.
	ErrClosed = fmt.Errorf("wire: closed: %w", target.ErrClosed)
	// ErrCanceled: the node abandoned the request (it is shutting down).
	ErrCanceled = fmt.Errorf("wire: canceled by the node: %w", target.ErrIO)
)

// errOther is what an unknown code from a newer peer maps to.
var errOther = errors.New("wire: unknown error code")
