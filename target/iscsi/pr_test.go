package iscsi

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
	nxA  = nexus{name: "iqn.a", isid: [6]byte{0x40, 0, 0, 0, 0, 1}}
	nxA2 = nexus{name: "iqn.a", isid: [6]byte{0x40, 0, 0, 0, 0, 2}} // same initiator, other ISID
	nxB  = nexus{name: "iqn.b", isid: [6]byte{0x40, 0, 0, 0, 0, 1}}
	nxC  = nexus{name: "iqn.c", isid: [6]byte{0x40, 0, 0, 0, 0, 1}}
)

func proutCDB(sa byte, typ prType) []byte {
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

// prStep is one PERSISTENT RESERVE OUT and what must follow.
type prStep struct {
	who       nexus
	sa        byte
	typ       prType
	key, sark uint64
	err       error    // nil, errReservationConflict or a sense
	keys      []uint64 // registered keys afterwards, in order
	res       prType
	holder    nexus // when res is not all registrants
	gen       uint32
	uas       []prUA
	abort     []nexus
}

func TestPROut(t *testing.T) {
	ua := func(n nexus, s sense) prUA { return prUA{n, s} }
	for _, tc := range []struct {
		name  string
		steps []prStep
	}{
		{"register", []prStep{
			{who: nxA, sa: prRegister, key: 1, sark: 2, err: errReservationConflict},
			{who: nxA, sa: prRegister, sark: 0}, // nothing to do
			{who: nxA, sa: prRegister, sark: 10, keys: []uint64{10}, gen: 1},
			{who: nxA, sa: prRegister, key: 11, sark: 12, err: errReservationConflict, keys: []uint64{10}, gen: 1},
			{who: nxA, sa: prRegister, key: 10, sark: 12, keys: []uint64{12}, gen: 2},
			{who: nxA2, sa: prRegisterIgnore, key: 99, sark: 12, keys: []uint64{12, 12}, gen: 3}, // other ISID, other nexus
			{who: nxA, sa: prRegisterIgnore, key: 99, sark: 13, keys: []uint64{13, 12}, gen: 4},
			{who: nxA, sa: prRegister, key: 13, sark: 0, keys: []uint64{12}, gen: 5},
			{who: nxA, sa: prRegisterMove, key: 13, err: senseInvalidFieldCDB, keys: []uint64{12}, gen: 5},
			{who: nxA, sa: 0x1f, err: senseInvalidFieldCDB, keys: []uint64{12}, gen: 5},
		}},
		{"reserve release", []prStep{
			{who: nxA, sa: prReserve, typ: prExclusiveAccess, key: 1, err: errReservationConflict},
			{who: nxA, sa: prRegister, sark: 1, keys: []uint64{1}, gen: 1},
			{who: nxB, sa: prRegister, sark: 2, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: prReserve, typ: 2, key: 1, err: senseInvalidFieldCDB, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: prReserve, typ: prExclusiveAccess, key: 2, err: errReservationConflict, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: prReserve, typ: prExclusiveAccess, key: 1, keys: []uint64{1, 2}, res: prExclusiveAccess, holder: nxA, gen: 2},
			{who: nxA, sa: prReserve, typ: prExclusiveAccess, key: 1, keys: []uint64{1, 2}, res: prExclusiveAccess, holder: nxA, gen: 2},
			{who: nxA, sa: prReserve, typ: prWriteExclusive, key: 1, err: errReservationConflict, keys: []uint64{1, 2}, res: prExclusiveAccess, holder: nxA, gen: 2},
			{who: nxB, sa: prReserve, typ: prExclusiveAccess, key: 2, err: errReservationConflict, keys: []uint64{1, 2}, res: prExclusiveAccess, holder: nxA, gen: 2},
			{who: nxB, sa: prRelease, typ: prExclusiveAccess, key: 2, keys: []uint64{1, 2}, res: prExclusiveAccess, holder: nxA, gen: 2}, // not the holder: nothing
			{who: nxA, sa: prRelease, typ: prWriteExclusive, key: 1, err: senseInvalidRelease, keys: []uint64{1, 2}, res: prExclusiveAccess, holder: nxA, gen: 2},
			{who: nxA, sa: prRelease, typ: prExclusiveAccess, key: 1, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: prReserve, typ: prWriteExclusiveRO, key: 1, keys: []uint64{1, 2}, res: prWriteExclusiveRO, holder: nxA, gen: 2},
			{who: nxA, sa: prRelease, typ: prWriteExclusiveRO, key: 1, keys: []uint64{1, 2}, gen: 2, uas: []prUA{ua(nxB, uaReservationsReleased)}},
		}},
		{"holder unregisters", []prStep{
			{who: nxA, sa: prRegister, sark: 1, keys: []uint64{1}, gen: 1},
			{who: nxB, sa: prRegister, sark: 2, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: prReserve, typ: prExclusiveAccessRO, key: 1, keys: []uint64{1, 2}, res: prExclusiveAccessRO, holder: nxA, gen: 2},
			{who: nxA, sa: prRegister, key: 1, keys: []uint64{2}, gen: 3, uas: []prUA{ua(nxB, uaReservationsReleased)}},
			{who: nxB, sa: prReserve, typ: prWriteExclusiveAR, key: 2, keys: []uint64{2}, res: prWriteExclusiveAR, gen: 3},
			{who: nxA, sa: prRegister, sark: 1, keys: []uint64{2, 1}, res: prWriteExclusiveAR, gen: 4},
			{who: nxA, sa: prReserve, typ: prWriteExclusiveAR, key: 1, keys: []uint64{2, 1}, res: prWriteExclusiveAR, gen: 4}, // a holder too
			{who: nxB, sa: prRegister, key: 2, keys: []uint64{1}, res: prWriteExclusiveAR, gen: 5},                            // stays: A is registered
			{who: nxA, sa: prRegister, key: 1, gen: 6},                                                                        // last one: released
		}},
		{"clear", []prStep{
			{who: nxA, sa: prRegister, sark: 1, keys: []uint64{1}, gen: 1},
			{who: nxB, sa: prRegister, sark: 2, keys: []uint64{1, 2}, gen: 2},
			{who: nxA, sa: prReserve, typ: prExclusiveAccess, key: 1, keys: []uint64{1, 2}, res: prExclusiveAccess, holder: nxA, gen: 2},
			{who: nxC, sa: prClear, key: 3, err: errReservationConflict, keys: []uint64{1, 2}, res: prExclusiveAccess, holder: nxA, gen: 2},
			{who: nxB, sa: prClear, key: 2, gen: 3, uas: []prUA{ua(nxA, uaReservationsPreempted)}},
		}},
		{"preempt", []prStep{
			{who: nxA, sa: prRegister, sark: 1, keys: []uint64{1}, gen: 1},
			{who: nxB, sa: prRegister, sark: 2, keys: []uint64{1, 2}, gen: 2},
			{who: nxC, sa: prRegister, sark: 3, keys: []uint64{1, 2, 3}, gen: 3},
			// No reservation: removes registrations only.
			{who: nxB, sa: prPreempt, typ: prExclusiveAccess, key: 2, sark: 9, err: errReservationConflict, keys: []uint64{1, 2, 3}, gen: 3},
			{who: nxB, sa: prPreempt, typ: prExclusiveAccess, key: 2, sark: 1, keys: []uint64{2, 3}, gen: 4, uas: []prUA{ua(nxA, uaRegistrationsPreempted)}},
			{who: nxA, sa: prRegister, sark: 1, keys: []uint64{2, 3, 1}, gen: 5},
			{who: nxA, sa: prReserve, typ: prWriteExclusive, key: 1, keys: []uint64{2, 3, 1}, res: prWriteExclusive, holder: nxA, gen: 5},
			// Not the holder's key: registrations only; zero is invalid.
			{who: nxB, sa: prPreempt, typ: prExclusiveAccess, key: 2, sark: 0, err: senseInvalidFieldParam, keys: []uint64{2, 3, 1}, res: prWriteExclusive, holder: nxA, gen: 5},
			{who: nxB, sa: prPreempt, typ: prExclusiveAccess, key: 2, sark: 3, keys: []uint64{2, 1}, res: prWriteExclusive, holder: nxA, gen: 6, uas: []prUA{ua(nxC, uaRegistrationsPreempted)}},
			// The holder's key: the reservation moves, with its new type.
			{who: nxB, sa: prPreemptAbort, typ: prExclusiveAccess, key: 2, sark: 1, keys: []uint64{2}, res: prExclusiveAccess, holder: nxB, gen: 7,
				uas: []prUA{ua(nxA, uaRegistrationsPreempted)}, abort: []nexus{nxA}},
			{who: nxB, sa: prPreempt, typ: prExclusiveAccess, key: 2, sark: 1, err: errReservationConflict, keys: []uint64{2}, res: prExclusiveAccess, holder: nxB, gen: 7},
			// Self-preempt changes the type and keeps the registration.
			{who: nxC, sa: prRegister, sark: 3, keys: []uint64{2, 3}, res: prExclusiveAccess, holder: nxB, gen: 8},
			{who: nxB, sa: prPreempt, typ: prWriteExclusiveAR, key: 2, sark: 2, keys: []uint64{2, 3}, res: prWriteExclusiveAR, gen: 9,
				uas: []prUA{ua(nxC, uaReservationsReleased)}},
			// All registrants, SARK 0: everyone else goes.
			{who: nxA, sa: prRegister, sark: 1, keys: []uint64{2, 3, 1}, res: prWriteExclusiveAR, gen: 10},
			{who: nxC, sa: prPreempt, typ: prExclusiveAccess, key: 3, sark: 0, keys: []uint64{3}, res: prExclusiveAccess, holder: nxC, gen: 11,
				uas: []prUA{ua(nxB, uaRegistrationsPreempted), ua(nxA, uaRegistrationsPreempted)}},
			{who: nxC, sa: prPreempt, typ: prExclusiveAccess, key: 3, sark: 3, keys: []uint64{3}, res: prExclusiveAccess, holder: nxC, gen: 12},
			{who: nxC, sa: prPreempt, typ: 2, key: 3, sark: 3, err: senseInvalidFieldCDB, keys: []uint64{3}, res: prExclusiveAccess, holder: nxC, gen: 12},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &prState{}
			for i, s := range tc.steps {
				o, err := st.out(s.who, proutCDB(s.sa, s.typ), proutParams(s.key, s.sark, 0), false)
				if !errors.Is(err, s.err) && err != s.err {
					t.Fatalf("step %d: %v, want %v", i, err, s.err)
				}
				if o.next != nil {
					st = o.next
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
				if !reflect.DeepEqual(o.uas, s.uas) || !reflect.DeepEqual(o.abort, s.abort) {
					t.Fatalf("step %d: unit attentions %v aborts %v; want %v %v", i, o.uas, o.abort, s.uas, s.abort)
				}
				if back, err := decodePRState(st.encode()); err != nil || !reflect.DeepEqual(normalize(back), normalize(st)) {
					t.Fatalf("step %d: encode/decode: %v\n%+v\n%+v", i, err, back, st)
				}
			}
		})
	}
}

func normalize(s *prState) *prState {
	c := s.clone()
	if len(c.regs) == 0 {
		c.regs = nil
	}
	return c
}

// check verifies the invariants of a state.
func (s *prState) check() error {
	if len(s.regs) > RegistrationsMax {
		return fmt.Errorf("%d registrations", len(s.regs))
	}
	seen := map[nexus]bool{}
	for _, r := range s.regs {
		if r.key == 0 || seen[r.nexus] {
			return fmt.Errorf("registration %+v: key 0 or twice", r)
		}
		seen[r.nexus] = true
	}
	switch {
	case s.resType == 0:
		if s.holder != (nexus{}) {
			return errors.New("holder without reservation")
		}
	case s.resType.allRegistrants():
		if len(s.regs) == 0 || s.holder != (nexus{}) {
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
		{23, proutParams(0, 1, 0)[:23], senseParamListLength},
		{32, append(proutParams(0, 1, 0), make([]byte, 8)...), senseParamListLength},
		{32, append(proutParams(0, 1, 0x08), make([]byte, 8)...), senseInvalidFieldParam}, // SPEC_I_PT
		{24, proutParams(0, 1, 0x01), senseInvalidFieldParam},                             // APTPL, not persistent
	} {
		cdb := proutCDB(prRegister, 0)
		binary.BigEndian.PutUint32(cdb[5:], tc.plen)
		if _, err := (&prState{}).out(nxA, cdb, tc.param, false); err != tc.err {
			t.Errorf("plen %d flags %#x: %v, want %v", tc.plen, tc.param[min(20, len(tc.param)-1)], err, tc.err)
		}
	}
	o, err := (&prState{}).out(nxA, proutCDB(prRegister, 0), proutParams(0, 1, 0x05), true)
	if err != nil || !o.next.aptpl || !o.next.regs[0].allTgPt {
		t.Fatalf("APTPL and ALL_TG_PT when persistent: %v %+v", err, o.next)
	}
	if _, err := (&prState{}).out(nxA, proutCDB(prReserve, prExclusiveAccess)[:], proutParams(1, 0, 0), false); err != errReservationConflict {
		t.Fatal(err)
	}
	cdb := proutCDB(prReserve, prExclusiveAccess)
	cdb[2] |= 0x10 // scope
	if _, err := (&prState{}).out(nxA, cdb, proutParams(1, 0, 0), false); err != senseInvalidFieldCDB {
		t.Fatal(err)
	}
}

func TestPRRegistrationsMax(t *testing.T) {
	st := &prState{}
	long := strings.Repeat("n", initiatorNameBytesMax)
	for i := range RegistrationsMax + 1 {
		n := nexus{name: long, isid: [6]byte{byte(i >> 8), byte(i)}}
		o, err := st.out(n, proutCDB(prRegister, 0), proutParams(0, uint64(i+1), 0), true)
		if i == RegistrationsMax {
			if err != senseInsufficientRegistration {
				t.Fatalf("registration %d: %v", i, err)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		st = o.next
	}
	if n := len(st.encode()); n > ReservationStateBytesMax {
		t.Fatalf("full state encodes to %d bytes > %d", n, ReservationStateBytesMax)
	}
	if _, err := st.out(nexus{name: long + "x"}, proutCDB(prRegisterIgnore, 0), proutParams(0, 1, 0), true); err != senseInsufficientRegistration {
		t.Fatalf("name too long: %v", err)
	}
}

// TestPRConflicts is the conflict table: for each type, which commands a
// registered non-holder, an unregistered nexus and the holder may run.
func TestPRConflicts(t *testing.T) {
	cdb := func(b ...byte) []byte { return append(b, make([]byte, 16-len(b))...) }
	read, write := cdb(scsiRead10), cdb(scsiWrite10)
	for _, tc := range []struct {
		typ                            prType
		regRead, regWrite, unRd, unWrt bool // allowed
	}{
		{prWriteExclusive, true, false, true, false},
		{prExclusiveAccess, false, false, false, false},
		{prWriteExclusiveRO, true, true, true, false},
		{prExclusiveAccessRO, true, true, false, false},
		{prWriteExclusiveAR, true, true, true, false},
		{prExclusiveAccessAR, true, true, false, false},
	} {
		st := &prState{resType: tc.typ, regs: []registration{{nexus: nxA, key: 1}, {nexus: nxB, key: 2}}}
		if !tc.typ.allRegistrants() {
			st.holder = nxA
		}
		for _, c := range []struct {
			n       nexus
			cdb     []byte
			allowed bool
		}{
			{nxA, read, true}, {nxA, write, true},
			{nxB, read, tc.regRead}, {nxB, write, tc.regWrite},
			{nxC, read, tc.unRd}, {nxC, write, tc.unWrt},
			{nxA2, write, tc.unWrt}, // same initiator, other ISID: another nexus
		} {
			if got := !st.conflicts(c.n, c.cdb); got != c.allowed {
				t.Errorf("type %d nexus %v op %#x: allowed %v, want %v", tc.typ, c.n, c.cdb[0], got, c.allowed)
			}
		}
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
			if tc.typ.exclusiveAccess() {
				want = c.ea
			}
			if got := !st.conflicts(nxC, c.cdb); got != want {
				t.Errorf("type %d op %#x %#x: allowed %v, want %v", tc.typ, c.cdb[0], c.cdb[1], got, want)
			}
		}
	}
	if (&prState{regs: []registration{{nexus: nxA, key: 1}}}).conflicts(nxC, write) {
		t.Error("registrations alone conflict")
	}
}

func TestPRIn(t *testing.T) {
	st := &prState{generation: 7, regs: []registration{{nexus: nxA, key: 0x11}, {nexus: nxB, key: 0x22, allTgPt: true}},
		resType: prExclusiveAccess, holder: nxB}
	in := func(sa byte) []byte {
		b, err := st.in([]byte{scsiPRIn, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, true)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if b := in(prReadKeys); !bytes.Equal(b, []byte{0, 0, 0, 7, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0, 0, 0, 0x22}) {
		t.Errorf("READ KEYS % x", b)
	}
	if b := in(prReadReservation); len(b) != 24 || be32(b[4:]) != 16 || be64(b[8:]) != 0x22 || b[21] != 0x03 {
		t.Errorf("READ RESERVATION % x", b)
	}
	if b := in(prReportCapabilities); !bytes.Equal(b, []byte{0, 8, 0x05, 0xb0, 0xea, 0x01, 0, 0}) {
		t.Errorf("REPORT CAPABILITIES % x", b)
	}
	b := in(prReadFullStatus)
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
	if _, err := st.in([]byte{scsiPRIn, 4, 0, 0, 0, 0, 0, 0, 8, 0}, true); err != senseInvalidFieldCDB {
		t.Errorf("service action 4: %v", err)
	}
}

func TestPRStateDecodeRejects(t *testing.T) {
	good := (&prState{generation: 3, regs: []registration{{nexus: nxA, key: 1}}, resType: prWriteExclusive, holder: nxA}).encode()
	if _, err := decodePRState(good); err != nil {
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
		if _, err := decodePRState(edit(bytes.Clone(good))); !errors.Is(err, errBadPRState) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzPROut: the PERSISTENT RESERVE OUT parser and state machine never
// panic on any CDB and parameter list, keep the state's invariants, and
// every state they produce survives encode and decode.
func FuzzPROut(f *testing.F) {
	f.Add(byte(prRegister), byte(0), proutParams(0, 1, 0), byte(0), byte(prReserve), byte(prExclusiveAccess), proutParams(1, 0, 0))
	f.Add(byte(prRegisterIgnore), byte(0), proutParams(0, 2, 5), byte(1), byte(prPreempt), byte(prWriteExclusiveAR), proutParams(2, 1, 0))
	f.Add(byte(prClear), byte(0), make([]byte, 32), byte(2), byte(prRelease), byte(0x13), proutParams(1, 1, 8))
	f.Fuzz(func(t *testing.T, sa1, st1 byte, p1 []byte, who2, sa2, st2 byte, p2 []byte) {
		nexuses := []nexus{nxA, nxB, nxC}
		st := &prState{regs: []registration{{nexus: nxB, key: 1}, {nexus: nxC, key: 2}}}
		for i, step := range []struct {
			who     nexus
			sa, typ byte
			p       []byte
		}{{nxA, sa1, st1, p1}, {nexuses[int(who2)%3], sa2, st2, p2}} {
			cdb := proutCDB(step.sa, 0)
			cdb[2] = step.typ
			binary.BigEndian.PutUint32(cdb[5:], uint32(len(step.p)))
			o, err := st.out(step.who, cdb, step.p, i == 0)
			if err != nil {
				if o.next != nil {
					t.Fatalf("error %v with a new state", err)
				}
				continue
			}
			if o.next == nil {
				continue
			}
			if err := o.next.check(); err != nil {
				t.Fatal(err)
			}
			back, err := decodePRState(o.next.encode())
			if err != nil || !reflect.DeepEqual(normalize(back), normalize(o.next)) {
				t.Fatalf("encode/decode: %v", err)
			}
			st = o.next
		}
	})
}

// FuzzDecodePRState: decoding never panics, and what decodes re-encodes to
// the same bytes.
func FuzzDecodePRState(f *testing.F) {
	f.Add((&prState{generation: 3, regs: []registration{{nexus: nxA, key: 1}}, resType: prWriteExclusive, holder: nxA}).encode())
	f.Add((&prState{regs: []registration{{nexus: nxA, key: 1, allTgPt: true}, {nexus: nxB, key: 1}}, resType: prExclusiveAccessAR}).encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodePRState(b)
		if err != nil {
			return
		}
		if err := st.check(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(st.encode(), b) {
			t.Fatal("re-encoding differs")
		}
	})
}
