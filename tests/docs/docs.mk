# Docs that run (included by the top-level Makefile; paths are relative to the repository
# root). The convention is in docs/testing.md, "Docs that run".
#
#   make docs-test   install the pinned grpcurl (Go module proxy) into tools/go/bin, and jq
#                    and curl from the OS packages when missing, build target/debug/baton,
#                    then run every `sh` block of README.md and docs/*.md, in order, against
#                    a real baton and its own redis-server (tests/docs/run_docs.py)

DOCS_TOOLS      := tools/go/bin
GRPCURL_VERSION := v1.9.4
GO              ?= go
CARGO           ?= cargo

# The stamp carries the version, so changing the pin reinstalls and nothing else does.
DOCS_GRPCURL := $(DOCS_TOOLS)/.grpcurl-$(GRPCURL_VERSION)

.PHONY: docs-deps docs-baton-bin

$(DOCS_GRPCURL):
	@echo "installing grpcurl $(GRPCURL_VERSION) (Go module proxy)"
	GOBIN=$(CURDIR)/$(DOCS_TOOLS) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	@touch $@

# The docs pipe grpcurl's JSON through jq and read /metrics with curl, as a reader would.
docs-deps: $(DOCS_GRPCURL)
	@for tool in jq curl; do \
		if ! command -v $$tool >/dev/null 2>&1; then \
			echo "$$tool is missing: installing the $$tool OS package"; \
			SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
			$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$tool >/dev/null; \
			command -v $$tool >/dev/null || { echo "could not install $$tool"; exit 1; }; \
		fi; \
	done

# Always through cargo, so the docs run against the code they describe; incremental.
docs-baton-bin:
	$(CARGO) build --locked --bin baton

docs-test:: redis-server docs-deps docs-baton-bin
	python3 tests/docs/run_docs.py --baton target/debug/baton --tools $(DOCS_TOOLS)
