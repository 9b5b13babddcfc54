package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// initiator is the smallest iSCSI initiator that can run SCSI commands
// with immediate data: the libiscsi tools cannot hold a persistent
// reservation while another client works, so this one does, over a
// session of its own.
type initiator struct {
	t      *testing.T
	nc     net.Conn
	br     *bufio.Reader
	cmdSN  uint32
	statSN uint32
	itt    uint32
}

// loginISCSI logs name in to iqn at addr (no authentication, no digests).
func loginISCSI(t *testing.T, addr, name, iqn string) *initiator {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(2 * time.Minute))
	in := &initiator{t: t, nc: nc, br: bufio.NewReader(nc), cmdSN: 1}
	var h [48]byte
	h[0] = 0x03 | 0x40                         // Login Request, immediate
	h[1] = 0x80 | 1<<2 | 3                     // Transit, operational → full feature
	copy(h[8:14], []byte{0x40, 0, 0, 0, 0, 7}) // ISID
	binary.BigEndian.PutUint32(h[24:], in.cmdSN)
	keys := "InitiatorName=" + name + "\x00TargetName=" + iqn + "\x00SessionType=Normal\x00" +
		"HeaderDigest=None\x00DataDigest=None\x00ImmediateData=Yes\x00"
	in.send(h, []byte(keys))
	rh, _ := in.recv()
	if rh[0]&0x3f != 0x23 || rh[36] != 0 || rh[1]&0x80 == 0 {
		t.Fatalf("login to %s: opcode %#x status %#x/%#x flags %#x", iqn, rh[0], rh[36], rh[37], rh[1])
	}
	in.statSN = binary.BigEndian.Uint32(rh[24:]) + 1
	return in
}

func (in *initiator) send(h [48]byte, data []byte) {
	in.t.Helper()
	h[5], h[6], h[7] = byte(len(data)>>16), byte(len(data)>>8), byte(len(data))
	pdu := append(h[:], data...)
	pdu = append(pdu, make([]byte, (4-len(data)%4)%4)...)
	if _, err := in.nc.Write(pdu); err != nil {
		in.t.Fatal(err)
	}
}

// recv reads one PDU: its header and data segment.
func (in *initiator) recv() ([48]byte, []byte) {
	in.t.Helper()
	var h [48]byte
	if _, err := io.ReadFull(in.br, h[:]); err != nil {
		in.t.Fatalf("iSCSI read: %v", err)
	}
	n := int(h[5])<<16 | int(h[6])<<8 | int(h[7])
	data := make([]byte, int(h[4])*4+n+(4-n%4)%4)
	if _, err := io.ReadFull(in.br, data); err != nil {
		in.t.Fatalf("iSCSI read: %v", err)
	}
	return h, data[int(h[4])*4:][:n]
}

// command runs one SCSI command on LUN 0 with data (if any) as immediate
// data and returns its status and, for CHECK CONDITION, the sense key.
func (in *initiator) command(cdb []byte, data []byte) (status, senseKey byte) {
	in.t.Helper()
	in.itt++
	var h [48]byte
	h[0] = 0x01
	h[1] = 0x80 | 0x01 // Final, SIMPLE
	if data != nil {
		h[1] |= 0x20
	}
	binary.BigEndian.PutUint32(h[16:], in.itt)
	binary.BigEndian.PutUint32(h[20:], uint32(len(data)))
	binary.BigEndian.PutUint32(h[24:], in.cmdSN)
	binary.BigEndian.PutUint32(h[28:], in.statSN)
	in.cmdSN++
	copy(h[32:], cdb)
	in.send(h, data)
	for {
		rh, rd := in.recv()
		if rh[0]&0x3f != 0x21 { // NOP-In and the like
			continue
		}
		in.statSN = binary.BigEndian.Uint32(rh[24:]) + 1
		if rh[3] == 0x02 && len(rd) >= 2+3 {
			senseKey = rd[2+2] & 0x0f
		}
		return rh[3], senseKey
	}
}

// prOut runs PERSISTENT RESERVE OUT and fails the test unless it is GOOD.
func (in *initiator) prOut(action byte, typ byte, key, sark uint64) {
	in.t.Helper()
	cdb := []byte{0x5f, action, typ, 0, 0, 0, 0, 0, 24, 0}
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:], key)
	binary.BigEndian.PutUint64(p[8:], sark)
	if st, key := in.command(cdb, p); st != 0 {
		in.t.Fatalf("PERSISTENT RESERVE OUT %#x: status %#x sense key %#x", action, st, key)
	}
}

// TestReservationFencesNBD: a Write Exclusive – Registrants Only
// reservation taken over iSCSI is the volume's: an NBD client (a nexus
// that cannot register) is refused writes with a permission error and
// still reads; the holder's iSCSI writes land; once released, NBD writes
// again. volume show lists the holder.
func TestReservationFencesNBD(t *testing.T) {
	need(t, "qemu-io")
	t.Parallel()
	p := startDaemon(t)
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", p.uri("vol0"))

	const name = "iqn.2026-12.test:fencer"
	in := loginISCSI(t, p.iscsi, name, "iqn.2026-11.test.cairn:vol0")
	in.command(make([]byte, 6), nil) // TEST UNIT READY: takes the power-on unit attention
	const key = 0xfe11ce
	in.prOut(0x00, 0, 0, key)    // REGISTER
	in.prOut(0x01, 0x05, key, 0) // RESERVE, Write Exclusive – Registrants Only

	show, _, code := p.cli("volume", "show", "vol0")
	if code != 0 || !strings.Contains(show, "Write Exclusive, registrants only") ||
		!strings.Contains(show, "holder") || !strings.Contains(show, name+",i,0x400000000007 key 0xfe11ce") {
		t.Errorf("volume show does not list the reservation and its holder:\n%s", show)
	}

	out, _ := shErr("qemu-io", "-f", "raw", "-c", "write -P 0x22 0 4k", p.uri("vol0"))
	if !strings.Contains(out, "Operation not permitted") || strings.Contains(out, "wrote 4096") {
		t.Fatalf("NBD write under another's Write Exclusive – Registrants Only reservation:\n%s", out)
	}
	for _, c := range []string{"write -z 64k 4k", "discard 128k 4k"} {
		if out, _ := shErr("qemu-io", "-f", "raw", "-c", c, p.uri("vol0")); !strings.Contains(out, "Operation not permitted") {
			t.Errorf("NBD %q under the reservation:\n%s", c, out)
		}
	}
	if out := sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 64k", p.uri("vol0")); strings.Contains(out, "failed") || !strings.Contains(out, "read 65536") {
		t.Fatalf("NBD read under a Write Exclusive reservation:\n%s", out)
	}

	// The holder writes through the same volume check, as its nexus.
	w10 := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0} // WRITE (10): LBA 0, 8 blocks of 512
	if st, k := in.command(w10, bytes.Repeat([]byte{0x33}, 4096)); st != 0 {
		t.Fatalf("holder's WRITE (10): status %#x sense key %#x", st, k)
	}
	if out := sh(t, "qemu-io", "-f", "raw", "-c", "read -P 0x33 0 4k", p.uri("vol0")); strings.Contains(out, "failed") {
		t.Fatalf("the holder's write is not what NBD reads:\n%s", out)
	}

	in.prOut(0x02, 0x05, key, 0) // RELEASE
	out = sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 0 4k", "-c", "read -P 0x44 0 4k", p.uri("vol0"))
	if strings.Contains(out, "failed") || !strings.Contains(out, "wrote 4096") {
		t.Fatalf("NBD write after release:\n%s", out)
	}
	in.prOut(0x00, 0, key, 0) // unregister
	if show, _, _ := p.cli("volume", "show", "vol0"); strings.Contains(show, "holder") || strings.Contains(show, name) {
		t.Errorf("volume show after unregistering:\n%s", show)
	}
}

// TestISCSICompareAndWrite runs libiscsi's COMPARE AND WRITE suite against
// the daemon, whose volumes compare and write under their own block locks.
func TestISCSICompareAndWrite(t *testing.T) {
	need(t, "iscsi-test-cu")
	t.Parallel()
	p := startDaemon(t)
	out, err := shErr("iscsi-test-cu", "-d", "--test=SCSI.CompareAndWrite", "-i", "iqn.2026-11.test:caw", p.iscsiURI("vol0"))
	if err != nil || !strings.Contains(out, "Run Summary") || regexp.MustCompile(`asserts\s+\d+\s+\d+\s+\d+\s+[1-9]`).MatchString(out) ||
		!regexp.MustCompile(`tests\s+\d+\s+[1-9]\d*\s+[1-9]\d*\s+0`).MatchString(out) {
		t.Fatalf("iscsi-test-cu --test=SCSI.CompareAndWrite: %v\n%s", err, out)
	}
	if strings.Contains(out, "[SKIPPED]") || strings.Contains(out, "not implemented") {
		t.Errorf("iscsi-test-cu skipped COMPARE AND WRITE tests:\n%s", out)
	}
}
