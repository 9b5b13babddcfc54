// Command cairn is the admin CLI of cairn. It speaks to a cairnd's admin
// HTTP/JSON API (--addr, or $CAIRN_ADDR, default 127.0.0.1:7900).
//
//	cairn [--addr HOST:PORT] [--json] status
//	cairn volume create NAME --size 10GiB [--replicas N]
//	cairn volume list
//	cairn volume show NAME
//	cairn volume resize NAME --size 20GiB
//	cairn volume delete NAME [--force]
//	cairn volume fork VOLUME@SNAP NEWVOL [--target NODE]
//	cairn volume rollback VOLUME SNAP [--force]
//	cairn volume flatten VOLUME [--no-wait]
//
// Errors are one line on stderr and exit status 1 (2 for usage errors).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"cairn/bench"
	"cairn/cluster/admin"
	"cairn/configs"
)

const usage = `usage: cairn [--addr HOST:PORT] [--json] [--token-file F] [--ca-file CA] COMMAND

commands:
  status                                   show the daemon's state
  volume create NAME --size SIZE [--replicas N] [--chunk-size C] [--target NODE] [--logical-block-size 512|4096]
  volume list
  volume show NAME
  volume resize NAME --size SIZE           grow; NBD clients see it on reconnect
  volume attach NAME --target NODE         move the volume to NODE's target
  volume delete NAME [--force]             --force disconnects attached clients
  volume fork VOLUME@SNAP NEWVOL [--target NODE]
                                           a writable clone of a sealed snapshot, at
                                           once whatever the size: it reads through to
                                           the snapshot until flattened
  volume rollback VOLUME SNAP [--force]    make the volume read as its snapshot SNAP,
                                           at once; snapshots taken since stay. A
                                           volume with clients needs --force, which
                                           disconnects them and fences its target
  volume flatten VOLUME [--no-wait]        copy what a fork reads through into it, in
                                           the background; waits with a progress bar
                                           (--json: a line per update with percent and
                                           eta_seconds). Afterwards the parent's snapshot
                                           may be deleted
  node list                                cluster members, gossip and service state
  node show NAME                           one node: usage, and the bytes it holds of each volume (asked of the node)
  group create G --volumes a,b | group list | group delete G
  snapshot create G|VOLUME [--name N]      crash-consistent, without stopping I/O
  snapshot list [--group G] | snapshot show N | snapshot delete N
                                           a sealed snapshot is served read-only as
                                           nbd://.../VOLUME@N and iSCSI ...:VOLUME:N
  cluster certs DIR --nodes N1,N2,...      a CA and node certificates (cairn cluster --help)
  bench [--smoke] [--systems ...] [...]    side-by-side benchmark (cairn bench --help)

SIZE is bytes or a number with K/M/G/T or KiB/MiB/GiB/TiB (powers of 1024).
The address defaults to $CAIRN_ADDR or 127.0.0.1:7900. Changes need the admin
token: --token-file, else $CAIRN_TOKEN, else data/admin.token (cairnd writes it).
`

// exitError carries the exit status of a subcommand that reported its own
// errors.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// errUsage marks errors that exit with status 2.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout)
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "cairn: %v\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "cairn: %v\n", err)
		return 1
	}
}

// cli holds the global options.
type cli struct {
	client *admin.Client
	json   bool
	out    io.Writer
}

// parse parses flags interspersed with positional arguments and returns the
// positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, fmt.Errorf("%w: %w", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// tokenDefaultFile is where `make run` (data_dir "data" beside the config
// directory) keeps the admin token, relative to the repository root.
const tokenDefaultFile = "data/admin.token"

// token finds the admin token: the named file, else $CAIRN_TOKEN, else
// tokenDefaultFile when it exists; "" when there is none (reads need none).
func token(file string) (string, error) {
	if file != "" {
		return admin.ReadToken(file)
	}
	if t := os.Getenv("CAIRN_TOKEN"); t != "" {
		return t, nil
	}
	if _, err := os.Stat(tokenDefaultFile); err == nil {
		return admin.ReadToken(tokenDefaultFile)
	}
	return "", nil
}

func dispatch(args []string, out io.Writer) error {
	if len(args) > 0 && args[0] == "bench" {
		// The harness has its own flags; see `cairn bench --help`.
		if code := bench.Main(args[1:], out, os.Stderr); code != 0 {
			return &exitError{code: code}
		}
		return nil
	}
	if len(args) > 0 && args[0] == "cluster" {
		return clusterCommand(args[1:], out) // local files, its own flags
	}
	addr := os.Getenv("CAIRN_ADDR")
	if addr == "" {
		addr = "127.0.0.1:7900"
	}
	c := &cli{out: out}
	fs := flag.NewFlagSet("cairn", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&addr, "addr", addr, "admin address")
	fs.BoolVar(&c.json, "json", false, "JSON output")
	caFile := fs.String("ca-file", os.Getenv("CAIRN_CA_FILE"), "cluster CA: speak HTTPS to a daemon with [tls]")
	tokenFile := fs.String("token-file", os.Getenv("CAIRN_TOKEN_FILE"), "admin token file (default $CAIRN_TOKEN, else data/admin.token)")
	size := fs.String("size", "", "volume size")
	replicas := fs.Int("replicas", 0, "replication factor")
	lbs := fs.Int("logical-block-size", 0, "block size iSCSI presents: 512 or 4096")
	chunk := fs.String("chunk-size", "", "chunk size, the unit of placement (default 1MiB)")
	targetNode := fs.String("target", "", "the node whose target serves the volume")
	volumesFlag := fs.String("volumes", "", "the volumes of a group, comma-separated")
	nameFlag := fs.String("name", "", "snapshot name (default: the time)")
	groupFlag := fs.String("group", "", "only this group's snapshots")
	force := fs.Bool("force", false, "disconnect attached clients")
	noWait := fs.Bool("no-wait", false, "start the flatten and return")
	help := fs.Bool("help", false, "")
	fs.BoolVar(help, "h", false, "")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *help {
		fmt.Fprint(out, usage)
		return nil
	}
	c.client = &admin.Client{Addr: addr, CAFile: *caFile}
	if c.client.Token, err = token(*tokenFile); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	if len(pos) == 0 {
		return fmt.Errorf("%w: no command", errUsage)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	allow := func(names ...string) error {
		for n := range set {
			if n == "addr" || n == "json" || n == "token-file" || n == "ca-file" {
				continue
			}
			ok := false
			for _, a := range names {
				ok = ok || a == n
			}
			if !ok {
				return fmt.Errorf("%w: --%s does not apply to %q", errUsage, n, strings.Join(pos, " "))
			}
		}
		return nil
	}
	nargs := func(n int) error {
		if len(pos) != n {
			return fmt.Errorf("%w: %q takes %d argument(s)", errUsage, strings.Join(pos[:min(len(pos), 2)], " "), n-min(n, 2))
		}
		return nil
	}
	switch pos[0] {
	case "group", "groups":
		if len(pos) < 2 {
			return fmt.Errorf("%w: group needs a subcommand: create, list, delete", errUsage)
		}
		switch pos[1] {
		case "create":
			if err := errors.Join(nargs(3), allow("volumes")); err != nil {
				return err
			}
			if *volumesFlag == "" {
				return fmt.Errorf("%w: group create needs --volumes a,b", errUsage)
			}
			g, err := c.client.CreateGroup(ctx, admin.GroupRequest{Name: pos[2], Volumes: strings.Split(*volumesFlag, ",")})
			if err != nil {
				return err
			}
			return c.print(g, func(w io.Writer) { fmt.Fprintf(w, "group\t%s\nvolumes\t%s\n", g.Name, strings.Join(g.Volumes, ",")) })
		case "list", "ls":
			if err := errors.Join(nargs(2), allow()); err != nil {
				return err
			}
			gs, err := c.client.Groups(ctx)
			if err != nil {
				return err
			}
			return c.print(gs, func(w io.Writer) {
				fmt.Fprintf(w, "GROUP\tVOLUMES\n")
				for _, g := range gs {
					fmt.Fprintf(w, "%s\t%s\n", g.Name, strings.Join(g.Volumes, ","))
				}
			})
		case "delete", "rm":
			if err := errors.Join(nargs(3), allow()); err != nil {
				return err
			}
			if err := c.client.DeleteGroup(ctx, pos[2]); err != nil {
				return err
			}
			return c.print(map[string]string{"deleted": pos[2]}, func(w io.Writer) { fmt.Fprintf(w, "deleted group %s\n", pos[2]) })
		}
		return fmt.Errorf("%w: unknown group subcommand %q", errUsage, pos[1])
	case "snapshot", "snapshots", "snap":
		if len(pos) < 2 {
			return fmt.Errorf("%w: snapshot needs a subcommand: create, list, show, delete", errUsage)
		}
		switch pos[1] {
		case "create":
			if err := errors.Join(nargs(3), allow("name")); err != nil {
				return err
			}
			sn, err := c.client.CreateSnapshot(ctx, admin.SnapshotRequest{Group: pos[2], Name: *nameFlag})
			if err != nil {
				return err
			}
			return c.printSnapshot(sn)
		case "list", "ls":
			if err := errors.Join(nargs(2), allow("group")); err != nil {
				return err
			}
			ss, err := c.client.Snapshots(ctx)
			if err != nil {
				return err
			}
			if *groupFlag != "" {
				ss = slices.DeleteFunc(ss, func(s admin.Snapshot) bool { return s.Group != *groupFlag })
			}
			return c.print(ss, func(w io.Writer) {
				fmt.Fprintf(w, "NAME\tGROUP\tSTATE\tEPOCH\tVOLUMES\tCREATED\n")
				for _, s := range ss {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, s.Group, s.State, s.Epoch, strings.Join(s.Volumes, ","), s.Created.Format(time.RFC3339))
				}
			})
		case "show":
			if err := errors.Join(nargs(3), allow()); err != nil {
				return err
			}
			ss, err := c.client.Snapshots(ctx)
			if err != nil {
				return err
			}
			for _, s := range ss {
				if s.Name == pos[2] || s.Group+"/"+s.Name == pos[2] {
					return c.printSnapshot(s)
				}
			}
			return fmt.Errorf("snapshot %q: %w", pos[2], admin.ErrNotFound)
		case "delete", "rm":
			if err := errors.Join(nargs(3), allow()); err != nil {
				return err
			}
			if err := c.client.DeleteSnapshot(ctx, pos[2]); err != nil {
				return err
			}
			return c.print(map[string]string{"deleted": pos[2]}, func(w io.Writer) { fmt.Fprintf(w, "deleted snapshot %s\n", pos[2]) })
		}
		return fmt.Errorf("%w: unknown snapshot subcommand %q", errUsage, pos[1])
	case "node", "nodes":
		if len(pos) >= 2 && pos[1] == "show" {
			if len(pos) != 3 {
				return fmt.Errorf("%w: node show NAME", errUsage)
			}
			if err := allow(); err != nil {
				return err
			}
			n, err := c.client.Node(ctx, pos[2])
			if err != nil {
				return err
			}
			return c.print(n, func(w io.Writer) { printNode(w, n) })
		}
		if len(pos) < 2 || pos[1] != "list" && pos[1] != "ls" {
			return fmt.Errorf("%w: node needs a subcommand: list, show NAME", errUsage)
		}
		if err := errors.Join(nargs(2), allow()); err != nil {
			return err
		}
		ns, err := c.client.Nodes(ctx)
		if err != nil {
			return err
		}
		return c.print(ns, func(w io.Writer) {
			fmt.Fprintf(w, "NAME\tROLES\tGOSSIP\tSTATE\tZONE\tCAPACITY\tUSED\n")
			for _, n := range ns {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, strings.Join(n.Roles, ","), n.Gossip, orDash(n.State), orDash(n.Zone),
					approxSize(n.CapacityBytes), approxSize(n.UsedBytes))
			}
		})
	case "status":
		if err := errors.Join(nargs(1), allow()); err != nil {
			return err
		}
		st, err := c.client.Status(ctx)
		if err != nil {
			return err
		}
		return c.print(st, func(w io.Writer) {
			fmt.Fprintf(w, "node\t%s\nroles\t%s\nversion\t%s\nuptime\t%s\n", st.Node, strings.Join(st.Roles, ","), st.Version, (time.Duration(st.UptimeSeconds) * time.Second).String())
			fmt.Fprintf(w, "raft\t%s (leader %s, term %d, index %d)\n", st.Raft.State, st.Raft.Leader, st.Raft.Term, st.Raft.LastIndex)
			fmt.Fprintf(w, "nbd\t%s\niscsi\t%s\nadmin\t%s\nvolumes\t%d\nconnections\t%d\n", st.NBD, st.ISCSI, st.Admin, st.Volumes, st.Connections)
		})
	case "volume", "volumes":
		if len(pos) < 2 {
			return fmt.Errorf("%w: volume needs a subcommand", errUsage)
		}
		switch pos[1] {
		case "create":
			if err := errors.Join(nargs(3), allow("size", "replicas", "logical-block-size", "chunk-size", "target")); err != nil {
				return err
			}
			if *size == "" {
				return fmt.Errorf("%w: volume create needs --size", errUsage)
			}
			n, err := configs.ParseSize(*size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			var cs int64
			if *chunk != "" {
				if cs, err = configs.ParseSize(*chunk); err != nil {
					return fmt.Errorf("--chunk-size: %w", err)
				}
			}
			v, err := c.client.CreateVolume(ctx, admin.CreateRequest{Name: pos[2], Size: n, Replicas: *replicas, ChunkSize: cs, LogicalBlockSize: *lbs, Target: *targetNode})
			if err != nil {
				return err
			}
			return c.printVolume(v)
		case "list", "ls":
			if err := errors.Join(nargs(2), allow()); err != nil {
				return err
			}
			vs, err := c.client.Volumes(ctx)
			if err != nil {
				return err
			}
			return c.print(vs, func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tID\tSIZE\tREPLICAS\tEPOCH\tCONNECTIONS\tNBD")
				for _, v := range vs {
					fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%d\t%d\t%s\n", v.Name, v.ID, configs.FormatSize(v.Size), v.Replicas, v.Epoch, v.Connections, v.NBD)
				}
			})
		case "show":
			if err := errors.Join(nargs(3), allow()); err != nil {
				return err
			}
			v, err := c.client.Volume(ctx, pos[2])
			if err != nil {
				return err
			}
			return c.printVolume(v)
		case "resize":
			if err := errors.Join(nargs(3), allow("size")); err != nil {
				return err
			}
			if *size == "" {
				return fmt.Errorf("%w: volume resize needs --size", errUsage)
			}
			n, err := configs.ParseSize(*size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			v, err := c.client.ResizeVolume(ctx, pos[2], n)
			if err != nil {
				return err
			}
			return c.printVolume(v)
		case "attach":
			if err := errors.Join(nargs(3), allow("target")); err != nil {
				return err
			}
			if *targetNode == "" {
				return fmt.Errorf("%w: volume attach needs --target NODE", errUsage)
			}
			v, err := c.client.AttachVolume(ctx, pos[2], *targetNode)
			if err != nil {
				return err
			}
			return c.printVolume(v)
		case "fork":
			if err := errors.Join(nargs(4), allow("target")); err != nil {
				return err
			}
			vol, snap, ok := strings.Cut(pos[2], "@")
			if !ok || vol == "" || snap == "" {
				return fmt.Errorf("%w: volume fork takes VOLUME@SNAPSHOT NEWVOL, not %q", errUsage, pos[2])
			}
			v, err := c.client.ForkVolume(ctx, vol, admin.ForkRequest{Snapshot: snap, Name: pos[3], Target: *targetNode})
			if err != nil {
				return err
			}
			return c.printVolume(v)
		case "rollback":
			if err := errors.Join(nargs(4), allow("force")); err != nil {
				return err
			}
			v, err := c.client.RollbackVolume(ctx, pos[2], admin.RollbackRequest{Snapshot: pos[3], Force: *force})
			if err != nil {
				return err
			}
			return c.printVolume(v)
		case "flatten":
			if err := errors.Join(nargs(3), allow("no-wait")); err != nil {
				return err
			}
			st, err := c.client.FlattenVolume(ctx, pos[2])
			if err != nil {
				return err
			}
			if *noWait {
				return c.printFlatten(st)
			}
			return c.waitFlatten(pos[2], st)
		case "delete", "rm":
			if err := errors.Join(nargs(3), allow("force")); err != nil {
				return err
			}
			if err := c.client.DeleteVolume(ctx, pos[2], *force); err != nil {
				return err
			}
			return c.print(map[string]string{"deleted": pos[2]}, func(w io.Writer) {
				fmt.Fprintf(w, "deleted %s\n", pos[2])
			})
		default:
			return fmt.Errorf("%w: unknown volume subcommand %q", errUsage, pos[1])
		}
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, pos[0])
	}
}

func (c *cli) printVolume(v admin.Volume) error {
	return c.print(v, func(w io.Writer) {
		fmt.Fprintf(w, "name\t%s\nid\t%d\nsize\t%s (%d bytes)\n", v.Name, v.ID, configs.FormatSize(v.Size), v.Size)
		fmt.Fprintf(w, "block size\t%d (iSCSI logical %d)\nchunk size\t%s\nreplicas\t%d\n", v.BlockSize, v.SCSIBlockSize, configs.FormatSize(v.ChunkSize), v.Replicas)
		if v.AllocatedBytes >= 0 {
			fmt.Fprintf(w, "allocated\t%s (%d bytes)\n", configs.FormatSize(v.AllocatedBytes), v.AllocatedBytes)
		}
		fmt.Fprintf(w, "epoch\t%d\ngeneration\t%d\ncreated\t%s\nconnections\t%d\nnbd\t%s\niscsi\t%s\n", v.Epoch, v.Generation, v.Created.Format(time.RFC3339), v.Connections, v.NBD, v.ISCSI)
		if v.AttachedTo != "" {
			fmt.Fprintf(w, "attached to\t%s\n", v.AttachedTo)
		}
		if v.Parent != "" {
			fmt.Fprintf(w, "fork of\t%s\n", v.Parent)
		}
		if v.Rollbacks > 0 {
			fmt.Fprintf(w, "rollbacks\t%d\n", v.Rollbacks)
		}
		nodes := make([]string, 0, len(v.ChunksPerNode))
		for n := range v.ChunksPerNode {
			nodes = append(nodes, n)
		}
		slices.Sort(nodes)
		for _, n := range nodes {
			fmt.Fprintf(w, "chunks on %s\t%d\n", n, v.ChunksPerNode[n])
		}
		if len(v.Stale) > 0 {
			fmt.Fprintf(w, "degraded\tstale replicas on %s (they missed writes; not read from)\n", strings.Join(v.Stale, ", "))
		}
		if c := v.CatchUp; c != nil {
			state := "done"
			if c.Running {
				state = "running"
			}
			fmt.Fprintf(w, "catch-up\t%s: %d of %d chunks copied (%s)\n", c.Node, c.ChunksCopied, c.ChunksTotal, state)
		}
		if r := v.Reservations; r != nil {
			typ := r.Type
			if typ == "" {
				typ = "none"
			}
			fmt.Fprintf(w, "reservation\t%s (generation %d)\n", typ, r.Generation)
			for _, g := range r.Registrants {
				role := "registrant"
				if g.Holder {
					role = "holder"
				}
				fmt.Fprintf(w, "%s\t%s,i,0x%s key %s\n", role, g.Initiator, g.ISID, g.Key)
			}
		}
	})
}

// print writes v as JSON with --json, else as the text human renders.
func (c *cli) print(v any, human func(io.Writer)) error {
	if c.json {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	human(tw)
	return tw.Flush()
}

func (c *cli) printSnapshot(s admin.Snapshot) error {
	return c.print(s, func(w io.Writer) {
		fmt.Fprintf(w, "name\t%s\ngroup\t%s\nstate\t%s\nepoch\t%d\nvolumes\t%s\ncreated\t%s\n", s.Name, s.Group, s.State, s.Epoch, strings.Join(s.Volumes, ","), s.Created.Format(time.RFC3339))
		if s.Reason != "" {
			fmt.Fprintf(w, "reason\t%s\n", s.Reason)
		}
		for _, e := range s.Exports {
			fmt.Fprintf(w, "export\t%s\n", e)
		}
		if p := s.Protocol; p != nil {
			fmt.Fprintf(w, "held acks for\t%s (at most %d at once)\n", time.Duration(p.HeldWindowMaxSeconds*float64(time.Second)), p.HeldMax)
			fmt.Fprintf(w, "steps\treserve %s, hold %s, release %s, seal %s\n",
				time.Duration(p.ReserveSeconds*float64(time.Second)), time.Duration(p.HoldSeconds*float64(time.Second)),
				time.Duration(p.ReleaseSeconds*float64(time.Second)), time.Duration(p.SealSeconds*float64(time.Second)))
		}
	})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printNode prints one node and the bytes it holds of each volume.
func printNode(w io.Writer, n admin.NodeDetail) {
	fmt.Fprintf(w, "name\t%s\nroles\t%s\ngossip\t%s\nstate\t%s\nzone\t%s\nrpc\t%s\ncapacity\t%s\nused\t%s\n",
		n.Name, strings.Join(n.Roles, ","), n.Gossip, orDash(n.State), orDash(n.Zone), orDash(n.Addr),
		approxSize(n.CapacityBytes), approxSize(n.UsedBytes))
	if len(n.Volumes) == 0 {
		return
	}
	fmt.Fprintf(w, "\nVOLUME\tCHUNKS\tHELD\n")
	for _, v := range n.Volumes {
		held := approxSize(v.Bytes)
		switch {
		case v.Bytes == 0:
			held = "0"
		case v.Bytes < 0:
			held = "unknown: " + v.Error
		}
		fmt.Fprintf(w, "%s\t%d\t%s\n", v.Name, v.Chunks, held)
	}
}

// approxSize prints a byte count for people: three significant figures in
// the largest binary unit it reaches ("252 GiB", "63.2 MiB"), "-" for 0
// (not reported).
func approxSize(n int64) string {
	if n <= 0 {
		return "-"
	}
	units := [...]string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f, i = f/1024, i+1
	}
	switch {
	case i == 0 || f >= 100:
		return fmt.Sprintf("%.0f %s", f, units[i])
	case f >= 10:
		return fmt.Sprintf("%.1f %s", f, units[i])
	}
	return fmt.Sprintf("%.2f %s", f, units[i])
}
