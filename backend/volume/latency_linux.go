package volume

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// timerfdWaker sleeps on a timerfd through the runtime's netpoller: the
// goroutine parks like one waiting on a socket, and the kernel's
// high-resolution timer makes the fd readable on time.
type timerfdWaker struct {
	f  *os.File
	rc syscall.RawConn
}

func newWaker() (waker, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	// A non-blocking fd makes os.NewFile register it with the netpoller.
	f := os.NewFile(uintptr(fd), "latency-timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	return &timerfdWaker{f: f, rc: rc}, nil
}

func (w *timerfdWaker) sleepUntil(t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	// A relative expiry: time.Time's monotonic reading is not exposed as a
	// CLOCK_MONOTONIC value. The settime call costs well under d's
	// resolution here (µs against ms).
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	var serr error
	if err := w.rc.Control(func(fd uintptr) { serr = unix.TimerfdSettime(int(fd), 0, &spec, nil) }); err != nil {
		return fmt.Errorf("timerfd: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("timerfd_settime: %w", serr)
	}
	var buf [8]byte
	if _, err := w.f.Read(buf[:]); err != nil {
		return fmt.Errorf("timerfd read: %w", err)
	}
	return nil
}

func (w *timerfdWaker) close() error { return w.f.Close() }
