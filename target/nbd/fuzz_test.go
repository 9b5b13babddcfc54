package nbd

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func FuzzParseOption(f *testing.F) {
	f.Add(OptGo, AppendInfoRequest(nil, "disk", InfoBlockSize))
	f.Add(OptSetMetaContext, AppendMetaContextRequest(nil, "disk", "base:allocation"))
	f.Add(OptListMetaContext, AppendMetaContextRequest(nil, "", "base:", "x-y:z"))
	f.Add(OptSetMetaContext, AppendMetaContextRequest(nil, "disk", "cairn:changed:s1", "cairn:", "cairn:changed:"))
	f.Add(OptExportName, []byte("vol"))
	f.Add(uint32(0xffffffff), []byte{0xff})
	f.Fuzz(func(t *testing.T, code uint32, data []byte) {
		o, err := ParseOption(code, data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// What parses re-encodes to the same bytes.
		var re []byte
		switch code {
		case OptGo, OptInfo:
			re = AppendInfoRequest(nil, o.Name, o.Infos...)
		case OptSetMetaContext, OptListMetaContext:
			re = AppendMetaContextRequest(nil, o.Name, o.Queries...)
		case OptExportName:
			re = []byte(o.Name)
		default:
			return
		}
		if !bytes.Equal(re, data) {
			t.Fatalf("%+v re-encodes to %x, not %x", o, re, data)
		}
		// And the negotiation handles it without panicking, whatever the
		// TLS mode.
		for _, mode := range []TLSMode{TLSOff, TLSOptional, TLSRequire} {
			n := negotiation{exports: mapExports{"disk": newChangeDev()},
				requestBytesMax: RequestBytesMaxDefault, structured: code&1 == 0, tlsMode: mode, tlsConfigured: true}
			n.option(code, data)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	b := make([]byte, RequestSize)
	(&Request{Type: CmdRead, Cookie: 1, Offset: 4096, Length: 512}).Put(b)
	f.Add(b)
	f.Add(make([]byte, RequestSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			if !errors.Is(err, ErrShort) && !errors.Is(err, ErrMagic) {
				t.Fatal(err)
			}
			return
		}
		out := make([]byte, RequestSize)
		r.Put(out)
		if !bytes.Equal(out, b[:RequestSize]) {
			t.Fatalf("%+v re-encodes to %x, not %x", r, out, b[:RequestSize])
		}
	})
}

// Bounds of one FuzzServer input. The fuzzing engine kills a worker whose
// input runs longer than 10 s, with a panic it does not print and, when the
// worker is slow to die or the input is a seed, no crasher file; so every
// step of an input must time out well inside that, on the test's own
// terms. Inputs are capped so that the server's work per input (tens of
// milliseconds) leaves a wide margin on a loaded machine.
const (
	fuzzInputBytesMax = 64 << 10
	fuzzStepTimeout   = 3 * time.Second // for the input to be consumed, then for the server to close
)

// FuzzServer feeds random bytes to a server over net.Pipe: after a canned
// handshake (first byte even: simple replies, odd: structured with
// base:allocation) or from the very start (first byte ≥ 0x80). The server
// must never panic, must keep reading its input or close the connection
// (never stall without doing either), and must close the connection once
// input ends.
func FuzzServer(f *testing.F) {
	req := func(r Request, payload ...byte) []byte {
		b := make([]byte, RequestSize)
		r.Put(b)
		return append(b, payload...)
	}
	f.Add([]byte{0})
	f.Add(append([]byte{1}, req(Request{Type: CmdRead, Length: 512})...))
	f.Add(append([]byte{1}, req(Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Length: 1 << 20})...))
	f.Add(append([]byte{0}, req(Request{Type: CmdWrite, Flags: CmdFlagFUA, Offset: 100, Length: 3}, 1, 2, 3)...))
	f.Add(append(append([]byte{1}, req(Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole, Length: 8192})...), req(Request{Type: CmdDisc})...))
	f.Add(append([]byte{0x80, 0, 0, 0, 3}, AppendOption(nil, OptList, nil)...))
	f.Add(append([]byte{0x80, 0, 0, 0, 1}, AppendOption(nil, OptExportName, []byte("disk"))...))

	dev := newChangeDev()
	s := NewServer(Options{Exports: mapExports{"disk": dev}, InFlightMax: 8, RequestBytesMax: 64 << 10})
	s.handshakeTimeout = 2 * time.Second
	f.Cleanup(func() { s.Close() })

	var handshake [2][]byte
	for i := range handshake {
		var h []byte
		h = be.AppendUint32(h, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
		if i == 1 {
			h = AppendOption(h, OptStructuredReply, nil)
			h = AppendOption(h, OptSetMetaContext, AppendMetaContextRequest(nil, "disk", MetaContextAllocation, MetaContextChangedPrefix+"s1"))
		}
		handshake[i] = AppendOption(h, OptGo, AppendInfoRequest(nil, "disk"))
	}

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 || len(in) > fuzzInputBytesMax {
			return
		}
		var input []byte
		if in[0] >= 0x80 {
			input = in[1:]
		} else {
			input = append(append([]byte(nil), handshake[in[0]&1]...), in[1:]...)
		}
		cn, sn := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.ServeConn(sn)
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, cn)
		}()
		cn.SetWriteDeadline(time.Now().Add(fuzzStepTimeout))
		_, err := cn.Write(input)
		cn.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("server neither read its input nor closed the connection within %v", fuzzStepTimeout)
		}
		select {
		case <-done:
		case <-time.After(fuzzStepTimeout):
			t.Fatalf("server did not close the connection within %v of the input's end", fuzzStepTimeout)
		}
		<-drained // no goroutine outlives its input
	})
}
