//go:build !linux

package volume

func newWaker() (waker, error) { return timerWaker{}, nil }
