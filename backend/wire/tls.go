package wire

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// LoadTLS returns the TLS configurations of a node's Server and of a
// target's Client from PEM files: the cluster's CA certificate (or a
// bundle), and this process's certificate chain and key, signed by that CA.
// Both sides require TLS 1.3 and a peer certificate signed by the CA: the
// server asks for and verifies client certificates, the client verifies the
// node's certificate against the host it dials (which the certificate must
// name). A process that is both target and node uses one certificate for
// both, so it must allow server and client authentication (or neither
// extended key usage).
func LoadTLS(caFile, certFile, keyFile string) (server, client *tls.Config, err error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, nil, fmt.Errorf("wire: tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, fmt.Errorf("wire: tls: no PEM certificate in %s", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("wire: tls: %s, %s: %w", certFile, keyFile, err)
	}
	// Refuse at load what every peer would refuse at handshake.
	if cert.Leaf == nil { // GODEBUG x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, nil, fmt.Errorf("wire: tls: %s: %w", certFile, err)
		}
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, nil, fmt.Errorf("wire: tls: %s is not signed by the CA in %s: %w", certFile, caFile, err)
	}
	server, client = tlsConfigs(pool, cert)
	return server, client, nil
}

// tlsConfigs returns mutual-TLS configurations trusting only pool.
func tlsConfigs(pool *x509.CertPool, cert tls.Certificate) (server, client *tls.Config) {
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
	}
	return server, client
}
