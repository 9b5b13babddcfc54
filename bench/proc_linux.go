package bench

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// setProcAttrs puts the child in its own process group and has the kernel
// kill it if the harness dies.
func setProcAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup asks the process group led by pid to stop.
func killGroup(pid int) error { return syscall.Kill(-pid, syscall.SIGTERM) }

// killGroupHard kills whatever is left of the group led by pid.
func killGroupHard(pid int) { syscall.Kill(-pid, syscall.SIGKILL) }

// killPID signals one process.
func killPID(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

// processGone reports whether pid has exited (a zombie counts as gone).
func processGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

// availBytes returns the bytes an unprivileged user may still write on
// dir's file system.
func availBytes(dir string) (int64, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, err
	}
	return int64(fs.Bavail) * fs.Bsize, nil
}
