// Package bench is cairn's side-by-side benchmark harness, run as
// `cairn bench` (Main) and, in its smoke form, by `go test ./bench/`.
//
// It owns the comparison: it starts cairnd and peer NBD servers (nbdkit
// memory and file, qemu-nbd, nbd-server) on loopback with exports of one
// size on one filesystem, fills every export, drives the standard
// workloads (Workloads) against each with a Driver (fio's nbd engine
// today), interleaving systems run by run and rotating the order each
// repetition, and reports medians, min–max spreads and subject/peer ratios
// as Markdown, JSON and charts (gonum/plot). Each run carries the host's
// state around it (load, CPU busy before it, steal during it) and is
// flagged when the host was busy.
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
//     must daemonize, is tracked by its pid file and killed the same way.
//   - A run that measures nothing is an error (ErrNoNumbers), never a zero
//     in the table.
//   - Ratios are subject/peer of medians of the headline metric (IOPS or
//     MiB/s), so above 1 the subject is faster on every workload.
//
// Concurrency: Run and Main are called from one goroutine and run one
// measurement at a time; a Scenario's During function runs on its own
// goroutine beside each measurement and must return when its context ends.
// Linux only in practice (/proc, NBD tools); it builds elsewhere.
package bench
