package iscsi

import (
	"cairn/target/reservation"
)

// Persistent reservations belong to the volume (package reservation: the
// SPC-4 state machine, its store and the check every front end's requests
// pass). This file keeps the SCSI side: which commands conflict, and the
// sense data and unit attentions reservation outcomes map to.

// Operation codes of reservations.
const (
	scsiReserve6  = 0x16
	scsiRelease6  = 0x17
	scsiReserve10 = 0x56
	scsiRelease10 = 0x57
	scsiPRIn      = 0x5e
	scsiPROut     = 0x5f
)

// Bounds of the reservation state of one logical unit.
const (
	// RegistrationsMax bounds the registrations of one logical unit; a
	// REGISTER past it gets INSUFFICIENT REGISTRATION RESOURCES.
	RegistrationsMax = reservation.RegistrationsMax
	// ReservationStateBytesMax bounds an encoded state.
	ReservationStateBytesMax = reservation.StateBytesMax
)

// commandAccess classifies a CDB: how it fares against a persistent
// reservation it does not hold (SPC-4 §5.9.1 table 66, SBC-3 §4.17
// table 13). Unknown operation codes are allowed: they
// fail as INVALID COMMAND OPERATION CODE.
func commandAccess(cdb []byte) reservation.Access {
	switch cdb[0] {
	case scsiRead6, scsiRead10, scsiRead12, scsiRead16, scsiVerify10, scsiVerify12, scsiVerify16,
		scsiPrefetch10, scsiPrefetch16, scsiModeSense6, scsiModeSense10, scsiMaintenanceIn:
		return reservation.AccessRead
	case scsiServiceActionIn:
		if cdb[1]&0x1f == saGetLBAStatus {
			return reservation.AccessRead
		}
		return reservation.AccessAllowed
	case scsiWrite6, scsiWrite10, scsiWrite12, scsiWrite16, scsiWriteVerify10, scsiWriteVerify12,
		scsiWriteVerify16, scsiWriteSame10, scsiWriteSame16, scsiUnmap, scsiCompareAndWrite,
		scsiSyncCache10, scsiSyncCache16, scsiModeSelect6, scsiModeSelect10,
		scsiReserve6, scsiRelease6, scsiReserve10, scsiRelease10:
		return reservation.AccessWrite
	case scsiStartStopUnit:
		if len(cdb) > 4 && cdb[4]&0xf1 == 0x01 { // START, POWER CONDITION 0
			return reservation.AccessAllowed
		}
		return reservation.AccessWrite
	}
	return reservation.AccessAllowed
}

// uaFor is the unit attention of a reservation change.
func uaFor(c reservation.Cause) sense {
	switch c {
	case reservation.RegistrationsPreempted:
		return uaRegistrationsPreempted
	case reservation.ReservationsPreempted:
		return uaReservationsPreempted
	}
	return uaReservationsReleased
}
