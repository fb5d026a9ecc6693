# The operator dashboard in a real browser (included by the top-level Makefile; paths are
# relative to the repository root).
#
#   make dashboard-test   install Debian's chromium when /usr/bin/chromium is missing and the
#                         pinned npm packages of tests/dashboard (playwright-core, axe-core,
#                         @grpc/grpc-js, @grpc/proto-loader), build target/debug/baton, then
#                         run tests/dashboard/*.test.mjs: baton with --admin-listen and its
#                         own redis-server, data seeded over gRPC, every page visited by
#                         headless Chromium (axe-core, console errors, layout at 1280x800 and
#                         390x844, keyboard), every action clicked and its effect read back
#                         over gRPC
#
# SCREENSHOTS=1 make dashboard-test also writes a 1280x800 PNG of each page to
# docs/dashboard/. playwright-core never downloads a browser: the test drives the OS one.

DASHBOARD_DIR      := tests/dashboard
DASHBOARD_CHROMIUM := /usr/bin/chromium
# Rebuilt when the manifests change, so a second run skips the install.
DASHBOARD_DEPS     := $(DASHBOARD_DIR)/node_modules/.deps-installed

.PHONY: dashboard-deps dashboard-chromium

$(DASHBOARD_DEPS): $(DASHBOARD_DIR)/package.json $(DASHBOARD_DIR)/package-lock.json
	@echo "installing the dashboard test's dependencies (npm)"
	cd $(DASHBOARD_DIR) && npm ci --no-fund --no-audit --loglevel=error
	@touch $@

# Without recommends: no avahi, cups or notification daemons, only the browser and a font.
dashboard-chromium:
	@if [ ! -x $(DASHBOARD_CHROMIUM) ]; then \
		echo "chromium is missing: installing the chromium OS package"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends chromium fonts-liberation >/dev/null; \
		[ -x $(DASHBOARD_CHROMIUM) ] || { echo "could not install chromium"; exit 1; }; \
	fi

dashboard-deps: dashboard-chromium $(DASHBOARD_DEPS)

dashboard-test:: redis-server dashboard-deps docs-baton-bin
	BATON_BIN=target/debug/baton node --test $(DASHBOARD_DIR)/
