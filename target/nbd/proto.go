package nbd

// Wire constants of the NBD protocol, named as in the protocol document
// (NetworkBlockDevice/nbd doc/proto.md) without the NBD_ prefix.

// Magic numbers.
const (
	MagicInit            uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	MagicOption          uint64 = 0x49484156454f5054 // "IHAVEOPT"
	MagicOptionReply     uint64 = 0x0003e889045565a9
	MagicRequest         uint32 = 0x25609513
	MagicSimpleReply     uint32 = 0x67446698
	MagicStructuredReply uint32 = 0x668e33ef
)

// Handshake flags (server, 16 bits).
const (
	FlagFixedNewstyle uint16 = 1 << 0
	FlagNoZeroes      uint16 = 1 << 1
)

// Client flags (32 bits).
const (
	ClientFlagFixedNewstyle uint32 = 1 << 0
	ClientFlagNoZeroes      uint32 = 1 << 1
)

// Transmission flags (16 bits).
const (
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagSendDF          uint16 = 1 << 7
	FlagCanMultiConn    uint16 = 1 << 8
	FlagSendResize      uint16 = 1 << 9
	FlagSendCache       uint16 = 1 << 10
	FlagSendFastZero    uint16 = 1 << 11
)

// Option codes.
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = 2
	OptList            uint32 = 3
	OptPeekExport      uint32 = 4
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = 6
	OptGo              uint32 = 7
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
	OptExtendedHeaders uint32 = 11
)

// Option reply types. Errors have bit 31 set.
const (
	RepAck         uint32 = 1
	RepServer      uint32 = 2
	RepInfo        uint32 = 3
	RepMetaContext uint32 = 4

	RepFlagError        uint32 = 1 << 31
	RepErrUnsup         uint32 = RepFlagError | 1
	RepErrPolicy        uint32 = RepFlagError | 2
	RepErrInvalid       uint32 = RepFlagError | 3
	RepErrPlatform      uint32 = RepFlagError | 4
	RepErrTLSReqd       uint32 = RepFlagError | 5
	RepErrUnknown       uint32 = RepFlagError | 6
	RepErrShutdown      uint32 = RepFlagError | 7
	RepErrBlockSizeReqd uint32 = RepFlagError | 8
	RepErrTooBig        uint32 = RepFlagError | 9
	RepErrExtHeaderReqd uint32 = RepFlagError | 10
)

// Information types of NBD_OPT_INFO / NBD_OPT_GO.
const (
	InfoExport      uint16 = 0
	InfoName        uint16 = 1
	InfoDescription uint16 = 2
	InfoBlockSize   uint16 = 3
)

// Commands.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags.
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
)

// Structured reply flags and types.
const (
	ReplyFlagDone uint16 = 1 << 0

	ReplyNone        uint16 = 0
	ReplyOffsetData  uint16 = 1
	ReplyOffsetHole  uint16 = 2
	ReplyBlockStatus uint16 = 5
	ReplyError       uint16 = 1<<15 | 1
	ReplyErrorOffset uint16 = 1<<15 | 2
)

// Error values of the error field of replies. They are the protocol's, not
// the host's errno values.
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// base:allocation status flags.
const (
	StateHole uint32 = 1 << 0
	StateZero uint32 = 1 << 1
)

// MetaContextAllocation is the allocation metadata context.
const MetaContextAllocation = "base:allocation"

// The cairn namespace's metadata contexts: cairn:changed:<base> reports,
// for a device that is a target.ChangeMapper, which blocks changed since
// base (a snapshot). Status flag StateChanged set: the blocks changed
// (they may read differently than at base); clear: they read as at base.
const (
	MetaContextNamespace            = "cairn"
	MetaContextChangedPrefix        = "cairn:changed:"
	StateChanged             uint32 = 1 << 0
)

// Sizes of fixed-size messages, in bytes.
const (
	GreetingSize          = 18  // NBDMAGIC, IHAVEOPT, handshake flags
	ClientFlagsSize       = 4   // client flags
	OptionHeaderSize      = 16  // IHAVEOPT, option, length
	OptionReplyHeaderSize = 20  // magic, option, type, length
	ExportNameReplySize   = 134 // size, flags, 124 zeroes
	RequestSize           = 28  // magic, flags, type, cookie, offset, length
	SimpleReplySize       = 16  // magic, error, cookie
	StructuredReplySize   = 20  // magic, flags, type, cookie, length
	BlockDescriptorSize   = 8   // length, status
)

// StringBytesMax bounds every string on the wire (export names, queries,
// messages), per the protocol document.
const StringBytesMax = 4096
