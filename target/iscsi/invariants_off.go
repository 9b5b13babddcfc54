//go:build !invariants

package iscsi

// invariants turns on expensive self-checks (go test -tags invariants).
const invariants = false
