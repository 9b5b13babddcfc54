package configs

import (
	"fmt"
	"strconv"
	"strings"
)

// Sizes of the block device model, shared by every package that checks
// volume geometry.
const (
	// BlockSize is the logical block size of every volume, in bytes.
	BlockSize = 4096
	// VolumeSizeMax is the largest volume size, in bytes (64 TiB).
	VolumeSizeMax int64 = 64 << 40
)

// sizeUnits maps a unit suffix (matched case-insensitively) to its multiplier.
// Single letters are binary like their -iB forms: "10G" == "10GiB". The SI
// two-letter forms ("GB") are rejected as ambiguous rather than guessed.
var sizeUnits = []struct {
	suffix string
	shift  uint
}{
	{"kib", 10}, {"mib", 20}, {"gib", 30}, {"tib", 40}, {"pib", 50},
	{"k", 10}, {"m", 20}, {"g", 30}, {"t", 40}, {"p", 50},
	{"b", 0}, {"", 0},
}

// sizeTextMax bounds the input ParseSize looks at.
const sizeTextMax = 64

// ParseSize parses a byte count: a non-negative decimal integer followed by an
// optional unit. Units are binary and case-insensitive: K/KiB = 2^10,
// M/MiB = 2^20, G/GiB = 2^30, T/TiB = 2^40, P/PiB = 2^50; B or no unit means
// bytes. Whitespace between number and unit is allowed. Fractions, signs and
// the ambiguous SI forms (KB, MB, GB, TB, PB) are errors, as is a result that
// does not fit in an int64.
//
// ParseSize checks syntax only: whether the size suits a volume is
// ValidVolumeSize's business.
func ParseSize(s string) (int64, error) {
	if len(s) > sizeTextMax {
		return 0, fmt.Errorf("size %.20q...: longer than %d bytes", s, sizeTextMax)
	}
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a non-negative integer and an optional unit (4096, 512MiB, 1G)", s)
	}
	unit := strings.ToLower(strings.TrimSpace(t[i:]))
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: number out of range", s)
	}
	for _, u := range sizeUnits {
		if unit != u.suffix {
			continue
		}
		if n > (1<<63-1)>>u.shift {
			return 0, fmt.Errorf("size %q: out of range", s)
		}
		return n << u.shift, nil
	}
	switch unit {
	case "kb", "mb", "gb", "tb", "pb":
		return 0, fmt.Errorf("size %q: unit %q is ambiguous; use %siB (binary)", s, t[i:], strings.ToUpper(unit[:1]))
	}
	return 0, fmt.Errorf("size %q: unknown unit %q (want B, KiB, MiB, GiB, TiB, PiB or K, M, G, T, P)", s, strings.TrimSpace(t[i:]))
}

// FormatSize renders n in the largest binary unit that divides it exactly
// ("1GiB", "512MiB", "4KiB"), or as plain bytes ("1000"). For n >= 0,
// ParseSize(FormatSize(n)) == n.
func FormatSize(n int64) string {
	if n == 0 {
		return "0"
	}
	units := [...]string{"PiB", "TiB", "GiB", "MiB", "KiB"}
	for i, u := range units {
		shift := uint(50 - 10*i)
		if n%(1<<shift) == 0 {
			return strconv.FormatInt(n>>shift, 10) + u
		}
	}
	return strconv.FormatInt(n, 10)
}

// ValidVolumeSize reports whether size (bytes) is usable as a volume size:
// positive, a multiple of BlockSize and at most VolumeSizeMax.
func ValidVolumeSize(size int64) error {
	switch {
	case size <= 0:
		return fmt.Errorf("volume size %d: must be positive", size)
	case size%BlockSize != 0:
		return fmt.Errorf("volume size %d: not a multiple of %d bytes", size, BlockSize)
	case size > VolumeSizeMax:
		return fmt.Errorf("volume size %s: larger than the maximum %s", FormatSize(size), FormatSize(VolumeSizeMax))
	}
	return nil
}
