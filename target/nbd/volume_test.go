package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/target"
	"cairn/target/reservation"
)

// These tests export a real volume (over an in-memory store) and check
// that the rules the volume keeps for every front end hold for NBD
// requests on the wire: COMPARE AND WRITE from another front end is
// atomic against them, and a SCSI reservation fences them.

func volumeExport(t *testing.T) (*Server, *volume.Volume) {
	t.Helper()
	st, err := store.Open("db", store.Options{FS: vfs.NewMem(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// A node latency, as a network would add, keeps each request inside the
	// volume long enough for the requests of a round to overlap.
	slow, err := volume.NewLatency(st, 100*time.Microsecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slow.Close() })
	v, err := volume.Open(volume.Options{ID: 1, Size: 4 << 20, Generation: 1, Epoch: 1, Placement: volume.NewLocal(slow)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return newServer(t, mapExports{"vol": v}, Options{}), v
}

// TestCompareAndWriteRacesNBD: compare-and-writes of a range (as the
// iSCSI front end issues them) race NBD writes of parts of it, round
// after round; each outcome must be one a serial order gives: the CAW
// succeeds only if it ran before both writes (each changes its part), the
// NBD parts always land whole, and the rest is the CAW's data or the old.
func TestCompareAndWriteRacesNBD(t *testing.T) {
	s, v := volumeExport(t)
	const n = 4 * 4096
	type part struct {
		off  int64
		data []byte
	}
	parts := []part{{4096, bytes.Repeat([]byte{0xa0}, 4096)}, {3*4096 + 100, bytes.Repeat([]byte{0xb0}, 700)}}
	clients := make([]*client, len(parts))
	for i := range clients {
		clients[i] = pipe(t, s)
		clients[i].open("vol", false)
	}
	rounds := 200
	if raceEnabled {
		rounds = 100
	}
	for round := range rounds {
		base := int64(round%32) * n
		old := bytes.Repeat([]byte{byte(round)*2 + 1}, n)
		if r := clients[0].do(Request{Type: CmdWrite, Cookie: 1, Offset: uint64(base), Length: n}, old); r.errno != 0 {
			t.Fatalf("round %d: write: errno %d", round, r.errno)
		}
		next := bytes.Repeat([]byte{0xcc}, n)
		start := make(chan struct{})
		var cawErr error
		errnos := make([]uint32, len(parts))
		var wg sync.WaitGroup
		wg.Add(1 + len(parts))
		go func() {
			defer wg.Done()
			<-start
			cawErr = v.CompareAndWrite(context.Background(), old, next, base, 0)
		}()
		for i, p := range parts {
			go func() {
				defer wg.Done()
				<-start
				r := clients[i].do(Request{Type: CmdWrite, Cookie: uint64(round), Offset: uint64(base + p.off), Length: uint32(len(p.data))}, p.data)
				errnos[i] = r.errno
			}()
		}
		close(start)
		wg.Wait()
		if slices.ContainsFunc(errnos, func(e uint32) bool { return e != 0 }) {
			t.Fatalf("round %d: NBD writes: errnos %v", round, errnos)
		}
		want := old
		var mis *target.MiscompareError
		switch {
		case cawErr == nil:
			want = next
		case errors.As(cawErr, &mis):
			if mis.Offset != parts[0].off && mis.Offset != parts[1].off {
				t.Fatalf("round %d: miscompare at %d: no serial order differs there first", round, mis.Offset)
			}
		default:
			t.Fatalf("round %d: compare and write: %v", round, cawErr)
		}
		want = bytes.Clone(want)
		for _, p := range parts {
			copy(want[p.off:], p.data)
		}
		r := clients[0].do(Request{Type: CmdRead, Cookie: 2, Offset: uint64(base), Length: n}, nil)
		if r.errno != 0 || !bytes.Equal(r.data, want) {
			t.Fatalf("round %d (caw %v): the range is in a state no serial order explains", round, cawErr)
		}
	}
}

// TestReservationFencesNBDRequests: under a Write Exclusive – Registrants
// Only reservation of another nexus, an NBD connection's writes, trims and
// zeroes get NBD_EPERM and its reads pass; released, writes pass again.
func TestReservationFencesNBDRequests(t *testing.T) {
	s, v := volumeExport(t)
	c := pipe(t, s)
	c.open("vol", false)
	holder := reservation.NewNexus("iqn.2026-12.test:holder", [6]byte{0x40})
	prOut := func(sa, typ byte, key, sark uint64) {
		t.Helper()
		cdb := []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}
		p := make([]byte, 24)
		binary.BigEndian.PutUint64(p[0:], key)
		binary.BigEndian.PutUint64(p[8:], sark)
		if _, err := v.Reservations().Out(context.Background(), holder, cdb, p); err != nil {
			t.Fatal(err)
		}
	}
	prOut(0x00, 0, 0, 7)    // REGISTER
	prOut(0x01, 0x05, 7, 0) // RESERVE, Write Exclusive – Registrants Only
	p := bytes.Repeat([]byte{1}, 4096)
	for _, r := range []struct {
		req     Request
		payload []byte
		errno   uint32
	}{
		{Request{Type: CmdWrite, Cookie: 1, Length: 4096}, p, EPERM},
		{Request{Type: CmdTrim, Cookie: 2, Length: 4096}, nil, EPERM},
		{Request{Type: CmdWriteZeroes, Cookie: 3, Length: 4096}, nil, EPERM},
		{Request{Type: CmdRead, Cookie: 4, Length: 4096}, nil, 0},
		{Request{Type: CmdFlush, Cookie: 5}, nil, 0},
	} {
		if got := c.do(r.req, r.payload); got.errno != r.errno {
			t.Errorf("command %d under the reservation: errno %d, want %d", r.req.Type, got.errno, r.errno)
		}
	}
	prOut(0x02, 0x05, 7, 0) // RELEASE
	if got := c.do(Request{Type: CmdWrite, Cookie: 6, Length: 4096}, p); got.errno != 0 {
		t.Fatalf("write after release: errno %d", got.errno)
	}
}
