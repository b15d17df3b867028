# tkeyless — two commands on a fresh machine:
#   make demo   a local 3-node signer cluster, a (1,3) key and an HTTPS edge on 127.0.0.1
#   make test   the test suite (unit + integration with real processes)
# Everything else they need is built or installed here.

GO      ?= go
BIN     := $(CURDIR)/bin
DEMO    ?= $(CURDIR)/demo
# Go's own VCS stamping misses git worktrees and fails the build where git
# refuses the checkout (another user's files); builds stamp the version from
# git through the linker instead (internal/version), and a tree without .git
# (a release tarball) builds the same way, saying "unknown".
export GOFLAGS := -buildvcs=false
VERSION_PKG := github.com/tkeyless/tkeyless/internal/version
GIT_COMMIT  := $(shell git rev-parse HEAD 2>/dev/null)
GIT_DIRTY   := $(shell test -z "$$(git status --porcelain --untracked-files=no 2>/dev/null)" || echo true)
GIT_DATE    := $(shell git log -1 --format=%cI 2>/dev/null)
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null)
LDFLAGS     := -X $(VERSION_PKG).release=$(VERSION) -X $(VERSION_PKG).commit=$(GIT_COMMIT) \
               -X $(VERSION_PKG).dirty=$(GIT_DIRTY) -X $(VERSION_PKG).date=$(GIT_DATE)

.PHONY: all build demo test test-short test-long fuzz bench bench-full wan-bench vet fmt tools clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/signer ./cmd/edge ./loadtest

## demo: build, make a dev PKI and a 3-node (1,3) cluster, run an edge; Ctrl-C stops all.
demo: build
	@BIN=$(BIN) DEMO=$(DEMO) ./examples/local-cluster/run.sh

## tools: what the integration tests drive besides Go: curl, openssl, headless Chromium with
## certutil (to trust a test CA), and systemd-analyze (to check examples/systemd; the systemd
## package installs without running systemd). A test whose tool could not be installed is
## skipped, saying so.
tools:
	@command -v curl >/dev/null && command -v openssl >/dev/null && command -v chromium >/dev/null && command -v certutil >/dev/null && command -v systemd-analyze >/dev/null || { \
	  echo "installing curl, openssl, chromium, libnss3-tools and systemd"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl openssl chromium libnss3-tools systemd >/dev/null) || \
	  echo "warning: could not install them all; their subtests will be skipped"; }

## test: everything CI runs (well under 20 minutes on 2 cores).
test: tools vet
	$(GO) test -count=1 -timeout 25m ./...

## test-short: unit tests only, no processes.
test-short:
	$(GO) test -count=1 -short ./...

## test-long: test plus the suites behind the long build tag (today internal/e2e's edge
## identity rotation, whose real keygen takes about a minute).
test-long: tools
	$(GO) test -count=1 -timeout 80m -tags long ./...

## fuzz: each fuzz target for FUZZTIME (default 60s) in turn: peer envelopes and tss-lib
## messages from peers, keyless requests from edges, authority tokens. Seeds are in testdata/fuzz.
FUZZTIME ?= 60s
FUZZ_TARGETS := ./node:FuzzEnvelope ./internal/peerwire:FuzzUnmarshalEnvelope ./tss:FuzzPeerMessage ./internal/keylesswire:FuzzReadRequest ./internal/authority:FuzzDecode
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; fn=$${t#*:}; echo "== $$fn ($$pkg, $(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg; done

## bench: the load-test matrix (reduced, about 6 minutes) and the overload sweep (about 5) →
## BENCHMARKS.md and docs/bench/ (plots, CSV, JSON); then the engine benchmarks beside tss-lib's
## (about 15 minutes in all on 2 cores). BENCHMARKS.md sets the new figures beside the previous
## run's (the committed docs/bench/results.json, read before it is replaced).
bench: build
	$(GO) run ./loadtest matrix --bin $(BIN) --out docs/bench --markdown BENCHMARKS.md --overload \
	  $(if $(wildcard docs/bench/results.json),--compare docs/bench/results.json)
	$(GO) test -run XXX -bench 'Sign$$|SignReference|Presign' -benchtime 5x -count 1 ./tss/ | tee docs/bench/engine.txt

## bench-full: the whole matrix, concurrency 1–32.
bench-full: build
	$(GO) run ./loadtest matrix --full --bin $(BIN) --out docs/bench --markdown BENCHMARKS.md

## wan-bench: full-handshake p50 per (t,n), full and presigned, at RTT 0, 1, 10, 30, 80 ms on every
## edge–signer and signer–signer link (toxiproxy), beside the round-trip model → docs/bench/wan.md,
## wan.json, wan.png (about 10 minutes on 2 cores).
wan-bench: build
	$(GO) run ./loadtest wan --bin $(BIN) --out docs/bench

## generate: the peer protocol's Go code (internal/peerwire/gen) from its .proto, with buf and
## protoc-gen-go(-grpc) run as Go tools pinned in internal/peerwire/tools/go.mod (no protoc).
.PHONY: generate
generate:
	cd internal/peerwire && "$$($(GO) -C tools tool -n buf)" generate

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf $(BIN) $(DEMO)
