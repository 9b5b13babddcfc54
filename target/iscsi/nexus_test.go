package iscsi

import (
	"log/slog"
	"testing"

	"cairn/target/reservation"
)

// TestNexusUnitAttentions: the queue starts with POWER ON, reports oldest
// first, merges duplicates, is bounded, and a size change queues
// CAPACITY DATA HAS CHANGED once.
func TestNexusUnitAttentions(t *testing.T) {
	n := newNexus(reservation.NewNexus("iqn.2026-12.test:a", [6]byte{1}), 7, 1<<20, slog.New(slog.DiscardHandler), nil)
	take := func(size int64) sense {
		t.Helper()
		ua, ok := n.takeUA(size)
		if !ok {
			return sense{}
		}
		return ua
	}
	n.addUA(uaModeParamChanged)
	n.addUA(uaModeParamChanged)
	for i, want := range []sense{uaPowerOnReset, uaModeParamChanged, {}} {
		if got := take(1 << 20); got != want {
			t.Fatalf("unit attention %d: %+v, want %+v", i, got, want)
		}
	}
	if got := take(2 << 20); got != uaCapacityChanged {
		t.Fatalf("after a resize: %+v", got)
	}
	if got := take(2 << 20); got != (sense{}) {
		t.Fatalf("CAPACITY DATA HAS CHANGED twice: %+v", got)
	}
	for i := range 2 * uaQueueMax {
		n.addUA(sense{key: keyUnitAttention, asc: 0x3f, ascq: byte(i)})
	}
	got := 0
	for ; got < 3*uaQueueMax; got++ {
		if _, ok := n.takeUA(2 << 20); !ok {
			break
		}
	}
	if got != uaQueueMax {
		t.Fatalf("%d unit attentions queued, want the bound %d", got, uaQueueMax)
	}
}
