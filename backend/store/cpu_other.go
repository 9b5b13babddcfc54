//go:build !linux

package store

import "time"

// threadCPU: no per-thread usage here; the cleaner counts wall-clock time.
func threadCPU() (time.Duration, bool) { return 0, false }
