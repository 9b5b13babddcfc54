package wire

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"cairn/backend/crc32c"
	"cairn/backend/store"
	"cairn/backend/volume"
)

// summedBackend is a memBackend that takes block CRCs with writes
// (SummedWriter) and records them.
type summedBackend struct {
	*memBackend
	mu   sync.Mutex
	crcs [][]uint32 // per WriteSummed call
}

func (s *summedBackend) WriteSummed(ctx context.Context, vol, block uint64, data []byte, crcs []uint32, st store.Stamp, sync bool) error {
	s.mu.Lock()
	s.crcs = append(s.crcs, append([]uint32(nil), crcs...))
	s.mu.Unlock()
	return s.memBackend.Write(ctx, vol, block, data, st, sync)
}

// TestWriteSummed: a server whose backend is a SummedWriter hands each
// write's block CRCs to it, each the crc32c of its block, and checks the
// frame's payload CRC from them: a write whose frame CRC does not match
// its data is refused (ErrChecksum) and never reaches the backend. Over a
// store, what was written that way reads back (the store checks each
// block's CRC on read).
func TestWriteSummed(t *testing.T) {
	ctx := context.Background()
	b := &summedBackend{memBackend: newMemBackend()}
	addr, _ := startServer(t, b, ServerOptions{})
	c := newClient(t, addr, ClientOptions{})
	seq := uint64(0)
	for _, blocks := range []int{1, 3, 256} {
		data := make([]byte, blocks*BlockSize)
		for i := range data {
			data[i] = byte(i*13 + blocks)
		}
		seq++
		if err := c.Write(ctx, 1, 10, data, store.Stamp{Epoch: 1, Seq: seq}, false); err != nil {
			t.Fatal(err)
		}
		b.mu.Lock()
		got := b.crcs[len(b.crcs)-1]
		calls := len(b.crcs)
		b.mu.Unlock()
		if calls != int(seq) || len(got) != blocks {
			t.Fatalf("%d blocks: %d WriteSummed calls, last with %d crcs", blocks, calls, len(got))
		}
		for i := range blocks {
			if w := crc32c.Checksum(data[i*BlockSize : (i+1)*BlockSize]); got[i] != w {
				t.Fatalf("%d blocks: crc of block %d %#08x, want %#08x", blocks, i, got[i], w)
			}
		}
	}

	data := make([]byte, 2*BlockSize)
	data[5] = 1
	var fixed [WriteRequestSize]byte
	st := store.Stamp{Epoch: 1, Seq: seq + 1}
	(&WriteRequest{Vol: 1, Block: 5, Stamp: st}).Put(fixed[:])
	bad := volume.WriteMemo{Sum: UpdateChecksum(Checksum(fixed[:]), data) ^ 1, SumSet: true}
	p, err := c.StartWrite(ctx, 1, 5, data, st, false, &bad)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); !errors.Is(err, ErrChecksum) {
		t.Fatalf("write with a wrong frame crc: %v, want ErrChecksum", err)
	}
	b.mu.Lock()
	calls := len(b.crcs)
	b.mu.Unlock()
	if calls != int(seq) || b.calls.Load() != int64(seq) {
		t.Fatalf("after a refused write: %d WriteSummed calls, %d writes; want %d", calls, b.calls.Load(), seq)
	}

	s := openStore(t)
	addr, _ = startServer(t, s, ServerOptions{})
	c = newClient(t, addr, ClientOptions{})
	data = make([]byte, 64*BlockSize)
	for i := range data {
		data[i] = byte(i * 31)
	}
	if err := c.Write(ctx, 1, 0, data, store.Stamp{Epoch: 1, Seq: 1}, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := c.Read(ctx, 1, 0, got, 1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("a store written through WriteSummed reads back other data")
	}
}
