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
//	     6    2 flags: 1 reply, 2 sync (FUA), 4 more (Extents, Changed reply)
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
//	 7  Changed   vol, block, blocks, from, to u64                  runs as for Extents, bit 63 =
//	                                                                content at to may differ from
//	                                                                at from; flag more likewise
//	16  VersionsSince  vol, block, blocks, seq min u64          next block u64, then version
//	                                                            records (versions.go), at most
//	                                                            4 MiB; flag more if not covered
//	22  ApplyVersions  generation, vol u64, version records;    empty
//	                   flag sync
//	17–21         reserved, answered CodeUnsupported: set-retained (GC), snapshot
//	              hold, snapshot release, fence generation, drop volume
//	32  TargetHold     budget ns, epoch, hold timeout ns u64,       empty
//	                   volumes u16, per volume len u8 + name
//	33  TargetRelease  the same, hold timeout 0                 volumes u16, per volume window ns,
//	                                                            held u64, drained u8, reason len u8
//	                                                            + reason; error len u16 + text
//	34  TargetDrained  the same, epoch = the cut, timeout 0     1 byte: 1 drained, 0 not
//
// Ops 32–34 are a snapshot coordinator's calls to a target's part of the
// protocol (snapshot.go), served by a node with ServerOptions.Snapshot
// (any node with the target role; one without answers CodeUnsupported).
// The budget is the caller's remaining deadline: the node runs the call
// under a context with that timeout, so a hold call never waits past the
// coordinator's step deadline even when its reply is lost. A release
// reply carries its error text beside the holds, since a hold that ended
// before the release is both a report and an error.
//
// A reply with a non-zero status carries the node's error text (at most
// ErrorMessageMax bytes) instead of its payload. Codes map to the store's
// and this package's sentinel errors (codeOf on the node, Code.sentinels on
// the client), so errors.Is(err, store.ErrInvalid) and the like hold across
// the wire, and volume's classify sorts them as it would a local store's.
// The first frame each way is a Hello; the node's carries its limits, which
// the client obeys. An Extents or Changed reply that stops before the end
// of the range sets FlagMore; the client asks again from the end of its
// last run. A node whose Backend does not implement Changer answers
// Changed with CodeUnsupported.
//
// What the server does with a bad frame: a header whose magic or checksum
// is wrong, or a payload whose checksum is wrong, cannot be trusted, so the
// connection ends (after an error reply where the header is sound); a
// header of another version, or announcing more than PayloadBytesMax, is
// answered and the connection ends; a sound header with an unknown op, bad
// flags or a malformed body is answered with an error, its payload skipped,
// and the connection goes on. Nothing a peer sends makes it panic.
//
// # Bounds
//
//   - Payload ≤ PayloadBytesMax; Read and Write data ≤ RequestBytesMax
//     (16 MiB, the store's); Extents replies ≤ ExtentRunsMax runs; error
//     text ≤ ErrorMessageMax; names ≤ NameBytesMax.
//   - Server, per connection: at most InFlightMax requests (128) and
//     InFlightBytesMax payload bytes (64 MiB) between being read and their
//     reply being written; past either the reader stops reading, and TCP
//     pushes back on the client. A frame must arrive whole within
//     FrameTimeout (30 s) of its first byte, a reply batch be written within
//     it; an idle connection has no deadline. TLS and Hello must finish
//     within HandshakeTimeout (10 s). At most ConnsMax connections (1024)
//     are served at once; one more is closed as soon as it is accepted.
//   - Client, per connection: at most InFlightMax calls (128, or the node's
//     lower limit); more wait for a slot within their deadline. Every call
//     has a deadline: its context's, else CallTimeout (30 s). A connection
//     on which a call waited FrameTimeout with nothing received is dropped.
//     Redials after a failure back off from RedialBackoffMin (50 ms),
//     doubling to RedialBackoffMax (2 s); calls in between fail at once
//     with ErrUnavailable. Conns ≤ 16 connections per node.
//
// # Buffers
//
// The codec works on slices its caller owns and keeps none. The server
// reads each request's data into, and builds each reply in, a buffer from
// target.GetBuffer, returned when the reply is written or queued; Backend
// methods must not retain them. Frames go out through a frame writer per
// connection (framewriter.go): a frame written while another write is on
// the socket is copied into the next one and its writer goes on, the
// writer on the socket sending everything queued meanwhile; data over
// 64 KiB is not copied but written from the caller's slice once the
// socket is free, in one vectored write with the frames queued before it
// (writev on TCP; two writes on TLS). The payload checksum of a write that
// goes to several replicas is computed once: StartWrite leaves it in the
// volume.WriteMemo the fan-out shares, and the next replica's request
// carries it as is (each node still checks it against the bytes it
// read). So the client has copied or written a Write's data
// before Write (or StartWrite) returns, and the reader
// goroutine reads a Read's reply straight into the caller's slice: a call
// that gives up on its deadline first withdraws its slot (a later reply
// then matches nothing and is discarded), or, if the reply is already being
// read, waits for that read (bounded by FrameTimeout) — so a caller's
// buffer is never touched after its call returned. A call may therefore
// outlast its deadline by as long as writing its request (a large one
// waits for the socket write before it) or reading a reply already
// started takes; both are bounded by FrameTimeout, past which the
// connection breaks. Neither side allocates per
// request on the hot path (TestHotPathAllocs).
//
// # Goroutines
//
// Server.Serve runs the accept loop on the caller's goroutine and starts
// one goroutine per connection, which reads requests and owns that
// connection's workers (started on demand, at most InFlightMax): each
// worker executes a request on the Backend and writes its reply through
// the connection's frame writer (the reply joins the socket write in
// progress, if any). The connection
// goroutine waits for its workers before it returns; Close closes the
// listeners and connections (the Backend sees its context cancelled) and
// waits for every connection goroutine.
//
// A Client starts one reader goroutine per connection, which matches
// replies to calls, and one short-lived goroutine per dial. Calls run on
// their callers' goroutines: they write their request through the
// connection's frame writer and wait for the reader's signal. StartWrite
// (volume.Starter) splits a Write in two: it sends the request and
// returns, the call holding its slot, and the result's Wait waits; so a
// volume fans a write out to several nodes from one goroutine. Close fails
// every pending call with ErrClosed and waits for the readers and dials.
// All methods of Client and Server are safe for concurrent use.
//
// # Authentication
//
// With TLS (LoadTLS) both ends use TLS 1.3 and present certificates signed
// by the cluster CA; the server refuses a client without one before any
// frame is read. Plain TCP is for loopback only (the daemon's config
// enforces that).
//
// # Codec
//
// codec.go is pure: values to bytes and back, no I/O, allocation-free but
// for Hello's name. It is fuzzed (FuzzDecode): no input panics, and
// whatever a parser accepts re-encodes to the same bytes.
package wire
