package reservation

import (
	"context"
	"errors"
	"sync"
	"testing"

	"cairn/target"
)

// memStore is a Store in memory that can be told to fail.
type memStore struct {
	mu    sync.Mutex
	state []byte
	fail  bool
	saves int
}

func (m *memStore) Load(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return nil, errors.New("store down")
	}
	return append([]byte(nil), m.state...), nil
}

func (m *memStore) Save(_ context.Context, state []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return errors.New("store down")
	}
	m.state = append([]byte(nil), state...)
	m.saves++
	return nil
}

func (m *memStore) setFail(f bool) {
	m.mu.Lock()
	m.fail = f
	m.mu.Unlock()
}

func out(t *testing.T, u *Unit, n Nexus, sa byte, typ Type, key, sark uint64) error {
	t.Helper()
	_, err := u.Out(context.Background(), n, proutCDB(sa, typ), proutParams(key, sark, 0))
	return err
}

// TestUnitCheck: a reservation taken by one nexus is enforced through
// Check on the nexus a context carries; an unregistered requester (no
// nexus) is fenced from writes under Write Exclusive, registrants only,
// and reads follow the type.
func TestUnitCheck(t *testing.T) {
	ctx := context.Background()
	store := &memStore{}
	u := NewUnit(store)
	if err := u.Check(ctx, AccessWrite); err != nil {
		t.Fatalf("no reservation: %v", err)
	}
	var nilUnit *Unit
	if err := nilUnit.Check(ctx, AccessWrite); err != nil {
		t.Fatalf("nil unit: %v", err)
	}
	ctxA, ctxB := WithNexus(ctx, nxA), WithNexus(ctx, nxB)
	for _, step := range []struct {
		n       Nexus
		sa      byte
		typ     Type
		key, sk uint64
	}{{nxA, OutRegister, 0, 0, 1}, {nxB, OutRegister, 0, 0, 2}, {nxA, OutReserve, WriteExclusiveRO, 1, 0}} {
		if err := out(t, u, step.n, step.sa, step.typ, step.key, step.sk); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		ctx      context.Context
		a        Access
		conflict bool
	}{
		{ctxA, AccessWrite, false}, {ctxB, AccessWrite, false}, {ctx, AccessWrite, true}, {ctx, AccessRead, false},
		{WithNexus(ctx, nxC), AccessWrite, true}, {ctx, AccessAllowed, false},
	} {
		err := u.Check(c.ctx, c.a)
		if got := errors.Is(err, target.ErrReservationConflict); got != c.conflict || (err != nil && !got) {
			t.Errorf("nexus %v access %d: %v, want conflict %v", NexusFrom(c.ctx), c.a, err, c.conflict)
		}
	}
	// A new unit over the same store (a restart, another attachment) sees
	// the saved state.
	u2 := NewUnit(store)
	if err := u2.Check(ctx, AccessWrite); !errors.Is(err, target.ErrReservationConflict) {
		t.Fatalf("reloaded unit: %v", err)
	}
	if err := out(t, u2, nxA, OutRelease, WriteExclusiveRO, 1, 0); err != nil {
		t.Fatal(err)
	}
	if err := u2.Check(ctx, AccessWrite); err != nil {
		t.Fatalf("released: %v", err)
	}
	// Exclusive Access fences reads too.
	if err := out(t, u2, nxB, OutReserve, ExclusiveAccess, 2, 0); err != nil {
		t.Fatal(err)
	}
	if err := u2.Check(ctxA, AccessRead); !errors.Is(err, target.ErrReservationConflict) {
		t.Fatalf("read under Exclusive Access: %v", err)
	}
	if err := u2.Check(ctxB, AccessRead); err != nil {
		t.Fatalf("holder's read: %v", err)
	}
}

// TestUnitSPC2: an SPC-2 RESERVE fences every other requester, and is
// refused while registrations exist.
func TestUnitSPC2(t *testing.T) {
	ctx := context.Background()
	u := NewUnit(nil)
	if u.Persistent() {
		t.Fatal("unit without store is persistent")
	}
	if err := u.Reserve(ctx, nxA); err != nil {
		t.Fatal(err)
	}
	if err := u.Reserve(ctx, nxB); !errors.Is(err, target.ErrReservationConflict) {
		t.Fatalf("second RESERVE: %v", err)
	}
	if err := u.Check(ctx, AccessRead); !errors.Is(err, target.ErrReservationConflict) {
		t.Fatalf("read under SPC-2 reservation: %v", err)
	}
	if err := u.Check(WithNexus(ctx, nxA), AccessWrite); err != nil {
		t.Fatalf("holder: %v", err)
	}
	if err := u.Release(ctx, nxB); err != nil {
		t.Fatal(err)
	}
	if h, ok := u.SPC2Holder(); !ok || h != nxA {
		t.Fatalf("RELEASE from another nexus released: %v %v", h, ok)
	}
	u.ReleaseSPC2(nxB, false)
	if _, ok := u.SPC2Holder(); !ok {
		t.Fatal("nexus loss of another nexus released")
	}
	u.ReleaseSPC2(Nexus{}, true)
	if err := u.Check(ctx, AccessWrite); err != nil {
		t.Fatalf("after reset: %v", err)
	}
	if err := out(t, u, nxA, OutRegister, 0, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := u.Reserve(ctx, nxA); !errors.Is(err, target.ErrReservationConflict) {
		t.Fatalf("RESERVE with registrations: %v", err)
	}
}

// TestUnitStoreFailure: a change the store cannot save fails with
// ErrStore and is not enforced; a load that fails fails the check (never
// a silent pass), and the next one retries.
func TestUnitStoreFailure(t *testing.T) {
	ctx := context.Background()
	store := &memStore{}
	u := NewUnit(store)
	if err := out(t, u, nxA, OutRegister, 0, 0, 1); err != nil {
		t.Fatal(err)
	}
	store.setFail(true)
	if err := out(t, u, nxA, OutReserve, WriteExclusive, 1, 0); !errors.Is(err, ErrStore) {
		t.Fatalf("reserve with the store down: %v", err)
	}
	if err := u.Check(ctx, AccessWrite); !errors.Is(err, ErrStore) {
		t.Fatalf("check with the store down after a failed save: %v", err)
	}
	store.setFail(false)
	if err := u.Check(ctx, AccessWrite); err != nil {
		t.Fatalf("check after the store came back: %v", err)
	}
	st, err := u.State(ctx)
	if err != nil || st.Type() != 0 || len(st.Registrations()) != 1 {
		t.Fatalf("state after a failed save: %v %+v", err, st)
	}
	store.mu.Lock()
	store.state = []byte{9, 9, 9}
	store.mu.Unlock()
	if err := NewUnit(store).Check(ctx, AccessWrite); !errors.Is(err, ErrStore) || !errors.Is(err, ErrBadState) {
		t.Fatalf("undecodable state: %v", err)
	}
}

// TestCheckAllocs: the check of a request allocates nothing when no
// reservation conflicts.
func TestCheckAllocs(t *testing.T) {
	u := NewUnit(nil)
	ctx := WithNexus(context.Background(), nxA)
	if err := out(t, u, nxA, OutRegister, 0, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := out(t, u, nxA, OutReserve, WriteExclusive, 1, 0); err != nil {
		t.Fatal(err)
	}
	if a := testing.AllocsPerRun(100, func() { _ = u.Check(ctx, AccessWrite) }); a != 0 {
		t.Fatalf("%v allocations per check", a)
	}
}
