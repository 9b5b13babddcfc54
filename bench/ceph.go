package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// cephInstallHint is how to get what CephRBD needs on Debian.
	cephInstallHint = "apt-get install ceph-mon ceph-osd ceph-common"
	// cephOSDsMax bounds a bench Ceph cluster: every OSD runs on this host.
	cephOSDsMax = 5
	// cephMon is the one monitor's name.
	cephMon = "a"
	// cephClient is the client the harness and the drivers authenticate
	// as (client.admin).
	cephClient = "admin"
	// cephPool is the RBD pool; cephPGs its placement groups.
	cephPool = "rbd"
	cephPGs  = 32
	// cephBlockSlackBytes is BlueStore's room beyond twice the image
	// (RocksDB, and fresh space for redirected overwrites): each OSD of a
	// pool of size N holds the whole image.
	cephBlockSlackBytes = 1 << 30
	// cephSpareBytes is what must stay free beside the block files (the
	// monitor's store, logs, the other systems' exports).
	cephSpareBytes = 2 << 30
	// cephOSDMemoryTargetBytes is each OSD's memory target (its caches).
	cephOSDMemoryTargetBytes = 2 << 30
	// cephStepTimeout bounds one ceph, rbd or mkfs command; the first I/O
	// to a new pool waits for its placement groups to peer.
	cephStepTimeout = 2 * time.Minute
	// cephConnectTimeoutSec bounds the ceph CLI's wait for the monitor.
	cephConnectTimeoutSec = 10
	// unixPathMax is the longest path of a Unix socket (sun_path less
	// its NUL); the daemons' admin sockets are in the run directory.
	unixPathMax = 107
	// zeroChunkBytes is the write size of the block files' prefill.
	zeroChunkBytes = 1 << 20
)

// CephRBD is a throwaway Ceph cluster on loopback, reached with librbd
// (fio's rbd engine): one ceph-mon, OSDs with BlueStore on files prefilled
// with zeros, a pool whose size is the number of OSDs (every object on
// every OSD, as cairn's R=3 volume has every chunk on every node), and one
// RBD image of the export size. No ceph-mgr: RBD I/O does not need one
// (only `ceph -s` statistics do). Everything — configuration, keyrings,
// mon and OSD data, logs, admin sockets — is in the system's directory;
// nothing reads or writes /etc/ceph or /var/lib/ceph.
//
// The image has only the layering feature: without exclusive-lock the
// fio jobs of a multi-connection workload write the image side by side
// (each its own slice), as NBD clients share a cairn export, instead of
// passing the lock back and forth.
type CephRBD struct {
	// OSDs is the number of OSDs and the pool's size; 0 means 1.
	OSDs int
}

func (c CephRBD) osds() int { return max(c.OSDs, 1) }

// cephVersionRE matches `ceph-osd --version`: ceph version 16.2.15
// (618f44...) pacific (stable).
var cephVersionRE = regexp.MustCompile(`ceph version (\S+) \([0-9a-f]+\) (\S+)`)

func (c CephRBD) Describe(ctx context.Context) string {
	v := "Ceph"
	if m := cephVersionRE.FindStringSubmatch(toolVersion(ctx, "ceph-osd", "--version")); m != nil {
		v = "Ceph " + m[1] + " " + m[2]
	}
	return fmt.Sprintf("%s, 1 mon, %d BlueStore OSD(s) on files, pool size %d, librbd (fio rbd engine, librbd cache on as by default)",
		v, c.osds(), c.osds())
}

// cephTools are the programs CephRBD runs (ceph-mon brings monmaptool,
// ceph-common ceph and rbd).
var cephTools = []string{"ceph-mon", "ceph-osd", "monmaptool", "ceph", "rbd"}

func (c CephRBD) Start(ctx context.Context, o StartOptions) (_ Instance, err error) {
	n := c.osds()
	switch {
	case n > cephOSDsMax:
		return nil, fmt.Errorf("%w: %d Ceph OSDs (at most %d)", ErrUsage, n, cephOSDsMax)
	case o.FrontEnd != RBD:
		return nil, fmt.Errorf("%w: Ceph serves RBD here, not %s", ErrUnavailable, o.FrontEnd)
	case o.Latency != 0:
		return nil, fmt.Errorf("%w: Ceph cannot inject latency", ErrUnavailable)
	case o.SizeBytes <= 0 || o.SizeBytes%(1<<20) != 0:
		return nil, fmt.Errorf("%w: RBD image size %d is not a positive multiple of 1 MiB", ErrUsage, o.SizeBytes)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("ceph dir: %w", err)
	}
	addrs, err := freeAddrs(2)
	if err != nil {
		return nil, err
	}
	fsid, err := newUUID(rand.Reader)
	if err != nil {
		return nil, err
	}
	cfg := cephConfig{FSID: fsid, Dir: dir, MonV2: addrs[0], MonV1: addrs[1], OSDs: n,
		BlockBytes: 2*o.SizeBytes + cephBlockSlackBytes}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	// The block files are written in full: refuse before filling the disk.
	need := int64(n)*cfg.BlockBytes + cephSpareBytes
	if avail, err := availBytes(dir); err == nil && avail < need {
		return nil, fmt.Errorf("%w: ceph: %d OSDs of %d MiB need %d MiB free in %s, have %d MiB",
			ErrUnavailable, n, cfg.BlockBytes>>20, need>>20, dir, avail>>20)
	}
	bins := map[string]string{}
	for _, t := range cephTools {
		p, err := lookTool(t)
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", err, cephInstallHint)
		}
		bins[t] = p
	}
	ci := &cephInstance{name: o.Name, bins: bins, conf: filepath.Join(dir, "ceph.conf")}
	defer func() {
		if err != nil {
			ci.Close()
		}
	}()
	if err := ci.startMon(ctx, cfg); err != nil {
		return nil, err
	}
	for i := range n {
		if err := ci.startOSD(ctx, cfg, i); err != nil {
			return nil, fmt.Errorf("ceph osd.%d: %w", i, err)
		}
	}
	if err := ci.waitOSDsUp(ctx, n); err != nil {
		return nil, err
	}
	if err := ci.createImage(ctx, n, o); err != nil {
		return nil, err
	}
	uri, err := rbdURI(rbdImage{Pool: cephPool, Image: o.Export, ID: cephClient, Conf: ci.conf})
	if err != nil {
		return nil, err
	}
	ci.target = Target{FrontEnd: RBD, URI: uri, SizeBytes: o.SizeBytes}
	return ci, nil
}

// cephConfig is what ceph.conf says about a bench cluster.
type cephConfig struct {
	FSID string
	// Dir is the cluster's directory, absolute.
	Dir string
	// MonV2 and MonV1 are the monitor's msgr2 and legacy addresses.
	MonV2, MonV1 string
	OSDs         int
	// BlockBytes is each OSD's BlueStore block file.
	BlockBytes int64
}

func (c cephConfig) monAddrs() string { return "[v2:" + c.MonV2 + ",v1:" + c.MonV1 + "]" }

// check rejects a directory whose admin socket paths would not fit a Unix
// socket address, or that the configuration's syntax cannot hold.
func (c cephConfig) check() error {
	if strings.ContainsAny(c.Dir, "\n#;$:") {
		return fmt.Errorf("%w: ceph dir %q: newline, #, ;, $ and : cannot be used in ceph.conf", ErrUsage, c.Dir)
	}
	sock := filepath.Join(c.Dir, "run", fmt.Sprintf("ceph-osd.%d.asok", c.OSDs-1))
	if len(sock) > unixPathMax {
		return fmt.Errorf("%w: ceph admin socket %s is longer than %d bytes (use a shorter --workdir)", ErrUsage, sock, unixPathMax)
	}
	return nil
}

// text returns ceph.conf. Everything binds 127.0.0.1 only (the machine
// may have other interfaces), placement picks OSDs rather than hosts (all
// are on one host), pool size 1 is allowed for the one-OSD system, and
// BlueStore is tuned as for an SSD whatever the virtual disk reports.
func (c cephConfig) text() string {
	var b strings.Builder
	line := func(k string, v any) { fmt.Fprintf(&b, "\t%s = %v\n", k, v) }
	b.WriteString("[global]\n")
	line("fsid", c.FSID)
	line("mon host", c.monAddrs())
	line("public network", "127.0.0.0/8")
	line("public addr", "127.0.0.1")
	line("cluster addr", "127.0.0.1")
	line("ms bind ipv4", true)
	line("ms bind ipv6", false)
	line("auth cluster required", "cephx")
	line("auth service required", "cephx")
	line("auth client required", "cephx")
	line("auth allow insecure global id reclaim", false)
	line("run dir", filepath.Join(c.Dir, "run"))
	line("crash dir", filepath.Join(c.Dir, "crash"))
	line("log file", filepath.Join(c.Dir, "log", "$cluster-$name.log"))
	line("admin socket", filepath.Join(c.Dir, "run", "$cluster-$name.asok"))
	line("pid file", filepath.Join(c.Dir, "run", "$name.pid"))
	line("mon data", filepath.Join(c.Dir, "$name"))
	line("osd data", filepath.Join(c.Dir, "$name"))
	line("osd crush chooseleaf type", 0)
	line("osd pool default size", c.OSDs)
	line("osd pool default min size", 1)
	line("osd pool default pg autoscale mode", "off")
	line("mon allow pool size one", true)
	line("mon warn on pool no redundancy", false)
	b.WriteString("[osd]\n")
	line("osd objectstore", "bluestore")
	line("bluestore block create", true)
	line("bluestore block size", c.BlockBytes)
	line("bluestore debug enforce settings", "ssd")
	line("osd memory target", cephOSDMemoryTargetBytes)
	b.WriteString("[client]\n")
	line("keyring", filepath.Join(c.Dir, "ceph.client.admin.keyring"))
	// Library clients (fio's jobs) are many per process.
	line("admin socket", filepath.Join(c.Dir, "run", "$cluster-$name.$pid.$cctid.asok"))
	line("log file", filepath.Join(c.Dir, "log", "$cluster-$name.$pid.log"))
	return b.String()
}

// cephKey returns a new cephx secret as keyrings hold it: base64 of the
// key type (1, AES), its creation time (seconds, nanoseconds), the length
// and 16 random bytes, little-endian.
func cephKey(random io.Reader, now time.Time) (string, error) {
	var k [28]byte
	binary.LittleEndian.PutUint16(k[0:], 1)
	binary.LittleEndian.PutUint32(k[2:], uint32(now.Unix()))
	binary.LittleEndian.PutUint32(k[6:], uint32(now.Nanosecond()))
	binary.LittleEndian.PutUint16(k[10:], 16)
	if _, err := io.ReadFull(random, k[12:]); err != nil {
		return "", fmt.Errorf("cephx key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(k[:]), nil
}

// keyringEntry is one entity of a keyring: its name, key and capabilities
// (service → grant, written in order).
type keyringEntry struct {
	Name string
	Key  string
	Caps [][2]string
}

func keyringText(es ...keyringEntry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "[%s]\n\tkey = %s\n", e.Name, e.Key)
		for _, c := range e.Caps {
			fmt.Fprintf(&b, "\tcaps %s = %q\n", c[0], c[1])
		}
	}
	return b.String()
}

// newUUID returns a random (version 4) UUID.
func newUUID(random io.Reader) (string, error) {
	var u [16]byte
	if _, err := io.ReadFull(random, u[:]); err != nil {
		return "", fmt.Errorf("uuid: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// rbdImage names an RBD image and how to reach it.
type rbdImage struct {
	Pool, Image string
	// ID is the client's name without "client.".
	ID string
	// Conf is the cluster's ceph.conf.
	Conf string
}

// rbdURI writes an image as QEMU names it: rbd:pool/image:id=ID:conf=PATH.
func rbdURI(im rbdImage) (string, error) {
	for _, f := range []struct{ what, v string }{{"pool", im.Pool}, {"image", im.Image}, {"id", im.ID}} {
		if f.v == "" || strings.ContainsAny(f.v, ":/@=") {
			return "", fmt.Errorf("%w: rbd %s %q (empty, or with : / @ =)", ErrUsage, f.what, f.v)
		}
	}
	if im.Conf == "" || strings.ContainsAny(im.Conf, ":=") {
		return "", fmt.Errorf("%w: rbd conf %q (empty, or with : =)", ErrUsage, im.Conf)
	}
	return "rbd:" + im.Pool + "/" + im.Image + ":id=" + im.ID + ":conf=" + im.Conf, nil
}

// parseRBDURI reads what rbdURI wrote.
func parseRBDURI(uri string) (rbdImage, error) {
	rest, ok := strings.CutPrefix(uri, "rbd:")
	if !ok {
		return rbdImage{}, fmt.Errorf("%w: %q is not an rbd: URI", ErrUsage, uri)
	}
	parts := strings.Split(rest, ":")
	var im rbdImage
	var found bool
	if im.Pool, im.Image, found = strings.Cut(parts[0], "/"); !found {
		return rbdImage{}, fmt.Errorf("%w: rbd URI %q: no pool/image", ErrUsage, uri)
	}
	for _, kv := range parts[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "id":
			im.ID = v
		case "conf":
			im.Conf = v
		default:
			return rbdImage{}, fmt.Errorf("%w: rbd URI %q: option %q", ErrUsage, uri, k)
		}
	}
	if back, err := rbdURI(im); err != nil || back != uri {
		return rbdImage{}, fmt.Errorf("%w: rbd URI %q: malformed", ErrUsage, uri)
	}
	return im, nil
}

// cephInstance is a running bench Ceph cluster.
type cephInstance struct {
	name   string
	bins   map[string]string
	conf   string
	mon    *proc
	osds   []*proc
	target Target

	closeOnce sync.Once
	closeErr  error
}

func (ci *cephInstance) Target() Target { return ci.target }

func (ci *cephInstance) PIDs() []int {
	var pids []int
	for _, p := range append([]*proc{ci.mon}, ci.osds...) {
		if p != nil {
			pids = append(pids, p.cmd.Process.Pid)
		}
	}
	return pids
}

// Close stops the OSDs side by side, then the monitor: each gets SIGTERM
// and, after stopTimeout, SIGKILL with its process group.
func (ci *cephInstance) Close() error {
	ci.closeOnce.Do(func() {
		errs := make([]error, len(ci.osds)+1)
		var wg sync.WaitGroup
		for i, p := range ci.osds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = p.stop()
			}()
		}
		wg.Wait()
		if ci.mon != nil {
			errs[len(ci.osds)] = ci.mon.stop()
		}
		ci.closeErr = errors.Join(errs...)
	})
	return ci.closeErr
}

// ceph runs the ceph CLI against the cluster.
func (ci *cephInstance) ceph(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{ci.bins["ceph"], "-c", ci.conf, "--connect-timeout", strconv.Itoa(cephConnectTimeoutSec)}, args...)
	r, err := runTool(ctx, cephStepTimeout, argv...)
	return r.out, err
}

// startMon writes the configuration and keyrings, makes the monitor's
// store and starts it, and waits until it answers.
func (ci *cephInstance) startMon(ctx context.Context, cfg cephConfig) error {
	for _, d := range []string{"run", "log", "crash"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return fmt.Errorf("ceph dir: %w", err)
		}
	}
	now := time.Now()
	monKey, err := cephKey(rand.Reader, now)
	if err != nil {
		return err
	}
	adminKey, err := cephKey(rand.Reader, now)
	if err != nil {
		return err
	}
	admin := keyringEntry{Name: "client." + cephClient, Key: adminKey,
		Caps: [][2]string{{"mon", "allow *"}, {"osd", "allow *"}, {"mgr", "allow *"}}}
	monKeyring := filepath.Join(cfg.Dir, "mon.keyring")
	monmap := filepath.Join(cfg.Dir, "monmap")
	for _, f := range []struct{ path, text string }{
		{ci.conf, cfg.text()},
		{filepath.Join(cfg.Dir, "ceph.client.admin.keyring"), keyringText(admin)},
		{monKeyring, keyringText(keyringEntry{Name: "mon.", Key: monKey, Caps: [][2]string{{"mon", "allow *"}}}, admin)},
	} {
		if err := os.WriteFile(f.path, []byte(f.text), 0o600); err != nil {
			return fmt.Errorf("ceph: %w", err)
		}
	}
	steps := [][]string{
		{ci.bins["monmaptool"], "--create", "--fsid", cfg.FSID, "--addv", cephMon, cfg.monAddrs(), monmap},
		{ci.bins["ceph-mon"], "-c", ci.conf, "--mkfs", "-i", cephMon, "--monmap", monmap, "--keyring", monKeyring},
	}
	for _, argv := range steps {
		if _, err := runTool(ctx, cephStepTimeout, argv...); err != nil {
			return fmt.Errorf("ceph mon: %w", err)
		}
	}
	p, err := startProc(ctx, cfg.Dir, ci.name+"-mon."+cephMon, nil, ci.bins["ceph-mon"], "-f", "-c", ci.conf, "-i", cephMon)
	if err != nil {
		return err
	}
	ci.mon = p
	return ci.poll(ctx, "ceph mon answering", func(ctx context.Context) (bool, error) {
		_, err := ci.ceph(ctx, "mon", "stat")
		return err == nil, err
	})
}

// startOSD registers OSD i with the monitor, makes its BlueStore on a
// block file of zeros and starts it.
func (ci *cephInstance) startOSD(ctx context.Context, cfg cephConfig, i int) error {
	uuid, err := newUUID(rand.Reader)
	if err != nil {
		return err
	}
	key, err := cephKey(rand.Reader, time.Now())
	if err != nil {
		return err
	}
	name := "osd." + strconv.Itoa(i)
	data := filepath.Join(cfg.Dir, name)
	if err := os.MkdirAll(data, 0o755); err != nil {
		return fmt.Errorf("osd dir: %w", err)
	}
	secret := filepath.Join(cfg.Dir, name+".secret.json")
	js, _ := json.Marshal(map[string]string{"cephx_secret": key})
	if err := os.WriteFile(secret, js, 0o600); err != nil {
		return fmt.Errorf("osd secret: %w", err)
	}
	out, err := ci.ceph(ctx, "osd", "new", uuid, "-i", secret)
	if err != nil {
		return err
	}
	if id, err := lastInt(out); err != nil || id != i {
		return fmt.Errorf("ceph osd new: got %q, want id %d", bytes.TrimSpace(out), i)
	}
	if err := os.WriteFile(filepath.Join(data, "keyring"), []byte(keyringText(keyringEntry{Name: name, Key: key})), 0o600); err != nil {
		return fmt.Errorf("osd keyring: %w", err)
	}
	// Random writes must not land in holes of the file system, which the
	// other systems' filled exports do not have.
	if err := writeZeros(ctx, filepath.Join(data, "block"), cfg.BlockBytes); err != nil {
		return err
	}
	if _, err := runTool(ctx, cephStepTimeout, ci.bins["ceph-osd"], "-c", ci.conf, "-i", strconv.Itoa(i), "--mkfs", "--osd-uuid", uuid); err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	p, err := startProc(ctx, cfg.Dir, ci.name+"-"+name, nil, ci.bins["ceph-osd"], "-f", "-c", ci.conf, "-i", strconv.Itoa(i))
	if err != nil {
		return err
	}
	ci.osds = append(ci.osds, p)
	return nil
}

// lastInt parses the last line of out as an integer.
func lastInt(out []byte) (int, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strconv.Atoi(strings.TrimSpace(lines[len(lines)-1]))
}

// writeZeros writes size bytes of zeros to a new file and syncs it, so
// its blocks are allocated and its dirty pages gone before measuring.
func writeZeros(ctx context.Context, path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("block file: %w", err)
	}
	defer f.Close()
	zeros := make([]byte, zeroChunkBytes)
	for off := int64(0); off < size; off += zeroChunkBytes {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		if _, err := f.Write(zeros[:min(zeroChunkBytes, size-off)]); err != nil {
			return fmt.Errorf("block file: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("block file: %w", err)
	}
	return f.Close()
}

// osdStat is the part of `ceph osd stat -f json` the harness reads.
type osdStat struct {
	NumOSDs   int `json:"num_osds"`
	NumUpOSDs int `json:"num_up_osds"`
	NumInOSDs int `json:"num_in_osds"`
}

func parseOSDStat(out []byte) (osdStat, error) {
	var s osdStat
	if i := bytes.IndexByte(out, '{'); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &s); err != nil {
		return osdStat{}, fmt.Errorf("ceph osd stat: %w", err)
	}
	return s, nil
}

// waitOSDsUp waits until the monitor sees n OSDs up and in.
func (ci *cephInstance) waitOSDsUp(ctx context.Context, n int) error {
	return ci.poll(ctx, fmt.Sprintf("%d ceph OSDs up", n), func(ctx context.Context) (bool, error) {
		out, err := ci.ceph(ctx, "osd", "stat", "-f", "json")
		if err != nil {
			return false, err
		}
		s, err := parseOSDStat(out)
		if err != nil {
			return false, err
		}
		return s.NumUpOSDs == n && s.NumInOSDs == n, fmt.Errorf("%d of %d OSDs up, %d in", s.NumUpOSDs, n, s.NumInOSDs)
	})
}

// createImage makes the pool, checks its size, and creates the image.
func (ci *cephInstance) createImage(ctx context.Context, size int, o StartOptions) error {
	sz := strconv.Itoa(size)
	for _, args := range [][]string{
		{"osd", "pool", "create", cephPool, strconv.Itoa(cephPGs), strconv.Itoa(cephPGs)},
		{"osd", "pool", "set", cephPool, "size", sz, "--yes-i-really-mean-it"},
	} {
		if _, err := ci.ceph(ctx, args...); err != nil {
			return err
		}
	}
	out, err := ci.ceph(ctx, "osd", "pool", "get", cephPool, "size", "-f", "json")
	if err != nil {
		return err
	}
	var got struct {
		Size int `json:"size"`
	}
	if i := bytes.IndexByte(out, '{'); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &got); err != nil {
		return fmt.Errorf("ceph pool %s size: %w", cephPool, err)
	}
	if got.Size != size {
		return fmt.Errorf("ceph pool %s: size %d, want %d", cephPool, got.Size, size)
	}
	rbd := []string{ci.bins["rbd"], "-c", ci.conf, "--id", cephClient}
	for _, args := range [][]string{
		{"pool", "init", cephPool},
		{"create", "--size", strconv.FormatInt(o.SizeBytes>>20, 10) + "M", "--image-feature", "layering", cephPool + "/" + o.Export},
	} {
		if _, err := runTool(ctx, cephStepTimeout, append(rbd, args...)...); err != nil {
			return fmt.Errorf("rbd: %w", err)
		}
	}
	return nil
}

// poll calls ready until it says yes, a daemon exits, or readyTimeout
// passes; ready's error says why not yet.
func (ci *cephInstance) poll(ctx context.Context, what string, ready func(context.Context) (bool, error)) error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		ok, err := ready(ctx)
		if ok {
			return nil
		}
		if last = err; last == nil {
			last = errors.New("not ready")
		}
		for _, p := range append([]*proc{ci.mon}, ci.osds...) {
			select {
			case <-p.exited:
				return fmt.Errorf("%s: %s exited: %v: %s", what, p.name, p.waitErr, p.logTail())
			default:
			}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(10 * probeEvery):
		}
	}
	return fmt.Errorf("%s: not after %s: %w", what, readyTimeout, last)
}
