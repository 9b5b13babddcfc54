package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const (
	readyTimeout = 60 * time.Second       // for a system to start serving
	stopTimeout  = 10 * time.Second       // for a system to exit on SIGTERM
	probeEvery   = 50 * time.Millisecond  // readiness polling period
	probeTimeout = 500 * time.Millisecond // per readiness probe
)

// proc is a process the harness started: its own process group, killed with
// the group when stopped, when the harness's context ends, and (on Linux) if
// the harness dies. Its output goes to a log file in the work directory.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	cancel  context.CancelFunc
	exited  chan struct{} // closed when Wait returned
	waitErr error         // valid after exited

	stopOnce sync.Once
}

// startProc starts argv in its own process group. Lines of its standard
// error are also passed to onLine (from one goroutine) when it is not nil.
func startProc(ctx context.Context, dir, name string, onLine func(string), argv ...string) (*proc, error) {
	ctx, cancel := context.WithCancel(ctx)
	p := &proc{name: name, cancel: cancel, exited: make(chan struct{}), logPath: filepath.Join(dir, name+".log")}
	logf, err := os.Create(p.logPath)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	setProcAttrs(cmd)
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = stopTimeout
	cmd.Stdout = logf
	var pr *io.PipeReader
	if onLine == nil {
		cmd.Stderr = logf
	} else {
		var pw *io.PipeWriter
		pr, pw = io.Pipe()
		cmd.Stderr = io.MultiWriter(logf, pw)
		defer func() {
			go func() {
				<-p.exited
				pw.Close()
			}()
		}()
	}
	if err := cmd.Start(); err != nil {
		cancel()
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	if pr != nil {
		go func() {
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				onLine(sc.Text())
			}
			io.Copy(io.Discard, pr)
		}()
	}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// stop terminates the process group (SIGTERM, then SIGKILL after
// stopTimeout) and waits for the process. It is idempotent.
func (p *proc) stop() error {
	p.stopOnce.Do(func() {
		select {
		case <-p.exited:
		default:
			p.cancel() // cmd.Cancel: SIGTERM to the group; WaitDelay: SIGKILL
			<-p.exited
		}
		p.cancel()
		killGroupHard(p.cmd.Process.Pid) // stragglers the leader left behind
	})
	// Killed by stop (context.Canceled) or exiting non-zero on the signal
	// (ExitError) is how a server ends; anything else is worth reporting.
	var ee *exec.ExitError
	if p.waitErr != nil && !errors.As(p.waitErr, &ee) && !errors.Is(p.waitErr, context.Canceled) {
		return fmt.Errorf("%s: %w", p.name, p.waitErr)
	}
	return nil
}

// logTail returns the end of the process's log, for error messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	return tail(b)
}

// waitNBD waits until addr answers with an NBD newstyle greeting, the
// process exits, or the timeout passes.
func waitNBD(ctx context.Context, p *proc, addr string) error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if last = probeNBD(addr); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-p.exited:
			return fmt.Errorf("%s exited before serving: %v: %s", p.name, p.waitErr, p.logTail())
		case <-time.After(probeEvery):
		}
	}
	return fmt.Errorf("%s: no NBD service on %s after %s: %v: %s", p.name, addr, readyTimeout, last, p.logTail())
}

// nbdGreeting is the start of a newstyle NBD server's greeting.
var nbdGreeting = []byte("NBDMAGICIHAVEOPT")

func probeNBD(addr string) error {
	c, err := net.DialTimeout("tcp", addr, probeTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeTimeout))
	b := make([]byte, len(nbdGreeting))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if !bytes.Equal(b, nbdGreeting) {
		return fmt.Errorf("greeting %q is not NBD newstyle", b)
	}
	return nil
}

// freeAddrs returns n distinct free loopback addresses (freeAddr).
func freeAddrs(n int) ([]string, error) {
	var out []string
	for range n {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// freeAddr returns a loopback address whose port is free for TCP and UDP
// now, from benchPorts. The range is apart from cmd/cairnd's tests'
// [20000, 32000), whose test binary runs beside this one.
func freeAddr() (string, error) {
	port, err := benchPorts.Free()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", port), nil
}

// benchPorts are the ports freeAddr hands out.
var benchPorts = NewPortRange(12000, 20000)

// PortRange hands out loopback ports of [low, high) that are free for TCP
// and UDP (gossip binds both) when handed out, each once per process. Not
// the kernel's ":0": that picks from the ephemeral range (32768 and up),
// where another process's outgoing connection may take the port between
// this check and the daemon's bind (seen in make test: "bind: address
// already in use"). Processes that run side by side take disjoint ranges.
type PortRange struct {
	low, high int
	mu        sync.Mutex
	used      map[int]bool
}

// NewPortRange returns the range [low, high).
func NewPortRange(low, high int) *PortRange {
	return &PortRange{low: low, high: high, used: map[int]bool{}}
}

// Free returns a port of the range not handed out before and free now.
func (r *PortRange) Free() (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for range 2000 {
		port := r.low + mrand.IntN(r.high-r.low)
		if r.used[port] {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		_ = l.Close()
		if err != nil {
			continue
		}
		_ = u.Close()
		r.used[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("free port: none free in [%d, %d)", r.low, r.high)
}

func hostPort(addr string) (host, port string) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		panic(fmt.Sprintf("bench: bad address %q: %v", addr, err))
	}
	return h, p
}

// lookTool returns the path of a tool, or ErrUnavailable naming it.
func lookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s not installed", ErrUnavailable, name)
	}
	return p, nil
}

// toolVersion returns the first line of `tool args...`, or "".
func toolVersion(ctx context.Context, tool string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, tool, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}
