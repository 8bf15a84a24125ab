# Ferry's make targets. `make test` is what CI runs (.ci/run).
GO ?= go
FUZZTIME ?= 60s
STATICCHECK_VERSION ?= v0.7.0

.PHONY: test build run demo lint fuzz bench bench-store scale scale-procs scale-wan soak soak-faults faults tools deps diagrams check-diagrams check-ops

# The test suite: every package, race detector on. The console's browser
# test needs Chromium (scripts/deps.sh installs it where it can; outside CI
# the test skips with a message when Chromium is missing; before installing
# it prints each missing package and why it is needed). Screenshots go to
# artifacts/console/.
test:
	@./scripts/deps.sh --soft
	$(GO) test -race -timeout 18m ./...

# Debian packages the tests and checks use: chromium, plantuml, graphviz, promtool.
deps:
	./scripts/deps.sh

# Render every docs/diagrams/*.puml to SVG (commit the SVGs).
diagrams:
	./scripts/diagrams.sh

# Fail when a committed SVG is not the render of its source.
check-diagrams:
	./scripts/diagrams.sh --check

# The Prometheus alert rules parse and their unit tests pass.
check-ops:
	promtool check rules docs/ops/alerts.yml
	cd docs/ops && promtool test rules alerts_test.yml

build:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -o bin/ferry ./cmd/ferry

run:
	$(GO) run ./cmd/ferry run

demo:
	$(GO) run ./cmd/ferry demo

# gofmt, go vet, staticcheck (installed from the module proxy by scripts/tools.sh), a tidy go.mod, and
# no built file tracked by git (scripts/check-tree.sh).
lint: tools
	@$(GO) mod tidy -diff || (echo "go.mod or go.sum is not tidy: run go mod tidy"; exit 1)
	@./scripts/check-tree.sh
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'))" || (gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'); exit 1)
	$(GO) vet ./...
	./bin/tools/staticcheck ./...

tools:
	@STATICCHECK_VERSION=$(STATICCHECK_VERSION) ./scripts/tools.sh

# Every fuzz target for FUZZTIME each (60s by default).
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

# The benchmark report of docs/BENCHMARKS.md.
bench:
	FERRY_BENCH=1 $(GO) test ./bench/ -run '^TestReport$$' -v -count=1 -timeout 30m

bench-store:
	$(GO) test ./store/ -run '^$$' -bench . -benchtime 3s

# The scale report of issue 10 (docs/BENCHMARKS.md, "Scale"): N nodes in one process at production
# timing, real ones (libp2p TCP on 127.0.0.1) for N in FERRY_SCALE_N and simulated ones (libp2p on one
# mocknet) for N in FERRY_SCALE_SIM: start-up to full membership, RSS, goroutines and connections per
# node, idle CPU, 100 decisions and one decision applied by all, the reviewer's ack rows. Prints a
# markdown table and writes it to bench/results/scale.md. Idle is measured 200 s after full
# membership: a node's start (membership schedule, first advertisement, its dials closing) is over;
# over 120 s, the period of the collection the Go runtime forces on an idle process (a 60-s window
# holds one of them or none; the log line says how many the window held).
# The membership wait is 12 minutes from the first start: starting 999 simulated nodes takes 5-7.
# FERRY_SCALE_WAN sizes are simulated on internet-like links (testnet.Internet: 20-200 ms one way per
# pair, jitter, 1% of writes retransmitted; seed FERRY_SCALE_WAN_SEED). `make scale-wan` runs that
# row alone (300 nodes, 6-7 minutes).
# `make scale` first runs the process row (`make scale-procs`: 60 `ferry run` processes).
scale: scale-procs
	FERRY_SCALE=1 FERRY_SCALE_N=$${FERRY_SCALE_N-10,100,300} FERRY_SCALE_SIM=$${FERRY_SCALE_SIM-1000} FERRY_SCALE_WAN=$${FERRY_SCALE_WAN-300} FERRY_SCALE_REST=$${FERRY_SCALE_REST-200s} FERRY_SCALE_IDLE=$${FERRY_SCALE_IDLE-120s} FERRY_SCALE_JOIN=$${FERRY_SCALE_JOIN-12m} FERRY_SCALE_MAX_RSS=$${FERRY_SCALE_MAX_RSS-12} $(GO) test ./bench/ -run '^TestScale$$' -v -count=1 -timeout 120m

# The process row of the scale report: FERRY_SCALE_PROCS separate `ferry run` processes (default 60),
# node 0 the reviewer, connections.max 40; full membership, one decision on all, a burst of
# FERRY_SCALE_PROCS_BURST decisions (default 1000) on all and its rows sended, and the most
# connections of every process, sampled every half second (bench/results/scale-procs.md).
scale-procs:
	FERRY_SCALE_PROCS=$${FERRY_SCALE_PROCS-60} $(GO) test ./bench/ -run '^TestScaleProcs$$' -v -count=1 -timeout 30m

scale-wan:
	FERRY_SCALE_PROCS=0 FERRY_SCALE_N= FERRY_SCALE_SIM= FERRY_SCALE_WAN=$${FERRY_SCALE_WAN-300} $(MAKE) scale

# The soak of docs/BENCHMARKS.md: A and its partner B as processes, 5,000 changes a second for
# 10 minutes with a one-minute retention window and 128 MiB events streams; fails unless RSS
# stays flat within 10% and the ledger stays bounded; reports the store's bytes per change (samples in bench/results/soak.csv)
# and A's and B's CPU per change against full rate (a part-1 run first, unless FERRY_SOAK_FULLRATE_US).
# The nodes are built as released (CGO_ENABLED=0, as `make build` and the Dockerfile): with cgo,
# Pebble's memtables come from the C allocator, which keeps freed 16 MiB arenas and makes the
# resident memory creep (docs/BENCHMARKS.md, issue 18).
soak:
	CGO_ENABLED=0 FERRY_SOAK_MINUTES=$${FERRY_SOAK_MINUTES:-10} FERRY_SOAK_RATE=$${FERRY_SOAK_RATE:-5000} $(GO) test ./bench/ -run '^TestSoak$$' -v -count=1 -timeout 40m

# Long in-process fault runs: the e2e fault tests with 10x the events (not part of CI).
soak-faults:
	FERRY_SOAK=1 $(GO) test -race -timeout 60m ./e2e/ -run 'Fault|Partition|Sync'

# The process-level fault suite (faults/), long: 21 disk fill cycles, 12 SIGTERMs under load, 20 SIGKILLs
# with keyed retries, 60,000 changes paged. `make test` runs its short version. The disk test mounts a
# small file system: run as root (it skips, saying so, otherwise).
faults:
	FERRY_FAULTS=long $(GO) test -count=1 -timeout 90m -v -run . ./faults/
