package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Modes of the files WriteCluster writes.
const (
	certFileMode = 0o644
	keyFileMode  = 0o600
	dirMode      = 0o700
)

// NodeFiles returns the certificate and key file names of node in dir.
func NodeFiles(dir, node string) (certFile, keyFile string) {
	return filepath.Join(dir, node+".pem"), filepath.Join(dir, node+".key")
}

// WriteCluster writes a cluster's certificates to dir (created 0700 if
// missing): the CA as ca.pem and ca.key, and for each node <node>.pem and
// <node>.key issued for the node's name and hosts (see Issue); keys are
// 0600. If dir holds both ca.pem and ca.key already, that CA is loaded and
// issues the node certificates, so a node can be added to a running
// cluster. It refuses, with ErrExists and before writing anything, to
// overwrite any file, and removes what it wrote if a later step fails.
func WriteCluster(dir string, nodes, hosts []string) (err error) {
	if len(nodes) == 0 || len(nodes) > NodesMax {
		return fmt.Errorf("pki: write cluster: %w: %d nodes, want 1 to %d", ErrInvalid, len(nodes), NodesMax)
	}
	seen := map[string]bool{}
	for _, n := range nodes {
		if err := validNode(n); err != nil {
			return fmt.Errorf("pki: write cluster: %w", err)
		}
		k := strings.ToLower(n)
		if seen[k] {
			return fmt.Errorf("pki: write cluster: %w: node %q given twice", ErrInvalid, n)
		}
		seen[k] = true
	}
	if _, _, err := sans(nodes[0], hosts); err != nil {
		return fmt.Errorf("pki: write cluster: %w", err)
	}
	caCert, caKey := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	caExists, err := exist(caCert, caKey)
	if err != nil {
		return fmt.Errorf("pki: write cluster: %w", err)
	}
	var ca *CA
	switch {
	case caExists[0] && caExists[1]:
		cp, err := os.ReadFile(caCert)
		if err != nil {
			return fmt.Errorf("pki: write cluster: %w", err)
		}
		kp, err := os.ReadFile(caKey)
		if err != nil {
			return fmt.Errorf("pki: write cluster: %w", err)
		}
		if ca, err = LoadCA(cp, kp); err != nil {
			return fmt.Errorf("pki: write cluster: %s, %s: %w", caCert, caKey, err)
		}
	case caExists[0] || caExists[1]:
		return fmt.Errorf("pki: write cluster: %w: %s and %s must both exist (to reuse the CA) or neither", ErrExists, caCert, caKey)
	}
	var nodeFiles []string
	for _, n := range nodes {
		c, k := NodeFiles(dir, n)
		nodeFiles = append(nodeFiles, c, k)
	}
	ex, err := exist(nodeFiles...)
	if err != nil {
		return fmt.Errorf("pki: write cluster: %w", err)
	}
	for i, e := range ex {
		if e {
			return fmt.Errorf("pki: write cluster: %w: %s (remove it to issue a new one)", ErrExists, nodeFiles[i])
		}
	}

	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("pki: write cluster: %w", err)
	}
	var written []string
	defer func() {
		if err != nil {
			for _, f := range written {
				_ = os.Remove(f)
			}
		}
	}()
	write := func(name string, data []byte, mode fs.FileMode) error {
		if err := writeNew(name, data, mode); err != nil {
			return fmt.Errorf("pki: write cluster: %w", err)
		}
		written = append(written, name)
		return nil
	}
	if ca == nil {
		if ca, err = NewCA(); err != nil {
			return err
		}
		kp, err := ca.KeyPEM()
		if err != nil {
			return err
		}
		if err := write(caKey, kp, keyFileMode); err != nil {
			return err
		}
		if err := write(caCert, ca.CertPEM(), certFileMode); err != nil {
			return err
		}
	}
	for _, n := range nodes {
		cp, kp, err := ca.Issue(n, hosts)
		if err != nil {
			return err
		}
		c, k := NodeFiles(dir, n)
		if err := write(k, kp, keyFileMode); err != nil {
			return err
		}
		if err := write(c, cp, certFileMode); err != nil {
			return err
		}
	}
	return nil
}

// exist reports which of files exist; an error other than not-exist is
// returned.
func exist(files ...string) ([]bool, error) {
	out := make([]bool, len(files))
	for i, f := range files {
		_, err := os.Lstat(f)
		switch {
		case err == nil:
			out[i] = true
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
	}
	return out, nil
}

// writeNew creates name with mode, failing with ErrExists if it exists,
// and writes and syncs data.
func writeNew(name string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %s", ErrExists, name)
	}
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
