package configs

import (
	"math"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"4096", 4096, true},
		{"4096B", 4096, true},
		{"1KiB", 1 << 10, true},
		{"512MiB", 512 << 20, true},
		{"1GiB", 1 << 30, true},
		{"1gib", 1 << 30, true},
		{"10G", 10 << 30, true},
		{"10g", 10 << 30, true},
		{"4K", 4096, true},
		{"2T", 2 << 40, true},
		{"64TiB", 64 << 40, true},
		{"1PiB", 1 << 50, true},
		{" 1 GiB ", 1 << 30, true},
		{"8191P", 8191 << 50, true},
		{"8192P", 0, false}, // 2^63 overflows
		{"9223372036854775807", math.MaxInt64, true},
		{"9223372036854775808", 0, false},
		{"", 0, false},
		{"GiB", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"1.5G", 0, false},
		{"1GB", 0, false},
		{"1 MB", 0, false},
		{"1kb", 0, false},
		{"1X", 0, false},
		{"1GiBB", 0, false},
		{"0x10", 0, false},
		{"1 000", 0, false},
		{string(make([]byte, sizeTextMax+1)), 0, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want && tc.ok {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0"},
		{1, "1"},
		{1000, "1000"},
		{4096, "4KiB"},
		{1 << 20, "1MiB"},
		{3 << 29, "1536MiB"},
		{1 << 30, "1GiB"},
		{64 << 40, "64TiB"},
		{1 << 50, "1PiB"},
		{math.MaxInt64, "9223372036854775807"},
		{-4096, "-4KiB"},
	} {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzSizeRoundTrip(f *testing.F) {
	for _, n := range []int64{0, 1, 4096, 1 << 30, 3 << 29, math.MaxInt64} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		if n < 0 {
			n = -(n + 1)
		}
		s := FormatSize(n)
		got, err := ParseSize(s)
		if err != nil || got != n {
			t.Fatalf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, s, got, err)
		}
	})
}

func TestValidVolumeSize(t *testing.T) {
	for _, tc := range []struct {
		n  int64
		ok bool
	}{
		{4096, true}, {1 << 30, true}, {VolumeSizeMax, true},
		{0, false}, {-4096, false}, {4095, false}, {4097, false},
		{VolumeSizeMax + 4096, false}, {math.MaxInt64, false},
	} {
		if err := ValidVolumeSize(tc.n); (err == nil) != tc.ok {
			t.Errorf("ValidVolumeSize(%d) = %v, want ok=%v", tc.n, err, tc.ok)
		}
	}
}
