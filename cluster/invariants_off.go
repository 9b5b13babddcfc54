//go:build !invariants

package cluster

// invariants turns on expensive self-checks (go test -tags invariants).
const invariants = false
