package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection keeps imports pointing downward (DESIGN.md §6):
// front ends know only the device interface, the backend knows no front
// end, the control plane knows no data path, configs knows nothing of
// cairn, and nothing imports a command.
func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "cairn/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// forbidden[p] lists import path prefixes package p (and its
	// subpackages) must not import; "cairn/target/" forbids the front ends
	// but allows the device interface itself and deviceContract.
	forbidden := map[string][]string{
		"cairn/target":  {"cairn/backend", "cairn/cluster", "cairn/snapshot", "cairn/cmd", "cairn/bench", "cairn/configs"},
		"cairn/backend": {"cairn/target/", "cairn/cluster", "cairn/cmd", "cairn/bench", "cairn/configs"},
		"cairn/cluster": {"cairn/target", "cairn/backend", "cairn/cmd", "cairn/bench"},
		"cairn/configs": {"cairn/"},
		"cairn/bench":   {"cairn/target/", "cairn/cmd"},
	}
	// deviceContract is under cairn/target/ but belongs to the device
	// contract, not to a front end: the volume keeps reservations with it.
	deviceContract := map[string]bool{"cairn/target/reservation": true}
	checked := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		pkg, imports := f[0], f[1:]
		for _, imp := range imports {
			if strings.HasPrefix(imp, "cairn/cmd") {
				t.Errorf("%s imports the command %s", pkg, imp)
			}
			for owner, bad := range forbidden {
				if pkg != owner && !strings.HasPrefix(pkg, owner+"/") {
					continue
				}
				for _, b := range bad {
					if strings.HasPrefix(imp, b) && !(b == "cairn/target/" && deviceContract[imp]) {
						t.Errorf("%s imports %s: imports must point downward (DESIGN.md §6)", pkg, imp)
					}
				}
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("go list reported no imports: the check checked nothing")
	}
}
