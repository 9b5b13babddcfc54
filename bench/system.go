package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// System is a block storage server the harness can start: cairnd or a peer.
// Start must leave nothing running when it returns an error.
type System interface {
	// Describe names the software and how it is run, for the report.
	Describe(ctx context.Context) string
	Start(ctx context.Context, o StartOptions) (Instance, error)
}

// StartOptions say what a system is started with.
type StartOptions struct {
	// Dir is the system's own directory (backing files, data_dir, logs)
	// inside the run's work directory, so every system's storage is on
	// one filesystem.
	Dir string
	// Name is a prefix for the system's files.
	Name string
	// Export is the export (volume) name to serve.
	Export string
	// SizeBytes is the export size.
	SizeBytes int64
	// FrontEnd is the protocol to serve.
	FrontEnd FrontEnd
	// Latency is injected per storage operation below the front end, or
	// per node data RPC with LatencyPerRPC (see Scenario); systems without
	// such a knob return ErrUnavailable for non-zero.
	Latency       time.Duration
	LatencyPerRPC bool
}

// Instance is a running system. Close stops it and everything it started,
// and is idempotent.
type Instance interface {
	Target() Target
	// PIDs are the system's server processes, whose CPU use the harness
	// tells apart from the rest of the host's.
	PIDs() []int
	Close() error
}

// procInstance is an Instance backed by one process.
type procInstance struct {
	p      *proc
	target Target
}

func (i *procInstance) Target() Target { return i.target }
func (i *procInstance) PIDs() []int    { return []int{i.p.cmd.Process.Pid} }
func (i *procInstance) Close() error   { return i.p.stop() }

// prepareNBD rejects options an NBD peer does not support, finds its
// binary and picks a free loopback address for it.
func prepareNBD(o StartOptions, tool string) (bin, addr string, err error) {
	if o.FrontEnd != NBD {
		return "", "", fmt.Errorf("%w: %s serves NBD only, not %s", ErrUnavailable, tool, o.FrontEnd)
	}
	if o.Latency != 0 {
		return "", "", fmt.Errorf("%w: %s cannot inject latency", ErrUnavailable, tool)
	}
	if bin, err = lookTool(tool); err != nil {
		return "", "", err
	}
	if addr, err = freeAddr(); err != nil {
		return "", "", err
	}
	return bin, addr, nil
}

// createBacking makes a sparse backing file of the export size.
func createBacking(o StartOptions) (string, error) {
	path := filepath.Join(o.Dir, o.Name+".img")
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("backing file: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(o.SizeBytes); err != nil {
		return "", fmt.Errorf("backing file: %w", err)
	}
	return path, nil
}

func nbdURI(addr, export string) string { return "nbd://" + addr + "/" + export }

// startServing starts argv, which must serve NBD on addr, and waits for it.
func startServing(ctx context.Context, o StartOptions, addr string, argv ...string) (Instance, error) {
	p, err := startProc(ctx, o.Dir, o.Name, nil, argv...)
	if err != nil {
		return nil, err
	}
	if err := waitNBD(ctx, p, addr); err != nil {
		p.stop()
		return nil, err
	}
	return &procInstance{p: p, target: Target{FrontEnd: NBD, URI: nbdURI(addr, o.Export), SizeBytes: o.SizeBytes}}, nil
}

// NBDKit is nbdkit with the memory or file plugin.
type NBDKit struct {
	// Plugin is "memory" or "file".
	Plugin string
}

func (n NBDKit) Describe(ctx context.Context) string {
	return toolVersion(ctx, "nbdkit", "--version") + " " + n.Plugin + " plugin"
}

func (n NBDKit) Start(ctx context.Context, o StartOptions) (Instance, error) {
	bin, addr, err := prepareNBD(o, "nbdkit")
	if err != nil {
		return nil, err
	}
	host, port := hostPort(addr)
	argv := []string{bin, "--foreground", "--exit-with-parent", "--ipaddr", host, "--port", port, "--exportname", o.Export}
	switch n.Plugin {
	case "memory":
		argv = append(argv, "memory", "size="+strconv.FormatInt(o.SizeBytes, 10))
	case "file":
		path, err := createBacking(o)
		if err != nil {
			return nil, err
		}
		argv = append(argv, "file", "file="+path)
	default:
		panic(fmt.Sprintf("bench: nbdkit plugin %q", n.Plugin))
	}
	return startServing(ctx, o, addr, argv...)
}

// QemuNBD is qemu-nbd serving a raw file to up to 8 clients.
type QemuNBD struct{}

func (QemuNBD) Describe(ctx context.Context) string {
	return toolVersion(ctx, "qemu-nbd", "--version") + " --persistent --shared=8 -f raw"
}

func (QemuNBD) Start(ctx context.Context, o StartOptions) (Instance, error) {
	bin, addr, err := prepareNBD(o, "qemu-nbd")
	if err != nil {
		return nil, err
	}
	path, err := createBacking(o)
	if err != nil {
		return nil, err
	}
	host, port := hostPort(addr)
	return startServing(ctx, o, addr, bin, "--persistent", "--shared=8", "-f", "raw",
		"--bind="+host, "--port="+port, "--export-name="+o.Export, path)
}

// NBDServer is the reference nbd-server with a file export. nbd-server
// serves clients only when it daemonizes (with -d it serves one client,
// badly), so it is tracked by its pid file, not as a child.
type NBDServer struct{}

func (NBDServer) Describe(ctx context.Context) string {
	v := toolVersion(ctx, "nbd-server", "-V")
	if i := strings.Index(v, "version "); i >= 0 {
		v = "nbd-server " + v[i+len("version "):]
	}
	return v + " (file export, daemonized)"
}

func (NBDServer) Start(ctx context.Context, o StartOptions) (Instance, error) {
	bin, addr, err := prepareNBD(o, "nbd-server")
	if err != nil {
		return nil, err
	}
	path, err := createBacking(o)
	if err != nil {
		return nil, err
	}
	host, port := hostPort(addr)
	conf := filepath.Join(o.Dir, o.Name+".conf")
	pidFile := filepath.Join(o.Dir, o.Name+".pid")
	text := fmt.Sprintf("[generic]\n\tlistenaddr = %s\n\tport = %s\n\tallowlist = true\n[%s]\n\texportname = %s\n",
		host, port, o.Export, path)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("nbd-server config: %w", err)
	}
	// The launcher exits once the daemon has forked.
	p, err := startProc(ctx, o.Dir, o.Name, nil, bin, "-C", conf, "-p", pidFile)
	if err != nil {
		return nil, err
	}
	<-p.exited
	p.stop()
	if p.waitErr != nil {
		return nil, fmt.Errorf("nbd-server: %w: %s", p.waitErr, p.logTail())
	}
	inst := &daemonInstance{name: o.Name, pidFile: pidFile, launcherPID: p.cmd.Process.Pid,
		target: Target{FrontEnd: NBD, URI: nbdURI(addr, o.Export), SizeBytes: o.SizeBytes}}
	if err := inst.waitServing(ctx, addr); err != nil {
		inst.Close()
		return nil, err
	}
	return inst, nil
}

// daemonInstance is a system that daemonized and wrote a pid file.
type daemonInstance struct {
	name    string
	pidFile string
	pid     int
	// launcherPID led the process group the daemon may still be in.
	launcherPID int
	target      Target
}

func (d *daemonInstance) Target() Target { return d.target }
func (d *daemonInstance) PIDs() []int    { return []int{d.pid} }

func (d *daemonInstance) waitServing(ctx context.Context, addr string) error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if d.pid == 0 {
			if b, err := os.ReadFile(d.pidFile); err == nil {
				d.pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
		}
		if d.pid != 0 {
			if last = probeNBD(addr); last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(probeEvery):
		}
	}
	return fmt.Errorf("%s: not serving on %s after %s (pid %d): %v", d.name, addr, readyTimeout, d.pid, last)
}

// Close sends SIGTERM (nbd-server passes it to its per-client children),
// then kills the daemon's group if it has not gone.
func (d *daemonInstance) Close() error {
	if d.pid == 0 {
		return nil
	}
	pid := d.pid
	d.pid = 0
	killPID(pid, syscall.SIGTERM)
	deadline := time.Now().Add(stopTimeout)
	for time.Now().Before(deadline) {
		if processGone(pid) {
			break
		}
		time.Sleep(probeEvery)
	}
	killGroupHard(pid) // if the daemon leads its own session and group
	killGroupHard(d.launcherPID)
	return nil
}
