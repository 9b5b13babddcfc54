package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cairn/backend/wire"
	"cairn/cluster/pki"
	"cairn/configs"
)

// tlsBlock returns the [tls] lines cluster certs printed for node.
func tlsBlock(t *testing.T, out, node string) string {
	t.Helper()
	_, rest, ok := strings.Cut(out, "# "+node+"'s config")
	if !ok {
		t.Fatalf("no config lines for %s in:\n%s", node, out)
	}
	_, block, _ := strings.Cut(rest, "\n")
	if i := strings.Index(block, "\n\n"); i >= 0 {
		block = block[:i+1]
	}
	return block
}

func TestClusterCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	var out, errOut bytes.Buffer
	if code := run([]string{"cluster", "certs", dir, "--nodes", "n1,n2, n3", "--hosts", "10.1.2.3,n1.example"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	t.Logf("output:\n%s", out.String())
	ca := filepath.Join(dir, pki.CACertFile)
	for _, n := range []string{"n1", "n2", "n3"} {
		cert, key := pki.NodeFiles(dir, n)
		if !strings.Contains(out.String(), "wrote "+cert+", "+key+"\n") {
			t.Errorf("output does not say it wrote %s and %s", cert, key)
		}
		// The printed lines are a valid [tls] table naming the files, and
		// the files load as the daemons load them.
		block := tlsBlock(t, out.String(), n)
		cfg, err := configs.Parse([]byte(block), t.TempDir())
		if err != nil {
			t.Fatalf("%s's lines %q: %v", n, block, err)
		}
		if cfg.TLS.CAFile != ca || cfg.TLS.CertFile != cert || cfg.TLS.KeyFile != key {
			t.Fatalf("%s's lines %q parse to %+v", n, block, cfg.TLS)
		}
		server, client, err := wire.LoadTLS(cfg.TLS.CAFile, cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		// Each node's client verifies every node's server certificate
		// for the extra host, and the server side asks for a client
		// certificate.
		if server.ClientAuth != tls.RequireAndVerifyClientCert {
			t.Fatalf("server ClientAuth %v", server.ClientAuth)
		}
		for _, h := range []string{n, "10.1.2.3", "n1.example", "127.0.0.1"} {
			if err := server.Certificates[0].Leaf.VerifyHostname(h); err != nil {
				t.Errorf("%s: %v", n, err)
			}
		}
		if client.RootCAs == nil {
			t.Fatal("client has no roots")
		}
	}
	if !strings.Contains(out.String(), "wrote "+ca) {
		t.Errorf("output does not mention %s", ca)
	}
	caPEM, _ := os.ReadFile(ca)

	// A second run over the same nodes refuses and changes nothing.
	n1, _ := os.ReadFile(filepath.Join(dir, "n1.pem"))
	out.Reset()
	errOut.Reset()
	if code := run([]string{"cluster", "certs", dir, "--nodes", "n4,n1"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "exists") {
		t.Fatalf("rerun: exit %d, stderr %q", code, errOut.String())
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "n1.pem")); !bytes.Equal(again, n1) {
		t.Fatal("n1.pem was overwritten")
	}
	if _, err := os.Stat(filepath.Join(dir, "n4.pem")); err == nil {
		t.Fatal("refused run wrote n4.pem")
	}

	// A new node later: the existing CA issues it, and --json says so.
	out.Reset()
	if code := run([]string{"cluster", "certs", dir, "--nodes", "n4", "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var res certsResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("--json output %q: %v", out.String(), err)
	}
	c4, k4 := pki.NodeFiles(dir, "n4")
	if !res.CAReused || res.CAFile != ca || len(res.Nodes) != 1 || res.Nodes[0] != (certsNode{Name: "n4", CertFile: c4, KeyFile: k4}) {
		t.Fatalf("--json: %+v", res)
	}
	if again, _ := os.ReadFile(ca); !bytes.Equal(again, caPEM) {
		t.Fatal("ca.pem changed")
	}
	if _, _, err := wire.LoadTLS(ca, c4, k4); err != nil {
		t.Fatal(err)
	}
}

func TestClusterCertsUsage(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"no subcommand", []string{"cluster"}, 2},
		{"unknown subcommand", []string{"cluster", "keys", dir}, 2},
		{"no dir", []string{"cluster", "certs", "--nodes", "n1"}, 2},
		{"no nodes", []string{"cluster", "certs", dir}, 2},
		{"two dirs", []string{"cluster", "certs", dir, dir, "--nodes", "n1"}, 2},
		{"unknown flag", []string{"cluster", "certs", dir, "--nodes", "n1", "--size", "1"}, 2},
		{"bad node", []string{"cluster", "certs", dir, "--nodes", "n1,../x"}, 1},
		{"bad host", []string{"cluster", "certs", dir, "--nodes", "n1", "--hosts", "a b"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(tc.args, &out, &errOut); code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tc.code, errOut.String())
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("a refused run wrote %d files", len(entries))
			}
		})
	}
	var out bytes.Buffer
	if code := run([]string{"cluster", "--help"}, &out, &out); code != 0 || !strings.Contains(out.String(), "cairn cluster certs DIR") {
		t.Fatalf("--help: exit %d, %q", code, out.String())
	}
}
