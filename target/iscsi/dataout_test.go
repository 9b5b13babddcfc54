package iscsi

import (
	"testing"
)

// TestTransfer walks WRITE data transfers through tables of PDUs.
func TestTransfer(t *testing.T) {
	type pdu struct {
		ttt, dsn uint32
		off, n   int
		final    bool
		want     dataVerdict
	}
	for _, tc := range []struct {
		name             string
		edtl, immediate  int
		final            bool
		firstBurst       int
		maxR2T, maxBurst int
		pdus             []pdu // Data-Out; R2Ts are solicited before each while wanted
		r2ts             []r2t // every R2T solicited, in order
		complete         bool
	}{
		{name: "all immediate", edtl: 4096, immediate: 4096, final: true, firstBurst: 8192, maxR2T: 1, maxBurst: 4096, complete: true},
		{name: "unsolicited then R2Ts", edtl: 16384, immediate: 1024, firstBurst: 4096, maxR2T: 2, maxBurst: 4096,
			pdus: []pdu{
				{reservedTag, 0, 1024, 3072, true, dataAccepted},
				{1, 0, 4096, 4096, true, dataAccepted},
				{2, 0, 8192, 2048, false, dataAccepted},
				{2, 1, 10240, 2048, true, dataAccepted},
				{3, 0, 12288, 4096, true, dataAccepted},
			},
			r2ts:     []r2t{{1, 0, 4096, 4096}, {2, 1, 8192, 4096}, {3, 2, 12288, 4096}},
			complete: true},
		{name: "unsolicited sequence ended early by F", edtl: 8192, immediate: 0, firstBurst: 8192, maxR2T: 1, maxBurst: 8192,
			pdus: []pdu{
				{reservedTag, 0, 0, 1024, true, dataAccepted},
				{reservedTag, 1, 1024, 1024, true, dataRefused}, // closed
				{1, 0, 1024, 7168, true, dataAccepted},
			},
			r2ts: []r2t{{1, 0, 1024, 7168}}, complete: true},
		{name: "out of order", edtl: 8192, immediate: 0, final: true, firstBurst: 0, maxR2T: 1, maxBurst: 8192,
			pdus: []pdu{
				{1, 1, 0, 1024, false, dataRefused},       // DataSN
				{1, 0, 512, 1024, false, dataRefused},     // offset
				{1, 0, 0, 9000, false, dataRefused},       // past the burst
				{7, 0, 0, 1024, false, dataRefused},       // unknown TTT
				{reservedTag, 0, 0, 1, true, dataRefused}, // no unsolicited data after F
				{1, 0, 0, 1024, true, dataShort},          // F before the burst's end
			},
			r2ts: []r2t{{1, 0, 0, 8192}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var x transfer
			x.start(tc.edtl, tc.immediate, tc.final, tc.firstBurst)
			var r2ts []r2t
			ttt := uint32(0)
			want := func() {
				for x.wantsR2T(tc.maxR2T) {
					ttt++
					r2ts = append(r2ts, x.solicit(ttt, tc.maxBurst))
				}
			}
			want()
			for i, p := range tc.pdus {
				if got := x.data(p.ttt, p.dsn, p.off, p.n, p.final); got != p.want {
					t.Fatalf("PDU %d %+v: verdict %d, want %d", i, p, got, p.want)
				}
				want()
			}
			if len(r2ts) != len(tc.r2ts) {
				t.Fatalf("R2Ts %+v, want %+v", r2ts, tc.r2ts)
			}
			for i := range r2ts {
				if r2ts[i] != tc.r2ts[i] {
					t.Fatalf("R2T %d: %+v, want %+v", i, r2ts[i], tc.r2ts[i])
				}
			}
			if x.complete() != tc.complete {
				t.Fatalf("complete %v, want %v (%+v)", x.complete(), tc.complete, x)
			}
		})
	}
}

// FuzzTransfer feeds a transfer arbitrary Data-Out PDUs mixed with the
// ones a correct initiator would send, and checks that it never accepts a
// byte twice or past EDTL, keeps its R2T bound, and that the correct
// initiator always completes it.
func FuzzTransfer(f *testing.F) {
	f.Add(uint16(16384), uint16(1024), false, uint16(4096), uint8(2), uint16(4096), []byte{0, 1, 2, 3})
	f.Add(uint16(8192), uint16(0), true, uint16(0), uint8(1), uint16(512), []byte{0xff, 0x10, 0x80, 0x42})
	f.Fuzz(func(t *testing.T, edtl16, imm16 uint16, final bool, fb16 uint16, maxR2T uint8, mb16 uint16, junk []byte) {
		edtl := int(edtl16)
		imm := min(int(imm16), edtl, int(fb16))
		maxBurst := max(int(mb16), 1)
		outstanding := max(int(maxR2T)%8, 1)
		var x transfer
		x.start(edtl, imm, final, int(fb16))
		got := make([]bool, edtl)
		for i := range imm {
			got[i] = true
		}
		ttt := uint32(0)
		check := func(v dataVerdict, off, n int) {
			if v == dataRefused {
				return
			}
			for i := off; i < off+n; i++ {
				if i >= edtl || got[i] {
					t.Fatalf("byte %d accepted twice or past EDTL %d", i, edtl)
				}
				got[i] = true
			}
		}
		// Junk first: arbitrary PDUs against the open sequences.
		for i := 0; i+3 < len(junk); i += 4 {
			for x.wantsR2T(outstanding) {
				ttt++
				x.solicit(ttt, maxBurst)
			}
			tag := uint32(junk[i] % 4)
			if tag == 0 {
				tag = reservedTag
			}
			off, n := int(junk[i+1])*64, int(junk[i+2])*16
			v := x.data(tag, uint32(junk[i+3]%3), off, n, junk[i+3]&0x80 != 0)
			if v == dataShort {
				return // the command fails here
			}
			check(v, off, n)
			if len(x.r2ts) > outstanding || x.received > x.solicited && !x.unsolOpen || x.solicited > edtl {
				t.Fatalf("bounds broken: %+v", x)
			}
		}
		// Then a correct initiator: it finishes the unsolicited sequence
		// and answers each R2T with its whole burst.
		if x.unsolOpen {
			s := x.unsol
			check(x.data(reservedTag, s.dataSN, s.next, s.end-s.next, true), s.next, s.end-s.next)
		}
		for steps := 0; !x.complete(); steps++ {
			for x.wantsR2T(outstanding) {
				ttt++
				x.solicit(ttt, maxBurst)
			}
			if len(x.r2ts) == 0 || steps > edtl+2 {
				t.Fatalf("stuck at %d of %d bytes: %+v", x.received, edtl, x)
			}
			s := x.r2ts[0]
			v := x.data(s.ttt, s.dataSN, s.next, s.end-s.next, true)
			if v != dataAccepted {
				t.Fatalf("a correct Data-Out refused: %d (%+v)", v, x)
			}
			check(v, s.next, s.end-s.next)
		}
		for i, b := range got {
			if !b {
				t.Fatalf("complete without byte %d", i)
			}
		}
	})
}
