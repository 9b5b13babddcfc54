package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"cairn/target/reservation"
)

// memStore is a ReservationStore in memory that can be told to fail.
type memStore struct {
	mu     sync.Mutex
	states map[string][]byte
	fail   bool
	saves  int
}

var _ ReservationStore = (*memStore)(nil)

func (m *memStore) LoadReservations(_ context.Context, iqn string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return nil, errors.New("store down")
	}
	return append([]byte(nil), m.states[iqn]...), nil
}

func (m *memStore) SaveReservations(_ context.Context, iqn string, state []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return errors.New("store down")
	}
	if len(state) > ReservationStateBytesMax {
		panic("state too large")
	}
	m.states[iqn] = append([]byte(nil), state...)
	m.saves++
	return nil
}

func (m *memStore) setFail(f bool) {
	m.mu.Lock()
	m.fail = f
	m.mu.Unlock()
}

// command runs one SCSI command and returns its status, sense key/ASC and
// Data-In.
func (r *rawInitiator) command(cdb []byte, edtl int, data []byte) (status, key, asc byte, in []byte) {
	r.t.Helper()
	itt := r.cmdSN
	r.scsi(itt, false, cdb, edtl, data == nil && edtl > 0, data != nil, data)
	for {
		p, ok := r.recv()
		if !ok {
			r.t.Fatal("connection ended")
		}
		switch p.hdr.opcode() {
		case opDataIn:
			in = append(in, p.data...)
			if p.hdr[1]&0x01 != 0 {
				return p.hdr[3], 0, 0, in
			}
		case opSCSIResp:
			if len(p.data) >= 2+fixedSenseBytes {
				key, asc = p.data[2+2]&0x0f, p.data[2+12]
			}
			return p.hdr[3], key, asc, in
		}
	}
}

func loginAs(t *testing.T, addr, name string) *rawInitiator {
	r := dial(t, addr)
	r.name = name
	if resp := r.login(testIQNSmall, 0); resp.hdr.u16(36) != 0 {
		t.Fatalf("login status %#x", resp.hdr.u16(36))
	}
	if st, key, _, _ := r.command(testUnitReady(), 0, nil); st != statusCheckCondition || key != keyUnitAttention {
		t.Fatalf("first TUR: status %#x key %#x, want the power-on unit attention", st, key)
	}
	return r
}

func prOut(r *rawInitiator, sa byte, typ reservation.Type, key, sark uint64) (status, senseKey, asc byte) {
	st, k, a, _ := r.command(proutCDB(sa, typ), prParamBytes, proutParams(key, sark, 0))
	return st, k, a
}

var syncCache10 = []byte{scsiSyncCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// TestReservationsPersist: a reservation made on one server is enforced by
// the next one over the same store; a PERSISTENT RESERVE OUT that cannot
// be saved fails with HARDWARE ERROR and changes nothing.
func TestReservationsPersist(t *testing.T) {
	store := &memStore{states: map[string][]byte{}}
	s1, addr, _ := testServer(t, Options{Reservations: store})
	a, b := loginAs(t, addr, "iqn.2026-01.test:a"), loginAs(t, addr, "iqn.2026-01.test:b")
	if st, _, _ := prOut(a, reservation.OutRegister, 0, 0, 0xa); st != statusGood {
		t.Fatalf("register: %#x", st)
	}
	if st, _, _ := prOut(a, reservation.OutReserve, reservation.ExclusiveAccess, 0xa, 0); st != statusGood {
		t.Fatalf("reserve: %#x", st)
	}
	if st, _, _, _ := b.command(syncCache10, 0, nil); st != statusResConflict {
		t.Fatalf("SYNCHRONIZE CACHE from another nexus: %#x, want RESERVATION CONFLICT", st)
	}
	if st, _, _, _ := a.command(syncCache10, 0, nil); st != statusGood {
		t.Fatalf("SYNCHRONIZE CACHE from the holder: %#x", st)
	}
	s1.Close()

	_, addr2, _ := testServer(t, Options{Reservations: store})
	a, b = loginAs(t, addr2, "iqn.2026-01.test:a"), loginAs(t, addr2, "iqn.2026-01.test:b")
	if st, _, _, _ := b.command(syncCache10, 0, nil); st != statusResConflict {
		t.Fatalf("after restart, SYNCHRONIZE CACHE from another nexus: %#x, want RESERVATION CONFLICT", st)
	}
	if st, _, _, _ := a.command(syncCache10, 0, nil); st != statusGood {
		t.Fatalf("after restart, SYNCHRONIZE CACHE from the holder: %#x", st)
	}

	store.setFail(true)
	saves := store.saves
	if st, key, asc := prOut(a, reservation.OutRegister, 0, 0xa, 0xb); st != statusCheckCondition || key != keyHardwareError || asc != 0x44 {
		t.Fatalf("unsaved register: status %#x sense %#x/%#x, want HARDWARE ERROR 44h", st, key, asc)
	}
	// The state is reloaded from the store: while it is down, commands fail
	// rather than run unchecked.
	if st, key, _, _ := b.command(syncCache10, 0, nil); st != statusCheckCondition || key != keyHardwareError {
		t.Fatalf("with the store down: status %#x key %#x", st, key)
	}
	store.setFail(false)
	readKeys := []byte{scsiPRIn, reservation.InReadKeys, 0, 0, 0, 0, 0, 0, 64, 0}
	st, _, _, in := a.command(readKeys, 64, nil)
	if st != statusGood || len(in) != 16 || binary.BigEndian.Uint64(in[8:]) != 0xa || store.saves != saves {
		t.Fatalf("after a failed save: status %#x keys % x (saves %d→%d), want key a only", st, in, saves, store.saves)
	}
	if st, _, _, _ := b.command(syncCache10, 0, nil); st != statusResConflict {
		t.Fatalf("after the store came back: %#x, want RESERVATION CONFLICT", st)
	}
}

// TestPreemptUnitAttention: the preempted nexus gets REGISTRATIONS
// PREEMPTED; an SPC-2 RESERVE ends with its I_T nexus.
func TestPreemptUnitAttention(t *testing.T) {
	_, addr, _ := testServer(t, Options{})
	a, b := loginAs(t, addr, "iqn.2026-01.test:a"), loginAs(t, addr, "iqn.2026-01.test:b")
	prOut(a, reservation.OutRegister, 0, 0, 0xa)
	prOut(b, reservation.OutRegister, 0, 0, 0xb)
	if st, _, _ := prOut(b, reservation.OutPreemptAbort, reservation.WriteExclusive, 0xb, 0xa); st != statusGood {
		t.Fatalf("preempt: %#x", st)
	}
	if st, key, asc, _ := a.command(testUnitReady(), 0, nil); st != statusCheckCondition || key != keyUnitAttention || asc != 0x2a {
		t.Fatalf("preempted nexus: status %#x sense %#x/%#x, want REGISTRATIONS PREEMPTED", st, key, asc)
	}
	if st, _, _ := prOut(b, reservation.OutRegister, 0, 0xb, 0); st != statusGood {
		t.Fatal("unregister")
	}
	reserve6 := []byte{scsiReserve6, 0, 0, 0, 0, 0}
	if st, _, _, _ := a.command(reserve6, 0, nil); st != statusGood {
		t.Fatalf("RESERVE(6): %#x", st)
	}
	if st, _, _, _ := b.command(testUnitReady(), 0, nil); st != statusResConflict {
		t.Fatalf("TUR under another's RESERVE(6): %#x", st)
	}
	a.nc.Close()
	for range 200 { // the nexus loss releases it
		if st, _, _, _ := b.command(reserve6, 0, nil); st == statusGood {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("RESERVE(6) not released by the I_T nexus loss")
}
