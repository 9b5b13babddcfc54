package iscsi

import (
	"encoding/binary"
	"io"
	"testing"

	"cairn/target"
)

// hotPathAllocsMax pins the heap allocations of one 4 KiB READ(10) or
// WRITE(10) with immediate data, counted over the whole process while a
// client that allocates nothing drives the server on loopback. Data
// buffers come from target's pool, workers are reused, per-PDU scratch lives
// in the session; what remains is the task itself (it is shared with task
// management, so it is not pooled).
const hotPathAllocsMax = 1

// TestHotPathAllocs: see hotPathAllocsMax.
func TestHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	t.Run("unlimited", func(t *testing.T) { testHotPathAllocs(t, nil) })
	t.Run("budget", func(t *testing.T) { testHotPathAllocs(t, target.NewBudget(1<<20)) })
}

func testHotPathAllocs(t *testing.T, budget *target.Budget) {
	_, addr, _ := testServer(t, Options{Budget: budget})
	r := dial(t, addr)
	if resp := r.login(testIQN, 0, "ImmediateData=Yes", "InitialR2T=No", "MaxRecvDataSegmentLength=65536"); resp.hdr.u16(36) != 0 {
		t.Fatalf("login status %#x", resp.hdr.u16(36))
	}
	r.command(testUnitReady(), 0, nil) // takes the power-on unit attention

	const n = 4096
	cdb := func(op byte) []byte {
		c := make([]byte, 10)
		c[0] = op
		binary.BigEndian.PutUint32(c[2:6], 64) // LBA
		binary.BigEndian.PutUint16(c[7:9], n/512)
		return c
	}
	build := func(op byte, write bool) []byte {
		var p PDU
		p.hdr.setOpcode(opSCSICmd)
		p.hdr[1] = 0x80
		if write {
			p.hdr[1] |= 0x20
			p.data = make([]byte, n)
		} else {
			p.hdr[1] |= 0x40
		}
		p.hdr.setITT(7)
		p.hdr.setU32(20, n)
		copy(p.hdr[32:], cdb(op))
		return appendPDU(nil, &p, digests{})
	}
	readCmd, writeCmd := build(scsiRead10, false), build(scsiWrite10, true)
	in := make([]byte, bhsBytes+n)
	var failed string
	run := func(cmd []byte, reply int) {
		binary.BigEndian.PutUint32(cmd[24:28], r.cmdSN)
		r.cmdSN++
		if _, err := r.nc.Write(cmd); err != nil {
			failed = err.Error()
			return
		}
		if _, err := io.ReadFull(r.br, in[:reply]); err != nil {
			failed = err.Error()
			return
		}
		var h header
		copy(h[:], in)
		if h[3] != statusGood || h[1]&0x01 == 0 && h.opcode() == opDataIn {
			failed = "status " + opName(h.opcode())
		}
	}
	for _, c := range []struct {
		name  string
		cmd   []byte
		reply int
	}{
		{"READ(10)", readCmd, bhsBytes + n}, // Data-In with the status
		{"WRITE(10)", writeCmd, bhsBytes},   // SCSI Response
	} {
		run(c.cmd, c.reply) // warm the pools
		allocs := testing.AllocsPerRun(2000, func() { run(c.cmd, c.reply) })
		if failed != "" {
			t.Fatalf("%s: %s", c.name, failed)
		}
		t.Logf("%s: %.1f allocations per command", c.name, allocs)
		if allocs > hotPathAllocsMax {
			t.Errorf("%s: %.1f allocations per command, want at most %d", c.name, allocs, hotPathAllocsMax)
		}
	}
}
