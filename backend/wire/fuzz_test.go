package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

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
	(&ChangedRequest{Vol: 1, Block: 2, Blocks: 3, From: 4, To: 5}).Put(b[:])
	f.Add(frame(OpChanged, 0, 0, b[:ChangedRequestSize]))
	(&ExtentRun{Start: 7, Count: 9}).Put(b[:])
	f.Add(frame(OpChanged, FlagReply|FlagMore, 0, b[:ExtentRunSize]))
	(&VersionsRequest{Vol: 1, Block: 2, Blocks: 3, SeqMin: 4}).Put(b[:])
	f.Add(frame(OpVersionsSince, 0, 0, b[:VersionsRequestSize]))
	f.Add(frame(OpVersionsSince, FlagReply|FlagMore, 0, versionsSeed()))
	(&ApplyRequest{Generation: 1, Vol: 2}).Put(b[:])
	f.Add(frame(OpApplyVersions, FlagSync, 0, append(b[:ApplyRequestSize:ApplyRequestSize], versionsSeed()[8:]...)))
	f.Add(frame(OpHello, 0, 0, AppendHello(nil, Hello{Name: "node-a", InFlightMax: 128})))
	f.Add(frame(OpSync, FlagReply, CodeInvalid, []byte("store: invalid request")))
	f.Add(frame(OpSync, 0, 0, nil))
	f.Add(frame(OpTargetHold, 0, 0, AppendTargetRequest(nil, TargetRequest{Budget: time.Second, Epoch: 3, Timeout: 2 * time.Second, Volumes: []string{"a", "bb"}})))
	f.Add(frame(OpTargetRelease, FlagReply, 0, AppendReleaseReply(nil, ReleaseReply{Volumes: []VolumeHold{{Window: 5, Held: 1, Drained: true, Reason: "released"}}, Err: "x"})))
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
	if r, err := ParseChangedRequest(p); err == nil {
		r.Put(re[:])
		if !bytes.Equal(re[:ChangedRequestSize], p) {
			t.Fatalf("changed %+v re-encodes differently", r)
		}
	}
	if r, err := ParseVersionsRequest(p); err == nil {
		r.Put(re[:])
		if !bytes.Equal(re[:VersionsRequestSize], p) {
			t.Fatalf("versions %+v re-encodes differently", r)
		}
	}
	if r, err := ParseApplyRequest(p); err == nil {
		r.Put(re[:])
		if !bytes.Equal(re[:ApplyRequestSize], p) {
			t.Fatalf("apply %+v re-encodes differently", r)
		}
	}
	var recs []byte
	if err := ParseRecords(p, func(v store.Version) error {
		if v.Blocks == 0 || v.Zero == (v.Data != nil) || !v.Zero && uint64(len(v.Data)) != v.Blocks*BlockSize {
			t.Fatalf("record %+v accepted", v)
		}
		k := len(recs)
		recs = append(recs, make([]byte, RecordSize(v))...)
		PutRecord(recs[k:], v)
		return nil
	}); err == nil && !bytes.Equal(recs, p) {
		t.Fatal("version records re-encode differently")
	} else if err != nil && !errors.Is(err, ErrProtocol) {
		t.Fatalf("records error %v does not wrap ErrProtocol", err)
	}
	if len(p) >= 8 {
		for _, more := range []bool{false, true} {
			if _, next, err := checkVersionsReply(p, 1, 1<<20, more); err == nil && (next <= 1 || next > 1+1<<20) {
				t.Fatalf("versions reply resuming at %d accepted", next)
			}
		}
	}
	if h, err := ParseHello(p); err == nil {
		if !bytes.Equal(AppendHello(nil, h), p) {
			t.Fatalf("hello %+v re-encodes differently", h)
		}
	}
	if r, err := ParseTargetRequest(p); err == nil {
		if !bytes.Equal(AppendTargetRequest(nil, r), p) {
			t.Fatalf("target request %+v re-encodes differently", r)
		}
	}
	if r, err := ParseReleaseReply(p); err == nil {
		if !bytes.Equal(AppendReleaseReply(nil, r), p) {
			t.Fatalf("release reply %+v re-encodes differently", r)
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

// FuzzServerConn feeds a Hello and then arbitrary bytes to a server
// connection: it must not panic or hang, and whatever it writes back is a
// sequence of well-formed reply frames.
func FuzzServerConn(f *testing.F) {
	var b [64]byte
	(&ReadRequest{Vol: 1, Block: 2, Epoch: 3, Blocks: 1}).Put(b[:])
	f.Add(frame(OpRead, 0, 0, b[:ReadRequestSize]))
	(&WriteRequest{Vol: 1, Block: 2, Stamp: store.Stamp{Epoch: 3, Seq: 4}}).Put(b[:])
	f.Add(frame(OpWrite, FlagSync, 0, append(b[:WriteRequestSize:WriteRequestSize], make([]byte, BlockSize)...)))
	(&ZeroRequest{Vol: 1, Block: 2, Blocks: 3, Stamp: store.Stamp{Epoch: 4, Seq: 5}}).Put(b[:])
	f.Add(append(frame(OpZero, 0, 0, b[:ZeroRequestSize]), frame(OpSync, 0, 0, nil)...))
	(&ExtentsRequest{Vol: 1, Block: 0, Blocks: 10, Epoch: 4}).Put(b[:])
	f.Add(frame(OpExtents, 0, 0, b[:ExtentsRequestSize]))
	(&ChangedRequest{Vol: 1, Block: 0, Blocks: 10, From: 1, To: 4}).Put(b[:])
	f.Add(frame(OpChanged, 0, 0, b[:ChangedRequestSize]))
	f.Add(frame(OpChanged, FlagSync, 0, b[:ChangedRequestSize]))
	f.Add(frame(OpChanged, 0, 0, b[:ExtentsRequestSize]))
	f.Add(frame(OpFence, 0, 0, []byte("xyz")))
	(&VersionsRequest{Vol: 1, Block: 0, Blocks: 10}).Put(b[:])
	f.Add(frame(OpVersionsSince, 0, 0, b[:VersionsRequestSize]))
	(&ApplyRequest{Generation: 1, Vol: 1}).Put(b[:])
	f.Add(frame(OpApplyVersions, FlagSync, 0, append(b[:ApplyRequestSize:ApplyRequestSize], versionsSeed()[8:]...)))
	f.Add(frame(OpHello, 0, 0, AppendHello(nil, Hello{Name: "again"})))
	f.Add([]byte("garbage that is not a frame at all, 32 bytes+"))
	tq := TargetRequest{Budget: time.Second, Epoch: 3, Timeout: 2 * time.Second, Volumes: []string{"a"}}
	f.Add(frame(OpTargetHold, 0, 0, AppendTargetRequest(nil, tq)))
	tq.Timeout = 0
	f.Add(append(frame(OpTargetRelease, 0, 0, AppendTargetRequest(nil, tq)), frame(OpTargetDrained, 0, 0, AppendTargetRequest(nil, tq))...))
	f.Add(frame(OpTargetHold, 0, 0, AppendTargetRequest(nil, tq))) // a hold without its timeout
	f.Add(frame(OpTargetDrained, FlagSync, 0, AppendTargetRequest(nil, tq)))
	f.Fuzz(func(t *testing.T, data []byte) {
		rt := &recTarget{holds: []VolumeHold{{Reason: "released"}}, drained: true}
		s, err := NewServer(&versionsBackend{runsBackend{memBackend: *newMemBackend(), runs: 5}}, ServerOptions{Logger: quietLogger(), InFlightMax: 4, Snapshot: rt})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cl, sv := net.Pipe()
		if !s.start(sv) {
			t.Fatal("server refused the connection")
		}
		out := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(cl)
			out <- b
		}()
		hello := AppendHello(nil, Hello{Name: "fuzz"})
		cl.SetWriteDeadline(time.Now().Add(5 * time.Second))
		cl.Write(frame(OpHello, 0, 0, hello))
		cl.Write(data) // fails once the server hangs up
		// Half-close is not available on a pipe: give the server a moment
		// to answer, then hang up.
		time.Sleep(time.Millisecond)
		cl.Close()
		var got []byte
		select {
		case got = <-out:
		case <-time.After(10 * time.Second):
			t.Fatal("server connection hung")
		}
		for len(got) >= HeaderSize {
			h, err := ParseHeader(got)
			if err != nil {
				t.Fatalf("server wrote a bad header: %v", err)
			}
			if h.Flags&FlagReply == 0 {
				t.Fatalf("server wrote a request %+v", h)
			}
			if int(h.Length) > len(got)-HeaderSize {
				break // cut off by the hang-up
			}
			if Checksum(got[HeaderSize:HeaderSize+int(h.Length)]) != h.Sum {
				t.Fatalf("reply %+v with a bad payload checksum", h)
			}
			got = got[HeaderSize+int(h.Length):]
		}
	})
}

// versionsSeed is a VersionsSince reply: the next block, a data record of
// one block and a zero record.
func versionsSeed() []byte {
	b := make([]byte, 8, 8+2*VersionRecordSize+BlockSize)
	be.PutUint64(b, 7)
	d := store.Version{Block: 2, Blocks: 1, Stamp: store.Stamp{Epoch: 1, Seq: 9}, Data: bytes.Repeat([]byte{5}, BlockSize)}
	z := store.Version{Block: 3, Blocks: 4, Stamp: store.Stamp{Epoch: 1, Seq: 10}, Zero: true}
	for _, v := range []store.Version{d, z} {
		k := len(b)
		b = append(b, make([]byte, RecordSize(v))...)
		PutRecord(b[k:], v)
	}
	return b
}
