package store

import (
	"bytes"
	"errors"
	"testing"
)

func FuzzDecodeValue(f *testing.F) {
	v := make([]byte, dataValueLen)
	putValueHeader(v, 7, kindData)
	f.Add(v)
	z := make([]byte, valueHeaderLen)
	putValueHeader(z, 9, kindZero)
	f.Add(z)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, v []byte) {
		seq, kd, data, err := decodeValue(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		// Round trip.
		enc := make([]byte, valueHeaderLen+len(data))
		putValueHeader(enc, seq, kd)
		copy(enc[valueHeaderLen:], data)
		if !bytes.Equal(enc, v) {
			t.Fatalf("round trip %x != %x", enc, v)
		}
	})
}

func FuzzDecodePointKey(f *testing.F) {
	k := make([]byte, keyLen)
	putPointKey(k, 1, 2, 3)
	f.Add(k)
	f.Add([]byte("z"))
	f.Fuzz(func(t *testing.T, k []byte) {
		vol, block, epoch, err := decodePointKey(k)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		enc := make([]byte, keyLen)
		putPointKey(enc, vol, block, epoch)
		if !bytes.Equal(enc, k) {
			t.Fatalf("round trip %x != %x", enc, k)
		}
	})
}

func FuzzDecodeRange(f *testing.F) {
	r := zrange{epoch: 3, seq: 4, start: 10, end: 100}
	f.Add(encodeRangeKey(r, 9), encodeRangeValue(r))
	f.Add([]byte("z"), []byte{})
	f.Fuzz(func(t *testing.T, k, v []byte) {
		vol, r, err := decodeRange(k, v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if r.start >= r.end || r.end > BlocksMax {
			t.Fatalf("accepted bad bounds %+v", r)
		}
		if !bytes.Equal(encodeRangeKey(r, vol), k) || !bytes.Equal(encodeRangeValue(r), v) {
			t.Fatalf("round trip of %x=%x", k, v)
		}
	})
}

func FuzzDecodeRetained(f *testing.F) {
	f.Add(encodeRetained([]uint64{1, 5, 9}))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, v []byte) {
		es, err := decodeRetained(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if !bytes.Equal(encodeRetained(es), v) {
			t.Fatalf("round trip of %x", v)
		}
	})
}

// FuzzMerge checks that the merge operator is order independent: any order
// of MergeNewer/MergeOlder over the same operands gives the same result,
// the operand a Read would choose.
func FuzzMerge(f *testing.F) {
	a := make([]byte, valueHeaderLen)
	putValueHeader(a, 5, kindZero)
	b := make([]byte, dataValueLen)
	putValueHeader(b, 5, kindData)
	f.Add(a, b, []byte{0, 0, 0, 0, 0, 0, 0, 9, 2}, uint8(0))
	f.Add([]byte{}, []byte{1}, []byte{0xff}, uint8(3))
	f.Fuzz(func(t *testing.T, x, y, z []byte, order uint8) {
		ops := [][]byte{x, y, z}
		want := x
		for _, o := range ops[1:] {
			if newerValue(o, want) {
				want = o
			}
		}
		perms := [][3]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}
		p := perms[int(order)%len(perms)]
		vm, err := merger.Merge(nil, ops[p[0]])
		if err != nil {
			t.Fatal(err)
		}
		for i, j := range p[1:] {
			if (int(order)>>(3+i))&1 == 0 {
				err = vm.MergeNewer(ops[j])
			} else {
				err = vm.MergeOlder(ops[j])
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		got, closer, err := vm.Finish(true)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("merge order %v = %x, want %x", p, got, want)
		}
		if closer != nil {
			_ = closer.Close()
		}
	})
}

func FuzzDecodeLineage(f *testing.F) {
	f.Add(uint64(2), encodeLineage(&Lineage{Parent: 1, ParentEpoch: 5, Rollbacks: []Rollback{{From: 1, To: 3}, {From: 2, To: 9}}}))
	f.Add(uint64(1), encodeLineage(&Lineage{Parent: 1}))
	f.Add(uint64(1), encodeLineage(&Lineage{Rollbacks: []Rollback{{From: 4, To: 3}}}))
	f.Add(uint64(1), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, vol uint64, v []byte) {
		l, err := decodeLineage(vol, v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if l.check(vol) != nil || l.isZero() {
			t.Fatalf("decoded an invalid lineage %+v", l)
		}
		if !bytes.Equal(encodeLineage(l), v) {
			t.Fatalf("round trip of %x", v)
		}
		// Reads through it never loop: spans end, newest first.
		sp := spans(nil, l.Rollbacks, ^uint64(0))
		if len(sp) > len(l.Rollbacks)+1 || sp[len(sp)-1].lo != 0 {
			t.Fatalf("spans %v of %+v", sp, l)
		}
		for i := 1; i < len(sp); i++ {
			if sp[i].hi >= sp[i-1].lo {
				t.Fatalf("spans %v overlap", sp)
			}
		}
	})
}
