package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"regexp"
	"strings"
	"time"
)

// Sentinel errors; errors returned here wrap one of them (or an I/O error)
// with context.
var (
	// ErrInvalid: a bad node name or host, or PEM that is not a CA pair.
	ErrInvalid = errors.New("pki: invalid")
	// ErrExists: a file WriteCluster would write exists already.
	ErrExists = errors.New("pki: file exists")
)

// Validities and bounds.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	NodeValidity = 2 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore.
	clockSkew = time.Hour
	// NodesMax and HostsMax bound one WriteCluster or Issue call.
	NodesMax = 64
	HostsMax = 64
	// hostBytesMax is the longest DNS name (RFC 1035).
	hostBytesMax = 253
)

// The file names WriteCluster uses in its directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca.key"
)

// nodeRE is the node-name rule of the configs and the catalog: it is also
// safe as a file name.
var nodeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// CA is a certificate authority that signs node certificates.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
}

// NewCA returns a new self-signed cluster CA valid for CAValidity.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: ca key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	skid, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "cairn cluster CA", Organization: []string{"cairn"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: ca certificate: %w", err)
	}
	return &CA{cert: cert, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}, nil
}

// LoadCA returns the CA of a certificate and key in PEM, as CertPEM and
// KeyPEM write them (the key may also be a SEC 1 "EC PRIVATE KEY"). The
// certificate must be a CA's and match the key.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("pki: load ca: %w: no PEM certificate", ErrInvalid)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: load ca: %w: %w", ErrInvalid, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("pki: load ca: %w: %q is not a CA certificate", ErrInvalid, cert.Subject.CommonName)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("pki: load ca: %w: no PEM key", ErrInvalid)
	}
	var key any
	switch kb.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	default:
		err = fmt.Errorf("PEM type %q", kb.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: load ca: %w: key: %w", ErrInvalid, err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("pki: load ca: %w: key is %T, want ECDSA", ErrInvalid, key)
	}
	if !ek.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: load ca: %w: key does not match the certificate", ErrInvalid)
	}
	return &CA{cert: cert, certPEM: pem.EncodeToMemory(cb), key: ek}, nil
}

// Certificate returns the CA's certificate; the caller must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM returns the CA's certificate in PEM: the ca_file of every node.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// KeyPEM returns the CA's private key as PKCS #8 PEM. Keep it off the
// nodes: it is needed only to issue certificates.
func (ca *CA) KeyPEM() ([]byte, error) { return encodeKey(ca.key) }

// Issue returns a new certificate and key for node name, signed by the CA
// and valid for NodeValidity (or until the CA expires, if sooner), for both
// server and client authentication, naming name, localhost, 127.0.0.1, ::1
// and hosts (DNS names or IP addresses).
func (ca *CA) Issue(name string, hosts []string) (certPEM, keyPEM []byte, err error) {
	if err := validNode(name); err != nil {
		return nil, nil, fmt.Errorf("pki: issue: %w", err)
	}
	dns, ips, err := sans(name, hosts)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: %w", name, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: key: %w", name, err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	skid, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	notAfter := now.Add(NodeValidity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, nil, fmt.Errorf("pki: issue %s: %w: the CA expired at %s", name, ErrInvalid, ca.cert.NotAfter.Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"cairn"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: %w", name, err)
	}
	kp, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp, nil
}

// sans returns the deduplicated SANs of a node certificate: the name and
// localhost first, then the hosts' names; the loopback addresses, then the
// hosts' addresses.
func sans(name string, hosts []string) (dns []string, ips []net.IP, err error) {
	if len(hosts) > HostsMax {
		return nil, nil, fmt.Errorf("%w: %d hosts, at most %d", ErrInvalid, len(hosts), HostsMax)
	}
	seen := map[string]bool{}
	addName := func(h string) {
		if k := strings.ToLower(h); !seen[k] {
			seen[k] = true
			dns = append(dns, h)
		}
	}
	addIP := func(ip net.IP) {
		if k := "ip:" + ip.String(); !seen[k] {
			seen[k] = true
			ips = append(ips, ip)
		}
	}
	addName(name)
	addName("localhost")
	addIP(net.IPv4(127, 0, 0, 1).To4())
	addIP(net.IPv6loopback)
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			addIP(ip)
			continue
		}
		if err := validHost(h); err != nil {
			return nil, nil, err
		}
		addName(strings.TrimSuffix(h, "."))
	}
	return dns, ips, nil
}

// validHost accepts a DNS name: dot-separated labels of letters, digits,
// hyphens and underscores, 1 to 63 bytes each, not starting or ending with
// a hyphen.
func validHost(h string) error {
	if h == "" || len(h) > hostBytesMax {
		return fmt.Errorf("%w: host %q: want a DNS name of 1 to %d bytes or an IP address", ErrInvalid, h, hostBytesMax)
	}
	for _, l := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		ok := l != "" && len(l) <= 63 && l[0] != '-' && l[len(l)-1] != '-'
		for i := 0; ok && i < len(l); i++ {
			c := l[i]
			ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		}
		if !ok {
			return fmt.Errorf("%w: host %q: want a DNS name (labels of [A-Za-z0-9_-]) or an IP address", ErrInvalid, h)
		}
	}
	return nil
}

// validNode applies the configs' node-name rule and keeps the CA's file
// names for the CA.
func validNode(name string) error {
	if !nodeRE.MatchString(name) {
		return fmt.Errorf("%w: node name %q: want 1-63 characters of [A-Za-z0-9._-] starting with a letter or digit", ErrInvalid, name)
	}
	if strings.EqualFold(name, "ca") {
		return fmt.Errorf("%w: node name %q: reserved for the CA's files", ErrInvalid, name)
	}
	return nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // positive, as RFC 5280 wants
}

// keyID is the subject key identifier: the first 20 bytes of the SHA-256 of
// the public key's encoding.
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("pki: key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
