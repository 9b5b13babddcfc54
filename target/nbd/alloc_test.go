package nbd

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"cairn/target"
)

// nopDevice does nothing and allocates nothing.
type nopDevice struct{}

func (nopDevice) Info() target.Info                                               { return target.Info{Size: 1 << 30, BlockSize: 4096} }
func (nopDevice) ReadAt(context.Context, []byte, int64) error                     { return nil }
func (nopDevice) WriteAt(context.Context, []byte, int64, target.WriteFlags) error { return nil }
func (nopDevice) Zero(context.Context, int64, int64, target.ZeroFlags) error      { return nil }
func (nopDevice) Flush(context.Context) error                                     { return nil }

// TestHotPathAllocs pins the server's per-request allocations: a WRITE and a
// READ round trip through the servers and the writer allocate nothing in
// steady state, with and without a shared in-flight budget.
func TestHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	// 4 KiB replies go through the buffer, 64 KiB ones straight from the
	// request's buffer (writeRead).
	for _, n := range []int{4096, 64 << 10} {
		for i, structured := range []bool{false, true} {
			hotPathAllocs(t, n, structured, i == 1)
		}
	}
}

// hotPathAllocs runs TestHotPathAllocs with n-byte requests, with a shared
// budget when shared is set.
func hotPathAllocs(t *testing.T, n int, structured, shared bool) {
	var budget *target.Budget // unlimited, or a shared budget
	if shared {
		budget = target.NewBudget(1 << 20)
	}
	s := newServer(t, mapExports{"nop": nopDevice{}}, Options{Budget: budget})
	c := pipe(t, s)
	c.open("nop", structured)
	wr := make([]byte, RequestSize+n)
	(&Request{Type: CmdWrite, Cookie: 1, Length: uint32(n)}).Put(wr)
	rd := make([]byte, RequestSize)
	(&Request{Type: CmdRead, Cookie: 2, Length: uint32(n)}).Put(rd)
	wantRead := SimpleReplySize + n
	if structured {
		wantRead = StructuredReplySize + 8 + n
	}
	reply := make([]byte, wantRead)
	var nc net.Conn = c.nc
	roundTrip := func() {
		if _, err := nc.Write(wr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c.br, reply[:SimpleReplySize]); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Write(rd); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c.br, reply); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 { // warm pools and workers
		roundTrip()
	}
	if allocs := testing.AllocsPerRun(1000, roundTrip); allocs > 0 {
		t.Errorf("%d-byte requests, structured=%v: %v allocations per write+read", n, structured, allocs)
	}
}

// BenchmarkRoundTrip is a 4 KiB WRITE and READ round trip through reader,
// worker and writer to a device that does nothing, without and with a
// shared in-flight budget: what the budget costs a request.
//
//	go test -run '^$' -bench RoundTrip -count 6 ./target/nbd/
func BenchmarkRoundTrip(b *testing.B) {
	for _, bc := range []struct {
		name   string
		budget *target.Budget
	}{{"budget=none", nil}, {"budget=1GiB", target.NewBudget(1 << 30)}} {
		b.Run(bc.name, func(b *testing.B) {
			s := newServer(b, mapExports{"nop": nopDevice{}}, Options{Budget: bc.budget})
			c := pipe(b, s)
			c.open("nop", true)
			const n = 4096
			wr := make([]byte, RequestSize+n)
			(&Request{Type: CmdWrite, Cookie: 1, Length: uint32(n)}).Put(wr)
			rd := make([]byte, RequestSize)
			(&Request{Type: CmdRead, Cookie: 2, Length: uint32(n)}).Put(rd)
			reply := make([]byte, StructuredReplySize+8+n)
			b.SetBytes(2 * n)
			b.ResetTimer()
			for range b.N {
				if _, err := c.nc.Write(wr); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c.br, reply[:SimpleReplySize]); err != nil {
					b.Fatal(err)
				}
				if _, err := c.nc.Write(rd); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c.br, reply); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// nopBatchDevice is a nopDevice that takes batches of writes, counting
// the writes that came in one.
type nopBatchDevice struct {
	nopDevice
	batched *atomic.Int64
}

func (nopBatchDevice) BatchWrites() bool { return true }

func (d nopBatchDevice) WriteBatch(_ context.Context, ws []target.BatchWrite) {
	d.batched.Add(int64(len(ws)))
	for i := range ws {
		ws[i].Err = nil
	}
}

// TestBatchAllocs pins the write batch path: eight 4 KiB writes sent
// together are read, executed as batches and answered without allocating.
func TestBatchAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	var batched atomic.Int64
	s := newServer(t, mapExports{"nop": nopBatchDevice{batched: &batched}}, Options{})
	c := pipe(t, s)
	c.open("nop", false)
	const n = 8
	wr := make([]byte, 0, n*(RequestSize+4096))
	for i := range n {
		b := make([]byte, RequestSize+4096)
		(&Request{Type: CmdWrite, Cookie: uint64(i + 1), Offset: uint64(i) * 4096, Length: 4096}).Put(b)
		wr = append(wr, b...)
	}
	reply := make([]byte, n*SimpleReplySize)
	var nc net.Conn = c.nc
	roundTrip := func() {
		if _, err := nc.Write(wr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c.br, reply); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		roundTrip()
	}
	before := batched.Load()
	if allocs := testing.AllocsPerRun(1000, roundTrip); allocs > 0 {
		t.Errorf("%v allocations per %d pipelined writes", allocs, n)
	}
	if got := batched.Load() - before; got < 1001*(n-1) {
		t.Errorf("%d of %d writes batched", got, 1001*n)
	}
}
