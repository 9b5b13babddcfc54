package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"cairn/target"
	"cairn/target/targettest"
)

// plainDevice hides every optional capability of the device it wraps.
type plainDevice struct{ target.Device }

func cawCDB(lba uint64, n byte) []byte {
	cdb := make([]byte, 16)
	cdb[0] = scsiCompareAndWrite
	binary.BigEndian.PutUint64(cdb[2:], lba)
	cdb[13] = n
	return cdb
}

// TestCompareAndWriteDevice: COMPARE AND WRITE is the device's; a
// miscompare reports the first differing byte of the request and writes
// nothing; a device without target.Comparer neither runs nor advertises
// the command.
func TestCompareAndWriteDevice(t *testing.T) {
	ctx := context.Background()
	dev := targettest.NewMemDevice(targettest.MemOptions{Size: 1 << 20})
	u := newLUN("caw", dev, 512, 1<<20, nil)
	old := bytes.Repeat([]byte{5}, 1024)
	if err := dev.WriteAt(ctx, old, 2048, 0); err != nil {
		t.Fatal(err)
	}
	cmp := bytes.Clone(old)
	cmp[700] = 6
	c := &scsiCmd{cdb: cawCDB(4, 2), data: append(cmp, bytes.Repeat([]byte{9}, 1024)...), edtl: 2048}
	var r scsiResult
	err := u.compareAndWrite(ctx, dev.Info(), c.cdb, c, &r)
	var s sense
	if !errors.As(err, &s) || s.key != keyMiscompare || !s.infoValid || s.info != 700 {
		t.Fatalf("miscompare: %v (%+v)", err, s)
	}
	got := make([]byte, 1024)
	if err := dev.ReadAt(ctx, got, 2048); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("a miscompare wrote: %v", err)
	}
	c.data = append(bytes.Clone(old), bytes.Repeat([]byte{9}, 1024)...)
	if err := u.compareAndWrite(ctx, dev.Info(), c.cdb, c, &r); err != nil {
		t.Fatal(err)
	}
	if err := dev.ReadAt(ctx, got, 2048); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{9}, 1024)) {
		t.Fatalf("compare and write did not write: %v", err)
	}
	if u.blockLimits()[5] == 0 {
		t.Error("Block Limits VPD: no MAXIMUM COMPARE AND WRITE LENGTH for a comparer")
	}

	p := newLUN("plain", plainDevice{dev}, 512, 1<<20, nil)
	if err := p.compareAndWrite(ctx, dev.Info(), c.cdb, c, &r); err != senseInvalidOpcode {
		t.Errorf("without a comparer: %v, want INVALID COMMAND OPERATION CODE", err)
	}
	if p.blockLimits()[5] != 0 {
		t.Error("Block Limits VPD: a MAXIMUM COMPARE AND WRITE LENGTH without a comparer")
	}
	for _, tc := range []struct {
		u    *lun
		want bool
	}{{u, true}, {p, false}} {
		var all scsiResult
		if err := tc.u.reportOpcodes([]byte{scsiMaintenanceIn, saReportOpcodes, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, &all); err != nil {
			t.Fatal(err)
		}
		listed := false
		for d := all.dataIn[4:]; len(d) >= 8; d = d[8+int(d[5]&0x02)*6:] {
			listed = listed || d[0] == scsiCompareAndWrite
		}
		if listed != tc.want {
			t.Errorf("%s: REPORT SUPPORTED OPERATION CODES lists COMPARE AND WRITE: %v, want %v", tc.u.name, listed, tc.want)
		}
		var one scsiResult
		err := tc.u.reportOpcodes([]byte{scsiMaintenanceIn, saReportOpcodes, 1, scsiCompareAndWrite, 0, 0, 0, 0, 1, 0, 0, 0}, &one)
		if err != nil || len(one.dataIn) < 2 || (one.dataIn[1]&0x07 == 3) != tc.want {
			t.Errorf("%s: one-command report of COMPARE AND WRITE: %v %x, want supported %v", tc.u.name, err, one.dataIn, tc.want)
		}
	}
}
