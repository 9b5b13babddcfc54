package volume

import (
	"context"
	"errors"
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
// at epoch from, from the first replica of each chunk, as consecutive
// extents starting at off (see target.ChangeMapper.Changes). "Now" is the
// live volume, or for a read-only volume (a snapshot export) its epoch.
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
	end := off + n
	first := uint64(off >> blockShift)
	last := uint64((end - 1) >> blockShift)
	pos := off // next byte to report
	var pending target.ChangeExtent
	stop := false
	emit := func(e target.ChangeExtent) {
		if pending.Length > 0 && pending.Changed == e.Changed {
			pending.Length += e.Length
			return
		}
		if pending.Length > 0 && !fn(pending) {
			stop = true
		}
		pending = e
	}
	err := v.eachChunk(first, last-first+1, math.MaxUint64, func(b, cnt uint64, nodes []Node) error {
		if stop {
			return nil
		}
		c, ok := nodes[0].(Changer)
		if !ok {
			return fmt.Errorf("volume %d: changes [%d, +%d): %w", v.id, b, cnt, ErrNoChanges)
		}
		err := c.Changed(r, v.id, b, cnt, from, to, func(s, k uint64, changed bool) bool {
			e := min(int64((s+k)<<blockShift), end)
			if e > pos {
				emit(target.ChangeExtent{Length: e - pos, Changed: changed})
				pos = e
			}
			return !stop
		})
		if err != nil {
			if errors.Is(err, ErrNoChanges) {
				return err
			}
			return fmt.Errorf("volume %d: changes [%d, +%d): %w", v.id, b, cnt, classify(err))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !stop && pending.Length > 0 {
		fn(pending)
	}
	return nil
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
