package iscsi

import (
	"encoding/xml"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// Interoperability with real initiators: libiscsi's iscsi-ls, iscsi-inq,
// iscsi-readcapacity16, iscsi-perf and iscsi-test-cu, and QEMU's qemu-io.
// Each test skips when its tool is missing (fails under CAIRN_REQUIRE_TOOLS).

var noCHAP = func(string) (Credentials, bool) { return Credentials{}, false }

func TestInteropLs(t *testing.T) {
	_, addr, _ := testServer(t, Options{CHAP: noCHAP})
	out := mustTool(t, "iscsi-ls", "-s", "iscsi://"+addr)
	for _, want := range []string{testIQN, testIQNSmall, "Portal:" + addr + ",1", "Size:63M"} {
		if !strings.Contains(out, want) {
			t.Errorf("iscsi-ls output lacks %q:\n%s", want, out)
		}
	}
}

func TestInteropInquiry(t *testing.T) {
	_, addr, _ := testServer(t, Options{})
	url := "iscsi://" + addr + "/" + testIQN + "/0"
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"Peripheral Device Type:DIRECT_ACCESS", "Vendor:CAIRN", "CmdQue:1", "Version Descriptor:0960 iSCSI"}},
		{[]string{"-e", "1", "-c", "0"}, []string{"Page:0x00", "Page:0x80", "Page:0x83", "Page:0xb0", "Page:0xb1", "Page:0xb2"}},
		{[]string{"-e", "1", "-c", "128"}, []string{"Unit Serial Number:["}},
		{[]string{"-e", "1", "-c", "131"}, []string{"Designator Type:(3) NAA", "Designator Type:(1) T10_VENDORT_ID", "Designator:[" + testIQN + "]"}},
		{[]string{"-e", "1", "-c", "176"}, []string{"wsnz:1", "maximum compare and write length:255", "maximum transfer length:65536", "maximum unmap lba count:1048576", "optimal unmap granularity:8"}},
		{[]string{"-e", "1", "-c", "177"}, []string{"Medium Rotation Rate:1"}},
		{[]string{"-e", "1", "-c", "178"}, []string{"lbpu:1", "lbpws:1", "lbpws10:1", "lbprz:1", "provisioning type:2"}},
	} {
		out := mustTool(t, "iscsi-inq", append(tc.args, url)...)
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("iscsi-inq %v lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
	// The serial number is stable per target name, across servers.
	serial := func(addr string) string {
		return regexp.MustCompile(`\[(.*)\]`).FindString(mustTool(t, "iscsi-inq", "-e", "1", "-c", "128", "iscsi://"+addr+"/"+testIQN+"/0"))
	}
	_, addr2, _ := testServer(t, Options{})
	if a, b := serial(addr), serial(addr2); a != b || a == "" {
		t.Errorf("serial numbers differ across servers: %s %s", a, b)
	}
}

func TestInteropReadCapacity16(t *testing.T) {
	_, addr, _ := testServer(t, Options{})
	out := mustTool(t, "iscsi-readcapacity16", "iscsi://"+addr+"/"+testIQNSmall+"/0")
	for _, w := range []string{"RETURNED LOGICAL BLOCK ADDRESS:131071", "LOGICAL BLOCK LENGTH IN BYTES:512",
		"LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:3", "LBPME:1 LBPRZ:1", "Total size:67108864"} {
		if !strings.Contains(out, w) {
			t.Errorf("iscsi-readcapacity16 lacks %q:\n%s", w, out)
		}
	}
}

func TestInteropDigestsAndCHAP(t *testing.T) {
	_, addr, _ := testServer(t, Options{})
	ok := func(url string) {
		t.Helper()
		if out, good := runTool(t, toolTimeout, "iscsi-readcapacity16", url); !good || !strings.Contains(out, "LOGICAL BLOCK LENGTH") {
			t.Errorf("%s: failed:\n%s", url, out)
		}
	}
	refused := func(url, why string) {
		t.Helper()
		if out, good := runTool(t, toolTimeout, "iscsi-readcapacity16", url); good || !strings.Contains(out, why) {
			t.Errorf("%s: want refusal with %q, got:\n%s", url, why, out)
		}
	}
	ok("iscsi://" + addr + "/" + testIQN + "/0?header_digest=crc32c")
	ok("iscsi://alice%alicesecret12@" + addr + "/" + testIQNCHAP + "/0")
	refused("iscsi://alice%wrongsecret1@"+addr+"/"+testIQNCHAP+"/0", "Authentication failure")
	refused("iscsi://bob%alicesecret12@"+addr+"/"+testIQNCHAP+"/0", "Authentication failure")
	refused("iscsi://"+addr+"/"+testIQNCHAP+"/0", "Authentication failure")
	ok("iscsi://alice%alicesecret12@" + addr + "/" + testIQNMut + "/0?target_user=target&target_password=targetsecret1")
	refused("iscsi://alice%alicesecret12@"+addr+"/"+testIQNMut+"/0?target_user=target&target_password=notthesecret", "Invalid CHAP_R")
	refused("iscsi://"+addr+"/iqn.2026-01.io.cairn:nosuch/0", "")
}

func TestInteropQemuIO(t *testing.T) {
	_, addr, devs := testServer(t, Options{})
	url := "iscsi://" + addr + "/" + testIQNSmall + "/0"
	end := fmt.Sprint(64<<20 - 1<<20)
	cmds := []string{
		"write -P 0xab 0 1M", "read -P 0xab 0 1M",
		"write -P 0xcd 32M 64k", "read -P 0xcd 32M 64k",
		"write -P 0xef " + end + " 1M", "read -P 0xef " + end + " 1M",
		"write -P 0x5a 5000 3000", "read -P 0x5a 5000 3000", // sub-block, unaligned
		"write -z 0 1M", "read -P 0 0 1M",
		"write -P 0x11 2M 1M", "discard 2M 1M", "read -P 0 2M 1M",
		"aio_write -P 0x22 4M 4k", "aio_write -P 0x33 8M 8M", "aio_flush",
		"read -P 0x22 4M 4k", "read -P 0x33 8M 8M",
		"write -P 0x44 -f 20M 64k", "read -P 0x44 20M 64k", // FUA
	}
	var args []string
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := mustTool(t, "qemu-io", append(append([]string{"-f", "raw"}, args...), url)...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	st := devs[testIQNSmall].Stats()
	if st.Discards == 0 || st.NoHoles == 0 || st.FUAWrites == 0 || st.Flushes == 0 {
		t.Errorf("device saw no discard, no-hole zero, FUA write or flush: %+v", st)
	}
}

func TestInteropPerf(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	s, addr, _ := testServer(t, Options{})
	out, _ := runTool(t, 30*time.Second, "iscsi-perf", "-m", "32", "-t", "3", "-b", "8", "-r", "iscsi://"+addr+"/"+testIQNSmall+"/0")
	if !strings.Contains(out, "finished") || !strings.Contains(out, "iops average") {
		t.Fatalf("iscsi-perf did not finish:\n%s", out)
	}
	t.Log(out[strings.LastIndex(out, "iops average"):])
	deadline := time.Now().Add(5 * time.Second)
	for s.Sessions(testIQNSmall) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.Sessions(testIQNSmall); n != 0 {
		t.Errorf("%d sessions left after iscsi-perf exited", n)
	}
}

// cuResults is the part of CUnit's automated XML report we read.
type cuResults struct {
	Suites []struct {
		Success *cuSuite `xml:"CUNIT_RUN_SUITE_SUCCESS"`
		Failure *cuSuite `xml:"CUNIT_RUN_SUITE_FAILURE"`
	} `xml:"CUNIT_RESULT_LISTING>CUNIT_RUN_SUITE"`
}

type cuSuite struct {
	Name    string `xml:"SUITE_NAME"`
	Records []struct {
		Success *struct {
			Name string `xml:"TEST_NAME"`
		} `xml:"CUNIT_RUN_TEST_SUCCESS"`
		Failure *struct {
			Name      string `xml:"TEST_NAME"`
			Condition string `xml:"CONDITION"`
		} `xml:"CUNIT_RUN_TEST_FAILURE"`
	} `xml:"CUNIT_RUN_TEST_RECORD"`
}

const cuExpectFile = "testdata/iscsi-test-cu.txt"

// TestInteropTestCU runs libiscsi's conformance suite (destructive tests
// included) and checks that every failing test is listed, with its reason,
// in testdata/iscsi-test-cu.txt. -rewrite writes this run's result there:
// the per-suite counts and the tests that failed, keeping the reason of
// those listed before.
func TestInteropTestCU(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	_, addr, _ := testServer(t, Options{})
	dir := t.TempDir()
	tool := needTool(t, "iscsi-test-cu")
	out, _ := runToolIn(t, dir, 10*time.Minute, tool, "-d", "-x", "--test=ALL",
		"-i", "iqn.2026-01.io.cairn:test-cu-1", "-I", "iqn.2026-01.io.cairn:test-cu-2",
		"iscsi://"+addr+"/"+testIQNSmall+"/0")
	raw, err := os.ReadFile(filepath.Join(dir, "CUnitAutomated-Results.xml"))
	if err != nil {
		t.Fatalf("no CUnit results: %v\n%s", err, out)
	}
	dec := xml.NewDecoder(strings.NewReader(string(raw)))
	dec.Strict = false
	var res cuResults
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("CUnit results: %v", err)
	}
	type count struct{ pass, fail int }
	perSuite := map[string]*count{}
	failed := map[string]string{}
	for _, s := range res.Suites {
		su := s.Success
		if su == nil {
			su = s.Failure
		}
		if su == nil {
			continue
		}
		name := strings.TrimSpace(su.Name)
		status := map[string]bool{} // test → passed
		var order []string
		for _, r := range su.Records {
			switch {
			case r.Success != nil:
				n := strings.TrimSpace(r.Success.Name)
				if _, seen := status[n]; !seen {
					status[n] = true
					order = append(order, n)
				}
			case r.Failure != nil:
				n := strings.TrimSpace(r.Failure.Name)
				if _, seen := status[n]; !seen {
					order = append(order, n)
				}
				status[n] = false
				failed[name+"."+n] = strings.TrimSpace(r.Failure.Condition)
			}
		}
		c := perSuite[name]
		if c == nil {
			c = &count{}
			perSuite[name] = c
		}
		for _, n := range order {
			if status[n] {
				c.pass++
			} else {
				c.fail++
			}
		}
	}
	if len(perSuite) == 0 {
		t.Fatalf("no suites ran:\n%s", out)
	}
	// Reservations are implemented: their suites must run, not skip.
	for _, skip := range []string{"PERSISTENT RESERVE IN is not implemented", "PERSISTENT RESERVE OUT is not implemented",
		"PROUT Not Supported", "[SKIPPED] RESERVE6 is not"} {
		if strings.Contains(out, skip) {
			t.Errorf("iscsi-test-cu skipped reservation tests: %q", skip)
		}
	}
	expected := readCUExpectations(t)
	for name, cond := range failed {
		if _, ok := expected[name]; !ok && !*rewrite {
			t.Errorf("iscsi-test-cu: %s failed (%s) and is not listed in %s", name, cond, cuExpectFile)
		}
	}
	for name := range expected {
		if _, ok := failed[name]; !ok {
			t.Logf("iscsi-test-cu: %s is listed as failing but passed", name)
		}
	}
	var suites []string
	total := count{}
	for n, c := range perSuite {
		suites = append(suites, fmt.Sprintf("%-28s pass %3d fail %d", n, c.pass, c.fail))
		total.pass += c.pass
		total.fail += c.fail
	}
	sort.Strings(suites)
	summary := fmt.Sprintf("total pass %d fail %d skipped-inside-passing %d", total.pass, total.fail, strings.Count(out, "[SKIPPED]"))
	t.Log(summary)
	if *rewrite {
		writeCUExpectations(t, cuListed(failed, expected), suites, summary)
	}
}

// cuListed is what -rewrite lists: the tests that failed in this run, each
// with the reason already listed for it, or else the failed condition.
// Tests listed before that passed are no longer listed.
func cuListed(failed, expected map[string]string) map[string]string {
	m := make(map[string]string, len(failed))
	for name, cond := range failed {
		if reason, ok := expected[name]; ok && reason != "" {
			cond = reason
		}
		m[name] = strings.Join(strings.Fields(cond), " ")
	}
	return m
}

// readCUExpectations reads "Suite.Test  reason" lines.
func readCUExpectations(t *testing.T) map[string]string {
	b, err := os.ReadFile(cuExpectFile)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, reason, _ := strings.Cut(line, " ")
		m[name] = strings.TrimSpace(reason)
	}
	return m
}

func writeCUExpectations(t *testing.T, expected map[string]string, suites []string, summary string) {
	var b strings.Builder
	b.WriteString("# iscsi-test-cu -d --test=ALL against target/iscsi (TestInteropTestCU).\n")
	b.WriteString("# Lines not starting with # are expected failures: Suite.Test reason.\n")
	b.WriteString("# Per-suite results of the last -rewrite run:\n")
	for _, s := range suites {
		b.WriteString("#   " + s + "\n")
	}
	b.WriteString("# " + summary + "\n")
	var names []string
	for n := range expected {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b.WriteString(n + " " + expected[n] + "\n")
	}
	if err := os.WriteFile(cuExpectFile, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestServeManual serves the test targets on $CAIRN_ISCSI_SERVE for manual
// runs of initiators; skipped unless that is set.
func TestServeManual(t *testing.T) {
	if os.Getenv("CAIRN_ISCSI_SERVE") == "" {
		t.Skip("CAIRN_ISCSI_SERVE not set")
	}
	_, a, _ := testServer(t, Options{})
	t.Logf("serving on %s", a)
	time.Sleep(time.Hour)
}

// TestCUListed: -rewrite lists this run's failures, not the old list.
func TestCUListed(t *testing.T) {
	failed := map[string]string{"S.A": "cond a", "S.B": "cond\n  b"}
	expected := map[string]string{"S.A": "known defect", "S.C": "fixed since"}
	got := cuListed(failed, expected)
	want := map[string]string{"S.A": "known defect", "S.B": "cond b"}
	if !maps.Equal(got, want) {
		t.Errorf("listed %v, want %v", got, want)
	}
}
