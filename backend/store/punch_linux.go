package store

import "syscall"

// fallocate(2) modes (linux/falloc.h).
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
)

// punchHole deallocates [off, off+n) of the file fd, keeping its size.
func punchHole(fd uintptr, off, n int64) error {
	for {
		err := syscall.Fallocate(int(fd), fallocKeepSize|fallocPunchHole, off, n)
		if err != syscall.EINTR {
			return err
		}
	}
}

// ftruncate sets the size of the file fd.
func ftruncate(fd uintptr, size int64) error {
	for {
		err := syscall.Ftruncate(int(fd), size)
		if err != syscall.EINTR {
			return err
		}
	}
}
