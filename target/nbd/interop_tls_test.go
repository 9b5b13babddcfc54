package nbd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cairn/target/targettest"
)

// Interoperability of STARTTLS and of exports located elsewhere with
// libnbd's nbdinfo and QEMU's qemu-io.

// runToolFail runs a tool that must fail and returns its combined output.
func runToolFail(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, needTool(t, name), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("%s %s succeeded, want a failure:\n%s", name, strings.Join(args, " "), out)
	}
	return string(out)
}

// tlsInteropServer serves "disk" (1 GiB) in mode with certs, and returns
// host:port.
func tlsInteropServer(t *testing.T, certs *targettest.TLS, mode TLSMode, clientAuth tls.ClientAuthType) (string, *targettest.MemDevice) {
	d := targettest.NewMemDevice(targettest.MemOptions{CanMultiConn: true})
	cfg := certs.Server.Clone()
	cfg.ClientAuth = clientAuth
	s := newServer(t, mapExports{"disk": d}, Options{TLS: cfg, TLSMode: mode})
	return listen(t, s), d
}

func TestInteropTLSNbdinfo(t *testing.T) {
	needTool(t, "nbdinfo")
	certs := testTLS(t)
	addr, _ := tlsInteropServer(t, certs, TLSRequire, tls.VerifyClientCertIfGiven)
	// Server authentication only: a directory with just the CA.
	caOnly := t.TempDir()
	ca, err := os.ReadFile(filepath.Join(certs.Dir, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(caOnly, "ca-cert.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	var info struct {
		TLS     bool `json:"TLS"`
		Exports []struct {
			Name string `json:"export-name"`
			Size int64  `json:"export-size"`
		} `json:"exports"`
	}
	out := runTool(t, "nbdinfo", "--no-content", "--json", "nbds://"+addr+"/disk?tls-certificates="+caOnly)
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 || info.Exports[0].Size != 1<<30 || !info.TLS {
		t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
	}
	out = runToolFail(t, []string{"LIBNBD_DEBUG=1"}, "nbdinfo", "--no-content", "nbd://"+addr+"/disk")
	if !strings.Contains(out, "TLS required") {
		t.Fatalf("plain nbdinfo against a TLS-only server: want a TLS-required error:\n%s", out)
	}
	// A CA that did not sign the server's certificate.
	out = runToolFail(t, nil, "nbdinfo", "--no-content", "nbds://"+addr+"/disk?tls-certificates="+testTLS(t).Dir)
	if !strings.Contains(strings.ToLower(out), "certificate") && !strings.Contains(out, "TLS") {
		t.Fatalf("nbdinfo with the wrong CA: want a certificate error:\n%s", out)
	}

	// Client certificates required: the full directory has them.
	addr2, _ := tlsInteropServer(t, certs, TLSRequire, tls.RequireAndVerifyClientCert)
	runTool(t, "nbdinfo", "--no-content", "nbds://"+addr2+"/disk?tls-certificates="+certs.Dir)
	runToolFail(t, nil, "nbdinfo", "--no-content", "nbds://"+addr2+"/disk?tls-certificates="+caOnly)
}

func TestInteropTLSQemuIO(t *testing.T) {
	needTool(t, "qemu-io")
	certs := testTLS(t)
	addr, d := tlsInteropServer(t, certs, TLSRequire, tls.VerifyClientCertIfGiven)
	host, port, _ := strings.Cut(addr, ":")
	out := runTool(t, "qemu-io", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+certs.Dir,
		"--image-opts", "driver=nbd,host="+host+",port="+port+",export=disk,tls-creds=tls0",
		"-c", "write -P 0x5e 1m 64k", "-c", "read -P 0x5e 1m 64k")
	if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") || !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("qemu-io over TLS:\n%s", out)
	}
	if st := d.Stats(); st.Writes == 0 {
		t.Fatalf("device saw no write: %+v", st)
	}
	out = runToolFail(t, nil, "qemu-io", "-f", "raw", "-c", "read 0 4k", "nbd://"+addr+"/disk")
	if !strings.Contains(out, "TLS negotiation required") || !strings.Contains(out, "TLS required: send NBD_OPT_STARTTLS first") {
		t.Fatalf("plain qemu-io against a TLS-only server: want a TLS-required error:\n%s", out)
	}
}

// TestInteropLocated: a client asking for an export attached to another
// node is told which one, in the error message of the reply, which qemu
// prints and libnbd logs.
func TestInteropLocated(t *testing.T) {
	exports, _ := memExports()
	le := locatedExports{mapExports: exports, elsewhere: map[string][2]string{"vol2": {"node2", "192.0.2.2:10809"}}}
	s := NewServer(Options{Exports: le})
	addr := listen(t, s)
	want := `export "vol2" is attached to node node2: connect to 192.0.2.2:10809`
	t.Run("qemu-io", func(t *testing.T) {
		out := runToolFail(t, nil, "qemu-io", "-f", "raw", "-c", "read 0 4k", "nbd://"+addr+"/vol2")
		if !strings.Contains(out, want) {
			t.Fatalf("qemu-io does not show %q:\n%s", want, out)
		}
	})
	t.Run("nbdinfo", func(t *testing.T) {
		out := runToolFail(t, []string{"LIBNBD_DEBUG=1"}, "nbdinfo", "--no-content", "nbd://"+addr+"/vol2")
		if !strings.Contains(out, want) {
			t.Fatalf("nbdinfo does not show %q:\n%s", want, out)
		}
	})
}
