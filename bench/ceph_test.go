package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCephKey checks the cephx secret layout ceph-authtool writes: type 1
// (AES), creation time, length 16, then the secret, in base64.
func TestCephKey(t *testing.T) {
	now := time.Unix(1_800_000_000, 123456789)
	random := bytes.NewReader(bytes.Repeat([]byte{0xab}, 16))
	k, err := cephKey(random, now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil {
		t.Fatalf("key %q: %v", k, err)
	}
	if len(b) != 28 || len(k) != 40 || !strings.HasPrefix(k, "AQ") {
		t.Fatalf("key %q: %d bytes", k, len(b))
	}
	le := binary.LittleEndian
	if le.Uint16(b[0:]) != 1 || le.Uint32(b[2:]) != uint32(now.Unix()) || le.Uint32(b[6:]) != 123456789 || le.Uint16(b[10:]) != 16 {
		t.Errorf("key header % x", b[:12])
	}
	if !bytes.Equal(b[12:], bytes.Repeat([]byte{0xab}, 16)) {
		t.Errorf("secret % x", b[12:])
	}
	if _, err := cephKey(bytes.NewReader(make([]byte, 15)), now); err == nil {
		t.Error("short randomness: no error")
	}
}

func TestKeyringText(t *testing.T) {
	got := keyringText(
		keyringEntry{Name: "mon.", Key: "K1", Caps: [][2]string{{"mon", "allow *"}}},
		keyringEntry{Name: "client.admin", Key: "K2", Caps: [][2]string{{"mon", "allow *"}, {"osd", "allow *"}}},
		keyringEntry{Name: "osd.0", Key: "K3"},
	)
	want := "[mon.]\n\tkey = K1\n\tcaps mon = \"allow *\"\n" +
		"[client.admin]\n\tkey = K2\n\tcaps mon = \"allow *\"\n\tcaps osd = \"allow *\"\n" +
		"[osd.0]\n\tkey = K3\n"
	if got != want {
		t.Errorf("keyring:\n%s\nwant:\n%s", got, want)
	}
}

func TestNewUUID(t *testing.T) {
	u, err := newUUID(bytes.NewReader(bytes.Repeat([]byte{0xff}, 16)))
	if err != nil {
		t.Fatal(err)
	}
	if u != "ffffffff-ffff-4fff-bfff-ffffffffffff" {
		t.Errorf("uuid %s", u)
	}
	if _, err := newUUID(bytes.NewReader(nil)); err == nil {
		t.Error("no randomness: no error")
	}
}

// confValues parses ceph.conf text into section → key → value.
func confValues(t *testing.T, text string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	sec := ""
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") {
			sec = l[1 : len(l)-1]
			out[sec] = map[string]string{}
			continue
		}
		k, v, ok := strings.Cut(l, " = ")
		if !ok || sec == "" {
			t.Fatalf("ceph.conf line %q", l)
		}
		if _, dup := out[sec][k]; dup {
			t.Fatalf("ceph.conf: %s twice in [%s]", k, sec)
		}
		out[sec][k] = v
	}
	return out
}

func TestCephConfig(t *testing.T) {
	c := cephConfig{FSID: "f5f3bd3e-0d3a-4c8e-9d57-9b3f2c1a0b11", Dir: "/tmp/w/ceph-rbd-r3",
		MonV2: "127.0.0.1:40001", MonV1: "127.0.0.1:40002", OSDs: 3, BlockBytes: 3 << 30}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	v := confValues(t, c.text())
	for _, tc := range []struct{ sec, key, want string }{
		{"global", "fsid", c.FSID},
		{"global", "mon host", "[v2:127.0.0.1:40001,v1:127.0.0.1:40002]"},
		{"global", "public addr", "127.0.0.1"},
		{"global", "cluster addr", "127.0.0.1"},
		{"global", "ms bind ipv6", "false"},
		{"global", "osd crush chooseleaf type", "0"},
		{"global", "osd pool default size", "3"},
		{"global", "mon allow pool size one", "true"},
		{"global", "auth allow insecure global id reclaim", "false"},
		{"global", "run dir", "/tmp/w/ceph-rbd-r3/run"},
		{"global", "mon data", "/tmp/w/ceph-rbd-r3/$name"},
		{"global", "osd data", "/tmp/w/ceph-rbd-r3/$name"},
		{"osd", "bluestore block create", "true"},
		{"osd", "bluestore block size", "3221225472"},
		{"osd", "bluestore debug enforce settings", "ssd"},
		{"client", "keyring", "/tmp/w/ceph-rbd-r3/ceph.client.admin.keyring"},
	} {
		if got := v[tc.sec][tc.key]; got != tc.want {
			t.Errorf("[%s] %s = %q, want %q", tc.sec, tc.key, got, tc.want)
		}
	}
	// Daemons find their keyrings in their data directories: a global
	// keyring would hand them the admin's. BlueStore's block path stays
	// unset (a set path makes mkfs expect a symlink target).
	if _, ok := v["global"]["keyring"]; ok {
		t.Error("keyring in [global]")
	}
	if _, ok := v["osd"]["bluestore block path"]; ok {
		t.Error("bluestore block path set")
	}
	// Nothing outside the cluster's directory.
	for sec, kv := range v {
		for k, val := range kv {
			if strings.HasPrefix(val, "/") && !strings.HasPrefix(val, c.Dir+"/") {
				t.Errorf("[%s] %s = %s is outside %s", sec, k, val, c.Dir)
			}
		}
	}

	for _, tc := range []struct {
		dir  string
		want string
	}{
		{"/tmp/" + strings.Repeat("d", 100), "admin socket"},
		{"/tmp/a:b", "cannot be used"},
		{"/tmp/a$b", "cannot be used"},
	} {
		c.Dir = tc.dir
		if err := c.check(); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check %s: %v", tc.dir, err)
		}
	}
}

func TestRBDURI(t *testing.T) {
	im := rbdImage{Pool: "rbd", Image: "vol0", ID: "admin", Conf: "/tmp/w/ceph.conf"}
	uri, err := rbdURI(im)
	if err != nil {
		t.Fatal(err)
	}
	if uri != "rbd:rbd/vol0:id=admin:conf=/tmp/w/ceph.conf" {
		t.Errorf("uri %s", uri)
	}
	back, err := parseRBDURI(uri)
	if err != nil || back != im {
		t.Errorf("parse %s: %+v, %v", uri, back, err)
	}
	for _, bad := range []rbdImage{
		{Pool: "", Image: "v", ID: "a", Conf: "/c"},
		{Pool: "p/q", Image: "v", ID: "a", Conf: "/c"},
		{Pool: "p", Image: "v:1", ID: "a", Conf: "/c"},
		{Pool: "p", Image: "v", ID: "a", Conf: "/c:d"},
		{Pool: "p", Image: "v", ID: "a", Conf: ""},
	} {
		if _, err := rbdURI(bad); !errors.Is(err, ErrUsage) {
			t.Errorf("rbdURI(%+v): %v", bad, err)
		}
	}
	for _, bad := range []string{"nbd://127.0.0.1/x", "rbd:vol0", "rbd:p/v:id=a", "rbd:p/v:id=a:conf=/c:x=1", "rbd:p/v/w:id=a:conf=/c"} {
		if _, err := parseRBDURI(bad); !errors.Is(err, ErrUsage) {
			t.Errorf("parseRBDURI(%q): %v", bad, err)
		}
	}
}

func TestFIORBDArgs(t *testing.T) {
	tg := Target{FrontEnd: RBD, URI: "rbd:rbd/vol0:id=admin:conf=/tmp/w/ceph.conf", SizeBytes: 64 << 20}
	f := FIO{}
	if !f.Supports(RBD, Workloads()[0]) {
		t.Fatal("fio does not support rbd")
	}
	argv, err := f.args(tg, Workloads()[6], RunOptions{Runtime: time.Second}, "/out.json") // 4 connections
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"--ioengine=rbd", "--clientname=admin", "--pool=rbd", "--rbdname=vol0", "--numjobs=4", "--size=16777216", "--offset_increment=16777216"} {
		if !slices.Contains(argv, a) {
			t.Errorf("%s missing from %v", a, argv)
		}
	}
	// Like cairn over NBD: no O_DIRECT, no flushes, no URI.
	for _, a := range argv {
		if strings.HasPrefix(a, "--direct") || strings.HasPrefix(a, "--fsync") || strings.HasPrefix(a, "--uri") || strings.HasPrefix(a, "--ioengine=nbd") {
			t.Errorf("%s in %v", a, argv)
		}
	}
	_, env, err := f.engine(tg)
	if err != nil || !slices.Equal(env, []string{"CEPH_CONF=/tmp/w/ceph.conf"}) {
		t.Errorf("env %v, %v", env, err)
	}
	if _, err := f.args(Target{FrontEnd: RBD, URI: "rbd:broken"}, Workloads()[0], RunOptions{}, "/o"); !errors.Is(err, ErrUsage) {
		t.Errorf("bad rbd URI: %v", err)
	}
	if _, err := f.Run(context.Background(), Target{FrontEnd: ISCSI, URI: "iscsi://x"}, Workloads()[0], RunOptions{}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("fio over iSCSI: %v", err)
	}
}

func TestParseOSDStat(t *testing.T) {
	s, err := parseOSDStat([]byte("\n{\"epoch\":12,\"num_osds\":3,\"num_up_osds\":2,\"osd_up_since\":1764671000,\"num_in_osds\":3,\"osd_in_since\":1764671000,\"num_remapped_pgs\":0}\n"))
	if err != nil || s != (osdStat{NumOSDs: 3, NumUpOSDs: 2, NumInOSDs: 3}) {
		t.Errorf("%+v, %v", s, err)
	}
	if _, err := parseOSDStat([]byte("Error initializing cluster client")); err == nil {
		t.Error("garbage: no error")
	}
	if n, err := lastInt([]byte("warning: x\n2\n")); err != nil || n != 2 {
		t.Errorf("lastInt: %d, %v", n, err)
	}
}

// TestCephStartRefuses checks what Start rejects before running anything.
func TestCephStartRefuses(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		c    CephRBD
		o    StartOptions
		want error
	}{
		{CephRBD{}, StartOptions{FrontEnd: NBD, SizeBytes: 1 << 20}, ErrUnavailable},
		{CephRBD{}, StartOptions{FrontEnd: RBD, SizeBytes: 1 << 20, Latency: time.Millisecond}, ErrUnavailable},
		{CephRBD{}, StartOptions{FrontEnd: RBD, SizeBytes: 1<<20 + 512}, ErrUsage},
		{CephRBD{OSDs: cephOSDsMax + 1}, StartOptions{FrontEnd: RBD, SizeBytes: 1 << 20}, ErrUsage},
	} {
		if _, err := tc.c.Start(ctx, tc.o); !errors.Is(err, tc.want) {
			t.Errorf("%+v %+v: %v, want %v", tc.c, tc.o, err, tc.want)
		}
	}
	// Block files that would not fit are refused before anything runs.
	dir := t.TempDir()
	_, err := CephRBD{OSDs: 3}.Start(ctx, StartOptions{Dir: dir, FrontEnd: RBD, SizeBytes: 1 << 50})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "free in "+dir) {
		t.Errorf("1 PiB image: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused start left %d files in %s", len(ents), dir)
	}
}

// TestCephMissing checks that without Ceph's tools the systems are
// unavailable, with the install hint, and a default run skips them.
func TestCephMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := CephRBD{}.Start(context.Background(), StartOptions{Dir: t.TempDir(), FrontEnd: RBD, SizeBytes: 1 << 20})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), cephInstallHint) {
		t.Fatalf("without ceph: %v", err)
	}
	for _, s := range Scenarios(&Binary{}) {
		if _, ok := s.System.(CephRBD); ok && (s.Subject || s.frontEnd() != RBD) {
			t.Errorf("%s: a Ceph scenario must be an RBD peer", s.Name)
		}
	}
}

func TestCephDescribe(t *testing.T) {
	m := cephVersionRE.FindStringSubmatch("ceph version 16.2.15 (618f440892089921c3e944a991122ddc44e60516) pacific (stable)")
	if m == nil || m[1] != "16.2.15" || m[2] != "pacific" {
		t.Errorf("version match %q", m)
	}
	if d := (CephRBD{OSDs: 3}).Describe(context.Background()); !regexp.MustCompile(`3 BlueStore OSD\(s\).*pool size 3`).MatchString(d) {
		t.Errorf("describe %q", d)
	}
}
