# Upstream projects' own test suites run against a real baton (issue 20). Not part of
# `make test`: each suite is downloaded at run time from the registry that carries it
# (PyPI, npm, the Go module proxy) and run unchanged against Baton's adapters.
#
#   make conformance   every suite below; each prints its own pass count
#
# Each suite lives in conformance/<suite>/ with a rules.mk that adds its target to
# CONFORMANCE_SUITES; docs/testing.md lists them and what each leaves out.

CONFORMANCE_SUITES :=

-include conformance/*/rules.mk

.PHONY: conformance
conformance: $(CONFORMANCE_SUITES)
