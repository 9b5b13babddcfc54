package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"cairn/backend/store"
	"cairn/backend/volume"
	"cairn/backend/wire"
)

// Errors of the fence, as a storage node answers them.
var (
	// errStaleGeneration: a write stamped with an attachment generation
	// older than the catalog's: it comes from a target the volume was moved
	// away from.
	errStaleGeneration = errors.New("write from a stale attachment generation")
	// errDropped: a write to a volume the catalog deleted.
	errDropped = errors.New("volume deleted")
)

// fence stands in front of a storage node's store, for the local target
// and the node RPC alike: it refuses writes and zeroes stamped with an
// attachment generation older than the one the catalog records for the
// volume (so an old target is fenced off once the volume is attached
// elsewhere), and every write to a deleted volume; and it makes a drop
// wait for the calls inside the store for that volume, so a straggler
// cannot leave orphaned keys behind it.
type fence struct {
	node  volume.Node // the store, or the store behind injected latency
	store *store.Store
	log   *slog.Logger

	mu   sync.Mutex
	vols map[uint64]*fenceVol // by volume id; dropped ones stay (ids are never reused)
}

type fenceVol struct {
	sync.RWMutex // calls hold it shared, a drop exclusively
	gen          uint64
	live         bool // the catalog has named it: only then may it be dropped
	dropped      bool
}

var _ volume.Node = (*fence)(nil)

func newFence(node volume.Node, s *store.Store, log *slog.Logger) *fence {
	return &fence{node: node, store: s, log: log, vols: map[uint64]*fenceVol{}}
}

// fenceVolsMax bounds the volumes a fence tracks (the catalog holds at
// most 65536 at a time; deleted ones stay tracked).
const fenceVolsMax = 1 << 20

// errFenceFull: more volumes than fenceVolsMax.
var errFenceFull = errors.New("too many volumes tracked")

// vol returns the state of volume id, creating it when create is set;
// nil when there is none (or no room).
func (f *fence) vol(id uint64, create bool) *fenceVol {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vols[id]
	if v == nil && create && len(f.vols) < fenceVolsMax {
		v = &fenceVol{}
		f.vols[id] = v
	}
	return v
}

// setGeneration records the catalog's generation of a volume; writes
// stamped below it are refused from then on. It never lowers it.
func (f *fence) setGeneration(id, gen uint64) {
	v := f.vol(id, true)
	if v == nil {
		return
	}
	v.Lock()
	v.gen = max(v.gen, gen)
	v.live = true
	v.Unlock()
}

// known returns the ids of the volumes the catalog named since start and
// that are not dropped. (A volume only written to so far may be one this
// node's catalog replica has not seen created yet: it is never dropped.)
func (f *fence) known() []uint64 {
	f.mu.Lock()
	vols := make(map[uint64]*fenceVol, len(f.vols))
	for id, v := range f.vols {
		vols[id] = v
	}
	f.mu.Unlock()
	var ids []uint64
	for id, v := range vols {
		v.RLock()
		if v.live && !v.dropped {
			ids = append(ids, id)
		}
		v.RUnlock()
	}
	return ids
}

// drop deletes a volume's data once no call on it is inside the store;
// later writes to it are refused.
func (f *fence) drop(id uint64) error {
	v := f.vol(id, true)
	if v == nil {
		return fmt.Errorf("volume %d: %w", id, errFenceFull)
	}
	v.Lock()
	defer v.Unlock()
	if v.dropped {
		return nil
	}
	if err := f.store.DropVolume(id); err != nil {
		return err
	}
	v.dropped = true
	f.log.Info("volume data dropped", "id", id)
	return nil
}

// hold keeps volume id from being dropped until release is called (a
// drop waits for it); it fails if the volume is dropped already. For calls
// into the store that bypass the fence, such as a flatten.
func (f *fence) hold(id uint64) (release func(), err error) {
	v := f.vol(id, true)
	if v == nil {
		return nil, fmt.Errorf("volume %d: %w", id, errFenceFull)
	}
	v.RLock()
	if v.dropped {
		v.RUnlock()
		return nil, fmt.Errorf("volume %d: %w", id, errDropped)
	}
	return v.RUnlock, nil
}

func (f *fence) admitWrite(id uint64, st store.Stamp) (*fenceVol, error) {
	return f.admitGen(id, volume.SeqGeneration(st.Seq))
}

// admitGen admits a call on behalf of a target of attachment generation
// gen; on success the caller must RUnlock the result.
func (f *fence) admitGen(id, gen uint64) (*fenceVol, error) {
	v := f.vol(id, true)
	if v == nil {
		return nil, fmt.Errorf("volume %d: %w: %w", id, errFenceFull, store.ErrInvalid)
	}
	v.RLock()
	switch {
	case v.dropped:
		v.RUnlock()
		return nil, fmt.Errorf("volume %d: %w: %w", id, errDropped, store.ErrInvalid)
	case gen < v.gen:
		g := v.gen
		v.RUnlock()
		return nil, fmt.Errorf("volume %d: generation %d < %d: %w: %w", id, gen, g, errStaleGeneration, store.ErrInvalid)
	}
	return v, nil
}

func (f *fence) Write(ctx context.Context, vol, block uint64, data []byte, st store.Stamp, sync bool) error {
	return f.WriteSummed(ctx, vol, block, data, nil, st, sync)
}

// WriteSummed implements wire.SummedWriter: Write with the data's block
// CRCs (nil: none), passed on to a node that takes them (the store, or the
// latency line in front of it), else dropped.
func (f *fence) WriteSummed(ctx context.Context, vol, block uint64, data []byte, crcs []uint32, st store.Stamp, sync bool) error {
	v, err := f.admitWrite(vol, st)
	if err != nil {
		return err
	}
	defer v.RUnlock()
	return volume.WriteSummed(ctx, f.node, vol, block, data, crcs, st, sync)
}

var _ volume.BatchWriter = (*fence)(nil)

// WriteBatch implements volume.BatchWriter: the writes are admitted
// together when they carry one attachment generation (a batch comes from
// one volume's target) and the node takes batches; otherwise one by one.
func (f *fence) WriteBatch(ctx context.Context, vol uint64, ws []store.BatchWrite) {
	bn, ok := f.node.(volume.BatchWriter)
	for i := 1; ok && i < len(ws); i++ {
		ok = volume.SeqGeneration(ws[i].Stamp.Seq) == volume.SeqGeneration(ws[0].Stamp.Seq)
	}
	if !ok || len(ws) == 0 {
		volume.WriteEach(ctx, f, vol, ws)
		return
	}
	v, err := f.admitWrite(vol, ws[0].Stamp)
	if err != nil {
		for i := range ws {
			ws[i].Err = err
		}
		return
	}
	defer v.RUnlock()
	bn.WriteBatch(ctx, vol, ws)
}

func (f *fence) Zero(ctx context.Context, vol, block, n uint64, st store.Stamp, sync bool) error {
	v, err := f.admitWrite(vol, st)
	if err != nil {
		return err
	}
	defer v.RUnlock()
	return f.node.Zero(ctx, vol, block, n, st, sync)
}

func (f *fence) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error {
	if v := f.vol(vol, true); v != nil {
		v.RLock()
		defer v.RUnlock()
	}
	return f.node.Read(ctx, vol, block, p, epoch)
}

func (f *fence) Extents(ctx context.Context, vol, block, n, epoch uint64, fn func(start, count uint64, allocated bool) bool) error {
	if v := f.vol(vol, true); v != nil {
		v.RLock()
		defer v.RUnlock()
	}
	return f.node.Extents(ctx, vol, block, n, epoch, fn)
}

func (f *fence) Sync(ctx context.Context) error { return f.node.Sync(ctx) }

// Changed implements volume.Changer over the node behind the fence.
func (f *fence) Changed(ctx context.Context, vol, block, n, from, to uint64, fn func(start, count uint64, changed bool) bool) error {
	c, ok := f.node.(volume.Changer)
	if !ok {
		return volume.ErrNoChanges
	}
	if v := f.vol(vol, true); v != nil {
		v.RLock()
		defer v.RUnlock()
	}
	return c.Changed(ctx, vol, block, n, from, to, fn)
}

var (
	_ wire.Versioner    = (*fence)(nil)
	_ wire.Fencer       = (*fence)(nil)
	_ wire.SummedWriter = (*fence)(nil)
)

// AdmitGeneration implements wire.Fencer: a replica catch-up's copies
// carry the stamps of the writes they copy, older attachments' too, so
// they are admitted by the generation of the target that sends them.
func (f *fence) AdmitGeneration(vol, gen uint64) (release func(), err error) {
	v, err := f.admitGen(vol, gen)
	if err != nil {
		return nil, err
	}
	return v.RUnlock, nil
}

// VersionsSince implements wire.Versioner over the store.
func (f *fence) VersionsSince(ctx context.Context, vol, block, n, seqMin uint64, fn func(b uint64, vs []store.Version) bool) (uint64, error) {
	if v := f.vol(vol, true); v != nil {
		v.RLock()
		defer v.RUnlock()
	}
	return f.store.VersionsSince(ctx, vol, block, n, seqMin, fn)
}

// Apply implements wire.Versioner over the store. It is called only
// inside AdmitGeneration, which holds the volume (so it takes no lock of
// its own: a read lock taken twice could wait behind a drop).
func (f *fence) Apply(ctx context.Context, vol uint64, ver store.Version, sync bool) error {
	return f.store.Apply(ctx, vol, ver, sync)
}
