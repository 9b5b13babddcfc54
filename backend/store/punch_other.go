//go:build !linux

package store

import "errors"

// punchHole is not implemented off Linux: space comes back by cleaning.
func punchHole(fd uintptr, off, n int64) error {
	return errors.New("store: punching holes is supported on linux only")
}
