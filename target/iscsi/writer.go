// The writer goroutine: it sends the PDUs the session queues, filling in
// StatSN, ExpCmdSN and MaxCmdSN, with digests and a write deadline.

package iscsi

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"runtime"
	"time"

	"cairn/target"
)

// outPDU is one PDU for the writer. The writer fills in StatSN, ExpCmdSN
// and MaxCmdSN when it sends it.
type outPDU struct {
	hdr        header
	data       []byte
	advance    bool    // consumes a StatSN (a status-bearing PDU)
	release    *[]byte // returned to the pool once written
	budget     int64   // returned to Options.Budget once written (with release)
	closeAfter bool    // logout response: signal logoutFlushed once written
}

// releasePDU returns what a sent or dropped PDU holds.
func (s *session) releasePDU(p *outPDU) {
	if p.release != nil {
		target.PutBuffer(p.release)
		p.release = nil
	}
	if p.budget > 0 {
		s.srv.opts.Budget.Release(p.budget)
		p.budget = 0
	}
}

// send queues a PDU for the writer; false if the session is ending (the
// caller then releases what the PDU holds).
func (s *session) send(p outPDU) bool {
	select {
	case s.out <- p:
		return true
	case <-s.stopping:
		return false
	}
}

// writeLoop is the writer goroutine: the only one writing to the socket
// after login.
func (s *session) writeLoop() {
	defer s.writerWG.Done()
	for {
		p := &s.wp
		select {
		case *p = <-s.out:
		case <-s.stopping:
			return
		}
		s.armWrite()
		err := s.writePDU(p)
		s.releasePDU(p)
		if err == nil && len(s.out) == 0 && !p.closeAfter && s.tasks.Load() > 1 {
			// Other commands are in flight: yield once before the
			// flush, so that responses of commands already runnable
			// (completed by the same store batch, typically) join
			// this socket write instead of each making its own. With
			// nothing runnable the yield returns at once; with one
			// command in flight there is none.
			runtime.Gosched()
		}
		if err == nil && (len(s.out) == 0 || p.closeAfter) {
			err = s.bw.Flush()
		}
		if err != nil {
			s.log.Debug("iscsi: write", "err", err)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.replyTimedOut.Store(true)
			}
			s.abandon()
			s.nc.Close() // the reader sees it and tears down
			return
		}
		if p.closeAfter {
			close(s.flushed)
		}
	}
}

// armWrite gives what is written next ReplyTimeout to drain, give or take
// an eighth: the deadline moves only when it comes closer than that, which
// keeps the per-PDU cost at one clock read. Writer goroutine only.
func (s *session) armWrite() {
	now, t := time.Now(), s.srv.opts.ReplyTimeout
	if s.writeDeadline.Sub(now) < t-t/8 {
		s.writeDeadline = now.Add(t)
		s.nc.SetWriteDeadline(s.writeDeadline)
	}
}

// writePDU encodes p onto the buffered writer with the current sequence
// numbers.
func (s *session) writePDU(p *outPDU) error {
	h := &p.hdr
	h.setU32(24, s.statSN)
	if p.advance {
		s.statSN++
	}
	w := s.cmdWindow.Load()
	h.setU32(28, uint32(w>>32))
	h.setU32(32, uint32(w))
	h[4] = 0
	h.setDataBytes(len(p.data))
	if _, err := s.bw.Write(h[:]); err != nil {
		return err
	}
	d := &s.wd
	if s.d.header {
		binary.LittleEndian.PutUint32(d[:], crc32c(h[:]))
		if _, err := s.bw.Write(d[:]); err != nil {
			return err
		}
	}
	if len(p.data) == 0 {
		return nil
	}
	// Renew the deadline as the data goes out, so that ReplyTimeout cuts
	// off an initiator that stops reading, not one with a large
	// MaxRecvDataSegmentLength that reads slowly. Data of directDataBytes
	// or more goes to the socket straight from p once the header is out:
	// through the buffer (the header in it kept bufio from writing
	// directly), every byte was copied once more.
	direct := len(p.data) >= directDataBytes
	if direct {
		if err := s.bw.Flush(); err != nil {
			return err
		}
	}
	for d := p.data; len(d) > 0; {
		n := min(len(d), writeChunkBytes)
		var err error
		if direct {
			_, err = s.nc.Write(d[:n])
		} else {
			_, err = s.bw.Write(d[:n])
		}
		if err != nil {
			return err
		}
		d = d[n:]
		if len(d) > 0 {
			s.armWrite()
		}
	}
	padN := pad4(len(p.data))
	if _, err := s.bw.Write(zeroPad[:padN]); err != nil {
		return err
	}
	if s.d.data {
		c := crc32.Update(0, castagnoli, p.data)
		c = crc32.Update(c, castagnoli, zeroPad[:padN])
		binary.LittleEndian.PutUint32(d[:], c)
		if _, err := s.bw.Write(d[:]); err != nil {
			return err
		}
	}
	return nil
}

// zeroPad pads data segments to 4 bytes; never written to.
var zeroPad [4]byte
