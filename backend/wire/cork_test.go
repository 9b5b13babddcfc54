package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
)

// TestFrameWriterCork: while corked, small frames are queued and their
// writers return at once; a big frame goes out at once with the queue in
// front of it; push writes the queue while still corked; every uncork
// writes what is queued (a batch's frames go out when it ends, whatever
// other batch corks the connection too); all arrive in order.
func TestFrameWriterCork(t *testing.T) {
	var c countConn
	var w frameWriter
	w.init(&c, time.Minute)
	sw := func() uint64 { _, n := w.stats(); return n }
	frame := func(i, n int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, n) }
	var want bytes.Buffer
	put := func(i, n int) {
		t.Helper()
		if err := w.write(frame(i, 8), nil, frame(i, n)); err != nil {
			t.Fatal(err)
		}
		want.Write(frame(i, 8))
		want.Write(frame(i, n))
	}
	w.cork()
	w.cork() // nested: only the last uncork writes
	put(0, 10)
	put(1, 20)
	if sw() != 0 {
		t.Fatalf("%d socket writes while corked, want 0", sw())
	}
	put(2, inlineBytesMax+1) // big: out at once, with the queue
	if sw() != 1 {
		t.Fatalf("%d socket writes after a big frame, want 1", sw())
	}
	put(3, 10)
	put(4, 10)
	if err := w.pushNow(); err != nil {
		t.Fatal(err)
	}
	if sw() != 2 {
		t.Fatalf("%d socket writes after a push, want 2", sw())
	}
	put(5, 10)
	if err := w.uncork(); err != nil { // each uncork sends what is queued
		t.Fatal(err)
	}
	if sw() != 3 || !w.busy.Load() {
		t.Fatalf("after an inner uncork: %d socket writes, busy %v; want 3, still busy (corked)", sw(), w.busy.Load())
	}
	put(6, 10)
	if err := w.uncork(); err != nil {
		t.Fatal(err)
	}
	if sw() != 4 || w.busy.Load() {
		t.Fatalf("after the last uncork: %d socket writes, busy %v; want 4, not busy", sw(), w.busy.Load())
	}
	if !bytes.Equal(c.got.Bytes(), want.Bytes()) {
		t.Fatal("the corked frames arrived out of order or damaged")
	}
	put(7, 10) // uncorked: out at once
	if sw() != 5 {
		t.Fatalf("%d socket writes, want 5", sw())
	}
}

// TestStartWrites: a batch of writes goes out in one socket write, each
// write with its own result (a bad buffer fails alone, before anything is
// sent; the node's refusal comes back through its Wait); with a window
// smaller than the batch, the corked client pushes what it queued rather
// than waiting on itself.
func TestStartWrites(t *testing.T) {
	ctx := context.Background()
	for _, window := range []int{64, 4} {
		t.Run(fmt.Sprintf("window=%d", window), func(t *testing.T) {
			fb := &failingBatches{Store: openStore(t), refused: map[uint64]bool{}}
			addr, srv := startServer(t, fb, ServerOptions{InlineWrites: true})
			c := newClient(t, addr, ClientOptions{Conns: 1, InFlightMax: window})
			if err := c.Read(ctx, 5, 0, make([]byte, BlockSize), 1); err != nil { // dial
				t.Fatal(err)
			}
			cc := c.conns[0].Load()
			frames0, writes0 := cc.w.stats()
			const n = 16
			ws := make([]volume.StartedWrite, n)
			for i := range ws {
				ws[i] = volume.StartedWrite{Ctx: ctx, Block: uint64(i + 1), Data: block(byte(i+1), 1), Stamp: store.Stamp{Epoch: 1, Seq: uint64(i + 1)}}
			}
			ws[9].Data = make([]byte, 100) // not whole blocks
			c.StartWrites(5, ws)
			frames, writes := cc.w.stats()
			if frames-frames0 != n-1 {
				t.Fatalf("%d frames sent, want %d", frames-frames0, n-1)
			}
			if window >= n && writes-writes0 != 1 {
				t.Fatalf("%d frames in %d socket writes, want one", frames-frames0, writes-writes0)
			}
			if !errors.Is(ws[9].Err, store.ErrInvalid) || ws[9].P != nil {
				t.Fatalf("bad buffer: err %v, pending %v; want ErrInvalid and no call", ws[9].Err, ws[9].P)
			}
			for i := range ws {
				w := &ws[i]
				if i == 9 {
					continue
				}
				if w.Err != nil {
					t.Fatalf("write %d did not start: %v", i, w.Err)
				}
				if err := w.P.Wait(); (w.Block%7 == 0) != (err != nil) {
					t.Fatalf("block %d: %v", w.Block, err)
				}
			}
			for i := range ws { // once every call's slot is free again
				if w := &ws[i]; i != 9 && w.Block%7 != 0 {
					got := make([]byte, BlockSize)
					if err := c.Read(ctx, 5, w.Block, got, 1); err != nil || !bytes.Equal(got, w.Data) {
						t.Fatalf("block %d did not read back: %v", w.Block, err)
					}
				}
			}
			if st := srv.Stats(); st.Batches == 0 {
				t.Fatalf("the node gathered none of the batch's writes: %+v", st)
			}
			if cc.w.busy.Load() {
				t.Fatal("the connection is left corked")
			}
		})
	}
}
