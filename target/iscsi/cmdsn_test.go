package iscsi

import (
	"testing"
)

// TestCmdWindow walks the command window through a table of events.
func TestCmdWindow(t *testing.T) {
	type step struct {
		op      byte   // 'a' accept counted, 'u' accept uncounted, 'f' finish
		sn      uint32 // for accepts
		ok      bool   // accept's answer
		exp     uint32 // ExpCmdSN after
		max     uint32 // MaxCmdSN after
		inFight int
	}
	for _, tc := range []struct {
		name  string
		exp   uint32
		size  int
		steps []step
	}{
		{"in order until full, then a slot opens", 10, 2, []step{
			{'a', 10, true, 11, 11, 1},
			{'a', 11, true, 12, 11, 2},
			{'a', 12, false, 12, 11, 2}, // full: MaxCmdSN < ExpCmdSN
			{'f', 0, true, 12, 12, 1},
			{'a', 12, true, 13, 12, 2},
		}},
		{"outside the window is dropped and changes nothing", 100, 4, []step{
			{'a', 99, false, 100, 103, 0},
			{'a', 104, false, 100, 103, 0},
			{'u', 100, true, 101, 104, 0},  // an uncounted PDU moves ExpCmdSN only
			{'a', 100, false, 101, 104, 0}, // a duplicate is dropped
		}},
		{"a gap is skipped", 5, 8, []step{
			{'a', 8, true, 9, 15, 1}, // the window slides past the gap
			{'a', 6, false, 9, 15, 1},
		}},
		{"serial arithmetic across the wrap", 0xfffffffe, 4, []step{
			{'a', 0xfffffffe, true, 0xffffffff, 1, 1},
			{'a', 0xffffffff, true, 0, 1, 2},
			{'a', 0, true, 1, 1, 3},
			{'a', 2, false, 1, 1, 3},
			{'a', 0xfffffffd, false, 1, 1, 3},
			{'f', 0, true, 1, 2, 2},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newCmdWindow(tc.exp, tc.size)
			if w.maxSN() != tc.exp+uint32(tc.size)-1 {
				t.Fatalf("initial MaxCmdSN %d", w.maxSN())
			}
			for i, s := range tc.steps {
				ok := true
				switch s.op {
				case 'a', 'u':
					ok = w.accept(s.sn, s.op == 'a')
				case 'f':
					w.finish()
				}
				if ok != s.ok || w.exp != s.exp || w.maxSN() != s.max || w.inFlight != s.inFight {
					t.Fatalf("step %d %c %d: ok %v exp %d max %d in flight %d, want %v %d %d %d",
						i, s.op, s.sn, ok, w.exp, w.maxSN(), w.inFlight, s.ok, s.exp, s.max, s.inFight)
				}
				if p := w.packed(); uint32(p>>32) != w.exp || uint32(p) != w.maxSN() {
					t.Fatalf("packed %#x", p)
				}
			}
		})
	}
}

func TestCmdWindowAssertions(t *testing.T) {
	for name, fn := range map[string]func(){
		"empty window": func() { newCmdWindow(1, 0) },
		"finish of nothing": func() {
			w := newCmdWindow(1, 1)
			w.finish()
		},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			fn()
		}()
	}
}

// FuzzCmdWindow drives a window with arbitrary events and checks its
// invariants after each: the slots add up, an accepted CmdSN was inside
// the window and moves ExpCmdSN past it, a dropped one changes nothing.
func FuzzCmdWindow(f *testing.F) {
	f.Add(uint32(1), uint8(4), []byte{0, 1, 2, 0x80, 3, 0x80, 0x80})
	f.Add(uint32(0xfffffff0), uint8(32), []byte{0, 0, 0x20, 0x40, 0xff, 0x80})
	f.Fuzz(func(t *testing.T, exp uint32, size uint8, events []byte) {
		if size == 0 {
			size = 1
		}
		w := newCmdWindow(exp, int(size))
		for _, e := range events {
			before := w
			switch {
			case e&0x80 != 0: // finish
				if w.inFlight == 0 {
					continue
				}
				w.finish()
				if w.exp != before.exp || w.maxSN() != before.maxSN()+1 {
					t.Fatalf("finish moved the window: %+v → %+v", before, w)
				}
			default: // accept at an offset from ExpCmdSN, some outside
				sn := before.exp + uint32(int32(e&0x3f)-8)
				counted := e&0x40 == 0
				in := !serialLess(sn, before.exp) && !serialLess(before.maxSN(), sn)
				ok := w.accept(sn, counted)
				switch {
				case ok != in:
					t.Fatalf("accept %d in [%d, %d]: %v", sn, before.exp, before.maxSN(), ok)
				case !ok && w != before:
					t.Fatalf("a dropped CmdSN changed the window: %+v → %+v", before, w)
				case ok && w.exp != sn+1:
					t.Fatalf("accepted %d, ExpCmdSN %d", sn, w.exp)
				}
			}
			if w.inFlight < 0 || w.inFlight > w.size || w.maxSN() != w.exp-1+uint32(w.size-w.inFlight) {
				t.Fatalf("invariant broken: %+v", w)
			}
		}
	})
}
