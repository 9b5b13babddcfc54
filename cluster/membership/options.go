package membership

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Sentinel errors. Errors from this package wrap one of them with context;
// classify with errors.Is.
var (
	// ErrInvalid: unusable Options (name, address, key, timing).
	ErrInvalid = errors.New("membership: invalid options")
	// ErrMetaInvalid: metadata out of bounds, or a peer's metadata that does
	// not decode.
	ErrMetaInvalid = errors.New("membership: invalid metadata")
	// ErrMetaTooLarge: metadata that encodes to more than MetaBytesMax.
	ErrMetaTooLarge = errors.New("membership: metadata too large")
	// ErrJoin: no seed could be contacted (or every one refused us, for
	// example because our gossip key differs from the pool's).
	ErrJoin = errors.New("membership: join failed")
	// ErrTimeout: a broadcast (leave, metadata update) did not go out in time.
	ErrTimeout = errors.New("membership: broadcast timed out")
	// ErrClosed: the pool was closed.
	ErrClosed = errors.New("membership: pool closed")
)

// Defaults for Options fields left zero, and bounds.
const (
	// PortDefault is the gossip port, UDP and TCP (DESIGN.md §1).
	PortDefault          = 7946
	bindAddrDefault      = "0.0.0.0:7946"
	updateTimeoutDefault = 5 * time.Second
	subscriberBufDefault = 64
	subscriberBufMax     = 1 << 16
	subscribersMax       = 64
	departedMax          = 1024
	bindRetries          = 10 // tries to bind UDP and TCP on one free port
	joinSeedsMax         = 64 // configs' gossip.join bound
	joinParallelMax      = 8
	nodeNameBytesMax     = 63
	secretKeyBytes128    = 16
	secretKeyBytes192    = 24
	secretKeyBytes256    = 32
	handoffQueueDepth    = 1024
	packetBytesDefault   = 1400
)

var nodeNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// Options configure Start. NodeName is required; every other zero field
// takes its default.
type Options struct {
	// NodeName is this node's unique, stable name: 1-63 characters of
	// [A-Za-z0-9._-] starting with a letter or digit (configs' node_name).
	NodeName string
	// BindAddr is the gossip address, host:port, for both UDP and TCP.
	// Default 0.0.0.0:7946. Port 0 takes a free port (see Pool.Addr).
	BindAddr string
	// AdvertiseAddr is the ip:port peers reach us at, when it differs from
	// the bound one (NAT, a wildcard bind); port 0 or none means the bound
	// port. Empty: the bound IP, or a private IP for a wildcard bind.
	AdvertiseAddr string
	// Join lists seeds, host:port (port defaults to the bind port), at most
	// 64. Empty means this is the first node of a new pool.
	Join []string
	// SecretKey, when set, encrypts and authenticates all gossip with
	// AES-GCM (16, 24 or 32 bytes: AES-128/192/256) and refuses
	// unencrypted or differently keyed peers. Nil: plaintext gossip; the
	// caller decides whether that is allowed.
	SecretKey []byte
	// Meta is announced to the pool; Meta.Name may be left empty (it is
	// NodeName).
	Meta Meta
	// Logger receives memberlist's logs and this package's; default
	// slog.Default().
	Logger *slog.Logger
	// Transport replaces memberlist's UDP/TCP transport, for tests (for
	// example memberlist.MockNetwork). BindAddr and AdvertiseAddr are then
	// ignored. The pool shuts it down at Close. MockTransport's sends block
	// for ever on a peer that was closed, so it suits pools whose members
	// all stay up; failure tests use loopback.
	Transport memberlist.Transport
	// Timing tunes failure detection and dissemination; zero fields take
	// TimingLAN's value.
	Timing Timing
	// UpdateTimeout bounds UpdateMeta's wait for its broadcast; default 5 s.
	UpdateTimeout time.Duration
}

// Timing is the subset of memberlist's knobs cairn exposes. See
// memberlist.Config for each one's meaning.
type Timing struct {
	ProbeInterval       time.Duration
	ProbeTimeout        time.Duration
	GossipInterval      time.Duration
	PushPullInterval    time.Duration
	StreamTimeout       time.Duration // memberlist TCPTimeout
	GossipToTheDeadTime time.Duration
	SuspicionMult       int
	RetransmitMult      int
	IndirectChecks      int
}

// TimingLAN is the default: memberlist.DefaultLANConfig's values, which
// detect a failed node in a few seconds on a LAN.
func TimingLAN() Timing {
	return Timing{
		ProbeInterval:       1 * time.Second,
		ProbeTimeout:        500 * time.Millisecond,
		GossipInterval:      200 * time.Millisecond,
		PushPullInterval:    30 * time.Second,
		StreamTimeout:       10 * time.Second,
		GossipToTheDeadTime: 30 * time.Second,
		SuspicionMult:       4,
		RetransmitMult:      4,
		IndirectChecks:      3,
	}
}

// TimingFast is for in-process tests on loopback: like
// memberlist.DefaultLocalConfig with shorter intervals, so that joins,
// updates and failures settle in about a second. Not for real networks.
func TimingFast() Timing {
	return Timing{
		ProbeInterval:       200 * time.Millisecond,
		ProbeTimeout:        100 * time.Millisecond,
		GossipInterval:      20 * time.Millisecond,
		PushPullInterval:    1 * time.Second,
		StreamTimeout:       1 * time.Second,
		GossipToTheDeadTime: 2 * time.Second,
		SuspicionMult:       3,
		RetransmitMult:      3,
		IndirectChecks:      1,
	}
}

// withDefaults fills t's zero fields from TimingLAN.
func (t Timing) withDefaults() Timing {
	d := TimingLAN()
	setDur := func(v *time.Duration, dv time.Duration) {
		if *v == 0 {
			*v = dv
		}
	}
	setInt := func(v *int, dv int) {
		if *v == 0 {
			*v = dv
		}
	}
	setDur(&t.ProbeInterval, d.ProbeInterval)
	setDur(&t.ProbeTimeout, d.ProbeTimeout)
	setDur(&t.GossipInterval, d.GossipInterval)
	setDur(&t.PushPullInterval, d.PushPullInterval)
	setDur(&t.StreamTimeout, d.StreamTimeout)
	setDur(&t.GossipToTheDeadTime, d.GossipToTheDeadTime)
	setInt(&t.SuspicionMult, d.SuspicionMult)
	setInt(&t.RetransmitMult, d.RetransmitMult)
	setInt(&t.IndirectChecks, d.IndirectChecks)
	return t
}

func (t Timing) validate() error {
	for _, d := range []time.Duration{t.ProbeInterval, t.ProbeTimeout, t.GossipInterval, t.PushPullInterval, t.StreamTimeout, t.GossipToTheDeadTime} {
		if d < 0 {
			return fmt.Errorf("%w: negative timing %v", ErrInvalid, d)
		}
	}
	if t.ProbeTimeout >= t.ProbeInterval {
		return fmt.Errorf("%w: probe timeout %v must be shorter than the probe interval %v", ErrInvalid, t.ProbeTimeout, t.ProbeInterval)
	}
	if t.SuspicionMult < 1 || t.RetransmitMult < 1 || t.IndirectChecks < 0 {
		return fmt.Errorf("%w: suspicion/retransmit multipliers must be ≥ 1, indirect checks ≥ 0", ErrInvalid)
	}
	return nil
}

// hostPort splits "host:port" (port required, 0-65535).
func hostPort(what, s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %s %q: %w", ErrInvalid, what, s, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %s %q: bad port", ErrInvalid, what, s)
	}
	return host, int(port), nil
}

// resolved is Options after defaults and checks.
type resolved struct {
	Options
	bindHost string
	bindPort int
	advHost  string
	advPort  int
	meta     []byte
}

func (o Options) resolve() (resolved, error) {
	r := resolved{Options: o}
	if !nodeNameRE.MatchString(strings.ToLower(o.NodeName)) {
		return r, fmt.Errorf("%w: node name %q: want 1-%d characters of [A-Za-z0-9._-] starting with a letter or digit", ErrInvalid, o.NodeName, nodeNameBytesMax)
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.BindAddr == "" {
		r.BindAddr = bindAddrDefault
	}
	var err error
	if r.bindHost, r.bindPort, err = hostPort("bind address", r.BindAddr); err != nil {
		return r, err
	}
	if r.bindHost == "" {
		r.bindHost = "0.0.0.0"
	}
	ip := net.ParseIP(r.bindHost)
	if ip == nil {
		return r, fmt.Errorf("%w: bind address %q: want an IP address", ErrInvalid, r.BindAddr)
	}
	// memberlist picks a private address to advertise for 0.0.0.0 only.
	if ip.IsUnspecified() && ip.To4() == nil && r.AdvertiseAddr == "" && r.Transport == nil {
		return r, fmt.Errorf("%w: bind address %q: an IPv6 wildcard needs an advertise address", ErrInvalid, r.BindAddr)
	}
	if r.AdvertiseAddr != "" {
		s := r.AdvertiseAddr
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(s, "0")
		}
		if r.advHost, r.advPort, err = hostPort("advertise address", s); err != nil {
			return r, err
		}
		if ip := net.ParseIP(r.advHost); ip == nil || ip.IsUnspecified() {
			return r, fmt.Errorf("%w: advertise address %q: want a concrete IP address", ErrInvalid, r.AdvertiseAddr)
		}
	}
	if len(r.Join) > joinSeedsMax {
		return r, fmt.Errorf("%w: %d seeds, at most %d", ErrInvalid, len(r.Join), joinSeedsMax)
	}
	switch len(r.SecretKey) {
	case 0, secretKeyBytes128, secretKeyBytes192, secretKeyBytes256:
	default:
		return r, fmt.Errorf("%w: secret key is %d bytes, want 16, 24 or 32", ErrInvalid, len(r.SecretKey))
	}
	r.Timing = r.Timing.withDefaults()
	if err := r.Timing.validate(); err != nil {
		return r, err
	}
	if r.UpdateTimeout <= 0 {
		r.UpdateTimeout = updateTimeoutDefault
	}
	r.Meta = r.Meta.clone()
	if r.Meta.Name == "" {
		r.Meta.Name = r.NodeName
	}
	if r.Meta.Name != r.NodeName {
		return r, fmt.Errorf("%w: meta name %q is not the node name %q", ErrMetaInvalid, r.Meta.Name, r.NodeName)
	}
	if r.meta, err = EncodeMeta(r.Meta); err != nil {
		return r, err
	}
	return r, nil
}

// config builds memberlist's configuration; the caller sets the delegates.
func (r *resolved) config(tr memberlist.Transport, logf *slogWriter) (*memberlist.Config, error) {
	c := memberlist.DefaultLANConfig()
	c.Name = r.NodeName
	c.Transport = tr
	c.BindAddr = r.bindHost
	c.BindPort = r.bindPort
	c.AdvertiseAddr = r.advHost
	c.AdvertisePort = r.advPort
	c.Logger = logf.logger()
	c.HandoffQueueDepth = handoffQueueDepth
	c.UDPBufferSize = packetBytesDefault
	t := r.Timing
	c.ProbeInterval = t.ProbeInterval
	c.ProbeTimeout = t.ProbeTimeout
	c.GossipInterval = t.GossipInterval
	c.PushPullInterval = t.PushPullInterval
	c.TCPTimeout = t.StreamTimeout
	c.GossipToTheDeadTime = t.GossipToTheDeadTime
	c.SuspicionMult = t.SuspicionMult
	c.RetransmitMult = t.RetransmitMult
	c.IndirectChecks = t.IndirectChecks
	if len(r.SecretKey) > 0 {
		kr, err := memberlist.NewKeyring(nil, r.SecretKey)
		if err != nil {
			return nil, fmt.Errorf("%w: secret key: %w", ErrInvalid, err)
		}
		c.Keyring = kr
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}
	return c, nil
}
