package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

const (
	// tgtdSocketDir is where tgtd puts its control socket, socket.<port>.
	tgtdSocketDir = "/var/run/tgtd"
	// tgtdControlPortMin and tgtdControlPortMax bound the control "ports"
	// (socket suffixes) the harness picks from, far from the default 0 a
	// system tgtd uses.
	tgtdControlPortMin = 20000 // tgtd takes 0 to 32767
	tgtdControlPortMax = 32768
	// tgtdStartAttempts bounds retries when a control port or portal
	// turns out to be taken.
	tgtdStartAttempts = 5
	// tgtdIQNPrefix names the harness's tgtd targets: prefix:export.
	tgtdIQNPrefix = "iqn.2026-11.dev.cairn.bench"
	// tgtdLUN is the data LUN (LUN 0 is tgtd's controller).
	tgtdLUN = 1
)

// TGTD is the Linux SCSI target framework daemon serving one file-backed
// LUN (buffered I/O, the rdwr backing store) over iSCSI on loopback, to
// every initiator. It runs in the foreground with a control socket of its
// own (-C), so it never touches a system tgtd, and is configured and
// stopped with tgtadm on that socket. It needs root.
type TGTD struct{}

func (TGTD) Describe(ctx context.Context) string {
	return "tgtd " + toolVersion(ctx, "tgtd", "-V") + " (file LUN, rdwr backing store)"
}

func (TGTD) Start(ctx context.Context, o StartOptions) (Instance, error) {
	switch {
	case o.FrontEnd != ISCSI:
		return nil, fmt.Errorf("%w: tgtd serves iSCSI only, not %s", ErrUnavailable, o.FrontEnd)
	case o.Latency != 0:
		return nil, fmt.Errorf("%w: tgtd cannot inject latency", ErrUnavailable)
	}
	bin, err := lookTool("tgtd")
	if err != nil {
		return nil, err
	}
	adm, err := lookTool("tgtadm")
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: tgtd needs root (its control socket is in %s)", ErrUnavailable, tgtdSocketDir)
	}
	path, err := createBacking(o)
	if err != nil {
		return nil, err
	}
	var errs []error
	for range tgtdStartAttempts {
		inst, err := startTGTD(ctx, o, bin, adm, path)
		if err == nil {
			return inst, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("tgtd: %w", errors.Join(errs...))
}

// tgtdInstance is a running tgtd.
type tgtdInstance struct {
	p      *proc
	adm    string
	ctl    string // control port
	target Target
	closed bool
}

func (t *tgtdInstance) Target() Target { return t.target }
func (t *tgtdInstance) PIDs() []int    { return []int{t.p.cmd.Process.Pid} }

// freeControlPort returns a control port no tgtd has a socket for.
func freeControlPort() string {
	for {
		n := tgtdControlPortMin + rand.IntN(tgtdControlPortMax-tgtdControlPortMin)
		s := strconv.Itoa(n)
		if _, err := os.Stat(filepath.Join(tgtdSocketDir, "socket."+s)); errors.Is(err, os.ErrNotExist) {
			return s
		}
	}
}

func startTGTD(ctx context.Context, o StartOptions, bin, adm, backing string) (Instance, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	ctl := freeControlPort()
	p, err := startProc(ctx, o.Dir, o.Name, nil, bin, "-f", "-C", ctl, "--iscsi", "portal="+addr)
	if err != nil {
		return nil, err
	}
	t := &tgtdInstance{p: p, adm: adm, ctl: ctl}
	if err := t.waitReady(ctx, addr); err != nil {
		t.Close()
		return nil, err
	}
	iqn := tgtdIQNPrefix + ":" + o.Export
	for _, args := range [][]string{
		{"--mode", "target", "--op", "new", "--tid", "1", "--targetname", iqn},
		{"--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", strconv.Itoa(tgtdLUN), "--backing-store", backing},
		{"--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"},
	} {
		if err := t.admin(ctx, args...); err != nil {
			t.Close()
			return nil, err
		}
	}
	t.target = Target{FrontEnd: ISCSI, URI: iscsiURI(addr, iqn, tgtdLUN), SizeBytes: o.SizeBytes, LogicalBlockBytes: 512}
	return t, nil
}

// admin runs tgtadm on this instance's control socket.
func (t *tgtdInstance) admin(ctx context.Context, args ...string) error {
	argv := append([]string{t.adm, "-C", t.ctl, "--lld", "iscsi"}, args...)
	if _, err := runTool(ctx, probeTimeout*10, argv...); err != nil {
		return fmt.Errorf("tgtadm %v: %w", args, err)
	}
	return nil
}

// waitReady waits until tgtd answers on its control socket and its portal.
func (t *tgtdInstance) waitReady(ctx context.Context, addr string) error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if last = t.admin(ctx, "--mode", "target", "--op", "show"); last == nil {
			c, err := net.DialTimeout("tcp", addr, probeTimeout)
			if err == nil {
				c.Close()
				return nil
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.p.exited:
			return fmt.Errorf("tgtd exited before serving (control port %s, portal %s): %v: %s", t.ctl, addr, t.p.waitErr, t.p.logTail())
		case <-time.After(probeEvery):
		}
	}
	return fmt.Errorf("tgtd: not ready on %s after %s: %v: %s", addr, readyTimeout, last, t.p.logTail())
}

// Close deletes the target (dropping sessions) and asks tgtd to exit,
// which it does only without targets; if it has not gone after
// stopTimeout its group is killed. It removes the control socket files.
func (t *tgtdInstance) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	select {
	case <-t.p.exited:
	default:
		t.admin(ctx, "--mode", "target", "--op", "delete", "--force", "--tid", "1")
		exec := []string{t.adm, "-C", t.ctl, "--mode", "system", "--op", "delete"}
		runTool(ctx, probeTimeout*10, exec...)
		select {
		case <-t.p.exited:
		case <-ctx.Done():
		}
	}
	err := t.p.stop()
	for _, f := range []string{"socket." + t.ctl, "socket." + t.ctl + ".lock"} {
		os.Remove(filepath.Join(tgtdSocketDir, f))
	}
	return err
}
