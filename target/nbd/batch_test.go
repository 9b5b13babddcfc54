package nbd

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"cairn/target"
	"cairn/target/targettest"
)

// batchDev is a memory device that takes batches of writes: it records
// each batch's offsets and fails a write at offset failAt with EIO.
type batchDev struct {
	*targettest.MemDevice
	failAt  int64
	off     bool // BatchWrites reports false
	mu      sync.Mutex
	batches [][]int64
}

func (d *batchDev) BatchWrites() bool { return !d.off }

func (d *batchDev) WriteBatch(ctx context.Context, ws []target.BatchWrite) {
	offs := make([]int64, len(ws))
	for i := range ws {
		w := &ws[i]
		offs[i] = w.Off
		if w.Off == d.failAt {
			w.Err = fmt.Errorf("injected: %w", target.ErrIO)
			continue
		}
		w.Err = d.MemDevice.WriteAt(ctx, w.P, w.Off, w.Flags)
	}
	d.mu.Lock()
	d.batches = append(d.batches, offs)
	d.mu.Unlock()
}

// TestWriteBatch: plain writes that arrive together are handed to a
// BatchWriter device in one call and answered each with its own result;
// a FUA write, a write past the end and a read are not batched and still
// answered; every write lands. A device that says it does not batch now
// gets no batch.
func TestWriteBatch(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprint("off=", off), func(t *testing.T) { testWriteBatch(t, off) })
	}
}

func testWriteBatch(t *testing.T, off bool) {
	d := &batchDev{MemDevice: targettest.NewMemDevice(targettest.MemOptions{Size: testSize}), failAt: 5 * 4096, off: off}
	s := newServer(t, mapExports{"disk": d}, Options{})
	c := pipe(t, s)
	c.open("disk", false)

	// One client write of the whole pipeline (net.Pipe: the server's first
	// read takes all of it, so that every request is buffered at once).
	const n = 16
	var wire []byte
	put := func(r Request, payload []byte) {
		b := make([]byte, RequestSize)
		r.Put(b)
		wire = append(append(wire, b...), payload...)
	}
	data := func(i int) []byte { return bytes.Repeat([]byte{byte(i + 1)}, 4096) }
	for i := range n {
		r := Request{Type: CmdWrite, Cookie: uint64(i + 1), Offset: uint64(i) * 4096, Length: 4096}
		if i == 8 {
			r.Flags = CmdFlagFUA
		}
		put(r, data(i))
	}
	put(Request{Type: CmdWrite, Cookie: 100, Offset: testSize, Length: 4096}, data(99)) // past the end
	put(Request{Type: CmdWrite, Cookie: 101, Offset: n * 4096, Length: 4096}, data(n))
	put(Request{Type: CmdWrite, Cookie: 102, Offset: (n + 1) * 4096, Length: 4096}, data(n+1))
	c.reads[103] = 4096
	put(Request{Type: CmdRead, Cookie: 103, Offset: 0, Length: 4096}, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.write(wire)
	}()
	errnos := map[uint64]uint32{}
	for range n + 4 {
		r := c.recv()
		if _, dup := errnos[r.cookie]; dup {
			t.Fatalf("two replies to cookie %d", r.cookie)
		}
		errnos[r.cookie] = r.errno
	}
	<-done
	for i := range n {
		want := uint32(0)
		if i == 5 && !off {
			want = EIO
		}
		if got := errnos[uint64(i+1)]; got != want {
			t.Errorf("write %d: errno %d, want %d", i, got, want)
		}
	}
	if errnos[100] == 0 || errnos[101] != 0 || errnos[102] != 0 || errnos[103] != 0 {
		t.Errorf("errnos %v: want an error for cookie 100 only (and 6)", errnos)
	}

	d.mu.Lock()
	batches := d.batches
	d.mu.Unlock()
	batched := 0
	for _, b := range batches {
		if len(b) < 2 {
			t.Errorf("a batch of %d", len(b))
		}
		batched += len(b)
		for _, off := range b {
			if off == 8*4096 || off == testSize {
				t.Errorf("batch %v holds the FUA write or the one past the end", b)
			}
		}
	}
	if off {
		if len(batches) > 0 {
			t.Fatalf("batches %v to a device that does not take them now", batches)
		}
		// The injected failure is the batch path's: every write lands.
	} else if batched < n-3 {
		// Written one by one, none would be batched; every plain write
		// after the first joins one (the first may run alone on the
		// reader, and the FUA write ends a batch).
		t.Fatalf("%d writes batched in %v, want at least %d", batched, batches, n-3)
	}
	got := make([]byte, 4096)
	for i := range n + 2 {
		if i == 5 && !off {
			continue
		}
		if err := d.ReadAt(context.Background(), got, int64(i)*4096); err != nil || !bytes.Equal(got, data(i)) {
			t.Fatalf("block %d did not land: %v", i, err)
		}
	}
}
