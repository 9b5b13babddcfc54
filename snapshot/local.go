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
// remembers which volumes it switched, so that Release lets go of exactly
// those and a later Hold can end a hold its coordinator abandoned.
type LocalTarget struct {
	lookup func(name string) (*volume.Volume, bool)

	mu struct {
		sync.Mutex
		held map[string]*volume.Volume // switched and not released
	}
}

var _ Target = (*LocalTarget)(nil)

// NewLocalTarget returns the target of the volumes lookup finds by name.
// lookup is called from the Target methods' goroutines and must be safe
// for concurrent use.
func NewLocalTarget(lookup func(name string) (*volume.Volume, bool)) *LocalTarget {
	t := &LocalTarget{lookup: lookup}
	t.mu.held = make(map[string]*volume.Volume)
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
// an earlier snapshot and never released is released first: a newer epoch
// reserved means that snapshot was abandoned. On error every volume this
// call switched is released.
func (t *LocalTarget) Hold(ctx context.Context, names []string, next uint64, timeout time.Duration) error {
	vs, err := t.volumes(names)
	if err != nil {
		return err
	}
	var switched []int
	for i, v := range vs {
		if err = t.hold(ctx, names[i], v, next, timeout); err != nil {
			break
		}
		switched = append(switched, i)
	}
	if err == nil {
		return nil
	}
	t.mu.Lock()
	for _, i := range switched {
		delete(t.mu.held, names[i])
	}
	t.mu.Unlock()
	for _, i := range switched {
		_, _ = vs[i].Release() // the snapshot fails; how the hold ended is moot
	}
	return err
}

func (t *LocalTarget) hold(ctx context.Context, name string, v *volume.Volume, next uint64, timeout time.Duration) error {
	t.mu.Lock()
	old, ok := t.mu.held[name]
	delete(t.mu.held, name)
	t.mu.Unlock()
	if ok {
		_, _ = old.Release() // abandoned; see Hold
	}
	if next >= 2 && v.Epoch() < next-1 {
		v.SetEpoch(next - 1)
	}
	wait := busyPollMin
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for {
		err := v.Hold(next, timeout)
		if err == nil {
			t.mu.Lock()
			t.mu.held[name] = v
			t.mu.Unlock()
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

// Release implements Target: it releases the holds this target made on
// the volumes and reports each; a volume with no hold of this target is
// reported with Reason "none". The error joins those of holds that ended
// before the release (volume.ErrHoldFailed).
func (t *LocalTarget) Release(_ context.Context, names []string) (HoldReport, error) {
	if len(names) > callVolumesMax {
		return HoldReport{}, fmt.Errorf("snapshot: %d volumes in one call, at most %d", len(names), callVolumesMax)
	}
	vs := make([]*volume.Volume, len(names))
	t.mu.Lock()
	for i, n := range names {
		vs[i] = t.mu.held[n]
		delete(t.mu.held, n)
	}
	t.mu.Unlock()
	rep := HoldReport{Volumes: make([]VolumeHold, len(names))}
	var errs []error
	for i, v := range vs {
		if v == nil {
			rep.Volumes[i] = VolumeHold{Volume: names[i], Reason: ReasonNone}
			continue
		}
		r, err := v.Release()
		rep.Volumes[i] = VolumeHold{Volume: names[i], Window: r.Window, Held: r.Held, Reason: r.Reason, Drained: r.Drained}
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %q: %w", names[i], err))
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
