package membership

import (
	"encoding/binary"
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"
)

// Roles a process can announce. They match configs' role names; other
// non-empty names are carried too, so that a newer peer's role does not
// make its metadata unreadable to an older one.
const (
	RoleStorage = "storage"
	RoleTarget  = "target"
	RoleManager = "manager"
)

// Bounds of the metadata encoding.
const (
	// MetaBytesMax is the largest encoded Meta: memberlist's limit on node
	// metadata (memberlist.MetaMaxSize).
	MetaBytesMax = memberlist.MetaMaxSize
	// metaStringBytesMax bounds every string field; its length is one byte.
	metaStringBytesMax = 255
	// metaRolesMax bounds the number of roles.
	metaRolesMax = 8
	// metaRoleBytesMax bounds one role name.
	metaRoleBytesMax = 32
	// metaVersion1 is the only encoding so far. A new field means a new
	// version; the decoder keeps decoding every older one.
	metaVersion1 = 1
)

// metaFlags are wire bits about the node that are not part of Meta.
type metaFlags uint8

const (
	// flagLeaving: the node is leaving on purpose. memberlist v0.7.0 reports
	// a departure without saying whether the node left or failed (its
	// Node.State is never set), so Leave first announces this flag and a
	// departure of a node whose last metadata carries it is a leave.
	flagLeaving metaFlags = 1 << 0
	// metaFlagsKnown are the bits this version understands; others are
	// refused (a new bit means a new version).
	metaFlagsKnown = flagLeaving
)

// Meta is what a node tells the pool about itself, carried in gossip as
// memberlist node metadata. Addresses are host:port strings, empty for a
// service the node does not run.
type Meta struct {
	// Name is the node's name; Start fills it from Options.NodeName and a
	// peer's metadata with another name is refused (Member.MetaErr).
	Name string
	// Roles are RoleStorage, RoleTarget, RoleManager (or newer roles).
	Roles []string
	Addrs Addrs
	// CapacityBytes and UsedBytes describe a storage node's block store.
	CapacityBytes uint64
	UsedBytes     uint64
	// Zone is the failure domain placement spreads replicas over.
	Zone string
}

// Addrs are the service addresses a node announces.
type Addrs struct {
	Storage string // node RPC (backend/wire): a storage node's data, a target's snapshot calls
	Raft    string // catalog Raft transport (managers)
	Admin   string // admin HTTP/JSON API
	NBD     string
	ISCSI   string
}

// HasRole reports whether m announces role.
func (m Meta) HasRole(role string) bool { return slices.Contains(m.Roles, role) }

// clone returns a deep copy of m, so that a Member never shares the
// caller's slice.
func (m Meta) clone() Meta {
	m.Roles = slices.Clone(m.Roles)
	return m
}

// validate checks the rules both the encoder and the decoder apply.
func (m *Meta) validate() error {
	if err := validString("name", m.Name); err != nil {
		return err
	}
	if m.Name == "" {
		return fmt.Errorf("%w: empty name", ErrMetaInvalid)
	}
	if len(m.Roles) > metaRolesMax {
		return fmt.Errorf("%w: %d roles, at most %d", ErrMetaInvalid, len(m.Roles), metaRolesMax)
	}
	for i, r := range m.Roles {
		if r == "" || len(r) > metaRoleBytesMax || !utf8.ValidString(r) {
			return fmt.Errorf("%w: role %q: want 1-%d bytes of UTF-8", ErrMetaInvalid, r, metaRoleBytesMax)
		}
		if slices.Index(m.Roles, r) < i {
			return fmt.Errorf("%w: role %q listed twice", ErrMetaInvalid, r)
		}
	}
	for _, f := range m.Addrs.fields() {
		if err := validString(f.name, *f.v); err != nil {
			return err
		}
	}
	return validString("zone", m.Zone)
}

func validString(field, s string) error {
	if len(s) > metaStringBytesMax {
		return fmt.Errorf("%w: %s is %d bytes, at most %d", ErrMetaInvalid, field, len(s), metaStringBytesMax)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not UTF-8", ErrMetaInvalid, field)
	}
	return nil
}

type addrField struct {
	name string
	v    *string
}

// fields lists the addresses in their encoding order.
func (a *Addrs) fields() [5]addrField {
	return [5]addrField{
		{"storage address", &a.Storage},
		{"raft address", &a.Raft},
		{"admin address", &a.Admin},
		{"nbd address", &a.NBD},
		{"iscsi address", &a.ISCSI},
	}
}

// EncodeMeta returns m's wire form (version 1):
//
//	version   1 byte (1)
//	flags     1 byte (bit 0: leaving; set by Pool.Leave)
//	name      string
//	roles     1 byte count, then that many strings
//	addresses 5 strings: storage, raft, admin, nbd, iscsi
//	capacity  uvarint bytes
//	used      uvarint bytes
//	zone      string
//
// where a string is a 1-byte length and that many bytes of UTF-8. It fails
// with ErrMetaInvalid for a field out of bounds and ErrMetaTooLarge past
// MetaBytesMax.
func EncodeMeta(m Meta) ([]byte, error) { return encodeMeta(m, 0) }

func encodeMeta(m Meta, flags metaFlags) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	if flags&^metaFlagsKnown != 0 {
		panic(fmt.Sprintf("membership: encodeMeta: unknown flags %#x", flags))
	}
	b := make([]byte, 0, 64)
	b = append(b, metaVersion1, byte(flags))
	b = appendString(b, m.Name)
	b = append(b, byte(len(m.Roles)))
	for _, r := range m.Roles {
		b = appendString(b, r)
	}
	for _, f := range m.Addrs.fields() {
		b = appendString(b, *f.v)
	}
	b = binary.AppendUvarint(b, m.CapacityBytes)
	b = binary.AppendUvarint(b, m.UsedBytes)
	b = appendString(b, m.Zone)
	if len(b) > MetaBytesMax {
		return nil, fmt.Errorf("%w: %d bytes encoded, memberlist carries at most %d", ErrMetaTooLarge, len(b), MetaBytesMax)
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// DecodeMeta parses metadata a peer gossiped. Any input is safe: garbage
// is an error wrapping ErrMetaInvalid, never a panic. The result shares no
// memory with b. Only canonical encodings are accepted (minimal varints, no
// trailing bytes), so DecodeMeta∘EncodeMeta is the identity on valid input.
func DecodeMeta(b []byte) (Meta, error) {
	m, _, err := decodeMeta(b)
	return m, err
}

func decodeMeta(b []byte) (Meta, metaFlags, error) {
	var m Meta
	if len(b) > MetaBytesMax {
		return m, 0, fmt.Errorf("%w: %d bytes, at most %d", ErrMetaInvalid, len(b), MetaBytesMax)
	}
	d := metaDecoder{b: b}
	switch v := d.byte(); {
	case d.err != nil:
		return Meta{}, 0, d.err
	case v != metaVersion1:
		return Meta{}, 0, fmt.Errorf("%w: unknown version %d", ErrMetaInvalid, v)
	}
	flags := metaFlags(d.byte())
	if d.err == nil && flags&^metaFlagsKnown != 0 {
		return Meta{}, 0, fmt.Errorf("%w: unknown flags %#x", ErrMetaInvalid, flags)
	}
	m.Name = d.string()
	if n := int(d.byte()); d.err == nil {
		if n > metaRolesMax {
			return Meta{}, 0, fmt.Errorf("%w: %d roles, at most %d", ErrMetaInvalid, n, metaRolesMax)
		}
		if n > 0 {
			m.Roles = make([]string, 0, n)
		}
		for range n {
			m.Roles = append(m.Roles, d.string())
		}
	}
	for _, f := range m.Addrs.fields() {
		*f.v = d.string()
	}
	m.CapacityBytes = d.uvarint()
	m.UsedBytes = d.uvarint()
	m.Zone = d.string()
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrMetaInvalid, len(d.b))
	}
	if d.err != nil {
		return Meta{}, 0, d.err
	}
	if err := m.validate(); err != nil {
		return Meta{}, 0, err
	}
	return m, flags, nil
}

// metaDecoder consumes b; after the first error every read returns zero.
type metaDecoder struct {
	b   []byte
	err error
}

func (d *metaDecoder) short(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated at %s", ErrMetaInvalid, what)
	}
	d.b = nil
}

func (d *metaDecoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.short("a length byte")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *metaDecoder) string() string {
	n := int(d.byte())
	if d.err != nil {
		return ""
	}
	if len(d.b) < n {
		d.short("a string")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *metaDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: bad varint", ErrMetaInvalid)
		d.b = nil
		return 0
	}
	var tmp [binary.MaxVarintLen64]byte
	if binary.PutUvarint(tmp[:], v) != n {
		d.err = fmt.Errorf("%w: non-minimal varint", ErrMetaInvalid)
		d.b = nil
		return 0
	}
	d.b = d.b[n:]
	return v
}
