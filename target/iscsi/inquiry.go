package iscsi

import (
	"encoding/binary"

	"cairn/target"
	"cairn/target/reservation"
)

// Version descriptors (SPC-4 Table 21): SAM-5, iSCSI, SPC-4, SBC-3.
var versionDescriptors = []uint16{0x00a0, 0x0960, 0x0460, 0x04c0}

// inquiry answers INQUIRY (SPC-4 §6.6): standard data or a VPD page.
// absent is true for a LUN that does not exist (peripheral qualifier 3).
func (u *lun) inquiry(cdb []byte, r *scsiResult, absent bool) error {
	evpd, page, alloc := cdb[1]&0x01 != 0, cdb[2], int(be16(cdb[3:]))
	if cdb[1]&0x02 != 0 { // CMDDT (obsolete)
		return senseInvalidFieldCDB
	}
	if !evpd {
		if page != 0 {
			return senseInvalidFieldCDB
		}
		b := make([]byte, 66+2*len(versionDescriptors))
		b[0] = 0x00 // connected, direct access block device
		if absent {
			b[0] = 0x7f
		}
		b[2] = 0x06 // SPC-4
		b[3] = 0x12 // HISUP, response data format 2
		b[4] = byte(len(b) - 5)
		b[7] = 0x02 // CMDQUE
		copy(b[8:16], vendorID)
		copy(b[16:32], productID)
		copy(b[32:36], productRevision)
		for i, v := range versionDescriptors {
			binary.BigEndian.PutUint16(b[58+2*i:], v)
		}
		r.reply(b, alloc)
		return nil
	}
	if absent {
		return senseLUNNotSupported
	}
	var b []byte
	switch page {
	case 0x00:
		b = []byte{0, 0x00, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}
	case 0x80:
		b = append([]byte{0, 0x80, 0, byte(len(u.serial))}, u.serial...)
	case 0x83:
		b = u.deviceIdentification()
	case 0xb0:
		b = u.blockLimits()
	case 0xb1:
		b = make([]byte, 64)
		b[1], b[3] = 0xb1, 0x3c
		b[5] = 0x01 // non-rotating medium
	case 0xb2:
		b = make([]byte, 8)
		b[1], b[3] = 0xb2, 4
		b[5] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
		b[6] = 0x02                      // thin provisioned
	default:
		return senseInvalidFieldCDB
	}
	r.reply(b, alloc)
	return nil
}

// deviceIdentification is VPD page 0x83: an NAA designator and a T10
// vendor ID designator for the logical unit, both stable per target name,
// and the target's SCSI name string.
func (u *lun) deviceIdentification() []byte {
	b := []byte{0, 0x83, 0, 0}
	// NAA, binary, associated with the logical unit.
	b = append(b, 0x01, 0x03, 0, byte(len(u.naa)))
	b = append(b, u.naa[:]...)
	// T10 vendor ID, ASCII: vendor + serial.
	t10 := vendorID + u.serial
	b = append(b, 0x02, 0x01, 0, byte(len(t10)))
	b = append(b, t10...)
	// SCSI name string (UTF-8) of the target device, iSCSI, padded to 4.
	name := []byte(u.name)
	name = append(name, 0)
	for len(name)%4 != 0 {
		name = append(name, 0)
	}
	if len(name) <= 252 {
		b = append(b, protocolIdentifierSCSI<<4|0x03, 0x80|0x20|0x08, 0, byte(len(name)))
		b = append(b, name...)
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)-4))
	return b
}

// blockLimits is VPD page 0xB0 with the limits this package enforces.
func (u *lun) blockLimits() []byte {
	b := make([]byte, 64)
	b[1], b[3] = 0xb0, 0x3c
	b[4] = 0x01 // WSNZ: WRITE SAME of 0 blocks is not supported
	if u.comparer != nil {
		b[5] = compareAndWriteMax
	}
	gran := uint16(1) << u.physExp
	binary.BigEndian.PutUint16(b[6:], gran)
	binary.BigEndian.PutUint32(b[8:], uint32(u.xferMax/u.blockSize))
	binary.BigEndian.PutUint32(b[12:], uint32(min(optimalTransferBytes, u.xferMax)/u.blockSize))
	binary.BigEndian.PutUint32(b[20:], unmapBlocksMax)
	binary.BigEndian.PutUint32(b[24:], unmapDescriptorsMax)
	unmapGran := uint32(max(u.dev.Info().BlockSize/u.blockSize, 1))
	binary.BigEndian.PutUint32(b[28:], unmapGran)
	binary.BigEndian.PutUint64(b[36:], unmapBlocksMax)
	return b
}

// Mode pages (SBC-3 §6.4).
const (
	pageRWErrorRecovery = 0x01
	pageCaching         = 0x08
	pageControl         = 0x0a
	pageInfoExceptions  = 0x1c
	pageAll             = 0x3f
)

var modePageOrder = []byte{pageRWErrorRecovery, pageCaching, pageControl, pageInfoExceptions}

// modePage returns page in the given page control: 0 current, 1
// changeable, 2 default.
func (u *lun) modePage(page byte, pc byte) []byte {
	switch page {
	case pageRWErrorRecovery:
		b := make([]byte, 12)
		b[0], b[1] = pageRWErrorRecovery, 10
		if pc != 1 {
			b[2] = 0xc0 // AWRE, ARRE
		}
		return b
	case pageCaching:
		b := make([]byte, 20)
		b[0], b[1] = pageCaching, 18
		switch pc {
		case 0:
			if u.wce.Load() {
				b[2] = 0x04
			}
		case 1:
			b[2] = 0x04 // WCE is changeable
		case 2:
			b[2] = 0x04
		}
		return b
	case pageControl:
		b := make([]byte, 12)
		b[0], b[1] = pageControl, 10
		if pc != 1 {
			b[3] = 0x10                               // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
			binary.BigEndian.PutUint16(b[8:], 0xffff) // busy timeout: unlimited
		}
		return b
	case pageInfoExceptions:
		b := make([]byte, 12)
		b[0], b[1] = pageInfoExceptions, 10
		return b
	}
	return nil
}

// modeSense answers MODE SENSE (6) and (10) (SPC-4 §6.11, §6.12).
func (u *lun) modeSense(info target.Info, cdb []byte, r *scsiResult) error {
	ten := cdb[0] == scsiModeSense10
	dbd := cdb[1]&0x08 != 0
	pc, page, sub := cdb[2]>>6, cdb[2]&0x3f, cdb[3]
	alloc := int(cdb[4])
	if ten {
		alloc = int(be16(cdb[7:]))
	}
	if pc == 3 {
		return senseSavingNotSupported
	}
	var pages []byte
	switch {
	case page == pageAll && (sub == 0 || sub == 0xff):
		for _, p := range modePageOrder {
			pages = append(pages, u.modePage(p, pc)...)
		}
	case sub != 0:
		return senseInvalidFieldCDB
	default:
		pages = u.modePage(page, pc)
		if pages == nil {
			return senseInvalidFieldCDB
		}
	}
	var desc []byte
	if !dbd {
		desc = make([]byte, 8)
		blocks := uint64(info.Size) / uint64(u.blockSize)
		if blocks > 0xffffff {
			blocks = 0xffffff
		}
		desc[1], desc[2], desc[3] = byte(blocks>>16), byte(blocks>>8), byte(blocks)
		binary.BigEndian.PutUint32(desc[4:], uint32(u.blockSize))
	}
	devSpecific := byte(0x10) // DPOFUA
	if info.ReadOnly {
		devSpecific |= 0x80
	}
	var b []byte
	if ten {
		b = make([]byte, 8, 8+len(desc)+len(pages))
		b[3] = devSpecific
		binary.BigEndian.PutUint16(b[6:], uint16(len(desc)))
		b = append(append(b, desc...), pages...)
		binary.BigEndian.PutUint16(b[0:], uint16(len(b)-2))
	} else {
		b = make([]byte, 4, 4+len(desc)+len(pages))
		b[2] = devSpecific
		b[3] = byte(len(desc))
		b = append(append(b, desc...), pages...)
		b[0] = byte(min(len(b)-1, 255))
	}
	r.reply(b, alloc)
	return nil
}

// modeSelect applies MODE SELECT (6) and (10): only the caching page's WCE
// can change; any other page must equal its current value.
func (u *lun) modeSelect(from *nexus, cdb []byte, c *scsiCmd, r *scsiResult) error {
	ten := cdb[0] == scsiModeSelect10
	if cdb[1]&0x01 != 0 { // SP: cannot save
		return senseInvalidFieldCDB
	}
	if cdb[1]&0x10 == 0 { // PF: only SPC page format
		return senseInvalidFieldCDB
	}
	plen := int(cdb[4])
	if ten {
		plen = int(be16(cdb[7:]))
	}
	r.spdtl = plen
	if plen == 0 {
		return nil
	}
	if len(c.data) < plen {
		return senseInvalidFieldIU
	}
	p := c.data[:plen]
	var descLen int
	if ten {
		if len(p) < 8 {
			return senseParamListLength
		}
		descLen = int(be16(p[6:]))
		p = p[8:]
	} else {
		if len(p) < 4 {
			return senseParamListLength
		}
		descLen = int(p[3])
		p = p[4:]
	}
	if descLen > len(p) {
		return senseParamListLength
	}
	if descLen >= 8 && be32(p[4:])&0xffffff != uint32(u.blockSize) {
		return senseInvalidFieldParam
	}
	p = p[descLen:]
	newWCE := u.wce.Load()
	for len(p) > 0 {
		if len(p) < 2 || p[0]&0x40 != 0 { // SPF subpages: none supported
			return senseInvalidFieldParam
		}
		code, n := p[0]&0x3f, int(p[1])+2
		if n > len(p) {
			return senseParamListLength
		}
		cur, mask := u.modePage(code, 0), u.modePage(code, 1)
		if cur == nil || len(cur) != n {
			return senseInvalidFieldParam
		}
		for i := 2; i < n; i++ {
			if (p[i]^cur[i])&^mask[i] != 0 {
				return senseInvalidFieldParam
			}
		}
		if code == pageCaching {
			newWCE = p[2]&0x04 != 0
		}
		p = p[n:]
	}
	if newWCE != u.wce.Load() {
		u.wce.Store(newWCE)
		u.modeChanged(from)
	}
	return nil
}

// modeChanged raises MODE PARAMETERS CHANGED on every other I_T nexus.
func (u *lun) modeChanged(except *nexus) {
	for _, n := range u.others(except) {
		n.addUA(uaModeParamChanged)
	}
}

// opcode is one entry of REPORT SUPPORTED OPERATION CODES: the CDB usage
// mask (SPC-4 §6.35.3), whose length is the CDB length.
type opcode struct {
	sa    uint16
	hasSA bool
	usage []byte
}

var supportedOpcodes = []opcode{
	{usage: []byte{scsiTestUnitReady, 0, 0, 0, 0, 0}},
	{usage: []byte{scsiRequestSense, 0x01, 0, 0, 0xff, 0}},
	{usage: []byte{scsiRead6, 0x1f, 0xff, 0xff, 0xff, 0}},
	{usage: []byte{scsiWrite6, 0x1f, 0xff, 0xff, 0xff, 0}},
	{usage: []byte{scsiInquiry, 0x01, 0xff, 0xff, 0xff, 0}},
	{usage: []byte{scsiModeSelect6, 0x11, 0, 0, 0xff, 0}},
	{usage: []byte{scsiModeSense6, 0x08, 0xff, 0xff, 0xff, 0}},
	{usage: []byte{scsiStartStopUnit, 0x01, 0, 0x0f, 0xf7, 0}},
	{usage: []byte{scsiReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	{usage: []byte{scsiRead10, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{usage: []byte{scsiWrite10, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{usage: []byte{scsiWriteVerify10, 0xf2, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{usage: []byte{scsiVerify10, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{usage: []byte{scsiPrefetch10, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{usage: []byte{scsiSyncCache10, 0x06, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{usage: []byte{scsiWriteSame10, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{usage: []byte{scsiUnmap, 0x01, 0, 0, 0, 0, 0x3f, 0xff, 0xff, 0}},
	{usage: []byte{scsiModeSelect10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{usage: []byte{scsiModeSense10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0}},
	{usage: []byte{scsiRead16, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiCompareAndWrite, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x3f, 0}},
	{usage: []byte{scsiWrite16, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiWriteVerify16, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiVerify16, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiPrefetch16, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiSyncCache16, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiWriteSame16, 0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{sa: saReadCapacity16, hasSA: true, usage: []byte{scsiServiceActionIn, saReadCapacity16, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{sa: saGetLBAStatus, hasSA: true, usage: []byte{scsiServiceActionIn, saGetLBAStatus, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{usage: []byte{scsiReportLUNs, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{sa: saReportOpcodes, hasSA: true, usage: []byte{scsiMaintenanceIn, saReportOpcodes, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{usage: []byte{scsiRead12, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiWrite12, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiWriteVerify12, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiVerify12, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{usage: []byte{scsiReserve6, 0, 0, 0, 0, 0}},
	{usage: []byte{scsiRelease6, 0, 0, 0, 0, 0}},
	{usage: []byte{scsiReserve10, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	{usage: []byte{scsiRelease10, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	{sa: reservation.InReadKeys, hasSA: true, usage: []byte{scsiPRIn, reservation.InReadKeys, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{sa: reservation.InReadReservation, hasSA: true, usage: []byte{scsiPRIn, reservation.InReadReservation, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{sa: reservation.InReportCapabilities, hasSA: true, usage: []byte{scsiPRIn, reservation.InReportCapabilities, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{sa: reservation.InReadFullStatus, hasSA: true, usage: []byte{scsiPRIn, reservation.InReadFullStatus, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{sa: reservation.OutRegister, hasSA: true, usage: []byte{scsiPROut, reservation.OutRegister, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{sa: reservation.OutReserve, hasSA: true, usage: []byte{scsiPROut, reservation.OutReserve, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{sa: reservation.OutRelease, hasSA: true, usage: []byte{scsiPROut, reservation.OutRelease, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{sa: reservation.OutClear, hasSA: true, usage: []byte{scsiPROut, reservation.OutClear, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{sa: reservation.OutPreempt, hasSA: true, usage: []byte{scsiPROut, reservation.OutPreempt, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{sa: reservation.OutPreemptAbort, hasSA: true, usage: []byte{scsiPROut, reservation.OutPreemptAbort, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{sa: reservation.OutRegisterIgnore, hasSA: true, usage: []byte{scsiPROut, reservation.OutRegisterIgnore, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
}

// supports reports whether the unit runs op: COMPARE AND WRITE needs a
// device that compares and writes atomically.
func (u *lun) supports(op byte) bool {
	return op != scsiCompareAndWrite || u.comparer != nil
}

// timeoutsDescriptor is the command timeouts descriptor (no timeouts known).
var timeoutsDescriptor = []byte{0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// reportOpcodes answers REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35).
func (u *lun) reportOpcodes(cdb []byte, r *scsiResult) error {
	rctd, options := cdb[2]&0x80 != 0, cdb[2]&0x07
	reqOp, reqSA := cdb[3], uint16(be16(cdb[4:]))
	alloc := int(be32(cdb[6:]))
	var b []byte
	switch options {
	case 0:
		b = make([]byte, 4)
		for _, o := range supportedOpcodes {
			if !u.supports(o.usage[0]) {
				continue
			}
			var d [8]byte
			d[0] = o.usage[0]
			binary.BigEndian.PutUint16(d[2:], o.sa)
			if o.hasSA {
				d[5] |= 0x01 // SERVACTV
			}
			if rctd {
				d[5] |= 0x02 // CTDP
			}
			binary.BigEndian.PutUint16(d[6:], uint16(len(o.usage)))
			b = append(b, d[:]...)
			if rctd {
				b = append(b, timeoutsDescriptor...)
			}
		}
		binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	case 1, 2, 3:
		var found *opcode
		for i := range supportedOpcodes {
			o := &supportedOpcodes[i]
			if o.usage[0] != reqOp || !u.supports(reqOp) {
				continue
			}
			switch {
			case options == 1 && o.hasSA, options == 2 && !o.hasSA:
				return senseInvalidFieldCDB
			case o.hasSA && o.sa != reqSA:
				continue
			}
			found = o
			break
		}
		b = make([]byte, 4)
		if found == nil {
			b[1] = 0x01 // not supported
		} else {
			b[1] = 0x03 // supported per the standard
			binary.BigEndian.PutUint16(b[2:], uint16(len(found.usage)))
			b = append(b, found.usage...)
		}
		if rctd {
			b[1] |= 0x80
			b = append(b, timeoutsDescriptor...)
		}
	default:
		return senseInvalidFieldCDB
	}
	r.reply(b, alloc)
	return nil
}
