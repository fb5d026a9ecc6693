# Container image and Kubernetes manifest checks (included by the top-level Makefile; paths
# are relative to the repository root).
#
#   make deploy-test   install the pinned tools, then run deploy/tests: manifests rendered
#                      by kustomize and strictly decoded into Kubernetes' own types, probes,
#                      ports, env names against `baton --help`, the Dockerfile, the Grafana
#                      dashboard and alert queries, and grpc-health-probe — the check the
#                      kubelet runs — against a real baton through a Redis outage and SIGTERM
#
# Tools come from the registries at pinned versions: Python packages from PyPI into
# deploy/.venv, Go programs from the Go module proxy into deploy/bin (both ignored by git).

DEPLOY_VENV := deploy/.venv
DEPLOY_BIN  := deploy/bin
GO          ?= go

GRPC_HEALTH_PROBE_VERSION := v0.4.62
KUSTOMIZE_VERSION         := v5.8.1

# Stamps carry the version, so changing a pin reinstalls and nothing else does.
DEPLOY_PY_DEPS      := $(DEPLOY_VENV)/.deps-installed
DEPLOY_HEALTH_PROBE := $(DEPLOY_BIN)/.grpc-health-probe-$(GRPC_HEALTH_PROBE_VERSION)
DEPLOY_KUSTOMIZE    := $(DEPLOY_BIN)/.kustomize-$(KUSTOMIZE_VERSION)
DEPLOY_KUBECHECK    := $(DEPLOY_BIN)/kubecheck

.PHONY: deploy-deps deploy-baton-bin

$(DEPLOY_PY_DEPS): deploy/requirements.txt
	@echo "installing the deploy tests' Python dependencies (PyPI) into $(DEPLOY_VENV)"
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q --disable-pip-version-check -r deploy/requirements.txt
	@touch $@

$(DEPLOY_HEALTH_PROBE):
	@echo "installing grpc-health-probe $(GRPC_HEALTH_PROBE_VERSION) (Go module proxy)"
	GOBIN=$(CURDIR)/$(DEPLOY_BIN) $(GO) install github.com/grpc-ecosystem/grpc-health-probe@$(GRPC_HEALTH_PROBE_VERSION)
	@touch $@

$(DEPLOY_KUSTOMIZE):
	@echo "installing kustomize $(KUSTOMIZE_VERSION) (Go module proxy)"
	GOBIN=$(CURDIR)/$(DEPLOY_BIN) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@touch $@

# Our strict manifest decoder, against the Kubernetes API types pinned in its go.mod.
$(DEPLOY_KUBECHECK): deploy/tools/go.mod deploy/tools/go.sum deploy/tools/kubecheck/main.go
	@echo "building kubecheck (Kubernetes API types from the Go module proxy)"
	cd deploy/tools && GOBIN=$(CURDIR)/$(DEPLOY_BIN) $(GO) install ./kubecheck

deploy-deps: $(DEPLOY_PY_DEPS) $(DEPLOY_HEALTH_PROBE) $(DEPLOY_KUSTOMIZE) $(DEPLOY_KUBECHECK)

# The live tests run this binary; built only when missing, so a server build made by
# `make cargo-test` or by hand is used as it is.
deploy-baton-bin:
	@test -x target/debug/baton || $(CARGO) build --bin baton

deploy-test:: redis-server deploy-deps deploy-baton-bin
	cd deploy && BATON_BIN=$(CURDIR)/target/debug/baton DEPLOY_BIN=$(CURDIR)/$(DEPLOY_BIN) \
		.venv/bin/python -m pytest -q tests
