package configs

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Roles a process can run. A process runs every role its Config lists.
const (
	RoleTarget  = "target"  // serves NBD and iSCSI
	RoleStorage = "storage" // stores blocks
	RoleManager = "manager" // member of the catalog's Raft group
)

// Bounds on what a configuration may hold.
const (
	fileBytesMax       = 1 << 20 // Load refuses larger files
	volumesMax         = 1024    // [[volume]] tables per file
	joinMax            = 64      // gossip.join entries
	ReplicasMax        = 5       // replication factor upper bound
	BootstrapExpectMax = 7       // voters a catalog may be bootstrapped with
	nameBytesMax       = 63      // node and volume names
	iqnPrefixBytesMax  = 223 - 1 - nameBytesMax
)

// Config is the whole of cairnd's configuration. Field comments give the TOML
// key; Default holds every default value.
type Config struct {
	// NodeName (node_name) names this process in gossip and Raft; unique in
	// a cluster. Same alphabet as volume names, case-insensitive letters.
	NodeName string `toml:"node_name"`
	// DataDir (data_dir) holds all local state: the catalog's Raft log and
	// snapshots, the block store.
	DataDir string `toml:"data_dir"`
	// Roles (roles) lists the roles this process runs: RoleTarget,
	// RoleStorage, RoleManager.
	Roles []string `toml:"roles"`
	// Zone (zone) names this node's failure domain; replicas of a chunk
	// go to distinct zones while there are zones left. Empty: no zone.
	Zone string `toml:"zone"`

	Admin   Admin   `toml:"admin"`
	NBD     NBD     `toml:"nbd"`
	ISCSI   ISCSI   `toml:"iscsi"`
	Gossip  Gossip  `toml:"gossip"`
	Raft    Raft    `toml:"raft"`
	Storage Storage `toml:"storage"`
	TLS     TLS     `toml:"tls"`
	Limits  Limits  `toml:"limits"`

	// Volumes ([[volume]]) are created at start if the catalog lacks them;
	// an existing volume of the same name is left as it is.
	Volumes []VolumeSpec `toml:"-"`
}

// Admin is the [admin] table: the HTTP/JSON admin API and /metrics.
type Admin struct {
	Listen string `toml:"listen"` // host:port
	// TokenFile (token_file) holds the bearer token the API requires for
	// every change and for pprof; generated (mode 0600) at first start
	// when missing. Empty: data_dir/admin.token. Relative to the file.
	TokenFile string `toml:"token_file"`
}

// NBD is the [nbd] table.
type NBD struct {
	Listen string `toml:"listen"` // host:port
	// TLS (tls): "off" (default), "optional" or "require": NBD STARTTLS
	// with the [tls] certificate; "require" refuses clients that do not
	// start TLS.
	TLS string `toml:"tls"`
}

// ISCSI is the [iscsi] table.
type ISCSI struct {
	Listen string `toml:"listen"` // host:port
	// IQNPrefix (iqn_prefix) names targets: IQNPrefix + ":" + volume name.
	IQNPrefix string `toml:"iqn_prefix"`
	// CHAP credentials every target requires of initiators (chap_user,
	// chap_secret; both or neither), and those the target answers with when
	// the initiator asks for mutual CHAP (mutual_user, mutual_secret). A
	// [[volume]]'s own chap_user/chap_secret override them for its target.
	ChapUser     string `toml:"chap_user"`
	ChapSecret   string `toml:"chap_secret"`
	MutualUser   string `toml:"mutual_user"`
	MutualSecret string `toml:"mutual_secret"`
	// DiscoveryAuth (discovery_auth) also requires chap_user/chap_secret
	// for SendTargets discovery sessions.
	DiscoveryAuth bool `toml:"discovery_auth"`
}

// Gossip is the [gossip] table.
type Gossip struct {
	Bind string   `toml:"bind"` // host:port
	Join []string `toml:"join"` // host:port of existing members
	// SecretKeyFile (secret_key_file) holds the cluster's gossip key: 16,
	// 24 or 32 bytes, raw or base64. Gossip is encrypted with it and a
	// process without it cannot join. Required off loopback. Relative to
	// the file.
	SecretKeyFile string `toml:"secret_key_file"`
}

// TLS is the [tls] table: mutual TLS for the node RPC and Raft. All three
// files or none; required when any of gossip, raft or storage binds off
// loopback. Paths are relative to the file.
type TLS struct {
	CAFile   string `toml:"ca_file"`
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.CAFile != "" }

// Limits is the [limits] table: what one daemon gives its clients.
type Limits struct {
	// InflightBytes (inflight_bytes) bounds the request payload bytes held
	// by every NBD connection and iSCSI session together.
	InflightBytes Size `toml:"inflight_bytes"`
	// ReplyTimeout (reply_timeout): a client that does not read its
	// replies for this long is disconnected.
	ReplyTimeout Duration `toml:"reply_timeout"`
	// RequestTimeout (request_timeout): a connection that began a request
	// and does not finish sending it within this is closed.
	RequestTimeout Duration `toml:"request_timeout"`
	// Connections (connections) bounds the front-end connections in all;
	// ConnectionsPerClient (connections_per_client) those of one client
	// address. 0: no bound.
	Connections          int `toml:"connections"`
	ConnectionsPerClient int `toml:"connections_per_client"`
}

// Bounds of [limits].
const (
	inflightBytesMin = 64 << 20
	timeoutMin       = time.Second
	timeoutMax       = time.Hour
	connectionsMax   = 1 << 20
)

// Duration decodes from a string such as "30s" (time.ParseDuration).
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: want a number with a unit, such as \"30s\"", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Raft is the [raft] table, used by the manager role.
type Raft struct {
	// Bind (bind) is the Raft TCP address; it is also the address other
	// managers dial, so its host must be a concrete IP or name, not 0.0.0.0.
	Bind string `toml:"bind"`
	// BootstrapExpect (bootstrap_expect) is the number of managers that
	// form the first configuration: 1 bootstraps alone at first start; more
	// waits for that many managers in gossip; 0 never bootstraps (the node
	// joins an existing catalog).
	BootstrapExpect int `toml:"bootstrap_expect"`
}

// Storage is the [storage] table: the node RPC listener of a storage node
// (its data) or a target (the snapshot protocol's calls to it).
type Storage struct {
	Listen string `toml:"listen"` // host:port
	// CacheSize (cache_size) bounds the block store's read cache, e.g.
	// "1GiB". Memory is taken as blocks are read, up to this.
	CacheSize Size `toml:"cache_size"`
	// FlattenRate (flatten_rate) throttles this node's flattens of forks:
	// bytes copied per second, e.g. "64MiB", so that a flatten leaves the
	// disk to the volumes' own I/O.
	FlattenRate Size `toml:"flatten_rate"`
	// SegmentSize (segment_size) is the size at which the block store
	// seals a segment file and starts the next, e.g. "64MiB"; the cleaner
	// reclaims whole sealed segments, so it is also the granularity of
	// space given back. Unset: the store's default (64 MiB).
	SegmentSize Size `toml:"segment_size"`
	// CatchupRate (catchup_rate) throttles the catch-ups of stale
	// replicas this node's target runs: bytes of block versions copied
	// per second, per volume, e.g. "64MiB".
	CatchupRate Size `toml:"catchup_rate"`
}

// Bounds of storage.cache_size, storage.flatten_rate and
// storage.catchup_rate (per second, the same bounds), and
// storage.segment_size (when set).
const (
	cacheSizeMin   = 8 << 20
	cacheSizeMax   = 1 << 40
	flattenRateMin = 1 << 20
	flattenRateMax = 1 << 40
	segmentSizeMin = 1 << 20
	segmentSizeMax = 1 << 30
)

// Size is a byte count that decodes from "1GiB" (see ParseSize) or an
// integer.
type Size int64

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	n, err := ParseSize(string(b))
	*s = Size(n)
	return err
}

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(FormatSize(int64(s))), nil }

// VolumeSpec is one [[volume]] table.
type VolumeSpec struct {
	Name     string // name
	Size     int64  // size, in bytes; the file says "1GiB" or 1073741824
	Replicas int    // replicas, default 1
	// ChapUser, ChapSecret (chap_user, chap_secret): the iSCSI CHAP
	// credentials of this volume's target, overriding [iscsi]'s.
	ChapUser, ChapSecret string
	// LogicalBlockSize (logical_block_size): the block size iSCSI presents,
	// 512 (default, on 4096-byte physical blocks) or 4096 native.
	LogicalBlockSize int
}

// Default returns a configuration with every default: all roles in one
// process on the loopback interface, data in ./data, no volumes.
func Default() *Config {
	return &Config{
		NodeName: "node1",
		DataDir:  "data",
		Roles:    []string{RoleTarget, RoleStorage, RoleManager},
		Admin:    Admin{Listen: "127.0.0.1:7900"},
		NBD:      NBD{Listen: "127.0.0.1:10809"},
		ISCSI:    ISCSI{Listen: "127.0.0.1:3260", IQNPrefix: "iqn.2026-11.dev.cairn"},
		Gossip:   Gossip{Bind: "127.0.0.1:7946", Join: []string{}},
		Raft:     Raft{Bind: "127.0.0.1:7947", BootstrapExpect: 1},
		Storage:  Storage{Listen: "127.0.0.1:7950", CacheSize: 1 << 30, FlattenRate: 64 << 20, CatchupRate: 64 << 20},
		Limits: Limits{
			InflightBytes:  1 << 30,
			ReplyTimeout:   Duration(30 * time.Second),
			RequestTimeout: Duration(30 * time.Second),
		},
	}
}

// replicasDefault is the replication factor of a [[volume]] without replicas.
const replicasDefault = 1

// Test returns the preset for tests: defaults, state in dir, every listener on
// 127.0.0.1 with port 0 (the kernel picks a free port; callers read the bound
// address back from the listener).
func Test(dir string) *Config {
	c := Default()
	c.NodeName = "test"
	c.DataDir = dir
	c.Admin.Listen = "127.0.0.1:0"
	c.NBD.Listen = "127.0.0.1:0"
	c.ISCSI.Listen = "127.0.0.1:0"
	c.Gossip.Bind = "127.0.0.1:0"
	c.Raft.Bind = "127.0.0.1:0"
	c.Storage.Listen = "127.0.0.1:0"
	c.Storage.CacheSize = 64 << 20
	return c
}

//go:embed single.toml
var single []byte

// Single returns a copy of the embedded single-node configuration
// (configs/single.toml). Its data_dir is "../data", relative to the dir given
// to Parse: pass the directory that stands for configs/ (Load of the file does
// this by itself).
func Single() []byte { return slices.Clone(single) }

// Has reports whether the configuration runs role.
func (c *Config) Has(role string) bool { return slices.Contains(c.Roles, role) }

// Load reads, decodes and validates the file at path. Relative paths in it are
// made absolute against the file's directory.
func Load(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("configs: %s: %w", path, err)
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("configs: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, fileBytesMax+1))
	if err != nil {
		return nil, fmt.Errorf("configs: %s: %w", path, err)
	}
	if len(data) > fileBytesMax {
		return nil, fmt.Errorf("configs: %s: larger than %d bytes: %w", path, fileBytesMax, ErrInvalid)
	}
	c, err := Parse(data, filepath.Dir(abs))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// document is the decoding shape of a file: Config plus the [[volume]]
// tables in their text form.
type document struct {
	Config
	Volume []volumeDoc `toml:"volume"`
}

type volumeDoc struct {
	Name string `toml:"name"`
	// Size is decoded in a second pass (into sizeText) so that a bad size
	// is told apart from a syntax error and still gets its line.
	Size             *toml.Primitive `toml:"size"`     // nil: not in the file
	Replicas         *int            `toml:"replicas"` // nil: not in the file
	ChapUser         string          `toml:"chap_user"`
	ChapSecret       string          `toml:"chap_secret"`
	LogicalBlockSize int             `toml:"logical_block_size"`
}

// sizeText decodes a string or integer size through ParseSize.
type sizeText int64

func (s *sizeText) UnmarshalText(b []byte) error {
	n, err := ParseSize(string(b))
	*s = sizeText(n)
	return err
}

// Parse decodes and validates a configuration. Keys absent from data keep
// their Default value. A relative data_dir is joined to dir; with dir ""
// it stays relative to the working directory.
func Parse(data []byte, dir string) (*Config, error) {
	doc := document{Config: *Default()}
	md, err := toml.NewDecoder(strings.NewReader(string(data))).Decode(&doc)
	if err != nil {
		return nil, decodeError(err)
	}
	var p problems
	c := &doc.Config
	for i, v := range doc.Volume {
		spec := VolumeSpec{Name: v.Name, Replicas: replicasDefault, ChapUser: v.ChapUser, ChapSecret: v.ChapSecret, LogicalBlockSize: v.LogicalBlockSize}
		if v.Replicas != nil {
			spec.Replicas = *v.Replicas
		}
		key := fmt.Sprintf("volume[%d].size", i)
		if v.Size == nil {
			p.add(key, ErrInvalid, "missing: every [[volume]] needs a size")
		} else {
			var s sizeText
			if err := md.PrimitiveDecode(*v.Size, &s); err != nil {
				ke := &KeyError{Key: key, Kind: ErrInvalid, Msg: `want a string such as "1GiB" or an integer number of bytes`}
				var pe toml.ParseError
				if errors.As(err, &pe) {
					ke.Msg = pe.Message
					// The decoder keeps one position per dotted key, the
					// last one seen: trust it only with a single volume.
					if len(doc.Volume) == 1 {
						ke.Line = pe.Position.Line
					}
				}
				p = append(p, ke)
			}
			spec.Size = int64(s)
		}
		c.Volumes = append(c.Volumes, spec)
	}
	for _, k := range md.Undecoded() {
		p.add(k.String(), ErrUnknownKey, "unknown key")
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	if dir != "" {
		for _, f := range []*string{&c.DataDir, &c.Admin.TokenFile, &c.Gossip.SecretKeyFile, &c.TLS.CAFile, &c.TLS.CertFile, &c.TLS.KeyFile} {
			if *f != "" && !filepath.IsAbs(*f) {
				*f = filepath.Join(dir, *f)
			}
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeError turns a decoder error into a *KeyError.
func decodeError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &KeyError{Key: pe.LastKey, Line: pe.Position.Line, Kind: ErrSyntax, Msg: pe.Message}
	}
	return &KeyError{Kind: ErrSyntax, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
}

var (
	nameRE      = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	iqnPrefixRE = regexp.MustCompile(`^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
)

// ValidVolumeName reports whether name is usable as a volume name: 1 to 63
// bytes of [a-z0-9._-], starting with a letter or digit. Such a name is safe
// in a file name, an NBD export name and an iSCSI IQN.
func ValidVolumeName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("volume name %q: want 1-63 characters of [a-z0-9._-] starting with a letter or digit", name)
	}
	return nil
}

// ValidNodeName reports whether name is usable as a node name: the volume
// name alphabet, with upper-case letters allowed (host names).
func ValidNodeName(name string) error {
	if !nameRE.MatchString(strings.ToLower(name)) {
		return fmt.Errorf("node name %q: want 1-63 characters of [A-Za-z0-9._-] starting with a letter or digit", name)
	}
	return nil
}

// Validate checks every field and returns all problems found, joined, each a
// *KeyError naming its key; nil if the configuration is usable.
func (c *Config) Validate() error {
	var p problems
	if err := ValidNodeName(c.NodeName); err != nil {
		p.add("node_name", ErrInvalid, "%v", err)
	}
	if c.Storage.CacheSize < cacheSizeMin || c.Storage.CacheSize > cacheSizeMax {
		p.add("storage.cache_size", ErrInvalid, "%s: want %s to %s", FormatSize(int64(c.Storage.CacheSize)), FormatSize(cacheSizeMin), FormatSize(cacheSizeMax))
	}
	if c.Storage.FlattenRate < flattenRateMin || c.Storage.FlattenRate > flattenRateMax {
		p.add("storage.flatten_rate", ErrInvalid, "%s per second: want %s to %s", FormatSize(int64(c.Storage.FlattenRate)), FormatSize(flattenRateMin), FormatSize(flattenRateMax))
	}
	if c.Storage.SegmentSize != 0 && (c.Storage.SegmentSize < segmentSizeMin || c.Storage.SegmentSize > segmentSizeMax) {
		p.add("storage.segment_size", ErrInvalid, "%s: want %s to %s", FormatSize(int64(c.Storage.SegmentSize)), FormatSize(segmentSizeMin), FormatSize(segmentSizeMax))
	}
	if c.Storage.CatchupRate < flattenRateMin || c.Storage.CatchupRate > flattenRateMax {
		p.add("storage.catchup_rate", ErrInvalid, "%s per second: want %s to %s", FormatSize(int64(c.Storage.CatchupRate)), FormatSize(flattenRateMin), FormatSize(flattenRateMax))
	}
	if c.DataDir == "" {
		p.add("data_dir", ErrInvalid, "must not be empty")
	}
	c.validateRoles(&p)

	listeners := []struct{ key, addr string }{
		{"admin.listen", c.Admin.Listen},
		{"nbd.listen", c.NBD.Listen},
		{"iscsi.listen", c.ISCSI.Listen},
		{"gossip.bind", c.Gossip.Bind},
		{"raft.bind", c.Raft.Bind},
		{"storage.listen", c.Storage.Listen},
	}
	seen := map[string]string{}
	for _, l := range listeners {
		host, port, err := splitAddr(l.addr)
		if err != nil {
			p.add(l.key, ErrInvalid, "%v", err)
			continue
		}
		if port == 0 {
			continue // kernel-chosen: never collides
		}
		hp := net.JoinHostPort(host, strconv.Itoa(port))
		if other, ok := seen[hp]; ok {
			p.add(l.key, ErrInvalid, "address %q is already used by %s", l.addr, other)
		}
		seen[hp] = l.key
	}
	if host, _, err := splitAddr(c.Raft.Bind); err == nil && unspecified(host) {
		p.add("raft.bind", ErrInvalid, "address %q: host must be a concrete IP or name: other managers dial it", c.Raft.Bind)
	}
	checkCHAP(&p, "iscsi.chap", c.ISCSI.ChapUser, c.ISCSI.ChapSecret)
	checkCHAP(&p, "iscsi.mutual", c.ISCSI.MutualUser, c.ISCSI.MutualSecret)
	if c.ISCSI.MutualUser != "" && c.ISCSI.ChapUser == "" && !slices.ContainsFunc(c.Volumes, func(v VolumeSpec) bool { return v.ChapUser != "" }) {
		p.add("iscsi.mutual_user", ErrInvalid, "mutual CHAP needs chap_user/chap_secret too")
	}
	if c.ISCSI.DiscoveryAuth && c.ISCSI.ChapUser == "" {
		p.add("iscsi.discovery_auth", ErrInvalid, "needs iscsi.chap_user and iscsi.chap_secret")
	}
	for i, v := range c.Volumes {
		checkCHAP(&p, fmt.Sprintf("volume[%d].chap", i), v.ChapUser, v.ChapSecret)
		if v.LogicalBlockSize != 0 && v.LogicalBlockSize != 512 && v.LogicalBlockSize != 4096 {
			p.add(fmt.Sprintf("volume[%d].logical_block_size", i), ErrInvalid, "%d: want 512 or 4096", v.LogicalBlockSize)
		}
	}
	if len(c.ISCSI.IQNPrefix) > iqnPrefixBytesMax || !iqnPrefixRE.MatchString(c.ISCSI.IQNPrefix) {
		p.add("iscsi.iqn_prefix", ErrInvalid, "%q: want iqn.yyyy-mm.reversed.domain (lower case, at most %d bytes)", c.ISCSI.IQNPrefix, iqnPrefixBytesMax)
	}
	if len(c.Gossip.Join) > joinMax {
		p.add("gossip.join", ErrInvalid, "%d entries: at most %d", len(c.Gossip.Join), joinMax)
	} else {
		for i, a := range c.Gossip.Join {
			host, port, err := splitAddr(a)
			if err == nil && (unspecified(host) || port == 0) {
				err = fmt.Errorf("address %q: want the host:port of a running member", a)
			}
			if err != nil {
				p.add(fmt.Sprintf("gossip.join[%d]", i), ErrInvalid, "%v", err)
			}
		}
	}
	if c.Raft.BootstrapExpect < 0 || c.Raft.BootstrapExpect > BootstrapExpectMax {
		p.add("raft.bootstrap_expect", ErrInvalid, "%d: want 0 (never bootstrap) to %d", c.Raft.BootstrapExpect, BootstrapExpectMax)
	}
	c.validateVolumes(&p)
	c.validateLimits(&p)
	c.validateSecurity(&p)
	return p.err()
}

func (c *Config) validateLimits(p *problems) {
	l := c.Limits
	if l.InflightBytes < inflightBytesMin {
		p.add("limits.inflight_bytes", ErrInvalid, "%s: want at least %s (a 32 MiB request and its edges must fit)", FormatSize(int64(l.InflightBytes)), FormatSize(inflightBytesMin))
	}
	for _, t := range []struct {
		key string
		d   Duration
	}{{"limits.reply_timeout", l.ReplyTimeout}, {"limits.request_timeout", l.RequestTimeout}} {
		if time.Duration(t.d) < timeoutMin || time.Duration(t.d) > timeoutMax {
			p.add(t.key, ErrInvalid, "%v: want %v to %v", time.Duration(t.d), timeoutMin, timeoutMax)
		}
	}
	if l.Connections < 0 || l.Connections > connectionsMax {
		p.add("limits.connections", ErrInvalid, "%d: want 0 (no bound) to %d", l.Connections, connectionsMax)
	}
	if l.ConnectionsPerClient < 0 || l.ConnectionsPerClient > connectionsMax {
		p.add("limits.connections_per_client", ErrInvalid, "%d: want 0 (no bound) to %d", l.ConnectionsPerClient, connectionsMax)
	}
}

// validateSecurity: node RPC, Raft and gossip leave loopback only
// authenticated and encrypted, and the admin API only with TLS.
func (c *Config) validateSecurity(p *problems) {
	n := 0
	for _, f := range []string{c.TLS.CAFile, c.TLS.CertFile, c.TLS.KeyFile} {
		if f != "" {
			n++
		}
	}
	if n != 0 && n != 3 {
		p.add("tls", ErrInvalid, "ca_file, cert_file and key_file go together")
	}
	switch c.NBD.TLS {
	case "", "off":
	case "optional", "require":
		if !c.TLS.Enabled() {
			p.add("nbd.tls", ErrInvalid, "%q needs [tls] ca_file, cert_file and key_file", c.NBD.TLS)
		}
	default:
		p.add("nbd.tls", ErrInvalid, "%q: want off, optional or require", c.NBD.TLS)
	}
	if c.Zone != "" && !nameRE.MatchString(strings.ToLower(c.Zone)) {
		p.add("zone", ErrInvalid, "%q: want 1-63 characters of [A-Za-z0-9._-]", c.Zone)
	}
	for _, l := range []struct{ key, addr string }{
		{"gossip.bind", c.Gossip.Bind},
		{"raft.bind", c.Raft.Bind},
		{"storage.listen", c.Storage.Listen},
	} {
		switch {
		case loopback(l.addr):
		case l.key == "gossip.bind": // encrypted with the cluster key, not TLS
			if c.Gossip.SecretKeyFile == "" {
				p.add("gossip.secret_key_file", ErrInvalid, "gossip on %q is not loopback: set a cluster key file", l.addr)
			}
		case !c.TLS.Enabled():
			p.add(l.key, ErrInvalid, "address %q is not loopback: set [tls] ca_file, cert_file and key_file (cairn cluster certs writes them)", l.addr)
		}
	}
	if _, _, err := splitAddr(c.Admin.Listen); err == nil && !loopback(c.Admin.Listen) && c.Admin.TokenFile == "" {
		p.add("admin.listen", ErrInvalid, "address %q is not loopback: name the bearer token the API requires ([admin] token_file)", c.Admin.Listen)
	}
}

// loopback reports whether a host:port binds only to the loopback
// interface (an IP in 127.0.0.0/8 or ::1, or "localhost").
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateRoles(p *problems) {
	if len(c.Roles) == 0 {
		p.add("roles", ErrInvalid, "must name at least one of %q, %q, %q", RoleTarget, RoleStorage, RoleManager)
	}
	for i, r := range c.Roles {
		switch r {
		case RoleTarget, RoleStorage, RoleManager:
			if slices.Index(c.Roles, r) < i {
				p.add(fmt.Sprintf("roles[%d]", i), ErrInvalid, "role %q listed twice", r)
			}
		default:
			p.add(fmt.Sprintf("roles[%d]", i), ErrInvalid, "unknown role %q (want %q, %q or %q)", r, RoleTarget, RoleStorage, RoleManager)
		}
	}
}

func (c *Config) validateVolumes(p *problems) {
	if len(c.Volumes) > volumesMax {
		p.add("volume", ErrInvalid, "%d volumes: at most %d", len(c.Volumes), volumesMax)
		return
	}
	first := map[string]int{}
	for i, v := range c.Volumes {
		key := fmt.Sprintf("volume[%d]", i)
		if err := ValidVolumeName(v.Name); err != nil {
			p.add(key+".name", ErrInvalid, "%v", err)
		} else if j, ok := first[v.Name]; ok {
			p.add(key+".name", ErrInvalid, "volume %q already declared as volume[%d]", v.Name, j)
		} else {
			first[v.Name] = i
		}
		if err := ValidVolumeSize(v.Size); err != nil {
			p.add(key+".size", ErrInvalid, "%v", err)
		}
		if v.Replicas < 1 || v.Replicas > ReplicasMax {
			p.add(key+".replicas", ErrInvalid, "%d: want 1 to %d", v.Replicas, ReplicasMax)
		}
	}
}

// splitAddr checks a host:port listen address; the host may be empty (all
// interfaces), the port must be a number (0 lets the kernel choose).
func splitAddr(addr string) (host string, port int, err error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return "", 0, fmt.Errorf("address %q: %s", addr, ae.Err)
		}
		return "", 0, fmt.Errorf("address %q: %v", addr, err)
	}
	n, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: port %q is not a number from 0 to 65535", addr, ps)
	}
	return host, int(n), nil
}

// unspecified reports whether host means "every interface".
func unspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// CHAP secret bounds: RFC 7143 §12.1.3 asks for at least 96 bits of secret;
// 255 bytes is the most initiators accept.
const (
	chapSecretBytesMin = 12
	chapSecretBytesMax = 255
)

// checkCHAP validates a user/secret pair named prefix_user/prefix_secret.
func checkCHAP(p *problems, prefix, user, secret string) {
	switch {
	case user == "" && secret == "":
	case user == "" || secret == "":
		p.add(prefix+"_user", ErrInvalid, "%s_user and %s_secret go together", prefix, prefix)
	case len(user) > chapSecretBytesMax || strings.ContainsAny(user, "\x00\n"):
		p.add(prefix+"_user", ErrInvalid, "at most %d bytes, no NUL or newline", chapSecretBytesMax)
	case len(secret) < chapSecretBytesMin || len(secret) > chapSecretBytesMax:
		p.add(prefix+"_secret", ErrInvalid, "%d bytes; want %d to %d (RFC 7143 §12.1.3: at least 96 bits)", len(secret), chapSecretBytesMin, chapSecretBytesMax)
	}
}
