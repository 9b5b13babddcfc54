package reservation

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

var (
	nxA  = Nexus{Initiator: "iqn.a", ISID: [6]byte{0x40, 0, 0, 0, 0, 1}}
	nxA2 = Nexus{Initiator: "iqn.a", ISID: [6]byte{0x40, 0, 0, 0, 0, 2}} // same initiator, other ISID
	nxB  = Nexus{Initiator: "iqn.b", ISID: [6]byte{0x40, 0, 0, 0, 0, 1}}
	nxC  = Nexus{Initiator: "iqn.c", ISID: [6]byte{0x40, 0, 0, 0, 0, 1}}
)

func proutCDB(sa byte, typ Type) []byte {
	cdb := make([]byte, 10)
	cdb[0], cdb[1], cdb[2] = 0x5f, sa, byte(typ)
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

// prStep is one PERSISTENT RESERVE OUT and what must follow.
type prStep struct {
	who       Nexus
	sa        byte
	typ       Type
	key, sark uint64
	err       error    // nil, errConflict or a sense
	keys      []uint64 // registered keys afterwards, in order
	res       Type
	holder    Nexus // when res is not all registrants
	gen       uint32
	uas       []Attention
	abort     []Nexus
}

func TestPROut(t *testing.T) {
	ua := func(n Nexus, c Cause) Attention { return Attention{n, c} }
	for _, tc := range []struct {
		name  string
		steps []prStep
	}{
		{"register", []prStep{
			{who: nxA, sa: OutRegister, key: 1, sark: 2, err: errConflict},
			{who: nxA, sa: OutRegister, sark: 0}, // nothing to do
			{who: nxA, sa: OutRegister, sark: 10, keys: []uint64{10}, gen: 1},
			{who: nxA, sa: OutRegister, key: 11, sark: 12, err: errConflict, keys: []uint64{10}, gen: 1},
			{who: nxA, sa: OutRegister, key: 10, sark: 12, keys: []uint64{12}, gen: 2},
			{who: nxA2, sa: OutRegisterIgnore, key: 99, sark: 12, keys: []uint64{12, 12}, gen: 3}, // other ISID, other nexus
			{who: nxA, sa: OutRegisterIgnore, key: 99, sark: 13, keys: []uint64{13, 12}, gen: 4},
			{who: nxA, sa: OutRegister, key: 13, sark: 0, keys: []uint64{12}, gen: 5},
			{who: nxA, sa: OutRegisterMove, key: 13, err: ErrInvalidField, keys: []uint64{12}, gen: 5},
			{who: nxA, sa: 0x1f, err: ErrInvalidField, keys: []uint64{12}, gen: 5},
		}},
		{"reserve release", []prStep{
			{who: nxA, sa: OutReserve, typ: ExclusiveAccess, key: 1, err: errConflict},
			{who: nxA, sa: OutRegister, sark: 1, keys: []uint64{1}, gen: 1},
			{who: nxB, sa: OutRegister, sark: 2, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: OutReserve, typ: 2, key: 1, err: ErrInvalidField, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: OutReserve, typ: ExclusiveAccess, key: 2, err: errConflict, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: OutReserve, typ: ExclusiveAccess, key: 1, keys: []uint64{1, 2}, res: ExclusiveAccess, holder: nxA, gen: 2},
			{who: nxA, sa: OutReserve, typ: ExclusiveAccess, key: 1, keys: []uint64{1, 2}, res: ExclusiveAccess, holder: nxA, gen: 2},
			{who: nxA, sa: OutReserve, typ: WriteExclusive, key: 1, err: errConflict, keys: []uint64{1, 2}, res: ExclusiveAccess, holder: nxA, gen: 2},
			{who: nxB, sa: OutReserve, typ: ExclusiveAccess, key: 2, err: errConflict, keys: []uint64{1, 2}, res: ExclusiveAccess, holder: nxA, gen: 2},
			{who: nxB, sa: OutRelease, typ: ExclusiveAccess, key: 2, keys: []uint64{1, 2}, res: ExclusiveAccess, holder: nxA, gen: 2}, // not the holder: nothing
			{who: nxA, sa: OutRelease, typ: WriteExclusive, key: 1, err: ErrInvalidRelease, keys: []uint64{1, 2}, res: ExclusiveAccess, holder: nxA, gen: 2},
			{who: nxA, sa: OutRelease, typ: ExclusiveAccess, key: 1, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: OutReserve, typ: WriteExclusiveRO, key: 1, keys: []uint64{1, 2}, res: WriteExclusiveRO, holder: nxA, gen: 2},
			{who: nxA, sa: OutRelease, typ: WriteExclusiveRO, key: 1, keys: []uint64{1, 2}, gen: 2, uas: []Attention{ua(nxB, ReservationsReleased)}},
		}},
		{"holder unregisters", []prStep{
			{who: nxA, sa: OutRegister, sark: 1, keys: []uint64{1}, gen: 1},
			{who: nxB, sa: OutRegister, sark: 2, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: OutReserve, typ: ExclusiveAccessRO, key: 1, keys: []uint64{1, 2}, res: ExclusiveAccessRO, holder: nxA, gen: 2},
			{who: nxA, sa: OutRegister, key: 1, keys: []uint64{2}, gen: 3, uas: []Attention{ua(nxB, ReservationsReleased)}},
			{who: nxB, sa: OutReserve, typ: WriteExclusiveAR, key: 2, keys: []uint64{2}, res: WriteExclusiveAR, gen: 3},
			{who: nxA, sa: OutRegister, sark: 1, keys: []uint64{2, 1}, res: WriteExclusiveAR, gen: 4},
			{who: nxA, sa: OutReserve, typ: WriteExclusiveAR, key: 1, keys: []uint64{2, 1}, res: WriteExclusiveAR, gen: 4}, // a holder too
			{who: nxB, sa: OutRegister, key: 2, keys: []uint64{1}, res: WriteExclusiveAR, gen: 5},                          // stays: A is registered
			{who: nxA, sa: OutRegister, key: 1, gen: 6},                                                                    // last one: released
		}},
		{"clear", []prStep{
			{who: nxA, sa: OutRegister, sark: 1, keys: []uint64{1}, gen: 1},
			{who: nxB, sa: OutRegister, sark: 2, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: OutReserve, typ: ExclusiveAccess, key: 1, keys: []uint64{1, 2}, res: ExclusiveAccess, holder: nxA, gen: 2},
			{who: nxC, sa: OutClear, key: 3, err: errConflict, keys: []uint64{1, 2}, res: ExclusiveAccess, holder: nxA, gen: 2},
			{who: nxB, sa: OutClear, key: 2, gen: 3, uas: []Attention{ua(nxA, ReservationsPreempted)}},
		}},
		{"preempt", []prStep{
			{who: nxA, sa: OutRegister, sark: 1, keys: []uint64{1}, gen: 1},
			{who: nxB, sa: OutRegister, sark: 2, keys: []uint64{1, 2}, gen: 2},
			{who: nxC, sa: OutRegister, sark: 3, keys: []uint64{1, 2, 3}, gen: 3},
			// No reservation: removes registrations only.
			{who: nxB, sa: OutPreempt, typ: ExclusiveAccess, key: 2, sark: 9, err: errConflict, keys: []uint64{1, 2, 3}, gen: 3},
			{who: nxB, sa: OutPreempt, typ: ExclusiveAccess, key: 2, sark: 1, keys: []uint64{2, 3}, gen: 4, uas: []Attention{ua(nxA, RegistrationsPreempted)}},
			{who: nxA, sa: OutRegister, sark: 1, keys: []uint64{2, 3, 1}, gen: 5},
			{who: nxA, sa: OutReserve, typ: WriteExclusive, key: 1, keys: []uint64{2, 3, 1}, res: WriteExclusive, holder: nxA, gen: 5},
			// Not the holder's key: registrations only; zero is invalid.
			{who: nxB, sa: OutPreempt, typ: ExclusiveAccess, key: 2, sark: 0, err: ErrInvalidParam, keys: []uint64{2, 3, 1}, res: WriteExclusive, holder: nxA, gen: 5},
			{who: nxB, sa: OutPreempt, typ: ExclusiveAccess, key: 2, sark: 3, keys: []uint64{2, 1}, res: WriteExclusive, holder: nxA, gen: 6, uas: []Attention{ua(nxC, RegistrationsPreempted)}},
			// The holder's key: the reservation moves, with its new type.
			{who: nxB, sa: OutPreemptAbort, typ: ExclusiveAccess, key: 2, sark: 1, keys: []uint64{2}, res: ExclusiveAccess, holder: nxB, gen: 7,
				uas: []Attention{ua(nxA, RegistrationsPreempted)}, abort: []Nexus{nxA}},
			{who: nxB, sa: OutPreempt, typ: ExclusiveAccess, key: 2, sark: 1, err: errConflict, keys: []uint64{2}, res: ExclusiveAccess, holder: nxB, gen: 7},
			// Self-preempt changes the type and keeps the registration.
			{who: nxC, sa: OutRegister, sark: 3, keys: []uint64{2, 3}, res: ExclusiveAccess, holder: nxB, gen: 8},
			{who: nxB, sa: OutPreempt, typ: WriteExclusiveAR, key: 2, sark: 2, keys: []uint64{2, 3}, res: WriteExclusiveAR, gen: 9,
				uas: []Attention{ua(nxC, ReservationsReleased)}},
			// All registrants, SARK 0: everyone else goes.
			{who: nxA, sa: OutRegister, sark: 1, keys: []uint64{2, 3, 1}, res: WriteExclusiveAR, gen: 10},
			{who: nxC, sa: OutPreempt, typ: ExclusiveAccess, key: 3, sark: 0, keys: []uint64{3}, res: ExclusiveAccess, holder: nxC, gen: 11,
				uas: []Attention{ua(nxB, RegistrationsPreempted), ua(nxA, RegistrationsPreempted)}},
			{who: nxC, sa: OutPreempt, typ: ExclusiveAccess, key: 3, sark: 3, keys: []uint64{3}, res: ExclusiveAccess, holder: nxC, gen: 12},
			{who: nxC, sa: OutPreempt, typ: 2, key: 3, sark: 3, err: ErrInvalidField, keys: []uint64{3}, res: ExclusiveAccess, holder: nxC, gen: 12},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &State{}
			for i, s := range tc.steps {
				o, err := st.Out(s.who, proutCDB(s.sa, s.typ), proutParams(s.key, s.sark, 0), false)
				if !errors.Is(err, s.err) && err != s.err {
					t.Fatalf("step %d: %v, want %v", i, err, s.err)
				}
				if o.Next != nil {
					st = o.Next
				}
				if err := st.check(); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				var keys []uint64
				for _, r := range st.regs {
					keys = append(keys, r.key)
				}
				if !reflect.DeepEqual(keys, s.keys) || st.resType != s.res || st.holder != s.holder || st.generation != s.gen {
					t.Fatalf("step %d: keys %v type %d holder %v gen %d; want %v %d %v %d",
						i, keys, st.resType, st.holder, st.generation, s.keys, s.res, s.holder, s.gen)
				}
				if !reflect.DeepEqual(o.Attentions, s.uas) || !reflect.DeepEqual(o.Abort, s.abort) {
					t.Fatalf("step %d: unit attentions %v aborts %v; want %v %v", i, o.Attentions, o.Abort, s.uas, s.abort)
				}
				if back, err := Decode(st.Encode()); err != nil || !reflect.DeepEqual(normalize(back), normalize(st)) {
					t.Fatalf("step %d: encode/decode: %v\n%+v\n%+v", i, err, back, st)
				}
			}
		})
	}
}

func normalize(s *State) *State {
	c := s.clone()
	if len(c.regs) == 0 {
		c.regs = nil
	}
	return c
}

// check verifies the invariants of a state.
func (s *State) check() error {
	if len(s.regs) > RegistrationsMax {
		return fmt.Errorf("%d registrations", len(s.regs))
	}
	seen := map[Nexus]bool{}
	for _, r := range s.regs {
		if r.key == 0 || seen[r.nexus] {
			return fmt.Errorf("registration %+v: key 0 or twice", r)
		}
		seen[r.nexus] = true
	}
	switch {
	case s.resType == 0:
		if s.holder != (Nexus{}) {
			return errors.New("holder without reservation")
		}
	case s.resType.allRegistrants():
		if len(s.regs) == 0 || s.holder != (Nexus{}) {
			return errors.New("all registrants reservation without registrants, or with a holder")
		}
	case !seen[s.holder]:
		return fmt.Errorf("holder %v not registered", s.holder)
	}
	return nil
}

func TestPROutParams(t *testing.T) {
	for _, tc := range []struct {
		plen  uint32
		param []byte
		err   error
	}{
		{24, proutParams(0, 1, 0), nil},
		{23, proutParams(0, 1, 0)[:23], ErrParamListLength},
		{32, append(proutParams(0, 1, 0), make([]byte, 8)...), ErrParamListLength},
		{32, append(proutParams(0, 1, 0x08), make([]byte, 8)...), ErrInvalidParam}, // SPEC_I_PT
		{24, proutParams(0, 1, 0x01), ErrInvalidParam},                             // APTPL, not persistent
	} {
		cdb := proutCDB(OutRegister, 0)
		binary.BigEndian.PutUint32(cdb[5:], tc.plen)
		if _, err := (&State{}).Out(nxA, cdb, tc.param, false); err != tc.err {
			t.Errorf("plen %d flags %#x: %v, want %v", tc.plen, tc.param[min(20, len(tc.param)-1)], err, tc.err)
		}
	}
	o, err := (&State{}).Out(nxA, proutCDB(OutRegister, 0), proutParams(0, 1, 0x05), true)
	if err != nil || !o.Next.aptpl || !o.Next.regs[0].allTgPt {
		t.Fatalf("APTPL and ALL_TG_PT when persistent: %v %+v", err, o.Next)
	}
	if _, err := (&State{}).Out(nxA, proutCDB(OutReserve, ExclusiveAccess)[:], proutParams(1, 0, 0), false); err != errConflict {
		t.Fatal(err)
	}
	cdb := proutCDB(OutReserve, ExclusiveAccess)
	cdb[2] |= 0x10 // scope
	if _, err := (&State{}).Out(nxA, cdb, proutParams(1, 0, 0), false); err != ErrInvalidField {
		t.Fatal(err)
	}
}

func TestPRRegistrationsMax(t *testing.T) {
	st := &State{}
	long := strings.Repeat("n", initiatorNameBytesMax)
	for i := range RegistrationsMax + 1 {
		n := Nexus{Initiator: long, ISID: [6]byte{byte(i >> 8), byte(i)}}
		o, err := st.Out(n, proutCDB(OutRegister, 0), proutParams(0, uint64(i+1), 0), true)
		if i == RegistrationsMax {
			if err != ErrNoResources {
				t.Fatalf("registration %d: %v", i, err)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		st = o.Next
	}
	if n := len(st.Encode()); n > StateBytesMax {
		t.Fatalf("full state encodes to %d bytes > %d", n, StateBytesMax)
	}
	if _, err := st.Out(Nexus{Initiator: long + "x"}, proutCDB(OutRegisterIgnore, 0), proutParams(0, 1, 0), true); err != ErrNoResources {
		t.Fatalf("name too long: %v", err)
	}
}

func TestPRIn(t *testing.T) {
	st := &State{generation: 7, regs: []registration{{nexus: nxA, key: 0x11}, {nexus: nxB, key: 0x22, allTgPt: true}},
		resType: ExclusiveAccess, holder: nxB}
	in := func(sa byte) []byte {
		b, err := st.In([]byte{0x5e, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, true)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if b := in(InReadKeys); !bytes.Equal(b, []byte{0, 0, 0, 7, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0, 0, 0, 0x22}) {
		t.Errorf("READ KEYS % x", b)
	}
	if b := in(InReadReservation); len(b) != 24 || be32(b[4:]) != 16 || be64(b[8:]) != 0x22 || b[21] != 0x03 {
		t.Errorf("READ RESERVATION % x", b)
	}
	if b := in(InReportCapabilities); !bytes.Equal(b, []byte{0, 8, 0x05, 0xb0, 0xea, 0x01, 0, 0}) {
		t.Errorf("REPORT CAPABILITIES % x", b)
	}
	b := in(InReadFullStatus)
	if int(be32(b[4:])) != len(b)-8 {
		t.Fatalf("READ FULL STATUS length % x", b)
	}
	d := b[8:]
	tidLen := int(be32(d[20:]))
	if be64(d) != 0x11 || d[12] != 0 || tidLen%4 != 0 || !bytes.HasPrefix(d[24+4:], []byte("iqn.a,i,0x400000000001\x00")) {
		t.Errorf("first descriptor % x", d[:24+tidLen])
	}
	d = d[24+tidLen:]
	if be64(d) != 0x22 || d[12] != 0x03 || d[13] != 0x03 || be16(d[18:]) != 1 {
		t.Errorf("second descriptor % x", d)
	}
	if _, err := st.In([]byte{0x5e, 4, 0, 0, 0, 0, 0, 0, 8, 0}, true); err != ErrInvalidField {
		t.Errorf("service action 4: %v", err)
	}
}

func TestPRStateDecodeRejects(t *testing.T) {
	good := (&State{generation: 3, regs: []registration{{nexus: nxA, key: 1}}, resType: WriteExclusive, holder: nxA}).Encode()
	if _, err := Decode(good); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(b []byte) []byte{
		"version":   func(b []byte) []byte { b[0] = 2; return b },
		"short":     func(b []byte) []byte { return b[:5] },
		"truncated": func(b []byte) []byte { return b[:len(b)-1] },
		"trailing":  func(b []byte) []byte { return append(b, 0) },
		"type":      func(b []byte) []byte { b[6] = 2; return b },
		"holder":    func(b []byte) []byte { b[8] = 1; return b },
		"no holder": func(b []byte) []byte { b[7], b[8] = 0xff, 0xff; return b },
		"key 0":     func(b []byte) []byte { copy(b[11:19], make([]byte, 8)); return b },
		"count":     func(b []byte) []byte { b[10] = 2; return b },
	} {
		if _, err := Decode(edit(bytes.Clone(good))); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzPROut: the PERSISTENT RESERVE OUT parser and state machine never
// panic on any CDB and parameter list, keep the state's invariants, and
// every state they produce survives encode and decode.
func FuzzPROut(f *testing.F) {
	f.Add(byte(OutRegister), byte(0), proutParams(0, 1, 0), byte(0), byte(OutReserve), byte(ExclusiveAccess), proutParams(1, 0, 0))
	f.Add(byte(OutRegisterIgnore), byte(0), proutParams(0, 2, 5), byte(1), byte(OutPreempt), byte(WriteExclusiveAR), proutParams(2, 1, 0))
	f.Add(byte(OutClear), byte(0), make([]byte, 32), byte(2), byte(OutRelease), byte(0x13), proutParams(1, 1, 8))
	f.Fuzz(func(t *testing.T, sa1, st1 byte, p1 []byte, who2, sa2, st2 byte, p2 []byte) {
		nexuses := []Nexus{nxA, nxB, nxC}
		st := &State{regs: []registration{{nexus: nxB, key: 1}, {nexus: nxC, key: 2}}}
		for i, step := range []struct {
			who     Nexus
			sa, typ byte
			p       []byte
		}{{nxA, sa1, st1, p1}, {nexuses[int(who2)%3], sa2, st2, p2}} {
			cdb := proutCDB(step.sa, 0)
			cdb[2] = step.typ
			binary.BigEndian.PutUint32(cdb[5:], uint32(len(step.p)))
			o, err := st.Out(step.who, cdb, step.p, i == 0)
			if err != nil {
				if o.Next != nil {
					t.Fatalf("error %v with a new state", err)
				}
				continue
			}
			if o.Next == nil {
				continue
			}
			if err := o.Next.check(); err != nil {
				t.Fatal(err)
			}
			back, err := Decode(o.Next.Encode())
			if err != nil || !reflect.DeepEqual(normalize(back), normalize(o.Next)) {
				t.Fatalf("encode/decode: %v", err)
			}
			st = o.Next
		}
	})
}

// FuzzDecodePRState: decoding never panics, and what decodes re-encodes to
// the same bytes.
func FuzzDecodePRState(f *testing.F) {
	f.Add((&State{generation: 3, regs: []registration{{nexus: nxA, key: 1}}, resType: WriteExclusive, holder: nxA}).Encode())
	f.Add((&State{regs: []registration{{nexus: nxA, key: 1, allTgPt: true}, {nexus: nxB, key: 1}}, resType: ExclusiveAccessAR}).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Decode(b)
		if err != nil {
			return
		}
		if err := st.check(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(st.Encode(), b) {
			t.Fatal("re-encoding differs")
		}
	})
}

func be16(b []byte) uint32 { return uint32(binary.BigEndian.Uint16(b)) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// TestConflicts is the conflict rule: for each type, what a registered
// non-holder, an unregistered nexus (the zero Nexus of an NBD connection
// among them) and the holder may do.
func TestConflicts(t *testing.T) {
	for _, tc := range []struct {
		typ                            Type
		regRead, regWrite, unRd, unWrt bool // allowed
	}{
		{WriteExclusive, true, false, true, false},
		{ExclusiveAccess, false, false, false, false},
		{WriteExclusiveRO, true, true, true, false},
		{ExclusiveAccessRO, true, true, false, false},
		{WriteExclusiveAR, true, true, true, false},
		{ExclusiveAccessAR, true, true, false, false},
	} {
		st := &State{resType: tc.typ, regs: []registration{{nexus: nxA, key: 1}, {nexus: nxB, key: 2}}}
		if !tc.typ.allRegistrants() {
			st.holder = nxA
		}
		for _, c := range []struct {
			n       Nexus
			a       Access
			allowed bool
		}{
			{nxA, AccessRead, true}, {nxA, AccessWrite, true}, {nxA, AccessAllowed, true},
			{nxB, AccessRead, tc.regRead}, {nxB, AccessWrite, tc.regWrite},
			{nxC, AccessRead, tc.unRd}, {nxC, AccessWrite, tc.unWrt}, {nxC, AccessAllowed, true},
			{Nexus{}, AccessRead, tc.unRd}, {Nexus{}, AccessWrite, tc.unWrt},
			{nxA2, AccessWrite, tc.unWrt}, // same initiator, other ISID: another nexus
		} {
			if got := !st.Conflicts(c.n, c.a); got != c.allowed {
				t.Errorf("type %v nexus %v access %d: allowed %v, want %v", tc.typ, c.n, c.a, got, c.allowed)
			}
		}
	}
	if (&State{regs: []registration{{nexus: nxA, key: 1}}}).Conflicts(nxC, AccessWrite) {
		t.Error("registrations alone conflict")
	}
}
