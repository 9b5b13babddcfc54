// Package wire is the data RPC between a target and a storage node: a
// framed binary protocol over TCP (or TLS 1.3 with mutual authentication),
// its codec, the node's Server and the target's Client.
//
// # Frames
//
// Every frame is a 32-byte header and a payload of Length bytes. Integers
// are big-endian.
//
//	offset size field
//	     0    4 magic 0x43524e57 ("CRNW")
//	     4    1 version (1)
//	     5    1 op
//	     6    2 flags: 1 reply, 2 sync (FUA), 4 more (Extents reply)
//	     8    8 request id, chosen by the client, echoed by the reply
//	    16    4 payload length, at most PayloadBytesMax (16 MiB + 32)
//	    20    2 status: 0 or an error Code (replies only)
//	    22    2 reserved, 0
//	    24    4 crc32c of the payload (0 when empty)
//	    28    4 crc32c of header bytes [0, 28)
//
// Bytes [0, 16) keep this layout in every version, so that a peer of
// another version can be answered with a CodeVersion error frame (the server
// then hangs up) and either side reports ErrVersion.
//
// Payloads (requests → replies):
//
//	op  name      request payload                                   reply payload
//	 1  Hello     features u64, request bytes max u32,              the same, with the node's
//	              in-flight max u32, name len u8, name              name and limits
//	 2  Read      vol, block, epoch u64, blocks u32 (≤ 4096)        blocks × 4096 bytes
//	 3  Write     vol, block, epoch, seq u64, data (≤ 16 MiB)       empty
//	 4  Zero      vol, block, blocks, epoch, seq u64                empty
//	 5  Sync      empty                                             empty
//	 6  Extents   vol, block, blocks, epoch u64                     runs of start u64, count u64
//	                                                                (bit 63 = allocated), at most
//	                                                                4096; flag more if not covered
//	16–21         reserved: versions-since-seq (replica catch-up), set-retained (GC),
//	              snapshot hold, release, fence generation, drop volume
//
// A reply with a non-zero status carries the node's error text (at most
// ErrorMessageMax bytes) instead of its payload. Codes map to the store's
// and this package's sentinel errors (codeOf on the node, Code.sentinels on
// the client), so errors.Is(err, store.ErrInvalid) and the like hold across
// the wire. The first frame each way is a Hello; the node's Hello carries
// its limits, which the client obeys.
//
// # Codec
//
// codec.go is pure: values to bytes and back, no I/O, allocation-free but
// for Hello's name. It is fuzzed (FuzzDecode): no input panics, and
// whatever a parser accepts re-encodes to the same bytes.
package wire
