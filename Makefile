# Two commands matter on a fresh machine with only Go: `make demo` and `make test`.
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
KILLS ?= 500
FUZZTIME ?= 30s

.PHONY: all build test demo platform lint generate crash cluster-torture fuzz bench gobench benchcmp clean

all: build

build:
	$(GO) build ./...
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/sagactl ./cmd/sagactl
	$(GO) build -o bin/sagad ./cmd/sagad

# The README's test command: every package under the race detector,
# including 20 SIGKILL crash rounds and the fuzz seed corpora; then the
# alert rules and dashboard in deploy/ (a module of its own, see its doc.go).
# The web console's browser tests need Debian's chromium, and the Python
# client's end-to-end test python3. Where one is missing, make test says
# so, before and after, and skips those tests, so that a machine with
# only Go runs the rest; .ci/run installs chromium and sets
# SAGA_REQUIRE_TOOLS=1, under which a missing tool fails instead.
test:
	@skip=""; note=""; \
	if ! command -v $${SAGA_CHROMIUM:-chromium} >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
		skip="$$skip SAGA_SKIP_BROWSER=1"; note="$$note\n*** make test: no chromium: the web console's browser tests are SKIPPED (apt-get install -y chromium) ***"; \
	fi; \
	if ! command -v python3 >/dev/null 2>&1; then \
		skip="$$skip SAGA_SKIP_PYTHON=1"; note="$$note\n*** make test: no python3: the Python client's end-to-end test is SKIPPED ***"; \
	fi; \
	if [ -n "$$skip" ] && [ "$$SAGA_REQUIRE_TOOLS" = 1 ]; then printf "$$note\nmake test: SAGA_REQUIRE_TOOLS=1: refusing to skip\n" >&2; exit 1; fi; \
	[ -z "$$note" ] || printf "$$note\n\n" >&2; \
	env $$skip $(GO) test -race -timeout 15m ./... && (cd deploy && $(GO) test -timeout 5m ./...); rc=$$?; \
	[ -z "$$note" ] || printf "$$note\n" >&2; \
	exit $$rc

# A real workload on the embedded default (a temp data dir), some sagas
# failing and compensated, then a crash mid-compensation and a recovery.
demo:
	$(GO) run ./examples/demo

# The seed plan's eight platform operations under a policy; try
# POLICY=examples/platform/policies/off.yaml or FAIL_AT=embed.
POLICY ?= examples/platform/policies/critical.yaml
FAIL_AT ?=
platform:
	$(GO) run ./examples/platform -policy $(POLICY) -fail-at "$(FAIL_AT)"

# Regenerate the saga service's code (gen/) from proto/ with buf and the
# protoc plugins, all pinned as Go tools in tools/go.mod: nothing is
# fetched but Go modules. proto/generate_test.go fails when gen/ is stale.
BUF = $(GO) tool -modfile=tools/go.mod buf
generate:
	$(BUF) generate
	$(BUF) lint

lint:
	$(GO) vet ./...
	cd deploy && $(GO) vet ./...
	$(GO) tool staticcheck ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt wants to reformat:"; gofmt -l .; exit 1; }

# The long crash loop: KILLS=N (default 500); prints the seed of a failure.
crash:
	SAGA_CRASH_KILLS=$(KILLS) $(GO) test -race -timeout 0 -run '^TestCrashRecovery$$' -v -count=1 ./engine

# The multi-process failover test: a 3-member group of examples/cluster
# (built with the race detector), its leader SIGKILLed KILLS times
# (default 30 here); prints the seed of a failure.
cluster-torture:
	SAGA_CLUSTER_KILLS=$(if $(filter file,$(origin KILLS)),30,$(KILLS)) $(GO) test -race -timeout 0 -run '^TestClusterProcessesSurviveLeaderKills$$' -v -count=1 ./replication

# Each fuzz target for FUZZTIME (default 30s).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime $(FUZZTIME) ./wal
	$(GO) test -run '^$$' -fuzz '^FuzzSegmentReader$$' -fuzztime $(FUZZTIME) ./wal
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecord$$' -fuzztime $(FUZZTIME) ./fsm

# The benchmark harness: every figure in one run, with go-workflows
# (bench/peers) beside it, written to bench/results/latest.{json,md} and
# drawn to bench/results/*.png (about 5 minutes on 2 cores).
bench:
	$(GO) run ./bench/harness -out bench/results
	cd bench/plot && $(GO) run . -in ../results/latest.json -out ../results

# Go benchmarks of the hot paths and the engine (domain units).
gobench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./fsm ./engine ./policy

# Compare the Go benchmarks of two revisions with benchstat:
#   make benchcmp OLD=HEAD~3 [NEW=HEAD] [COUNT=6]
OLD ?= HEAD~1
NEW ?= HEAD
COUNT ?= 6
BENCHSTAT = golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
benchcmp:
	rm -rf /tmp/saga-benchcmp && mkdir -p /tmp/saga-benchcmp
	git worktree add --detach /tmp/saga-benchcmp/old $(OLD)
	git worktree add --detach /tmp/saga-benchcmp/new $(NEW)
	cd /tmp/saga-benchcmp/old && $(GO) test -run '^$$' -bench . -count $(COUNT) ./fsm ./engine > ../old.txt
	cd /tmp/saga-benchcmp/new && $(GO) test -run '^$$' -bench . -count $(COUNT) ./fsm ./engine > ../new.txt
	git worktree remove --force /tmp/saga-benchcmp/old; git worktree remove --force /tmp/saga-benchcmp/new
	$(GO) run $(BENCHSTAT) /tmp/saga-benchcmp/old.txt /tmp/saga-benchcmp/new.txt

clean:
	rm -rf bin demo-data sagad-data
