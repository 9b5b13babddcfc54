package iscsi

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"
)

// rawInitiator is a minimal initiator for protocol tests.
type rawInitiator struct {
	t      *testing.T
	nc     net.Conn
	br     *bufio.Reader
	d      digests
	name   string // InitiatorName; "" means iqn.2026-01.test:raw
	cmdSN  uint32
	statSN uint32
}

func dial(t *testing.T, addr string) *rawInitiator {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawInitiator{t: t, nc: nc, br: bufio.NewReader(nc), cmdSN: 1}
}

func (r *rawInitiator) send(p *PDU) {
	r.t.Helper()
	if _, err := r.nc.Write(appendPDU(nil, p, r.d)); err != nil {
		r.t.Fatal(err)
	}
}

// recv reads one PDU; ok false on EOF or error.
func (r *rawInitiator) recv() (PDU, bool) {
	var h header
	if _, err := readFull(r.br, h[:]); err != nil {
		return PDU{}, false
	}
	rest := make([]byte, wireBytes(h.ahsBytes(), h.dataBytes(), r.d)-bhsBytes)
	if _, err := readFull(r.br, rest); err != nil {
		return PDU{}, false
	}
	p, _, err := parsePDU(append(h[:], rest...), r.d, 1<<24)
	if err != nil {
		r.t.Fatalf("parse: %v", err)
	}
	return p, true
}

func readFull(br *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := br.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// login logs in to iqn with the given operational keys and returns the
// final response.
func (r *rawInitiator) login(iqn string, tsih uint16, keys ...string) PDU {
	r.t.Helper()
	var p PDU
	p.hdr.setOpcode(opLogin | flagImmediate)
	p.hdr[1] = 0x80 | stageOperational<<2 | stageFullFeature
	copy(p.hdr[8:14], []byte{0x40, 0, 0, 1, 2, 3})
	p.hdr.setU16(14, tsih)
	p.hdr.setU32(24, r.cmdSN)
	name := r.name
	if name == "" {
		name = "iqn.2026-01.test:raw"
	}
	pairs := []pair{{"InitiatorName", name}, {"TargetName", iqn}}
	for _, k := range keys {
		kk, v, _ := bytes.Cut([]byte(k), []byte("="))
		pairs = append(pairs, pair{string(kk), string(v)})
	}
	p.data = appendText(nil, pairs)
	r.send(&p)
	resp, ok := r.recv()
	if !ok {
		r.t.Fatal("no login response")
	}
	r.statSN = resp.hdr.u32(24) + 1
	return resp
}

func (r *rawInitiator) scsi(itt uint32, immediate bool, cdb []byte, edtl int, read, write bool, data []byte) {
	var p PDU
	p.hdr.setOpcode(opSCSICmd)
	if immediate {
		p.hdr[0] |= flagImmediate
	}
	p.hdr[1] = 0x80 | 0x01
	if read {
		p.hdr[1] |= 0x40
	}
	if write {
		p.hdr[1] |= 0x20
	}
	p.hdr.setITT(itt)
	p.hdr.setU32(20, uint32(edtl))
	p.hdr.setU32(24, r.cmdSN)
	if !immediate {
		r.cmdSN++
	}
	copy(p.hdr[32:], cdb)
	p.data = data
	r.send(&p)
}

func testUnitReady() []byte { return make([]byte, 6) }

// TestNopOutWindow: a non-immediate NOP-Out consumes a CmdSN and is
// answered, and later commands still run (gotgt parked them forever).
func TestNopOutWindow(t *testing.T) {
	_, addr, _ := testServer(t, Options{CommandsInFlightMax: 4})
	r := dial(t, addr)
	resp := r.login(testIQN, 0)
	if resp.hdr.u16(36) != 0 {
		t.Fatalf("login status %#x", resp.hdr.u16(36))
	}
	if exp, maxSN := resp.hdr.u32(28), resp.hdr.u32(32); exp != 1 || maxSN != 4 {
		t.Fatalf("login window [%d, %d], want [1, 4]", exp, maxSN)
	}
	for i := range 10 {
		var p PDU
		p.hdr.setOpcode(opNOPOut)
		p.hdr[1] = 0x80
		p.hdr.setITT(uint32(100 + i))
		p.hdr.setU32(20, reservedTag)
		p.hdr.setU32(24, r.cmdSN)
		r.cmdSN++
		p.data = []byte("ping")
		r.send(&p)
		in, ok := r.recv()
		if !ok || in.hdr.opcode() != opNOPIn || in.hdr.itt() != uint32(100+i) || string(in.data) != "ping" {
			t.Fatalf("NOP-Out %d: got %s itt %#x data %q", i, opName(in.hdr.opcode()), in.hdr.itt(), in.data)
		}
		if exp := in.hdr.u32(28); exp != r.cmdSN {
			t.Fatalf("NOP-In ExpCmdSN %d, want %d", exp, r.cmdSN)
		}
		if maxSN := in.hdr.u32(32); maxSN != r.cmdSN+3 {
			t.Fatalf("NOP-In MaxCmdSN %d, want %d", maxSN, r.cmdSN+3)
		}
		if sn := in.hdr.u32(24); sn != r.statSN {
			t.Fatalf("StatSN %d, want %d", sn, r.statSN)
		}
		r.statSN++
	}
	// Several commands in flight at once, then their responses.
	for i := range 4 {
		r.scsi(uint32(i), false, testUnitReady(), 0, false, false, nil)
	}
	got := map[uint32]byte{}
	for range 4 {
		in, ok := r.recv()
		if !ok || in.hdr.opcode() != opSCSIResp {
			t.Fatalf("got %s", opName(in.hdr.opcode()))
		}
		got[in.hdr.itt()] = in.hdr[3]
	}
	checks := 0 // the power-on unit attention goes to exactly one of them
	for _, st := range got {
		if st == statusCheckCondition {
			checks++
		}
	}
	if len(got) != 4 || checks != 1 {
		t.Fatalf("statuses %v", got)
	}
	// A command beyond MaxCmdSN is dropped silently.
	w := r.cmdSN
	r.cmdSN += 10
	r.scsi(50, false, testUnitReady(), 0, false, false, nil)
	r.cmdSN = w
	r.scsi(51, false, testUnitReady(), 0, false, false, nil)
	in, ok := r.recv()
	if !ok || in.hdr.itt() != 51 || in.hdr[3] != statusGood {
		t.Fatalf("after an out-of-window command: itt %d status %#x", in.hdr.itt(), in.hdr[3])
	}
}

// TestUnknownTSIH: a login naming a session that does not exist is refused
// with SESSION DOES NOT EXIST, and the server lives on.
func TestUnknownTSIH(t *testing.T) {
	s, addr, _ := testServer(t, Options{})
	r := dial(t, addr)
	resp := r.login(testIQN, 0xbeef)
	if st := resp.hdr.u16(36); st != statusNoSession {
		t.Fatalf("status %#x, want %#x", st, statusNoSession)
	}
	if _, ok := r.recv(); ok {
		t.Fatal("connection still open after a login reject")
	}
	r2 := dial(t, addr)
	resp2 := r2.login(testIQN, 0)
	if st := resp2.hdr.u16(36); st != 0 || s.Sessions(testIQN) != 1 {
		t.Fatalf("second login: status %#x, sessions %d", st, s.Sessions(testIQN))
	}
}

// TestDigestsAndR2T: with both digests and InitialR2T=Yes, a write is
// solicited by R2T and lands, and reads come back with digests.
func TestDigestsAndR2T(t *testing.T) {
	_, addr, devs := testServer(t, Options{})
	r := dial(t, addr)
	resp := r.login(testIQN, 0, "HeaderDigest=CRC32C", "DataDigest=CRC32C", "InitialR2T=Yes", "ImmediateData=No",
		"MaxBurstLength=4096", "MaxRecvDataSegmentLength=1024", "MaxOutstandingR2T=2")
	if resp.hdr.u16(36) != 0 {
		t.Fatalf("login status %#x", resp.hdr.u16(36))
	}
	r.d = digests{true, true}
	r.scsi(1, false, testUnitReady(), 0, false, false, nil) // consume the unit attention
	r.recv()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB: 4 bursts
	cdb := []byte{scsiWrite10, 0, 0, 0, 0, 8, 0, 0, 32, 0}
	r.scsi(2, false, cdb, len(data), false, true, nil)
	for {
		in, ok := r.recv()
		if !ok {
			t.Fatal("connection closed")
		}
		if in.hdr.opcode() == opSCSIResp {
			if in.hdr[3] != statusGood {
				t.Fatalf("write status %#x sense % x", in.hdr[3], in.data)
			}
			break
		}
		if in.hdr.opcode() != opR2T {
			t.Fatalf("got %s", opName(in.hdr.opcode()))
		}
		off, n := int(in.hdr.u32(40)), int(in.hdr.u32(44))
		for sn, o := uint32(0), off; o < off+n; sn, o = sn+1, o+1024 {
			var p PDU
			p.hdr.setOpcode(opDataOut)
			if o+1024 >= off+n {
				p.hdr[1] = 0x80
			}
			p.hdr.setITT(2)
			p.hdr.setU32(20, in.hdr.u32(20))
			p.hdr.setU32(36, sn)
			p.hdr.setU32(40, uint32(o))
			p.data = data[o:min(o+1024, off+n)]
			r.send(&p)
		}
	}
	got := make([]byte, len(data))
	if err := devs[testIQN].ReadAt(t.Context(), got, 8*512); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("device does not hold the write: %v", err)
	}
	cdb[0] = scsiRead10
	r.scsi(3, false, cdb, len(data), true, false, nil)
	var back []byte
	for {
		in, ok := r.recv()
		if !ok || in.hdr.opcode() != opDataIn {
			t.Fatalf("got %s", opName(in.hdr.opcode()))
		}
		if len(in.data) > 1024 {
			t.Fatalf("Data-In of %d bytes > MaxRecvDataSegmentLength", len(in.data))
		}
		back = append(back, in.data...)
		if in.hdr[1]&0x01 != 0 {
			break
		}
	}
	if !bytes.Equal(back, data) {
		t.Fatal("read back differs")
	}
}

// TestKeepalive: an idle connection is pinged; one that does not answer is
// dropped.
func TestKeepalive(t *testing.T) {
	s, addr, _ := testServer(t, Options{NopInInterval: 50 * time.Millisecond, NopInTimeout: 100 * time.Millisecond})
	r := dial(t, addr)
	r.login(testIQN, 0)
	in, ok := r.recv()
	if !ok || in.hdr.opcode() != opNOPIn || in.hdr.itt() != reservedTag {
		t.Fatalf("want a NOP-In ping, got %s", opName(in.hdr.opcode()))
	}
	var p PDU // answer it
	p.hdr.setOpcode(opNOPOut | flagImmediate)
	p.hdr[1] = 0x80
	p.hdr.setITT(reservedTag)
	p.hdr.setU32(20, in.hdr.u32(20))
	p.hdr.setU32(24, r.cmdSN)
	r.send(&p)
	in, ok = r.recv() // the next ping; leave it unanswered
	if !ok || in.hdr.opcode() != opNOPIn {
		t.Fatal("no second ping")
	}
	if _, ok := r.recv(); ok {
		t.Fatal("unanswered ping did not drop the connection")
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.Sessions(testIQN) != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := s.Sessions(testIQN); n != 0 {
		t.Fatalf("%d sessions after the drop", n)
	}
}

// TestConnectionLossAborts: commands in flight when the connection drops
// are cancelled, and Close waits for them.
func TestConnectionLossAborts(t *testing.T) {
	s, addr, devs := testServer(t, Options{})
	devs[testIQN].SetLatency(time.Hour)
	r := dial(t, addr)
	r.login(testIQN, 0)
	devs[testIQN].SetLatency(0)
	r.scsi(1, false, testUnitReady(), 0, false, false, nil) // unit attention
	r.recv()
	devs[testIQN].SetLatency(time.Hour)
	for i := range 8 {
		r.scsi(uint32(10+i), false, []byte{scsiRead10, 0, 0, 0, 0, 0, 0, 0, 8, 0}, 4096, true, false, nil)
	}
	time.Sleep(50 * time.Millisecond)
	r.nc.Close()
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return: commands were not aborted")
	}
}
