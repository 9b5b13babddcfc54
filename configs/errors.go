package configs

import (
	"errors"
	"fmt"
)

// Sentinel errors; every error Load, Parse and Validate return matches one of
// them under errors.Is.
var (
	// ErrSyntax: the file is not valid TOML, or a value has the wrong TOML
	// type for its key (a string where a number belongs).
	ErrSyntax = errors.New("configs: syntax error")
	// ErrUnknownKey: the file sets a key the schema does not have.
	ErrUnknownKey = errors.New("configs: unknown key")
	// ErrInvalid: a value is well-formed TOML but not acceptable.
	ErrInvalid = errors.New("configs: invalid value")
)

// KeyError is one problem with one key of a configuration.
type KeyError struct {
	// Key is the dotted TOML path ("nbd.listen"; "volume[1].size" for the
	// second [[volume]] table). Empty when the decoder could not tell.
	Key string
	// Line is the 1-based line in the file, or 0 when unknown (the TOML
	// decoder reports lines for syntax and decoding errors only).
	Line int
	// Kind is ErrSyntax, ErrUnknownKey or ErrInvalid.
	Kind error
	// Msg says what is wrong, for a human.
	Msg string
}

func (e *KeyError) Error() string {
	s := "configs: "
	if e.Line > 0 {
		s += fmt.Sprintf("line %d: ", e.Line)
	}
	if e.Key != "" {
		s += e.Key + ": "
	}
	return s + e.Msg
}

// Unwrap returns Kind, so that errors.Is(err, ErrInvalid) classifies.
func (e *KeyError) Unwrap() error { return e.Kind }

// problems collects KeyErrors in the order they are found.
type problems []error

func (p *problems) add(key string, kind error, format string, args ...any) {
	*p = append(*p, &KeyError{Key: key, Kind: kind, Msg: fmt.Sprintf(format, args...)})
}

func (p problems) err() error { return errors.Join(p...) }
