package membership

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func fullMeta() Meta {
	return Meta{
		Name:  "node-1.rack2",
		Roles: []string{RoleStorage, RoleTarget, RoleManager},
		Addrs: Addrs{
			Storage: "10.0.0.1:7800",
			Raft:    "10.0.0.1:7801",
			Admin:   "127.0.0.1:7900",
			NBD:     "10.0.0.1:10809",
			ISCSI:   "[fd00::1]:3260",
		},
		CapacityBytes: 4 << 40,
		UsedBytes:     123456789,
		Zone:          "eu-west-1a",
	}
}

func TestMetaRoundTrip(t *testing.T) {
	maxRoles := Meta{Name: "n"}
	for i := range metaRolesMax {
		maxRoles.Roles = append(maxRoles.Roles, "role"+string(rune('a'+i)))
	}
	tests := []struct {
		name string
		meta Meta
	}{
		{"full", fullMeta()},
		{"name only", Meta{Name: "n"}},
		{"max roles", maxRoles},
		{"max uint64", Meta{Name: "n", CapacityBytes: ^uint64(0), UsedBytes: ^uint64(0)}},
		{"unicode zone", Meta{Name: "n", Zone: "zürich-ost"}},
		{"long string", Meta{Name: "n", Zone: strings.Repeat("z", metaStringBytesMax)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := EncodeMeta(tt.meta)
			if err != nil {
				t.Fatalf("EncodeMeta: %v", err)
			}
			if len(b) > MetaBytesMax {
				t.Fatalf("encoded %d bytes, over %d", len(b), MetaBytesMax)
			}
			got, err := DecodeMeta(b)
			if err != nil {
				t.Fatalf("DecodeMeta: %v", err)
			}
			if !reflect.DeepEqual(got, tt.meta) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tt.meta)
			}
			// The result must not alias the input.
			for i := range b {
				b[i] = 0xff
			}
			if !reflect.DeepEqual(got, tt.meta) {
				t.Fatalf("decoded meta changed with its input buffer")
			}
		})
	}
}

func TestMetaLeavingFlag(t *testing.T) {
	b, err := encodeMeta(fullMeta(), flagLeaving)
	if err != nil {
		t.Fatal(err)
	}
	m, flags, err := decodeMeta(b)
	if err != nil || flags != flagLeaving || !reflect.DeepEqual(m, fullMeta()) {
		t.Fatalf("decodeMeta = %+v, %#x, %v", m, flags, err)
	}
	if m, err := DecodeMeta(b); err != nil || !reflect.DeepEqual(m, fullMeta()) {
		t.Fatalf("DecodeMeta of a leaving node's meta = %+v, %v", m, err)
	}
	plain, _ := EncodeMeta(fullMeta())
	if _, flags, _ := decodeMeta(plain); flags != 0 {
		t.Fatalf("EncodeMeta set flags %#x", flags)
	}
}

func TestEncodeMetaRefuses(t *testing.T) {
	long := strings.Repeat("x", metaStringBytesMax)
	tests := []struct {
		name string
		meta Meta
		want error
	}{
		{"empty name", Meta{}, ErrMetaInvalid},
		{"too many roles", Meta{Name: "n", Roles: make([]string, metaRolesMax+1)}, ErrMetaInvalid},
		{"empty role", Meta{Name: "n", Roles: []string{""}}, ErrMetaInvalid},
		{"duplicate role", Meta{Name: "n", Roles: []string{RoleStorage, RoleStorage}}, ErrMetaInvalid},
		{"long role", Meta{Name: "n", Roles: []string{strings.Repeat("r", metaRoleBytesMax+1)}}, ErrMetaInvalid},
		{"string over 255", Meta{Name: "n", Zone: long + "x"}, ErrMetaInvalid},
		{"not UTF-8", Meta{Name: "n", Addrs: Addrs{NBD: "\xff\xfe"}}, ErrMetaInvalid},
		{"over 512 bytes", Meta{Name: "n", Zone: long, Addrs: Addrs{Storage: long}}, ErrMetaTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := EncodeMeta(tt.meta)
			if !errors.Is(err, tt.want) {
				t.Fatalf("EncodeMeta = %d bytes, %v; want %v", len(b), err, tt.want)
			}
		})
	}
}

func TestDecodeMetaRefuses(t *testing.T) {
	valid, err := EncodeMeta(fullMeta())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"unknown version", append([]byte{2}, valid[1:]...)},
		{"version 0", append([]byte{0}, valid[1:]...)},
		{"trailing byte", append(bytes.Clone(valid), 0)},
		{"too many roles", []byte{1, 0, 1, 'n', metaRolesMax + 1}},
		{"string past end", []byte{1, 0, 200, 'n'}},
		{"empty name", []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"unknown flag", append([]byte{1, 2}, valid[2:]...)},
		// name "n", no roles, 5 empty addresses, capacity 0 as a
		// two-byte varint.
		{"non-minimal varint", []byte{1, 0, 1, 'n', 0, 0, 0, 0, 0, 0, 0x80, 0x00, 0, 0}},
		{"varint overflow", append([]byte{1, 0, 1, 'n', 0, 0, 0, 0, 0, 0}, bytes.Repeat([]byte{0xff}, 11)...)},
		{"over 512 bytes", append(bytes.Clone(valid), make([]byte, MetaBytesMax)...)},
		{"duplicate role", []byte{1, 0, 1, 'n', 2, 1, 'r', 1, 'r', 0, 0, 0, 0, 0, 0, 0, 0}},
	}
	for i := range len(valid) {
		tests = append(tests, struct {
			name string
			b    []byte
		}{"truncated", valid[:i]})
	}
	for _, tt := range tests {
		if m, err := DecodeMeta(tt.b); !errors.Is(err, ErrMetaInvalid) {
			t.Errorf("%s: DecodeMeta(%x) = %+v, %v; want ErrMetaInvalid", tt.name, tt.b, m, err)
		}
	}
	// The hand-made inputs above differ from a valid one only where named.
	if _, err := DecodeMeta([]byte{1, 0, 1, 'n', 2, 1, 'r', 1, 's', 0, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatalf("control input: %v", err)
	}
}

// FuzzDecodeMeta: DecodeMeta never panics, and whatever it accepts
// re-encodes to exactly the same bytes.
func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{fullMeta(), {Name: "n"}, {Name: "a", Roles: []string{"x"}, UsedBytes: 300}} {
		b, err := EncodeMeta(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 255})
	if b, err := encodeMeta(fullMeta(), flagLeaving); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, flags, err := decodeMeta(b)
		if err != nil {
			if !errors.Is(err, ErrMetaInvalid) {
				t.Fatalf("error %v does not wrap ErrMetaInvalid", err)
			}
			return
		}
		again, err := encodeMeta(m, flags)
		if err != nil {
			t.Fatalf("accepted %x but cannot re-encode %+v: %v", b, m, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("not canonical: %x decodes to %+v which encodes to %x", b, m, again)
		}
	})
}
