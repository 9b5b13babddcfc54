//go:build !linux

package store

import "github.com/cockroachdb/pebble/v2/vfs"

// mapView makes no mapping off Linux: reads use ReadAt.
func mapView(vfs.File, int64) []byte { return nil }

func unmapView([]byte) error { return nil }
