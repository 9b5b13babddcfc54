package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"cairn/backend/store"
	"cairn/target"
)

// turnLog records, in order, what the nodes of a replicated batch did.
type turnLog struct {
	mu     sync.Mutex
	events []string
}

func (l *turnLog) add(format string, a ...any) {
	l.mu.Lock()
	l.events = append(l.events, fmt.Sprintf(format, a...))
	l.mu.Unlock()
}

// batchStarter is a BatchStarter over a store: the writes are stored when
// started, and Wait returns err (if set) for every write. It records its
// calls and the memo each write found.
type batchStarter struct {
	*store.Store
	name string
	log  *turnLog
	err  error

	mu      sync.Mutex
	batches [][]uint64   // the blocks of each StartWrites
	singles int          // StartWrite calls
	memos   []*WriteMemo // each write's, in start order
	found   []WriteMemo  // what it held on entry
}

type loggedPending struct {
	log  *turnLog
	name string
	err  error
}

func (p *loggedPending) Wait() error {
	p.log.add("wait %s", p.name)
	return p.err
}

func (b *batchStarter) start(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool, memo *WriteMemo) Pending {
	b.memos = append(b.memos, memo)
	b.found = append(b.found, *memo)
	if !memo.SumSet {
		memo.Sum, memo.SumSet = uint32(block), true
	}
	err := b.err
	if err == nil {
		err = b.Store.Write(ctx, vol, block, data, st, sync)
	}
	return &loggedPending{log: b.log, name: b.name, err: err}
}

func (b *batchStarter) StartWrite(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool, memo *WriteMemo) (Pending, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.singles++
	return b.start(ctx, vol, block, data, st, sync, memo), nil
}

func (b *batchStarter) StartWrites(vol uint64, ws []StartedWrite) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log.add("start %s %d", b.name, len(ws))
	var blocks []uint64
	for i := range ws {
		w := &ws[i]
		blocks = append(blocks, w.Block)
		w.P = b.start(w.Ctx, vol, w.Block, w.Data, w.Stamp, false, w.Memo)
	}
	b.batches = append(b.batches, blocks)
}

// loggedStore is the local replica: a store whose batches are logged.
type loggedStore struct {
	*store.Store
	log *turnLog
}

func (s loggedStore) WriteBatch(ctx context.Context, vol uint64, ws []store.BatchWrite) {
	s.log.add("local %d", len(ws))
	s.Store.WriteBatch(ctx, vol, ws)
}

// TestReplicatedWriteBatch: on a volume replicated over a local store and
// two node RPC clients, a batch's whole-block plain writes inside one
// chunk go to each remote replica in one StartWrites and to the local one
// in one WriteBatch, all started before any is waited for; the writes of
// one block share a memo across the replicas; the others (across chunks,
// FUA, unaligned) are done as WriteAt does; one out of range fails alone;
// every replica holds every write, the later of two writes of a block.
func TestReplicatedWriteBatch(t *testing.T) {
	log := &turnLog{}
	local := loggedStore{Store: openStore(t), log: log}
	a := &batchStarter{Store: openStore(t), name: "a", log: log}
	b := &batchStarter{Store: openStore(t), name: "b", log: log}
	v, err := Open(Options{ID: 4, Size: 8 << 20, ChunkSize: 1 << 20, Generation: 1, Epoch: 1, Placement: replicated{local, a, b}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !v.BatchWrites() {
		t.Fatal("a volume over a store and two Starters does not take batches")
	}
	blk := func(c byte, n int) []byte { return bytes.Repeat([]byte{c}, n*BlockSize) }
	ws := []target.BatchWrite{
		{P: blk(1, 1), Off: 0},
		{P: blk(2, 2), Off: 8192},
		{P: blk(3, 1), Off: 0},            // block 0 again: stamped later, wins
		{P: blk(4, 2), Off: 1<<20 - 4096}, // across chunks 0 and 1
		{P: blk(5, 1), Off: 5 << 20, Flags: target.FUA},
		{P: blk(6, 1)[:512], Off: 6<<20 + 512},
		{P: blk(7, 1), Off: 8 << 20}, // past the end
		{P: blk(8, 1), Off: 3 << 20},
	}
	v.WriteBatch(ctx, ws)
	for i, w := range ws {
		if want := i == 6; (w.Err != nil) != want {
			t.Fatalf("write %d: err %v, want an error: %v", i, w.Err, want)
		}
	}
	if !errors.Is(ws[6].Err, target.ErrOutOfRange) {
		t.Fatalf("write past the end: %v, want ErrOutOfRange", ws[6].Err)
	}
	want := [][]uint64{{0, 2, 0, 3 << 8}}
	for _, n := range []*batchStarter{a, b} {
		if !slices.EqualFunc(n.batches, want, slices.Equal[[]uint64]) {
			t.Fatalf("node %s got batches %v, want %v", n.name, n.batches, want)
		}
		if n.singles != 3 { // across chunks (one run: the chunks share replicas), FUA, unaligned
			t.Fatalf("node %s got %d single writes, want 3", n.name, n.singles)
		}
	}
	// The turn: both remote batches and the local one, then the waits.
	turn := log.events[:3+8]
	if !slices.Equal(turn[:3], []string{"start a 4", "start b 4", "local 4"}) {
		t.Fatalf("the turn began %q", turn[:3])
	}
	for _, e := range turn[3:] {
		if e != "wait a" && e != "wait b" {
			t.Fatalf("the turn's waits: %q", turn[3:])
		}
	}
	for i := range 4 {
		if a.memos[i] != b.memos[i] {
			t.Fatalf("write %d: the replicas got different memos", i)
		}
		if a.found[i] != (WriteMemo{}) || !b.found[i].SumSet || b.found[i].Sum != uint32(want[0][i]) {
			t.Fatalf("write %d: memos found %+v and %+v, want zeroed, then the first's", i, a.found[i], b.found[i])
		}
	}
	image := make([]byte, 7<<20)
	copy(image, blk(3, 1))
	copy(image[8192:], blk(2, 2))
	copy(image[1<<20-4096:], blk(4, 2))
	copy(image[3<<20:], blk(8, 1))
	copy(image[5<<20:], blk(5, 1))
	copy(image[6<<20+512:], blk(6, 1)[:512])
	for _, nd := range []Node{local.Store, a.Store, b.Store} {
		got := make([]byte, len(image))
		if err := nd.Read(ctx, 4, 0, got, 1); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, image) {
			t.Fatal("a replica differs from the batch's writes")
		}
	}
	if st := v.Stats(); st.Writes != 7 {
		t.Fatalf("volume counted %d writes, want 7", st.Writes)
	}
}

// TestReplicatedWriteBatchFailover: a remote replica failing a turn's
// writes fails them all without a Failover; with one, it is taken out
// once and every write succeeds on the others.
func TestReplicatedWriteBatchFailover(t *testing.T) {
	for _, failover := range []bool{false, true} {
		t.Run(fmt.Sprintf("failover=%v", failover), func(t *testing.T) {
			log := &turnLog{}
			local := loggedStore{Store: openStore(t), log: log}
			a := &batchStarter{Store: openStore(t), name: "a", log: log}
			down := &batchStarter{Store: openStore(t), name: "b", log: log, err: fmt.Errorf("%w: connection reset", target.ErrIO)}
			pl := replicated{local, a, down}
			f := &recordingFailover{nodes: pl}
			opts := Options{ID: 5, Size: 8 << 20, ChunkSize: 1 << 20, Generation: 1, Epoch: 1, Placement: pl}
			if failover {
				opts.Failover = f
			}
			v, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			f.v = v
			ws := make([]target.BatchWrite, 6)
			for i := range ws {
				ws[i] = target.BatchWrite{P: bytes.Repeat([]byte{byte(i + 1)}, BlockSize), Off: int64(i) << 20}
			}
			v.WriteBatch(ctx, ws)
			for i, w := range ws {
				if failover != (w.Err == nil) || !failover && !errors.Is(w.Err, target.ErrIO) {
					t.Fatalf("write %d: %v", i, w.Err)
				}
			}
			if !failover {
				return
			}
			if len(f.excluded) != 1 || f.excluded[0] != down {
				t.Fatalf("excluded %d nodes, want only the failed one", len(f.excluded))
			}
			for i, w := range ws {
				for _, s := range []*store.Store{local.Store, a.Store} {
					got := make([]byte, BlockSize)
					if err := s.Read(ctx, 5, uint64(w.Off)/BlockSize, got, 1); err != nil || !bytes.Equal(got, w.P) {
						t.Fatalf("write %d missing on a healthy replica: %v", i, err)
					}
				}
			}
		})
	}
}
