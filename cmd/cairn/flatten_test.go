package main

import (
	"strings"
	"testing"

	"cairn/cluster/admin"
)

// TestProgressLine: the terminal line fills its bar by percent, clamped,
// and shows the ETA, or -- while it is unknown.
func TestProgressLine(t *testing.T) {
	for _, c := range []struct {
		st           admin.FlattenStatus
		filled, rest int
		eta          string
	}{
		{admin.FlattenStatus{Volume: "f", Percent: 0, ETASeconds: -1}, 0, progressBarWidth, "eta --"},
		{admin.FlattenStatus{Volume: "f", Percent: 50, ETASeconds: 90}, progressBarWidth / 2, progressBarWidth / 2, "eta 1m30s"},
		{admin.FlattenStatus{Volume: "f", Percent: 100, ETASeconds: 0}, progressBarWidth, 0, "eta 0s"},
		{admin.FlattenStatus{Volume: "f", Percent: 250, ETASeconds: 0}, progressBarWidth, 0, "eta 0s"},
	} {
		l := progressLine(c.st)
		bar := "[" + strings.Repeat("=", c.filled) + strings.Repeat(" ", c.rest) + "]"
		if !strings.Contains(l, bar) || !strings.Contains(l, c.eta) || !strings.HasPrefix(l, "flatten f ") {
			t.Errorf("%+v: %q, want %q and %q", c.st, l, bar, c.eta)
		}
	}
}
