GO        ?= go
BIN       ?= bin
# Build tags of the slim agent binary: grpcnotrace leaves out gRPC's request
# tracing, which the agent never turns on.
AGENT_TAGS ?= grpcnotrace
FUZZTIME  ?= 5s
# Cache for built test servers (Vault), keyed by version, outside the repo.
CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/castellan

.PHONY: all build demo test test-unit test-integration test-monitoring test-helm fuzz-short proto vet fmt-check tidy-check lint bench tools

all: build

build:
	$(GO) build -o $(BIN)/castellan ./cmd/castellan
	$(GO) build -tags '$(AGENT_TAGS)' -o $(BIN)/castellan-agent ./cmd/castellan-agent

## demo: run the CA and a workload on this machine, no cluster needed.
demo: build
	$(BIN)/castellan demo

## test: the whole suite, unit and integration, against the real servers
## "tools" builds once (cached). A test whose server is missing fails
## unless CASTELLAN_ALLOW_SKIP=1.
test: fmt-check vet tidy-check lint tools test-unit fuzz-short test-monitoring test-helm test-integration

## test-unit: the fast inner loop (no external servers).
test-unit:
	$(GO) test -count=1 ./...

## test-integration: end-to-end tests against real servers.
test-integration: tools
	cd integration && $(GO) vet ./... && CASTELLAN_CACHE_DIR=$(CACHE_DIR) $(GO) test -count=1 -timeout 25m ./...

## test-monitoring: deploy/monitoring's alerts and dashboard against
## Prometheus's parser and rule engine (a module of its own, to keep
## Prometheus's dependencies out of the others).
test-monitoring:
	cd integration/monitoring/rules && $(GO) vet ./... && $(GO) test -count=1 ./...

## test-helm: render deploy/helm/castellan with Helm's Go library against
## the golden renderings integration/deploy applies (a module of its own).
test-helm:
	cd integration/helm && $(GO) vet ./... && $(GO) test -count=1 ./...

## fuzz-short: run every fuzz target briefly.
fuzz-short:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz-short.sh

## proto: regenerate the checked-in Go code of proto/ (needs protoc; the
## build and the tests do not).
proto:
	./scripts/gen-proto.sh

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## bench: Go benchmarks of the hot paths.
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

## tools: build the real servers the integration tests use, once, cached
## in $(CACHE_DIR) by version: Vault, SoftHSM2 (Debian), Istio's pilot-agent
## and pilot-discovery (istiod).
tools:
	CASTELLAN_CACHE_DIR=$(CACHE_DIR) ./scripts/tools.sh
	CASTELLAN_CACHE_DIR=$(CACHE_DIR) ./scripts/build-istio.sh

## lint: golangci-lint with the committed .golangci.yml (installed once from
## the Go module proxy into $(CACHE_DIR), keyed by version).
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT = $(CACHE_DIR)/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint
lint:
	@test -x $(GOLANGCI_LINT) || GOBIN=$(dir $(GOLANGCI_LINT)) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	$(GOLANGCI_LINT) run ./...

## tidy-check: every module's go.mod and go.sum are as "go mod tidy" leaves them.
tidy-check:
	$(GO) mod tidy -diff
	cd integration && $(GO) mod tidy -diff
	cd integration/monitoring/rules && $(GO) mod tidy -diff
	cd integration/helm && $(GO) mod tidy -diff
