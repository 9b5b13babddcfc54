package nbd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"cairn/target"
	"cairn/target/targettest"
)

// testTLS returns a throwaway CA and certificates in a temporary directory.
func testTLS(t testing.TB) *targettest.TLS {
	t.Helper()
	c, err := targettest.NewTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startTLS sends NBD_OPT_STARTTLS, expects the ACK and upgrades the client
// to TLS with cfg.
func (c *client) startTLS(cfg *tls.Config) error {
	c.t.Helper()
	c.option(OptStartTLS, nil)
	c.expectReply(OptStartTLS, RepAck)
	tc := tls.Client(c.nc, cfg)
	c.deadline()
	if err := tc.Handshake(); err != nil {
		return err
	}
	c.nc, c.br = tc, bufio.NewReader(tc)
	return nil
}

// goExport sends OPT_GO for name and reads the replies up to the ACK.
func (c *client) goExport(name string) {
	c.t.Helper()
	c.option(OptGo, AppendInfoRequest(nil, name))
	for {
		h, d := c.optionReply(OptGo)
		if h.Type == RepAck {
			return
		}
		if h.Type != RepInfo {
			c.t.Fatalf("OPT_GO %q: reply %#x %q", name, h.Type, d)
		}
	}
}

// roundTrip writes and reads back a block in transmission.
func (c *client) roundTrip() {
	c.t.Helper()
	p := pattern(4096, 9)
	if r := c.do(Request{Type: CmdWrite, Cookie: 1, Offset: 8192, Length: 4096}, p); r.errno != 0 {
		c.t.Fatalf("write: errno %d", r.errno)
	}
	if r := c.do(Request{Type: CmdRead, Cookie: 2, Offset: 8192, Length: 4096}, nil); r.errno != 0 || !bytes.Equal(r.data, p) {
		c.t.Fatalf("read: errno %d, data equal %v", r.errno, bytes.Equal(r.data, p))
	}
}

func TestTLSRequire(t *testing.T) {
	certs := testTLS(t)
	exports, _ := memExports()
	s := newServer(t, exports, Options{TLS: certs.Server, TLSMode: TLSRequire})
	addr := listen(t, s)

	c := dial(t, addr)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	// Before TLS every option but STARTTLS and ABORT is refused.
	for _, o := range []struct {
		code uint32
		data []byte
	}{
		{OptList, nil},
		{OptStructuredReply, nil},
		{OptInfo, AppendInfoRequest(nil, "disk")},
		{OptGo, AppendInfoRequest(nil, "disk")},
		{OptSetMetaContext, AppendMetaContextRequest(nil, "disk", MetaContextAllocation)},
		{42, nil},
	} {
		c.option(o.code, o.data)
		c.expectReply(o.code, RepErrTLSReqd)
	}
	c.option(OptStartTLS, []byte{1})
	c.expectReply(OptStartTLS, RepErrInvalid)
	if err := c.startTLS(certs.Client); err != nil {
		t.Fatal(err)
	}
	c.option(OptStartTLS, nil)
	c.expectReply(OptStartTLS, RepErrInvalid) // a second STARTTLS
	c.option(OptList, nil)
	if d := c.expectReply(OptList, RepServer); !strings.Contains(string(d), "disk") {
		t.Fatalf("OPT_LIST over TLS: %q", d)
	}
	c.expectReply(OptList, RepServer)
	c.expectReply(OptList, RepAck)
	c.goExport("disk")
	c.roundTrip()
	c.send(Request{Type: CmdDisc}, nil)
	c.expectClosed()
	waitFor(t, func() bool { return s.Stats().Disconnects[target.DisconnectClientClosed] == 1 })

	// EXPORT_NAME cannot be refused with an error: the server hangs up.
	c = dial(t, addr)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	c.write(AppendOption(nil, OptExportName, []byte("disk")))
	c.expectClosed()

	// ABORT is answered in plain text.
	c = dial(t, addr)
	c.greet(ClientFlagFixedNewstyle)
	c.option(OptAbort, nil)
	c.expectReply(OptAbort, RepAck)
	c.expectClosed()
}

func TestTLSOptional(t *testing.T) {
	certs := testTLS(t)
	exports, _ := memExports()
	s := newServer(t, exports, Options{TLS: certs.Server, TLSMode: TLSOptional})
	addr := listen(t, s)

	plain := dial(t, addr)
	plain.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	plain.goExport("disk")
	plain.roundTrip()

	// Structured replies negotiated before TLS are forgotten with it.
	c := dial(t, addr)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	c.option(OptStructuredReply, nil)
	c.expectReply(OptStructuredReply, RepAck)
	if err := c.startTLS(certs.Client); err != nil {
		t.Fatal(err)
	}
	c.option(OptSetMetaContext, AppendMetaContextRequest(nil, "disk", MetaContextAllocation))
	c.expectReply(OptSetMetaContext, RepErrInvalid)
	c.goExport("disk")
	c.roundTrip()
}

func TestTLSOff(t *testing.T) {
	certs := testTLS(t)
	exports, _ := memExports()
	for _, tc := range []struct {
		opts Options
		want uint32
	}{
		{Options{}, RepErrUnsup},
		{Options{TLS: certs.Server}, RepErrPolicy},
		{Options{TLS: certs.Server, TLSMode: TLSOff}, RepErrPolicy},
	} {
		c := pipe(t, newServer(t, exports, tc.opts))
		c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
		c.option(OptStartTLS, nil)
		c.expectReply(OptStartTLS, tc.want)
		c.goExport("disk")
		c.roundTrip()
	}
}

func TestTLSRefusals(t *testing.T) {
	certs := testTLS(t)
	other := testTLS(t) // a CA the server's certificate is not from
	exports, _ := memExports()
	s := newServer(t, exports, Options{TLS: certs.Server, TLSMode: TLSRequire})
	s.tlsHandshakeTimeout = 100 * time.Millisecond
	addr := listen(t, s)
	handshakes := func() uint64 { return s.Stats().Disconnects[target.DisconnectHandshake] }

	// The client does not trust the server's certificate.
	c := dial(t, addr)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	if err := c.startTLS(other.Client); err == nil {
		t.Fatal("handshake with a certificate from another CA succeeded")
	}
	waitFor(t, func() bool { return handshakes() == 1 })

	// The client sends nothing after the ACK: the handshake times out.
	c = dial(t, addr)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	c.option(OptStartTLS, nil)
	c.expectReply(OptStartTLS, RepAck)
	start := time.Now()
	c.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v", d)
	}
	waitFor(t, func() bool { return handshakes() == 2 })

	// Bytes pipelined after STARTTLS, before its reply, are not taken as
	// TLS: the server hangs up without acknowledging.
	c = dial(t, addr)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	c.write(append(AppendOption(nil, OptStartTLS, nil), AppendOption(nil, OptGo, AppendInfoRequest(nil, "disk"))...))
	c.expectClosed()
	waitFor(t, func() bool { return handshakes() == 3 })

	// Client certificates required: without one the handshake fails, with
	// one it works.
	strict := certs.Server.Clone()
	strict.ClientAuth = tls.RequireAndVerifyClientCert
	s2 := newServer(t, exports, Options{TLS: strict, TLSMode: TLSRequire})
	addr2 := listen(t, s2)
	anon := certs.Client.Clone()
	anon.Certificates = nil
	c = dial(t, addr2)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	if err := c.startTLS(anon); err == nil {
		// TLS 1.3: the client learns of the refusal at its first read.
		c.option(OptList, nil)
		c.expectClosed()
	}
	c = dial(t, addr2)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	if err := c.startTLS(certs.Client); err != nil {
		t.Fatal(err)
	}
	c.goExport("disk")
	c.roundTrip()
}

func TestOptionsTLSMode(t *testing.T) {
	for _, s := range []string{"", "off", "optional", "require"} {
		if _, err := ParseTLSMode(s); err != nil {
			t.Errorf("ParseTLSMode(%q): %v", s, err)
		}
	}
	if _, err := ParseTLSMode("on"); err == nil {
		t.Error(`ParseTLSMode("on") accepted`)
	}
	defer func() {
		if recover() == nil {
			t.Error("TLSRequire without a TLS config accepted")
		}
	}()
	NewServer(Options{Exports: mapExports{}, TLSMode: TLSRequire})
}

// locatedExports serves some exports and knows where others are.
type locatedExports struct {
	mapExports
	elsewhere map[string][2]string // name → node, address
}

func (l locatedExports) Locate(name string) (node, addr string, ok bool) {
	w, ok := l.elsewhere[name]
	return w[0], w[1], ok
}

var _ target.Locator = locatedExports{}

func TestLocatedExport(t *testing.T) {
	exports, _ := memExports()
	le := locatedExports{mapExports: exports, elsewhere: map[string][2]string{"vol2": {"n2", "10.0.0.2:10809"}}}
	s := NewServer(Options{Exports: le})
	t.Cleanup(func() { s.Close() })
	for _, code := range []uint32{OptInfo, OptGo} {
		c := pipe(t, s)
		c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
		c.option(code, AppendInfoRequest(nil, "vol2"))
		msg := string(c.expectReply(code, RepErrUnknown))
		if !strings.Contains(msg, "n2") || !strings.Contains(msg, "10.0.0.2:10809") || !strings.Contains(msg, "vol2") {
			t.Errorf("option %d: message %q does not name node and address", code, msg)
		}
		c.option(code, AppendInfoRequest(nil, "nosuch"))
		if msg := string(c.expectReply(code, RepErrUnknown)); msg != `no export "nosuch"` {
			t.Errorf("unknown export: %q", msg)
		}
		c.goExport("disk") // served here: unaffected
		c.roundTrip()
	}
	c := pipe(t, s)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	c.write(AppendOption(nil, OptExportName, []byte("vol2")))
	c.expectClosed()
}
