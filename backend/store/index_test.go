package store

import (
	"runtime"
	"testing"
)

// TestIndexMemory measures the heap the index takes per block written (one
// epoch, dense) and checks that Stats.IndexBytes accounts for it; the
// figure per TiB goes in the package doc.
func TestIndexMemory(t *testing.T) {
	const blocks = 1 << 16 // 256 MiB of blocks
	s := openMem(t, nil)
	x := index{pages: map[uint64]*page{}}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var acct int64
	for b := range uint64(blocks) {
		_, _, _, g := x.put(b, version{epoch: 1, seq: b, seg: 1, page: uint32(b), crc: 7, kind: kindData})
		acct += g
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc - before.HeapAlloc)
	perBlock := float64(heap) / blocks
	t.Logf("index: %.1f bytes of heap per 4 KiB block (%.2f GiB per TiB); accounted %.1f", perBlock, perBlock*(1<<28)/(1<<30), float64(acct)/blocks)
	if perBlock > 40 || float64(acct) < 0.9*float64(heap) {
		t.Fatalf("index heap %d bytes for %d blocks, accounted %d", heap, blocks, acct)
	}
	runtime.KeepAlive(&x)
	_ = s
}
