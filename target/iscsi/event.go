package iscsi

import (
	"context"
	"sync"
	"time"
)

// event is a one-shot signal whose channel is made only when someone waits:
// most commands finish without anyone waiting on them, and a channel per
// command was an allocation on the hot path.
type event struct {
	mu    sync.Mutex
	ch    chan struct{}
	fired bool
}

// wait returns a channel closed once fire has been called.
func (e *event) wait() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ch == nil {
		e.ch = make(chan struct{})
		if e.fired {
			close(e.ch)
		}
	}
	return e.ch
}

// fire signals the event; later calls do nothing.
func (e *event) fire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fired {
		return
	}
	e.fired = true
	if e.ch != nil {
		close(e.ch)
	}
}

func (e *event) isFired() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fired
}

// taskCtx is the context a command runs under: the session's, cancelled
// early when the command is aborted. It lives inside the task, so it costs
// no allocation (context.WithCancel cost two per command). The session
// cancels every task it still holds when it ends.
type taskCtx struct {
	parent    context.Context
	cancelled event
}

var _ context.Context = (*taskCtx)(nil)

func (c *taskCtx) Deadline() (time.Time, bool) { return c.parent.Deadline() }
func (c *taskCtx) Done() <-chan struct{}       { return c.cancelled.wait() }
func (c *taskCtx) Value(key any) any           { return c.parent.Value(key) }

func (c *taskCtx) Err() error {
	if c.cancelled.isFired() {
		return context.Canceled
	}
	return c.parent.Err()
}

func (c *taskCtx) cancel() { c.cancelled.fire() }
