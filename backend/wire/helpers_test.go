package wire

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cairn/backend/store"
	"cairn/backend/volume"
)

// Compile-time checks: the client is a node, the store is a backend.
var (
	_ volume.Node = (*Client)(nil)
	_ Backend     = (*store.Store)(nil)
	_ Backend     = (*Client)(nil) // a server can proxy to another node
	_ Changer     = (*Client)(nil)
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openStore opens a store in a temporary directory, closed at cleanup.
func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{CacheBytes: 8 << 20, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// listen returns a loopback listener; addr "" picks a free port.
func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	var err error
	for range 50 { // a just-closed port may take a moment to be free again
		if l, err = net.Listen("tcp", addr); err == nil {
			return l
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal(err)
	return nil
}

// serve starts a server of b on l, closed at cleanup (and checked to have
// stopped serving cleanly).
func serve(t testing.TB, b Backend, l net.Listener, opts ServerOptions) *Server {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.Name == "" {
		opts.Name = "node-test"
	}
	s, err := NewServer(b, opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// startServer serves b on a fresh loopback port and returns its address.
func startServer(t testing.TB, b Backend, opts ServerOptions) (string, *Server) {
	t.Helper()
	l := listen(t, "")
	return l.Addr().String(), serve(t, b, l, opts)
}

// newClient returns a client of addr, closed at cleanup.
func newClient(t testing.TB, addr string, opts ClientOptions) *Client {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.Name == "" {
		opts.Name = "target-test"
	}
	c, err := NewClient(addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// memBackend is an in-memory Backend: blocks by (vol, block), no versions.
// Overwriting a block allocates nothing.
type memBackend struct {
	mu     sync.Mutex
	blocks map[[2]uint64][]byte
	calls  atomic.Int64
}

func newMemBackend() *memBackend { return &memBackend{blocks: make(map[[2]uint64][]byte)} }

func (m *memBackend) Write(_ context.Context, vol, block uint64, data []byte, _ store.Stamp, _ bool) error {
	m.calls.Add(1)
	if len(data) == 0 || len(data)%BlockSize != 0 {
		return store.ErrInvalid
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := 0; i < len(data); i += BlockSize {
		k := [2]uint64{vol, block + uint64(i/BlockSize)}
		b := m.blocks[k]
		if b == nil {
			b = make([]byte, BlockSize)
			m.blocks[k] = b
		}
		copy(b, data[i:])
	}
	return nil
}

func (m *memBackend) Read(_ context.Context, vol, block uint64, p []byte, _ uint64) error {
	m.calls.Add(1)
	if len(p) == 0 || len(p)%BlockSize != 0 {
		return store.ErrInvalid
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := 0; i < len(p); i += BlockSize {
		if b := m.blocks[[2]uint64{vol, block + uint64(i/BlockSize)}]; b != nil {
			copy(p[i:i+BlockSize], b)
		} else {
			clear(p[i : i+BlockSize])
		}
	}
	return nil
}

func (m *memBackend) Zero(_ context.Context, vol, block, n uint64, _ store.Stamp, _ bool) error {
	m.calls.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range n {
		delete(m.blocks, [2]uint64{vol, block + i})
	}
	return nil
}

func (m *memBackend) Extents(_ context.Context, vol, block, n, _ uint64, fn func(start, count uint64, allocated bool) bool) error {
	m.calls.Add(1)
	return errors.New("memBackend: no extents")
}

func (m *memBackend) Sync(context.Context) error { m.calls.Add(1); return nil }

// gateBackend wraps a Backend: every call announces itself on entered and
// then waits until the gate opens (or its context ends).
type gateBackend struct {
	Backend
	entered  chan struct{}
	gate     chan struct{}
	inFlight atomic.Int64
	peak     atomic.Int64
}

func newGateBackend(b Backend) *gateBackend {
	return &gateBackend{Backend: b, entered: make(chan struct{}, 1024), gate: make(chan struct{})}
}

func (g *gateBackend) wait(ctx context.Context) error {
	n := g.inFlight.Add(1)
	defer g.inFlight.Add(-1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			break
		}
	}
	g.entered <- struct{}{}
	select {
	case <-g.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gateBackend) open() { close(g.gate) }

func (g *gateBackend) Read(ctx context.Context, vol, block uint64, p []byte, epoch uint64) error {
	if err := g.wait(ctx); err != nil {
		return err
	}
	return g.Backend.Read(ctx, vol, block, p, epoch)
}

func (g *gateBackend) Sync(ctx context.Context) error {
	if err := g.wait(ctx); err != nil {
		return err
	}
	return g.Backend.Sync(ctx)
}

// runsBackend reports n alternating runs of one block each for Extents.
type runsBackend struct {
	memBackend
	runs uint64
}

func (r *runsBackend) Extents(_ context.Context, _, block, n, _ uint64, fn func(start, count uint64, allocated bool) bool) error {
	r.calls.Add(1)
	end := min(block+n, r.runs)
	for b := block; b < end; b++ {
		if !fn(b, 1, b%2 == 0) {
			return nil
		}
	}
	if end < block+n {
		fn(end, block+n-end, false)
	}
	return nil
}

// Changed reports the same alternating runs, as changed/unchanged.
func (r *runsBackend) Changed(ctx context.Context, vol, block, n, _, _ uint64, fn func(start, count uint64, changed bool) bool) error {
	return r.Extents(ctx, vol, block, n, 0, fn)
}

// pki is an ephemeral certificate authority with one leaf certificate for
// 127.0.0.1 valid for both server and client authentication, written as PEM
// files.
type pki struct {
	caFile, certFile, keyFile string
}

func newPKI(t testing.TB, name string) pki {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name + " CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := pki{
		caFile:   filepath.Join(dir, "ca.pem"),
		certFile: filepath.Join(dir, "cert.pem"),
		keyFile:  filepath.Join(dir, "key.pem"),
	}
	write := func(path, typ string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(p.caFile, "CERTIFICATE", caDER)
	write(p.certFile, "CERTIFICATE", leafDER)
	write(p.keyFile, "PRIVATE KEY", keyDER)
	return p
}

func (p pki) load(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	s, c, err := LoadTLS(p.caFile, p.certFile, p.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

// versionsBackend is a runsBackend that also reports, for the first
// blocks of a VersionsSince range, a data version and a zero record each,
// and checks the records it is given to apply.
type versionsBackend struct{ runsBackend }

var _ Versioner = (*versionsBackend)(nil)

func (b *versionsBackend) VersionsSince(_ context.Context, _, block, n, seqMin uint64, fn func(uint64, []store.Version) bool) (uint64, error) {
	data := make([]byte, BlockSize)
	for i := range min(n, 8) {
		vs := []store.Version{{Block: block + i, Blocks: 1, Stamp: store.Stamp{Epoch: 1, Seq: seqMin + 1}, Data: data},
			{Block: block + i, Blocks: 1, Stamp: store.Stamp{Epoch: 1, Seq: seqMin}, Zero: true}}
		if !fn(block+i, vs) {
			return block + i + 1, nil
		}
	}
	return block + n, nil
}

func (b *versionsBackend) Apply(_ context.Context, _ uint64, v store.Version, _ bool) error {
	if v.Blocks == 0 || v.Zero == (v.Data != nil) || !v.Zero && uint64(len(v.Data)) != v.Blocks*BlockSize {
		panic(fmt.Sprintf("apply of a malformed version %+v", v))
	}
	return nil
}
