package configs

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsValidate(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default: %v", err)
	}
	if err := Test(t.TempDir()).Validate(); err != nil {
		t.Fatalf("Test: %v", err)
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	c, err := Parse(nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := Default(); !reflect.DeepEqual(c, want) {
		t.Fatalf("Parse(nil) = %+v, want %+v", c, want)
	}
}

func TestSingle(t *testing.T) {
	c, err := Load("single.toml")
	if err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(filepath.Dir(wd), "data"); c.DataDir != want {
		t.Errorf("DataDir = %q, want %q", c.DataDir, want)
	}
	want := []VolumeSpec{{Name: "vol0", Size: 1 << 30, Replicas: 1}}
	if !reflect.DeepEqual(c.Volumes, want) {
		t.Errorf("Volumes = %+v, want %+v", c.Volumes, want)
	}
	for _, r := range []string{RoleTarget, RoleStorage, RoleManager} {
		if !c.Has(r) {
			t.Errorf("role %s missing", r)
		}
	}
	// The embedded bytes are the file, and parse the same given the same dir.
	file, err := os.ReadFile("single.toml")
	if err != nil {
		t.Fatal(err)
	}
	if string(Single()) != string(file) {
		t.Fatal("Single() differs from single.toml")
	}
	e, err := Parse(Single(), wd)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(e, c) {
		t.Fatalf("Parse(Single()) = %+v, want %+v", e, c)
	}
	Single()[0] = 'X' // a copy: must not change the embedded bytes
	if Single()[0] == 'X' {
		t.Fatal("Single returned the embedded slice")
	}
}

func TestParseValues(t *testing.T) {
	in := `
node_name = "Host-7.example"
data_dir = "state"
roles = ["storage"]
zone = "rack-2"
[admin]
listen = ":7900"
token_file = "admin.token"
[gossip]
bind = "0.0.0.0:7946"
join = ["10.0.0.2:7946", "node3.example:7946"]
secret_key_file = "/etc/cairn/gossip.key"
[raft]
bind = "10.0.0.1:7947"
bootstrap_expect = 3
[tls]
ca_file = "ca.pem"
cert_file = "node.pem"
key_file = "node.key"
[limits]
inflight_bytes = "256MiB"
reply_timeout = "10s"
request_timeout = "1m"
connections = 1000
connections_per_client = 64
[[volume]]
name = "a"
size = 8192
[[volume]]
name = "b.c_d-e"
size = "3 TiB"
replicas = 3
`
	c, err := Parse([]byte(in), "/etc/cairn")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.NodeName = "Host-7.example"
	want.DataDir = "/etc/cairn/state"
	want.Roles = []string{RoleStorage}
	want.Zone = "rack-2"
	want.Admin = Admin{Listen: ":7900", TokenFile: "/etc/cairn/admin.token"}
	want.Gossip = Gossip{Bind: "0.0.0.0:7946", Join: []string{"10.0.0.2:7946", "node3.example:7946"}, SecretKeyFile: "/etc/cairn/gossip.key"}
	want.TLS = TLS{CAFile: "/etc/cairn/ca.pem", CertFile: "/etc/cairn/node.pem", KeyFile: "/etc/cairn/node.key"}
	want.Limits = Limits{InflightBytes: 256 << 20, ReplyTimeout: Duration(10 * time.Second), RequestTimeout: Duration(time.Minute), Connections: 1000, ConnectionsPerClient: 64}
	want.Raft = Raft{Bind: "10.0.0.1:7947", BootstrapExpect: 3}
	want.Volumes = []VolumeSpec{{Name: "a", Size: 8192, Replicas: 1}, {Name: "b.c_d-e", Size: 3 << 40, Replicas: 3}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
	if c.Has(RoleManager) {
		t.Error("Has(manager) on a storage-only config")
	}
}

func TestDataDir(t *testing.T) {
	for _, tc := range []struct{ data, dir, want string }{
		{`data_dir = "d"`, "/x/y", "/x/y/d"},
		{`data_dir = "../d"`, "/x/y", "/x/d"},
		{`data_dir = "/abs"`, "/x/y", "/abs"},
		{`data_dir = "d"`, "", "d"},
		{``, "/x", "/x/data"},
	} {
		c, err := Parse([]byte(tc.data), tc.dir)
		if err != nil {
			t.Fatalf("%q: %v", tc.data, err)
		}
		if c.DataDir != tc.want {
			t.Errorf("%q in %q: DataDir = %q, want %q", tc.data, tc.dir, c.DataDir, tc.want)
		}
	}
}

// TestParseErrors covers every error path: each case must fail with the
// given kind, name the key, and (when line > 0) the line.
func TestParseErrors(t *testing.T) {
	many := strings.Repeat("[[volume]]\nname = \"v\"\nsize = 4096\n", volumesMax+1)
	for _, tc := range []struct {
		name string
		in   string
		kind error
		key  string // KeyError.Key of the first error
		line int
		msg  string // substring of the message
	}{
		{"unknown top-level key", "nod_name = \"x\"", ErrUnknownKey, "nod_name", 0, "unknown key"},
		{"unknown nested key", "[nbd]\nlisen = \"127.0.0.1:1\"", ErrUnknownKey, "nbd.lisen", 0, "unknown key"},
		{"unknown table", "[nfs]\nlisten = \"x\"", ErrUnknownKey, "nfs", 0, "unknown key"},
		{"unknown volume key", "[[volume]]\nname = \"v\"\nsize = 4096\nblock_size = 512", ErrUnknownKey, "volume.block_size", 0, "unknown key"},
		{"syntax", "node_name = \"a\"\n\nroles = [\n", ErrSyntax, "roles", 3, "unexpected EOF"},
		{"unterminated string", "[admin]\nlisten = \"x", ErrSyntax, "admin.listen", 2, ""},
		{"bad table header", "node_name = \"a\"\n[admin x]\n", ErrSyntax, "", 2, ""},
		{"wrong type", "node_name = 3", ErrSyntax, "", 0, "incompatible types"},
		{"size unit", "[[volume]]\nname = \"v\"\nsize = \"1GB\"", ErrInvalid, "volume[0].size", 3, "ambiguous"},
		{"size garbage", "[[volume]]\nname = \"v\"\nsize = \"lots\"", ErrInvalid, "volume[0].size", 3, "non-negative integer"},
		{"size fraction", "[[volume]]\nname = \"v\"\nsize = \"1.5GiB\"", ErrInvalid, "volume[0].size", 3, "unknown unit"},
		{"size type", "[[volume]]\nname = \"v\"\nsize = [1]", ErrInvalid, "volume[0].size", 0, "want a string"},
		{"size negative", "[[volume]]\nname = \"v\"\nsize = -4096", ErrInvalid, "volume[0].size", 3, ""},
		{"size zero", "[[volume]]\nname = \"v\"\nsize = 0", ErrInvalid, "volume[0].size", 0, "positive"},
		{"size unaligned", "[[volume]]\nname = \"v\"\nsize = \"4097\"", ErrInvalid, "volume[0].size", 0, "multiple of 4096"},
		{"size too big", "[[volume]]\nname = \"v\"\nsize = \"65TiB\"", ErrInvalid, "volume[0].size", 0, "larger than"},
		{"size overflow", "[[volume]]\nname = \"v\"\nsize = \"9000000PiB\"", ErrInvalid, "volume[0].size", 3, "out of range"},
		{"size missing", "[[volume]]\nname = \"v\"", ErrInvalid, "volume[0].size", 0, "missing"},
		{"second volume size", "[[volume]]\nname = \"a\"\nsize = 4096\n[[volume]]\nname = \"b\"\nsize = \"x\"", ErrInvalid, "volume[1].size", 0, ""},
		{"volume name", "[[volume]]\nname = \"Vol\"\nsize = 4096", ErrInvalid, "volume[0].name", 0, "volume name"},
		{"volume name empty", "[[volume]]\nsize = 4096", ErrInvalid, "volume[0].name", 0, ""},
		{"duplicate volume", "[[volume]]\nname = \"v\"\nsize = 4096\n[[volume]]\nname = \"v\"\nsize = 8192", ErrInvalid, "volume[1].name", 0, "already declared as volume[0]"},
		{"replicas zero", "[[volume]]\nname = \"v\"\nsize = 4096\nreplicas = 0", ErrInvalid, "volume[0].replicas", 0, ""},
		{"replicas too many", "[[volume]]\nname = \"v\"\nsize = 4096\nreplicas = 6", ErrInvalid, "volume[0].replicas", 0, ""},
		{"too many volumes", many, ErrInvalid, "volume", 0, "at most"},
		{"bad role", `roles = ["target", "stroage"]`, ErrInvalid, "roles[1]", 0, `unknown role "stroage"`},
		{"duplicate role", `roles = ["target", "target"]`, ErrInvalid, "roles[1]", 0, "twice"},
		{"no roles", `roles = []`, ErrInvalid, "roles", 0, ""},
		{"address without port", "[admin]\nlisten = \"127.0.0.1\"", ErrInvalid, "admin.listen", 0, "missing port"},
		{"address bad port", "[nbd]\nlisten = \"127.0.0.1:nbd\"", ErrInvalid, "nbd.listen", 0, "port"},
		{"address port range", "[iscsi]\nlisten = \"127.0.0.1:65536\"", ErrInvalid, "iscsi.listen", 0, "port"},
		{"address empty", "[storage]\nlisten = \"\"", ErrInvalid, "storage.listen", 0, ""},
		{"gossip bind", "[gossip]\nbind = \"[::1\"", ErrInvalid, "gossip.bind", 0, ""},
		{"duplicate address", "[nbd]\nlisten = \"127.0.0.1:7900\"", ErrInvalid, "nbd.listen", 0, "admin.listen"},
		{"raft bind unspecified", "[raft]\nbind = \"0.0.0.0:7947\"", ErrInvalid, "raft.bind", 0, "concrete"},
		{"raft bind empty host", "[raft]\nbind = \":7947\"", ErrInvalid, "raft.bind", 0, "concrete"},
		{"raft bind bad", "[raft]\nbind = \"x\"", ErrInvalid, "raft.bind", 0, ""},
		{"bootstrap_expect", "[raft]\nbootstrap_expect = 8", ErrInvalid, "raft.bootstrap_expect", 0, ""},
		{"bootstrap_expect negative", "[raft]\nbootstrap_expect = -1", ErrInvalid, "raft.bootstrap_expect", 0, ""},
		{"join", "[gossip]\njoin = [\"10.0.0.1:7946\", \"10.0.0.2\"]", ErrInvalid, "gossip.join[1]", 0, "missing port"},
		{"join port zero", "[gossip]\njoin = [\"10.0.0.1:0\"]", ErrInvalid, "gossip.join[0]", 0, ""},
		{"iqn prefix", "[iscsi]\niqn_prefix = \"eui.1234\"", ErrInvalid, "iscsi.iqn_prefix", 0, ""},
		{"iqn prefix month", "[iscsi]\niqn_prefix = \"iqn.2026-13.dev.cairn\"", ErrInvalid, "iscsi.iqn_prefix", 0, ""},
		{"node name", `node_name = "-x"`, ErrInvalid, "node_name", 0, ""},
		{"data dir", `data_dir = ""`, ErrInvalid, "data_dir", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in), "/x")
			if err == nil {
				t.Fatalf("no error; got %+v", c)
			}
			if c != nil {
				t.Error("non-nil Config with an error")
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %v: not %v", err, tc.kind)
			}
			var ke *KeyError
			if !errors.As(err, &ke) {
				t.Fatalf("error %v: not a *KeyError", err)
			}
			if ke.Key != tc.key {
				t.Errorf("Key = %q, want %q (%v)", ke.Key, tc.key, err)
			}
			if tc.line > 0 && ke.Line != tc.line {
				t.Errorf("Line = %d, want %d (%v)", ke.Line, tc.line, err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not contain %q", err, tc.msg)
			}
			if tc.key != "" && !strings.Contains(err.Error(), tc.key) {
				t.Errorf("error %q does not name key %q", err, tc.key)
			}
		})
	}
}

// TestParseAllErrors checks that Validate reports every problem, not the
// first one only.
// TestSecureOffLoopback: node RPC, Raft and gossip off loopback need TLS
// (and gossip its key); the admin API off loopback needs a token file.
func TestSecureOffLoopback(t *testing.T) {
	for _, c := range []struct{ in, key string }{
		{"[storage]\nlisten = \"0.0.0.0:7950\"\n", "storage.listen"},
		{"[raft]\nbind = \"10.1.1.1:7947\"\n", "raft.bind"},
		{"[gossip]\nbind = \"10.1.1.1:7946\"\n", "gossip.secret_key_file"},
		{"[admin]\nlisten = \"0.0.0.0:7900\"\n", "admin.listen"},
		{"[tls]\nca_file = \"ca.pem\"\n", "tls"},
		{"[limits]\nreply_timeout = \"1ms\"\n", "limits.reply_timeout"},
		{"[limits]\nreply_timeout = \"soon\"\n", "limits.reply_timeout"},
		{"[limits]\ninflight_bytes = \"1MiB\"\n", "limits.inflight_bytes"},
		{"[limits]\nconnections = -1\n", "limits.connections"},
	} {
		_, err := Parse([]byte(c.in), "")
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Key != c.key {
			t.Errorf("%q: %v, want an error for %s", c.in, err, c.key)
		}
	}
	ok := "[storage]\nlisten = \"127.0.0.2:7950\"\n[admin]\nlisten = \"[::1]:7900\"\n"
	if _, err := Parse([]byte(ok), ""); err != nil {
		t.Errorf("loopback addresses: %v", err)
	}
}

func TestParseAllErrors(t *testing.T) {
	_, err := Parse([]byte("roles = [\"x\"]\n[admin]\nlisten = \"y\"\n"), "")
	var keys []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		keys = append(keys, e.(*KeyError).Key)
	}
	if want := []string{"roles[0]", "admin.listen"}; !reflect.DeepEqual(keys, want) {
		t.Fatalf("keys = %q, want %q", keys, want)
	}
	// Unknown keys: all of them, in file order.
	_, err = Parse([]byte("a = 1\n[nbd]\nb = 2\n"), "")
	if got := err.Error(); got != "configs: a: unknown key\nconfigs: nbd.b: unknown key" {
		t.Fatalf("err = %q", got)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "absent.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent file: %v", err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, make([]byte, fileBytesMax+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); !errors.Is(err, ErrInvalid) {
		t.Errorf("big file: %v", err)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[nbd]\nlisen = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(bad)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad file: %v", err)
	}
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("data_dir = \"d\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "d"); c.DataDir != want {
		t.Errorf("DataDir = %q, want %q", c.DataDir, want)
	}
}

func TestValidVolumeName(t *testing.T) {
	for name, ok := range map[string]bool{
		"a": true, "vol0": true, "0": true, "a.b-c_d": true,
		strings.Repeat("a", 63): true, strings.Repeat("a", 64): false,
		"": false, "A": false, ".a": false, "-a": false, "_a": false,
		"a b": false, "a/b": false, "a:b": false, "é": false,
	} {
		if err := ValidVolumeName(name); (err == nil) != ok {
			t.Errorf("ValidVolumeName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Single())
	f.Add([]byte("[[volume]]\nname = \"v\"\nsize = \"1 GiB\"\nreplicas = 2\n"))
	f.Add([]byte("[nbd]\nlisen = 1\n"))
	f.Add([]byte("roles = [\"manager\"]\n[raft]\nbootstrap_expect = 3\n"))
	f.Add([]byte("[[volume]]\nsize = {a = 1}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "/x")
		if err != nil {
			if c != nil {
				t.Fatal("Config and error")
			}
			if !errors.Is(err, ErrSyntax) && !errors.Is(err, ErrUnknownKey) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config Validate rejects: %v", err)
		}
	})
}

func TestCatchupRate(t *testing.T) {
	c, err := Parse([]byte("[storage]\ncatchup_rate = \"8MiB\"\n"), "")
	if err != nil || c.Storage.CatchupRate != 8<<20 {
		t.Fatalf("catchup_rate 8MiB: %v %v", c, err)
	}
	if c, _ := Parse(nil, ""); c.Storage.CatchupRate != 64<<20 {
		t.Fatalf("default catchup_rate %d, want 64MiB", c.Storage.CatchupRate)
	}
	for _, bad := range []string{"\"512KiB\"", "\"2TiB\"", "0"} {
		if _, err := Parse([]byte("[storage]\ncatchup_rate = "+bad+"\n"), ""); err == nil || !strings.Contains(err.Error(), "catchup_rate") {
			t.Errorf("catchup_rate = %s: %v, want an error naming storage.catchup_rate", bad, err)
		}
	}
}

func TestFlattenRate(t *testing.T) {
	c, err := Parse([]byte("[storage]\nflatten_rate = \"8MiB\"\n"), "")
	if err != nil || c.Storage.FlattenRate != 8<<20 {
		t.Fatalf("flatten_rate 8MiB: %v %v", c, err)
	}
	if c, _ := Parse(nil, ""); c.Storage.FlattenRate != 64<<20 {
		t.Fatalf("default flatten_rate %d, want 64MiB", c.Storage.FlattenRate)
	}
	for _, bad := range []string{"\"512KiB\"", "\"fast\"", "\"2TiB\"", "0"} {
		if _, err := Parse([]byte("[storage]\nflatten_rate = "+bad+"\n"), ""); err == nil || !strings.Contains(err.Error(), "flatten_rate") {
			t.Errorf("flatten_rate = %s: %v, want an error naming storage.flatten_rate", bad, err)
		}
	}
}

func TestCacheSize(t *testing.T) {
	c, err := Parse([]byte("[storage]\ncache_size = \"2GiB\"\n"), "")
	if err != nil || c.Storage.CacheSize != 2<<30 {
		t.Fatalf("cache_size 2GiB: %v %v", c, err)
	}
	if c, _ := Parse(nil, ""); c.Storage.CacheSize != 1<<30 {
		t.Fatalf("default cache_size %d, want 1GiB", c.Storage.CacheSize)
	}
	for _, bad := range []string{"\"1MiB\"", "\"lots\"", "\"2PiB\""} {
		if _, err := Parse([]byte("[storage]\ncache_size = "+bad+"\n"), ""); err == nil || !strings.Contains(err.Error(), "cache_size") {
			t.Errorf("cache_size = %s: %v, want an error naming storage.cache_size", bad, err)
		}
	}
}
