package iscsi

import (
	"bytes"
	"errors"
	"fmt"
)

// Bounds on text key=value data (RFC 7143 §6.1).
const (
	keyBytesMax   = 63       // key names
	valueBytesMax = 8192     // values (long CHAP challenges and responses)
	textPairsMax  = 256      // pairs in one request sequence
	textBytesMax  = 64 << 10 // one request sequence, continuation PDUs included
)

var errText = errors.New("iscsi: malformed text")

// pair is one key=value.
type pair struct{ key, value string }

// parseText decodes NUL-separated key=value pairs. Empty strings between NULs
// are skipped; a final pair without a NUL is accepted. A key given twice, an
// empty or over-long key, an over-long value, or a string without '=' is an
// error. It does no I/O and never panics.
func parseText(b []byte) ([]pair, error) {
	if len(b) > textBytesMax {
		return nil, fmt.Errorf("%w: %d bytes", errText, len(b))
	}
	var out []pair
	for len(b) > 0 {
		s := b
		if i := bytes.IndexByte(b, 0); i >= 0 {
			s, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(s) == 0 {
			continue
		}
		eq := bytes.IndexByte(s, '=')
		if eq < 0 {
			return nil, fmt.Errorf("%w: no '=' in %.64q", errText, s)
		}
		k, v := s[:eq], s[eq+1:]
		if len(k) == 0 || len(k) > keyBytesMax || !validKey(k) {
			return nil, fmt.Errorf("%w: key %.64q", errText, k)
		}
		if len(v) > valueBytesMax {
			return nil, fmt.Errorf("%w: value of %s is %d bytes", errText, k, len(v))
		}
		if len(out) == textPairsMax {
			return nil, fmt.Errorf("%w: more than %d keys", errText, textPairsMax)
		}
		for _, p := range out {
			if p.key == string(k) {
				return nil, fmt.Errorf("%w: key %s given twice", errText, k)
			}
		}
		out = append(out, pair{string(k), string(v)})
	}
	return out, nil
}

// validKey reports whether k uses only the characters RFC 7143 §6.1 allows
// in key names.
func validKey(k []byte) bool {
	for _, c := range k {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == '+', c == '@', c == '_':
		default:
			return false
		}
	}
	return true
}

// appendText encodes pairs as key=value NUL ... onto dst.
func appendText(dst []byte, pairs []pair) []byte {
	for _, p := range pairs {
		dst = append(dst, p.key...)
		dst = append(dst, '=')
		dst = append(dst, p.value...)
		dst = append(dst, 0)
	}
	return dst
}

// lookup returns the value of key in pairs.
func lookup(pairs []pair, key string) (string, bool) {
	for _, p := range pairs {
		if p.key == key {
			return p.value, true
		}
	}
	return "", false
}
