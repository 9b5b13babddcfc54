package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The cut check (a test tool; STYLE.md 16). Writers issue dependent
// writes: writer w's seq-th write (seq from 1, each issued after the
// previous one was acknowledged) carries its frontier, the highest seq of
// every writer acknowledged when it was issued, and goes to slot
// (seq-1) mod Slots of the writer's own blocks, so each write owns its
// block until the same writer overwrites it. A snapshot is a consistent
// cut if, per writer, it holds exactly a prefix 1..P[w] of the writer's
// writes (overwrites resolved), P[w] is at least the highest seq
// acknowledged before the snapshot began, and no write in it has a
// frontier past the prefixes.

// Layout of a cut-check block.
const (
	cutBlockBytes  = 4096
	cutMagic       = "cairncut"
	cutHeaderBytes = 24 // magic, writer u32, writers u32, seq u64
	// CutWritersMax bounds the writers of one check (the frontier fits a
	// block).
	CutWritersMax = 256
	// cutViolationsMax bounds the violations Check reports in full.
	cutViolationsMax = 16
)

var cutCRC = crc32.MakeTable(crc32.Castagnoli)

// ErrCut: a snapshot is not a consistent cut of the writes.
var ErrCut = errors.New("snapshot: not a consistent cut")

// CutWrite is one dependent write.
type CutWrite struct {
	Writer   int
	Seq      uint64
	Frontier []uint64 // per writer: highest seq acknowledged at issue
}

// Encode fills p (4096 bytes) with the write: header, frontier, a pattern
// derived from (writer, seq), crc32c.
func (w CutWrite) Encode(p []byte) {
	if len(p) != cutBlockBytes || len(w.Frontier) > CutWritersMax || w.Writer >= len(w.Frontier) {
		panic(fmt.Sprintf("snapshot: cut write of writer %d of %d into %d bytes", w.Writer, len(w.Frontier), len(p)))
	}
	copy(p, cutMagic)
	binary.BigEndian.PutUint32(p[8:], uint32(w.Writer))
	binary.BigEndian.PutUint32(p[12:], uint32(len(w.Frontier)))
	binary.BigEndian.PutUint64(p[16:], w.Seq)
	o := cutHeaderBytes
	for _, f := range w.Frontier {
		binary.BigEndian.PutUint64(p[o:], f)
		o += 8
	}
	x := byte(w.Seq*31 + uint64(w.Writer)*7)
	for i := o; i < cutBlockBytes-4; i++ {
		p[i] = x + byte(i)
	}
	binary.BigEndian.PutUint32(p[cutBlockBytes-4:], crc32.Checksum(p[:cutBlockBytes-4], cutCRC))
}

// DecodeCutWrite decodes a block written by Encode. A block of zeros (never
// written) is ok == false with no error.
func DecodeCutWrite(p []byte) (w CutWrite, ok bool, err error) {
	if len(p) != cutBlockBytes {
		return w, false, fmt.Errorf("cut block of %d bytes", len(p))
	}
	if allZero(p) {
		return w, false, nil
	}
	if string(p[:8]) != cutMagic {
		return w, false, errors.New("cut block: no magic")
	}
	if got, want := crc32.Checksum(p[:cutBlockBytes-4], cutCRC), binary.BigEndian.Uint32(p[cutBlockBytes-4:]); got != want {
		return w, false, fmt.Errorf("cut block: crc %08x, want %08x", got, want)
	}
	n := int(binary.BigEndian.Uint32(p[12:]))
	w.Writer = int(binary.BigEndian.Uint32(p[8:]))
	w.Seq = binary.BigEndian.Uint64(p[16:])
	if n > CutWritersMax || w.Writer >= n || w.Seq == 0 {
		return w, false, fmt.Errorf("cut block: writer %d of %d, seq %d", w.Writer, n, w.Seq)
	}
	w.Frontier = make([]uint64, n)
	for i := range w.Frontier {
		w.Frontier[i] = binary.BigEndian.Uint64(p[cutHeaderBytes+8*i:])
	}
	return w, true, nil
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// Cut is the shape of a cut check: Writers writers of Slots blocks each.
type Cut struct {
	Writers, Slots int
}

// Slot returns the slot of a writer's seq-th write.
func (c Cut) Slot(seq uint64) int { return int((seq - 1) % uint64(c.Slots)) }

// expected returns the seq slot j holds when a writer's writes 1..m are
// in: the largest seq ≤ m in slot j, or 0.
func (c Cut) expected(j int, m uint64) uint64 {
	if m == 0 {
		return 0
	}
	s := uint64(c.Slots)
	r := (m - 1) % s
	var back uint64
	if uint64(j) <= r {
		back = r - uint64(j)
	} else {
		back = r + s - uint64(j)
	}
	if back >= m {
		return 0
	}
	return m - back
}

// Check checks what a snapshot holds: block(w, j) is the content of writer
// w's slot j in it (4096 bytes, not retained), acked[w] the highest seq of
// w acknowledged before the snapshot began. It returns each writer's
// prefix and nil, or an error wrapping ErrCut naming the violations.
func (c Cut) Check(acked []uint64, block func(w, j int) []byte) ([]uint64, error) {
	if c.Writers <= 0 || c.Writers > CutWritersMax || c.Slots <= 0 || len(acked) != c.Writers {
		panic(fmt.Sprintf("snapshot: cut check of %d writers, %d slots, %d acked", c.Writers, c.Slots, len(acked)))
	}
	var bad []string
	n := 0
	report := func(format string, args ...any) {
		n++
		if len(bad) < cutViolationsMax {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	writes := make([][]CutWrite, c.Writers) // per writer, per slot; Seq 0 = none
	prefix := make([]uint64, c.Writers)
	for w := range c.Writers {
		writes[w] = make([]CutWrite, c.Slots)
		for j := range c.Slots {
			cw, ok, err := DecodeCutWrite(block(w, j))
			switch {
			case err != nil:
				report("writer %d slot %d: %v", w, j, err)
			case !ok:
			case cw.Writer != w || c.Slot(cw.Seq) != j || len(cw.Frontier) != c.Writers:
				report("writer %d slot %d holds write %d of writer %d (%d writers)", w, j, cw.Seq, cw.Writer, len(cw.Frontier))
			default:
				writes[w][j] = cw
				prefix[w] = max(prefix[w], cw.Seq)
			}
		}
	}
	for w := range c.Writers {
		for j := range c.Slots {
			if got, want := writes[w][j].Seq, c.expected(j, prefix[w]); got != want {
				report("writer %d slot %d holds write %d, want %d: a hole below write %d", w, j, got, want, prefix[w])
			}
		}
		if prefix[w] < acked[w] {
			report("writer %d: write %d was acknowledged before the snapshot, the snapshot ends at %d", w, acked[w], prefix[w])
		}
	}
	for w := range c.Writers {
		for _, cw := range writes[w] {
			for u, f := range cw.Frontier {
				if cw.Seq != 0 && f > prefix[u] {
					report("write %d of writer %d is in, it was issued after write %d of writer %d was acknowledged, the snapshot ends at %d", cw.Seq, w, f, u, prefix[u])
				}
			}
		}
	}
	if n == 0 {
		return prefix, nil
	}
	return prefix, fmt.Errorf("%w: %d violations: %v", ErrCut, n, bad)
}
