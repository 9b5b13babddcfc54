package iscsi

import (
	"context"
	"errors"
	"fmt"

	"cairn/target"
	"cairn/target/reservation"
)

// SCSI status codes (SAM-5).
const (
	statusGood           = 0x00
	statusCheckCondition = 0x02
	statusBusy           = 0x08
	statusResConflict    = 0x18
	statusTaskSetFull    = 0x28
)

// Sense keys (SPC-4 §4.5.6).
const (
	keyNoSense        = 0x0
	keyNotReady       = 0x2
	keyMediumError    = 0x3
	keyHardwareError  = 0x4
	keyIllegalRequest = 0x5
	keyUnitAttention  = 0x6
	keyDataProtect    = 0x7
	keyAbortedCommand = 0xb
	keyMiscompare     = 0xe
)

// sense is one condition: key with additional sense code and qualifier.
type sense struct {
	key, asc, ascq byte
	// info, when infoValid, fills the INFORMATION field (the miscompare
	// offset of COMPARE AND WRITE and VERIFY).
	info      uint32
	infoValid bool
}

// Error makes a sense usable as the error of a command handler: a handler
// returns a sense to end its command with CHECK CONDITION.
func (s sense) Error() string {
	return fmt.Sprintf("iscsi: check condition: key %#x asc/ascq %02x/%02x", s.key, s.asc, s.ascq)
}

// Conditions the target reports.
var (
	senseInvalidOpcode      = sense{key: keyIllegalRequest, asc: 0x20}
	senseLBAOutOfRange      = sense{key: keyIllegalRequest, asc: 0x21}
	senseInvalidFieldCDB    = sense{key: keyIllegalRequest, asc: 0x24}
	senseLUNNotSupported    = sense{key: keyIllegalRequest, asc: 0x25}
	senseInvalidFieldParam  = sense{key: keyIllegalRequest, asc: 0x26}
	senseParamListLength    = sense{key: keyIllegalRequest, asc: 0x1a}
	senseSavingNotSupported = sense{key: keyIllegalRequest, asc: 0x39}
	senseInvalidFieldIU     = sense{key: keyIllegalRequest, asc: 0x0e, ascq: 0x03}
	senseWriteProtected     = sense{key: keyDataProtect, asc: 0x27}
	senseSpaceAllocFailed   = sense{key: keyDataProtect, asc: 0x27, ascq: 0x07}
	senseReadError          = sense{key: keyMediumError, asc: 0x11}
	senseWriteError         = sense{key: keyMediumError, asc: 0x0c}
	senseNotReady           = sense{key: keyNotReady, asc: 0x04}
	senseMiscompare         = sense{key: keyMiscompare, asc: 0x1d}
	senseDataPhaseError     = sense{key: keyAbortedCommand, asc: 0x4b}
	senseOverlapped         = sense{key: keyAbortedCommand, asc: 0x4e}
	senseTaskAborted        = sense{key: keyAbortedCommand, asc: 0x00, ascq: 0x00}
	senseNoSense            = sense{key: keyNoSense}

	senseInvalidRelease           = sense{key: keyIllegalRequest, asc: 0x26, ascq: 0x04} // INVALID RELEASE OF PERSISTENT RESERVATION
	senseInsufficientRegistration = sense{key: keyIllegalRequest, asc: 0x55, ascq: 0x04}
	senseInternalTargetFailure    = sense{key: keyHardwareError, asc: 0x44}

	// Unit attentions.
	uaPowerOnReset     = sense{key: keyUnitAttention, asc: 0x29}
	uaBusReset         = sense{key: keyUnitAttention, asc: 0x29, ascq: 0x02}
	uaLUNReset         = sense{key: keyUnitAttention, asc: 0x29, ascq: 0x03}
	uaCapacityChanged  = sense{key: keyUnitAttention, asc: 0x2a, ascq: 0x09}
	uaModeParamChanged = sense{key: keyUnitAttention, asc: 0x2a, ascq: 0x01}

	uaReservationsPreempted  = sense{key: keyUnitAttention, asc: 0x2a, ascq: 0x03}
	uaReservationsReleased   = sense{key: keyUnitAttention, asc: 0x2a, ascq: 0x04}
	uaRegistrationsPreempted = sense{key: keyUnitAttention, asc: 0x2a, ascq: 0x05}
)

// senseFor is the one mapping from errors to SCSI sense data. A sense error
// maps to itself; device errors map by their target sentinel; write says
// whether the failed command wrote (MEDIUM ERROR: WRITE ERROR rather than
// UNRECOVERED READ ERROR). Errors matching no sentinel are I/O errors, as
// target.Device documents.
func senseFor(err error, write bool) sense {
	var s sense
	switch {
	case errors.As(err, &s):
		return s
	case errors.Is(err, ErrReservationStore):
		return senseInternalTargetFailure
	case errors.Is(err, reservation.ErrInvalidField):
		return senseInvalidFieldCDB
	case errors.Is(err, reservation.ErrInvalidParam):
		return senseInvalidFieldParam
	case errors.Is(err, reservation.ErrParamListLength):
		return senseParamListLength
	case errors.Is(err, reservation.ErrNoResources):
		return senseInsufficientRegistration
	case errors.Is(err, reservation.ErrInvalidRelease):
		return senseInvalidRelease
	case errors.Is(err, target.ErrOutOfRange):
		return senseLBAOutOfRange
	case errors.Is(err, target.ErrInvalid):
		return senseInvalidFieldCDB
	case errors.Is(err, target.ErrReadOnly):
		return senseWriteProtected
	case errors.Is(err, target.ErrNoSpace):
		return senseSpaceAllocFailed
	case errors.Is(err, target.ErrClosed):
		return senseNotReady
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return senseTaskAborted
	case write:
		return senseWriteError
	}
	return senseReadError
}

// errReservationConflict ends a command with RESERVATION CONFLICT status.
var errReservationConflict = fmt.Errorf("iscsi: %w", target.ErrReservationConflict)

// statusFor maps a command handler's error to its status and sense:
// RESERVATION CONFLICT has no sense data, everything else is CHECK
// CONDITION with the sense senseFor gives.
func statusFor(err error, write bool) (byte, sense) {
	if errors.Is(err, target.ErrReservationConflict) {
		return statusResConflict, sense{}
	}
	return statusCheckCondition, senseFor(err, write)
}

// fixedSenseBytes is the length of fixed-format sense data we send.
const fixedSenseBytes = 18

// appendFixed encodes s as fixed-format sense data (SPC-4 §4.5.3).
func (s sense) appendFixed(dst []byte) []byte {
	var b [fixedSenseBytes]byte
	b[0] = 0x70 // current error, fixed format
	if s.infoValid {
		b[0] |= 0x80
		b[3], b[4], b[5], b[6] = byte(s.info>>24), byte(s.info>>16), byte(s.info>>8), byte(s.info)
	}
	b[2] = s.key
	b[7] = fixedSenseBytes - 8
	b[12], b[13] = s.asc, s.ascq
	return append(dst, b[:]...)
}
