# cairn — see README.md. `make run` and `make test` work on a fresh machine.
GO      ?= go
BIN     := bin
CONFIG  ?= configs/single.toml
# Debian packages the integration tests drive (real clients, real peers).
TEST_PKGS  := libnbd-bin qemu-utils qemu-block-extra fio libiscsi-bin nbdkit nbd-server tgt
TEST_TOOLS := nbdinfo nbdcopy qemu-io qemu-img fio iscsi-ls iscsi-inq iscsi-readcapacity16 iscsi-test-cu iscsi-perf nbdkit tgtd tgtadm
STATICCHECK_VERSION ?= v0.8.2
FUZZTIME ?= 10s

.PHONY: all build run test test-tools check fuzz clean bench bench-smoke cluster cluster-stop

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

run: build
	./$(BIN)/cairnd --config $(CONFIG)

# test-tools installs the real clients the integration tests use when they are
# missing (as root, with apt-get), and fails with a clear message otherwise.
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make test: missing$$missing; install: apt-get install $(TEST_PKGS) (or run make test as root)" >&2; exit 1; fi; \
	  echo "make test: installing $(TEST_PKGS) (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PKGS) >/dev/null || { echo "make test: apt-get install $(TEST_PKGS) failed" >&2; exit 1; }; \
	fi

test: test-tools build
	# -count=1: the e2e tests build cairnd with go build, which the test cache cannot see.
	CAIRN_REQUIRE_TOOLS=1 $(GO) test -count=1 -race -tags invariants -timeout 20m ./...
	# The allocation pins skip under -race (sync.Pool drops items there): run
	# them again in the build users run.
	$(GO) test -count=1 -run 'Allocs' ./...

check:
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>&1); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	@cp go.mod /tmp/cairn-go.mod.bak; cp go.sum /tmp/cairn-go.sum.bak; $(GO) mod tidy; \
	  if ! git diff --quiet -- go.mod go.sum; then git diff -- go.mod go.sum; cp /tmp/cairn-go.mod.bak go.mod; cp /tmp/cairn-go.sum.bak go.sum; echo "go mod tidy changes go.mod/go.sum"; exit 1; fi

# fuzz runs every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

# bench: the full side-by-side comparison (minutes; not CI) into
# bench/results/<date>-<host>/. BENCH_FLAGS passes harness flags.
BENCH_FLAGS ?=
bench: build
	./$(BIN)/cairn bench --cairnd ./$(BIN)/cairnd $(BENCH_FLAGS)

# bench-smoke: seconds long; make test runs the same as TestSmoke in ./bench.
bench-smoke: build
	./$(BIN)/cairn bench --smoke --cairnd ./$(BIN)/cairnd

# cluster: three cairnd on loopback in the background (configs/cluster/,
# state and logs in ./cluster-data/), then a 1 GiB volume cvol0 with three
# replicas, attached to node1. cluster-stop stops them.
CLUSTER_DIR := cluster-data
cluster: build
	@mkdir -p $(CLUSTER_DIR)
	@for i in 1 2 3; do \
	  if [ -f $(CLUSTER_DIR)/node$$i.pid ] && kill -0 $$(cat $(CLUSTER_DIR)/node$$i.pid) 2>/dev/null; then echo "node$$i already running"; continue; fi; \
	  nohup ./$(BIN)/cairnd --config configs/cluster/node$$i.toml >>$(CLUSTER_DIR)/node$$i.log 2>&1 & echo $$! >$(CLUSTER_DIR)/node$$i.pid; \
	done
	@echo "waiting for three storage nodes in service..."; \
	for t in $$(seq 60); do \
	  n=$$(./$(BIN)/cairn --addr 127.0.0.1:7901 node list 2>/dev/null | grep -c in_service); \
	  [ "$$n" = 3 ] && break; sleep 1; \
	done; [ "$$n" = 3 ] || { echo "cluster did not form; see $(CLUSTER_DIR)/node*.log"; exit 1; }
	@./$(BIN)/cairn --addr 127.0.0.1:7901 volume show cvol0 >/dev/null 2>&1 || \
	  ./$(BIN)/cairn --addr 127.0.0.1:7901 --token-file $(CLUSTER_DIR)/node1/admin.token volume create cvol0 --size 1GiB --replicas 3
	@./$(BIN)/cairn --addr 127.0.0.1:7901 node list
	@echo "cvol0: nbd://127.0.0.1:10811/cvol0  iscsi://127.0.0.1:3261/iqn.2026-11.dev.cairn:cvol0/0"

cluster-stop:
	@for i in 1 2 3; do \
	  if [ -f $(CLUSTER_DIR)/node$$i.pid ]; then kill $$(cat $(CLUSTER_DIR)/node$$i.pid) 2>/dev/null || true; rm -f $(CLUSTER_DIR)/node$$i.pid; fi; \
	done; echo "cluster stopped (state kept in $(CLUSTER_DIR)/)"

clean:
	rm -rf $(BIN)
