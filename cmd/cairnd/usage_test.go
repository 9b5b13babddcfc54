package main

import (
	"testing"
	"time"
)

// TestUsageDue: a figure that moved by less than a step is still sent once
// the last report is usageSettle old, so growth that stops just past a
// report does not stay hidden until the refresh.
func TestUsageDue(t *testing.T) {
	last := usage{capacity: 10 << 30, used: 45 << 20}
	small := usage{capacity: 10 << 30, used: 48 << 20}
	big := usage{capacity: 10 << 30, used: 50 << 20}
	for _, c := range []struct {
		name string
		u    usage
		age  time.Duration
		want bool
	}{
		{"step, young", big, usageInterval, true},
		{"below step, young", small, usageInterval, false},
		{"below step, settled", small, usageSettle, true},
		{"unchanged, settled", last, usageSettle, false},
		{"unchanged, refresh", last, usageRefresh, true},
	} {
		if got := c.u.due(last, c.age); got != c.want {
			t.Errorf("%s: due = %v, want %v", c.name, got, c.want)
		}
	}
}
