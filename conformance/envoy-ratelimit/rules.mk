# envoyproxy/ratelimit's own test cases against a real baton and redis-server
# (docs/envoy.md, docs/testing.md#conformance). The Go module github.com/envoyproxy/ratelimit
# is downloaded from the Go module proxy at run time (version pinned in
# conformance/envoy-ratelimit/upstream.go); its test YAML, integration tests, README examples
# and Envoy end-to-end scripts are read from the module cache and replayed as Envoy sends them.
#
#   make conformance-envoy-ratelimit   three runs, each printing its pass count:
#     reference  upstream's own server, built from the module, must pass every step
#                (checks that the harness expects what upstream answers)
#     atomic     baton's default; upstream's counting differences must show, listed by name
#     upstream   baton --envoy-counting upstream; every step must pass

CONFORMANCE_SUITES += conformance-envoy-ratelimit
ENVOY_CONFORMANCE := conformance/envoy-ratelimit

.PHONY: conformance-envoy-ratelimit
conformance-envoy-ratelimit: redis-server $(BATON_BIN)
	cd $(ENVOY_CONFORMANCE) && test -z "$$(gofmt -l .)" && $(GO) vet ./...
	mkdir -p target
	cd $(ENVOY_CONFORMANCE) && $(GO) build -o $(CURDIR)/target/envoy-ratelimit-conformance .
	status=0; \
	target/envoy-ratelimit-conformance -check-reference || status=1; \
	for mode in atomic upstream; do \
		target/envoy-ratelimit-conformance -baton $(abspath $(BATON_BIN)) -mode $$mode || status=1; \
	done; \
	exit $$status
