package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func parseCert(t *testing.T, p []byte) *x509.Certificate {
	t.Helper()
	b, rest := pem.Decode(p)
	if b == nil || b.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("not one PEM certificate: %q", p)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pool(ca *CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Certificate())
	return p
}

func TestNewCA(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, ca.CertPEM())
	if !c.IsCA || !c.MaxPathLenZero || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("not a CA: IsCA %v MaxPathLenZero %v usage %v", c.IsCA, c.MaxPathLenZero, c.KeyUsage)
	}
	if pk, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pk.Curve != elliptic.P256() {
		t.Fatalf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if v := time.Until(c.NotAfter); v < CAValidity-time.Minute || v > CAValidity+time.Minute {
		t.Fatalf("CA valid for %v more, want %v", v, CAValidity)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca)}); err != nil {
		t.Fatalf("self-signed CA does not verify: %v", err)
	}
	kp, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadCA(ca.CertPEM(), kp)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Certificate().Equal(ca.Certificate()) {
		t.Fatal("LoadCA returned another certificate")
	}
}

func TestLoadCAErrors(t *testing.T) {
	ca, _ := NewCA()
	other, _ := NewCA()
	kp, _ := ca.KeyPEM()
	otherKey, _ := other.KeyPEM()
	nodeCert, nodeKey, err := ca.Issue("n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		cert, key []byte
	}{
		{"empty", nil, nil},
		{"no key", ca.CertPEM(), nil},
		{"key of another CA", ca.CertPEM(), otherKey},
		{"node certificate", nodeCert, nodeKey},
		{"key as certificate", kp, kp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := LoadCA(tc.cert, tc.key); !errors.Is(err, ErrInvalid) {
				t.Fatalf("LoadCA: %v, want ErrInvalid", err)
			}
		})
	}
}

func TestIssue(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"localhost", "127.0.0.1", "::1"}
	for _, tc := range []struct {
		name  string
		hosts []string
		// wantDNS and wantIP besides the node name and the loopbacks.
		wantDNS []string
		wantIP  []string
		// notNamed are hosts the certificate must not be valid for.
		notNamed []string
	}{
		{name: "n1", notNamed: []string{"n2", "10.0.0.1", "example.com"}},
		{name: "node-2.zone_a", hosts: []string{"10.0.0.2", "n2.example.com", "fd00::2"},
			wantDNS: []string{"n2.example.com"}, wantIP: []string{"10.0.0.2", "fd00::2"}, notNamed: []string{"10.0.0.3", "n3.example.com"}},
		{name: "n3", hosts: []string{"localhost", "127.0.0.1", "[::1]", "N3", " 192.168.1.3 ", "fqdn.example."},
			wantDNS: []string{"fqdn.example"}, wantIP: []string{"192.168.1.3"}, notNamed: []string{"192.168.1.4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp, kp, err := ca.Issue(tc.name, tc.hosts)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(cp, kp); err != nil {
				t.Fatalf("certificate and key do not pair: %v", err)
			}
			c := parseCert(t, cp)
			if c.Subject.CommonName != tc.name {
				t.Errorf("CN %q", c.Subject.CommonName)
			}
			if pk, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pk.Curve != elliptic.P256() {
				t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
			}
			if c.IsCA {
				t.Error("node certificate is a CA")
			}
			if v := time.Until(c.NotAfter); v < NodeValidity-time.Minute || v > NodeValidity+time.Minute {
				t.Errorf("valid for %v more, want %v", v, NodeValidity)
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("extended key usage %v, want server and client auth", c.ExtKeyUsage)
			}
			wantDNS := append([]string{tc.name, "localhost"}, tc.wantDNS...)
			if !slices.Equal(c.DNSNames, wantDNS) {
				t.Errorf("DNS SANs %q, want %q", c.DNSNames, wantDNS)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if want := append([]string{"127.0.0.1", "::1"}, tc.wantIP...); !slices.Equal(ips, want) {
				t.Errorf("IP SANs %q, want %q", ips, want)
			}
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				for _, h := range append(append([]string{tc.name}, base...), append(tc.wantDNS, tc.wantIP...)...) {
					if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: h, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
						t.Errorf("usage %v host %s: %v", usage, h, err)
					}
				}
				if _, err := c.Verify(x509.VerifyOptions{Roots: pool(other), KeyUsages: []x509.ExtKeyUsage{usage}}); err == nil {
					t.Errorf("usage %v: verifies against another CA", usage)
				} else if !errors.As(err, new(x509.UnknownAuthorityError)) {
					t.Errorf("usage %v against another CA: %v, want UnknownAuthorityError", usage, err)
				}
			}
			for _, h := range tc.notNamed {
				if err := c.VerifyHostname(h); err == nil {
					t.Errorf("valid for %s", h)
				}
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}); err == nil {
				t.Error("verifies for code signing")
			}
		})
	}
}

func TestIssueInvalid(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	many := make([]string, HostsMax+1)
	for i := range many {
		many[i] = net.IPv4(10, 0, byte(i>>8), byte(i)).String()
	}
	for _, tc := range []struct {
		test, name string
		hosts      []string
	}{
		{"empty name", "", nil},
		{"path in name", "../n1", nil},
		{"slash in name", "a/b", nil},
		{"ca", "CA", nil},
		{"long name", string(bytes.Repeat([]byte("a"), 64)), nil},
		{"empty host", "n1", []string{""}},
		{"wildcard host", "n1", []string{"*.example.com"}},
		{"host with port", "n1", []string{"10.0.0.1:7950"}},
		{"hyphen label", "n1", []string{"-a.example.com"}},
		{"root", "n1", []string{"."}},
		{"empty label", "n1", []string{"a..example"}},
		{"too many hosts", "n1", many},
	} {
		t.Run(tc.test, func(t *testing.T) {
			if _, _, err := ca.Issue(tc.name, tc.hosts); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Issue(%q, %q): %v, want ErrInvalid", tc.name, tc.hosts, err)
			}
		})
	}
}

func TestWriteCluster(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	nodes := []string{"n1", "n2", "n3"}
	if err := WriteCluster(dir, nodes, []string{"10.0.0.9", "cairn.example"}); err != nil {
		t.Fatal(err)
	}
	mode := func(name string) os.FileMode {
		t.Helper()
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if m := mode(dir); m&0o077 != 0 {
		t.Errorf("dir mode %v", m)
	}
	if m := mode(filepath.Join(dir, CAKeyFile)); m != 0o600 {
		t.Errorf("ca.key mode %v, want 0600", m)
	}
	ca, err := LoadCA(read(filepath.Join(dir, CACertFile)), read(filepath.Join(dir, CAKeyFile)))
	if err != nil {
		t.Fatal(err)
	}
	verify := func(node string, hosts ...string) {
		t.Helper()
		cf, kf := NodeFiles(dir, node)
		if m := mode(kf); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", kf, m)
		}
		pair, err := tls.LoadX509KeyPair(cf, kf)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range append([]string{node, "localhost", "127.0.0.1", "::1"}, hosts...) {
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: h, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("%s for %s: %v", node, h, err)
			}
		}
	}
	for _, n := range nodes {
		verify(n, "10.0.0.9", "cairn.example")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2+2*len(nodes) {
		t.Errorf("%d files, want %d", len(entries), 2+2*len(nodes))
	}

	// Nothing is overwritten, and a refused call leaves the files as they
	// were.
	before := read(filepath.Join(dir, "n2.pem"))
	for _, tc := range []struct {
		name  string
		nodes []string
	}{
		{"all again", nodes},
		{"one existing among new", []string{"n4", "n2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := WriteCluster(dir, tc.nodes, nil); !errors.Is(err, ErrExists) {
				t.Fatalf("WriteCluster over existing files: %v, want ErrExists", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "n4.pem")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("refused call wrote n4.pem: %v", err)
			}
		})
	}
	if !bytes.Equal(read(filepath.Join(dir, "n2.pem")), before) {
		t.Fatal("n2.pem changed")
	}

	// A new node is issued by the existing CA.
	caBefore := read(filepath.Join(dir, CACertFile))
	if err := WriteCluster(dir, []string{"n4"}, []string{"10.0.0.4"}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(filepath.Join(dir, CACertFile)), caBefore) {
		t.Fatal("ca.pem changed")
	}
	verify("n4", "10.0.0.4")

	// Half a CA pair is refused.
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if err := WriteCluster(dir, []string{"n5"}, nil); !errors.Is(err, ErrExists) {
		t.Fatalf("WriteCluster with ca.pem but no ca.key: %v, want ErrExists", err)
	}
}

func TestWriteClusterInvalid(t *testing.T) {
	for _, tc := range []struct {
		name         string
		nodes, hosts []string
	}{
		{"no nodes", nil, nil},
		{"duplicate", []string{"n1", "N1"}, nil},
		{"bad node", []string{"n1", "../x"}, nil},
		{"ca", []string{"ca"}, nil},
		{"bad host", []string{"n1"}, []string{"a b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "certs")
			if err := WriteCluster(dir, tc.nodes, tc.hosts); !errors.Is(err, ErrInvalid) {
				t.Fatalf("WriteCluster: %v, want ErrInvalid", err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("refused call created the directory: %v", err)
			}
		})
	}
}
