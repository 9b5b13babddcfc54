// Package targettest provides fakes of the target package's interfaces for
// tests of front ends: MemDevice, a sparse in-memory target.Device and
// target.Mapper with injectable latency and errors; and TLS, a throwaway
// CA with server and client certificates laid out for libnbd.
//
// It is imported only by tests. MemDevice is safe for concurrent use; its
// knobs (SetLatency, SetFault) may be turned while I/O is in flight.
package targettest
