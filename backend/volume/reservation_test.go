package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"cairn/target"
	"cairn/target/reservation"
)

// prOut runs PERSISTENT RESERVE OUT through the volume's unit, as the
// iSCSI front end does.
func prOut(t *testing.T, v *Volume, n reservation.Nexus, sa byte, typ reservation.Type, key, sark uint64) {
	t.Helper()
	cdb := make([]byte, 10)
	cdb[0], cdb[1], cdb[2] = 0x5f, sa, byte(typ)
	binary.BigEndian.PutUint32(cdb[5:], 24)
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:], key)
	binary.BigEndian.PutUint64(p[8:], sark)
	if _, err := v.Reservations().Out(ctx, n, cdb, p); err != nil {
		t.Fatalf("PR OUT %#x: %v", sa, err)
	}
}

// TestReservationsAtAdmission: a reservation refuses the write-class
// requests of a requester it excludes (a context with no nexus: an NBD
// connection) whatever the call, and its reads per the type; the holder
// and registrants pass; once released everything passes again.
func TestReservationsAtAdmission(t *testing.T) {
	v := openVolume(t, openStore(t), 1<<20)
	holder := reservation.NewNexus("iqn.2026-12.test:holder", [6]byte{0x40, 0, 0, 0, 0, 1})
	reg := reservation.NewNexus("iqn.2026-12.test:other", [6]byte{0x40, 0, 0, 0, 0, 2})
	hctx, rctx := reservation.WithNexus(ctx, holder), reservation.WithNexus(ctx, reg)
	p := make([]byte, 4096)
	calls := map[string]func(context.Context) error{
		"write":   func(c context.Context) error { return v.WriteAt(c, p, 0, 0) },
		"partial": func(c context.Context) error { return v.WriteAt(c, p[:100], 10, target.FUA) },
		"zero":    func(c context.Context) error { return v.Zero(c, 0, 8192, target.ZeroNoHole) },
		"trim":    func(c context.Context) error { return v.Zero(c, 4096, 4096, target.ZeroDiscard) },
		"read":    func(c context.Context) error { return v.ReadAt(c, p, 0) },
		"extents": func(c context.Context) error {
			return v.Extents(c, 0, 4096, func(target.Extent) bool { return true })
		},
		"flush": func(c context.Context) error { return v.Flush(c) },
		"caw": func(c context.Context) error {
			cur := make([]byte, 4096)
			if err := v.ReadAt(hctx, cur, 8192); err != nil { // the holder always reads
				return err
			}
			return v.CompareAndWrite(c, cur, cur, 8192, 0)
		},
	}
	expect := func(stage string, c context.Context, refused ...string) {
		t.Helper()
		no := map[string]bool{}
		for _, r := range refused {
			no[r] = true
		}
		for name, call := range calls {
			err := call(c)
			if no[name] != errors.Is(err, target.ErrReservationConflict) || (err != nil && !no[name]) {
				t.Errorf("%s: %s (%v): %v, refused %v", stage, name, reservation.NexusFrom(c), err, no[name])
			}
		}
	}
	expect("no reservation", ctx)
	prOut(t, v, holder, 0x00, 0, 0, 0xa) // REGISTER
	prOut(t, v, reg, 0x00, 0, 0, 0xb)
	expect("registered only", ctx)
	prOut(t, v, holder, 0x01, reservation.WriteExclusiveRO, 0xa, 0) // RESERVE
	expect("WE-RO, unregistered", ctx, "write", "partial", "zero", "trim", "caw")
	expect("WE-RO, holder", hctx)
	expect("WE-RO, registrant", rctx)
	prOut(t, v, holder, 0x02, reservation.WriteExclusiveRO, 0xa, 0) // RELEASE
	prOut(t, v, holder, 0x01, reservation.ExclusiveAccess, 0xa, 0)
	expect("EA, unregistered", ctx, "write", "partial", "zero", "trim", "caw", "read", "extents", "flush")
	expect("EA, registrant", rctx, "write", "partial", "zero", "trim", "caw", "read", "extents", "flush")
	expect("EA, holder", hctx)
	prOut(t, v, holder, 0x02, reservation.ExclusiveAccess, 0xa, 0)
	expect("released", ctx)
	if s := v.Stats(); s.Errors == 0 {
		t.Fatal("refused requests not counted as errors")
	}
	if v.InFlight() != 0 {
		t.Fatalf("%d requests left inside after refusals", v.InFlight())
	}
}

// failingStore is a reservation store that cannot load.
type failingStore struct{}

func (failingStore) Load(context.Context) ([]byte, error) { return nil, errors.New("catalog down") }
func (failingStore) Save(context.Context, []byte) error   { return errors.New("catalog down") }

// TestReservationsUnknown: a volume that cannot learn its reservations
// refuses requests (it cannot tell whether they are fenced) with an error,
// and lets nothing in.
func TestReservationsUnknown(t *testing.T) {
	v, err := Open(Options{ID: 7, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: NewLocal(openStore(t)), Reservations: failingStore{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, make([]byte, 4096), 0, 0); !errors.Is(err, reservation.ErrStore) {
		t.Fatalf("write with unknown reservations: %v", err)
	}
	if v.InFlight() != 0 {
		t.Fatal("refused request left inside")
	}
}
