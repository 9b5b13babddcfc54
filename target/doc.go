// Package target owns the contract between protocol front ends (NBD, iSCSI)
// and the volumes they export: the Device interface, the sentinel errors a
// device may return, and the flags a front end passes down; the optional
// Locator that tells a front end which node serves a volume attached
// elsewhere; and what the front ends share: payload buffer pools
// (GetBuffer), the accept loop, and the daemon-wide in-flight byte Budget
// every NBD connection and iSCSI session draws on.
//
// A front end knows nothing but this package. It translates wire requests
// into Device calls and maps the returned errors to its own error space with
// one function per protocol (target/nbd: errno, target/iscsi: sense data).
//
// Concurrency: every Device method may be called from many goroutines at
// once. A Device orders concurrent requests to the same bytes only as far as
// a disk would: two overlapping writes in flight may land in either order,
// but each lands whole per logical block, and a write acknowledged before
// another is issued is never overwritten by it out of order.
package target
