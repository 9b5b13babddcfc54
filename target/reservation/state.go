package reservation

import (
	"encoding/binary"
	"errors"
	"fmt"

	"cairn/target"
)

// Persistent reservations (SPC-4 §5.9) as a pure state machine: a State is
// immutable once published; PERSISTENT RESERVE OUT computes a new state
// from (nexus, CDB, parameter list) and the unit attentions and aborts it
// causes; PERSISTENT RESERVE IN and the conflict check only read. No I/O
// here: unit.go loads, saves and publishes states.

// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2), for the
// front end that decodes the commands and for Apply.
const (
	OutRegister       = 0x00
	OutReserve        = 0x01
	OutRelease        = 0x02
	OutClear          = 0x03
	OutPreempt        = 0x04
	OutPreemptAbort   = 0x05
	OutRegisterIgnore = 0x06
	OutRegisterMove   = 0x07
)

// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1).
const (
	InReadKeys           = 0x00
	InReadReservation    = 0x01
	InReportCapabilities = 0x02
	InReadFullStatus     = 0x03
)

// Type is a persistent reservation type (SPC-4 §6.15.3.4); 0 means no
// reservation.
type Type byte

// The reservation types.
const (
	WriteExclusive    Type = 0x1
	ExclusiveAccess   Type = 0x3
	WriteExclusiveRO  Type = 0x5 // registrants only
	ExclusiveAccessRO Type = 0x6
	WriteExclusiveAR  Type = 0x7 // all registrants
	ExclusiveAccessAR Type = 0x8
)

func (t Type) valid() bool {
	switch t {
	case WriteExclusive, ExclusiveAccess, WriteExclusiveRO, ExclusiveAccessRO, WriteExclusiveAR, ExclusiveAccessAR:
		return true
	}
	return false
}

// String names the type as sg_persist does.
func (t Type) String() string {
	switch t {
	case 0:
		return "none"
	case WriteExclusive:
		return "Write Exclusive"
	case ExclusiveAccess:
		return "Exclusive Access"
	case WriteExclusiveRO:
		return "Write Exclusive, registrants only"
	case ExclusiveAccessRO:
		return "Exclusive Access, registrants only"
	case WriteExclusiveAR:
		return "Write Exclusive, all registrants"
	case ExclusiveAccessAR:
		return "Exclusive Access, all registrants"
	}
	return fmt.Sprintf("type %#x", byte(t))
}

// allRegistrants: every registered nexus is a reservation holder.
func (t Type) allRegistrants() bool { return t == WriteExclusiveAR || t == ExclusiveAccessAR }

// registrantsAccess: registered nexuses have the holder's access
// (registrants only and all registrants types).
func (t Type) registrantsAccess() bool { return t >= WriteExclusiveRO }

// exclusiveAccess: reads conflict too, not only writes.
func (t Type) exclusiveAccess() bool {
	return t == ExclusiveAccess || t == ExclusiveAccessRO || t == ExclusiveAccessAR
}

// Bounds of the reservation state of one volume.
const (
	// RegistrationsMax bounds the registrations of one volume; a REGISTER
	// past it gets ErrNoResources.
	RegistrationsMax = 256
	// StateBytesMax bounds an encoded state: RegistrationsMax
	// registrations of initiators with the longest names fit.
	StateBytesMax = 64 << 10

	initiatorNameBytesMax = 223 // RFC 7143 §4.2.7.1: iSCSI names
	prParamBytes          = 24  // basic PERSISTENT RESERVE OUT parameter list
	stateVersion          = 1
	stateHeaderBytes      = 11
	regHeaderBytes        = 16 // key, flags, ISID, name length
	holderNone            = 0xffff
	scopeLU               = 0
	// prAllowCommands is REPORT CAPABILITIES' ALLOW COMMANDS: TEST UNIT
	// READY is allowed through Write Exclusive and Exclusive Access, MODE
	// SENSE and REPORT SUPPORTED OPERATION CODES through Write Exclusive
	// (the SCSI front end's command table).
	prAllowCommands = 3
)

// Errors of PERSISTENT RESERVE OUT and IN and of decoding a state; a SCSI
// front end maps each to its sense data. A conflict is
// target.ErrReservationConflict.
var (
	ErrInvalidField    = errors.New("reservation: invalid field in CDB")
	ErrInvalidParam    = errors.New("reservation: invalid field in parameter list")
	ErrParamListLength = errors.New("reservation: parameter list length error")
	ErrNoResources     = errors.New("reservation: insufficient registration resources")
	ErrInvalidRelease  = errors.New("reservation: invalid release of persistent reservation")
	// ErrBadState wraps every reason Decode refuses bytes.
	ErrBadState = errors.New("reservation: bad state")
)

// errConflict is a conflict of a reservation command.
var errConflict = fmt.Errorf("reservation: %w", target.ErrReservationConflict)

type registration struct {
	nexus   Nexus
	key     uint64 // never 0
	allTgPt bool
}

// Registration is one registered nexus, as an operator sees it.
type Registration struct {
	Nexus  Nexus
	Key    uint64
	Holder bool // it holds the reservation (all registrants types: every registrant)
}

// State is the persistent reservation state of one volume. A published
// state is never changed: Out returns a new one. The zero State has no
// registrations and no reservation.
type State struct {
	generation uint32 // PRGENERATION
	aptpl      bool   // the last APTPL bit accepted
	regs       []registration
	resType    Type  // 0: no persistent reservation
	holder     Nexus // when resType is set and not all registrants; always registered
}

func (s *State) find(n Nexus) int {
	for i := range s.regs {
		if s.regs[i].nexus == n {
			return i
		}
	}
	return -1
}

func (s *State) isHolder(n Nexus) bool {
	if s.resType == 0 {
		return false
	}
	if s.resType.allRegistrants() {
		return s.find(n) >= 0
	}
	return s.holder == n
}

func (s *State) clone() *State {
	c := *s
	c.regs = append([]registration(nil), s.regs...)
	return &c
}

// Type returns the type of the persistent reservation, 0 if none.
func (s *State) Type() Type { return s.resType }

// Generation returns PRGENERATION.
func (s *State) Generation() uint32 { return s.generation }

// Registrations returns a copy of the registrations, in registration
// order.
func (s *State) Registrations() []Registration {
	out := make([]Registration, len(s.regs))
	for i, r := range s.regs {
		out[i] = Registration{Nexus: r.nexus, Key: r.key, Holder: s.isHolder(r.nexus)}
	}
	return out
}

// Access is what a request needs of a volume, for the conflict check
// (SPC-4 §5.9.1 table 66, SBC-3 §4.17 table 13).
type Access byte

const (
	// AccessAllowed: allowed under every type (INQUIRY, READ CAPACITY, a
	// flush from a front end that has no SYNCHRONIZE CACHE semantics).
	AccessAllowed Access = iota
	// AccessRead: allowed under Write Exclusive types only.
	AccessRead
	// AccessWrite: conflicts under every type.
	AccessWrite
)

// Conflicts reports whether a request of access a from n conflicts with
// the persistent reservation.
func (s *State) Conflicts(n Nexus, a Access) bool {
	if s.resType == 0 {
		return false
	}
	if a == AccessAllowed || s.holder == n && !s.resType.allRegistrants() {
		return false
	}
	if s.resType.registrantsAccess() && s.find(n) >= 0 {
		return false
	}
	return a == AccessWrite || s.resType.exclusiveAccess()
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
		return prParams{}, ErrParamListLength
	}
	if p[20]&0x08 != 0 { // SPEC_I_PT
		return prParams{}, ErrInvalidParam
	}
	if len(p) != prParamBytes {
		return prParams{}, ErrParamListLength
	}
	return prParams{
		key:     binary.BigEndian.Uint64(p[0:]),
		sark:    binary.BigEndian.Uint64(p[8:]),
		allTgPt: p[20]&0x04 != 0,
		aptpl:   p[20]&0x01 != 0,
	}, nil
}

// Cause is why a unit attention is established.
type Cause byte

// The unit attentions of reservation changes (SPC-4 §5.9.12).
const (
	RegistrationsPreempted Cause = iota + 1
	ReservationsPreempted
	ReservationsReleased
)

// Attention is a unit attention for the initiator port of a nexus.
type Attention struct {
	Nexus Nexus
	Cause Cause
}

// Outcome is what a PERSISTENT RESERVE OUT did: Next is the new state,
// nil when nothing changed; Attentions are the unit attentions to establish and
// abort the I_T nexuses whose tasks PREEMPT AND ABORT aborts.
type Outcome struct {
	Next       *State
	Attentions []Attention
	Abort      []Nexus
}

// Out executes PERSISTENT RESERVE OUT (the 10-byte CDB, SPC-4 §6.16)
// from n. param is the parameter list
// of the CDB's PARAMETER LIST LENGTH; persistent says whether APTPL can be
// honoured (the state is saved).
func (s *State) Out(n Nexus, cdb, param []byte, persistent bool) (Outcome, error) {
	sa := cdb[1] & 0x1f
	scope, typ := cdb[2]>>4, Type(cdb[2]&0x0f)
	switch sa {
	case OutRegister, OutRegisterIgnore, OutReserve, OutRelease, OutClear, OutPreempt, OutPreemptAbort:
	default: // REGISTER AND MOVE and unknown service actions
		return Outcome{}, ErrInvalidField
	}
	p, err := parsePRParams(param)
	if err != nil {
		return Outcome{}, err
	}
	switch sa {
	case OutReserve, OutRelease, OutPreempt, OutPreemptAbort:
		if scope != scopeLU {
			return Outcome{}, ErrInvalidField
		}
	}
	i := s.find(n)
	if sa == OutRegister || sa == OutRegisterIgnore {
		return s.register(n, i, sa == OutRegisterIgnore, p, persistent)
	}
	if i < 0 || s.regs[i].key != p.key {
		return Outcome{}, errConflict
	}
	switch sa {
	case OutReserve:
		if !typ.valid() {
			return Outcome{}, ErrInvalidField
		}
		if s.resType != 0 {
			if s.isHolder(n) && s.resType == typ {
				return Outcome{}, nil
			}
			return Outcome{}, errConflict
		}
		next := s.clone()
		next.resType = typ
		if !typ.allRegistrants() {
			next.holder = n
		}
		return Outcome{Next: next}, nil
	case OutRelease:
		if !s.isHolder(n) {
			return Outcome{}, nil
		}
		if typ != s.resType {
			return Outcome{}, ErrInvalidRelease
		}
		next := s.clone()
		next.resType, next.holder = 0, Nexus{}
		o := Outcome{Next: next}
		if typ.registrantsAccess() {
			o.Attentions = next.uaAll(n, ReservationsReleased)
		}
		return o, nil
	case OutClear:
		next := s.clone()
		o := Outcome{Next: next, Attentions: next.uaAll(n, ReservationsPreempted)}
		next.regs, next.resType, next.holder = nil, 0, Nexus{}
		next.generation++
		return o, nil
	}
	return s.preempt(n, typ, p, sa == OutPreemptAbort)
}

// register executes REGISTER and REGISTER AND IGNORE EXISTING KEY from n,
// registered at index i or not (-1).
func (s *State) register(n Nexus, i int, ignore bool, p prParams, persistent bool) (Outcome, error) {
	if i < 0 {
		if !ignore && p.key != 0 {
			return Outcome{}, errConflict
		}
	} else if !ignore && p.key != s.regs[i].key {
		return Outcome{}, errConflict
	}
	if p.aptpl && !persistent {
		return Outcome{}, ErrInvalidParam
	}
	if i < 0 && p.sark == 0 {
		return Outcome{}, nil
	}
	next := s.clone()
	next.aptpl = p.aptpl
	next.generation++
	var o Outcome
	switch {
	case i < 0:
		if len(s.regs) >= RegistrationsMax || len(n.Initiator) > initiatorNameBytesMax || n.Initiator == "" {
			return Outcome{}, ErrNoResources
		}
		next.regs = append(next.regs, registration{nexus: n, key: p.sark, allTgPt: p.allTgPt})
	case p.sark == 0:
		wasHolder := s.isHolder(n)
		next.regs = append(next.regs[:i], next.regs[i+1:]...)
		if wasHolder && (!s.resType.allRegistrants() || len(next.regs) == 0) {
			if s.resType == WriteExclusiveRO || s.resType == ExclusiveAccessRO {
				o.Attentions = next.uaAll(n, ReservationsReleased)
			}
			next.resType, next.holder = 0, Nexus{}
		}
	default:
		next.regs[i].key = p.sark
	}
	o.Next = next
	return o, nil
}

// preempt executes PREEMPT and PREEMPT AND ABORT (SPC-4 §5.9.11.4) from
// the registered n.
func (s *State) preempt(n Nexus, typ Type, p prParams, abort bool) (Outcome, error) {
	next := s.clone()
	next.generation++
	var o Outcome
	o.Next = next
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
				o.Attentions = append(o.Attentions, Attention{r.nexus, RegistrationsPreempted})
				if abort {
					o.Abort = append(o.Abort, r.nexus)
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
			return Outcome{}, errConflict
		}
		if len(next.regs) == 0 {
			next.resType = 0
		}
	case s.resType.allRegistrants(): // SARK 0: preempt every other registrant
		if !typ.valid() {
			return Outcome{}, ErrInvalidField
		}
		kept := next.regs[:0]
		for _, r := range next.regs {
			if r.nexus == n {
				kept = append(kept, r)
				continue
			}
			o.Attentions = append(o.Attentions, Attention{r.nexus, RegistrationsPreempted})
			if abort {
				o.Abort = append(o.Abort, r.nexus)
			}
		}
		next.regs = kept
		next.resType, next.holder = typ, Nexus{}
		if !typ.allRegistrants() {
			next.holder = n
		}
	case p.sark == s.regs[s.find(s.holder)].key: // preempt the reservation
		if !typ.valid() {
			return Outcome{}, ErrInvalidField
		}
		remove(p.sark, false)
		next.resType, next.holder = typ, Nexus{}
		if !typ.allRegistrants() {
			next.holder = n
		}
		if typ != s.resType {
			for _, r := range next.regs {
				if r.nexus != n {
					o.Attentions = append(o.Attentions, Attention{r.nexus, ReservationsReleased})
				}
			}
		}
	case p.sark == 0:
		return Outcome{}, ErrInvalidParam
	default: // remove registrations; the reservation stays with its holder
		if !remove(p.sark, true) {
			return Outcome{}, errConflict
		}
	}
	return o, nil
}

// uaAll returns the unit attention ua for every registrant but n.
func (s *State) uaAll(n Nexus, ua Cause) []Attention {
	var uas []Attention
	for _, r := range s.regs {
		if r.nexus != n {
			uas = append(uas, Attention{r.nexus, ua})
		}
	}
	return uas
}

// In answers PERSISTENT RESERVE IN (SPC-4 §6.15): the whole parameter data,
// to be truncated to the allocation length.
func (s *State) In(cdb []byte, persistent bool) ([]byte, error) {
	var b []byte
	switch cdb[1] & 0x1f {
	case InReadKeys:
		b = make([]byte, 8, 8+8*len(s.regs))
		for _, r := range s.regs {
			b = binary.BigEndian.AppendUint64(b, r.key)
		}
	case InReadReservation:
		b = make([]byte, 8, 24)
		if s.resType != 0 {
			var d [16]byte
			if !s.resType.allRegistrants() {
				binary.BigEndian.PutUint64(d[0:], s.regs[s.find(s.holder)].key)
			}
			d[13] = scopeLU<<4 | byte(s.resType)
			b = append(b, d[:]...)
		}
	case InReportCapabilities:
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
	case InReadFullStatus:
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
				d[13] = scopeLU<<4 | byte(s.resType)
			}
			binary.BigEndian.PutUint16(d[18:], 1) // RELATIVE TARGET PORT IDENTIFIER
			binary.BigEndian.PutUint32(d[20:], uint32(len(tid)))
			b = append(append(b, d[:]...), tid...)
		}
	default:
		return nil, ErrInvalidField
	}
	binary.BigEndian.PutUint32(b[0:], s.generation)
	binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	return b, nil
}

// Encode serialises the state (version 1, big-endian):
//
//	version u8 | generation u32 | flags u8 (APTPL) | type u8 |
//	holder u16 (index into the registrations, 0xffff none) | count u16 |
//	count × (key u64 | flags u8 (ALL_TG_PT) | ISID [6] | name length u8 | name)
func (s *State) Encode() []byte {
	b := make([]byte, stateHeaderBytes, stateHeaderBytes+len(s.regs)*(regHeaderBytes+32))
	b[0] = stateVersion
	binary.BigEndian.PutUint32(b[1:], s.generation)
	if s.aptpl {
		b[5] = 1
	}
	b[6] = byte(s.resType)
	holder := holderNone
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
		b = append(b, r.nexus.ISID[:]...)
		b = append(b, byte(len(r.nexus.Initiator)))
		b = append(b, r.nexus.Initiator...)
	}
	if invariants {
		if _, err := Decode(b); err != nil {
			panic(fmt.Sprintf("reservation: encoded state does not decode: %v", err))
		}
	}
	return b
}

// Decode parses and checks an encoded state.
func Decode(b []byte) (*State, error) {
	bad := func(format string, args ...any) (*State, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrBadState}, args...)...)
	}
	if len(b) > StateBytesMax {
		return bad("%d bytes", len(b))
	}
	if len(b) < stateHeaderBytes {
		return bad("%d bytes: short header", len(b))
	}
	if b[0] != stateVersion {
		return bad("version %d", b[0])
	}
	s := &State{generation: binary.BigEndian.Uint32(b[1:]), aptpl: b[5]&1 != 0, resType: Type(b[6])}
	if b[5]&^1 != 0 {
		return bad("flags %#x", b[5])
	}
	holder, count := int(binary.BigEndian.Uint16(b[7:])), int(binary.BigEndian.Uint16(b[9:]))
	if count > RegistrationsMax {
		return bad("%d registrations", count)
	}
	s.regs = make([]registration, 0, count)
	rest := b[stateHeaderBytes:]
	for range count {
		if len(rest) < regHeaderBytes {
			return bad("truncated registration")
		}
		var r registration
		r.key = binary.BigEndian.Uint64(rest)
		if rest[8]&^1 != 0 {
			return bad("registration flags %#x", rest[8])
		}
		r.allTgPt = rest[8] != 0
		copy(r.nexus.ISID[:], rest[9:15])
		nl := int(rest[15])
		rest = rest[regHeaderBytes:]
		if nl == 0 || nl > initiatorNameBytesMax || nl > len(rest) {
			return bad("initiator name of %d bytes", nl)
		}
		r.nexus.Initiator = string(rest[:nl])
		rest = rest[nl:]
		if r.key == 0 {
			return bad("registration with key 0")
		}
		if s.find(r.nexus) >= 0 {
			return bad("initiator %s registered twice", r.nexus.Initiator)
		}
		s.regs = append(s.regs, r)
	}
	if len(rest) != 0 {
		return bad("%d trailing bytes", len(rest))
	}
	switch {
	case s.resType == 0:
		if holder != holderNone {
			return bad("holder without reservation")
		}
	case !s.resType.valid():
		return bad("reservation type %#x", s.resType)
	case s.resType.allRegistrants():
		if holder != holderNone || count == 0 {
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
