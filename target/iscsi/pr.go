package iscsi

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Persistent reservations (SPC-4 §5.9) as a pure state machine: prState is
// immutable once published; PERSISTENT RESERVE OUT computes a new state
// from (I_T nexus, CDB, parameter list) and the unit attentions and aborts
// it causes; PERSISTENT RESERVE IN and the conflict check only read. No
// I/O here: reservation.go loads, saves and publishes states.

// Operation codes of reservations.
const (
	scsiReserve6  = 0x16
	scsiRelease6  = 0x17
	scsiReserve10 = 0x56
	scsiRelease10 = 0x57
	scsiPRIn      = 0x5e
	scsiPROut     = 0x5f
)

// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2).
const (
	prRegister       = 0x00
	prReserve        = 0x01
	prRelease        = 0x02
	prClear          = 0x03
	prPreempt        = 0x04
	prPreemptAbort   = 0x05
	prRegisterIgnore = 0x06
	prRegisterMove   = 0x07
)

// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1).
const (
	prReadKeys           = 0x00
	prReadReservation    = 0x01
	prReportCapabilities = 0x02
	prReadFullStatus     = 0x03
)

// prType is a persistent reservation type (SPC-4 §6.15.3.4); 0 means no
// reservation.
type prType byte

const (
	prWriteExclusive    prType = 0x1
	prExclusiveAccess   prType = 0x3
	prWriteExclusiveRO  prType = 0x5 // registrants only
	prExclusiveAccessRO prType = 0x6
	prWriteExclusiveAR  prType = 0x7 // all registrants
	prExclusiveAccessAR prType = 0x8
)

func (t prType) valid() bool {
	switch t {
	case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRO, prExclusiveAccessRO, prWriteExclusiveAR, prExclusiveAccessAR:
		return true
	}
	return false
}

// allRegistrants: every registered I_T nexus is a reservation holder.
func (t prType) allRegistrants() bool { return t == prWriteExclusiveAR || t == prExclusiveAccessAR }

// registrantsAccess: registered I_T nexuses have the holder's access
// (registrants only and all registrants types).
func (t prType) registrantsAccess() bool { return t >= prWriteExclusiveRO }

// exclusiveAccess: reads conflict too, not only writes.
func (t prType) exclusiveAccess() bool {
	return t == prExclusiveAccess || t == prExclusiveAccessRO || t == prExclusiveAccessAR
}

// Bounds of the reservation state of one logical unit.
const (
	// RegistrationsMax bounds the registrations of one logical unit; a
	// REGISTER past it gets INSUFFICIENT REGISTRATION RESOURCES.
	RegistrationsMax = 256
	// ReservationStateBytesMax bounds an encoded state: RegistrationsMax
	// registrations of initiators with the longest names fit.
	ReservationStateBytesMax = 64 << 10

	initiatorNameBytesMax = 223 // RFC 7143 §4.2.7.1: iSCSI names
	prParamBytes          = 24  // basic PERSISTENT RESERVE OUT parameter list
	prStateVersion        = 1
	prStateHeaderBytes    = 11
	prRegHeaderBytes      = 16 // key, flags, ISID, name length
	prHolderNone          = 0xffff
	prScopeLU             = 0
	// prAllowCommands is REPORT CAPABILITIES' ALLOW COMMANDS: TEST UNIT
	// READY is allowed through Write Exclusive and Exclusive Access, MODE
	// SENSE and REPORT SUPPORTED OPERATION CODES through Write Exclusive
	// (see commandAccess).
	prAllowCommands = 3
)

// nexus names an I_T nexus: the initiator port (iSCSI name, lower-cased, and
// ISID). The target port is implicit: one target per logical unit and one
// target portal group.
type nexus struct {
	name string
	isid [6]byte
}

// transportID encodes the initiator port as an iSCSI TransportID, format
// 01b (SPC-4 §7.6.4.6): "name,i,0xISID", NUL-terminated, padded to 4.
func (n nexus) transportID() []byte {
	s := n.name + ",i,0x" + hex.EncodeToString(n.isid[:])
	l := len(s) + 1
	l += pad4(l)
	l = max(l, 20)
	b := make([]byte, 4+l)
	b[0] = 0x40 | protocolIdentifierSCSI
	binary.BigEndian.PutUint16(b[2:], uint16(l))
	copy(b[4:], s)
	return b
}

type registration struct {
	nexus   nexus
	key     uint64 // never 0
	allTgPt bool
}

// prState is the persistent reservation state of one logical unit. A
// published state is never changed: out returns a new one.
type prState struct {
	generation uint32 // PRGENERATION
	aptpl      bool   // the last APTPL bit accepted
	regs       []registration
	resType    prType // 0: no persistent reservation
	holder     nexus  // when resType is set and not all registrants; always registered
}

func (s *prState) find(n nexus) int {
	for i := range s.regs {
		if s.regs[i].nexus == n {
			return i
		}
	}
	return -1
}

func (s *prState) isHolder(n nexus) bool {
	if s.resType == 0 {
		return false
	}
	if s.resType.allRegistrants() {
		return s.find(n) >= 0
	}
	return s.holder == n
}

func (s *prState) clone() *prState {
	c := *s
	c.regs = append([]registration(nil), s.regs...)
	return &c
}

// access is how a command fares against a persistent reservation it does
// not hold (SPC-4 §5.9.1 table 66, SBC-3 §4.17 table 13).
type access byte

const (
	accessAllowed access = iota // allowed under every type
	accessRead                  // allowed under Write Exclusive types only
	accessWrite                 // conflicts under every type
)

// commandAccess classifies a CDB. Unknown operation codes are allowed: they
// fail as INVALID COMMAND OPERATION CODE.
func commandAccess(cdb []byte) access {
	switch cdb[0] {
	case scsiRead6, scsiRead10, scsiRead12, scsiRead16, scsiVerify10, scsiVerify12, scsiVerify16,
		scsiPrefetch10, scsiPrefetch16, scsiModeSense6, scsiModeSense10, scsiMaintenanceIn:
		return accessRead
	case scsiServiceActionIn:
		if cdb[1]&0x1f == saGetLBAStatus {
			return accessRead
		}
		return accessAllowed
	case scsiWrite6, scsiWrite10, scsiWrite12, scsiWrite16, scsiWriteVerify10, scsiWriteVerify12,
		scsiWriteVerify16, scsiWriteSame10, scsiWriteSame16, scsiUnmap, scsiCompareAndWrite,
		scsiSyncCache10, scsiSyncCache16, scsiModeSelect6, scsiModeSelect10,
		scsiReserve6, scsiRelease6, scsiReserve10, scsiRelease10:
		return accessWrite
	case scsiStartStopUnit:
		if len(cdb) > 4 && cdb[4]&0xf1 == 0x01 { // START, POWER CONDITION 0
			return accessAllowed
		}
		return accessWrite
	}
	return accessAllowed
}

// conflicts reports whether a command from n gets RESERVATION CONFLICT.
func (s *prState) conflicts(n nexus, cdb []byte) bool {
	if s.resType == 0 {
		return false
	}
	a := commandAccess(cdb)
	if a == accessAllowed || s.holder == n && !s.resType.allRegistrants() {
		return false
	}
	if s.resType.registrantsAccess() && s.find(n) >= 0 {
		return false
	}
	return a == accessWrite || s.resType.exclusiveAccess()
}

// prParams is a parsed PERSISTENT RESERVE OUT parameter list.
type prParams struct {
	key, sark uint64 // RESERVATION KEY, SERVICE ACTION RESERVATION KEY
	allTgPt   bool
	aptpl     bool
}

// parsePRParams parses the basic parameter list (SPC-4 §6.16.3). SPEC_I_PT
// is not supported (SIP_C 0), so the list is exactly 24 bytes.
func parsePRParams(p []byte) (prParams, error) {
	if len(p) < prParamBytes {
		return prParams{}, senseParamListLength
	}
	if p[20]&0x08 != 0 { // SPEC_I_PT
		return prParams{}, senseInvalidFieldParam
	}
	if len(p) != prParamBytes {
		return prParams{}, senseParamListLength
	}
	return prParams{
		key:     binary.BigEndian.Uint64(p[0:]),
		sark:    binary.BigEndian.Uint64(p[8:]),
		allTgPt: p[20]&0x04 != 0,
		aptpl:   p[20]&0x01 != 0,
	}, nil
}

// prUA is a unit attention for the initiator port of an I_T nexus.
type prUA struct {
	nexus nexus
	sense sense
}

// prOutcome is what a PERSISTENT RESERVE OUT did: next is the new state,
// nil when nothing changed; uas are the unit attentions to establish and
// abort the I_T nexuses whose tasks PREEMPT AND ABORT aborts.
type prOutcome struct {
	next  *prState
	uas   []prUA
	abort []nexus
}

// errReservationConflict ends a command with RESERVATION CONFLICT status.
var errReservationConflict = errors.New("iscsi: reservation conflict")

// out executes PERSISTENT RESERVE OUT from n. param is the parameter list
// of the CDB's PARAMETER LIST LENGTH; persistent says whether APTPL can be
// honoured (the state is saved).
func (s *prState) out(n nexus, cdb, param []byte, persistent bool) (prOutcome, error) {
	sa := cdb[1] & 0x1f
	scope, typ := cdb[2]>>4, prType(cdb[2]&0x0f)
	switch sa {
	case prRegister, prRegisterIgnore, prReserve, prRelease, prClear, prPreempt, prPreemptAbort:
	default: // REGISTER AND MOVE and unknown service actions
		return prOutcome{}, senseInvalidFieldCDB
	}
	p, err := parsePRParams(param)
	if err != nil {
		return prOutcome{}, err
	}
	switch sa {
	case prReserve, prRelease, prPreempt, prPreemptAbort:
		if scope != prScopeLU {
			return prOutcome{}, senseInvalidFieldCDB
		}
	}
	i := s.find(n)
	if sa == prRegister || sa == prRegisterIgnore {
		return s.register(n, i, sa == prRegisterIgnore, p, persistent)
	}
	if i < 0 || s.regs[i].key != p.key {
		return prOutcome{}, errReservationConflict
	}
	switch sa {
	case prReserve:
		if !typ.valid() {
			return prOutcome{}, senseInvalidFieldCDB
		}
		if s.resType != 0 {
			if s.isHolder(n) && s.resType == typ {
				return prOutcome{}, nil
			}
			return prOutcome{}, errReservationConflict
		}
		next := s.clone()
		next.resType = typ
		if !typ.allRegistrants() {
			next.holder = n
		}
		return prOutcome{next: next}, nil
	case prRelease:
		if !s.isHolder(n) {
			return prOutcome{}, nil
		}
		if typ != s.resType {
			return prOutcome{}, senseInvalidRelease
		}
		next := s.clone()
		next.resType, next.holder = 0, nexus{}
		o := prOutcome{next: next}
		if typ.registrantsAccess() {
			o.uas = next.uaAll(n, uaReservationsReleased)
		}
		return o, nil
	case prClear:
		next := s.clone()
		o := prOutcome{next: next, uas: next.uaAll(n, uaReservationsPreempted)}
		next.regs, next.resType, next.holder = nil, 0, nexus{}
		next.generation++
		return o, nil
	}
	return s.preempt(n, typ, p, sa == prPreemptAbort)
}

// register executes REGISTER and REGISTER AND IGNORE EXISTING KEY from n,
// registered at index i or not (-1).
func (s *prState) register(n nexus, i int, ignore bool, p prParams, persistent bool) (prOutcome, error) {
	if i < 0 {
		if !ignore && p.key != 0 {
			return prOutcome{}, errReservationConflict
		}
	} else if !ignore && p.key != s.regs[i].key {
		return prOutcome{}, errReservationConflict
	}
	if p.aptpl && !persistent {
		return prOutcome{}, senseInvalidFieldParam
	}
	if i < 0 && p.sark == 0 {
		return prOutcome{}, nil
	}
	next := s.clone()
	next.aptpl = p.aptpl
	next.generation++
	var o prOutcome
	switch {
	case i < 0:
		if len(s.regs) >= RegistrationsMax || len(n.name) > initiatorNameBytesMax || n.name == "" {
			return prOutcome{}, senseInsufficientRegistration
		}
		next.regs = append(next.regs, registration{nexus: n, key: p.sark, allTgPt: p.allTgPt})
	case p.sark == 0:
		wasHolder := s.isHolder(n)
		next.regs = append(next.regs[:i], next.regs[i+1:]...)
		if wasHolder && (!s.resType.allRegistrants() || len(next.regs) == 0) {
			if s.resType == prWriteExclusiveRO || s.resType == prExclusiveAccessRO {
				o.uas = next.uaAll(n, uaReservationsReleased)
			}
			next.resType, next.holder = 0, nexus{}
		}
	default:
		next.regs[i].key = p.sark
	}
	o.next = next
	return o, nil
}

// preempt executes PREEMPT and PREEMPT AND ABORT (SPC-4 §5.9.11.4) from
// the registered n.
func (s *prState) preempt(n nexus, typ prType, p prParams, abort bool) (prOutcome, error) {
	next := s.clone()
	next.generation++
	var o prOutcome
	o.next = next
	// remove drops the registrations with key (except n's unless self) and
	// reports whether any went.
	remove := func(key uint64, self bool) bool {
		kept := next.regs[:0]
		removed := false
		for _, r := range next.regs {
			if r.key != key || r.nexus == n && !self {
				kept = append(kept, r)
				continue
			}
			removed = true
			if r.nexus != n {
				o.uas = append(o.uas, prUA{r.nexus, uaRegistrationsPreempted})
				if abort {
					o.abort = append(o.abort, r.nexus)
				}
			}
		}
		next.regs = kept
		return removed
	}
	switch {
	case s.resType == 0, s.resType.allRegistrants() && p.sark != 0:
		// Remove registrations only; an all registrants reservation stays
		// while anyone is registered.
		if !remove(p.sark, true) {
			return prOutcome{}, errReservationConflict
		}
		if len(next.regs) == 0 {
			next.resType = 0
		}
	case s.resType.allRegistrants(): // SARK 0: preempt every other registrant
		if !typ.valid() {
			return prOutcome{}, senseInvalidFieldCDB
		}
		kept := next.regs[:0]
		for _, r := range next.regs {
			if r.nexus == n {
				kept = append(kept, r)
				continue
			}
			o.uas = append(o.uas, prUA{r.nexus, uaRegistrationsPreempted})
			if abort {
				o.abort = append(o.abort, r.nexus)
			}
		}
		next.regs = kept
		next.resType, next.holder = typ, nexus{}
		if !typ.allRegistrants() {
			next.holder = n
		}
	case p.sark == s.regs[s.find(s.holder)].key: // preempt the reservation
		if !typ.valid() {
			return prOutcome{}, senseInvalidFieldCDB
		}
		remove(p.sark, false)
		next.resType, next.holder = typ, nexus{}
		if !typ.allRegistrants() {
			next.holder = n
		}
		if typ != s.resType {
			for _, r := range next.regs {
				if r.nexus != n {
					o.uas = append(o.uas, prUA{r.nexus, uaReservationsReleased})
				}
			}
		}
	case p.sark == 0:
		return prOutcome{}, senseInvalidFieldParam
	default: // remove registrations; the reservation stays with its holder
		if !remove(p.sark, true) {
			return prOutcome{}, errReservationConflict
		}
	}
	return o, nil
}

// uaAll returns the unit attention ua for every registrant but n.
func (s *prState) uaAll(n nexus, ua sense) []prUA {
	var uas []prUA
	for _, r := range s.regs {
		if r.nexus != n {
			uas = append(uas, prUA{r.nexus, ua})
		}
	}
	return uas
}

// in answers PERSISTENT RESERVE IN (SPC-4 §6.15): the whole parameter data,
// to be truncated to the allocation length.
func (s *prState) in(cdb []byte, persistent bool) ([]byte, error) {
	var b []byte
	switch cdb[1] & 0x1f {
	case prReadKeys:
		b = make([]byte, 8, 8+8*len(s.regs))
		for _, r := range s.regs {
			b = binary.BigEndian.AppendUint64(b, r.key)
		}
	case prReadReservation:
		b = make([]byte, 8, 24)
		if s.resType != 0 {
			var d [16]byte
			if !s.resType.allRegistrants() {
				binary.BigEndian.PutUint64(d[0:], s.regs[s.find(s.holder)].key)
			}
			d[13] = prScopeLU<<4 | byte(s.resType)
			b = append(b, d[:]...)
		}
	case prReportCapabilities:
		b = make([]byte, 8)
		b[1] = 8
		b[2] = 0x04 // ATP_C: one target port, so all of them
		b[3] = 0x80 | prAllowCommands<<4
		if persistent {
			b[2] |= 0x01 // PTPL_C
			if s.aptpl {
				b[3] |= 0x01 // PTPL_A
			}
		}
		b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
		b[5] = 0x01                             // EX_AC_AR
		return b, nil
	case prReadFullStatus:
		b = make([]byte, 8)
		for _, r := range s.regs {
			tid := r.nexus.transportID()
			var d [24]byte
			binary.BigEndian.PutUint64(d[0:], r.key)
			if r.allTgPt {
				d[12] |= 0x02
			}
			if s.isHolder(r.nexus) {
				d[12] |= 0x01
				d[13] = prScopeLU<<4 | byte(s.resType)
			}
			binary.BigEndian.PutUint16(d[18:], 1) // RELATIVE TARGET PORT IDENTIFIER
			binary.BigEndian.PutUint32(d[20:], uint32(len(tid)))
			b = append(append(b, d[:]...), tid...)
		}
	default:
		return nil, senseInvalidFieldCDB
	}
	binary.BigEndian.PutUint32(b[0:], s.generation)
	binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	return b, nil
}

// encode serialises the state (version 1, big-endian):
//
//	version u8 | generation u32 | flags u8 (APTPL) | type u8 |
//	holder u16 (index into the registrations, 0xffff none) | count u16 |
//	count × (key u64 | flags u8 (ALL_TG_PT) | ISID [6] | name length u8 | name)
func (s *prState) encode() []byte {
	b := make([]byte, prStateHeaderBytes, prStateHeaderBytes+len(s.regs)*(prRegHeaderBytes+32))
	b[0] = prStateVersion
	binary.BigEndian.PutUint32(b[1:], s.generation)
	if s.aptpl {
		b[5] = 1
	}
	b[6] = byte(s.resType)
	holder := prHolderNone
	if s.resType != 0 && !s.resType.allRegistrants() {
		holder = s.find(s.holder)
	}
	binary.BigEndian.PutUint16(b[7:], uint16(holder))
	binary.BigEndian.PutUint16(b[9:], uint16(len(s.regs)))
	for _, r := range s.regs {
		b = binary.BigEndian.AppendUint64(b, r.key)
		var f byte
		if r.allTgPt {
			f = 1
		}
		b = append(b, f)
		b = append(b, r.nexus.isid[:]...)
		b = append(b, byte(len(r.nexus.name)))
		b = append(b, r.nexus.name...)
	}
	if invariants {
		if _, err := decodePRState(b); err != nil {
			panic(fmt.Sprintf("iscsi: encoded reservation state does not decode: %v", err))
		}
	}
	return b
}

// errBadPRState wraps every reason decodePRState refuses bytes.
var errBadPRState = errors.New("iscsi: bad reservation state")

// decodePRState parses and checks an encoded state.
func decodePRState(b []byte) (*prState, error) {
	bad := func(format string, args ...any) (*prState, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{errBadPRState}, args...)...)
	}
	if len(b) > ReservationStateBytesMax {
		return bad("%d bytes", len(b))
	}
	if len(b) < prStateHeaderBytes {
		return bad("%d bytes: short header", len(b))
	}
	if b[0] != prStateVersion {
		return bad("version %d", b[0])
	}
	s := &prState{generation: binary.BigEndian.Uint32(b[1:]), aptpl: b[5]&1 != 0, resType: prType(b[6])}
	if b[5]&^1 != 0 {
		return bad("flags %#x", b[5])
	}
	holder, count := int(binary.BigEndian.Uint16(b[7:])), int(binary.BigEndian.Uint16(b[9:]))
	if count > RegistrationsMax {
		return bad("%d registrations", count)
	}
	s.regs = make([]registration, 0, count)
	rest := b[prStateHeaderBytes:]
	for range count {
		if len(rest) < prRegHeaderBytes {
			return bad("truncated registration")
		}
		var r registration
		r.key = binary.BigEndian.Uint64(rest)
		if rest[8]&^1 != 0 {
			return bad("registration flags %#x", rest[8])
		}
		r.allTgPt = rest[8] != 0
		copy(r.nexus.isid[:], rest[9:15])
		nl := int(rest[15])
		rest = rest[prRegHeaderBytes:]
		if nl == 0 || nl > initiatorNameBytesMax || nl > len(rest) {
			return bad("initiator name of %d bytes", nl)
		}
		r.nexus.name = string(rest[:nl])
		rest = rest[nl:]
		if r.key == 0 {
			return bad("registration with key 0")
		}
		if s.find(r.nexus) >= 0 {
			return bad("initiator %s registered twice", r.nexus.name)
		}
		s.regs = append(s.regs, r)
	}
	if len(rest) != 0 {
		return bad("%d trailing bytes", len(rest))
	}
	switch {
	case s.resType == 0:
		if holder != prHolderNone {
			return bad("holder without reservation")
		}
	case !s.resType.valid():
		return bad("reservation type %#x", s.resType)
	case s.resType.allRegistrants():
		if holder != prHolderNone || count == 0 {
			return bad("all registrants reservation with holder %d of %d registrations", holder, count)
		}
	default:
		if holder >= count {
			return bad("holder %d of %d registrations", holder, count)
		}
		s.holder = s.regs[holder].nexus
	}
	return s, nil
}
