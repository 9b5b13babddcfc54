package volume

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"cairn/backend/store"
)

// memoNode is a Starter over a store that records the WriteMemo each
// StartWrite got and what it held on entry, and leaves a sum of its own
// where none is set, as the node RPC does.
type memoNode struct {
	*store.Store
	mu   sync.Mutex
	seen []memoSeen
}

type memoSeen struct {
	memo *WriteMemo
	at   WriteMemo // its content on entry
}

// donePending is a call that completed within StartWrite.
type donePending struct{ err error }

func (p donePending) Wait() error { return p.err }

func (m *memoNode) StartWrite(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool, memo *WriteMemo) (Pending, error) {
	m.mu.Lock()
	m.seen = append(m.seen, memoSeen{memo, *memo})
	m.mu.Unlock()
	if !memo.SumSet {
		memo.Sum, memo.SumSet = uint32(st.Seq)<<8|uint32(data[0]), true
	}
	return donePending{m.Store.Write(ctx, vol, block, data, st, sync)}, nil
}

// TestFanOutSharesMemo: the Starters among a write's replicas get one
// memo, zeroed at the start of each write: the first finds it empty, the
// later ones what the first left; every replica holds the data.
func TestFanOutSharesMemo(t *testing.T) {
	local := openStore(t)
	a, b := &memoNode{Store: openStore(t)}, &memoNode{Store: openStore(t)}
	v, err := Open(Options{ID: 3, Size: 8 << 20, Generation: 1, Epoch: 1, Placement: replicated{local, a, b}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx := context.Background()
	for i := range 3 {
		p := bytes.Repeat([]byte{byte(i + 1)}, 2*BlockSize)
		if err := v.WriteAt(ctx, p, int64(i)*BlockSize*4, 0); err != nil {
			t.Fatal(err)
		}
		if len(a.seen) != i+1 || len(b.seen) != i+1 {
			t.Fatalf("write %d: %d and %d StartWrite calls, want %d each", i, len(a.seen), len(b.seen), i+1)
		}
		first, second := a.seen[i], b.seen[i]
		if first.memo != second.memo {
			t.Fatalf("write %d: the replicas got different memos", i)
		}
		if first.at != (WriteMemo{}) {
			t.Fatalf("write %d: the first replica found memo %+v, want it zeroed", i, first.at)
		}
		if !second.at.SumSet || second.at.Sum&0xff != uint32(i+1) {
			t.Fatalf("write %d: the second replica found memo %+v, want what the first left for this write", i, second.at)
		}
		for _, nd := range []Node{local, a, b} {
			got := make([]byte, len(p))
			if err := nd.Read(ctx, 3, uint64(i)*4, got, 1); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, p) {
				t.Fatalf("write %d: a replica holds other data", i)
			}
		}
	}
}
