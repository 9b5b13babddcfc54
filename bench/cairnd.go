package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// buildTimeout bounds `go build` of cairnd.
const buildTimeout = 10 * time.Minute

// Binary is cairnd's executable: the given Path, or built once from the
// module the working directory is in. Get is safe for concurrent use.
type Binary struct {
	// Path is a prebuilt binary; "" builds cairn/cmd/cairnd.
	Path string

	once sync.Once
	path string
	err  error
}

// Get returns the binary's path, building it into dir the first time.
func (b *Binary) Get(ctx context.Context, dir string) (string, error) {
	b.once.Do(func() {
		if b.Path != "" {
			b.path, b.err = exec.LookPath(b.Path)
			if b.err != nil {
				b.err = fmt.Errorf("%w: cairnd %s: %w", ErrUnavailable, b.Path, b.err)
			}
			return
		}
		b.path, b.err = buildCairnd(ctx, dir)
	})
	return b.path, b.err
}

// buildCairnd runs `go build -o dir/ cairn/cmd/cairnd` in the module root
// of the working directory.
func buildCairnd(ctx context.Context, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("%w: cairnd: not inside the cairn module (run from the repository or pass --cairnd)", ErrUnavailable)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator), "cairn/cmd/cairnd")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: go build cairn/cmd/cairnd: %w: %s", ErrUnavailable, err, tail(out))
	}
	return filepath.Join(dir, "cairnd"), nil
}

// Cairnd is cairnd on loopback, all roles in one process, one declared
// volume of the bench size.
type Cairnd struct {
	Bin *Binary
	// Nodes is the number of cairnd processes; 0 means 1. Only one node is
	// supported until the cluster lands; a multi-node scenario sets Nodes
	// and Replicas.
	Nodes int
	// Replicas is the volume's replication factor; 0 is cairnd's default.
	Replicas int
	// VolumePerNode, on a cluster, gives every node's target one volume
	// of the export's size besides the export (the first node's): vol0-2
	// at the second node and so on, all in one group with the export, so
	// that a snapshot of the group holds at every target.
	VolumePerNode bool
}

func (c Cairnd) Describe(ctx context.Context) string {
	d := "cairnd"
	if c.Bin != nil && c.Bin.path != "" {
		if v := toolVersion(ctx, c.Bin.path, "--version"); v != "" {
			d = v
		}
	}
	return fmt.Sprintf("%s, %d node(s), all roles, segment store", d, max(c.Nodes, 1))
}

// servingRE matches the line cairnd logs once it serves: its NBD, iSCSI
// and admin addresses.
var servingRE = regexp.MustCompile(`msg="cairnd serving".* nbd=(\S+) iscsi=(\S+) admin=(\S+)`)

// cairnIQNPrefix names the harness's cairnd targets: prefix:volume, LUN 0.
const cairnIQNPrefix = "iqn.2026-11.dev.cairn"

// cairnTarget returns the target a cairnd serving on nbdAddr and iscsiAddr
// offers to drivers of fe.
func cairnTarget(fe FrontEnd, nbdAddr, iscsiAddr string, o StartOptions) Target {
	if fe == ISCSI {
		return Target{FrontEnd: ISCSI, URI: iscsiURI(iscsiAddr, cairnIQNPrefix+":"+o.Export, 0),
			SizeBytes: o.SizeBytes, LogicalBlockBytes: 512}
	}
	return Target{FrontEnd: NBD, URI: nbdURI(nbdAddr, o.Export), SizeBytes: o.SizeBytes}
}

func (c Cairnd) Start(ctx context.Context, o StartOptions) (Instance, error) {
	switch {
	case max(c.Nodes, 1) > clusterNodesMax:
		return nil, fmt.Errorf("%w: %d cairnd nodes (at most %d)", ErrUsage, c.Nodes, clusterNodesMax)
	case c.Replicas > max(c.Nodes, 1):
		return nil, fmt.Errorf("%w: %d replicas over %d node(s)", ErrUsage, c.Replicas, max(c.Nodes, 1))
	case c.VolumePerNode && (max(c.Nodes, 1) < 2 || o.FrontEnd != NBD):
		return nil, fmt.Errorf("%w: a volume per node needs a cluster over NBD", ErrUsage)
	case o.FrontEnd != NBD && o.FrontEnd != ISCSI:
		return nil, fmt.Errorf("%w: cairnd over %s", ErrUnavailable, o.FrontEnd)
	case o.Latency < 0 || o.Latency > time.Second:
		return nil, fmt.Errorf("%w: injected latency %s (cairnd takes 0 to 1s)", ErrUsage, o.Latency)
	case o.LatencyPerRPC && max(c.Nodes, 1) < 2:
		return nil, fmt.Errorf("%w: latency per node RPC on one node (it makes no node RPC)", ErrUsage)
	}
	if c.Bin == nil {
		panic("bench: Cairnd without a Binary")
	}
	bin, err := c.Bin.Get(ctx, filepath.Dir(o.Dir))
	if err != nil {
		return nil, err
	}
	if max(c.Nodes, 1) > 1 {
		return c.startCluster(ctx, o, bin)
	}
	cfg, err := c.config(o)
	if err != nil {
		return nil, err
	}
	p, addrs, err := startNode(ctx, o, bin, o.Dir, o.Name, cfg, nil)
	if err != nil {
		return nil, err
	}
	return &cairndInstance{procInstance: procInstance{p: p, target: cairnTarget(o.FrontEnd, addrs.nbd, addrs.iscsi, o)},
		admin: addrs.admin, dataDir: filepath.Join(o.Dir, "data"), node: o.Name, export: o.Export}, nil
}

// cairndInstance is one cairnd: its process, and where its store's space
// is seen (/metrics on the admin listener, the data directory).
type cairndInstance struct {
	procInstance
	admin, dataDir string
	node, export   string // its node name, the volume it serves
}

var (
	_ storeInstance  = (*cairndInstance)(nil)
	_ snapshotSystem = (*cairndInstance)(nil)
)

// snapshotSetup: the export is its own group, at this node's target.
func (c *cairndInstance) snapshotSetup() snapshotSetup {
	return snapshotSetup{admin: c.admin, tokenFile: filepath.Join(c.dataDir, "admin.token"), group: c.export,
		targets: []nodeAdmin{{c.node, c.admin}}}
}

func (c *cairndInstance) storeSpace(ctx context.Context) (StoreSpace, []string, error) {
	sp, err := metricsSpace(ctx, c.admin)
	return sp, []string{c.dataDir}, err
}

// clusterNodesMax bounds a bench cluster: every node runs on this host.
const clusterNodesMax = 5

// nodeAddrs are the listeners a cairnd reports once it serves.
type nodeAddrs struct{ nbd, iscsi, admin string }

// startNode writes cfg into dir, starts cairnd on it and waits until it
// says it serves.
// Every line of its log also goes to onLine, when not nil.
func startNode(ctx context.Context, o StartOptions, bin, dir, name, cfg string, onLine func(string)) (*proc, nodeAddrs, error) {
	path := filepath.Join(dir, name+".toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, nodeAddrs{}, fmt.Errorf("cairnd config: %w", err)
	}
	serving := make(chan nodeAddrs, 1)
	argv := []string{bin, "--config", path}
	switch {
	case o.Latency > 0 && o.LatencyPerRPC:
		argv = append(argv, "--inject-rpc-latency", o.Latency.String())
	case o.Latency > 0:
		argv = append(argv, "--inject-latency", o.Latency.String())
	}
	p, err := startProc(ctx, dir, name, func(line string) {
		if onLine != nil {
			onLine(line)
		}
		if m := servingRE.FindStringSubmatch(line); m != nil {
			select {
			case serving <- nodeAddrs{m[1], m[2], m[3]}:
			default:
			}
		}
	}, argv...)
	if err != nil {
		return nil, nodeAddrs{}, err
	}
	var addrs nodeAddrs
	select {
	case addrs = <-serving:
	case <-p.exited:
		err = fmt.Errorf("cairnd exited before serving: %v: %s", p.waitErr, p.logTail())
	case <-time.After(readyTimeout):
		err = fmt.Errorf("cairnd: no %q line after %s: %s", "cairnd serving", readyTimeout, p.logTail())
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	if err != nil {
		p.stop()
		return nil, nodeAddrs{}, err
	}
	return p, addrs, nil
}

// config returns cairnd's TOML configuration: state in o.Dir, every
// listener on a free loopback port.
func (c Cairnd) config(o StartOptions) (string, error) {
	// Gossip and the node RPC take any port (nothing here dials them).
	addrs, err := freeAddrs(4)
	if err != nil {
		return "", err
	}
	addrs = append(addrs, "127.0.0.1:0")
	addrs[3], addrs[4] = addrs[4], addrs[3] // [3] gossip (any), [4] raft
	addrs = append(addrs, "127.0.0.1:0")    // [5] storage
	var b strings.Builder
	fmt.Fprintf(&b, "node_name = %q\ndata_dir = %q\nroles = [\"target\", \"storage\", \"manager\"]\n", o.Name, "data")
	fmt.Fprintf(&b, "[admin]\nlisten = %q\n[nbd]\nlisten = %q\n[iscsi]\nlisten = %q\niqn_prefix = %q\n", addrs[0], addrs[1], addrs[2], cairnIQNPrefix)
	fmt.Fprintf(&b, "[gossip]\nbind = %q\njoin = []\n[raft]\nbind = %q\nbootstrap_expect = 1\n[storage]\nlisten = %q\n", addrs[3], addrs[4], addrs[5])
	fmt.Fprintf(&b, "[[volume]]\nname = %q\nsize = \"%d\"\n", o.Export, o.SizeBytes)
	if c.Replicas > 0 {
		fmt.Fprintf(&b, "replicas = %d\n", c.Replicas)
	}
	return b.String(), nil
}
