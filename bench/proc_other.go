//go:build !linux

package bench

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

func setProcAttrs(cmd *exec.Cmd) {}

func killGroup(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Signal(os.Interrupt)
}

func killGroupHard(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}

func killPID(pid int, sig syscall.Signal) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Signal(sig)
}

func processGone(pid int) bool { return killPID(pid, 0) != nil }

// availBytes is not known here; callers treat the error as "unknown".
func availBytes(dir string) (int64, error) { return 0, errors.ErrUnsupported }
