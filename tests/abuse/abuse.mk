# HTTP/2 abuse tests of issue #9 (included by the top-level Makefile; paths are relative to
# the repository root).
#
#   make abuse-test   install the pinned Python packages (h2, hpack, hyperframe, pytest, ruff)
#                     from PyPI into tests/abuse/.venv, build target/debug/baton, lint, then
#                     run tests/abuse against a real baton and its own redis-server: a flood
#                     of malformed requests, more streams than MAX_CONCURRENT_STREAMS, idle
#                     connections (no preface, unanswered PINGs) and rapid reset
#                     (CVE-2023-44487), each ending as the [server] config says

ABUSE_DIR  := tests/abuse
ABUSE_VENV := $(ABUSE_DIR)/.venv
CARGO      ?= cargo

# The stamp is newer than requirements.txt until a pin changes: then the venv is reinstalled.
ABUSE_PY_DEPS := $(ABUSE_VENV)/.deps-installed

.PHONY: abuse-deps abuse-baton-bin

$(ABUSE_PY_DEPS): $(ABUSE_DIR)/requirements.txt
	@echo "installing the abuse tests' Python dependencies (PyPI) into $(ABUSE_VENV)"
	python3 -m venv $(ABUSE_VENV)
	$(ABUSE_VENV)/bin/pip install -q --disable-pip-version-check -r $(ABUSE_DIR)/requirements.txt
	@touch $@

abuse-deps: $(ABUSE_PY_DEPS)

# Always through cargo: the tests read the [server] section, so a stale binary will not do.
# Incremental, so a fresh build costs nothing.
abuse-baton-bin:
	$(CARGO) build --locked --bin baton

abuse-test:: redis-server abuse-deps abuse-baton-bin
	$(ABUSE_VENV)/bin/ruff check $(ABUSE_DIR)
	$(ABUSE_VENV)/bin/ruff format --check $(ABUSE_DIR)
	cd $(ABUSE_DIR) && BATON_BIN=$(CURDIR)/target/debug/baton .venv/bin/python -m pytest -q -rP
