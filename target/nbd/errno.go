package nbd

import (
	"context"
	"errors"

	"cairn/target"
)

// Errno maps the error of a cmd request to the protocol's error value. It is
// the only place that does; nil maps to 0.
//
// Out-of-range requests follow proto.md's guidance: writes (CmdWrite,
// CmdWriteZeroes) past the end get ENOSPC, every other command EINVAL. A
// request a reservation of the device refuses gets EPERM.
func Errno(err error, cmd uint16) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, target.ErrOutOfRange):
		if cmd == CmdWrite || cmd == CmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	case errors.Is(err, target.ErrInvalid):
		return EINVAL
	case errors.Is(err, target.ErrReadOnly), errors.Is(err, target.ErrReservationConflict):
		// A reservation fences this connection (it is a nexus that cannot
		// register): "operation not permitted", as for a read-only export.
		return EPERM
	case errors.Is(err, target.ErrNoSpace):
		return ENOSPC
	case errors.Is(err, target.ErrClosed), errors.Is(err, context.Canceled):
		// The export went away or the server is shutting down: the client
		// must soft-disconnect.
		return ESHUTDOWN
	case errors.Is(err, errOverflow):
		return EOVERFLOW
	}
	return EIO
}

// errOverflow marks a request whose payload exceeds what this server handles
// in one request.
var errOverflow = errors.New("nbd: request too large")
