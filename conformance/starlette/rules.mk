# Starlette's own SessionMiddleware tests against Baton's middleware (included through
# conformance/conformance.mk; paths are relative to the repository root).
#
#   make conformance-starlette   download the sdist of the Starlette release the Python client
#                                is tested with from PyPI, then run its
#                                tests/middleware/test_session.py with
#                                baton_client.starlette_sessions in place of Starlette's
#                                SessionMiddleware, against a real baton and its own
#                                redis-server; prints the pass count
#
# It uses the Python client's venv (clients/python/.venv, from clients/clients.mk) and
# $(BATON_BIN), like clients-test-python.

CONFORMANCE_SUITES += conformance-starlette

.PHONY: conformance-starlette

conformance-starlette: redis-server $(CLIENTS_PY_DEPS) $(BATON_BIN)
	$(CLIENTS_VENV)/bin/ruff check conformance/starlette
	BATON_BIN=$(abspath $(BATON_BIN)) $(CLIENTS_VENV)/bin/python conformance/starlette/run.py
