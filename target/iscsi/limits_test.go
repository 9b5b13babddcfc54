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
