package reservation

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"strings"
)

// Nexus names the requester of a command, an I_T nexus in SCSI terms: the
// initiator port, as an initiator name (lower-cased) and ISID. The target
// port is implicit: one target per volume and one target portal group.
//
// The zero Nexus is a requester that cannot register: an NBD connection,
// or any caller whose context carries no nexus. A reservation that
// excludes unregistered requesters excludes it.
type Nexus struct {
	Initiator string
	ISID      [6]byte
}

// NewNexus returns the nexus of an initiator port; initiator names compare
// case-insensitively (RFC 3722).
func NewNexus(initiator string, isid [6]byte) Nexus {
	return Nexus{Initiator: strings.ToLower(initiator), ISID: isid}
}

// String renders the nexus as an iSCSI initiator port name
// ("iqn...,i,0x<ISID>"), or "(none)" for the zero Nexus.
func (n Nexus) String() string {
	if n == (Nexus{}) {
		return "(none)"
	}
	return n.Initiator + ",i,0x" + hex.EncodeToString(n.ISID[:])
}

// protocolIdentifierISCSI is the PROTOCOL IDENTIFIER of iSCSI (SPC-4
// table 444).
const protocolIdentifierISCSI = 0x5

// transportID encodes the initiator port as an iSCSI TransportID, format
// 01b (SPC-4 §7.6.4.6): "name,i,0xISID", NUL-terminated, padded to 4.
func (n Nexus) transportID() []byte {
	s := n.String()
	l := len(s) + 1
	l += (4 - l&3) & 3
	l = max(l, 20)
	b := make([]byte, 4+l)
	b[0] = 0x40 | protocolIdentifierISCSI
	binary.BigEndian.PutUint16(b[2:], uint16(l))
	copy(b[4:], s)
	return b
}

type nexusKey struct{}

// WithNexus returns a context that carries n as the requester of every
// device call made with it. A front end sets it once per session or
// connection: the value is looked up only when a reservation exists.
func WithNexus(ctx context.Context, n Nexus) context.Context {
	return context.WithValue(ctx, nexusKey{}, n)
}

// NexusFrom returns the requester a context carries, or the zero Nexus.
func NexusFrom(ctx context.Context) Nexus {
	n, _ := ctx.Value(nexusKey{}).(Nexus)
	return n
}
