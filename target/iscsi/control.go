// Control PDUs of the full feature phase: NOP-Out/NOP-In pings, Text
// Requests (SendTargets), Logout, Reject.

package iscsi

import (
	"fmt"
	"net"
	"strings"
	"time"

	"cairn/target"
)

// ping sends a NOP-In that asks for a NOP-Out.
func (s *session) ping() {
	s.mu.Lock()
	s.pingTTT = s.newTTTLocked()
	s.mu.Unlock()
	s.pingOutstanding, s.pingSent = true, time.Now()
	var p outPDU
	p.hdr.setOpcode(opNOPIn)
	p.hdr[1] = flagFinal
	p.hdr.setITT(reservedTag)
	p.hdr.setU32(20, s.pingTTT)
	s.send(p)
}

// reject sends a Reject PDU carrying the offending header.
func (s *session) reject(h *header, reason byte) {
	var p outPDU
	p.hdr.setOpcode(opReject)
	p.hdr[1] = flagFinal
	p.hdr[2] = reason
	p.hdr.setITT(reservedTag)
	p.data = append([]byte(nil), h[:]...)
	p.advance = true
	s.send(p)
}

// nopOut answers a ping, or takes the answer to ours.
func (s *session) nopOut(h *header) error {
	if h.itt() == reservedTag { // the answer to our NOP-In
		if h.u32(20) == s.pingTTT {
			s.pingOutstanding = false
		}
		return s.discard(h.dataBytes())
	}
	if !h.immediate() && !s.acceptCmdSN(h.cmdSN(), false) {
		return s.discard(h.dataBytes())
	}
	data, err := s.readSmall(h)
	if err != nil {
		return err
	}
	var p outPDU
	p.hdr.setOpcode(opNOPIn)
	p.hdr[1] = flagFinal
	p.hdr.setLUN(h.lun())
	p.hdr.setITT(h.itt())
	p.hdr.setU32(20, reservedTag)
	p.data = data[:min(len(data), s.p.sendDataSegmentMax)]
	p.advance = true
	s.send(p)
	return nil
}

// textRequest answers Text Requests: SendTargets, with continuation both
// ways (RFC 7143 §11.10, §12.3).
func (s *session) textRequest(h *header) error {
	data, err := s.readSmall(h)
	if err != nil {
		return err
	}
	if !h.immediate() && !s.acceptCmdSN(h.cmdSN(), false) {
		return nil
	}
	itt, ttt := h.itt(), h.u32(20)
	reply := func(data []byte, final bool, ttt uint32) {
		var p outPDU
		p.hdr.setOpcode(opTextResp)
		if final {
			p.hdr[1] = flagFinal
		} else {
			p.hdr[1] = 0x40 // C
		}
		p.hdr.setITT(itt)
		p.hdr.setU32(20, ttt)
		p.data = data
		p.advance = true
		s.send(p)
	}
	newTTT := func() uint32 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.newTTTLocked()
	}
	if ttt != reservedTag && ttt == s.text.ttt && len(s.text.reply) > 0 && len(data) == 0 {
		s.sendTextChunk(reply, newTTT)
		return nil
	}
	s.text.reply = nil
	if len(s.text.request)+len(data) > textBytesMax {
		s.text.request = nil
		s.reject(h, rejectProtocolError)
		return nil
	}
	s.text.request = append(s.text.request, data...)
	if h[1]&0x40 != 0 { // C: more request text follows
		s.text.ttt = newTTT()
		reply(nil, false, s.text.ttt)
		return nil
	}
	pairs, err := parseText(s.text.request)
	s.text.request = nil
	if err != nil {
		s.reject(h, rejectProtocolError)
		return nil
	}
	out := s.textAnswer(pairs)
	s.text.reply = appendText(nil, out)
	s.sendTextChunk(reply, newTTT)
	return nil
}

// textAnswer answers the keys of a Text Request: SendTargets lists
// targets; any other key is NotUnderstood.
func (s *session) textAnswer(pairs []pair) []pair {
	var out []pair
	for _, kv := range pairs {
		if kv.key != "SendTargets" {
			out = append(out, pair{kv.key, valNotUnderstood})
			continue
		}
		out = append(out, s.sendTargets(kv.value)...)
	}
	return out
}

// sendTargets answers SendTargets=value (RFC 7143 §12.3): All lists every
// target in a discovery session, and the session's own target otherwise;
// a name lists that target if this portal serves or can locate it.
func (s *session) sendTargets(value string) []pair {
	var names []string
	switch {
	case value == "All" && s.discovery:
		names = s.srv.opts.Targets.List()
	case value == "All", value == "":
		if s.targetName != "" {
			names = []string{s.targetName}
		}
	default:
		if _, ok := s.srv.opts.Targets.Lookup(value); ok {
			names = []string{value}
		} else if _, _, ok := s.srv.locate(value); ok {
			names = []string{value}
		}
	}
	here := s.portalAddress()
	_, locator := s.srv.opts.Targets.(target.Locator)
	var out []pair
	for _, n := range names {
		// A target attached to another node is listed at that node's
		// portal.
		addr := here
		if locator {
			if _, ok := s.srv.opts.Targets.Lookup(n); !ok {
				if _, there, ok := s.srv.locate(n); ok {
					addr = there
				}
			}
		}
		out = append(out, pair{"TargetName", n}, pair{"TargetAddress", addr + "," + portalGroupTag})
	}
	return out
}

// sendTextChunk sends the next piece of a Text Response.
func (s *session) sendTextChunk(reply func([]byte, bool, uint32), newTTT func() uint32) {
	r := s.text.reply
	if len(r) <= s.p.sendDataSegmentMax {
		s.text.reply, s.text.ttt = nil, 0
		reply(r, true, reservedTag)
		return
	}
	s.text.reply = r[s.p.sendDataSegmentMax:]
	s.text.ttt = newTTT()
	reply(r[:s.p.sendDataSegmentMax], false, s.text.ttt)
}

// portalAddress is the address the initiator reached us on, as TargetAddress
// wants it.
func (s *session) portalAddress() string {
	a := s.nc.LocalAddr().String()
	if tcp, ok := s.nc.LocalAddr().(*net.TCPAddr); ok && tcp.IP.To4() == nil && !strings.HasPrefix(a, "[") {
		a = fmt.Sprintf("[%s]:%d", tcp.IP, tcp.Port)
	}
	return a
}

// logout ends the session: wait for the commands in flight to be answered,
// then answer the logout and close.
func (s *session) logout(h *header) error {
	if err := s.discard(h.dataBytes()); err != nil {
		return err
	}
	if !h.immediate() && !s.acceptCmdSN(h.cmdSN(), false) {
		return nil
	}
	reason := h[1] & 0x7f
	var p outPDU
	p.hdr.setOpcode(opLogoutResp)
	p.hdr[1] = flagFinal
	p.hdr.setITT(h.itt())
	p.advance = true
	if reason == 2 { // remove the connection for recovery: not at ERL 0
		p.hdr[2] = 2
		s.send(p)
		return nil
	}
	s.loggedOut = true
	s.mu.Lock()
	var collecting []*task
	for _, t := range s.mu.tasks {
		if t.state.Load() == taskCollecting {
			collecting = append(collecting, t)
		}
	}
	s.mu.Unlock()
	for _, t := range collecting {
		s.abort(t, true)
	}
	s.tasksWG.Wait()
	s.auxWG.Wait()
	p.closeAfter = true
	if !s.send(p) {
		return errLogout
	}
	select {
	case <-s.flushed:
	case <-s.stopping:
	case <-time.After(s.srv.opts.ReplyTimeout):
	}
	return errLogout
}
