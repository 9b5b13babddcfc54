package iscsi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestCRC32CVectors(t *testing.T) {
	// RFC 3720 Appendix B.4 (kept in RFC 7143): 32 bytes of zeros, of 0xff,
	// and ascending bytes, with the bytes of the CRC as sent on the wire.
	asc := make([]byte, 32)
	for i := range asc {
		asc[i] = byte(i)
	}
	for _, tc := range []struct {
		in   []byte
		wire []byte
	}{
		{make([]byte, 32), []byte{0xaa, 0x36, 0x91, 0x8a}},
		{bytes.Repeat([]byte{0xff}, 32), []byte{0x43, 0xab, 0xa8, 0x62}},
		{asc, []byte{0x4e, 0x79, 0xdd, 0x46}},
	} {
		got := binary.LittleEndian.AppendUint32(nil, crc32c(tc.in))
		if !bytes.Equal(got, tc.wire) {
			t.Errorf("crc32c(% x...) on the wire = % x, want % x", tc.in[:4], got, tc.wire)
		}
	}
}

func TestPDURoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		ahs  []byte
		data []byte
		d    digests
	}{
		{"bare", nil, nil, digests{}},
		{"data", nil, []byte("hello"), digests{}},
		{"aligned", nil, []byte("four"), digests{}},
		{"digests", nil, []byte("hello, world"), digests{true, true}},
		{"header digest only", nil, []byte("x"), digests{header: true}},
		{"ahs", []byte{0, 1, 2, 0xaa}, []byte("abc"), digests{true, true}},
		{"ahs two segments", []byte{0, 1, 2, 0xaa, 0, 5, 1, 1, 2, 3, 4, 5, 0, 0, 0, 0}, nil, digests{header: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p PDU
			p.hdr.setOpcode(opSCSICmd)
			p.hdr.setITT(0x12345678)
			p.ahs, p.data = tc.ahs, tc.data
			b := appendPDU(nil, &p, tc.d)
			if len(b) != wireBytes(len(tc.ahs), len(tc.data), tc.d) || len(b)%4 != 0 {
				t.Fatalf("encoded %d bytes, want %d (multiple of 4)", len(b), wireBytes(len(tc.ahs), len(tc.data), tc.d))
			}
			for i := 1; i < len(b); i++ {
				if _, _, err := parsePDU(b[:i], tc.d, 1<<20); !errors.Is(err, errShort) {
					t.Fatalf("prefix of %d bytes: %v, want errShort", i, err)
				}
			}
			q, n, err := parsePDU(append(b, 0xee), tc.d, 1<<20)
			if err != nil || n != len(b) {
				t.Fatalf("parse: n %d err %v", n, err)
			}
			if q.hdr != p.hdr || !bytes.Equal(q.ahs, tc.ahs) || !bytes.Equal(q.data, tc.data) {
				t.Fatalf("round trip: got %+v, want %+v", q, p)
			}
			if q.hdr.itt() != 0x12345678 || q.hdr.dataBytes() != len(tc.data) || q.hdr.ahsBytes() != len(tc.ahs) {
				t.Fatalf("fields: itt %#x data %d ahs %d", q.hdr.itt(), q.hdr.dataBytes(), q.hdr.ahsBytes())
			}
		})
	}
}

func TestPDUErrors(t *testing.T) {
	var p PDU
	p.hdr.setOpcode(opNOPOut)
	p.data = []byte("ping")
	good := appendPDU(nil, &p, digests{true, true})

	bad := bytes.Clone(good)
	bad[3] ^= 1 // header changed under its digest
	if _, _, err := parsePDU(bad, digests{true, true}, 1<<20); !errors.Is(err, errHeaderDigest) {
		t.Errorf("header corruption: %v", err)
	}
	bad = bytes.Clone(good)
	bad[bhsBytes+digestBytes] ^= 1 // data changed under its digest
	if _, _, err := parsePDU(bad, digests{true, true}, 1<<20); !errors.Is(err, errDataDigest) {
		t.Errorf("data corruption: %v", err)
	}
	if _, _, err := parsePDU(good, digests{true, true}, 3); !errors.Is(err, errTooLong) {
		t.Errorf("data over the limit: %v", err)
	}
	var a PDU
	a.hdr[4] = 1 // one AHS word claiming a 200-byte segment
	b := append(a.hdr[:], 0, 200, 1, 0)
	if _, _, err := parsePDU(b, digests{}, 1<<20); !errors.Is(err, errAHS) {
		t.Errorf("bad AHS: %v", err)
	}
}

func TestParseText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []pair
		ok   bool
	}{
		{"", nil, true},
		{"A=1\x00", []pair{{"A", "1"}}, true},
		{"A=1\x00B=\x00", []pair{{"A", "1"}, {"B", ""}}, true},
		{"A=1", []pair{{"A", "1"}}, true},
		{"A=1\x00\x00\x00", []pair{{"A", "1"}}, true},
		{"A=b=c\x00", []pair{{"A", "b=c"}}, true},
		{"X-com.example.Key=v\x00", []pair{{"X-com.example.Key", "v"}}, true},
		{"A\x00", nil, false},
		{"=1\x00", nil, false},
		{"A=1\x00A=2\x00", nil, false},
		{"A B=1\x00", nil, false},
		{string(bytes.Repeat([]byte("k"), 64)) + "=1", nil, false},
		{"A=" + string(bytes.Repeat([]byte("v"), valueBytesMax+1)), nil, false},
	} {
		got, err := parseText([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("parseText(%.40q): err %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && len(got)+len(tc.want) > 0 && !equalPairs(got, tc.want) {
			t.Errorf("parseText(%.40q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func equalPairs(a, b []pair) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNegotiateOperational(t *testing.T) {
	for _, tc := range []struct{ key, value, want string }{
		{"HeaderDigest", "CRC32C,None", "CRC32C"},
		{"HeaderDigest", "None,CRC32C", "None"},
		{"DataDigest", "MD5", valReject},
		{"MaxRecvDataSegmentLength", "4096", "262144"},
		{"MaxRecvDataSegmentLength", "100", valReject},
		{"MaxBurstLength", "0x40000", "262144"},
		{"FirstBurstLength", "65536", "65536"},
		{"MaxOutstandingR2T", "64", "16"},
		{"ErrorRecoveryLevel", "2", "0"},
		{"MaxConnections", "8", "1"},
		{"InitialR2T", "No", "No"},
		{"ImmediateData", "Yes", "Yes"},
		{"ImmediateData", "maybe", valReject},
		{"DataPDUInOrder", "No", "Yes"},
		{"DefaultTime2Wait", "2", "2"},
		{"DefaultTime2Retain", "20", "0"},
		{"IFMarker", "Yes", "No"},
	} {
		p := defaultParams(262144)
		got, ok := negotiateOperational(&p, tc.key, tc.value)
		if !ok || got != tc.want {
			t.Errorf("%s=%s: got %q ok %v, want %q", tc.key, tc.value, got, ok, tc.want)
		}
	}
	p := defaultParams(262144)
	if _, ok := negotiateOperational(&p, "Bogus", "1"); ok {
		t.Error("unknown key claimed")
	}
}
