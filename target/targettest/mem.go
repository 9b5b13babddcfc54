package targettest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"cairn/target"
)

// Op names a MemDevice method for fault injection.
type Op int

const (
	OpRead Op = iota
	OpWrite
	OpZero
	OpFlush
	OpExtents
)

func (o Op) String() string {
	return [...]string{"read", "write", "zero", "flush", "extents"}[o]
}

// Fault decides whether a call fails: a non-nil error is returned instead of
// doing the call. n is 0 for OpFlush.
type Fault func(op Op, off, n int64) error

// MemOptions configure a MemDevice. The zero value is a writable 1 GiB
// device of 4 KiB blocks.
type MemOptions struct {
	Size         int64 // bytes, a multiple of BlockSize; 0 means 1 GiB
	BlockSize    int   // bytes; 0 means 4096
	ReadOnly     bool
	CanMultiConn bool
	Latency      time.Duration // added to every call
}

// Stats counts calls that succeeded.
type Stats struct {
	Reads, Writes, FUAWrites, Zeros, Discards, NoHoles, Flushes, ExtentCalls uint64
}

// MemDevice is a sparse in-memory target.Device and target.Mapper: a block
// never written costs nothing, so a 1 GiB device is free.
type MemDevice struct {
	info    target.Info
	latency atomic.Int64 // time.Duration
	fault   atomic.Pointer[Fault]

	reads, writes, fuaWrites, zeros, discards, noHoles, flushes, extents atomic.Uint64

	mu struct {
		sync.RWMutex
		// blocks holds allocated blocks; a nil value is an allocated
		// block of zeroes (ZeroNoHole).
		blocks map[int64][]byte
	}
}

var (
	_ target.Device = (*MemDevice)(nil)
	_ target.Mapper = (*MemDevice)(nil)
)

// NewMemDevice returns an empty (all holes) device.
func NewMemDevice(o MemOptions) *MemDevice {
	if o.Size == 0 {
		o.Size = 1 << 30
	}
	if o.BlockSize == 0 {
		o.BlockSize = 4096
	}
	if o.Size < 0 || o.BlockSize < 0 || o.Size%int64(o.BlockSize) != 0 {
		panic(fmt.Sprintf("targettest: size %d is not a multiple of block size %d", o.Size, o.BlockSize))
	}
	d := &MemDevice{info: target.Info{Size: o.Size, BlockSize: o.BlockSize, ReadOnly: o.ReadOnly, CanMultiConn: o.CanMultiConn}}
	d.latency.Store(int64(o.Latency))
	d.mu.blocks = make(map[int64][]byte)
	return d
}

// SetLatency sets the delay added to every call.
func (d *MemDevice) SetLatency(l time.Duration) { d.latency.Store(int64(l)) }

// SetFault installs f (nil removes it).
func (d *MemDevice) SetFault(f Fault) {
	if f == nil {
		d.fault.Store(nil)
		return
	}
	d.fault.Store(&f)
}

// Stats returns the call counters.
func (d *MemDevice) Stats() Stats {
	return Stats{Reads: d.reads.Load(), Writes: d.writes.Load(), FUAWrites: d.fuaWrites.Load(),
		Zeros: d.zeros.Load(), Discards: d.discards.Load(), NoHoles: d.noHoles.Load(),
		Flushes: d.flushes.Load(), ExtentCalls: d.extents.Load()}
}

// Allocated returns the number of allocated blocks.
func (d *MemDevice) Allocated() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.mu.blocks)
}

var _ target.Comparer = (*MemDevice)(nil)

func (d *MemDevice) Info() target.Info { return d.info }

// enter applies latency, context and faults, then checks the range.
func (d *MemDevice) enter(ctx context.Context, op Op, off, n int64) error {
	if l := time.Duration(d.latency.Load()); l > 0 {
		t := time.NewTimer(l)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("targettest: %v: %w", op, err)
	}
	if f := d.fault.Load(); f != nil {
		if err := (*f)(op, off, n); err != nil {
			return err
		}
	}
	if op == OpFlush {
		return nil
	}
	if err := target.CheckRange(off, n, d.info.Size); err != nil {
		return fmt.Errorf("targettest: %v of %d bytes at %d: %w", op, n, off, err)
	}
	return nil
}

func (d *MemDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.enter(ctx, OpRead, off, int64(len(p))); err != nil {
		return err
	}
	d.mu.RLock()
	d.readLocked(p, off)
	d.mu.RUnlock()
	d.reads.Add(1)
	return nil
}

// readLocked copies [off, off+len(p)) into p; d.mu is held.
func (d *MemDevice) readLocked(p []byte, off int64) {
	bs := int64(d.info.BlockSize)
	for done := 0; done < len(p); {
		pos := off + int64(done)
		b, in := pos/bs, pos%bs
		n := min(int64(len(p)-done), bs-in)
		if blk := d.mu.blocks[b]; blk != nil {
			copy(p[done:done+int(n)], blk[in:in+n])
		} else {
			clear(p[done : done+int(n)])
		}
		done += int(n)
	}
}

func (d *MemDevice) WriteAt(ctx context.Context, p []byte, off int64, flags target.WriteFlags) error {
	if err := d.enter(ctx, OpWrite, off, int64(len(p))); err != nil {
		return err
	}
	if d.info.ReadOnly {
		return fmt.Errorf("targettest: write: %w", target.ErrReadOnly)
	}
	d.mu.Lock()
	d.writeLocked(p, off)
	d.mu.Unlock()
	d.writes.Add(1)
	if flags&target.FUA != 0 {
		d.fuaWrites.Add(1)
	}
	return nil
}

// writeLocked copies p to [off, off+len(p)); d.mu is held exclusively.
func (d *MemDevice) writeLocked(p []byte, off int64) {
	bs := int64(d.info.BlockSize)
	for done := 0; done < len(p); {
		pos := off + int64(done)
		b, in := pos/bs, pos%bs
		n := min(int64(len(p)-done), bs-in)
		blk := d.mu.blocks[b]
		if blk == nil {
			blk = make([]byte, bs)
			d.mu.blocks[b] = blk
		}
		copy(blk[in:in+n], p[done:done+int(n)])
		done += int(n)
	}
}

// CompareAndWrite implements target.Comparer under the device's lock.
func (d *MemDevice) CompareAndWrite(ctx context.Context, cmp, data []byte, off int64, flags target.WriteFlags) error {
	if len(cmp) != len(data) {
		return fmt.Errorf("targettest: compare and write: %d bytes to compare, %d to write: %w", len(cmp), len(data), target.ErrInvalid)
	}
	if err := d.enter(ctx, OpWrite, off, int64(len(data))); err != nil {
		return err
	}
	if d.info.ReadOnly {
		return fmt.Errorf("targettest: compare and write: %w", target.ErrReadOnly)
	}
	have := make([]byte, len(cmp))
	d.mu.Lock()
	d.readLocked(have, off)
	for i := range have {
		if have[i] != cmp[i] {
			d.mu.Unlock()
			return &target.MiscompareError{Offset: int64(i)}
		}
	}
	d.writeLocked(data, off)
	d.mu.Unlock()
	d.writes.Add(1)
	if flags&target.FUA != 0 {
		d.fuaWrites.Add(1)
	}
	return nil
}

func (d *MemDevice) Zero(ctx context.Context, off, n int64, flags target.ZeroFlags) error {
	if err := d.enter(ctx, OpZero, off, n); err != nil {
		return err
	}
	if d.info.ReadOnly {
		return fmt.Errorf("targettest: zero: %w", target.ErrReadOnly)
	}
	bs := int64(d.info.BlockSize)
	end := off + n
	d.mu.Lock()
	// Partial blocks at either end are zeroed in place.
	partial := func(b, from, to int64) {
		blk, ok := d.mu.blocks[b]
		switch {
		case blk != nil:
			clear(blk[from:to])
		case !ok && flags&target.ZeroNoHole != 0:
			d.mu.blocks[b] = nil
		}
	}
	first, last := (off+bs-1)/bs, end/bs // whole blocks [first, last)
	if first > last {                    // within one block
		partial(off/bs, off%bs, end%bs)
	} else {
		if off%bs != 0 {
			partial(off/bs, off%bs, bs)
		}
		if end%bs != 0 {
			partial(end/bs, 0, end%bs)
		}
		whole := func(b int64) {
			_, ok := d.mu.blocks[b]
			switch {
			case flags&target.ZeroNoHole != 0:
				d.mu.blocks[b] = nil
			case flags&target.ZeroDiscard != 0:
				delete(d.mu.blocks, b)
			case ok:
				d.mu.blocks[b] = nil
			}
		}
		if flags&target.ZeroNoHole == 0 && int64(len(d.mu.blocks)) < last-first {
			for b := range d.mu.blocks {
				if b >= first && b < last {
					whole(b)
				}
			}
		} else {
			for b := first; b < last; b++ {
				whole(b)
			}
		}
	}
	d.mu.Unlock()
	d.zeros.Add(1)
	switch {
	case flags&target.ZeroNoHole != 0:
		d.noHoles.Add(1)
	case flags&target.ZeroDiscard != 0:
		d.discards.Add(1)
	}
	return nil
}

func (d *MemDevice) Flush(ctx context.Context) error {
	if err := d.enter(ctx, OpFlush, 0, 0); err != nil {
		return err
	}
	d.flushes.Add(1)
	return nil
}

// Extents reports allocation per block: holes, allocated zeroes, data.
func (d *MemDevice) Extents(ctx context.Context, off, n int64, fn func(target.Extent) bool) error {
	if err := d.enter(ctx, OpExtents, off, n); err != nil {
		return err
	}
	d.extents.Add(1)
	bs := int64(d.info.BlockSize)
	end := off + n
	var cur target.Extent
	var run []target.Extent // collected under the lock, reported after it
	d.mu.RLock()
	for pos := off; pos < end; {
		b := pos / bs
		l := min(end, (b+1)*bs) - pos
		blk, ok := d.mu.blocks[b]
		e := target.Extent{Length: l, Hole: !ok, Zero: !ok || blk == nil}
		if cur.Length > 0 && (cur.Hole != e.Hole || cur.Zero != e.Zero) {
			run = append(run, cur)
			cur = target.Extent{}
			if len(run) == 1024 {
				break
			}
		}
		cur.Length += l
		cur.Hole, cur.Zero = e.Hole, e.Zero
		pos += l
	}
	d.mu.RUnlock()
	if cur.Length > 0 && len(run) < 1024 {
		run = append(run, cur)
	}
	for _, e := range run {
		if !fn(e) {
			break
		}
	}
	return nil
}
