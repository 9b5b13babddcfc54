package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// TLSConfig makes the catalog's Raft transport mutual TLS (Options.TLS):
// every connection between managers is encrypted, and each end proves
// with a certificate that the cluster's CA signed it. wire.LoadTLS returns
// such a pair from the [tls] files. Open clones both and raises their
// MinVersion to TLS 1.3.
type TLSConfig struct {
	// Server configures the Raft listener. It must hold this node's
	// certificate and require and verify client certificates
	// (ClientAuth tls.RequireAndVerifyClientCert, ClientCAs the cluster CA).
	Server *tls.Config
	// Client configures dials to peers: this node's certificate, and
	// RootCAs that verify the peer's certificate, which must name the host
	// of the peer's Raft address (an IP address SAN for an IP address).
	Client *tls.Config
}

// Bounds of the TLS stream layer.
const (
	// tlsDialTimeoutMax bounds a dial to a peer, TCP connect and handshake
	// together (raft asks for its transport timeout; the shorter wins).
	tlsDialTimeoutMax = 5 * time.Second
	// tlsHandshakeTimeout bounds the handshake of an accepted connection:
	// a peer that connects and says nothing is dropped.
	tlsHandshakeTimeout = 5 * time.Second
)

// newTransport returns the Raft network transport on bind: plain TCP when
// tc is nil, else mutual TLS. Either way it advertises its listener's
// address, which is bind with a port-0 request resolved; an unspecified
// host (0.0.0.0, ::) is refused.
func newTransport(bind string, tc *TLSConfig, logger hclog.Logger) (*raft.NetworkTransport, error) {
	if tc == nil {
		return raft.NewTCPTransportWithLogger(bind, nil, transportPoolMax, transportTimeout, logger)
	}
	s, err := newTLSStream(bind, tc, tlsHandshakeTimeout)
	if err != nil {
		return nil, err
	}
	return raft.NewNetworkTransportWithLogger(s, transportPoolMax, transportTimeout, logger), nil
}

// tlsStream is a raft.StreamLayer over mutual TLS. Accept returns a
// connection without waiting for its handshake, which runs at the
// connection's first Read or Write, bounded by handshakeTimeout, in the
// goroutine raft gives the connection: a slow or hostile peer never holds
// up the accept loop.
type tlsStream struct {
	ln               net.Listener // a tls.NewListener
	client           *tls.Config
	handshakeTimeout time.Duration
}

var _ raft.StreamLayer = (*tlsStream)(nil)

func newTLSStream(bind string, tc *TLSConfig, handshakeTimeout time.Duration) (*tlsStream, error) {
	server, client, err := tc.check()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok || addr.IP == nil || addr.IP.IsUnspecified() {
		_ = ln.Close()
		return nil, fmt.Errorf("%w: %s is not an address peers can dial", ErrInvalid, ln.Addr())
	}
	return &tlsStream{ln: tls.NewListener(ln, server), client: client, handshakeTimeout: handshakeTimeout}, nil
}

// check validates the pair and returns clones raised to TLS 1.3.
func (tc *TLSConfig) check() (server, client *tls.Config, err error) {
	switch {
	case tc.Server == nil || tc.Client == nil:
		return nil, nil, fmt.Errorf("%w: TLS needs both a Server and a Client config", ErrInvalid)
	case len(tc.Server.Certificates) == 0 && tc.Server.GetCertificate == nil && tc.Server.GetConfigForClient == nil:
		return nil, nil, fmt.Errorf("%w: TLS Server config has no certificate", ErrInvalid)
	case tc.Server.ClientAuth != tls.RequireAndVerifyClientCert || tc.Server.ClientCAs == nil && tc.Server.GetConfigForClient == nil:
		return nil, nil, fmt.Errorf("%w: TLS Server config does not require and verify client certificates against ClientCAs", ErrInvalid)
	case len(tc.Client.Certificates) == 0 && tc.Client.GetClientCertificate == nil:
		return nil, nil, fmt.Errorf("%w: TLS Client config has no certificate", ErrInvalid)
	case tc.Client.InsecureSkipVerify:
		return nil, nil, fmt.Errorf("%w: TLS Client config skips verification", ErrInvalid)
	}
	server, client = tc.Server.Clone(), tc.Client.Clone()
	server.MinVersion = max(server.MinVersion, tls.VersionTLS13)
	client.MinVersion = max(client.MinVersion, tls.VersionTLS13)
	return server, client, nil
}

// Accept waits for the next connection; its handshake runs later (see
// tlsStream).
func (s *tlsStream) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		panic(fmt.Sprintf("cluster: tls listener accepted a %T", c))
	}
	return &serverConn{Conn: tc, timeout: s.handshakeTimeout}, nil
}

func (s *tlsStream) Close() error   { return s.ln.Close() }
func (s *tlsStream) Addr() net.Addr { return s.ln.Addr() }

// Dial connects to a peer and completes the handshake, verifying that the
// peer's certificate is the cluster CA's and names address's host.
func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 || timeout > tlsDialTimeoutMax {
		timeout = tlsDialTimeoutMax
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: s.client}
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft tls dial %s: %w", address, err)
	}
	return c, nil
}

// serverConn is an accepted connection that completes its handshake, within
// timeout, before its first Read or Write.
type serverConn struct {
	*tls.Conn
	timeout time.Duration

	once sync.Once
	err  error // of the handshake
}

func (c *serverConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		if err := c.Conn.HandshakeContext(ctx); err != nil {
			_ = c.Conn.Close()
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("no handshake within %v: %w", c.timeout, err)
			}
			c.err = fmt.Errorf("raft tls handshake from %s: %w", c.Conn.RemoteAddr(), err)
		}
	})
	return c.err
}

func (c *serverConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *serverConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
