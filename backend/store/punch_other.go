//go:build !linux

package store

import "errors"

// punchHole is not implemented off Linux: space comes back by cleaning.
func punchHole(fd uintptr, off, n int64) error {
	return errors.New("store: punching holes is supported on linux only")
}

// ftruncate is not implemented off Linux: a reused segment file keeps its
// old tail (never read as records) until the segment is deleted.
func ftruncate(fd uintptr, size int64) error {
	return errors.New("store: truncating segment files is supported on linux only")
}
