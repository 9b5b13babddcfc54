package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"cairn/cluster/admin"
)

// startCluster starts c.Nodes cairnd processes on loopback, every one with
// every role, that find each other by gossip and bootstrap the catalog
// from it; then it creates the export as a volume with c.Replicas replicas
// attached to the first node, and waits until that node serves it. The
// drivers talk to the first node; the others are storage nodes and
// managers (and hold replicas).
func (c Cairnd) startCluster(ctx context.Context, o StartOptions, bin string) (_ Instance, err error) {
	n := c.Nodes
	// Every fixed port is chosen while all are held open (admin, NBD,
	// iSCSI, gossip and raft per node): none is handed out twice.
	addrs, err := freeAddrs(5 * n)
	if err != nil {
		return nil, err
	}
	ci := &clusterInstance{}
	defer func() {
		if err != nil {
			ci.Close()
		}
	}()
	// Node i serves vols[i]: the export at the first, with VolumePerNode
	// one more volume at each other node.
	vols := []string{o.Export}
	if c.VolumePerNode {
		for i := 1; i < n; i++ {
			vols = append(vols, fmt.Sprintf("%s-%d", o.Export, i+1))
		}
	}
	attached := make([]chan struct{}, len(vols))
	for i := range attached {
		attached[i] = make(chan struct{})
	}
	var first nodeAddrs
	for i := range n {
		name := fmt.Sprintf("%s-n%d", o.Name, i+1)
		dir := filepath.Join(o.Dir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cairnd node dir: %w", err)
		}
		var seeds []string
		for j := range n {
			if j != i {
				seeds = append(seeds, addrs[5*j+3])
			}
		}
		a := addrs[5*i : 5*i+5]
		cfg := nodeConfig(name, a[0], a[1], a[2], a[3], a[4], seeds, n)
		var onLine func(string)
		if i < len(vols) {
			once := false
			line := fmt.Sprintf("msg=\"volume attached\" volume=%s ", vols[i])
			ch := attached[i]
			onLine = func(l string) {
				if !once && strings.Contains(l, line) {
					once = true
					close(ch)
				}
			}
		}
		p, na, err := startNode(ctx, o, bin, dir, name, cfg, onLine)
		if err != nil {
			return nil, fmt.Errorf("cluster node %s: %w", name, err)
		}
		ci.procs = append(ci.procs, p)
		ci.admins = append(ci.admins, na.admin)
		ci.dataDirs = append(ci.dataDirs, filepath.Join(dir, "data"))
		ci.names = append(ci.names, name)
		ci.nbds = append(ci.nbds, na.nbd)
		if i == 0 {
			first = na
		}
	}
	ci.tokenFile = filepath.Join(o.Dir, o.Name+"-n1", "data", "admin.token")
	for i, v := range vols {
		if err := c.createClusterVolume(ctx, o, first.admin, ci.tokenFile, v, ci.names[i]); err != nil {
			return nil, err
		}
	}
	ci.group = o.Export
	if len(vols) > 1 {
		ci.group = o.Export + "-group"
		if err := createGroup(ctx, first.admin, ci.tokenFile, admin.Group{Name: ci.group, Volumes: vols}); err != nil {
			return nil, err
		}
	}
	timeout := time.After(readyTimeout)
	for i, v := range vols {
		select {
		case <-attached[i]:
		case <-ci.procs[i].exited:
			return nil, fmt.Errorf("cairnd %s exited: %v: %s", ci.procs[i].name, ci.procs[i].waitErr, ci.procs[i].logTail())
		case <-timeout:
			return nil, fmt.Errorf("cairnd %s: volume %s not attached after %s: %s", ci.procs[i].name, v, readyTimeout, ci.procs[i].logTail())
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		if i > 0 {
			ci.others = append(ci.others, Target{FrontEnd: NBD, URI: nbdURI(ci.nbds[i], v), SizeBytes: o.SizeBytes})
		}
	}
	ci.vols = len(vols)
	ci.target = cairnTarget(o.FrontEnd, first.nbd, first.iscsi, o)
	return ci, nil
}

// createGroup creates a consistency group through a node's admin API.
func createGroup(ctx context.Context, adminAddr, tokenFile string, g admin.Group) error {
	tok, err := admin.ReadToken(tokenFile)
	if err != nil {
		return fmt.Errorf("cairnd cluster: group %s: %w", g.Name, err)
	}
	cl := &admin.Client{Addr: adminAddr, Token: tok}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cl.CreateGroup(rctx, g); err != nil {
		return fmt.Errorf("cairnd cluster: group %s of %v: %w", g.Name, g.Volumes, err)
	}
	return nil
}

// createClusterVolume creates the export through the first node's admin
// API, retrying while the cluster is still forming (no leader yet, fewer
// storage nodes in service than replicas).
func (c Cairnd) createClusterVolume(ctx context.Context, o StartOptions, adminAddr, tokenFile, name, target string) error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		tok, err := admin.ReadToken(tokenFile)
		if err == nil {
			cl := &admin.Client{Addr: adminAddr, Token: tok}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = cl.CreateVolume(rctx, admin.CreateRequest{Name: name, Size: o.SizeBytes, Replicas: c.Replicas, Target: target})
			cancel()
			if err == nil || errors.Is(err, admin.ErrExists) {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(10 * probeEvery):
		}
	}
	return fmt.Errorf("cairnd cluster: create volume %s (%d replicas): %w", name, c.Replicas, last)
}

// nodeConfig is one cluster node's TOML configuration.
func nodeConfig(name, adminAddr, nbdAddr, iscsiAddr, gossip, raft string, seeds []string, expect int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "node_name = %q\ndata_dir = %q\nroles = [\"target\", \"storage\", \"manager\"]\n", name, "data")
	fmt.Fprintf(&b, "[admin]\nlisten = %q\n[nbd]\nlisten = %q\n[iscsi]\nlisten = %q\niqn_prefix = %q\n", adminAddr, nbdAddr, iscsiAddr, cairnIQNPrefix)
	quoted := make([]string, len(seeds))
	for i, s := range seeds {
		quoted[i] = fmt.Sprintf("%q", s)
	}
	fmt.Fprintf(&b, "[gossip]\nbind = %q\njoin = [%s]\n[raft]\nbind = %q\nbootstrap_expect = %d\n[storage]\nlisten = %q\n",
		gossip, strings.Join(quoted, ", "), raft, expect, "127.0.0.1:0")
	return b.String()
}

// clusterInstance is a running bench cluster: its processes, the first
// serving the export.
type clusterInstance struct {
	procs []*proc
	// admins and dataDirs are every node's admin listener and data
	// directory, in the order of procs.
	admins, dataDirs []string
	// names and nbds are every node's name and NBD listener; the first
	// vols nodes serve a volume of group (see Cairnd.VolumePerNode),
	// others those besides the export.
	names, nbds      []string
	vols             int
	group, tokenFile string
	others           []Target
	target           Target
}

var (
	_ storeInstance  = (*clusterInstance)(nil)
	_ snapshotSystem = (*clusterInstance)(nil)
)

// snapshotSetup: the first node coordinates; the targets are the nodes
// serving the group's volumes.
func (ci *clusterInstance) snapshotSetup() snapshotSetup {
	s := snapshotSetup{admin: ci.admins[0], tokenFile: ci.tokenFile, group: ci.group, others: ci.others}
	for i := range ci.vols {
		s.targets = append(s.targets, nodeAdmin{ci.names[i], ci.admins[i]})
	}
	return s
}

// storeSpace sums the nodes' stores (so live bytes count every replica).
func (ci *clusterInstance) storeSpace(ctx context.Context) (StoreSpace, []string, error) {
	var sum StoreSpace
	for i, a := range ci.admins {
		sp, err := metricsSpace(ctx, a)
		if err != nil {
			return StoreSpace{}, nil, fmt.Errorf("node %s: %w", ci.procs[i].name, err)
		}
		sum = sum.add(sp)
	}
	return sum, ci.dataDirs, nil
}

func (ci *clusterInstance) Target() Target { return ci.target }

func (ci *clusterInstance) PIDs() []int {
	pids := make([]int, 0, len(ci.procs))
	for _, p := range ci.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}

// Close stops every node and returns their errors joined.
func (ci *clusterInstance) Close() error {
	var errs []error
	for _, p := range ci.procs {
		errs = append(errs, p.stop())
	}
	return errors.Join(errs...)
}
