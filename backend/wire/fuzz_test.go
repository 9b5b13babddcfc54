package wire

import (
	"bytes"
	"errors"
	"testing"

	"cairn/backend/store"
)

// frame returns a header followed by body, as a seed.
func frame(op Op, flags Flags, status Code, body []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(body))
	(&Header{Op: op, Flags: flags, ID: 1, Status: status, Length: uint32(len(body)), Sum: Checksum(body)}).Put(b)
	return append(b, body...)
}

// FuzzDecode feeds arbitrary bytes to the header and every body parser:
// none may panic, and what any of them accepts re-encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	var b [64]byte
	(&ReadRequest{Vol: 1, Block: 2, Epoch: 3, Blocks: 4}).Put(b[:])
	f.Add(frame(OpRead, 0, 0, b[:ReadRequestSize]))
	(&WriteRequest{Vol: 1, Block: 2, Stamp: store.Stamp{Epoch: 3, Seq: 4}}).Put(b[:])
	f.Add(frame(OpWrite, FlagSync, 0, append(b[:WriteRequestSize:WriteRequestSize], make([]byte, 16)...)))
	(&ZeroRequest{Vol: 1, Block: 2, Blocks: 3, Stamp: store.Stamp{Epoch: 4, Seq: 5}}).Put(b[:])
	f.Add(frame(OpZero, 0, 0, b[:ZeroRequestSize]))
	(&ExtentsRequest{Vol: 1, Block: 2, Blocks: 3, Epoch: 4}).Put(b[:])
	f.Add(frame(OpExtents, 0, 0, b[:ExtentsRequestSize]))
	(&ExtentRun{Start: 1, Count: 2, Allocated: true}).Put(b[:])
	f.Add(frame(OpExtents, FlagReply|FlagMore, 0, b[:ExtentRunSize]))
	f.Add(frame(OpHello, 0, 0, AppendHello(nil, Hello{Name: "node-a", InFlightMax: 128})))
	f.Add(frame(OpSync, FlagReply, CodeInvalid, []byte("store: invalid request")))
	f.Add(frame(OpSync, 0, 0, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHeader(data)
		if err != nil {
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrChecksum) {
				t.Fatalf("header error %v wraps neither ErrProtocol nor ErrChecksum", err)
			}
		} else {
			var re [HeaderSize]byte
			h.Put(re[:])
			if !bytes.Equal(re[:], data[:HeaderSize]) {
				t.Fatalf("%+v re-encodes to %x, not %x", h, re, data[:HeaderSize])
			}
		}
		body := data[min(len(data), HeaderSize):]
		for _, p := range [][]byte{data, body} {
			checkBodies(t, p)
		}
	})
}

func checkBodies(t *testing.T, p []byte) {
	var re [64]byte
	if r, err := ParseReadRequest(p); err == nil {
		r.Put(re[:])
		if !bytes.Equal(re[:ReadRequestSize], p) {
			t.Fatalf("read %+v re-encodes differently", r)
		}
	}
	if r, data, err := ParseWriteRequest(p); err == nil {
		r.Put(re[:])
		if !bytes.Equal(re[:WriteRequestSize], p[:WriteRequestSize]) || len(data) != len(p)-WriteRequestSize {
			t.Fatalf("write %+v re-encodes differently", r)
		}
	}
	if r, err := ParseZeroRequest(p); err == nil {
		r.Put(re[:])
		if !bytes.Equal(re[:ZeroRequestSize], p) {
			t.Fatalf("zero %+v re-encodes differently", r)
		}
	}
	if r, err := ParseExtentsRequest(p); err == nil {
		r.Put(re[:])
		if !bytes.Equal(re[:ExtentsRequestSize], p) {
			t.Fatalf("extents %+v re-encodes differently", r)
		}
	}
	if h, err := ParseHello(p); err == nil {
		if !bytes.Equal(AppendHello(nil, h), p) {
			t.Fatalf("hello %+v re-encodes differently", h)
		}
	}
	if n, err := CheckExtentsReply(p); err == nil {
		out := make([]byte, len(p))
		for i := range n {
			r := ExtentRunAt(p, i)
			r.Put(out[i*ExtentRunSize:])
		}
		if !bytes.Equal(out, p) {
			t.Fatal("extents reply re-encodes differently")
		}
	}
}
