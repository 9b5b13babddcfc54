// The reader: the session goroutine reads PDUs in the full feature phase,
// pings an idle initiator, and hands each PDU to its handler.

package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"time"
)

// readLoop reads PDUs until the connection ends.
func (s *session) readLoop() error {
	for {
		if err := s.waitReadable(); err != nil {
			return err
		}
		s.nc.SetReadDeadline(time.Now().Add(s.srv.opts.RequestTimeout))
		h := &s.rh
		if _, err := io.ReadFull(s.br, h[:]); err != nil {
			return pduErr(err)
		}
		ahs := s.hdrAHS[:h.ahsBytes()]
		if _, err := io.ReadFull(s.br, ahs); err != nil {
			return pduErr(err)
		}
		if s.d.header {
			var d [digestBytes]byte
			if _, err := io.ReadFull(s.br, d[:]); err != nil {
				return pduErr(err)
			}
			c := crc32.Update(crc32c(h[:]), castagnoli, ahs)
			if binary.LittleEndian.Uint32(d[:]) != c {
				return errHeaderDigest // ERL 0: the PDU boundary is lost
			}
		}
		if h.dataBytes() > s.p.recvDataSegmentMax {
			return fmt.Errorf("%w: %s with %d data bytes > MaxRecvDataSegmentLength %d",
				errProtocol, opName(h.opcode()), h.dataBytes(), s.p.recvDataSegmentMax)
		}
		if err := s.handle(h, ahs); err != nil {
			return pduErr(err)
		}
	}
}

// pduErr marks a read deadline hit in the middle of a PDU as a request
// timeout.
func pduErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", errRequestTimeout, err)
	}
	return err
}

// waitReadable waits for the next PDU, pinging an idle initiator with
// NOP-In and dropping it when the ping goes unanswered, or when a WRITE
// waits for Data-Out that does not come within RequestTimeout.
func (s *session) waitReadable() error {
	interval, timeout := s.srv.opts.NopInInterval, s.srv.opts.NopInTimeout
	for {
		if s.br.Buffered() > 0 {
			return nil
		}
		var deadline time.Time // none while pings are disabled
		switch {
		case interval >= 0 && s.pingOutstanding:
			deadline = s.pingSent.Add(timeout)
		case interval >= 0:
			deadline = time.Now().Add(interval)
		}
		collecting := s.collecting.Load() > 0
		if d := s.lastData.Add(s.srv.opts.RequestTimeout); collecting && (deadline.IsZero() || d.Before(deadline)) {
			deadline = d
		}
		s.nc.SetReadDeadline(deadline)
		_, err := s.br.Peek(1)
		if err == nil {
			return nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
		if collecting && s.collecting.Load() > 0 && time.Since(s.lastData) >= s.srv.opts.RequestTimeout {
			return fmt.Errorf("%w: no Data-Out for %v", errRequestTimeout, s.srv.opts.RequestTimeout)
		}
		if interval < 0 {
			continue
		}
		if s.pingOutstanding {
			if time.Since(s.pingSent) >= timeout {
				return fmt.Errorf("%w within %v", errNopTimeout, timeout)
			}
			continue
		}
		s.ping()
	}
}

// readData reads a data segment of len(dst) bytes with padding and digest
// into dst.
func (s *session) readData(dst []byte) error {
	if len(dst) == 0 {
		return nil
	}
	if _, err := io.ReadFull(s.br, dst); err != nil {
		return err
	}
	pad := &s.rpad
	n := pad4(len(dst))
	tail := pad[:n]
	if s.d.data {
		tail = pad[:n+digestBytes]
	}
	if _, err := io.ReadFull(s.br, tail); err != nil {
		return err
	}
	if s.d.data {
		c := crc32.Update(crc32c(dst), castagnoli, pad[:n])
		if binary.LittleEndian.Uint32(pad[n:]) != c {
			return errDataDigest
		}
	}
	return nil
}

// discard skips a data segment of n bytes.
func (s *session) discard(n int) error {
	if n == 0 {
		return nil
	}
	n += pad4(n)
	if s.d.data {
		n += digestBytes
	}
	_, err := s.br.Discard(n)
	return err
}

// readSmall reads a data segment into a new slice.
func (s *session) readSmall(h *header) ([]byte, error) {
	b := make([]byte, h.dataBytes())
	return b, s.readData(b)
}

// handle processes one PDU whose header (and AHS) has been read; it reads
// or skips the data segment.
func (s *session) handle(h *header, ahs []byte) error {
	if s.loggedOut {
		return s.discard(h.dataBytes())
	}
	switch h.opcode() {
	case opNOPOut:
		return s.nopOut(h)
	case opSCSICmd:
		return s.scsiCommand(h, ahs)
	case opDataOut:
		return s.dataOut(h)
	case opTaskMgmt:
		return s.taskMgmt(h)
	case opText:
		return s.textRequest(h)
	case opLogout:
		return s.logout(h)
	case opLogin:
		s.reject(h, rejectProtocolError)
		return s.discard(h.dataBytes())
	}
	s.reject(h, rejectNotSupported)
	return s.discard(h.dataBytes())
}
