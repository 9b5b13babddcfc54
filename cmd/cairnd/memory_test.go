package main

import (
	"testing"
	"time"

	"cairn/target"
)

func TestMemoryReleaser(t *testing.T) {
	b := target.NewBudget(256 << 20)
	m := newMemoryReleaser(b)
	now := time.Unix(1000, 0)
	step := func() bool { now = now.Add(memoryCheckInterval); return m.check(now) }

	// Idle: nothing to give back.
	for range 10 {
		if step() {
			t.Fatal("released without a burst")
		}
	}
	// A small burst is not worth a full GC.
	b.TryAcquire(m.burst - 1)
	b.Release(m.burst - 1)
	for range 10 {
		if step() {
			t.Fatal("released after a burst below the threshold")
		}
	}
	// A burst, still going: no release while it holds the budget.
	b.TryAcquire(200 << 20)
	for range 10 {
		if step() {
			t.Fatal("released during a burst")
		}
	}
	// It ends: released after the quiet checks, once.
	b.Release(200 << 20)
	released := 0
	for range memoryQuietChecks + 5 {
		if step() {
			released++
		}
	}
	if released != 1 {
		t.Fatalf("%d releases after one burst, want 1", released)
	}
	// A second burst right after: at most one release per gap.
	b.TryAcquire(200 << 20)
	b.Release(200 << 20)
	for range memoryQuietChecks + 2 {
		if step() {
			t.Fatal("released twice within the gap")
		}
	}
	now = now.Add(memoryReleaseGap)
	if !step() {
		t.Fatal("the second burst was never released")
	}
}
