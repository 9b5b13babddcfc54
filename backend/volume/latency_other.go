//go:build !linux

package volume

import "time"

func newWaker() (waker, error) { return timerWaker{}, nil }

// timerWaker is the portable waker: the runtime's timer, with its
// millisecond granularity when the runtime is idle.
type timerWaker struct{}

func (timerWaker) sleepUntil(t time.Time) error { time.Sleep(time.Until(t)); return nil }
func (timerWaker) close() error                 { return nil }
