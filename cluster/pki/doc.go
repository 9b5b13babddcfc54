// Package pki makes the cluster's certificates: a CA and, for each node, a
// certificate and key signed by it, so that a new cluster needs no openssl.
// `cairn cluster certs` drives it; the daemons load the files through
// [tls] ca_file, cert_file and key_file (wire.LoadTLS), for the node RPC and
// for Raft.
//
// # What it makes
//
// Keys are ECDSA P-256, written as PKCS #8 PEM ("PRIVATE KEY") with mode
// 0600; certificates are PEM with mode 0644. The CA is valid for
// CAValidity (10 years) and may sign only end-entity certificates (path
// length 0). A node certificate is valid for NodeValidity (about 2 years,
// never past the CA's expiry) and carries both serverAuth and clientAuth
// extended key usage, because one process both serves and dials with it. Its
// subject common name is the node's name, and its SANs are the node name,
// localhost, 127.0.0.1, ::1 and the extra hosts given (DNS names or IP
// addresses): a peer dialing a node checks that the certificate names the
// host it dialed.
//
// # Invariants
//
//   - Nothing is overwritten: WriteCluster checks every file it would write
//     before writing any, creates each with O_EXCL, and removes what it
//     wrote if a later step fails. An existing CA pair in the directory is
//     reused to issue certificates for new nodes.
//   - Serial numbers are 128 random bits; NotBefore is an hour back to
//     tolerate clock skew between the machine that issues and those that
//     verify.
//
// # Concurrency
//
// A CA may issue from any number of goroutines; it holds no mutable state.
package pki
