package target

import (
	"context"
	"errors"
	"fmt"
)

// Sentinel errors a Device returns, wrapped with context. Front ends classify
// them with errors.Is; an error matching none of them is an I/O error.
var (
	// ErrOutOfRange: the request reaches past the end of the device.
	ErrOutOfRange = errors.New("target: request out of range")
	// ErrInvalid: the request is malformed (misaligned where alignment is
	// required, negative length, unknown flag).
	ErrInvalid = errors.New("target: invalid request")
	// ErrReadOnly: a write-class request on a read-only device.
	ErrReadOnly = errors.New("target: device is read-only")
	// ErrNoSpace: the backing storage is full.
	ErrNoSpace = errors.New("target: no space left")
	// ErrIO: the backing storage failed; data may not have been written.
	ErrIO = errors.New("target: I/O error")
	// ErrClosed: the device was closed or deleted under the request.
	ErrClosed = errors.New("target: device closed")
	// ErrReservationConflict: the requester is excluded by a reservation
	// of the device (SCSI persistent reservations, kept by the device for
	// every front end). iSCSI answers RESERVATION CONFLICT, NBD NBD_EPERM.
	ErrReservationConflict = errors.New("target: reservation conflict")
)

// WriteFlags modify a write-class request.
type WriteFlags uint32

const (
	// FUA: the data of this request is on stable storage (on every replica)
	// before the call returns.
	FUA WriteFlags = 1 << iota
)

// ZeroFlags modify Zero.
type ZeroFlags uint32

const (
	// ZeroFUA: as FUA for WriteAt.
	ZeroFUA ZeroFlags = 1 << iota
	// ZeroDiscard: the range need not stay allocated (TRIM/UNMAP). Reads of
	// the range return zeros afterwards either way (LBPRZ).
	ZeroDiscard
	// ZeroNoHole: the range must stay allocated (NBD NO_HOLE, SCSI WRITE SAME
	// without UNMAP). A device that cannot keep zeros allocated may still
	// deallocate; reads return zeros either way.
	ZeroNoHole
)

// Info describes a device. It may change between calls (a resize grows Size).
type Info struct {
	Size         int64 // bytes; a multiple of BlockSize
	BlockSize    int   // bytes of the device's native block (4096)
	ReadOnly     bool
	CanMultiConn bool // consistent across connections: a flush on one covers writes acknowledged on any
}

// Device is a block device a front end exports. Offsets and lengths are in
// bytes; a request must lie within [0, Info().Size). Sub-block requests are
// allowed: the device does read-modify-write and serializes it per block.
type Device interface {
	Info() Info
	// ReadAt fills p from offset off. It must not retain p.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at offset off. It must not retain p after it returns.
	WriteAt(ctx context.Context, p []byte, off int64, flags WriteFlags) error
	// Zero makes [off, off+n) read as zeros.
	Zero(ctx context.Context, off, n int64, flags ZeroFlags) error
	// Flush makes every write acknowledged before the call durable.
	Flush(ctx context.Context) error
}

// ErrMiscompare: a CompareAndWrite found other data than expected and wrote
// nothing. The error is a *MiscompareError carrying where.
var ErrMiscompare = errors.New("target: miscompare")

// MiscompareError is the error of a CompareAndWrite whose compare failed.
// It matches ErrMiscompare.
type MiscompareError struct {
	// Offset is the first differing byte, from the start of the request.
	Offset int64
}

func (e *MiscompareError) Error() string {
	return fmt.Sprintf("target: miscompare at byte %d of the request", e.Offset)
}

// Unwrap makes a MiscompareError match ErrMiscompare.
func (e *MiscompareError) Unwrap() error { return ErrMiscompare }

// BatchWrite is one write of a BatchWriter's batch; Err is its result.
type BatchWrite struct {
	P     []byte
	Off   int64
	Flags WriteFlags
	Err   error
}

// BatchWriter is implemented by devices that take several writes at once
// (a front end that found them waiting together on one connection), so
// that the device can store them together and the front end answer them
// together. Each write is one request, as if WriteAt had been called for
// each concurrently: they may complete in any order, and each gets its
// own result in Err. WriteBatch must not retain the slices after it
// returns.
//
// BatchWrites reports whether WriteBatch stores a batch together now (it
// may change, as a volume's placement does): when it does not, WriteBatch
// does the writes one after the other, and a front end must not batch,
// since writes that each wait on the network would wait on each other.
// When it does, the batch's writes wait together (a volume's replicated
// writes go out to each node at once: see volume.Volume.WriteBatch).
type BatchWriter interface {
	WriteBatch(ctx context.Context, ws []BatchWrite)
	BatchWrites() bool
}

// Comparer is implemented by devices that compare and write atomically
// (SCSI COMPARE AND WRITE, the ATS lock of VMware among its users).
type Comparer interface {
	// CompareAndWrite compares the len(cmp) bytes at off with cmp and, if
	// they are equal, writes data (of the same length) there. Nothing else
	// that changes those bytes, from any front end or connection, lands
	// between the compare and the write. On a difference it writes nothing
	// and returns a *MiscompareError. It must not retain cmp or data.
	CompareAndWrite(ctx context.Context, cmp, data []byte, off int64, flags WriteFlags) error
}

// Extent is a run of bytes with the same allocation state.
type Extent struct {
	Length int64
	Hole   bool // not allocated: reads return zeros, uses no space
	Zero   bool // reads return zeros (true for every hole)
}

// Mapper is implemented by devices that know their allocation map.
type Mapper interface {
	// Extents reports the allocation state of [off, off+n) as consecutive
	// extents starting at off, calling fn for each until fn returns false or
	// the range is covered. It may stop early after at least one extent.
	Extents(ctx context.Context, off, n int64, fn func(Extent) bool) error
}

// CheckRange returns ErrOutOfRange (wrapped) if [off, off+n) is not within a
// device of size bytes, and ErrInvalid for a negative offset or length.
func CheckRange(off, n, size int64) error {
	switch {
	case off < 0 || n < 0:
		return ErrInvalid
	case off > size || n > size-off:
		return ErrOutOfRange
	}
	return nil
}
