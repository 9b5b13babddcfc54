package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"
)

// TestTLS: with TLS on, a client with a certificate of the cluster CA is
// served; a client with a certificate of another CA, a client with no
// certificate and a plain-TCP client cannot make any call, and none of
// their calls reaches the backend.
func TestTLS(t *testing.T) {
	cluster := newPKI(t, "cluster")
	other := newPKI(t, "other")
	serverTLS, clientTLS := cluster.load(t)
	_, otherTLS := other.load(t)

	mem := newMemBackend()
	addr, srv := startServer(t, mem, ServerOptions{TLS: serverTLS, HandshakeTimeout: 2 * time.Second})
	fast := ClientOptions{DialTimeout: 2 * time.Second, CallTimeout: 3 * time.Second}

	good := fast
	good.TLS = clientTLS
	c := newClient(t, addr, good)
	ctx := context.Background()
	if err := c.Write(ctx, 1, 0, block(7, 1), Stamp0, false); err != nil {
		t.Fatalf("client with a cluster certificate: %v", err)
	}
	p := make([]byte, BlockSize)
	if err := c.Read(ctx, 1, 0, p, 1); err != nil || p[0] != 7 {
		t.Fatalf("read over TLS: %v", err)
	}
	if n := mem.calls.Load(); n != 2 {
		t.Fatalf("%d backend calls, want 2", n)
	}

	noCert := clientTLS.Clone()
	noCert.Certificates = nil
	// Trusts the cluster CA, so only the server's check can refuse it.
	foreignCert := clientTLS.Clone()
	foreignCert.Certificates = nil
	foreignCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &otherTLS.Certificates[0], nil // sent although the server names other CAs
	}
	for _, tc := range []struct {
		name string
		tls  *tls.Config
	}{
		{"certificate of another CA", foreignCert},
		{"another cluster", otherTLS},
		{"no client certificate", noCert},
		{"plain TCP", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := fast
			opts.TLS = tc.tls
			bad := newClient(t, addr, opts)
			before := mem.calls.Load()
			_, err := bad.Hello(ctx)
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("hello: %v, want ErrUnavailable", err)
			}
			t.Log(err)
			for _, call := range []func() error{
				func() error { return bad.Sync(ctx) },
				func() error { return bad.Read(ctx, 1, 0, p, 1) },
				func() error { return bad.Write(ctx, 1, 0, block(9, 1), Stamp0, false) },
			} {
				if err := call(); err == nil {
					t.Fatal("a call succeeded")
				}
			}
			if n := mem.calls.Load(); n != before {
				t.Fatalf("%d calls reached the backend", n-before)
			}
		})
	}

	// The server counts a refused handshake when its side of it ends,
	// which may be after the client gave up.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := srv.Stats()
		if st.HandshakeErrors == st.Connections-1 && st.Requests == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server stats %+v: every connection but the good one refused, 2 requests", st)
		}
	}

	// A TLS client against a plain server fails too (no downgrade).
	plainAddr, _ := startServer(t, mem, ServerOptions{})
	tc := newClient(t, plainAddr, good)
	if err := tc.Sync(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("TLS client, plain server: %v", err)
	}
	if p[0] != 7 {
		t.Fatal("buffer changed")
	}
	// Frames with data too big to copy (a vectored write on TCP) go
	// through TLS too, both ways.
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i / BlockSize)
	}
	if err := c.Write(ctx, 1, 16, big, Stamp0, false); err != nil {
		t.Fatalf("1 MiB write over TLS: %v", err)
	}
	back := make([]byte, len(big))
	if err := c.Read(ctx, 1, 16, back, 1); err != nil || !bytes.Equal(back, big) {
		t.Fatalf("1 MiB read over TLS: %v (equal %v)", err, bytes.Equal(back, big))
	}
}

func TestLoadTLSErrors(t *testing.T) {
	p := newPKI(t, "x")
	if _, _, err := LoadTLS(p.caFile+".missing", p.certFile, p.keyFile); err == nil {
		t.Fatal("missing CA file accepted")
	}
	if _, _, err := LoadTLS(p.keyFile, p.certFile, p.keyFile); err == nil {
		t.Fatal("CA file without a certificate accepted")
	}
	if _, _, err := LoadTLS(p.caFile, p.certFile, p.caFile); err == nil {
		t.Fatal("certificate without its key accepted")
	}
	q := newPKI(t, "y")
	if _, _, err := LoadTLS(q.caFile, p.certFile, p.keyFile); err == nil {
		t.Fatal("certificate of another CA accepted")
	}
	s, c, err := LoadTLS(p.caFile, p.certFile, p.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if s.MinVersion != tls.VersionTLS13 || c.MinVersion != tls.VersionTLS13 || s.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("server %+v", s)
	}
}
