package volume

import (
	"context"
	"fmt"
	"math"

	"cairn/target"
)

// Changer is a Node that reports which blocks of a volume read differently
// at epoch to than at epoch from (to = math.MaxUint64: the live volume),
// as consecutive runs over [block, block+n): the store, the node RPC
// client, and what wraps them. A run reported unchanged reads the same at
// both epochs; one reported changed may or may not.
type Changer interface {
	Changed(ctx context.Context, vol, block, n, from, to uint64, fn func(start, count uint64, changed bool) bool) error
}

// ErrNoChanges: a node of the volume cannot report changed blocks.
var ErrNoChanges = fmt.Errorf("volume: node cannot report changed blocks: %w", target.ErrIO)

// Changed reports which bytes of [off, off+n) read differently now than
// at epoch from, from each chunk's first replica (the next one when a
// replica fails), as consecutive extents starting at off (see
// target.ChangeMapper.Changes). "Now" is the live volume, or for a
// read-only volume (a snapshot export) its epoch.
func (v *Volume) Changed(ctx context.Context, off, n int64, from uint64, fn func(target.ChangeExtent) bool) error {
	r, err := v.admit(ctx, off, n, false)
	if err != nil {
		return err
	}
	return v.exit(r, v.changed(r, off, n, from, fn))
}

func (v *Volume) changed(r *request, off, n int64, from uint64, fn func(target.ChangeExtent) bool) error {
	if n == 0 {
		return nil
	}
	to := uint64(math.MaxUint64)
	if v.readOnly {
		to = v.epoch.Load()
	}
	if from >= to {
		return fmt.Errorf("volume %d: changes since epoch %d at epoch %d: %w", v.id, from, to, target.ErrInvalid)
	}
	return v.blockRuns(r, off, n, "changes", func(nd Node, b, cnt uint64, each func(start, count uint64, changed bool) bool) error {
		c, ok := nd.(Changer)
		if !ok {
			return ErrNoChanges
		}
		return c.Changed(r, v.id, b, cnt, from, to, each)
	}, func(length int64, changed bool) bool {
		return fn(target.ChangeExtent{Length: length, Changed: changed})
	})
}

// Changed implements Changer when the node behind does.
func (l *Latency) Changed(ctx context.Context, vol, block, n, from, to uint64, fn func(start, count uint64, changed bool) bool) error {
	c, ok := l.node.(Changer)
	if !ok {
		return ErrNoChanges
	}
	if err := l.wait(); err != nil {
		return err
	}
	return c.Changed(ctx, vol, block, n, from, to, fn)
}
