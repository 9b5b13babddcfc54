package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// readmeRecipe returns the first sh block after a heading of the README.
func readmeRecipe(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading)
	if !ok {
		t.Fatalf("README.md has no %q", heading)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	script, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatalf("README.md has no sh block after %q", heading)
	}
	return script
}

// changedExtents runs nbdinfo --map=cairn:changed:<base> on an export and
// returns its changed extents as [offset, length] pairs.
func changedExtents(t *testing.T, p *proc, export, base string) [][2]int64 {
	t.Helper()
	out := sh(t, "nbdinfo", "--map=cairn:changed:"+base, "--json", p.uri(export))
	var extents []struct {
		Offset int64 `json:"offset"`
		Length int64 `json:"length"`
		Type   int   `json:"type"`
	}
	if err := json.Unmarshal([]byte(out), &extents); err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	var changed [][2]int64
	var next int64
	for _, e := range extents {
		if e.Offset != next {
			t.Fatalf("nbdinfo --map: extents not contiguous at %d:\n%s", e.Offset, out)
		}
		next = e.Offset + e.Length
		if e.Type&1 != 0 {
			changed = append(changed, [2]int64{e.Offset, e.Length})
		}
	}
	return changed
}

// TestChangedBlocks: nbdinfo --map=cairn:changed:S reports exactly the
// blocks written since snapshot S, on a later snapshot's export and on
// the live volume; and the incremental backup recipe of the README, run
// as written there (a full nbdcopy of snapshot 1, then only the changed
// extents of snapshot 2 copied with qemu-img over it), yields snapshot 2
// byte for byte.
func TestChangedBlocks(t *testing.T) {
	need(t, "nbdinfo", "nbdcopy", "qemu-io", "qemu-img", "bash", "awk")
	p := startDaemon(t)
	ok := okCLI(t, p)
	const M = 1 << 20
	ok("volume", "create", "cb", "--size", "64MiB")
	write(t, p.uri("cb"), "write -P 0x11 0 4M")
	ok("snapshot", "create", "cb", "--name", "s1")
	write(t, p.uri("cb"), "write -P 0x22 1M 1M")
	write(t, p.uri("cb"), "write -P 0x33 10M 64k")
	write(t, p.uri("cb"), "write -z 3M 1M") // zeroes over data: changed
	ok("snapshot", "create", "cb", "--name", "s2")
	write(t, p.uri("cb"), "write -P 0x44 20M 1M")

	want := [][2]int64{{1 * M, 1 * M}, {3 * M, 1 * M}, {10 * M, 64 << 10}}
	if got := changedExtents(t, p, "cb@s2", "s1"); !slices.Equal(got, want) {
		t.Fatalf("changed since s1 on cb@s2: %v, want %v", got, want)
	}
	if got := changedExtents(t, p, "cb", "s1"); !slices.Equal(got, append(want, [2]int64{20 * M, M})) {
		t.Fatalf("changed since s1 on the live volume: %v", got)
	}
	if got := changedExtents(t, p, "cb", "s2"); !slices.Equal(got, [][2]int64{{20 * M, M}}) {
		t.Fatalf("changed since s2 on the live volume: %v", got)
	}
	// A base that is not an older snapshot of the export is not offered.
	if out, err := shErr("nbdinfo", "--map=cairn:changed:s2", p.uri("cb@s1")); err == nil {
		t.Fatalf("cb@s1 offered changes since the later s2:\n%s", out)
	}

	// The incremental backup recipe, as the README gives it.
	dir := t.TempDir()
	backup := filepath.Join(dir, "backup.img")
	host, port, _ := net.SplitHostPort(p.nbd)
	script := strings.NewReplacer(
		"127.0.0.1:10809", p.nbd, "host=127.0.0.1", "host="+host, "port=10809", "port="+port, "vol0", "cb",
	).Replace(readmeRecipe(t, "### Incremental backup"))
	cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the README's backup recipe: %v\n%s\n%s", err, script, out)
	}
	got, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, dump(t, p, "cb@s2")) {
		t.Fatal("full copy of s1 plus the changed extents of s2 differs from s2")
	}
	if bytes.Equal(got, dump(t, p, "cb@s1")) {
		t.Fatal("the incremental step copied nothing")
	}
}
