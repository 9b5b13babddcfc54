package iscsi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"cairn/target"
)

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
	}
}

func read10(lba uint32, blocks uint16) []byte {
	c := make([]byte, 10)
	c[0] = scsiRead10
	binary.BigEndian.PutUint32(c[2:6], lba)
	binary.BigEndian.PutUint16(c[7:9], blocks)
	return c
}

// TestBudgetStalledSessions: sessions that send large READs and never read
// the Data-In hold at most the shared budget, the readers stop reading
// once it is spent, a well-behaved session is served, the stalled ones are
// dropped after ReplyTimeout and the budget returns to zero.
func TestBudgetStalledSessions(t *testing.T) {
	const (
		budgetBytes = 8 << 20
		readBytes   = 4 << 20
		stalled     = 3
		reads       = 8 // per stalled session: four times the budget each
	)
	budget := target.NewBudget(budgetBytes)
	s, addr, _ := testServer(t, Options{Budget: budget, ReplyTimeout: 300 * time.Millisecond})
	for i := range stalled {
		r := dial(t, addr)
		r.name = fmt.Sprintf("iqn.2026-01.test:stalled%d", i)
		r.nc.(*net.TCPConn).SetReadBuffer(4096)
		if resp := r.login(testIQN, 0); resp.hdr.u16(36) != 0 {
			t.Fatalf("login status %#x", resp.hdr.u16(36))
		}
		r.command(testUnitReady(), 0, nil) // the power-on unit attention
		for i := range reads {
			r.scsi(uint32(100+i), false, read10(uint32(i)*readBytes/512, readBytes/512), readBytes, true, false, nil)
		}
	}
	waitFor(t, func() bool { return budget.InUse() == budgetBytes && budget.Waiting() > 0 })

	good := dial(t, addr)
	good.name = "iqn.2026-01.test:good"
	good.login(testIQN, 0)
	good.command(testUnitReady(), 0, nil)
	for i := range 20 {
		if st, _, _, in := good.command(read10(uint32(i*128), 128), 64<<10, nil); st != statusGood || len(in) != 64<<10 {
			t.Fatalf("well-behaved read %d: status %#x, %d bytes", i, st, len(in))
		}
	}
	waitFor(t, func() bool { return s.Stats().Disconnects[target.DisconnectReplyTimeout] == stalled })
	waitFor(t, func() bool { return budget.InUse() == 0 && s.Sessions(testIQN) == 1 })
	if p := budget.Peak(); p > budgetBytes {
		t.Fatalf("peak %d bytes in flight, budget %d", p, budgetBytes)
	}
	if st, _, _, _ := good.command(read10(0, 8), 4096, nil); st != statusGood {
		t.Fatalf("well-behaved session after the drops: status %#x", st)
	}
}

// TestRequestTimeout: half a PDU header, or a WRITE whose Data-Out never
// comes, closes the connection after RequestTimeout; an idle session stays.
func TestRequestTimeout(t *testing.T) {
	const timeout = 150 * time.Millisecond
	budget := target.NewBudget(64 << 20)
	s, addr, _ := testServer(t, Options{RequestTimeout: timeout, Budget: budget})
	idle := dial(t, addr)
	idle.name = "iqn.2026-01.test:idle"
	idle.login(testIQN, 0)

	half := dial(t, addr)
	half.name = "iqn.2026-01.test:half"
	half.login(testIQN, 0)
	var p PDU
	p.hdr.setOpcode(opNOPOut)
	if _, err := half.nc.Write(p.hdr[:bhsBytes/2]); err != nil {
		t.Fatal(err)
	}
	if _, ok := half.recv(); ok {
		t.Fatal("half a header got an answer")
	}

	write := dial(t, addr)
	write.name = "iqn.2026-01.test:write"
	write.login(testIQN, 0) // InitialR2T=Yes: the data waits for an R2T
	write.command(testUnitReady(), 0, nil)
	cdb := make([]byte, 10)
	cdb[0] = scsiWrite10
	binary.BigEndian.PutUint16(cdb[7:9], 16)
	write.scsi(1, false, cdb, 8192, false, true, nil)
	if r2t, ok := write.recv(); !ok || r2t.hdr.opcode() != opR2T {
		t.Fatal("no R2T")
	}
	if _, ok := write.recv(); ok {
		t.Fatal("a WRITE without Data-Out was answered")
	}
	waitFor(t, func() bool { return s.Stats().Disconnects[target.DisconnectRequestTimeout] == 2 })
	waitFor(t, func() bool { return budget.InUse() == 0 })

	time.Sleep(2 * timeout) // idle for several timeouts by now
	if st, _, _, _ := idle.command(read10(0, 8), 4096, nil); st != statusGood && st != statusCheckCondition {
		t.Fatalf("idle session: status %#x", st)
	}
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestConnectionLimits: past ConnectionsMax or ConnectionsPerAddrMax a
// login gets status 0x0302 (out of resources) and the connection closes.
func TestConnectionLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"total", Options{ConnectionsMax: 2}},
		{"per address", Options{ConnectionsPerAddrMax: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			tc.opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s, addr, _ := testServer(t, tc.opts)
			a, b := dial(t, addr), dial(t, addr)
			if resp := a.login(testIQN, 0); resp.hdr.u16(36) != 0 {
				t.Fatalf("first login: %#x", resp.hdr.u16(36))
			}
			b.name = "iqn.2026-01.test:other"
			if resp := b.login(testIQN, 0); resp.hdr.u16(36) != 0 {
				t.Fatalf("second login: %#x", resp.hdr.u16(36))
			}
			refused := dial(t, addr)
			refused.name = "iqn.2026-01.test:third"
			if resp := refused.login(testIQN, 0); resp.hdr.opcode() != opLoginResp || resp.hdr.u16(36) != statusOutOfResources {
				t.Fatalf("login past the limit: %s status %#x", opName(resp.hdr.opcode()), resp.hdr.u16(36))
			}
			if _, ok := refused.recv(); ok {
				t.Fatal("refused connection stays open")
			}
			waitFor(t, func() bool { return s.Stats().Disconnects[target.DisconnectLimit] == 1 })
			if st := s.Stats(); st.Connections != 2 {
				t.Fatalf("stats %+v", st)
			}
			if !strings.Contains(logs.String(), "status=0x0302") {
				t.Fatalf("no log line for the refusal:\n%s", logs.String())
			}
			// Admitted sessions are unaffected; a slot frees on close.
			if st, _, _, _ := a.command(testUnitReady(), 0, nil); st != statusCheckCondition { // the unit attention
				t.Fatalf("admitted session: status %#x", st)
			}
			b.nc.Close()
			waitFor(t, func() bool { return s.Stats().Connections == 1 })
			c := dial(t, addr)
			c.name = "iqn.2026-01.test:fourth"
			if resp := c.login(testIQN, 0); resp.hdr.u16(36) != 0 {
				t.Fatalf("login after a slot freed: %#x", resp.hdr.u16(36))
			}
		})
	}
}

// TestBudgetCollectingWrite: a session whose WRITE holds the budget while
// it waits for Data-Out gets TASK SET FULL for a command past the budget
// rather than a reader that waits for itself; once the data comes, both
// complete and the budget is free.
func TestBudgetCollectingWrite(t *testing.T) {
	const n = 64 << 10
	budget := target.NewBudget(n)
	_, addr, _ := testServer(t, Options{Budget: budget, TransferBytesMax: n})
	r := dial(t, addr)
	r.login(testIQN, 0, "InitialR2T=Yes", "ImmediateData=No", "MaxBurstLength=65536")
	r.command(testUnitReady(), 0, nil)
	cdb := make([]byte, 10)
	cdb[0] = scsiWrite10
	binary.BigEndian.PutUint16(cdb[7:9], n/512)
	r.scsi(1, false, cdb, n, false, true, nil)
	r2t, ok := r.recv()
	if !ok || r2t.hdr.opcode() != opR2T {
		t.Fatal("no R2T")
	}
	if budget.InUse() != n {
		t.Fatalf("collecting WRITE holds %d bytes of the budget, want %d", budget.InUse(), n)
	}
	if st, _, _, _ := r.command(read10(0, 8), 4096, nil); st != statusTaskSetFull {
		t.Fatalf("command past the budget: status %#x, want TASK SET FULL", st)
	}
	data := bytes.Repeat([]byte{7}, n)
	for off := 0; off < n; off += 8192 {
		var p PDU
		p.hdr.setOpcode(opDataOut)
		if off+8192 == n {
			p.hdr[1] = 0x80
		}
		p.hdr.setITT(1)
		p.hdr.setU32(20, r2t.hdr.u32(20))
		p.hdr.setU32(36, uint32(off/8192))
		p.hdr.setU32(40, uint32(off))
		p.data = data[off : off+8192]
		r.send(&p)
	}
	if resp, ok := r.recv(); !ok || resp.hdr.opcode() != opSCSIResp || resp.hdr[3] != statusGood {
		t.Fatalf("write: %s status %#x", opName(resp.hdr.opcode()), resp.hdr[3])
	}
	if st, _, _, in := r.command(read10(0, 8), 4096, nil); st != statusGood || !bytes.Equal(in, data[:4096]) {
		t.Fatalf("read after the write: status %#x", st)
	}
	waitFor(t, func() bool { return budget.InUse() == 0 })
}
