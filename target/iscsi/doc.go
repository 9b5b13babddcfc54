// Package iscsi serves target.Devices over iSCSI (RFC 7143) as SCSI block
// devices (SPC-4, SBC-3): each target IQN is one device, exported as LUN 0.
//
// It owns four layers:
//
//   - The codec (pdu.go, text.go): PDU framing (48-byte BHS, AHS, padded
//     data segment, CRC32C header and data digests) and key=value text, as
//     pure functions on byte slices. No I/O; fuzzed (FuzzParsePDU,
//     FuzzParseText).
//   - Login (login.go, params.go): a pure state machine from Login Request
//     to Login Response PDUs — security stage with CHAP (MD5, one-way and
//     mutual, per-target secrets from Options.CHAP), operational
//     negotiation of every RFC 7143 §13 key (digests None/CRC32C,
//     MaxRecvDataSegmentLength both ways, bursts, R2T, ERL 0, one
//     connection per session). A login to a target attached to another
//     node (Options.Targets is a target.Locator that locates it) is
//     redirected: status 0x0101 (target moved temporarily) with
//     TargetAddress=host:port,1, which libiscsi and open-iscsi follow;
//     SendTargets lists such targets at that portal. Transcripts in
//     testdata/login.
//   - Sessions and the SCSI device server. server.go accepts connections;
//     a session (session.go: login, teardown) reads PDUs (reader.go) and
//     sends them from one writer (writer.go); SCSI commands (command.go)
//     are admitted through the command window (cmdsn.go) and receive
//     their Data-Out by R2T (dataout.go), both pure state machines, then
//     run on the session's workers; task management (taskmgmt.go) and the
//     NOP, Text and Logout PDUs (control.go) beside them. The SCSI device
//     server (scsi.go, inquiry.go, sense.go) sees the I_T nexus of a
//     command (nexus.go: identity, unit attentions, last capacity), never
//     the session.
//   - Reservations (pr.go, reservation.go): the SCSI side of the
//     volume's reservations. The state machine, its store and the check
//     every front end's requests pass belong to package reservation; a
//     device that keeps its own (reservation.Holder, as a volume does) is
//     changed through its Unit, so that a reservation taken here fences
//     NBD clients too; for any other device a target keeps a Unit over
//     Options.Reservations. This layer classifies commands for the
//     conflict table (SPC-4 table 66), runs PERSISTENT RESERVE IN/OUT and
//     SPC-2 RESERVE/RELEASE (not persistent; released by I_T nexus loss,
//     LUN reset and target reset) against the Unit, establishes the unit
//     attentions and PREEMPT AND ABORT aborts of an outcome, and maps
//     reservation errors to sense data. Every command's context carries
//     its session's I_T nexus (reservation.WithNexus), which the device
//     checks again.
//
// Goroutines: Serve starts one goroutine per connection. It logs in, then
// reads PDUs (the reader); it starts one writer goroutine, the only one
// that writes to the socket afterwards and the one that stamps StatSN,
// ExpCmdSN and MaxCmdSN on every PDU as it sends it; worker goroutines
// that run SCSI commands, started when a command finds none idle and kept
// until the session ends (never more than commands can be in flight); and
// helper goroutines for task management and logout waits. The
// connection goroutine waits for all of them before it returns;
// Close closes every connection and waits for every connection goroutine.
// Server methods are safe for concurrent use. Device methods are called
// from workers, many at once, with a context cancelled when the command is
// aborted or its connection ends.
//
// Invariants:
//   - The command window is CommandsInFlightMax wide: MaxCmdSN = ExpCmdSN
//   - 1 + CommandsInFlightMax - (non-immediate commands not yet
//     answered). Commands outside the window are dropped silently; every
//     accepted command (SCSI, NOP-Out, Text, Logout, task management) is
//     answered exactly once, unless a task management function or the end
//     of the connection aborted it — then it is never answered.
//   - Data-Out lands directly in the command's buffer at its offset, in
//     order (DataPDUInOrder, DataSequenceInOrder = Yes), checked against
//     DataSN and the R2T it answers; a bad one ends the command with
//     CHECK CONDITION, never the connection. At ERL 0 a header digest error
//     or a socket error ends the connection; its commands are aborted and
//     nothing not done is acknowledged.
//   - Buffers are bounded: TransferBytesMax per command, InFlightBytesMax
//     per session (TASK SET FULL past it), Budget.Max across sessions (the
//     reader waits for it: TCP backpressure; a session with a WRITE still
//     receiving Data-Out answers TASK SET FULL instead, so that its reader
//     never waits on itself), MaxRecvDataSegmentLength per PDU received,
//     64 KiB of text per request. A command's budget goes back with its
//     buffer: after the last Data-In is written, after a WRITE's data is on
//     the device, or when the command is aborted or the connection ends.
//   - Abuse bounds: an initiator that does not read for ReplyTimeout is
//     dropped; a PDU begun must be read whole within RequestTimeout, and a
//     WRITE receiving data must get Data-Out at least that often; past
//     ConnectionsMax or ConnectionsPerAddrMax a login is answered 0x0302
//     (out of resources) and the connection closed. Stats counts open
//     connections and disconnects by reason.
//   - Errors map to sense data in one function, senseFor.
//   - An I_T nexus is (lower-cased initiator name, ISID); the target port
//     is implicit (one target per unit, one portal group), so ALL_TG_PT is
//     accepted and changes nothing. Registrations are bounded by
//     RegistrationsMax, encoded state by ReservationStateBytesMax. A PR OUT
//     is acknowledged only after the Unit's store saved it (else HARDWARE
//     ERROR / INTERNAL TARGET FAILURE, and the state is reloaded from the
//     store at the next command). State is
//     always saved, whatever APTPL says (a cairnd restart is an I_T nexus
//     loss, not a power loss of the volume); APTPL is refused without a
//     store. Conflict checks come after unit attentions.
//   - COMPARE AND WRITE is the device's (target.Comparer): a volume holds
//     the range's block locks exclusively, so no write from any front end
//     lands between its compare and its write; writes take no lock here.
//     A device that cannot compare and write gets INVALID COMMAND
//     OPERATION CODE, and the command is not reported as supported.
//
// Not implemented: REGISTER AND MOVE and SPEC_I_PT (declined: INVALID
// FIELD IN CDB / PARAMETER LIST), compatible reservation handling (CRH 0:
// RESERVE/RELEASE conflict while any registration exists), more than one
// connection per session,
// ERL 1 and 2 (SNACK is rejected), task attributes other than SIMPLE
// (ORDERED and HEAD OF QUEUE run as SIMPLE), protection information.
package iscsi
