// Package bench is cairn's side-by-side benchmark harness, run as
// `cairn bench` (Main) and, in its smoke form, by `go test ./bench/`.
//
// It owns the comparison: it starts cairnd and peer servers on loopback
// with exports of one size on one filesystem — over NBD nbdkit memory and
// file, qemu-nbd and nbd-server; over iSCSI tgtd with a file LUN; Ceph RBD
// (CephRBD: a throwaway cluster of one ceph-mon and 1 or 3 BlueStore OSDs,
// pool size = OSDs, when Ceph is installed) — plus cairn's own volume and
// store in process (Embedded), which shows what the storage costs without
// a front end. It fills every export, drives the standard workloads
// (Workloads) against each with a Driver (fio's nbd engine, and its rbd
// engine for Ceph; iscsi-perf for iSCSI reads and qemu-img bench for
// iSCSI writes; a Go load generator on the device interface in process),
// interleaving systems run by run and rotating the order each repetition,
// and reports medians, min–max spreads and subject/peer ratios as
// Markdown, JSON and charts (gonum/plot). Ratios compare systems on one
// front end at one injected latency, and a subject with the systems its
// scenario names in Versus (cairn-nbd with ceph-rbd, cairn-3node-r3 with
// cairn-nbd and ceph-rbd-r3) on the workloads one driver measured on both;
// front ends are set against cairn in process, and injected-latency runs
// against their pipelining limit (in flight / latency).
//
// Ceph is driven as cairn is: fio without --direct or flushes, so a write
// is acknowledged before it is durable — by cairn once every replica has
// it in its store, by librbd (its cache on, as by default; writearound in
// Pacific) once librbd has taken it, up to rbd_cache_max_dirty bytes.
// That is the mode that matches cairn without FUA; --direct=1 would make
// librbd wait for every OSD's commit, which cairn does only for FUA and
// FLUSH. Reads are not cached by librbd in either mode. Each run carries the host's state around it (load, CPU busy
// before it, steal during it) and is flagged when the host was busy.
//
// With --aged (Options.Aged) every export, once filled, also takes three
// times its size of 4 KiB random overwrites (fio with a fixed seed over
// NBD, qemu-img bench's scattered order over iSCSI, the load generator in
// process) before anything is measured, and the report gives each
// system's aging time and space after aging and at the end: for cairn its
// store's own figures (/metrics, Stats in process), sampled once the
// cleaner has gone quiet (bounded), beside du of its data directory, as
// on-disk / live.
//
// The snapshot scenarios (cairn-snap100ms against cairn-nbd; four targets
// of a four-node cluster, cairn-4target-snap100ms against cairn-4target)
// take a snapshot of the measured volume's group every 100 ms beside each
// measured run (snapshotLoad), keeping the last 8; each run records the
// snapshots taken, sealed and failed and, per target, the exact held
// windows of the sealed snapshots (the create replies) beside the change
// of the target's cairn_snapshot_hold_seconds histogram, and the report
// sets write p99 against the same system without snapshots measured in
// the same run.
//
// What is compared is declared, not coded: a Scenario names a System (how
// to start it), its front end, injected latency, workload subset and an
// optional activity to run beside every measurement; Scenarios lists the
// standard ones, and a new topology or fault scenario is one entry.
//
// Invariants:
//   - Every process the harness starts is in its own process group, is
//     killed with its group when Run returns (also on error or when ctx is
//     cancelled) and, on Linux, when the harness dies; nbd-server, which
//     must daemonize, is tracked by its pid file and killed the same way;
//     tgtd runs on a control socket of its own (never a system tgtd's) and
//     is stopped with tgtadm before its group is killed; a Ceph cluster's
//     daemons run in the foreground and keep everything (configuration,
//     keyrings, data, logs, admin sockets) in the system's directory,
//     never /etc/ceph, /var/lib/ceph or /var/run/ceph, and bind 127.0.0.1
//     only.
//   - A run that measures nothing is an error (ErrNoNumbers), never a zero
//     in the table.
//   - Ratios are subject/peer of medians of the headline metric (IOPS or
//     MiB/s), so above 1 the subject is faster on every workload.
//
// Concurrency: Run and Main are called from one goroutine and run one
// measurement at a time; a Scenario's During function runs on its own
// goroutine beside each measurement and must return when its context ends.
// The in-process system runs in the harness's process, so its storage
// goroutines run beside every other measurement (idle then).
// Linux only in practice (/proc, NBD and iSCSI tools; tgtd needs root); it
// builds elsewhere. Ceph is optional: without ceph-osd and friends
// (apt-get install ceph-mon ceph-osd ceph-common) the Ceph systems are
// skipped with that hint, like any missing peer.
package bench
