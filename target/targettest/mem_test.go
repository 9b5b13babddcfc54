package targettest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"cairn/target"
)

func extents(t *testing.T, d *MemDevice, off, n int64) string {
	t.Helper()
	var s []string
	if err := d.Extents(t.Context(), off, n, func(e target.Extent) bool {
		s = append(s, fmt.Sprintf("%d:%v/%v", e.Length, e.Hole, e.Zero))
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(s)
}

func TestMemDevice(t *testing.T) {
	ctx := t.Context()
	d := NewMemDevice(MemOptions{Size: 64 << 10})
	if d.Info().Size != 64<<10 || d.Info().BlockSize != 4096 {
		t.Fatal(d.Info())
	}
	p := bytes.Repeat([]byte{7}, 6000)
	if err := d.WriteAt(ctx, p, 1000, target.FUA); err != nil { // blocks 0 and 1, partly
		t.Fatal(err)
	}
	got := make([]byte, 8192)
	d.ReadAt(ctx, got, 0)
	want := make([]byte, 8192)
	copy(want[1000:], p)
	if !bytes.Equal(got, want) {
		t.Fatal("read after sub-block write")
	}
	if e := extents(t, d, 0, 64<<10); e != "[8192:false/false 57344:true/true]" {
		t.Fatal(e)
	}
	d.Zero(ctx, 0, 4096, target.ZeroDiscard)       // whole block 0 goes
	d.Zero(ctx, 5000, 100, target.ZeroDiscard)     // partial: zeroed in place
	d.Zero(ctx, 16384, 8192, target.ZeroNoHole)    // allocated zeroes
	d.Zero(ctx, 32768+100, 100, target.ZeroNoHole) // partial hole: allocated
	if e := extents(t, d, 0, 64<<10); e != "[4096:true/true 4096:false/false 8192:true/true 8192:false/true 8192:true/true 4096:false/true 28672:true/true]" {
		t.Fatal(e)
	}
	d.ReadAt(ctx, got, 0)
	clear(want[:4096])
	clear(want[5000:5100])
	if !bytes.Equal(got, want) {
		t.Fatal("read after zero")
	}
	if e := extents(t, d, 100, 200); e != "[200:true/true]" {
		t.Fatal(e)
	}
	if err := d.ReadAt(ctx, got, 60<<10); !errors.Is(err, target.ErrOutOfRange) {
		t.Fatal(err)
	}
	if st := d.Stats(); st.FUAWrites != 1 || st.Discards != 2 || st.NoHoles != 2 {
		t.Fatal(st)
	}

	ro := NewMemDevice(MemOptions{Size: 4096, ReadOnly: true})
	if err := ro.WriteAt(ctx, p[:1], 0, 0); !errors.Is(err, target.ErrReadOnly) {
		t.Fatal(err)
	}

	d.SetFault(func(op Op, off, n int64) error {
		if op == OpFlush {
			return target.ErrIO
		}
		return nil
	})
	if err := d.Flush(ctx); !errors.Is(err, target.ErrIO) {
		t.Fatal(err)
	}
	d.SetFault(nil)
	d.SetLatency(time.Hour)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := d.Flush(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
}

func TestMemDeviceSparse(t *testing.T) {
	d := NewMemDevice(MemOptions{}) // 1 GiB
	if err := d.Zero(t.Context(), 0, 1<<30, target.ZeroDiscard); err != nil {
		t.Fatal(err)
	}
	if d.Allocated() != 0 {
		t.Fatal(d.Allocated())
	}
}
