package wire

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"cairn/backend/store"
	"cairn/target"
)

// codeOf classifies an error a backend returned, for the reply. It is the
// only place that maps errors to codes; Code.sentinels is its inverse.
func codeOf(err error) Code {
	switch {
	case err == nil:
		return CodeOK
	case errors.Is(err, store.ErrFailed):
		return CodeFailed
	case errors.Is(err, store.ErrCorrupt):
		return CodeCorrupt
	case errors.Is(err, target.ErrNoSpace), errors.Is(err, store.ErrNoSpace), errors.Is(err, syscall.ENOSPC):
		return CodeNoSpace
	case errors.Is(err, store.ErrLimit):
		return CodeLimit
	case errors.Is(err, store.ErrInvalid), errors.Is(err, target.ErrInvalid), errors.Is(err, target.ErrOutOfRange):
		return CodeInvalid
	case errors.Is(err, store.ErrClosed), errors.Is(err, target.ErrClosed):
		return CodeClosed
	case errors.Is(err, ErrUnsupported):
		return CodeUnsupported
	case errors.Is(err, ErrVersion):
		return CodeVersion
	case errors.Is(err, ErrChecksum):
		return CodeChecksum
	case errors.Is(err, ErrProtocol):
		return CodeProtocol
	case errors.Is(err, ErrFenced):
		return CodeFenced
	case errors.Is(err, ErrCanceled), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return CodeCanceled
	}
	return CodeIO
}

// Sentinel sets per code, so that sentinels allocates nothing.
var (
	sentInvalid     = []error{store.ErrInvalid}
	sentIO          = []error{store.ErrIO}
	sentCorrupt     = []error{store.ErrIO, store.ErrCorrupt}
	sentFailed      = []error{store.ErrIO, store.ErrFailed}
	sentLimit       = []error{store.ErrLimit}
	sentClosed      = []error{store.ErrClosed}
	sentNoSpace     = []error{target.ErrNoSpace, store.ErrNoSpace, store.ErrIO}
	sentCanceled    = []error{ErrCanceled}
	sentUnsupported = []error{ErrUnsupported}
	sentProtocol    = []error{ErrProtocol}
	sentVersion     = []error{ErrVersion}
	sentChecksum    = []error{ErrChecksum}
	sentFenced      = []error{ErrFenced}
	sentOther       = []error{store.ErrIO, errOther}
)

// sentinels returns the errors a reply with code c matches.
func (c Code) sentinels() []error {
	switch c {
	case CodeInvalid:
		return sentInvalid
	case CodeIO:
		return sentIO
	case CodeCorrupt:
		return sentCorrupt
	case CodeFailed:
		return sentFailed
	case CodeLimit:
		return sentLimit
	case CodeClosed:
		return sentClosed
	case CodeNoSpace:
		return sentNoSpace
	case CodeCanceled:
		return sentCanceled
	case CodeUnsupported:
		return sentUnsupported
	case CodeProtocol:
		return sentProtocol
	case CodeVersion:
		return sentVersion
	case CodeChecksum:
		return sentChecksum
	case CodeFenced:
		return sentFenced
	}
	return sentOther
}

// remoteError is the error of a reply with a non-zero code: the node's
// message, matching the sentinels of its code under errors.Is.
type remoteError struct {
	op   Op
	code Code
	msg  string
}

func (e *remoteError) Error() string {
	return fmt.Sprintf("node replied to %s with code %d: %s", e.op, e.code, e.msg)
}

func (e *remoteError) Unwrap() []error { return e.code.sentinels() }

// errorMessage bounds err's text for an error reply.
func errorMessage(err error) string {
	msg := err.Error()
	if len(msg) > ErrorMessageMax {
		msg = msg[:ErrorMessageMax]
	}
	return msg
}
