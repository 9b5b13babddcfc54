package wire

import (
	"context"
	"fmt"
	"io"
	"time"

	"cairn/backend/store"
	"cairn/target"
)

// The snapshot ops: a snapshot coordinator's calls to a target's part of
// the protocol (DESIGN.md §3) — switch and hold, release, drained — on the
// node RPC, so that they run over the cluster's TLS and on any address.
// A node serves them when ServerOptions.Snapshot is set; a node without
// it answers CodeUnsupported.
//
// Every request carries a budget: how long the node may work on it (the
// caller's deadline, as a duration, so that the two clocks need not
// agree). The node runs the call under a context with that timeout, so a
// call never outlives the coordinator's step that made it, whatever
// happens to the reply.

// Bounds of the snapshot ops.
const (
	// TargetVolumesMax bounds the volumes of one call (the coordinator's
	// bound on a group).
	TargetVolumesMax = 4096
	// TargetNameBytesMax bounds a volume name in a call.
	TargetNameBytesMax = 255
	// TargetBudgetMax bounds a call's budget and a hold's timeout.
	TargetBudgetMax = time.Minute
	// TargetRequestSizeMin is the fixed part of a snapshot request:
	// budget ns, epoch, hold timeout ns u64, volumes u16; then per volume
	// a name length u8 and the name.
	TargetRequestSizeMin = 26
	// TargetRequestBytesMax is the largest snapshot request payload.
	TargetRequestBytesMax = TargetRequestSizeMin + TargetVolumesMax*(1+TargetNameBytesMax)
	// ReasonBytesMax bounds a hold's end reason in a release reply.
	ReasonBytesMax = 255
	// volumeHoldSize is the fixed part of one volume of a release reply:
	// window ns u64, held u64, drained u8, reason length u8; then the
	// reason.
	volumeHoldSize = 18
	// DrainedReplySize is the payload of a drained reply: 1 or 0.
	DrainedReplySize = 1
)

// releaseReplyBytes is the largest release reply to a call of n volumes:
// volumes u16, the volumes, error length u16 and text.
func releaseReplyBytes(n int) int {
	return 2 + n*(volumeHoldSize+ReasonBytesMax) + 2 + ErrorMessageMax
}

// targetOp reports whether op is a snapshot op.
func targetOp(op Op) bool {
	return op == OpTargetHold || op == OpTargetRelease || op == OpTargetDrained
}

// TargetRequest is the body of OpTargetHold, OpTargetRelease and
// OpTargetDrained.
type TargetRequest struct {
	// Budget is how long the node may work on the call, in (0,
	// TargetBudgetMax].
	Budget time.Duration
	// Epoch is the epoch the volumes switch to (hold) or were switched
	// to (release); for drained, the epoch cut.
	Epoch uint64
	// Timeout is a hold's own deadline, in (0, TargetBudgetMax]; 0 for
	// release and drained.
	Timeout time.Duration
	// Volumes are the volumes of the call, 1 to TargetVolumesMax names
	// of 1 to TargetNameBytesMax bytes.
	Volumes []string
}

func (r TargetRequest) check() error {
	switch {
	case r.Budget <= 0 || r.Budget > TargetBudgetMax:
		return fmt.Errorf("budget %v outside (0, %v]", r.Budget, TargetBudgetMax)
	case r.Timeout < 0 || r.Timeout > TargetBudgetMax:
		return fmt.Errorf("hold timeout %v outside [0, %v]", r.Timeout, TargetBudgetMax)
	case len(r.Volumes) == 0 || len(r.Volumes) > TargetVolumesMax:
		return fmt.Errorf("%d volumes, want 1 to %d", len(r.Volumes), TargetVolumesMax)
	}
	for i, v := range r.Volumes {
		if len(v) == 0 || len(v) > TargetNameBytesMax {
			return fmt.Errorf("volume %d: name of %d bytes, want 1 to %d", i, len(v), TargetNameBytesMax)
		}
	}
	return nil
}

// AppendTargetRequest appends r's encoding to b. It panics on a request
// outside the bounds (a programmer error: the Client checks first).
func AppendTargetRequest(b []byte, r TargetRequest) []byte {
	if err := r.check(); err != nil {
		panic("wire: target request: " + err.Error())
	}
	b = be.AppendUint64(b, uint64(r.Budget))
	b = be.AppendUint64(b, r.Epoch)
	b = be.AppendUint64(b, uint64(r.Timeout))
	b = be.AppendUint16(b, uint16(len(r.Volumes)))
	for _, v := range r.Volumes {
		b = append(b, byte(len(v)))
		b = append(b, v...)
	}
	return b
}

// ParseTargetRequest decodes a snapshot request body. Errors wrap
// ErrProtocol.
func ParseTargetRequest(b []byte) (TargetRequest, error) {
	if len(b) < TargetRequestSizeMin || len(b) > TargetRequestBytesMax {
		return TargetRequest{}, fmt.Errorf("%w: target request of %d bytes", ErrProtocol, len(b))
	}
	budget, timeout := be.Uint64(b), be.Uint64(b[16:])
	if budget > uint64(TargetBudgetMax) || timeout > uint64(TargetBudgetMax) {
		return TargetRequest{}, fmt.Errorf("%w: target request budget %d ns, timeout %d ns, at most %v", ErrProtocol, budget, timeout, TargetBudgetMax)
	}
	r := TargetRequest{Budget: time.Duration(budget), Epoch: be.Uint64(b[8:]), Timeout: time.Duration(timeout)}
	n := int(be.Uint16(b[24:]))
	if n == 0 || n > TargetVolumesMax {
		return TargetRequest{}, fmt.Errorf("%w: target request of %d volumes", ErrProtocol, n)
	}
	r.Volumes = make([]string, 0, n)
	p := b[TargetRequestSizeMin:]
	for range n {
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return TargetRequest{}, fmt.Errorf("%w: target request cut off after %d volumes", ErrProtocol, len(r.Volumes))
		}
		r.Volumes = append(r.Volumes, string(p[1:1+int(p[0])]))
		p = p[1+int(p[0]):]
	}
	if len(p) != 0 {
		return TargetRequest{}, fmt.Errorf("%w: target request: %d bytes after the volumes", ErrProtocol, len(p))
	}
	if err := r.check(); err != nil {
		return TargetRequest{}, fmt.Errorf("%w: target request: %w", ErrProtocol, err)
	}
	return r, nil
}

// VolumeHold is one volume's hold as the target saw it end.
type VolumeHold struct {
	Window  time.Duration // from the switch to the end; ≥ 0
	Held    int64         // most acknowledgements held at once; ≥ 0
	Drained bool          // nothing stamped ≤ the cut in flight at the release
	Reason  string        // why the hold ended; at most ReasonBytesMax bytes
}

// ReleaseReply is the body of an OpTargetRelease reply: each volume's
// hold, in the request's order, and the text of the error the release
// returned with them ("" for none: a hold that ended before the release
// is such an error, and the report still matters).
type ReleaseReply struct {
	Volumes []VolumeHold
	Err     string // at most ErrorMessageMax bytes
}

// AppendReleaseReply appends r's encoding to b. It panics on a reply
// outside the bounds (the server truncates reasons and the error first).
func AppendReleaseReply(b []byte, r ReleaseReply) []byte {
	if len(r.Volumes) > TargetVolumesMax || len(r.Err) > ErrorMessageMax {
		panic(fmt.Sprintf("wire: release reply of %d volumes, error of %d bytes", len(r.Volumes), len(r.Err)))
	}
	b = be.AppendUint16(b, uint16(len(r.Volumes)))
	for _, v := range r.Volumes {
		if v.Window < 0 || v.Held < 0 || len(v.Reason) > ReasonBytesMax {
			panic(fmt.Sprintf("wire: release reply volume %+v", v))
		}
		b = be.AppendUint64(b, uint64(v.Window))
		b = be.AppendUint64(b, uint64(v.Held))
		d := byte(0)
		if v.Drained {
			d = 1
		}
		b = append(b, d, byte(len(v.Reason)))
		b = append(b, v.Reason...)
	}
	b = be.AppendUint16(b, uint16(len(r.Err)))
	return append(b, r.Err...)
}

// ParseReleaseReply decodes an OpTargetRelease reply body. Errors wrap
// ErrProtocol.
func ParseReleaseReply(b []byte) (ReleaseReply, error) {
	bad := func(what string) (ReleaseReply, error) {
		return ReleaseReply{}, fmt.Errorf("%w: release reply of %d bytes: %s", ErrProtocol, len(b), what)
	}
	if len(b) < 4 || len(b) > releaseReplyBytes(TargetVolumesMax) {
		return bad("size")
	}
	n := int(be.Uint16(b))
	if n > TargetVolumesMax {
		return bad("too many volumes")
	}
	r := ReleaseReply{Volumes: make([]VolumeHold, 0, n)}
	p := b[2:]
	for range n {
		if len(p) < volumeHoldSize || len(p) < volumeHoldSize+int(p[17]) {
			return bad("cut off")
		}
		w, h := be.Uint64(p), be.Uint64(p[8:])
		if w>>63 != 0 || h>>63 != 0 || p[16] > 1 {
			return bad("window, held or drained out of range")
		}
		r.Volumes = append(r.Volumes, VolumeHold{Window: time.Duration(w), Held: int64(h), Drained: p[16] == 1,
			Reason: string(p[volumeHoldSize : volumeHoldSize+int(p[17])])})
		p = p[volumeHoldSize+int(p[17]):]
	}
	if len(p) < 2 || len(p) != 2+int(be.Uint16(p)) || len(p)-2 > ErrorMessageMax {
		return bad("error text")
	}
	r.Err = string(p[2:])
	return r, nil
}

// SnapshotTarget is what a Server serves the snapshot ops with: a
// target's part of the protocol (cmd/cairnd adapts snapshot.LocalTarget).
// Methods are called from many goroutines at once, with a context that
// ends at the request's budget or when the connection ends; they must
// return once it is done and must not retain volumes.
type SnapshotTarget interface {
	// Hold switches every volume to epoch next and holds its
	// acknowledgements until Release or timeout.
	Hold(ctx context.Context, volumes []string, next uint64, timeout time.Duration) error
	// Release ends the holds to epoch next and reports each, in order.
	// holds non-nil with an error: the error goes back beside them.
	Release(ctx context.Context, volumes []string, next uint64) ([]VolumeHold, error)
	// Drained reports whether no write stamped ≤ epoch is in flight.
	Drained(ctx context.Context, volumes []string, epoch uint64) (bool, error)
}

// targetReplyBound is the reply payload the server charges to a snapshot
// request before it is parsed.
func targetReplyBound(op Op) int {
	if op == OpTargetRelease {
		return releaseReplyBytes(TargetVolumesMax)
	}
	return DrainedReplySize
}

// dispatchTarget reads a snapshot request h and hands it to a worker, or
// answers it with an error. It returns why the connection must end, or "".
func (c *sconn) dispatchTarget(h Header) string {
	switch {
	case c.s.opts.Snapshot == nil:
		return c.skip(h, fmt.Errorf("%w: %s: this node runs no target", ErrUnsupported, h.Op))
	case h.Flags != 0:
		return c.skip(h, fmt.Errorf("%w: flags %#x on %s", ErrProtocol, uint16(h.Flags), h.Op))
	case h.Length < TargetRequestSizeMin || h.Length > TargetRequestBytesMax:
		return c.skip(h, fmt.Errorf("%w: %s request of %d bytes", ErrProtocol, h.Op, h.Length))
	}
	n := int(h.Length) + targetReplyBound(h.Op)
	c.inflight.Acquire(n)
	r := getRequest()
	r.h, r.budget = h, n
	r.buf = target.GetBuffer(int(h.Length))
	r.data = (*r.buf)[:h.Length]
	c.rdl.arm(c.nc, c.s.opts.FrameTimeout)
	if _, err := io.ReadFull(c.br, r.data); err != nil {
		c.release(r)
		return ioReason("read target request", err)
	}
	if sum := Checksum(r.data); sum != h.Sum {
		r.err = fmt.Errorf("%w: %s payload crc %#08x, computed %#08x", ErrChecksum, h.Op, h.Sum, sum)
		reason := r.err.Error()
		c.reply(r)
		return reason
	}
	c.work1(r)
	return ""
}

// executeTarget runs a snapshot request on the node's SnapshotTarget and
// leaves the reply payload in r.data.
func (c *sconn) executeTarget(r *request) {
	q, err := ParseTargetRequest(r.data)
	r.data = nil
	if err == nil && (r.h.Op == OpTargetHold) != (q.Timeout > 0) {
		err = fmt.Errorf("%w: %s with hold timeout %v", ErrProtocol, r.h.Op, q.Timeout)
	}
	if err != nil {
		r.err = err
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, q.Budget)
	defer cancel()
	t := c.s.opts.Snapshot
	switch r.h.Op {
	case OpTargetHold:
		r.err = t.Hold(ctx, q.Volumes, q.Epoch, q.Timeout)
	case OpTargetRelease:
		holds, err := t.Release(ctx, q.Volumes, q.Epoch)
		if holds == nil && err != nil {
			r.err = err
			return
		}
		if len(holds) != len(q.Volumes) {
			r.err = fmt.Errorf("%w: target released %d of %d volumes", store.ErrIO, len(holds), len(q.Volumes))
			return
		}
		rep := ReleaseReply{Volumes: holds}
		for i := range rep.Volumes {
			if h := &rep.Volumes[i]; len(h.Reason) > ReasonBytesMax || h.Window < 0 || h.Held < 0 {
				h.Reason, h.Window, h.Held = truncate(h.Reason, ReasonBytesMax), max(h.Window, 0), max(h.Held, 0)
			}
		}
		if err != nil {
			rep.Err = errorMessage(err)
		}
		r.data = AppendReleaseReply(make([]byte, 0, releaseReplyBytes(len(holds))), rep)
	case OpTargetDrained:
		var ok bool
		if ok, r.err = t.Drained(ctx, q.Volumes, q.Epoch); r.err == nil {
			r.data = []byte{0}
			if ok {
				r.data[0] = 1
			}
		}
	}
	if r.err == nil {
		r.sum = Checksum(r.data)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// TargetHold asks the node's target to switch volumes to epoch next and
// hold their acknowledgements until TargetRelease or timeout. The node
// works on it no longer than ctx's deadline (CallTimeout without one).
func (c *Client) TargetHold(ctx context.Context, volumes []string, next uint64, timeout time.Duration) error {
	if timeout <= 0 || timeout > TargetBudgetMax {
		return fmt.Errorf("wire: target hold on %s: %w: hold timeout %v outside (0, %v]", c.addr, store.ErrInvalid, timeout, TargetBudgetMax)
	}
	_, err := c.target(ctx, OpTargetHold, TargetRequest{Epoch: next, Timeout: timeout, Volumes: volumes}, nil)
	return err
}

// TargetRelease asks the node's target to let go the acknowledgements held
// by the hold to epoch next, and returns each volume's hold in order. The
// error is the release's (a hold that ended before it, say) with the holds
// still returned, or the call's with none.
func (c *Client) TargetRelease(ctx context.Context, volumes []string, next uint64) ([]VolumeHold, error) {
	wait, err := c.StartTargetRelease(ctx, volumes, next)
	if err != nil {
		return nil, err
	}
	return wait()
}

// StartTargetRelease sends the request TargetRelease would and returns
// with the call in flight; wait returns what TargetRelease would have.
// Unless StartTargetRelease failed, wait must be called, once, while ctx
// is still valid: until then the call holds one of the connection's
// slots and a pooled reply buffer.
func (c *Client) StartTargetRelease(ctx context.Context, volumes []string, next uint64) (wait func() ([]VolumeHold, error), err error) {
	if len(volumes) == 0 || len(volumes) > TargetVolumesMax {
		return nil, fmt.Errorf("wire: target release on %s: %w: %d volumes, want 1 to %d", c.addr, store.ErrInvalid, len(volumes), TargetVolumesMax)
	}
	bp := target.GetBuffer(releaseReplyBytes(len(volumes)))
	s, err := c.startTarget(ctx, OpTargetRelease, TargetRequest{Epoch: next, Volumes: volumes}, *bp)
	if err != nil {
		target.PutBuffer(bp)
		return nil, err
	}
	return func() ([]VolumeHold, error) {
		defer target.PutBuffer(bp)
		n, err := c.waitTarget(s, OpTargetRelease, len(volumes))
		if err != nil {
			return nil, err
		}
		rep, err := ParseReleaseReply((*bp)[:n])
		if err == nil && len(rep.Volumes) != len(volumes) {
			err = fmt.Errorf("%w: release of %d volumes answered with %d", ErrProtocol, len(volumes), len(rep.Volumes))
		}
		if err != nil {
			return nil, fmt.Errorf("wire: target release on %s: %w", c.addr, err)
		}
		if rep.Err != "" {
			return rep.Volumes, fmt.Errorf("wire: target release on %s: %w", c.addr, &remoteError{op: OpTargetRelease, code: CodeIO, msg: rep.Err})
		}
		return rep.Volumes, nil
	}, nil
}

// TargetDrained asks the node's target whether no write stamped ≤ epoch
// is in flight on any of the volumes.
func (c *Client) TargetDrained(ctx context.Context, volumes []string, epoch uint64) (bool, error) {
	var b [DrainedReplySize]byte
	n, err := c.target(ctx, OpTargetDrained, TargetRequest{Epoch: epoch, Volumes: volumes}, b[:])
	if err != nil {
		return false, err
	}
	if n != DrainedReplySize || b[0] > 1 {
		return false, fmt.Errorf("wire: target drained on %s: %w: reply of %d bytes, %#x", c.addr, ErrProtocol, n, b[0])
	}
	return b[0] == 1, nil
}

// target makes one snapshot call with the budget ctx leaves, its reply
// payload into reply; it returns the payload's length.
func (c *Client) target(ctx context.Context, op Op, q TargetRequest, reply []byte) (int, error) {
	s, err := c.startTarget(ctx, op, q, reply)
	if err != nil {
		return 0, err
	}
	return c.waitTarget(s, op, len(q.Volumes))
}

// startTarget sends one snapshot call with the budget ctx leaves; unless
// it failed, the caller must end it with waitTarget while ctx is valid
// and reply not reused.
func (c *Client) startTarget(ctx context.Context, op Op, q TargetRequest, reply []byte) (*slot, error) {
	q.Budget = c.opts.CallTimeout
	if dl, ok := ctx.Deadline(); ok {
		q.Budget = time.Until(dl)
	}
	if q.Budget <= 0 {
		return nil, fmt.Errorf("wire: %s on %s: %w", op, c.addr, context.DeadlineExceeded)
	}
	q.Budget = min(q.Budget, TargetBudgetMax)
	if err := q.check(); err != nil {
		return nil, fmt.Errorf("wire: %s on %s: %w: %w", op, c.addr, store.ErrInvalid, err)
	}
	a := args{op: op, data: AppendTargetRequest(nil, q), reply: reply}
	s, err := c.start(ctx, &a, nil)
	if err != nil {
		return nil, fmt.Errorf("wire: %s of %d volumes on %s: %w", op, len(q.Volumes), c.addr, err)
	}
	return s, nil
}

// waitTarget waits for the reply of a call startTarget sent and returns
// its payload's length.
func (c *Client) waitTarget(s *slot, op Op, volumes int) (int, error) {
	addr := s.cc.c.addr
	n, _, err := s.cc.wait(s) // s is another call's from here on
	if err = c.ended(err); err != nil {
		return 0, fmt.Errorf("wire: %s of %d volumes on %s: %w", op, volumes, addr, err)
	}
	return n, nil
}
