package nbd

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"cairn/target/targettest"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata transcripts")

// describeOptionReplies renders option replies as text, one per line.
func describeOptionReplies(b []byte) []string {
	var lines []string
	for len(b) > 0 {
		h, err := ParseOptionReplyHeader(b)
		if err != nil || len(b) < OptionReplyHeaderSize+int(h.Length) {
			return append(lines, fmt.Sprintf("  ! undecodable %x", b))
		}
		d := b[OptionReplyHeaderSize : OptionReplyHeaderSize+int(h.Length)]
		b = b[OptionReplyHeaderSize+int(h.Length):]
		line := "  " + repName(h.Type)
		switch {
		case h.Type&RepFlagError != 0:
			line += fmt.Sprintf(" %q", d)
		case h.Type == RepServer:
			line += fmt.Sprintf(" %q", d[4:])
		case h.Type == RepMetaContext:
			line += fmt.Sprintf(" id=%d %q", be.Uint32(d), d[4:])
		case h.Type == RepInfo:
			switch be.Uint16(d) {
			case InfoExport:
				line += fmt.Sprintf(" export size=%d flags=%#x", be.Uint64(d[2:]), be.Uint16(d[10:]))
			case InfoName:
				line += fmt.Sprintf(" name=%q", d[2:])
			case InfoBlockSize:
				line += fmt.Sprintf(" block min=%d preferred=%d max=%d", be.Uint32(d[2:]), be.Uint32(d[6:]), be.Uint32(d[10:]))
			default:
				line += fmt.Sprintf(" %x", d)
			}
		}
		lines = append(lines, line)
	}
	return lines
}

func repName(t uint32) string {
	names := map[uint32]string{RepAck: "ACK", RepServer: "SERVER", RepInfo: "INFO", RepMetaContext: "META_CONTEXT",
		RepErrUnsup: "ERR_UNSUP", RepErrInvalid: "ERR_INVALID", RepErrUnknown: "ERR_UNKNOWN", RepErrTooBig: "ERR_TOO_BIG",
		RepErrTLSReqd: "ERR_TLS_REQD", RepErrPolicy: "ERR_POLICY"}
	if n, ok := names[t]; ok {
		return n
	}
	return fmt.Sprintf("%#x", t)
}

// TestNegotiationTranscript drives the pure negotiation state machine through
// scenarios and compares what it answers with testdata/negotiation.txt
// (regenerate with -rewrite).
func TestNegotiationTranscript(t *testing.T) {
	type opt struct {
		code uint32
		data []byte
		big  uint32 // option announced with this many bytes of data (tooBig path)
	}
	scenarios := []struct {
		name     string
		noZeroes bool
		opts     []opt
		tls      TLSMode // "" for TLSOff without a TLS config
	}{
		{"go plain", false, []opt{{code: OptGo, data: AppendInfoRequest(nil, "disk")}}, ""},
		{"go structured with meta", false, []opt{
			{code: OptStructuredReply},
			{code: OptListMetaContext, data: AppendMetaContextRequest(nil, "disk", "base:")},
			{code: OptSetMetaContext, data: AppendMetaContextRequest(nil, "disk", "base:", "base:allocation", "qemu:dirty-bitmap:a")},
			{code: OptGo, data: AppendInfoRequest(nil, "disk", InfoName, InfoBlockSize, InfoDescription)},
		}, ""},
		{"errors then info", false, []opt{
			{code: 42},
			{code: OptStartTLS},
			{code: OptList, data: []byte{0}},
			{code: OptInfo, data: []byte{1, 2, 3}},
			{code: OptInfo, data: AppendInfoRequest(nil, "missing")},
			{code: OptListMetaContext, data: AppendMetaContextRequest(nil, "disk")},
			{code: OptInfo, big: 100 << 10},
			{code: OptInfo, big: 2 << 20},
		}, ""},
		{"list and default", false, []opt{
			{code: OptList},
			{code: OptInfo, data: AppendInfoRequest(nil, "", InfoName)},
			{code: OptAbort},
		}, ""},
		{"export name read-only", true, []opt{{code: OptExportName, data: []byte("ro")}}, ""},
		{"export name unknown", false, []opt{{code: OptExportName, data: []byte("nope")}}, ""},
		{"located elsewhere", false, []opt{
			{code: OptInfo, data: AppendInfoRequest(nil, "moved")},
			{code: OptStructuredReply},
			{code: OptListMetaContext, data: AppendMetaContextRequest(nil, "moved")},
			{code: OptExportName, data: []byte("moved")},
		}, ""},
		{"tls off with a config", false, []opt{{code: OptStartTLS}, {code: OptGo, data: AppendInfoRequest(nil, "disk")}}, TLSOff},
		{"tls optional", false, []opt{
			{code: OptStructuredReply},
			{code: OptStartTLS},
			{code: OptStartTLS},
			{code: OptSetMetaContext, data: AppendMetaContextRequest(nil, "disk", "base:allocation")},
			{code: OptGo, data: AppendInfoRequest(nil, "disk")},
		}, TLSOptional},
		{"tls required", false, []opt{
			{code: OptList},
			{code: OptStructuredReply},
			{code: OptInfo, data: AppendInfoRequest(nil, "moved")},
			{code: OptGo, data: AppendInfoRequest(nil, "disk")},
			{code: 42},
			{code: OptInfo, big: 100 << 10},
			{code: OptStartTLS, data: []byte{0}},
			{code: OptStartTLS},
			{code: OptStartTLS},
			{code: OptList},
			{code: OptGo, data: AppendInfoRequest(nil, "disk")},
		}, TLSRequire},
		{"tls required export name", false, []opt{{code: OptExportName, data: []byte("disk")}}, TLSRequire},
		{"tls required abort", false, []opt{{code: OptAbort}}, TLSRequire},
	}
	var out strings.Builder
	for _, sc := range scenarios {
		fmt.Fprintf(&out, "== %s\n", sc.name)
		n := negotiation{
			exports: locatedExports{mapExports: mapExports{
				"disk": targettest.NewMemDevice(targettest.MemOptions{Size: 1 << 30, CanMultiConn: true}),
				"ro":   targettest.NewMemDevice(targettest.MemOptions{Size: 1 << 20, ReadOnly: true}),
			}, elsewhere: map[string][2]string{"moved": {"node2", "192.0.2.2:10809"}}},
			defaultName: "disk", requestBytesMax: RequestBytesMaxDefault, noZeroes: sc.noZeroes,
			tlsMode: TLSOff, tlsConfigured: sc.tls != "",
		}
		if sc.tls != "" {
			n.tlsMode = sc.tls
		}
		for _, o := range sc.opts {
			var st step
			if o.big > 0 {
				var drain bool
				st, drain = n.tooBig(OptionHeader{Code: o.code, Length: o.big})
				fmt.Fprintf(&out, "option %d with %d bytes (drain=%v)\n", o.code, o.big, drain)
			} else {
				st = n.option(o.code, o.data)
				fmt.Fprintf(&out, "option %d %x\n", o.code, o.data)
			}
			if o.code == OptExportName && st.next == nextTransmit {
				fmt.Fprintf(&out, "  export size=%d flags=%#x (%d bytes)\n", be.Uint64(st.reply), be.Uint16(st.reply[8:]), len(st.reply))
			} else {
				for _, l := range describeOptionReplies(st.reply) {
					fmt.Fprintln(&out, l)
				}
			}
			switch st.next {
			case nextTransmit:
				fmt.Fprintf(&out, "  -> transmit %q structured=%v allocation=%v flags=%#x\n",
					n.chosen.name, n.chosen.structured, n.chosen.allocation, n.chosen.flags)
			case nextHangUp:
				fmt.Fprintf(&out, "  -> hang up: %s\n", st.reason)
			case nextStartTLS:
				fmt.Fprintf(&out, "  -> TLS handshake\n")
				n.startedTLS()
			}
			if st.next != nextOption && st.next != nextStartTLS {
				break
			}
		}
	}
	const path = "testdata/negotiation.txt"
	if *rewrite {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Errorf("transcript differs from %s (run with -rewrite and review the diff):\n%s", path, out.String())
	}
}
