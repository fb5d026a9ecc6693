# Baton — the README's two commands are `make run` and `make test`; both install what a
# fresh machine lacks (redis-server from the OS packages, the pinned buf CLI from npm).

CARGO ?= cargo
BUF := tools/node_modules/.bin/buf
# Integration tests start their own redis-server and baton processes; two at a time keeps
# the timing tests honest on a 2-core machine.
TEST_THREADS ?= 2
# cargo-deny from crates.io, pinned; advisories from the offline RustSec snapshot beside
# the repository (../shared/advisory-db) when the machine has one. Installed once per machine
# into TOOLS_CACHE, outside the checkout: compiling it takes minutes, and a clean clone (as
# CI's) would otherwise pay them on every run.
TOOLS_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/baton-tools
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := $(TOOLS_CACHE)/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny
ADVISORY_SNAPSHOT ?= $(firstword $(wildcard ../shared/advisory-db))

.PHONY: run test deps redis-server buf lint fmt-check clippy deny cargo-test bench bench-smoke lock-peers clean clients-test gen deploy-test abuse-test \
	toxiproxy chaos soak fresh-test docs-test envoy-ratelimit dashboard-test

# Client SDKs (clients/go, clients/python, clients/node): `make gen`, `make clients-test`.
-include clients/clients.mk
# Container image and Kubernetes manifests checks (deploy/): `make deploy-test`.
-include deploy/deploy.mk
# Raw HTTP/2 abuse tests (tests/abuse/): `make abuse-test`.
-include tests/abuse/abuse.mk
# Every `sh` block of README.md and docs/ run against a real baton (tests/docs/): `make docs-test`.
-include tests/docs/docs.mk
# The operator dashboard in headless Chromium (tests/dashboard/): `make dashboard-test`.
-include tests/dashboard/dashboard.mk
# Upstream frameworks' own test suites against a real baton (conformance/): `make conformance`.
-include conformance/conformance.mk

# The dashboard is on in development (http://127.0.0.1:8080); `make run ADMIN_LISTEN=…` moves it.
ADMIN_LISTEN ?= 127.0.0.1:8080

run: redis-server
	$(CARGO) run --release --bin baton -- --admin-listen $(ADMIN_LISTEN) $(ARGS)

test: deps lint cargo-test abuse-test clients-test bench-smoke deploy-test docs-test dashboard-test

deps: redis-server buf

redis-server:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "redis-server is missing: installing the redis-server OS package"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; \
		command -v redis-server >/dev/null || { echo "could not install redis-server"; exit 1; }; \
	fi
	@redis-server --version

buf: $(BUF)

$(BUF): tools/package.json tools/package-lock.json
	@echo "installing the pinned buf CLI (npm)"
	cd tools && npm ci --no-fund --no-audit --loglevel=error
	@touch $(BUF)

lint: buf fmt-check clippy deny
	$(BUF) lint
	$(BUF) format -d --exit-code

# A machine without rustfmt or clippy (no rustup network here) says so and skips the check.
fmt-check:
	@if $(CARGO) fmt --version >/dev/null 2>&1; then \
		$(CARGO) fmt --all -- --check; \
	else echo "rustfmt is not installed: skipping the format check"; fi

clippy:
	@if $(CARGO) clippy --version >/dev/null 2>&1; then \
		$(CARGO) clippy --workspace --all-targets --locked -- -D warnings; \
	else echo "clippy is not installed: skipping the lint"; fi

# cargo install writes the binary last, so an interrupted install leaves nothing to trust.
$(CARGO_DENY):
	@echo "installing cargo-deny $(CARGO_DENY_VERSION) (crates.io) into $(TOOLS_CACHE)"
	$(CARGO) install --locked --quiet cargo-deny --version $(CARGO_DENY_VERSION) \
		--root $(TOOLS_CACHE)/cargo-deny-$(CARGO_DENY_VERSION)

# Licences, bans and sources always; advisories against the snapshot, without network.
# cargo-deny reads `cargo metadata --offline`, which needs every package of Cargo.lock,
# including the Windows/wasm-only ones no Linux build downloads: fetch them first, or a
# machine with an empty cargo registry fails here.
deny: $(CARGO_DENY)
	$(CARGO) fetch --locked --quiet
	@if [ -n "$(ADVISORY_SNAPSHOT)" ]; then \
		tools/advisory-db.sh "$(ADVISORY_SNAPSHOT)" target/advisory-db && \
		$(CARGO_DENY) --offline check; \
	else \
		echo "no RustSec snapshot at ../shared/advisory-db: checking bans, licences and sources only"; \
		$(CARGO_DENY) --offline check bans licenses sources; \
	fi

# Toxiproxy, the fault-injecting proxy of the chaos suite (tests/chaos.rs), from the Go
# module proxy at a pinned version.
TOXIPROXY_VERSION := v2.5.0
TOXIPROXY := tools/toxiproxy/toxiproxy-server
TOXIPROXY_STAMP := tools/toxiproxy/.toxiproxy-$(TOXIPROXY_VERSION)

$(TOXIPROXY_STAMP):
	@echo "installing toxiproxy $(TOXIPROXY_VERSION) (Go module proxy)"
	mkdir -p tools/toxiproxy
	GOBIN=$(CURDIR)/tools/toxiproxy go install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION)
	mv tools/toxiproxy/server $(TOXIPROXY)
	@touch $@

toxiproxy: $(TOXIPROXY_STAMP)

# The chaos suite runs 2 minutes inside `make test`; `make chaos` runs it for CHAOS_SECS.
CHAOS_SECS ?= 900
chaos: redis-server toxiproxy
	BATON_CHAOS_SECS=$(CHAOS_SECS) TOXIPROXY_BIN=$(CURDIR)/$(TOXIPROXY) \
		$(CARGO) test --locked --test chaos -- --nocapture

# Constant memory, file descriptors and Redis connections under steady load, over
# SOAK_SECS (30 minutes by default); prints a table of samples and fails on growth.
SOAK_SECS ?= 1800
soak: redis-server
	BATON_SOAK_SECS=$(SOAK_SECS) $(CARGO) test --release --locked --test soak -- --nocapture

cargo-test: toxiproxy
	TOXIPROXY_BIN=$(CURDIR)/$(TOXIPROXY) $(CARGO) test --workspace --locked -- --test-threads=$(TEST_THREADS)

# The benchmark is a measurement, not a test: this smoke only proves that every part of it
# runs, the etcd peer and the three clients' lock-helper loads included.
bench-smoke: redis-server lock-peers clients-deps $(CLIENTS_NODE_DIST) $(BATON_BIN)
	$(CLIENTS_VENV)/bin/ruff check bench/locks bench/workers
	$(CARGO) run --locked --quiet -p baton-bench -- --baton $(BATON_BIN) \
		--duration 300ms --concurrency 4 --streams 200 --locks-bench $(LOCKS_BENCH) --etcd $(ETCD) \
		--client-lock-helpers > /dev/null

# aetcd, etcd's asyncio Python client, for its lock helper beside the Python client's.
BENCH_PEERS_VENV := bench/peers/.venv/.deps-installed

$(BENCH_PEERS_VENV): bench/peers/requirements.txt
	python3 -m venv bench/peers/.venv
	bench/peers/.venv/bin/pip install -q --disable-pip-version-check -r bench/peers/requirements.txt
	touch $@

# The load generator is the bench/ crate. Results go to bench/results/<date>.md, the summary
# to docs/benchmarks.md. The peers (BullMQ, node-redlock: pinned in bench/peers) run against
# the bench's own Redis in the same run.
# The clients' own workers (bench/workers) run from the clients' installed dependencies.
bench: redis-server clients-deps $(CLIENTS_NODE_DIST) envoy-ratelimit lock-peers $(BENCH_PEERS_VENV)
	$(CARGO) build --release --locked -p baton -p baton-bench
	npm ci --prefix bench/peers --no-fund --no-audit --loglevel=error
	target/release/baton-bench --baton target/release/baton --peers bench/peers \
		--envoy-ratelimit $(ENVOY_RATELIMIT) --locks-bench $(LOCKS_BENCH) --etcd $(ETCD) \
		--client-lock-helpers --report bench/results/$$(date +%F).md

# etcd 3.6, the gRPC coordination peer, and bench/locks, which drives Baton's Go lock helper
# and etcd's concurrency.Mutex alike: one Go module (bench/locks/go.mod pins etcd), built
# from the Go module proxy. etcd's own server module refuses `go install` (replace lines).
LOCKS_BENCH := tools/locks/locks
ETCD := tools/locks/etcd
LOCKS_SOURCES := bench/locks/go.mod bench/locks/go.sum $(wildcard bench/locks/*.go bench/locks/etcd/*.go)

$(LOCKS_BENCH): $(LOCKS_SOURCES) $(wildcard clients/go/baton/*.go)
	cd bench/locks && go vet ./... && go build -o ../../$(LOCKS_BENCH) .

$(ETCD): $(LOCKS_SOURCES)
	cd bench/locks && go build -o ../../$(ETCD) ./etcd

lock-peers: $(LOCKS_BENCH) $(ETCD)

# envoyproxy/ratelimit, the reference Envoy rate limit service and the benchmark's RLS peer,
# from the Go module proxy at a pinned commit (it tags no releases).
ENVOY_RATELIMIT_VERSION := v1.4.1-0.20260122083618-3fb702589d36
ENVOY_RATELIMIT := tools/ratelimit/service_cmd
ENVOY_RATELIMIT_STAMP := tools/ratelimit/.ratelimit-$(ENVOY_RATELIMIT_VERSION)

$(ENVOY_RATELIMIT_STAMP):
	@echo "installing envoyproxy/ratelimit $(ENVOY_RATELIMIT_VERSION) (Go module proxy)"
	mkdir -p tools/ratelimit
	GOBIN=$(CURDIR)/tools/ratelimit go install github.com/envoyproxy/ratelimit/src/service_cmd@$(ENVOY_RATELIMIT_VERSION)
	@touch $@

envoy-ratelimit: $(ENVOY_RATELIMIT_STAMP)

# What a newcomer's machine does: a clean clone of HEAD, built and tested with an empty
# cargo home and tools cache (the toolchain still comes from rustup). Slow (a full cold build): run it
# before a release or after touching the Makefile, Cargo.lock or an install step. The clone
# and cargo home (about 12 GiB) are removed however it ends; KEEP_FRESH=1 keeps them.
fresh-test:
	@dir=$$(mktemp -d) && cargo_home=$$(mktemp -d) && \
	if [ -z "$(KEEP_FRESH)" ]; then trap 'rm -rf "$$dir" "$$cargo_home"' EXIT; fi && \
	echo "cloning HEAD into $$dir; CARGO_HOME=$$cargo_home" && \
	git clone --quiet --no-local . "$$dir" && \
	CARGO_HOME="$$cargo_home" RUSTUP_HOME="$${RUSTUP_HOME:-$$HOME/.rustup}" \
		$(MAKE) -C "$$dir" test TOOLS_CACHE="$$cargo_home/baton-tools"

clean:
	$(CARGO) clean
	rm -rf tools/node_modules tools/toxiproxy tools/locks

# Until clients/clients.mk and deploy/deploy.mk define them, there is nothing to test there.
clients-test::
deploy-test::
abuse-test::
docs-test::
dashboard-test::
