// Package nbd serves target.Devices over the Network Block Device protocol
// (NetworkBlockDevice/nbd doc/proto.md), fixed newstyle only, with TLS by
// NBD_OPT_STARTTLS.
//
// It owns two layers:
//
//   - The codec (proto.go, codec.go): constants and pure functions that
//     encode and decode greetings, options, option replies, requests and
//     simple/structured replies on byte slices. No I/O; fuzzed.
//   - The server (server.go, negotiation.go, conn.go): option haggling as a
//     pure state machine (negotiation), then transmission on three kinds of
//     goroutine per connection.
//
// Negotiation supports EXPORT_NAME, INFO, GO (NBD_INFO_EXPORT, _NAME,
// _BLOCK_SIZE: 512 / device block size / RequestBytesMax), LIST, ABORT,
// STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT with
// base:allocation and, for a device that is a target.ChangeMapper,
// cairn:changed:<base> (one per base the device names; "cairn:" and
// "cairn:changed:" list them all; a set selects the first known one asked
// for), and STARTTLS; anything else gets NBD_REP_ERR_UNSUP. In a
// cairn:changed reply, status flag 1 (StateChanged) marks blocks that
// changed since the base; 0, blocks that read as they did at it. With both
// contexts selected, BLOCK_STATUS answers base:allocation's chunk (id 1)
// then cairn:changed's (id 2, with NBD_REPLY_FLAG_DONE).
//
// TLS (Options.TLS, Options.TLSMode): off (STARTTLS refused), optional (a
// client may upgrade) or require (the document's FORCEDTLS: before TLS,
// every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, and
// EXPORT_NAME hangs up). STARTTLS is acknowledged, then the TLS handshake
// must finish within 10 s; a client that sent bytes after STARTTLS before
// its reply is hung up on (they were plain text), and what was negotiated
// before TLS (structured replies, meta contexts) is forgotten. A second
// STARTTLS gets NBD_REP_ERR_INVALID. Socket deadlines and Close act on the
// TCP connection beneath TLS.
//
// Exports served elsewhere: if Options.Exports implements target.Locator,
// INFO, GO and the meta context options for an export it locates get
// NBD_REP_ERR_UNKNOWN with a message naming the node and its address (qemu
// prints it; libnbd logs it with LIBNBD_DEBUG=1); EXPORT_NAME, which
// cannot fail with a message, hangs up and logs it. Option data is
// bounded (64 KiB parsed; up to 1 MiB skipped and refused with
// NBD_REP_ERR_TOO_BIG; beyond, or past 4096 options, the client is hung up
// on) and the whole handshake must finish within 30 s.
//
// Transmission: the connection's servers (started on demand, at most
// InFlightMax; the connection's own goroutine is the first) take turns
// reading: the one holding the reading role reads a request, checks it
// (flags, read-only, range, size) and reads a WRITE payload into a pooled
// buffer, hands the role on and executes the request on the device itself,
// so requests run concurrently and a request at queue depth 1 crosses no
// goroutine between its arrival and its reply; one writer goroutine sends replies in completion
// order, flushing when no further reply is ready. Plain writes that arrive
// together (already buffered whole, up to 32 of at most 64 KiB each) are
// read together and, on a device that stores a batch together now
// (target.BatchWriter), executed with one call and answered with one socket
// write; each is still its own request with its own reply. A failed request is an
// error reply and the connection stays up; only a bad request magic, a WRITE
// too large to skip, or a socket error end it. NBD_CMD_DISC, a server
// Close and a broken socket all stop the reader first and answer (or drop)
// every in-flight request before the socket is closed.
//
// Bounds under abuse: payload bytes in flight are also drawn from a
// target.Budget shared with every other connection (and front end) given
// the same Options.Budget; while it is spent readers stop reading, so
// clients see TCP backpressure. A client that does not read its replies for
// ReplyTimeout is disconnected and its requests' buffers and budget are
// returned. A request whose header has begun must be read whole (header,
// then WRITE payload) within RequestTimeout; a connection idle between
// requests is not timed out. Past ConnectionsMax or ConnectionsPerAddrMax a
// connection gets the greeting and is closed, with a log line. Stats counts
// open connections and disconnects by reason.
//
// Invariants:
//   - At most InFlightMax requests and InFlightBytesMax payload bytes per
//     connection, and Budget.Max bytes across connections, are between
//     being read and their reply being written; past any bound the reader
//     stops reading. A request larger than the budget waits for it to be
//     empty and then takes all of it.
//   - Every request gets exactly one reply (none for DISC), whose chunks are
//     never interleaved with another reply's.
//   - Errors map to protocol error values in one function, Errno.
//   - The steady-state hot path (read request, execute, write reply)
//     allocates nothing: fixed headers live in the pooled request, payloads
//     in size-class pools (TestHotPathAllocs, TestCodecAllocs).
//
// Goroutines and ownership: Serve runs on the caller's goroutine and starts
// one goroutine per connection; ServeConn serves on the caller's. Each
// connection goroutine owns its servers and writer and waits for them before
// it returns; Close waits for every connection goroutine. Server methods are
// safe for concurrent use. Device methods are called from server
// goroutines, many at once, with a context cancelled when the connection is
// force-closed (Disconnect, Close past its grace period, broken socket).
package nbd
