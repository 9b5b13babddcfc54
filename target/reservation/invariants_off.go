//go:build !invariants

package reservation

// invariants turns on expensive self-checks (go test -tags invariants).
const invariants = false
