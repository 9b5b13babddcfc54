package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"cairn/cluster/pki"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// mutualTLS returns the configs wire.LoadTLS would build for a certificate
// ca issues to name, trusting the trust CAs.
func mutualTLS(t *testing.T, ca *pki.CA, name string, trust ...*pki.CA) *TLSConfig {
	t.Helper()
	cp, kp, err := ca.Issue(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(cp, kp)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, c := range trust {
		pool.AddCert(c.Certificate())
	}
	return &TLSConfig{
		Server: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert},
		Client: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: pool},
	}
}

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// tlsOptions is TestOptions for a manager of a 3-node cluster over TLS.
func tlsOptions(t *testing.T, id string, tc *TLSConfig) Options {
	o := TestOptions(t.TempDir())
	o.NodeID = id
	o.BootstrapExpect = 3
	o.HeartbeatTimeout, o.ElectionTimeout, o.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 200*time.Millisecond
	o.TLS = tc
	return o
}

// leaderOf waits for one of cats to lead and to have applied every earlier
// entry.
func leaderOf(ctx context.Context, t *testing.T, cats []*Catalog) *Catalog {
	t.Helper()
	for {
		for _, c := range cats {
			if c.IsLeader() && c.WaitLeader(ctx) == nil {
				return c
			}
		}
		select {
		case <-ctx.Done():
			var st []Status
			for _, c := range cats {
				st = append(st, c.Status())
			}
			t.Fatalf("no leader: %+v", st)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitVolumeOn waits until every one of cats has the volume.
func waitVolumeOn(ctx context.Context, t *testing.T, name string, cats ...*Catalog) {
	t.Helper()
	for _, c := range cats {
		for {
			ch := c.Changes()
			if _, err := c.Volume(name); err == nil {
				break
			}
			select {
			case <-ch:
			case <-ctx.Done():
				t.Fatalf("%s never saw %s: %+v", c.Status().NodeID, name, c.Status())
			}
		}
	}
}

// createOn creates a volume on the leader, retrying through a leadership
// change.
func createOn(ctx context.Context, t *testing.T, cats []*Catalog, name string) {
	t.Helper()
	for {
		_, err := leaderOf(ctx, t, cats).CreateVolume(ctx, VolumeSpec{Name: name, Size: 4096, Replicas: 1})
		if errors.Is(err, ErrNotLeader) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
}

// TestCatalogTLS: three managers over mutual TLS elect a leader and
// replicate; a manager whose certificate another CA signed is added as a
// voter and never receives an entry, while the three go on committing;
// connections to a manager with a foreign certificate, none, or no TLS
// at all fail, and one with a certificate of the cluster's CA through the
// same code path gets its answer.
func TestCatalogTLS(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var cats []*Catalog
	var servers []Server
	for i := range 3 {
		id := fmt.Sprintf("m%d", i)
		c := open(t, tlsOptions(t, id, mutualTLS(t, ca, id, ca)))
		addr := c.Status().Address
		if host, port, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" || port == "0" {
			t.Fatalf("advertised address %q, want 127.0.0.1 and the bound port", addr)
		}
		cats = append(cats, c)
		servers = append(servers, Server{ID: id, Address: addr})
	}
	for _, c := range cats {
		if err := c.Bootstrap(servers); err != nil {
			t.Fatal(err)
		}
	}
	registerNodes(t, leaderOf(ctx, t, cats))
	createOn(ctx, t, cats, "before")
	waitVolumeOn(ctx, t, "before", cats...)

	// The intruder trusts both CAs (the cluster's CA certificate is no
	// secret), so only the managers' checks can keep it out.
	intruder := open(t, tlsOptions(t, "x", mutualTLS(t, other, "x", ca, other)))
	if err := leaderOf(ctx, t, cats).AddVoter(ctx, Server{ID: "x", Address: intruder.Status().Address}); err != nil {
		t.Fatal(err)
	}
	createOn(ctx, t, cats, "after")
	waitVolumeOn(ctx, t, "after", cats...)
	// Heartbeats go out every 20 ms or so: a leader that could reach the
	// intruder would have sent it the log many times over by now.
	time.Sleep(time.Second)
	if st := intruder.Status(); st.LastIndex != 0 || st.LeaderID != "" || len(intruder.Volumes()) != 0 {
		t.Fatalf("intruder with a foreign certificate took part: %+v, volumes %v", st, intruder.Volumes())
	}

	// Dial a follower directly, with raft's own transport.
	target := cats[0]
	if target.IsLeader() {
		target = cats[1]
	}
	term := target.Status().Term
	appendEntries := func(t *testing.T, trans *raft.NetworkTransport) (*raft.AppendEntriesResponse, error) {
		t.Helper()
		defer trans.Close()
		// Term 0 is below every term: a manager that accepts the
		// connection answers with its term and changes nothing.
		var resp raft.AppendEntriesResponse
		err := trans.AppendEntries("m", raft.ServerAddress(target.Status().Address), &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("probe"), Addr: []byte(trans.LocalAddr())}}, &resp)
		return &resp, err
	}
	tlsTransport := func(t *testing.T, tc *TLSConfig) *raft.NetworkTransport {
		t.Helper()
		s, err := newTLSStream("127.0.0.1:0", tc, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return raft.NewNetworkTransportWithLogger(s, 1, 5*time.Second, hclog.NewNullLogger())
	}
	noCert := mutualTLS(t, ca, "probe", ca)
	noCert.Client = noCert.Client.Clone()
	noCert.Client.Certificates = nil
	noCert.Client.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	for _, tc := range []struct {
		name  string
		trans func(t *testing.T) *raft.NetworkTransport
		ok    bool
	}{
		{"cluster certificate", func(t *testing.T) *raft.NetworkTransport { return tlsTransport(t, mutualTLS(t, ca, "probe", ca)) }, true},
		{"foreign certificate", func(t *testing.T) *raft.NetworkTransport {
			return tlsTransport(t, mutualTLS(t, other, "probe", ca, other))
		}, false},
		{"no certificate", func(t *testing.T) *raft.NetworkTransport { return tlsTransport(t, noCert) }, false},
		{"plain TCP", func(t *testing.T) *raft.NetworkTransport {
			trans, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 1, 2*time.Second, hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			return trans
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := appendEntries(t, tc.trans(t))
			switch {
			case tc.ok && err != nil:
				t.Fatalf("AppendEntries: %v", err)
			case tc.ok && (resp.Term < term || resp.Success):
				t.Fatalf("AppendEntries answered %+v, want a refusal with term ≥ %d", resp, term)
			case !tc.ok && err == nil:
				t.Fatalf("AppendEntries went through: %+v", resp)
			}
			t.Logf("AppendEntries: %v", err)
		})
	}

	// The three still agree after all this.
	createOn(ctx, t, cats, "last")
	waitVolumeOn(ctx, t, "last", cats...)
	if st := intruder.Status(); st.LastIndex != 0 || len(intruder.Volumes()) != 0 {
		t.Fatalf("intruder took part: %+v", st)
	}
}

// TestTLSStreamHandshakeTimeout: a connection that never starts its
// handshake is dropped after the handshake timeout, and its error says so.
func TestTLSStreamHandshakeTimeout(t *testing.T) {
	ca := newCA(t)
	s, err := newTLSStream("127.0.0.1:0", mutualTLS(t, ca, "m0", ca), 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no handshake within") || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Read: %v, want a handshake timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("silent connection not dropped")
	}
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, net.ErrClosed) && !strings.Contains(fmt.Sprint(err), "reset") {
		t.Fatalf("client side after the timeout: %v, want the connection closed", err)
	}
}

// TestOpenTLSInvalid: Open refuses a TLS setup that is not mutual, and an
// address peers cannot dial.
func TestOpenTLSInvalid(t *testing.T) {
	ca := newCA(t)
	good := func() *TLSConfig { return mutualTLS(t, ca, "test", ca) }
	for _, tc := range []struct {
		name string
		bind string
		edit func(*TLSConfig)
	}{
		{"no server", "", func(c *TLSConfig) { c.Server = nil }},
		{"no client", "", func(c *TLSConfig) { c.Client = nil }},
		{"client certificate optional", "", func(c *TLSConfig) { c.Server.ClientAuth = tls.VerifyClientCertIfGiven }},
		{"no client CAs", "", func(c *TLSConfig) { c.Server.ClientCAs = nil }},
		{"server without certificate", "", func(c *TLSConfig) { c.Server.Certificates = nil }},
		{"client without certificate", "", func(c *TLSConfig) { c.Client.Certificates = nil }},
		{"client skips verification", "", func(c *TLSConfig) { c.Client.InsecureSkipVerify = true }},
		{"unspecified address", "0.0.0.0:0", func(*TLSConfig) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := TestOptions(t.TempDir())
			o.TLS = good()
			tc.edit(o.TLS)
			if tc.bind != "" {
				o.Bind = tc.bind
			}
			c, err := Open(o)
			if err == nil {
				_ = c.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Open: %v, want ErrInvalid", err)
			}
		})
	}
	// And the good one opens and leads alone.
	o := TestOptions(t.TempDir())
	o.TLS = good()
	c := openLeader(t, o)
	if _, err := c.CreateVolume(ctx(t), VolumeSpec{Name: "v", Size: 4096, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
}
