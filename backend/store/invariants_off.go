//go:build !invariants

package store

// invariants turns on expensive self-checks (go test -tags invariants).
const invariants = false
