package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Codec errors. Wrapped with context; classify with errors.Is.
var (
	// ErrMagic: a message does not start with the magic its position requires.
	// The stream cannot be resynchronised.
	ErrMagic = errors.New("nbd: bad magic")
	// ErrShort: fewer bytes than the fixed part of a message needs.
	ErrShort = errors.New("nbd: short message")
	// ErrMalformed: an option's data does not parse.
	ErrMalformed = errors.New("nbd: malformed option data")
)

var be = binary.BigEndian

// PutGreeting encodes the server's first message: NBDMAGIC, IHAVEOPT and the
// handshake flags.
func PutGreeting(b *[GreetingSize]byte, flags uint16) {
	be.PutUint64(b[0:], MagicInit)
	be.PutUint64(b[8:], MagicOption)
	be.PutUint16(b[16:], flags)
}

// ParseGreeting decodes the server's first message (client side).
func ParseGreeting(b []byte) (flags uint16, err error) {
	if len(b) < GreetingSize {
		return 0, ErrShort
	}
	if be.Uint64(b) != MagicInit || be.Uint64(b[8:]) != MagicOption {
		return 0, fmt.Errorf("greeting: %w", ErrMagic)
	}
	return be.Uint16(b[16:]), nil
}

// OptionHeader is the fixed part of an option request; Length bytes of data
// follow it.
type OptionHeader struct {
	Code   uint32
	Length uint32
}

// ParseOptionHeader decodes the 16-byte option header.
func ParseOptionHeader(b []byte) (OptionHeader, error) {
	if len(b) < OptionHeaderSize {
		return OptionHeader{}, ErrShort
	}
	if be.Uint64(b) != MagicOption {
		return OptionHeader{}, fmt.Errorf("option: %w", ErrMagic)
	}
	return OptionHeader{Code: be.Uint32(b[8:]), Length: be.Uint32(b[12:])}, nil
}

// AppendOption appends an option request with its data (client side).
func AppendOption(dst []byte, code uint32, data []byte) []byte {
	dst = be.AppendUint64(dst, MagicOption)
	dst = be.AppendUint32(dst, code)
	dst = be.AppendUint32(dst, uint32(len(data)))
	return append(dst, data...)
}

// OptionReplyHeader is the fixed part of an option reply; Length bytes of data
// follow it.
type OptionReplyHeader struct {
	Code   uint32 // the option replied to
	Type   uint32 // RepAck, RepInfo, RepErr...
	Length uint32
}

// AppendOptionReply appends an option reply with its data.
func AppendOptionReply(dst []byte, code, typ uint32, data []byte) []byte {
	dst = be.AppendUint64(dst, MagicOptionReply)
	dst = be.AppendUint32(dst, code)
	dst = be.AppendUint32(dst, typ)
	dst = be.AppendUint32(dst, uint32(len(data)))
	return append(dst, data...)
}

// ParseOptionReplyHeader decodes the 20-byte option reply header (client
// side).
func ParseOptionReplyHeader(b []byte) (OptionReplyHeader, error) {
	if len(b) < OptionReplyHeaderSize {
		return OptionReplyHeader{}, ErrShort
	}
	if be.Uint64(b) != MagicOptionReply {
		return OptionReplyHeader{}, fmt.Errorf("option reply: %w", ErrMagic)
	}
	return OptionReplyHeader{Code: be.Uint32(b[8:]), Type: be.Uint32(b[12:]), Length: be.Uint32(b[16:])}, nil
}

// Option is the decoded data of an option request. Which fields are set
// depends on Code.
type Option struct {
	Code    uint32
	Name    string   // OptExportName, OptInfo, OptGo, Opt{List,Set}MetaContext
	Infos   []uint16 // OptInfo, OptGo: information requests
	Queries []string // Opt{List,Set}MetaContext
	Empty   bool     // options without data (OptList, OptStructuredReply): no data was sent
}

// ParseOption decodes the data of option code. Unknown options and options
// whose data this package does not interpret decode to an Option with only
// Code (and Empty) set. Errors wrap ErrMalformed.
func ParseOption(code uint32, data []byte) (Option, error) {
	o := Option{Code: code, Empty: len(data) == 0}
	switch code {
	case OptExportName:
		if len(data) > StringBytesMax {
			return o, fmt.Errorf("export name of %d bytes: %w", len(data), ErrMalformed)
		}
		o.Name = string(data)
	case OptInfo, OptGo:
		name, rest, err := parseString(data)
		if err != nil {
			return o, fmt.Errorf("export name: %w", err)
		}
		if len(rest) < 2 {
			return o, fmt.Errorf("information request count: %w", ErrMalformed)
		}
		n := int(be.Uint16(rest))
		rest = rest[2:]
		if len(rest) != 2*n {
			return o, fmt.Errorf("%d information requests in %d bytes: %w", n, len(rest), ErrMalformed)
		}
		o.Name = name
		if n > 0 {
			o.Infos = make([]uint16, n)
			for i := range o.Infos {
				o.Infos[i] = be.Uint16(rest[2*i:])
			}
		}
	case OptListMetaContext, OptSetMetaContext:
		name, rest, err := parseString(data)
		if err != nil {
			return o, fmt.Errorf("export name: %w", err)
		}
		if len(rest) < 4 {
			return o, fmt.Errorf("query count: %w", ErrMalformed)
		}
		n := be.Uint32(rest)
		rest = rest[4:]
		// Each query takes at least its 4-byte length: bound n by the data
		// before allocating for it.
		if uint64(n)*4 > uint64(len(rest)) {
			return o, fmt.Errorf("%d queries in %d bytes: %w", n, len(rest), ErrMalformed)
		}
		o.Name = name
		if n > 0 {
			o.Queries = make([]string, n)
		}
		for i := range o.Queries {
			var q string
			q, rest, err = parseString(rest)
			if err != nil {
				return o, fmt.Errorf("query %d: %w", i, err)
			}
			o.Queries[i] = q
		}
		if len(rest) != 0 {
			return o, fmt.Errorf("%d trailing bytes: %w", len(rest), ErrMalformed)
		}
	}
	return o, nil
}

// parseString decodes a 32-bit length and that many bytes of string.
func parseString(b []byte) (s string, rest []byte, err error) {
	if len(b) < 4 {
		return "", b, ErrMalformed
	}
	n := be.Uint32(b)
	if n > StringBytesMax || uint64(n) > uint64(len(b)-4) {
		return "", b, fmt.Errorf("string of %d bytes in %d: %w", n, len(b)-4, ErrMalformed)
	}
	return string(b[4 : 4+n]), b[4+n:], nil
}

// appendString appends a 32-bit length and s.
func appendString(dst []byte, s string) []byte {
	dst = be.AppendUint32(dst, uint32(len(s)))
	return append(dst, s...)
}

// AppendInfoRequest appends the data of an OptInfo or OptGo request (client
// side).
func AppendInfoRequest(dst []byte, name string, infos ...uint16) []byte {
	dst = appendString(dst, name)
	dst = be.AppendUint16(dst, uint16(len(infos)))
	for _, i := range infos {
		dst = be.AppendUint16(dst, i)
	}
	return dst
}

// AppendMetaContextRequest appends the data of an Opt{List,Set}MetaContext
// request (client side).
func AppendMetaContextRequest(dst []byte, name string, queries ...string) []byte {
	dst = appendString(dst, name)
	dst = be.AppendUint32(dst, uint32(len(queries)))
	for _, q := range queries {
		dst = appendString(dst, q)
	}
	return dst
}

// AppendServer appends the data of a RepServer reply.
func AppendServer(dst []byte, name string) []byte { return appendString(dst, name) }

// AppendMetaContext appends the data of a RepMetaContext reply.
func AppendMetaContext(dst []byte, id uint32, name string) []byte {
	dst = be.AppendUint32(dst, id)
	return append(dst, name...)
}

// AppendInfoExport appends the data of an InfoExport RepInfo reply.
func AppendInfoExport(dst []byte, size uint64, flags uint16) []byte {
	dst = be.AppendUint16(dst, InfoExport)
	dst = be.AppendUint64(dst, size)
	return be.AppendUint16(dst, flags)
}

// AppendInfoString appends the data of an InfoName or InfoDescription
// RepInfo reply.
func AppendInfoString(dst []byte, info uint16, s string) []byte {
	dst = be.AppendUint16(dst, info)
	return append(dst, s...)
}

// AppendInfoBlockSize appends the data of an InfoBlockSize RepInfo reply.
func AppendInfoBlockSize(dst []byte, minimum, preferred, maximum uint32) []byte {
	dst = be.AppendUint16(dst, InfoBlockSize)
	dst = be.AppendUint32(dst, minimum)
	dst = be.AppendUint32(dst, preferred)
	return be.AppendUint32(dst, maximum)
}

// AppendExportNameReply appends the reply to OptExportName: size,
// transmission flags and, unless noZeroes, 124 bytes of zeroes.
func AppendExportNameReply(dst []byte, size uint64, flags uint16, noZeroes bool) []byte {
	dst = be.AppendUint64(dst, size)
	dst = be.AppendUint16(dst, flags)
	if !noZeroes {
		var zeroes [ExportNameReplySize - 10]byte
		dst = append(dst, zeroes[:]...)
	}
	return dst
}

// Request is a transmission request header. Length bytes of data follow it
// for CmdWrite.
type Request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// ParseRequest decodes a 28-byte request header.
func ParseRequest(b []byte) (Request, error) {
	if len(b) < RequestSize {
		return Request{}, ErrShort
	}
	if be.Uint32(b) != MagicRequest {
		return Request{}, fmt.Errorf("request magic %#x: %w", be.Uint32(b), ErrMagic)
	}
	return Request{
		Flags:  be.Uint16(b[4:]),
		Type:   be.Uint16(b[6:]),
		Cookie: be.Uint64(b[8:]),
		Offset: be.Uint64(b[16:]),
		Length: be.Uint32(b[24:]),
	}, nil
}

// Put encodes r into b[:RequestSize] (client side).
func (r *Request) Put(b []byte) {
	_ = b[RequestSize-1]
	be.PutUint32(b, MagicRequest)
	be.PutUint16(b[4:], r.Flags)
	be.PutUint16(b[6:], r.Type)
	be.PutUint64(b[8:], r.Cookie)
	be.PutUint64(b[16:], r.Offset)
	be.PutUint32(b[24:], r.Length)
}

// PutSimpleReply encodes a simple reply header into b[:SimpleReplySize].
func PutSimpleReply(b []byte, errno uint32, cookie uint64) {
	_ = b[SimpleReplySize-1]
	be.PutUint32(b, MagicSimpleReply)
	be.PutUint32(b[4:], errno)
	be.PutUint64(b[8:], cookie)
}

// StructuredReply is a structured reply chunk header; Length bytes of
// payload follow it.
type StructuredReply struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Length uint32
}

// Put encodes h into b[:StructuredReplySize].
func (h *StructuredReply) Put(b []byte) {
	_ = b[StructuredReplySize-1]
	be.PutUint32(b, MagicStructuredReply)
	be.PutUint16(b[4:], h.Flags)
	be.PutUint16(b[6:], h.Type)
	be.PutUint64(b[8:], h.Cookie)
	be.PutUint32(b[16:], h.Length)
}

// Reply is a decoded reply header, simple or structured (client side).
type Reply struct {
	Structured bool
	Errno      uint32 // simple replies
	Flags      uint16 // structured replies
	Type       uint16 // structured replies
	Cookie     uint64
	Length     uint32 // structured replies: payload bytes that follow
}

// ReplyHeaderSize returns the size of the reply header starting with magic,
// or 0 if magic is no reply magic.
func ReplyHeaderSize(magic uint32) int {
	switch magic {
	case MagicSimpleReply:
		return SimpleReplySize
	case MagicStructuredReply:
		return StructuredReplySize
	}
	return 0
}

// ParseReply decodes a simple or structured reply header (client side); b
// must hold ReplyHeaderSize(magic) bytes.
func ParseReply(b []byte) (Reply, error) {
	if len(b) < 4 {
		return Reply{}, ErrShort
	}
	magic := be.Uint32(b)
	n := ReplyHeaderSize(magic)
	switch {
	case n == 0:
		return Reply{}, fmt.Errorf("reply magic %#x: %w", magic, ErrMagic)
	case len(b) < n:
		return Reply{}, ErrShort
	case magic == MagicSimpleReply:
		return Reply{Errno: be.Uint32(b[4:]), Cookie: be.Uint64(b[8:])}, nil
	}
	return Reply{Structured: true, Flags: be.Uint16(b[4:]), Type: be.Uint16(b[6:]),
		Cookie: be.Uint64(b[8:]), Length: be.Uint32(b[16:])}, nil
}

// PutBlockDescriptor encodes one base:allocation extent into
// b[:BlockDescriptorSize].
func PutBlockDescriptor(b []byte, length, status uint32) {
	_ = b[BlockDescriptorSize-1]
	be.PutUint32(b, length)
	be.PutUint32(b[4:], status)
}

// ErrorPayloadSize returns the payload length of a ReplyError chunk with a
// message of msgBytes bytes (add 8 for ReplyErrorOffset).
func ErrorPayloadSize(msgBytes int) int { return 4 + 2 + msgBytes }

// PutErrorHead encodes the fixed head of an error chunk payload (error and
// message length) into b[:6]; the message and, for ReplyErrorOffset, the
// offset follow.
func PutErrorHead(b []byte, errno uint32, msgBytes int) {
	_ = b[5]
	be.PutUint32(b, errno)
	be.PutUint16(b[4:], uint16(msgBytes))
}
