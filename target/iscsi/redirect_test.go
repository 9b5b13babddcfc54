package iscsi

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"cairn/target"
)

// locatedTargets serves some targets and knows where others are attached.
type locatedTargets struct {
	mapTargets
	elsewhere map[string][2]string // IQN → node, portal address
	listed    []string             // extra names List returns (the cluster's catalog)
}

func (l locatedTargets) Locate(iqn string) (node, addr string, ok bool) {
	w, ok := l.elsewhere[iqn]
	return w[0], w[1], ok
}

func (l locatedTargets) List() []string { return append(l.mapTargets.List(), l.listed...) }

var _ target.Locator = locatedTargets{}

// redirectServers starts server B, which serves testIQNSmall, and server A,
// which serves nothing but locates testIQNSmall at B. It returns A's
// address, B's address and B's server.
func redirectServers(t *testing.T) (addrA, addrB string, a, b *Server) {
	t.Helper()
	b, addrB, _ = testServer(t, Options{})
	a = NewServer(Options{Targets: locatedTargets{mapTargets: mapTargets{},
		elsewhere: map[string][2]string{testIQNSmall: {"nodeB", addrB}}, listed: []string{testIQNSmall}}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(l) }()
	t.Cleanup(func() {
		a.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String(), addrB, a, b
}

// TestInteropRedirect: libiscsi follows a login redirect (status 0x0101,
// TargetAddress) from the node a target is not attached to, to the node
// it is attached to.
func TestInteropRedirect(t *testing.T) {
	addrA, addrB, a, b := redirectServers(t)
	url := "iscsi://" + addrA + "/" + testIQNSmall + "/0"
	out := mustTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5c 1M 64k", "-c", "read -P 0x5c 1M 64k", url)
	if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") || !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("qemu-io through a redirect:\n%s", out)
	}
	if n := a.Stats().Disconnects[target.DisconnectRedirected]; n == 0 {
		t.Errorf("server A redirected no login: %v", a.Stats().Disconnects)
	}
	// B saw the session and has the data.
	waitFor(t, func() bool { return b.Stats().Disconnects[target.DisconnectClientClosed] > 0 })
	dev, _ := b.opts.Targets.Lookup(testIQNSmall)
	got := make([]byte, 64<<10)
	if err := dev.ReadAt(t.Context(), got, 1<<20); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x5c}, 64<<10)) {
		t.Fatalf("B's device lacks the write made through A: %v", err)
	}

	// Discovery at A lists the target at B's portal, and iscsi-ls -s
	// follows it there to read its size.
	out = mustTool(t, "iscsi-ls", "-s", "iscsi://"+addrA)
	for _, want := range []string{testIQNSmall, "Portal:" + addrB + ",1", "Size:63M"} {
		if !strings.Contains(out, want) {
			t.Errorf("iscsi-ls at A lacks %q:\n%s", want, out)
		}
	}
	// A direct login at A for the target, as iscsi-inq does, is
	// redirected too.
	out = mustTool(t, "iscsi-inq", url)
	if !strings.Contains(out, "Vendor:CAIRN") {
		t.Errorf("iscsi-inq through a redirect:\n%s", out)
	}
}
