package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"cairn/target"
	"cairn/target/targettest"
)

const testSize = 16 << 20

func memExports() (mapExports, *targettest.MemDevice) {
	d := targettest.NewMemDevice(targettest.MemOptions{Size: testSize, CanMultiConn: true})
	return mapExports{"disk": d, "ro": targettest.NewMemDevice(targettest.MemOptions{Size: 1 << 20, ReadOnly: true})}, d
}

func TestHandshakeRejects(t *testing.T) {
	exports, _ := memExports()
	s := newServer(t, exports, Options{})
	for _, tc := range []struct {
		name  string
		flags uint32
	}{
		{"not fixed newstyle", 0},
		{"no zeroes only", ClientFlagNoZeroes},
		{"unknown flag", ClientFlagFixedNewstyle | 1<<7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := pipe(t, s)
			c.greet(tc.flags)
			c.expectClosed()
		})
	}
	// The server keeps serving.
	c := pipe(t, s)
	if size, _ := c.open("disk", false); size != testSize {
		t.Fatalf("size %d", size)
	}
}

func TestOptions(t *testing.T) {
	exports, _ := memExports()
	s := newServer(t, exports, Options{Default: "disk"})
	c := pipe(t, s)
	c.greet(ClientFlagFixedNewstyle)

	c.option(99, []byte("whatever"))
	c.expectReply(99, RepErrUnsup)
	c.option(OptStartTLS, nil)
	c.expectReply(OptStartTLS, RepErrUnsup)
	c.option(OptExtendedHeaders, nil)
	c.expectReply(OptExtendedHeaders, RepErrUnsup)

	c.option(OptList, []byte{1})
	c.expectReply(OptList, RepErrInvalid)
	c.option(OptList, nil)
	var names []string
	for {
		h, d := c.optionReply(OptList)
		if h.Type == RepAck {
			break
		}
		names = append(names, string(d[4:]))
	}
	if fmt.Sprint(names) != "[disk ro]" {
		t.Fatalf("OPT_LIST %v", names)
	}

	c.option(OptGo, []byte{0, 0, 0, 9, 'x'}) // name longer than the data
	c.expectReply(OptGo, RepErrInvalid)
	c.option(OptInfo, AppendInfoRequest(nil, "nope"))
	c.expectReply(OptInfo, RepErrUnknown)

	// Meta contexts need structured replies first.
	c.option(OptSetMetaContext, AppendMetaContextRequest(nil, "disk", MetaContextAllocation))
	c.expectReply(OptSetMetaContext, RepErrInvalid)
	c.option(OptStructuredReply, []byte{0})
	c.expectReply(OptStructuredReply, RepErrInvalid)
	c.option(OptStructuredReply, nil)
	c.expectReply(OptStructuredReply, RepAck)
	c.option(OptListMetaContext, AppendMetaContextRequest(nil, "disk"))
	if d := c.expectReply(OptListMetaContext, RepMetaContext); string(d[4:]) != MetaContextAllocation {
		t.Fatalf("list: %q", d)
	}
	c.expectReply(OptListMetaContext, RepAck)
	c.option(OptListMetaContext, AppendMetaContextRequest(nil, "disk", "qemu:dirty-bitmap:x", "base:nothing"))
	c.expectReply(OptListMetaContext, RepAck)
	c.option(OptSetMetaContext, AppendMetaContextRequest(nil, "disk", "nocolon"))
	c.expectReply(OptSetMetaContext, RepErrInvalid)
	c.option(OptSetMetaContext, AppendMetaContextRequest(nil, "nope", MetaContextAllocation))
	c.expectReply(OptSetMetaContext, RepErrUnknown)
	c.option(OptSetMetaContext, AppendMetaContextRequest(nil, "", MetaContextAllocation))
	c.expectReply(OptSetMetaContext, RepMetaContext)
	c.expectReply(OptSetMetaContext, RepAck)

	// INFO on the default export reports name, size, flags, block sizes.
	c.option(OptInfo, AppendInfoRequest(nil, "", InfoName, InfoBlockSize, 777))
	got := map[uint16][]byte{}
	for {
		h, d := c.optionReply(OptInfo)
		if h.Type == RepAck {
			break
		}
		got[be.Uint16(d)] = d[2:]
	}
	if string(got[InfoName]) != "disk" {
		t.Errorf("name %q", got[InfoName])
	}
	if e := got[InfoExport]; be.Uint64(e) != testSize {
		t.Errorf("export info %x", e)
	}
	wantFlags := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes |
		FlagSendFastZero | FlagSendCache | FlagSendDF | FlagCanMultiConn
	if f := be.Uint16(got[InfoExport][8:]); f != wantFlags {
		t.Errorf("flags %#x, want %#x", f, wantFlags)
	}
	if b := got[InfoBlockSize]; be.Uint32(b) != 512 || be.Uint32(b[4:]) != 4096 || be.Uint32(b[8:]) != 32<<20 {
		t.Errorf("block sizes %x", b)
	}

	// Too big: refused, skipped, negotiation goes on.
	c.option(OptInfo, make([]byte, optionBytesMax+1))
	c.expectReply(OptInfo, RepErrTooBig)

	c.option(OptAbort, nil)
	c.expectReply(OptAbort, RepAck)
	c.expectClosed()
}

func TestExportName(t *testing.T) {
	exports, _ := memExports()
	s := newServer(t, exports, Options{})
	for _, noZeroes := range []bool{false, true} {
		c := pipe(t, s)
		flags := ClientFlagFixedNewstyle
		n := ExportNameReplySize
		if noZeroes {
			flags |= ClientFlagNoZeroes
			n = 10
		}
		c.greet(flags)
		c.option(OptExportName, []byte("ro"))
		b := c.readFull(n)
		if be.Uint64(b) != 1<<20 || be.Uint16(b[8:])&FlagReadOnly == 0 {
			t.Fatalf("export name reply %x", b)
		}
		r := c.do(Request{Type: CmdRead, Cookie: 1, Length: 512}, nil)
		if r.errno != 0 || len(r.data) != 512 {
			t.Fatalf("read: %+v", r)
		}
	}
	// Unknown export: the server can only hang up.
	c := pipe(t, s)
	c.greet(ClientFlagFixedNewstyle)
	c.option(OptExportName, []byte("nope"))
	c.expectClosed()
}

func TestOptionLimits(t *testing.T) {
	exports, _ := memExports()
	s := newServer(t, exports, Options{})

	c := pipe(t, s)
	c.greet(ClientFlagFixedNewstyle)
	c.write(AppendOption(nil, OptInfo, nil)[:OptionHeaderSize-4])
	c.write(be.AppendUint32(nil, optionDrainBytesMax+1))
	c.expectClosed()

	c = pipe(t, s)
	c.greet(ClientFlagFixedNewstyle)
	for i := 0; i < optionsMax; i++ {
		c.option(OptStructuredReply, nil)
		c.expectReply(OptStructuredReply, RepAck)
	}
	c.option(OptStructuredReply, nil)
	c.expectClosed()
}

func TestHandshakeTimeout(t *testing.T) {
	exports, _ := memExports()
	s := newServer(t, exports, Options{})
	s.handshakeTimeout = 50 * time.Millisecond
	c := pipe(t, s)
	c.greet(ClientFlagFixedNewstyle)
	c.expectClosed()
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestReadWrite(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprint("structured=", structured), func(t *testing.T) {
			exports, d := memExports()
			s := newServer(t, exports, Options{})
			c := pipe(t, s)
			c.open("disk", structured)
			for i, off := range []uint64{0, 4096*7 + 512, testSize - 64<<10} {
				p := pattern(64<<10, byte(i))
				if r := c.do(Request{Type: CmdWrite, Flags: CmdFlagFUA, Cookie: 10, Offset: off, Length: uint32(len(p))}, p); r.errno != 0 {
					t.Fatalf("write at %d: errno %d", off, r.errno)
				}
				r := c.do(Request{Type: CmdRead, Cookie: 11, Offset: off, Length: uint32(len(p))}, nil)
				if r.errno != 0 || !bytes.Equal(r.data, p) {
					t.Fatalf("read at %d: errno %d, %d bytes differ", off, r.errno, len(r.data))
				}
			}
			if r := c.do(Request{Type: CmdFlush, Cookie: 12}, nil); r.errno != 0 {
				t.Fatal(r.errno)
			}
			if r := c.do(Request{Type: CmdRead, Cookie: 13, Offset: 0, Length: 0}, nil); r.errno != 0 || len(r.data) != 0 {
				t.Fatalf("empty read %+v", r)
			}
			if r := c.do(Request{Type: CmdRead, Flags: CmdFlagDF | CmdFlagFUA, Cookie: 14, Length: 4096}, nil); structured != (r.errno == 0) {
				t.Fatalf("DF read: %+v", r)
			}
			st := d.Stats()
			if st.FUAWrites != 3 || st.Flushes != 1 {
				t.Fatalf("stats %+v", st)
			}
			c.send(Request{Type: CmdDisc}, nil)
			c.expectClosed()
		})
	}
}

// TestErrors: each bad request gets the document's error and the connection
// keeps serving, as do other clients.
func TestErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprint("structured=", structured), func(t *testing.T) {
			exports, d := memExports()
			s := newServer(t, exports, Options{RequestBytesMax: 1 << 20})
			c := pipe(t, s)
			c.open("disk", structured)
			ro := pipe(t, s)
			ro.open("ro", structured)
			other := pipe(t, s)
			other.open("disk", structured)
			big := make([]byte, 1<<20+4096)
			for _, tc := range []struct {
				name    string
				c       *client
				req     Request
				payload []byte
				errno   uint32
			}{
				{"read past end", c, Request{Type: CmdRead, Offset: testSize - 512, Length: 1024}, nil, EINVAL},
				{"read offset overflow", c, Request{Type: CmdRead, Offset: 1 << 63, Length: 512}, nil, EINVAL},
				{"write past end", c, Request{Type: CmdWrite, Offset: testSize, Length: 512}, make([]byte, 512), ENOSPC},
				{"zeroes past end", c, Request{Type: CmdWriteZeroes, Offset: testSize, Length: 512}, nil, ENOSPC},
				{"trim past end", c, Request{Type: CmdTrim, Offset: testSize, Length: 512}, nil, EINVAL},
				{"cache past end", c, Request{Type: CmdCache, Offset: testSize, Length: 512}, nil, EINVAL},
				{"oversized read", c, Request{Type: CmdRead, Length: 1<<20 + 4096}, nil, EOVERFLOW},
				{"oversized write", c, Request{Type: CmdWrite, Length: uint32(len(big))}, big, EINVAL},
				{"unknown command", c, Request{Type: 42}, nil, EINVAL},
				{"resize", c, Request{Type: 8}, nil, EINVAL},
				{"unknown flag", c, Request{Type: CmdRead, Flags: 1 << 9, Length: 512}, nil, EINVAL},
				{"flag of another command", c, Request{Type: CmdWrite, Flags: CmdFlagNoHole, Length: 512}, make([]byte, 512), EINVAL},
				{"flush with length", c, Request{Type: CmdFlush, Length: 512}, nil, EINVAL},
				{"block status of nothing", c, Request{Type: CmdBlockStatus}, nil, EINVAL},
				{"write read-only", ro, Request{Type: CmdWrite, Length: 512}, make([]byte, 512), EPERM},
				{"trim read-only", ro, Request{Type: CmdTrim, Length: 512}, nil, EPERM},
			} {
				r := tc.c.do(tc.req, tc.payload)
				if r.errno != tc.errno {
					t.Errorf("%s: errno %d, want %d", tc.name, r.errno, tc.errno)
				}
				if structured && tc.req.Type == CmdRead && (len(r.chunks) != 1 || r.chunks[0].Type != ReplyError) {
					t.Errorf("%s: chunks %+v", tc.name, r.chunks)
				}
				for _, cl := range []*client{tc.c, other} {
					if r := cl.do(Request{Type: CmdRead, Cookie: 7, Length: 512}, nil); r.errno != 0 || len(r.data) != 512 {
						t.Fatalf("%s: connection broken: %+v", tc.name, r)
					}
				}
			}

			// Device errors.
			d.SetFault(func(op targettest.Op, off, n int64) error {
				if off == 8192 {
					return fmt.Errorf("injected: %w", target.ErrIO)
				}
				if off == 16384 {
					return fmt.Errorf("injected: %w", target.ErrNoSpace)
				}
				return nil
			})
			r := c.do(Request{Type: CmdRead, Offset: 8192, Length: 4096}, nil)
			if r.errno != EIO || len(r.data) != 0 {
				t.Fatalf("read error: %+v", r)
			}
			if structured && r.chunks[0].Type != ReplyErrorOffset {
				t.Fatalf("read error chunk %+v", r.chunks)
			}
			if r := c.do(Request{Type: CmdWrite, Offset: 16384, Length: 4}, []byte("abcd")); r.errno != ENOSPC {
				t.Fatalf("write error: %+v", r)
			}
			d.SetFault(nil)
			if r := c.do(Request{Type: CmdRead, Offset: 8192, Length: 4096}, nil); r.errno != 0 {
				t.Fatalf("read after error: %+v", r)
			}
			if structured {
				if r := other.do(Request{Type: CmdBlockStatus, Length: 4096}, nil); r.errno != 0 {
					t.Fatalf("block status: %+v", r)
				}
			} else {
				if r := other.do(Request{Type: CmdBlockStatus, Length: 4096}, nil); r.errno != EINVAL {
					t.Fatalf("block status without meta context: %+v", r)
				}
			}
		})
	}
}

func TestFatalRequests(t *testing.T) {
	exports, _ := memExports()
	s := newServer(t, exports, Options{})
	// Bad magic: no way to resynchronise.
	c := pipe(t, s)
	c.open("disk", false)
	c.write(make([]byte, RequestSize))
	c.expectClosed()
	// A write too large to skip.
	c = pipe(t, s)
	c.open("disk", true)
	c.send(Request{Type: CmdWrite, Length: writeDiscardBytesMax + 1}, nil)
	c.expectClosed()
	// Others are unaffected.
	c = pipe(t, s)
	c.open("disk", true)
	if r := c.do(Request{Type: CmdRead, Length: 512}, nil); r.errno != 0 {
		t.Fatal(r)
	}
}

func TestZeroesTrimBlockStatus(t *testing.T) {
	exports, d := memExports()
	s := newServer(t, exports, Options{})
	c := pipe(t, s)
	c.open("disk", true)
	const bs = 4096
	p := pattern(8*bs, 3)
	c.do(Request{Type: CmdWrite, Offset: 0, Length: 8 * bs}, p)
	type ext = [2]uint32
	check := func(name string, flags uint16, off, n uint32, want []ext) {
		t.Helper()
		r := c.do(Request{Type: CmdBlockStatus, Flags: flags, Offset: uint64(off), Length: n}, nil)
		if r.errno != 0 || fmt.Sprint(r.extents) != fmt.Sprint(want) {
			t.Errorf("%s: errno %d extents %v, want %v", name, r.errno, r.extents, want)
		}
	}
	check("after write", 0, 0, 16*bs, []ext{{8 * bs, 0}, {8 * bs, StateHole | StateZero}})
	check("req one", CmdFlagReqOne, 0, 16*bs, []ext{{8 * bs, 0}})
	check("req one short", CmdFlagReqOne, bs, 2*bs, []ext{{2 * bs, 0}})
	check("unaligned", 0, 100, bs, []ext{{bs, 0}})

	if r := c.do(Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole | CmdFlagFUA, Offset: 2 * bs, Length: 2 * bs}, nil); r.errno != 0 {
		t.Fatal(r)
	}
	if r := c.do(Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero, Offset: 4 * bs, Length: bs}, nil); r.errno != 0 {
		t.Fatal(r)
	}
	if r := c.do(Request{Type: CmdTrim, Offset: 6 * bs, Length: 2 * bs}, nil); r.errno != 0 {
		t.Fatal(r)
	}
	if r := c.do(Request{Type: CmdCache, Offset: 0, Length: testSize}, nil); r.errno != 0 {
		t.Fatal(r)
	}
	check("after zeroes", 0, 0, 16*bs, []ext{{2 * bs, 0}, {2 * bs, StateZero}, {bs, StateHole | StateZero}, {bs, 0}, {10 * bs, StateHole | StateZero}})
	r := c.do(Request{Type: CmdRead, Offset: 0, Length: 8 * bs}, nil)
	want := append([]byte(nil), p...)
	clear(want[2*bs : 5*bs])
	clear(want[6*bs:])
	if !bytes.Equal(r.data, want) {
		t.Fatal("read after zeroes differs")
	}
	if st := d.Stats(); st.NoHoles != 1 || st.Discards != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestOutOfOrder: a slow request does not hold back later ones.
func TestOutOfOrder(t *testing.T) {
	mem := targettest.NewMemDevice(targettest.MemOptions{Size: testSize})
	g := newGate(mem, func(op string, off int64) bool { return off == 0 })
	s := newServer(t, mapExports{"disk": g}, Options{})
	c := pipe(t, s)
	c.open("disk", true)
	c.send(Request{Type: CmdRead, Cookie: 1, Offset: 0, Length: 4096}, nil)
	c.send(Request{Type: CmdWrite, Cookie: 2, Offset: 4096, Length: 4}, []byte("abcd"))
	c.send(Request{Type: CmdRead, Cookie: 3, Offset: 8192, Length: 4096}, nil)
	got := map[uint64]bool{}
	for range 2 {
		got[c.recv().cookie] = true
	}
	if !got[2] || !got[3] {
		t.Fatalf("replies %v before the slow one", got)
	}
	close(g.gate)
	if r := c.recv(); r.cookie != 1 || len(r.data) != 4096 {
		t.Fatalf("slow reply %+v", r)
	}
}

// TestDiscWaits: NBD_CMD_DISC answers in-flight requests before closing.
func TestDiscWaits(t *testing.T) {
	mem := targettest.NewMemDevice(targettest.MemOptions{Size: testSize})
	g := newGate(mem, func(op string, off int64) bool { return op == "write" })
	s := newServer(t, mapExports{"disk": g}, Options{})
	c := pipe(t, s)
	c.open("disk", false)
	c.send(Request{Type: CmdWrite, Cookie: 5, Length: 4}, []byte("wxyz"))
	<-g.entered
	c.send(Request{Type: CmdDisc}, nil)
	select {
	case <-c.served:
		t.Fatal("connection closed with a request in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(g.gate)
	if r := c.recv(); r.cookie != 5 || r.errno != 0 {
		t.Fatalf("reply %+v", r)
	}
	c.expectClosed()
	b := make([]byte, 4)
	mem.ReadAt(t.Context(), b, 0)
	if string(b) != "wxyz" {
		t.Fatalf("data %q", b)
	}
}

// TestInFlightBound: at most InFlightMax requests reach the device at once;
// past it the server stops reading.
func TestInFlightBound(t *testing.T) {
	mem := targettest.NewMemDevice(targettest.MemOptions{Size: testSize})
	g := newGate(mem, func(string, int64) bool { return true })
	s := newServer(t, mapExports{"disk": g}, Options{InFlightMax: 4})
	c := pipe(t, s)
	c.open("disk", true)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range 10 {
			r := Request{Type: CmdRead, Cookie: uint64(i), Offset: uint64(i) * 4096, Length: 4096}
			b := make([]byte, RequestSize)
			r.Put(b)
			if _, err := c.nc.Write(b); err != nil {
				return
			}
		}
	}()
	for range 4 {
		<-g.entered
	}
	time.Sleep(50 * time.Millisecond)
	g.mu.Lock()
	active := g.active
	g.mu.Unlock()
	if active != 4 {
		t.Fatalf("%d requests at the device, want 4", active)
	}
	close(g.gate)
	for range 10 {
		if r := c.recv(); r.errno != 0 {
			t.Fatal(r)
		}
	}
	<-sent
	if g.peak > 4 {
		t.Fatalf("peak %d requests in flight", g.peak)
	}
}

func TestConnectionsDisconnectClose(t *testing.T) {
	mem := targettest.NewMemDevice(targettest.MemOptions{Size: testSize})
	g := newGate(mem, func(op string, off int64) bool { return off == 4096 })
	s := newServer(t, mapExports{"disk": g, "other": targettest.NewMemDevice(targettest.MemOptions{Size: 1 << 20})}, Options{})
	addr := listen(t, s)
	a, b, o := dial(t, addr), dial(t, addr), dial(t, addr)
	a.open("disk", true)
	b.open("disk", false)
	o.open("other", false)
	waitFor(t, func() bool { return s.Connections("disk") == 2 && s.Connections("other") == 1 })

	// A request held at the device does not stop Disconnect.
	a.send(Request{Type: CmdRead, Cookie: 1, Offset: 4096, Length: 512}, nil)
	<-g.entered
	s.Disconnect("disk")
	a.expectClosed()
	b.expectClosed()
	waitFor(t, func() bool { return s.Connections("disk") == 0 })
	if r := o.do(Request{Type: CmdRead, Length: 512}, nil); r.errno != 0 {
		t.Fatal(r)
	}

	// Close answers the in-flight request, then closes.
	c := dial(t, addr)
	c.open("disk", false)
	c.send(Request{Type: CmdRead, Cookie: 9, Offset: 4096, Length: 512}, nil)
	<-g.entered
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	time.Sleep(20 * time.Millisecond)
	close(g.gate)
	if r := c.recv(); r.cookie != 9 || r.errno != 0 {
		t.Fatalf("reply %+v", r)
	}
	c.expectClosed()
	o.expectClosed()
	<-closed
	s.Close() // idempotent
	cn, sn := net.Pipe()
	defer cn.Close()
	if err := s.ServeConn(sn); !errors.Is(err, ErrServerClosed) {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}
