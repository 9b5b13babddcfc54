package iscsi

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// loginReq is one Login Request of a transcript. Values "@CHAP_R(secret)"
// and "@CHAP_R_BAD" are computed from the last challenge the target sent.
type loginReq struct {
	csg, nsg  byte
	transit   bool
	cont      bool
	tsih      uint16
	versionLo byte
	keys      []string
}

var loginCases = []struct {
	name  string
	creds map[string]Credentials // per target; absent: none required
	reqs  []loginReq
}{
	{name: "no-auth-normal", reqs: []loginReq{
		{csg: 0, nsg: 1, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "InitiatorAlias=host", "TargetName=iqn.t", "SessionType=Normal", "AuthMethod=None"}},
		{csg: 1, nsg: 3, transit: true, keys: []string{"HeaderDigest=CRC32C,None", "DataDigest=None", "MaxConnections=1", "InitialR2T=No", "ImmediateData=Yes",
			"MaxRecvDataSegmentLength=65536", "MaxBurstLength=1048576", "FirstBurstLength=262144", "DefaultTime2Wait=2", "DefaultTime2Retain=0",
			"MaxOutstandingR2T=1", "DataPDUInOrder=Yes", "DataSequenceInOrder=Yes", "ErrorRecoveryLevel=0", "X-com.example.Vendor=1"}},
	}},
	{name: "operational-only", reqs: []loginReq{
		{csg: 1, nsg: 3, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t"}},
	}},
	{name: "discovery", reqs: []loginReq{
		{csg: 0, nsg: 1, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "SessionType=Discovery", "AuthMethod=None"}},
		{csg: 1, nsg: 3, transit: true, keys: []string{"MaxRecvDataSegmentLength=8192"}},
	}},
	{name: "continuation", reqs: []loginReq{
		{csg: 0, nsg: 1, cont: true, keys: []string{"InitiatorName=iqn.2026-01.test:init"}},
		{csg: 0, nsg: 1, transit: true, keys: []string{"TargetName=iqn.t", "AuthMethod=None"}},
		{csg: 1, nsg: 3, transit: true},
	}},
	{name: "chap-one-way", creds: map[string]Credentials{"iqn.t": {User: "alice", Secret: "alicesecret12"}}, reqs: []loginReq{
		{csg: 0, nsg: 1, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t", "AuthMethod=CHAP,None"}},
		{csg: 0, nsg: 1, keys: []string{"CHAP_A=7,5"}},
		{csg: 0, nsg: 1, transit: true, keys: []string{"CHAP_N=alice", "CHAP_R=@CHAP_R(alicesecret12)"}},
		{csg: 1, nsg: 3, transit: true, keys: []string{"HeaderDigest=None", "DataDigest=CRC32C"}},
	}},
	{name: "chap-bad-secret", creds: map[string]Credentials{"iqn.t": {User: "alice", Secret: "alicesecret12"}}, reqs: []loginReq{
		{csg: 0, nsg: 1, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t", "AuthMethod=CHAP"}},
		{csg: 0, nsg: 1, keys: []string{"CHAP_A=5"}},
		{csg: 0, nsg: 1, transit: true, keys: []string{"CHAP_N=alice", "CHAP_R=@CHAP_R(wrongsecret)"}},
	}},
	{name: "chap-mutual", creds: map[string]Credentials{"iqn.t": {User: "alice", Secret: "alicesecret12", MutualUser: "tgt", MutualSecret: "targetsecret1"}}, reqs: []loginReq{
		{csg: 0, nsg: 1, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t", "AuthMethod=CHAP"}},
		{csg: 0, nsg: 1, keys: []string{"CHAP_A=5"}},
		{csg: 0, nsg: 3, transit: true, keys: []string{"CHAP_N=alice", "CHAP_R=@CHAP_R(alicesecret12)", "CHAP_I=77", "CHAP_C=0x00112233445566778899aabbccddeeff"}},
	}},
	{name: "chap-mutual-missing", creds: map[string]Credentials{"iqn.t": {User: "alice", Secret: "alicesecret12", MutualUser: "tgt", MutualSecret: "targetsecret1"}}, reqs: []loginReq{
		{csg: 0, nsg: 1, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t", "AuthMethod=CHAP"}},
		{csg: 0, nsg: 1, keys: []string{"CHAP_A=5"}},
		{csg: 0, nsg: 1, transit: true, keys: []string{"CHAP_N=alice", "CHAP_R=@CHAP_R(alicesecret12)"}},
	}},
	{name: "chap-required-none-offered", creds: map[string]Credentials{"iqn.t": {User: "alice", Secret: "alicesecret12"}}, reqs: []loginReq{
		{csg: 0, nsg: 1, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t", "AuthMethod=None"}},
	}},
	{name: "chap-required-security-skipped", creds: map[string]Credentials{"iqn.t": {User: "alice", Secret: "alicesecret12"}}, reqs: []loginReq{
		{csg: 1, nsg: 3, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t"}},
	}},
	{name: "unknown-tsih", reqs: []loginReq{
		{csg: 0, nsg: 1, transit: true, tsih: 0x1234, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t", "AuthMethod=None"}},
	}},
	{name: "redirect", reqs: []loginReq{
		{csg: 0, nsg: 1, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.moved", "AuthMethod=None"}},
	}},
	{name: "redirect-operational", reqs: []loginReq{
		{csg: 1, nsg: 3, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.moved"}},
	}},
	{name: "unknown-target", reqs: []loginReq{
		{csg: 0, nsg: 1, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.nosuch", "AuthMethod=None"}},
	}},
	{name: "missing-initiator-name", reqs: []loginReq{
		{csg: 0, nsg: 1, transit: true, keys: []string{"TargetName=iqn.t", "AuthMethod=None"}},
	}},
	{name: "unsupported-version", reqs: []loginReq{
		{csg: 0, nsg: 1, transit: true, versionLo: 2, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t"}},
	}},
	{name: "duplicate-key", reqs: []loginReq{
		{csg: 1, nsg: 3, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t", "MaxBurstLength=512", "MaxBurstLength=1024"}},
	}},
	{name: "bad-values", reqs: []loginReq{
		{csg: 1, nsg: 3, transit: true, keys: []string{"InitiatorName=iqn.2026-01.test:init", "TargetName=iqn.t", "MaxBurstLength=12", "HeaderDigest=MD5", "ImmediateData=Perhaps"}},
	}},
}

// counterReader yields 0, 1, 2, ...: deterministic CHAP challenges.
type counterReader struct{ n byte }

func (c *counterReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.n
		c.n++
	}
	return len(p), nil
}

// TestLoginTranscripts drives the login state machine through each case and
// compares the transcript with testdata/login/<case>.txt (-rewrite
// regenerates them).
func TestLoginTranscripts(t *testing.T) {
	for _, tc := range loginCases {
		t.Run(tc.name, func(t *testing.T) {
			l := newLogin(loginConfig{
				targetExists: func(n string) bool { return n == "iqn.t" },
				locate: func(n string) (string, string, bool) {
					if n == "iqn.moved" {
						return "node2", "192.0.2.2:3260", true
					}
					return "", "", false
				},
				credentials: func(target string) (Credentials, bool) {
					c, ok := tc.creds[target]
					return c, ok
				},
				sessionExists:      func(uint16) bool { return false },
				random:             &counterReader{},
				recvDataSegmentMax: 262144,
				cmdWindow:          128,
			})
			var out strings.Builder
			var lastResp []pair
			for i, r := range tc.reqs {
				var p PDU
				p.hdr.setOpcode(opLogin | flagImmediate)
				p.hdr[1] = r.csg<<2 | r.nsg
				if r.transit {
					p.hdr[1] |= 0x80
				}
				if r.cont {
					p.hdr[1] |= 0x40
				}
				p.hdr[3] = r.versionLo
				copy(p.hdr[8:14], []byte{0x40, 0, 0, 0x23, 0, 1})
				p.hdr.setU16(14, r.tsih)
				p.hdr.setITT(uint32(i))
				p.hdr.setU32(24, 10)
				p.hdr.setU32(28, 100)
				var keys []pair
				for _, k := range r.keys {
					key, val, _ := strings.Cut(k, "=")
					if strings.HasPrefix(val, "@CHAP_R(") {
						id, _ := lookup(lastResp, "CHAP_I")
						chal, _ := lookup(lastResp, "CHAP_C")
						n, _ := strconv.Atoi(id)
						c, _ := decodeBinary(chal)
						sum := chapResponse(byte(n), strings.TrimSuffix(strings.TrimPrefix(val, "@CHAP_R("), ")"), c)
						val = "0x" + hex.EncodeToString(sum[:])
					}
					keys = append(keys, pair{key, val})
				}
				p.data = appendText(nil, keys)
				fmt.Fprintf(&out, "> Login CSG=%d NSG=%d T=%v C=%v TSIH=%#x ITT=%d CmdSN=10 ExpStatSN=100\n", r.csg, r.nsg, r.transit, r.cont, r.tsih, i)
				for _, k := range keys {
					fmt.Fprintf(&out, ">   %s=%s\n", k.key, k.value)
				}
				st := l.step(&p)
				h := &st.resp.hdr
				lastResp, _ = parseText(st.resp.data)
				fmt.Fprintf(&out, "< Login-Response CSG=%d NSG=%d T=%v status=%#04x ITT=%d StatSN=%d ExpCmdSN=%d MaxCmdSN=%d",
					loginCSG(h), loginNSG(h), loginTransit(h), h.u16(36), h.itt(), h.u32(24), h.u32(28), h.u32(32))
				switch {
				case st.done:
					out.WriteString(" (full feature phase)")
				case st.fail:
					out.WriteString(" (rejected: " + l.failReason + ")")
				}
				out.WriteString("\n")
				if h.opcode() != opLoginResp || !bytes.Equal(h[8:14], p.hdr[8:14]) {
					t.Errorf("response is not a login response for our ISID: % x", h[:16])
				}
				for _, k := range lastResp {
					fmt.Fprintf(&out, "<   %s=%s\n", k.key, k.value)
				}
				if st.done {
					fmt.Fprintf(&out, "= %s\n", l.params)
				}
				if st.done || st.fail {
					if i != len(tc.reqs)-1 {
						t.Errorf("login ended after request %d of %d", i+1, len(tc.reqs))
					}
					break
				}
			}
			golden := filepath.Join("testdata", "login", tc.name+".txt")
			if *rewrite {
				if err := os.WriteFile(golden, []byte(out.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -args -rewrite)", err)
			}
			if string(want) != out.String() {
				t.Errorf("transcript differs from %s:\n%s", golden, out.String())
			}
		})
	}
}
