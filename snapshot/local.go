package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"cairn/backend/volume"
)

// Bounds of LocalTarget.
const (
	// busyPollMin and busyPollMax bound the backoff of a Hold that finds
	// a volume busy (its previous epoch not drained yet).
	busyPollMin = 100 * time.Microsecond
	busyPollMax = 5 * time.Millisecond
	// callVolumesMax bounds the volumes of one call.
	callVolumesMax = groupVolumesMax
)

// ErrNoVolume: a LocalTarget call named a volume that is not attached here.
var ErrNoVolume = errors.New("snapshot: no such volume at this target")

// LocalTarget is the Target of the volumes attached in this process. It
// remembers which volumes it switched and to which epoch, so that Release
// lets go of exactly those and a later Hold can end a hold its coordinator
// abandoned. Its gate calls on volumes (Hold, Release, SetEpoch: none
// blocks) are serialized under its mutex.
type LocalTarget struct {
	lookup func(name string) (*volume.Volume, bool)

	mu struct {
		sync.Mutex
		held map[string]localHold // switched and not released
	}
}

type localHold struct {
	v    *volume.Volume
	next uint64
}

var _ Target = (*LocalTarget)(nil)

// NewLocalTarget returns the target of the volumes lookup finds by name.
// lookup is called from the Target methods' goroutines and must be safe
// for concurrent use.
func NewLocalTarget(lookup func(name string) (*volume.Volume, bool)) *LocalTarget {
	t := &LocalTarget{lookup: lookup}
	t.mu.held = make(map[string]localHold)
	return t
}

func (t *LocalTarget) volumes(names []string) ([]*volume.Volume, error) {
	if len(names) > callVolumesMax {
		return nil, fmt.Errorf("snapshot: %d volumes in one call, at most %d", len(names), callVolumesMax)
	}
	vs := make([]*volume.Volume, len(names))
	for i, n := range names {
		v, ok := t.lookup(n)
		if !ok {
			return nil, fmt.Errorf("volume %q: %w", n, ErrNoVolume)
		}
		vs[i] = v
	}
	return vs, nil
}

// Hold implements Target. A volume that missed a snapshot (its epoch is
// below next-1) first moves to next-1 so that the switch to next finds its
// old epoch drained; a volume busy with the previous epoch's last requests
// is retried with backoff until ctx is done. A hold this target made for
// an earlier epoch and never released is released first: a newer epoch
// reserved means that snapshot was abandoned. On error every volume this
// call switched is released.
func (t *LocalTarget) Hold(ctx context.Context, names []string, next uint64, timeout time.Duration) error {
	vs, err := t.volumes(names)
	if err != nil {
		return err
	}
	var switched []string
	for i, v := range vs {
		if err = t.hold(ctx, names[i], v, next, timeout); err != nil {
			break
		}
		switched = append(switched, names[i])
	}
	if err != nil {
		_, _ = t.Release(ctx, switched, next) // the snapshot fails; how the holds ended is moot
	}
	return err
}

func (t *LocalTarget) hold(ctx context.Context, name string, v *volume.Volume, next uint64, timeout time.Duration) error {
	wait := busyPollMin
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for {
		err := t.tryHold(name, v, next, timeout)
		if err == nil {
			return nil
		}
		if !errors.Is(err, volume.ErrHoldBusy) {
			return fmt.Errorf("volume %q: %w", name, err)
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			return fmt.Errorf("volume %q: %w: %w", name, err, ctx.Err())
		}
		wait = min(2*wait, busyPollMax)
	}
}

func (t *LocalTarget) tryHold(name string, v *volume.Volume, next uint64, timeout time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.mu.held[name]; ok {
		if old.next >= next {
			return fmt.Errorf("hold to epoch %d, already held to %d", next, old.next)
		}
		delete(t.mu.held, name)
		_, _ = old.v.Release() // abandoned; see Hold
	}
	if next >= 2 && v.Epoch() < next-1 {
		v.SetEpoch(next - 1)
	}
	if err := v.Hold(next, timeout); err != nil {
		return err
	}
	t.mu.held[name] = localHold{v: v, next: next}
	return nil
}

// Release implements Target: it releases the holds this target made on
// the volumes for epoch next and reports each; a volume with no such hold
// is reported with Reason ReasonNone. The error joins those of holds that
// ended before the release (volume.ErrHoldFailed).
func (t *LocalTarget) Release(_ context.Context, names []string, next uint64) (HoldReport, error) {
	if len(names) > callVolumesMax {
		return HoldReport{}, fmt.Errorf("snapshot: %d volumes in one call, at most %d", len(names), callVolumesMax)
	}
	rep := HoldReport{Volumes: make([]VolumeHold, len(names))}
	var errs []error
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, n := range names {
		h, ok := t.mu.held[n]
		if !ok || h.next != next {
			rep.Volumes[i] = VolumeHold{Volume: n, Reason: ReasonNone}
			continue
		}
		delete(t.mu.held, n)
		r, err := h.v.Release()
		rep.Volumes[i] = VolumeHold{Volume: n, Window: r.Window, Held: r.Held, Reason: r.Reason, Drained: r.Drained}
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %q: %w", n, err))
		}
	}
	return rep, errors.Join(errs...)
}

// ReasonNone is the VolumeHold.Reason of a volume that had no hold to
// release.
const ReasonNone = "none"

// Drained implements Target.
func (t *LocalTarget) Drained(_ context.Context, names []string, epoch uint64) (bool, error) {
	vs, err := t.volumes(names)
	if err != nil {
		return false, err
	}
	for _, v := range vs {
		if !v.Drained(epoch) {
			return false, nil
		}
	}
	return true, nil
}

// Holding returns how many volumes this target has switched and not
// released.
func (t *LocalTarget) Holding() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.mu.held)
}
