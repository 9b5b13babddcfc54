package store

import (
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// mapView maps size bytes of f read-only, or returns nil when f is not an
// OS file or the mapping fails (reads then use ReadAt: a view is only
// faster, never needed).
func mapView(f vfs.File, size int64) []byte {
	fd := f.Fd()
	if fd == vfs.InvalidFd || size <= 0 || int64(int(size)) != size {
		return nil
	}
	b, err := syscall.Mmap(int(fd), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil
	}
	// A fault reads its own page only, as a small pread does; long runs,
	// which readahead helps, are read with ReadAt.
	_ = syscall.Madvise(b, syscall.MADV_RANDOM)
	return b
}

// unmapView removes a mapping made by mapView. No reader may be in it.
func unmapView(b []byte) error {
	if b == nil {
		return nil
	}
	return syscall.Munmap(b)
}
