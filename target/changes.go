package target

import "context"

// ChangeExtent is a run of bytes whose blocks did, or did not, change.
type ChangeExtent struct {
	Length  int64
	Changed bool
}

// ChangeMapper is implemented by devices that know which of their blocks
// changed since an earlier point of their history, a base the device
// names (for cairn: a sealed snapshot of the volume, by name). Front ends
// export it as a block status context (NBD: cairn:changed:<base>).
type ChangeMapper interface {
	// ChangeBases returns the bases changes can be reported against,
	// sorted; at most a few thousand.
	ChangeBases() []string
	// HasChangeBase reports whether base is one of ChangeBases.
	HasChangeBase(base string) bool
	// Changes reports which bytes of [off, off+n) changed since base, as
	// consecutive extents starting at off, calling fn for each until fn
	// returns false or the range is covered. It may stop early after at
	// least one extent. A base that is not (or no longer) known is
	// ErrInvalid. A block reported unchanged reads as it did at base; one
	// reported changed may or may not read differently.
	Changes(ctx context.Context, base string, off, n int64, fn func(ChangeExtent) bool) error
}
