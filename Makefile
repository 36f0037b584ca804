# Two commands matter on a fresh machine with only Go: `make demo` and `make test`.
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
KILLS ?= 500
FUZZTIME ?= 30s

.PHONY: all build test demo platform lint crash fuzz bench clean

all: build

build:
	$(GO) build ./...
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/sagactl ./cmd/sagactl

# The README's test command: every package under the race detector,
# including 20 SIGKILL crash rounds and the fuzz seed corpora.
test:
	$(GO) test -race -timeout 15m ./...

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

lint:
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt wants to reformat:"; gofmt -l .; exit 1; }

# The long crash loop: KILLS=N (default 500); prints the seed of a failure.
crash:
	SAGA_CRASH_KILLS=$(KILLS) $(GO) test -race -timeout 0 -run '^TestCrashRecovery$$' -v -count=1 ./engine

# Each fuzz target for FUZZTIME (default 30s).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime $(FUZZTIME) ./wal
	$(GO) test -run '^$$' -fuzz '^FuzzSegmentReader$$' -fuzztime $(FUZZTIME) ./wal
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecord$$' -fuzztime $(FUZZTIME) ./fsm

# Go benchmarks of the hot paths and the engine (domain units).
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./fsm ./engine

clean:
	rm -rf bin demo-data
