# express-session's and connect-redis's own tests against Baton's express-session store
# (docs/sessions.md#express-session). connect-redis's test comes from its npm package;
# express-session's are not in its package, only in its GitHub repository:
#
#   make conformance-express-session EXPRESS_SESSION_REPO=<checkout of github.com/expressjs/session>
#
# Without EXPRESS_SESSION_REPO that half is skipped and says so.

CONFORMANCE_SUITES += conformance-express-session
EXPRESS_SESSION_REPO ?=

.PHONY: conformance-express-session
conformance-express-session: redis-server $(CLIENTS_NODE_DEPS) $(BATON_BIN)
	BATON_BIN=$(abspath $(BATON_BIN)) EXPRESS_SESSION_REPO=$(EXPRESS_SESSION_REPO) conformance/express-session/run.sh
