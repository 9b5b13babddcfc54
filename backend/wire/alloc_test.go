package wire

import (
	"context"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/target"
)

// TestHotPathAllocs pins the steady-state allocations of a 4 KiB read and
// write and of a write too big to copy, client and server together (AllocsPerRun counts every
// goroutine): none, with a context that has a deadline or not.
func TestHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	addr, _ := startServer(t, newMemBackend(), ServerOptions{})
	c := newClient(t, addr, ClientOptions{})
	p := make([]byte, BlockSize)
	big := make([]byte, inlineBytesMax+BlockSize)
	bg := context.Background()
	dl, cancel := context.WithTimeout(bg, time.Hour)
	defer cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
	}{{"background", bg}, {"deadline", dl}} {
		ctx := tc.ctx
		write := func() {
			if err := c.Write(ctx, 1, 3, p, store.Stamp{Epoch: 1, Seq: 1}, false); err != nil {
				t.Fatal(err)
			}
		}
		read := func() {
			if err := c.Read(ctx, 1, 3, p, 1); err != nil {
				t.Fatal(err)
			}
		}
		// Data too big to copy goes out in a vectored write.
		writeBig := func() {
			if err := c.Write(ctx, 1, 8, big, store.Stamp{Epoch: 1, Seq: 1}, false); err != nil {
				t.Fatal(err)
			}
		}
		for range 100 {
			write()
			read()
			writeBig()
		}
		if n := testing.AllocsPerRun(500, write); n > 0 {
			t.Errorf("%s: write: %.2f allocations per call", tc.name, n)
		}
		if n := testing.AllocsPerRun(100, writeBig); n > 0 {
			t.Errorf("%s: write of %d bytes: %.2f allocations per call", tc.name, len(big), n)
		}
		if n := testing.AllocsPerRun(500, read); n > 0 {
			t.Errorf("%s: read: %.2f allocations per call", tc.name, n)
		}
	}
}

// TestCodecAllocs: encoding and decoding headers and bodies allocate
// nothing.
func TestCodecAllocs(t *testing.T) {
	var b [HeaderSize + ZeroRequestSize]byte
	n := testing.AllocsPerRun(100, func() {
		h := Header{Op: OpZero, ID: 1, Length: ZeroRequestSize}
		h.Put(b[:])
		q := ZeroRequest{Vol: 1, Block: 2, Blocks: 3}
		q.Put(b[HeaderSize:])
		if _, err := ParseHeader(b[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := ParseZeroRequest(b[HeaderSize:]); err != nil {
			t.Fatal(err)
		}
	})
	if n > 0 {
		t.Fatalf("%.2f allocations", n)
	}
}

// TestReplicatedWriteAllocs pins the steady-state allocations of a 4 KiB
// write to a volume with three replicas, one local and two over the wire:
// none, whatever runs the write (the replicas' requests are started, not
// run on goroutines).
func TestReplicatedWriteAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	nodes := []volume.Node{newMemBackend()}
	for range 2 {
		addr, _ := startServer(t, newMemBackend(), ServerOptions{})
		nodes = append(nodes, newClient(t, addr, ClientOptions{Conns: 2}))
	}
	v, err := volume.Open(volume.Options{ID: 1, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: threeNodes{nodes}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx := context.Background()
	p := make([]byte, BlockSize)
	write := func() {
		if err := v.WriteAt(ctx, p, 8*BlockSize, 0); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		write()
	}
	if n := testing.AllocsPerRun(500, write); n > 0 {
		t.Errorf("%.2f allocations per replicated write", n)
	}

	// A batch of eight, the local replica taking it as one (memBatches),
	// the remote ones in one StartWrites each.
	nodes[0] = memBatches{newMemBackend()}
	bv, err := volume.Open(volume.Options{ID: 2, Size: 1 << 20, Generation: 1, Epoch: 1, Placement: threeNodes{nodes}})
	if err != nil {
		t.Fatal(err)
	}
	defer bv.Close()
	if !bv.BatchWrites() {
		t.Fatal("the volume does not take batches")
	}
	ws := make([]target.BatchWrite, 8)
	batch := func() {
		for i := range ws {
			ws[i] = target.BatchWrite{P: p, Off: int64(i) * 2 * BlockSize}
		}
		bv.WriteBatch(ctx, ws)
		for _, w := range ws {
			if w.Err != nil {
				t.Fatal(w.Err)
			}
		}
	}
	for range 100 {
		batch()
	}
	if n := testing.AllocsPerRun(200, batch); n > 0 {
		t.Errorf("%.2f allocations per replicated batch of 8", n)
	}
}

// memBatches is a memBackend that takes batches, one write after another.
type memBatches struct{ *memBackend }

func (m memBatches) WriteBatch(ctx context.Context, vol uint64, ws []store.BatchWrite) {
	for i := range ws {
		ws[i].Err = m.Write(ctx, vol, ws[i].Block, ws[i].Data, ws[i].Stamp, false)
	}
}
