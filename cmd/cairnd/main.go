// Command cairnd is the cairn daemon: it reads one TOML file, opens the
// node's block store and catalog (a Raft group, with gossip membership in
// a cluster), and, by its roles, serves its store to the other nodes
// (storage) and its volumes over NBD and iSCSI (target), with an admin
// HTTP/JSON API (and /metrics) beside them, until SIGINT or SIGTERM.
//
//	cairnd --config configs/single.toml [--data-dir DIR] [--nbd-listen ADDR] [--admin-listen ADDR] [--raft-bind ADDR]
//
// A replicated volume's target takes a replica that failed a write out of
// the volume (failover.go) and catches it up once it is back
// (catchup.go, which holds the argument for why the copy is correct
// under new writes and snapshots).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"cairn/configs"
)

// version is set by the linker for releases.
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("cairnd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "TOML config file (default: the embedded single-node config)")
	dataDir := fs.String("data-dir", "", "override data_dir")
	nbdListen := fs.String("nbd-listen", "", "override [nbd] listen")
	adminListen := fs.String("admin-listen", "", "override [admin] listen")
	raftBind := fs.String("raft-bind", "", "override [raft] bind")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	injectLatency := fs.Duration("inject-latency", 0, "benchmarks only: delay every storage operation below the front ends by this much")
	injectRPCLatency := fs.Duration("inject-rpc-latency", 0, "benchmarks only: take every reply of a node data RPC this long after it arrived (a longer network round trip)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stderr, "cairnd", version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cairnd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "cairnd: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var cfg *configs.Config
	var err error
	if *configPath == "" {
		// The embedded file says data_dir = "../data" relative to configs/:
		// state goes to ./data, as with make run.
		cfg, err = configs.Parse(configs.Single(), "configs")
	} else {
		cfg, err = configs.Load(*configPath)
	}
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return 1
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if *nbdListen != "" {
		cfg.NBD.Listen = *nbdListen
	}
	if *adminListen != "" {
		cfg.Admin.Listen = *adminListen
	}
	if *raftBind != "" {
		cfg.Raft.Bind = *raftBind
	}
	if *injectLatency < 0 || *injectLatency > time.Second {
		fmt.Fprintf(stderr, "cairnd: --inject-latency %s: want 0 to 1s\n", *injectLatency)
		return 2
	}
	if *injectRPCLatency < 0 || *injectRPCLatency > time.Second {
		fmt.Fprintf(stderr, "cairnd: --inject-rpc-latency %s: want 0 to 1s\n", *injectRPCLatency)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *injectLatency > 0 {
		log.Warn("injecting latency into every storage operation (benchmarks only)", "latency", *injectLatency)
	}
	if *injectRPCLatency > 0 {
		log.Warn("injecting latency into every node data RPC (benchmarks only)", "latency", *injectRPCLatency)
	}
	d, err := start(ctx, cfg, log, *injectLatency, *injectRPCLatency)
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return 1
	}
	<-ctx.Done()
	log.Info("shutting down", "signal", context.Cause(ctx))
	if err := d.Close(); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("shutdown", "err", err)
		return 1
	}
	return 0
}
