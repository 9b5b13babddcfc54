package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"cairn/target"
)

func TestGreeting(t *testing.T) {
	var b [GreetingSize]byte
	PutGreeting(&b, FlagFixedNewstyle|FlagNoZeroes)
	if !bytes.Equal(b[:16], []byte("NBDMAGICIHAVEOPT")) || b[17] != 3 {
		t.Fatalf("greeting %q", b)
	}
	if f, err := ParseGreeting(b[:]); err != nil || f != 3 {
		t.Fatal(f, err)
	}
	b[0] = 'X'
	if _, err := ParseGreeting(b[:]); !errors.Is(err, ErrMagic) {
		t.Fatal(err)
	}
}

func TestParseRequest(t *testing.T) {
	good := []byte{0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 2, 0}
	for _, tc := range []struct {
		name string
		b    []byte
		want Request
		err  error
	}{
		{"write", good, Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 0x0102030405060708, Offset: 4096, Length: 512}, nil},
		{"short", good[:27], Request{}, ErrShort},
		{"bad magic", append([]byte{0x25, 0x60, 0x95, 0x14}, good[4:]...), Request{}, ErrMagic},
		{"extended magic", append([]byte{0x21, 0xe4, 0x1c, 0x71}, good[4:]...), Request{}, ErrMagic},
	} {
		got, err := ParseRequest(tc.b)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("%s: %+v %v, want %+v %v", tc.name, got, err, tc.want, tc.err)
		}
		if err == nil {
			b := make([]byte, RequestSize)
			got.Put(b)
			if !bytes.Equal(b, tc.b) {
				t.Errorf("%s: round trip %x", tc.name, b)
			}
		}
	}
}

func TestParseOption(t *testing.T) {
	long := string(make([]byte, StringBytesMax+1))
	for _, tc := range []struct {
		name string
		code uint32
		data []byte
		want Option
		err  bool
	}{
		{"go", OptGo, AppendInfoRequest(nil, "disk", InfoBlockSize, InfoName), Option{Code: OptGo, Name: "disk", Infos: []uint16{3, 1}}, false},
		{"info default", OptInfo, AppendInfoRequest(nil, ""), Option{Code: OptInfo}, false},
		{"go no count", OptGo, appendString(nil, "disk"), Option{Code: OptGo}, true},
		{"go count too big", OptGo, append(appendString(nil, "d"), 0, 2, 0, 1), Option{Code: OptGo}, true},
		{"go name past data", OptGo, []byte{0, 0, 0, 5, 'a', 0, 0}, Option{Code: OptGo}, true},
		{"go name too long", OptGo, AppendInfoRequest(nil, long), Option{Code: OptGo}, true},
		{"go short", OptGo, []byte{0, 0}, Option{Code: OptGo}, true},
		{"export name", OptExportName, []byte("vol"), Option{Code: OptExportName, Name: "vol"}, false},
		{"export name too long", OptExportName, []byte(long), Option{Code: OptExportName}, true},
		{"set meta", OptSetMetaContext, AppendMetaContextRequest(nil, "d", "base:allocation", "x:y"), Option{Code: OptSetMetaContext, Name: "d", Queries: []string{"base:allocation", "x:y"}}, false},
		{"list meta empty", OptListMetaContext, AppendMetaContextRequest(nil, "d"), Option{Code: OptListMetaContext, Name: "d"}, false},
		{"meta count lies", OptSetMetaContext, append(appendString(nil, "d"), 0xff, 0xff, 0xff, 0xff), Option{Code: OptSetMetaContext}, true},
		{"meta trailing", OptSetMetaContext, append(AppendMetaContextRequest(nil, "d", "base:"), 1), Option{Code: OptSetMetaContext, Name: "d", Queries: []string{"base:"}}, true},
		{"meta query past data", OptSetMetaContext, append(appendString(nil, "d"), 0, 0, 0, 1, 0, 0, 0, 9), Option{Code: OptSetMetaContext, Name: "d", Queries: []string{""}}, true},
		{"list", OptList, nil, Option{Code: OptList, Empty: true}, false},
		{"unknown", 1234, []byte{1, 2}, Option{Code: 1234}, false},
	} {
		got, err := ParseOption(tc.code, tc.data)
		if (err != nil) != tc.err || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("%s: error %v", tc.name, err)
		}
		if !tc.err && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestOptionHeaders(t *testing.T) {
	b := AppendOption(nil, OptGo, []byte("abc"))
	h, err := ParseOptionHeader(b)
	if err != nil || h != (OptionHeader{Code: OptGo, Length: 3}) {
		t.Fatal(h, err)
	}
	if _, err := ParseOptionHeader(b[:15]); !errors.Is(err, ErrShort) {
		t.Fatal(err)
	}
	b[0] = 0
	if _, err := ParseOptionHeader(b); !errors.Is(err, ErrMagic) {
		t.Fatal(err)
	}
	r := AppendOptionReply(nil, OptList, RepServer, AppendServer(nil, "x"))
	if want := "0003e889045565a90000000300000002000000050000000178"; fmt.Sprintf("%x", r) != want {
		t.Fatalf("reply %x, want %s", r, want)
	}
	rh, err := ParseOptionReplyHeader(r)
	if err != nil || rh != (OptionReplyHeader{Code: OptList, Type: RepServer, Length: 5}) {
		t.Fatal(rh, err)
	}
	if n := len(AppendExportNameReply(nil, 1, 1, false)); n != ExportNameReplySize {
		t.Fatal(n)
	}
	if got := fmt.Sprintf("%x", AppendInfoBlockSize(nil, 512, 4096, 32<<20)); got != "00030000020000001000"+"02000000" {
		t.Fatal(got)
	}
}

func TestReplies(t *testing.T) {
	b := make([]byte, StructuredReplySize)
	PutSimpleReply(b, EIO, 77)
	if got := fmt.Sprintf("%x", b[:SimpleReplySize]); got != "6744669800000005000000000000004d" {
		t.Fatal(got)
	}
	r, err := ParseReply(b[:SimpleReplySize])
	if err != nil || r.Structured || r.Errno != EIO || r.Cookie != 77 {
		t.Fatal(r, err)
	}
	sr := StructuredReply{Flags: ReplyFlagDone, Type: ReplyOffsetData, Cookie: 9, Length: 4104}
	sr.Put(b)
	r, err = ParseReply(b)
	if err != nil || !r.Structured || r.Flags != ReplyFlagDone || r.Type != ReplyOffsetData || r.Cookie != 9 || r.Length != 4104 {
		t.Fatal(r, err)
	}
	be.PutUint32(b, 0x12345678)
	if _, err := ParseReply(b); !errors.Is(err, ErrMagic) {
		t.Fatal(err)
	}
}

func TestErrno(t *testing.T) {
	for _, tc := range []struct {
		err   error
		cmd   uint16
		errno uint32
	}{
		{nil, CmdRead, 0},
		{target.ErrOutOfRange, CmdRead, EINVAL},
		{fmt.Errorf("x: %w", target.ErrOutOfRange), CmdWrite, ENOSPC},
		{target.ErrOutOfRange, CmdWriteZeroes, ENOSPC},
		{target.ErrOutOfRange, CmdTrim, EINVAL},
		{target.ErrOutOfRange, CmdBlockStatus, EINVAL},
		{target.ErrInvalid, CmdWrite, EINVAL},
		{target.ErrReadOnly, CmdTrim, EPERM},
		{fmt.Errorf("volume 1: %w", target.ErrReservationConflict), CmdWrite, EPERM},
		{target.ErrReservationConflict, CmdRead, EPERM},
		{target.ErrNoSpace, CmdWrite, ENOSPC},
		{target.ErrIO, CmdRead, EIO},
		{target.ErrClosed, CmdRead, ESHUTDOWN},
		{context.Canceled, CmdFlush, ESHUTDOWN},
		{errOverflow, CmdRead, EOVERFLOW},
		{errors.New("mystery"), CmdRead, EIO},
	} {
		if got := Errno(tc.err, tc.cmd); got != tc.errno {
			t.Errorf("Errno(%v, %d) = %d, want %d", tc.err, tc.cmd, got, tc.errno)
		}
	}
}

// TestCodecAllocs pins the hot-path codec at zero allocations.
func TestCodecAllocs(t *testing.T) {
	in := make([]byte, RequestSize)
	(&Request{Type: CmdWrite, Cookie: 1, Offset: 4096, Length: 4096}).Put(in)
	out := make([]byte, StructuredReplySize+8)
	var sink uint64
	allocs := testing.AllocsPerRun(1000, func() {
		r, err := ParseRequest(in)
		if err != nil {
			panic(err)
		}
		PutSimpleReply(out, 0, r.Cookie)
		sr := StructuredReply{Flags: ReplyFlagDone, Type: ReplyOffsetData, Cookie: r.Cookie, Length: 8 + r.Length}
		sr.Put(out)
		PutBlockDescriptor(out[StructuredReplySize:], r.Length, StateHole)
		sink += r.Offset
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per request", allocs)
	}
	_ = sink
}
