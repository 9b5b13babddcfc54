package snapshot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults and bounds of the protocol.
const (
	// stepTimeoutDefault bounds each step (reserve, hold, release, seal)
	// when Options.StepTimeout is 0 (DESIGN.md §3).
	stepTimeoutDefault = 2 * time.Second
	// holdTimeoutFactor: Options.HoldTimeout defaults to this many step
	// timeouts, so that a hold outlives the hold and release steps.
	holdTimeoutFactor = 2
	// drainPollMin and drainPollMax bound the backoff between Drained polls.
	drainPollMin = time.Millisecond
	drainPollMax = 50 * time.Millisecond
	// groupVolumesMax bounds the volumes of one reservation.
	groupVolumesMax = 4096
)

// Errors of the coordinator.
var (
	// ErrReserve: the catalog did not reserve a snapshot; nothing was held.
	ErrReserve = errors.New("snapshot: reserve")
	// ErrFailed: the snapshot was reserved and then failed (Result.Reason
	// says why); every hold was released and the record failed.
	ErrFailed = errors.New("snapshot: failed")
	// ErrBusy: a snapshot of the group is in progress on this coordinator.
	ErrBusy = errors.New("snapshot: group busy")
)

// Failure reasons, as Result.Reason and Catalog.Fail say.
const (
	ReasonTarget  = "target"  // a target of the group could not be found
	ReasonHold    = "hold"    // a target's Hold returned an error
	ReasonTimeout = "timeout" // the hold step passed its deadline
	ReasonRelease = "release" // a Release erred, or a hold had ended before it
	ReasonDrain   = "drain"   // writes stamped ≤ e still in flight at the seal deadline
	ReasonSeal    = "seal"    // the catalog did not seal
	ReasonInvalid = "invalid" // the reservation was malformed
	// ReasonAbandoned is not the coordinator's: the catalog's leader fails
	// a record left pending past every step's deadline (its coordinator
	// died mid-protocol; the targets' holds ended at their own deadline).
	ReasonAbandoned = "abandoned"
)

// VolumeRef is a volume of a group as the catalog knows it.
type VolumeRef struct {
	Name   string
	ID     uint64
	Target string // the node the volume is attached at
}

// Reservation is a reserved snapshot: the catalog committed the group's
// epoch Epoch+1 and a pending record SnapshotID.
type Reservation struct {
	SnapshotID uint64
	Epoch      uint64 // the epoch cut: the snapshot reads as of it
	Volumes    []VolumeRef
}

// Catalog keeps groups and snapshot records. Its methods are called from
// the goroutine of a Snapshot call; they must be safe for concurrent use
// across groups. Reserve's result is owned by the caller.
type Catalog interface {
	Reserve(ctx context.Context, group string) (Reservation, error)
	Seal(ctx context.Context, id uint64) error
	Fail(ctx context.Context, id uint64, reason string) error
}

// Target is the snapshot side of a target: it switches, holds, releases
// and watches the drain of the volumes attached there. Methods are called
// concurrently, must return once ctx is done, and must not retain volumes.
type Target interface {
	// Hold switches every volume to epoch next and holds the
	// acknowledgements of their requests from then on, until Release or
	// timeout. On error no volume of the call is left holding.
	Hold(ctx context.Context, volumes []string, next uint64, timeout time.Duration) error
	// Release lets go the acknowledgements held by the Hold to epoch
	// next and reports each hold. A Release for another next (a late
	// message of an abandoned snapshot) leaves a volume's hold alone and
	// reports it ReasonNone.
	Release(ctx context.Context, volumes []string, next uint64) (HoldReport, error)
	// Drained reports whether no write stamped ≤ epoch is in flight on
	// any of the volumes.
	Drained(ctx context.Context, volumes []string, epoch uint64) (bool, error)
}

// VolumeHold is one volume's hold as its target saw it end.
type VolumeHold struct {
	Volume  string
	Window  time.Duration // from the switch to the release
	Held    int64         // most acknowledgements held at once
	Reason  string        // volume.HoldReleased, or why it ended before
	Drained bool          // nothing stamped ≤ the cut in flight at the release
}

// HoldReport is what a target reports at Release.
type HoldReport struct {
	Volumes []VolumeHold
}

// released reports whether every hold ended by Release.
func (r HoldReport) released() bool {
	for _, h := range r.Volumes {
		if h.Reason != reasonReleased {
			return false
		}
	}
	return true
}

// drained reports whether every volume had drained at the release.
func (r HoldReport) drained(n int) bool {
	if len(r.Volumes) != n {
		return false
	}
	for _, h := range r.Volumes {
		if !h.Drained {
			return false
		}
	}
	return true
}

// reasonReleased is volume.HoldReleased; the coordinator does not import
// the volume package (a remote target reports the same string).
const reasonReleased = "released"

// Options configure a Coordinator. Catalog and Targets are required; the
// zero value of the rest works.
type Options struct {
	Catalog Catalog
	// Targets returns the Target of a node; called once per target per
	// snapshot.
	Targets func(node string) (Target, error)
	// StepTimeout bounds each step; 0: 2 s.
	StepTimeout time.Duration
	// HoldTimeout is the deadline a target gives its own hold, after which
	// it releases without the coordinator; 0: 2 × StepTimeout.
	HoldTimeout time.Duration
	// Now is the clock durations are measured with; nil: time.Now.
	Now func() time.Time
}

// Coordinator takes snapshots of groups. Create it with New.
type Coordinator struct {
	catalog     Catalog
	targets     func(string) (Target, error)
	stepTimeout time.Duration
	holdTimeout time.Duration
	now         func() time.Time

	mu struct {
		sync.Mutex
		busy map[string]bool // groups with a Snapshot in progress
	}
}

// New returns a coordinator.
func New(opts Options) (*Coordinator, error) {
	if opts.Catalog == nil || opts.Targets == nil {
		return nil, errors.New("snapshot: coordinator needs a catalog and targets")
	}
	if opts.StepTimeout < 0 || opts.HoldTimeout < 0 {
		return nil, fmt.Errorf("snapshot: negative timeout (step %v, hold %v)", opts.StepTimeout, opts.HoldTimeout)
	}
	if opts.StepTimeout == 0 {
		opts.StepTimeout = stepTimeoutDefault
	}
	if opts.HoldTimeout == 0 {
		opts.HoldTimeout = holdTimeoutFactor * opts.StepTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Coordinator{
		catalog: opts.Catalog, targets: opts.Targets,
		stepTimeout: opts.StepTimeout, holdTimeout: opts.HoldTimeout, now: opts.Now,
	}
	c.mu.busy = make(map[string]bool)
	return c, nil
}

// Result describes one Snapshot call, sealed or not.
type Result struct {
	Group      string
	SnapshotID uint64 // 0 if nothing was reserved
	Epoch      uint64 // the epoch cut
	Sealed     bool
	Reason     string // "" when sealed, else one of the Reason constants

	// Step durations; a step not reached is 0.
	Reserve, Hold, Release, Seal, Total time.Duration
	// Window is the longest held window any volume reported.
	Window  time.Duration
	Targets []TargetResult // sorted by node
}

// TargetResult is one target's part of a snapshot.
type TargetResult struct {
	Node    string
	Volumes []string
	Hold    time.Duration // the Hold call, from its start
	Report  HoldReport    // from Release; empty if it was not reached or erred
	Reason  string        // "" or why this target failed the snapshot
	Err     error
}

// plan is a reservation's volumes grouped by target.
type plan struct {
	nodes   []string
	volumes [][]string // per node, sorted
}

// planOf checks a reservation and groups its volumes by target. It is
// pure.
func planOf(r Reservation) (plan, error) {
	switch {
	case len(r.Volumes) == 0:
		return plan{}, errors.New("no volumes")
	case len(r.Volumes) > groupVolumesMax:
		return plan{}, fmt.Errorf("%d volumes, at most %d", len(r.Volumes), groupVolumesMax)
	case r.Epoch == 0:
		return plan{}, errors.New("epoch 0")
	}
	by := make(map[string][]string)
	seen := make(map[string]bool, len(r.Volumes))
	for _, v := range r.Volumes {
		if v.Name == "" || v.Target == "" {
			return plan{}, fmt.Errorf("volume %q at target %q", v.Name, v.Target)
		}
		if seen[v.Name] {
			return plan{}, fmt.Errorf("volume %q twice", v.Name)
		}
		seen[v.Name] = true
		by[v.Target] = append(by[v.Target], v.Name)
	}
	var p plan
	for n := range by {
		p.nodes = append(p.nodes, n)
	}
	slices.Sort(p.nodes)
	for _, n := range p.nodes {
		vs := by[n]
		slices.Sort(vs)
		p.volumes = append(p.volumes, vs)
	}
	return p, nil
}

// Snapshot takes a snapshot of group. It returns the result and nil once
// the snapshot is sealed; otherwise an error wrapping ErrReserve (nothing
// reserved or held), ErrFailed (reserved, released and failed) or ErrBusy.
// The result is filled as far as the protocol got.
func (c *Coordinator) Snapshot(ctx context.Context, group string) (res Result, err error) {
	res = Result{Group: group}
	c.mu.Lock()
	if c.mu.busy[group] {
		c.mu.Unlock()
		return res, fmt.Errorf("snapshot of group %s: %w", group, ErrBusy)
	}
	c.mu.busy[group] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.mu.busy, group)
		c.mu.Unlock()
	}()

	start := c.now()
	defer func() { res.Total = c.now().Sub(start) }()

	// Reserve.
	rctx, cancel := context.WithTimeout(ctx, c.stepTimeout)
	r, err := c.catalog.Reserve(rctx, group)
	cancel()
	res.Reserve = c.now().Sub(start)
	if err != nil {
		return res, fmt.Errorf("snapshot of group %s: %w: %w", group, ErrReserve, err)
	}
	res.SnapshotID, res.Epoch = r.SnapshotID, r.Epoch
	p, err := planOf(r)
	if err != nil {
		return res, c.fail(ctx, &res, ReasonInvalid, fmt.Errorf("reservation: %w", err))
	}
	res.Targets = make([]TargetResult, len(p.nodes))
	tgts := make([]Target, len(p.nodes))
	var errs []error
	for i, n := range p.nodes {
		res.Targets[i] = TargetResult{Node: n, Volumes: p.volumes[i]}
		if tgts[i], err = c.targets(n); err != nil {
			res.Targets[i].Reason, res.Targets[i].Err = ReasonTarget, err
			errs = append(errs, fmt.Errorf("target %s: %w", n, err))
		}
	}
	if len(errs) > 0 {
		return res, c.fail(ctx, &res, ReasonTarget, errors.Join(errs...))
	}

	// Hold everywhere at once, then release once every target has
	// switched (cut).
	reason, err := c.cut(ctx, &res, tgts, r.Epoch+1)
	if err != nil {
		return res, c.fail(ctx, &res, reason, err)
	}

	// Seal, once nothing stamped ≤ e is in flight anywhere.
	t := c.now()
	if err := c.drain(ctx, &res, tgts); err != nil {
		res.Seal = c.now().Sub(t)
		return res, c.fail(ctx, &res, ReasonDrain, err)
	}
	sctx, cancel := context.WithTimeout(ctx, c.stepTimeout)
	err = c.catalog.Seal(sctx, r.SnapshotID)
	cancel()
	res.Seal = c.now().Sub(t)
	if err != nil {
		return res, c.fail(ctx, &res, ReasonSeal, err)
	}
	res.Sealed = true
	return res, nil
}

// fail fails the reserved snapshot and returns the error for the caller.
func (c *Coordinator) fail(ctx context.Context, res *Result, reason string, cause error) error {
	res.Reason = reason
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.stepTimeout)
	defer cancel()
	err := fmt.Errorf("snapshot %d of group %s at epoch %d: %s: %w: %w", res.SnapshotID, res.Group, res.Epoch, reason, ErrFailed, cause)
	if ferr := c.catalog.Fail(fctx, res.SnapshotID, reason); ferr != nil {
		err = errors.Join(err, fmt.Errorf("snapshot %d: recording the failure: %w", res.SnapshotID, ferr))
	}
	return err
}

// cut asks every target to switch to next and hold, and once every one
// has switched, to release. Each target's Hold runs on its own goroutine
// (a leg). The leg whose Hold answers last, finding every other Hold
// answered without error, starts every target's release itself, back to
// back (a ReleaseStarter's is sent without waiting for its answer), and
// then lets the other legs gather their answers. So the release follows
// the last switch with no goroutine hop: not through the coordinator's
// goroutine, nor through each leg's, which on a loaded host may wait
// milliseconds to run (go tool trace of cairn-4target-snap100ms: a leg
// runnable for 1.9 ms before it sent its release). A target that is not a
// ReleaseStarter is released by its own leg.
//
// The argument of DESIGN.md §3 needs only that no Release is sent before
// every target answered its Hold without error: the releases start then
// only. If a Hold erred or the hold step passed its deadline, the
// coordinator aborts instead (unless the last Hold answered just then,
// which makes the releases go as above): every leg sends its Release once
// its Hold has returned (a target that switched lets go; one that did not
// finds no hold), and the snapshot fails. Each Release gets a step's time
// of its own, not cancelled with the caller's ctx: holds must end whatever
// happened to the caller. The coordinator waits for the releases of the
// targets whose Hold answered, or the release step's deadline; a target
// that did not answer is not waited for (its own hold deadline covers it).
// Every leg ends within two steps; its sends are buffered.
//
// It fills res.Hold (until every Hold answered) and res.Release (from then
// until every release was gathered) and returns the failure reason with
// the error.
func (c *Coordinator) cut(ctx context.Context, res *Result, tgts []Target, next uint64) (string, error) {
	hctx, cancel := context.WithTimeout(ctx, c.stepTimeout)
	defer cancel()
	type holdAnswer struct {
		i   int
		d   time.Duration
		err error
	}
	holds := make(chan holdAnswer, len(tgts))
	releases := make(chan releaseAnswer, len(tgts))
	// Exactly one of switched and abort is closed, by whoever moves ended
	// from cutOpen: the last Hold to answer, all without error (cutSwitched,
	// after it started every release), or the coordinator when the holds
	// failed (cutAborted).
	var ended atomic.Int32
	switched := make(chan struct{})
	abort := make(chan struct{})
	var left atomic.Int64 // Holds not yet answered without error
	left.Store(int64(len(tgts)))
	legs := make([]leg, len(tgts)) // written by the opener before it closes switched
	start := c.now()
	for i, tg := range tgts {
		vols := res.Targets[i].Volumes
		go func() {
			err := tg.Hold(hctx, vols, next, c.holdTimeout)
			if err == nil && left.Add(-1) == 0 && ended.CompareAndSwap(cutOpen, cutSwitched) {
				// Every target switched: release them all from here,
				// back to back, then let the other legs gather.
				for j := range tgts {
					legs[j].start(ctx, c.stepTimeout, tgts[j], res.Targets[j].Volumes, next)
				}
				close(switched)
			}
			holds <- holdAnswer{i, c.now().Sub(start), err}
			var rep HoldReport
			var rerr error
			select {
			case <-switched:
				rep, rerr = legs[i].wait()
			case <-abort:
				var l leg
				l.start(ctx, c.stepTimeout, tg, vols, next)
				rep, rerr = l.wait()
			}
			releases <- releaseAnswer{i, rep, rerr}
		}()
	}

	// Hold: gather every answer, or the first error, or the deadline.
	answered := make([]bool, len(tgts))
	reason, err := func() (string, error) {
		var errs []error
		for pending := len(tgts); pending > 0; pending-- {
			select {
			case a := <-holds:
				answered[a.i] = true
				tr := &res.Targets[a.i]
				tr.Hold = a.d
				if a.err != nil {
					tr.Reason, tr.Err = ReasonHold, a.err
					errs = append(errs, fmt.Errorf("target %s: hold: %w", tr.Node, a.err))
					cancel() // the snapshot is lost: stop waiting on the others
				}
			case <-hctx.Done():
				if len(errs) > 0 {
					return ReasonHold, errors.Join(errs...)
				}
				var late []string
				for i := range res.Targets {
					if !answered[i] {
						res.Targets[i].Reason = ReasonTimeout
						late = append(late, res.Targets[i].Node)
					}
				}
				return ReasonTimeout, fmt.Errorf("hold: no answer from %v in %v: %w", late, c.stepTimeout, hctx.Err())
			}
		}
		if len(errs) > 0 {
			return ReasonHold, errors.Join(errs...)
		}
		return "", nil
	}()
	res.Hold = c.now().Sub(start)
	if err != nil {
		if ended.CompareAndSwap(cutOpen, cutAborted) {
			close(abort) // the legs release once their Hold returned
		} // else every Hold answered after all, and the releases are on their way
		cancel()
		_ = c.gatherReleases(res, releases, answered)
		return reason, err
	}
	// Every Hold answered without error, so switched is closed: the legs
	// are releasing.
	t := c.now()
	err = c.gatherReleases(res, releases, answered)
	res.Release = c.now().Sub(t)
	if err != nil {
		return ReasonRelease, err
	}
	return "", nil
}

// The states of a cut: open, then switched or aborted.
const (
	cutOpen int32 = iota
	cutSwitched
	cutAborted
)

// ReleaseStarter is a Target that can send a Release without waiting for
// its answer, so that one goroutine sends every target's release back to
// back (see cut). A Target that is not one is released by its own leg.
type ReleaseStarter interface {
	// StartRelease starts what Release would do and returns what waits
	// for its outcome; wait must be called, once, while ctx is valid. On
	// error nothing was started.
	StartRelease(ctx context.Context, volumes []string, next uint64) (wait func() (HoldReport, error), err error)
}

// leg is one target's release in a cut.
type leg struct {
	cancel  context.CancelFunc
	pending func() (HoldReport, error) // a started release, or nil
	err     error                      // StartRelease's
	started bool
}

// start starts the target's release, if it is a ReleaseStarter, under a
// step's time of its own (not cancelled with the caller's ctx: holds must
// end whatever happened to the caller).
func (l *leg) start(ctx context.Context, step time.Duration, tg Target, vols []string, next uint64) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), step)
	l.cancel, l.started = cancel, true
	if rs, ok := tg.(ReleaseStarter); ok {
		l.pending, l.err = rs.StartRelease(rctx, vols, next)
		if l.err != nil {
			l.pending = nil
		}
		return
	}
	l.pending = func() (HoldReport, error) { return tg.Release(rctx, vols, next) }
}

// wait returns the outcome of the release start began.
func (l *leg) wait() (HoldReport, error) {
	if !l.started {
		return HoldReport{}, errors.New("snapshot: internal error: a leg waited on a release never started")
	}
	defer l.cancel()
	if l.err != nil {
		return HoldReport{}, l.err
	}
	return l.pending()
}

// releaseAnswer is one leg's Release.
type releaseAnswer struct {
	i   int
	rep HoldReport
	err error
}

// gatherReleases waits for the releases of the targets marked in wait,
// or the release step's deadline. It fails if one of them erred or
// reported a hold that ended before the release.
func (c *Coordinator) gatherReleases(res *Result, answers <-chan releaseAnswer, wait []bool) error {
	pending := 0
	for _, w := range wait {
		if w {
			pending++
		}
	}
	deadline := time.NewTimer(c.stepTimeout)
	defer deadline.Stop()
	var errs []error
	for ; pending > 0; pending-- {
		select {
		case a := <-answers:
			if !wait[a.i] {
				pending++ // not counted
				continue
			}
			tr := &res.Targets[a.i]
			tr.Report = a.rep
			for _, h := range a.rep.Volumes {
				res.Window = max(res.Window, h.Window)
			}
			switch {
			case a.err != nil:
				errs = append(errs, fmt.Errorf("target %s: release: %w", tr.Node, a.err))
			case !a.rep.released():
				errs = append(errs, fmt.Errorf("target %s: a hold ended before the release: %+v", tr.Node, a.rep.Volumes))
			default:
				continue
			}
			if tr.Reason == "" {
				tr.Reason, tr.Err = ReasonRelease, errs[len(errs)-1]
			}
		case <-deadline.C:
			errs = append(errs, fmt.Errorf("release: %d targets did not answer in %v: %w", pending, c.stepTimeout, context.DeadlineExceeded))
			return errors.Join(errs...)
		}
	}
	return errors.Join(errs...)
}

// drain polls, with backoff, every target whose release did not report it
// drained until all are, or the step deadline.
func (c *Coordinator) drain(ctx context.Context, res *Result, tgts []Target) error {
	dctx, cancel := context.WithTimeout(ctx, c.stepTimeout)
	defer cancel()
	var pending []int
	for i := range tgts {
		if !res.Targets[i].Report.drained(len(res.Targets[i].Volumes)) {
			pending = append(pending, i)
		}
	}
	wait := drainPollMin
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		var errs []error
		left := pending[:0]
		for _, i := range pending {
			ok, err := tgts[i].Drained(dctx, res.Targets[i].Volumes, res.Epoch)
			if err != nil {
				errs = append(errs, fmt.Errorf("target %s: drained: %w", res.Targets[i].Node, err))
			}
			if !ok {
				left = append(left, i)
			}
		}
		pending = left
		if len(pending) == 0 {
			return nil
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-dctx.Done():
			var nodes []string
			for _, i := range pending {
				res.Targets[i].Reason = ReasonDrain
				nodes = append(nodes, res.Targets[i].Node)
			}
			errs = append(errs, fmt.Errorf("writes of epoch %d still in flight at %v after %v: %w", res.Epoch, nodes, c.stepTimeout, dctx.Err()))
			return errors.Join(errs...)
		}
		wait = min(2*wait, drainPollMax)
	}
}
