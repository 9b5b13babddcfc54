package iscsi

import (
	"bytes"
	"testing"
)

// FuzzParsePDU: parsePDU never panics, and what it accepts re-encodes to
// the same bytes.
func FuzzParsePDU(f *testing.F) {
	var p PDU
	p.hdr.setOpcode(opSCSICmd)
	p.data = []byte("seed")
	f.Add(appendPDU(nil, &p, digests{}), false, false)
	f.Add(appendPDU(nil, &p, digests{true, true}), true, true)
	p.ahs = []byte{0, 1, 2, 3}
	f.Add(appendPDU(nil, &p, digests{header: true}), true, false)
	f.Add(make([]byte, 48), false, false)
	f.Fuzz(func(t *testing.T, b []byte, hd, dd bool) {
		d := digests{hd, dd}
		q, n, err := parsePDU(b, d, 1<<16)
		if err != nil {
			return
		}
		if n > len(b) || n%4 != 0 {
			t.Fatalf("consumed %d of %d bytes", n, len(b))
		}
		out := appendPDU(nil, &q, d)
		// Padding bytes are not checked on input; compare the rest.
		if len(out) != n {
			t.Fatalf("re-encoded %d bytes, parsed %d", len(out), n)
		}
		r, m, err := parsePDU(out, d, 1<<16)
		if err != nil || m != n || r.hdr != q.hdr || !bytes.Equal(r.ahs, q.ahs) || !bytes.Equal(r.data, q.data) {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

// FuzzParseText: parseText never panics; what it accepts re-encodes and
// parses to the same pairs.
func FuzzParseText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.1994-05.com.redhat:x\x00SessionType=Normal\x00"))
	f.Add([]byte("A=1\x00A=2\x00"))
	f.Add([]byte("CHAP_R=0x0123\x00"))
	f.Add([]byte("=\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pairs, err := parseText(b)
		if err != nil {
			return
		}
		again, err := parseText(appendText(nil, pairs))
		if err != nil || !equalPairs(pairs, again) {
			t.Fatalf("re-parse of %q: %v %v", pairs, again, err)
		}
	})
}

// FuzzLogin: the login state machine answers any sequence of PDUs without
// panicking, and never reaches full feature phase for a target that needs
// CHAP unless it verified a response.
func FuzzLogin(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.x\x00TargetName=iqn.t\x00AuthMethod=None\x00"), byte(0x81), []byte("HeaderDigest=CRC32C\x00"), byte(0x87))
	f.Add([]byte("InitiatorName=iqn.x\x00SessionType=Discovery\x00"), byte(0x87), []byte{}, byte(0))
	f.Fuzz(func(t *testing.T, d1 []byte, f1 byte, d2 []byte, f2 byte) {
		for _, chap := range []bool{false, true} {
			l := newLogin(loginConfig{
				targetExists: func(n string) bool { return n == "iqn.t" },
				credentials: func(string) (Credentials, bool) {
					return Credentials{User: "u", Secret: "s"}, chap
				},
				random:             bytes.NewReader(make([]byte, 1024)),
				recvDataSegmentMax: 8192,
				cmdWindow:          32,
			})
			for _, in := range []struct {
				data  []byte
				flags byte
			}{{d1, f1}, {d2, f2}} {
				var p PDU
				p.hdr.setOpcode(opLogin)
				p.hdr[1] = in.flags
				p.data = in.data
				st := l.step(&p)
				if st.done && chap && l.auth != authDone {
					t.Fatal("full feature phase without authentication")
				}
				if st.done || st.fail {
					break
				}
			}
		}
	})
}
