package iscsi

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"cairn/target"
	"cairn/target/targettest"
)

// mapTargets serves a fixed map of IQN to device.
type mapTargets map[string]target.Device

func (m mapTargets) Lookup(iqn string) (target.Device, bool) {
	d, ok := m[iqn]
	return d, ok
}

func (m mapTargets) List() []string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

const (
	testIQN      = "iqn.2026-01.io.cairn:disk"
	testIQNSmall = "iqn.2026-01.io.cairn:small"
	testIQNRO    = "iqn.2026-01.io.cairn:ro"
	testIQNCHAP  = "iqn.2026-01.io.cairn:chap"
	testIQNMut   = "iqn.2026-01.io.cairn:mutual"
)

// testServer serves a set of devices on loopback; it returns the address.
func testServer(t *testing.T, opts Options) (*Server, string, map[string]*targettest.MemDevice) {
	t.Helper()
	devs := map[string]*targettest.MemDevice{
		testIQN:      targettest.NewMemDevice(targettest.MemOptions{}),
		testIQNSmall: targettest.NewMemDevice(targettest.MemOptions{Size: 64 << 20}),
		testIQNRO:    targettest.NewMemDevice(targettest.MemOptions{Size: 1 << 20, ReadOnly: true}),
		testIQNCHAP:  targettest.NewMemDevice(targettest.MemOptions{Size: 16 << 20}),
		testIQNMut:   targettest.NewMemDevice(targettest.MemOptions{Size: 16 << 20}),
	}
	ts := mapTargets{}
	for n, d := range devs {
		ts[n] = d
	}
	opts.Targets = ts
	if opts.Logger == nil && testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if opts.CHAP == nil {
		opts.CHAP = func(iqn string) (Credentials, bool) {
			switch iqn {
			case testIQNCHAP:
				return Credentials{User: "alice", Secret: "alicesecret12"}, true
			case testIQNMut:
				return Credentials{User: "alice", Secret: "alicesecret12", MutualUser: "target", MutualSecret: "targetsecret1"}, true
			}
			return Credentials{}, false
		}
	}
	s := NewServer(opts)
	addr := "127.0.0.1:0"
	if a := os.Getenv("CAIRN_ISCSI_SERVE"); a != "" {
		addr = a
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		s.Close() // idempotent
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, l.Addr().String(), devs
}

const toolTimeout = 60 * time.Second

// needTool returns the path of a tool; it skips the test when the tool is
// missing, unless CAIRN_REQUIRE_TOOLS is set.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CAIRN_REQUIRE_TOOLS") != "" {
			t.Fatalf("%s not installed (CAIRN_REQUIRE_TOOLS is set): %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// runTool runs a tool and returns its combined output; ok false on a
// non-zero exit.
func runTool(t *testing.T, timeout time.Duration, name string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, needTool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Logf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		return string(out), false
	}
	return string(out), true
}

func mustTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, ok := runTool(t, toolTimeout, name, args...)
	if !ok {
		t.Fatalf("%s failed", name)
	}
	return out
}

var rewrite = flag.Bool("rewrite", false, "rewrite golden files in testdata")

// runToolIn runs a tool in dir.
func runToolIn(t *testing.T, dir string, timeout time.Duration, path string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("%s: %v", path, err)
		return string(out), false
	}
	return string(out), true
}
