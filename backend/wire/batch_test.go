package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"cairn/backend/store"
	"cairn/backend/volume"
)

// failingBatches is a store whose batches fail every write of a block
// that is a multiple of 7 (without storing it) and count what they got.
type failingBatches struct {
	*store.Store
	mu      sync.Mutex
	batches int
	writes  int
	refused map[uint64]bool // blocks whose write the batch failed
}

var errSeventh = errors.New("seventh block refused")

func (f *failingBatches) WriteBatch(ctx context.Context, vol uint64, ws []store.BatchWrite) {
	f.mu.Lock()
	f.batches++
	f.writes += len(ws)
	f.mu.Unlock()
	keep := make([]store.BatchWrite, 0, len(ws))
	idx := make([]int, 0, len(ws))
	for i, w := range ws {
		if w.Block%7 == 0 {
			ws[i].Err = errSeventh
			f.mu.Lock()
			f.refused[w.Block] = true
			f.mu.Unlock()
			continue
		}
		keep = append(keep, w)
		idx = append(idx, i)
	}
	f.Store.WriteBatch(ctx, vol, keep)
	for j, i := range idx {
		ws[i].Err = keep[j].Err
	}
}

// Write and WriteSummed refuse the same blocks: a write that arrives
// alone is executed inline, not batched (TestStartWrites failed now and
// then when its refused write came alone and was stored).
func (f *failingBatches) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	if f.refuse(block) {
		return errSeventh
	}
	return f.Store.Write(ctx, vol, block, data, st, sync)
}

func (f *failingBatches) WriteSummed(ctx context.Context, vol, block uint64, data []byte, crcs []uint32, st store.Stamp, sync bool) error {
	if f.refuse(block) {
		return errSeventh
	}
	return f.Store.WriteSummed(ctx, vol, block, data, crcs, st, sync)
}

func (f *failingBatches) refuse(block uint64) bool {
	if block%7 != 0 {
		return false
	}
	f.mu.Lock()
	f.refused[block] = true
	f.mu.Unlock()
	return true
}

var _ volume.BatchWriter = (*failingBatches)(nil)

// TestWriteBatches: plain writes that arrive together are gathered by the
// reader into batches of the backend; every write gets its own reply (its
// own error where the batch failed it), and reads back.
func TestWriteBatches(t *testing.T) {
	for _, inline := range []bool{true, false} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			fb := &failingBatches{Store: openStore(t), refused: map[uint64]bool{}}
			addr, srv := startServer(t, fb, ServerOptions{InlineWrites: inline})
			c := newClient(t, addr, ClientOptions{Conns: 1})
			ctx := context.Background()
			const workers, ops = 64, 40
			var wg sync.WaitGroup
			var mu sync.Mutex
			failed := map[uint64]error{} // block → its write's error
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range ops {
						blk := uint64(w*ops+i) * 4
						n := 1 + int(blk/4%3)
						if err := c.Write(ctx, 5, blk, block(byte(blk/4), n), store.Stamp{Epoch: 1, Seq: blk + 1}, false); err != nil {
							mu.Lock()
							failed[blk] = err
							mu.Unlock()
						}
					}
				}()
			}
			wg.Wait()
			fb.mu.Lock()
			refused := len(fb.refused)
			for blk := range fb.refused {
				if err := failed[blk]; err == nil || !strings.Contains(err.Error(), errSeventh.Error()) {
					t.Errorf("block %d failed in its batch, the client got %v", blk, err)
				}
			}
			fb.mu.Unlock()
			for blk, err := range failed {
				if !fb.refused[blk] {
					t.Errorf("block %d: %v", blk, err)
				}
			}
			if inline && refused == 0 {
				t.Errorf("no write of a seventh block was batched")
			}
			p := make([]byte, 3*BlockSize)
			for blk := uint64(0); blk < workers*ops*4; blk += 4 {
				if fb.refused[blk] {
					continue
				}
				n := 1 + int(blk/4%3)
				if err := c.Read(ctx, 5, blk, p[:n*BlockSize], 1); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(p[:n*BlockSize], block(byte(blk/4), n)) {
					t.Fatalf("block %d: read back differs", blk)
				}
			}
			st := srv.Stats()
			fb.mu.Lock()
			defer fb.mu.Unlock()
			if inline {
				if st.Batches == 0 || st.Batched != uint64(fb.writes) || st.Batches != uint64(fb.batches) {
					t.Fatalf("stats %+v, backend saw %d batches of %d writes", st, fb.batches, fb.writes)
				}
				if st.Batched+st.Inlined != workers*ops {
					t.Fatalf("%d batched + %d inlined of %d plain writes", st.Batched, st.Inlined, workers*ops)
				}
				t.Logf("%d writes in %d batches, %d inline", st.Batched, st.Batches, st.Inlined)
			} else if st.Batches != 0 || fb.batches != 0 {
				t.Fatalf("without InlineWrites: %d batches", st.Batches)
			}
		})
	}
}
