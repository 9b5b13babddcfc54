package main

import "testing"

func TestApproxSize(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{
		{0, "-"}, {-1, "-"}, {1, "1 B"}, {1023, "1023 B"}, {1024, "1.00 KiB"},
		{66263040, "63.2 MiB"}, {270553174016, "252 GiB"}, {5 << 40, "5.00 TiB"}, {1 << 62, "4096 PiB"},
	} {
		if got := approxSize(c.n); got != c.want {
			t.Errorf("approxSize(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}
