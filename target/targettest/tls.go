package targettest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLS is a throwaway certificate authority with a server certificate (for
// 127.0.0.1, ::1 and localhost) and a client certificate, written to Dir
// the way libnbd and GnuTLS look for x509 files in a certificates
// directory: ca-cert.pem, server-cert.pem, server-key.pem,
// client-cert.pem, client-key.pem.
type TLS struct {
	Dir string
	// Server presents the server certificate and verifies client
	// certificates if given (set ClientAuth to require them).
	Server *tls.Config
	// Client trusts the CA, expects 127.0.0.1 and presents the client
	// certificate.
	Client *tls.Config
	// CA is the authority's certificate.
	CA *x509.Certificate
}

// certLifetime: long enough for any test run, short enough to be obviously
// a test certificate.
const certLifetime = 24 * time.Hour

// NewTLS creates a CA and certificates signed by it in dir.
func NewTLS(dir string) (*TLS, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("targettest: CA key: %w", err)
	}
	now := time.Now().Add(-time.Minute)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cairn test CA"},
		NotBefore:             now,
		NotAfter:              now.Add(certLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("targettest: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("targettest: CA certificate: %w", err)
	}
	if err := writePEM(filepath.Join(dir, "ca-cert.pem"), "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) (tls.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("targettest: %s key: %w", name, err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: "cairn test " + name},
			NotBefore:    now,
			NotAfter:     now.Add(certLifetime),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
			tmpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("targettest: %s certificate: %w", name, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("targettest: %s key: %w", name, err)
		}
		if err := writePEM(filepath.Join(dir, name+"-cert.pem"), "CERTIFICATE", der); err != nil {
			return tls.Certificate{}, err
		}
		if err := writePEM(filepath.Join(dir, name+"-key.pem"), "PRIVATE KEY", keyDER); err != nil {
			return tls.Certificate{}, err
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
	}
	server, err := leaf(2, "server", x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	client, err := leaf(3, "client", x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &TLS{
		Dir: dir,
		CA:  ca,
		Server: &tls.Config{
			Certificates: []tls.Certificate{server},
			ClientCAs:    pool,
			ClientAuth:   tls.VerifyClientCertIfGiven,
		},
		Client: &tls.Config{
			Certificates: []tls.Certificate{client},
			RootCAs:      pool,
			ServerName:   "127.0.0.1",
		},
	}, nil
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("targettest: %w", err)
	}
	return nil
}
