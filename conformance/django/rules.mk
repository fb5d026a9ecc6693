# Django 5.2's own session tests against Baton's engine (included through
# conformance/conformance.mk; paths are relative to the repository root).
#
#   make conformance-django   download Django 5.2's sdist from PyPI, then run its
#                             SessionTestsMixin (with baton_client.django_sessions as the
#                             backend) and SessionMiddlewareTests (with it as SESSION_ENGINE)
#                             through Django's own tests/runtests.py against a real baton and
#                             its own redis-server; prints the pass count
#
# It uses the Python client's venv (clients/python/.venv, from clients/clients.mk) and
# $(BATON_BIN), like clients-test-python.

CONFORMANCE_SUITES += conformance-django

.PHONY: conformance-django

conformance-django: redis-server $(CLIENTS_PY_DEPS) $(BATON_BIN)
	$(CLIENTS_VENV)/bin/ruff check conformance/django
	BATON_BIN=$(abspath $(BATON_BIN)) $(CLIENTS_VENV)/bin/python conformance/django/run.py
