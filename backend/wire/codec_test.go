package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"cairn/backend/store"
	"cairn/target"
)

func TestHeaderRoundTrip(t *testing.T) {
	hs := []Header{
		{Op: OpHello, ID: 0},
		{Op: OpRead, ID: 1<<63 | 7, Length: ReadRequestSize},
		{Op: OpWrite, Flags: FlagSync, ID: 42, Length: PayloadBytesMax, Sum: 0xdeadbeef},
		{Op: OpExtents, Flags: FlagReply | FlagMore, ID: 3, Length: ExtentsReplyBytesMax, Sum: 1},
		{Op: OpZero, Flags: FlagReply, ID: 9, Status: CodeInvalid, Length: 12},
		{Op: Op(200), ID: 5},
	}
	for _, h := range hs {
		var b [HeaderSize]byte
		h.Put(b[:])
		got, err := ParseHeader(b[:])
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		if got != h {
			t.Fatalf("round trip %+v → %+v", h, got)
		}
	}
}

func TestParseHeaderErrors(t *testing.T) {
	good := func() []byte {
		b := make([]byte, HeaderSize)
		(&Header{Op: OpRead, ID: 77, Length: ReadRequestSize}).Put(b)
		return b
	}
	resum := func(b []byte) { be.PutUint32(b[28:], Checksum(b[:28])) }
	tests := []struct {
		name   string
		mangle func(b []byte) []byte
		want   error
		id     uint64 // the ID the failed parse still reports
	}{
		{"short", func(b []byte) []byte { return b[:HeaderSize-1] }, ErrProtocol, 0},
		{"magic", func(b []byte) []byte { b[0] ^= 1; return b }, ErrProtocol, 0},
		{"version", func(b []byte) []byte { b[4] = 2; return b }, ErrVersion, 77},
		{"header crc", func(b []byte) []byte { b[9] ^= 1; return b }, ErrChecksum, 0},
		{"reserved", func(b []byte) []byte { b[23] = 1; resum(b); return b }, ErrProtocol, 0},
		{"flags", func(b []byte) []byte { b[6] = 0x80; resum(b); return b }, ErrProtocol, 0},
		{"request status", func(b []byte) []byte { b[21] = 1; resum(b); return b }, ErrProtocol, 0},
		{"too large", func(b []byte) []byte { be.PutUint32(b[16:], PayloadBytesMax+1); resum(b); return b }, ErrProtocol, 77},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseHeader(tt.mangle(good()))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			if h.ID != tt.id {
				t.Fatalf("id %d, want %d", h.ID, tt.id)
			}
		})
	}
	if _, err := ParseHeader(good()); err != nil {
		t.Fatal(err)
	}
}

func TestBodiesRoundTrip(t *testing.T) {
	var b [64]byte
	rr := ReadRequest{Vol: 1, Block: 2, Epoch: 3, Blocks: ReadBlocksMax}
	rr.Put(b[:])
	if got, err := ParseReadRequest(b[:ReadRequestSize]); err != nil || got != rr {
		t.Fatalf("read: %+v %v", got, err)
	}
	be.PutUint32(b[24:], ReadBlocksMax+1)
	if _, err := ParseReadRequest(b[:ReadRequestSize]); !errors.Is(err, ErrProtocol) {
		t.Fatalf("read over the bound: %v", err)
	}

	wr := WriteRequest{Vol: 4, Block: 5, Stamp: store.Stamp{Epoch: 6, Seq: 7}}
	w := make([]byte, WriteRequestSize+BlockSize)
	wr.Put(w)
	w[WriteRequestSize] = 0xab
	got, data, err := ParseWriteRequest(w)
	if err != nil || got != wr || len(data) != BlockSize || data[0] != 0xab {
		t.Fatalf("write: %+v %d %v", got, len(data), err)
	}

	zr := ZeroRequest{Vol: 8, Block: 9, Blocks: 10, Stamp: store.Stamp{Epoch: 11, Seq: 12}}
	zr.Put(b[:])
	if got, err := ParseZeroRequest(b[:ZeroRequestSize]); err != nil || got != zr {
		t.Fatalf("zero: %+v %v", got, err)
	}

	er := ExtentsRequest{Vol: 13, Block: 14, Blocks: 15, Epoch: 16}
	er.Put(b[:])
	if got, err := ParseExtentsRequest(b[:ExtentsRequestSize]); err != nil || got != er {
		t.Fatalf("extents: %+v %v", got, err)
	}

	h := Hello{Features: 1, RequestBytesMax: RequestBytesMax, InFlightMax: 128, Name: strings.Repeat("n", NameBytesMax)}
	if got, err := ParseHello(AppendHello(nil, h)); err != nil || got != h {
		t.Fatalf("hello: %+v %v", got, err)
	}
	if _, err := ParseHello(AppendHello(nil, h)[:HelloSizeMin+3]); !errors.Is(err, ErrProtocol) {
		t.Fatalf("short hello: %v", err)
	}

	runs := []ExtentRun{{0, 1, true}, {1, 1<<63 - 1, false}}
	rb := make([]byte, len(runs)*ExtentRunSize)
	for i := range runs {
		runs[i].Put(rb[i*ExtentRunSize:])
	}
	n, err := CheckExtentsReply(rb)
	if err != nil || n != len(runs) {
		t.Fatalf("extents reply: %d %v", n, err)
	}
	for i := range runs {
		if got := ExtentRunAt(rb, i); got != runs[i] {
			t.Fatalf("run %d: %+v, want %+v", i, got, runs[i])
		}
	}
	be.PutUint64(rb[8:], runAllocated) // a run of 0 blocks
	if _, err := CheckExtentsReply(rb); !errors.Is(err, ErrProtocol) {
		t.Fatalf("empty run: %v", err)
	}
}

// TestCodes pins the mapping both ways: an error classified on the node
// matches, on the client, the same sentinels.
func TestCodes(t *testing.T) {
	tests := []struct {
		err     error
		code    Code
		matches []error // what the client-side error must match
	}{
		{nil, CodeOK, nil},
		{fmt.Errorf("x: %w", store.ErrInvalid), CodeInvalid, []error{store.ErrInvalid}},
		{target.ErrOutOfRange, CodeInvalid, []error{store.ErrInvalid}},
		{store.ErrIO, CodeIO, []error{store.ErrIO}},
		{fmt.Errorf("%w: %w", store.ErrIO, store.ErrCorrupt), CodeCorrupt, []error{store.ErrIO, store.ErrCorrupt}},
		{fmt.Errorf("%w: %w", store.ErrIO, store.ErrFailed), CodeFailed, []error{store.ErrIO, store.ErrFailed}},
		{store.ErrLimit, CodeLimit, []error{store.ErrLimit}},
		{store.ErrClosed, CodeClosed, []error{store.ErrClosed}},
		{fmt.Errorf("%w: %w", store.ErrIO, syscall.ENOSPC), CodeNoSpace, []error{target.ErrNoSpace, store.ErrIO}},
		{context.Canceled, CodeCanceled, []error{ErrCanceled, target.ErrIO}},
		{ErrUnsupported, CodeUnsupported, []error{ErrUnsupported, target.ErrIO}},
		{ErrVersion, CodeVersion, []error{ErrVersion, ErrProtocol}},
		{ErrProtocol, CodeProtocol, []error{ErrProtocol}},
		{ErrChecksum, CodeChecksum, []error{ErrChecksum}},
		{errors.New("anything else"), CodeIO, []error{store.ErrIO}},
	}
	for _, tt := range tests {
		if got := codeOf(tt.err); got != tt.code {
			t.Errorf("codeOf(%v) = %d, want %d", tt.err, got, tt.code)
		}
		if tt.err == nil {
			continue
		}
		re := &remoteError{op: OpRead, code: tt.code, msg: tt.err.Error()}
		for _, m := range tt.matches {
			if !errors.Is(re, m) {
				t.Errorf("code %d: %v does not match %v", tt.code, re, m)
			}
		}
		if codeOf(re) != tt.code {
			t.Errorf("code %d → %v → code %d", tt.code, re, codeOf(re))
		}
	}
	if re := (&remoteError{code: 999}); !errors.Is(re, store.ErrIO) {
		t.Error("an unknown code is not an I/O error")
	}
}

func TestChecksum(t *testing.T) {
	b := bytes.Repeat([]byte{1, 2, 3}, 1000)
	if Checksum(b) != UpdateChecksum(Checksum(b[:100]), b[100:]) {
		t.Fatal("incremental checksum differs")
	}
}
