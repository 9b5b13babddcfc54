package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDataDir takes an exclusive lock on data_dir/cairnd.pid and writes
// this process's PID into it, so that a second cairnd on the same
// directory fails at once with a message naming the holder, instead of an
// I/O error from a store deep inside. The lock goes with the process (the
// kernel drops it at exit, kill -9 included); unlock releases it earlier.
func lockDataDir(dir string) (unlock func() error, err error) {
	path := filepath.Join(dir, "cairnd.pid")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				return nil, fmt.Errorf("data_dir %s is in use by cairnd PID %d", dir, pid)
			}
			return nil, fmt.Errorf("data_dir %s is in use by another cairnd", dir)
		}
		return nil, fmt.Errorf("data_dir: lock %s: %w", path, err)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("data_dir: write %s: %w", path, err)
	}
	return f.Close, nil
}
