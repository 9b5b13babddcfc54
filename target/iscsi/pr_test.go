package iscsi

import (
	"encoding/binary"
	"testing"

	"cairn/target/reservation"
)

const prParamBytes = 24

func proutCDB(sa byte, typ reservation.Type) []byte {
	cdb := make([]byte, 10)
	cdb[0], cdb[1], cdb[2] = scsiPROut, sa, byte(typ)
	binary.BigEndian.PutUint32(cdb[5:], prParamBytes)
	return cdb
}

func proutParams(key, sark uint64, flags byte) []byte {
	p := make([]byte, prParamBytes)
	binary.BigEndian.PutUint64(p[0:], key)
	binary.BigEndian.PutUint64(p[8:], sark)
	p[20] = flags
	return p
}

// TestCommandAccess is the SCSI side of the conflict table: which commands
// an unregistered nexus may run under Write Exclusive and Exclusive Access
// (the reservation package tests the rule per access).
func TestCommandAccess(t *testing.T) {
	cdb := func(b ...byte) []byte { return append(b, make([]byte, 16-len(b))...) }
	allowedUnder := func(a reservation.Access, exclusive bool) bool {
		return a == reservation.AccessAllowed || a == reservation.AccessRead && !exclusive
	}
	for _, tc := range []struct{ exclusive bool }{{false}, {true}} {
		// Per command, for an unregistered nexus.
		for _, c := range []struct {
			cdb    []byte
			we, ea bool // allowed under Write Exclusive, Exclusive Access
		}{
			{cdb(scsiInquiry), true, true}, {cdb(scsiTestUnitReady), true, true},
			{cdb(scsiReportLUNs), true, true}, {cdb(scsiRequestSense), true, true},
			{cdb(scsiReadCapacity10), true, true}, {cdb(scsiServiceActionIn, saReadCapacity16), true, true},
			{cdb(scsiPRIn), true, true}, {cdb(scsiPROut), true, true},
			{cdb(scsiRead6), true, false}, {cdb(scsiRead16), true, false}, {cdb(scsiVerify16), true, false},
			{cdb(scsiPrefetch10), true, false}, {cdb(scsiModeSense6), true, false},
			{cdb(scsiServiceActionIn, saGetLBAStatus), true, false}, {cdb(scsiMaintenanceIn, saReportOpcodes), true, false},
			{cdb(scsiWrite6), false, false}, {cdb(scsiWriteVerify16), false, false}, {cdb(scsiWriteSame16), false, false},
			{cdb(scsiUnmap), false, false}, {cdb(scsiCompareAndWrite), false, false}, {cdb(scsiSyncCache10), false, false},
			{cdb(scsiModeSelect10), false, false}, {cdb(scsiReserve6), false, false},
			{cdb(scsiStartStopUnit, 0, 0, 0, 0x01), true, true}, {cdb(scsiStartStopUnit), false, false},
		} {
			want := c.we
			if tc.exclusive {
				want = c.ea
			}
			if got := allowedUnder(commandAccess(c.cdb), tc.exclusive); got != want {
				t.Errorf("exclusive %v op %#x %#x: allowed %v, want %v", tc.exclusive, c.cdb[0], c.cdb[1], got, want)
			}
		}
	}
}
