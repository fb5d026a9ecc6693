#!/usr/bin/env bash
# Runs express-session's and connect-redis's own tests against Baton's express-session store
# (`make conformance-express-session`; see docs/sessions.md#express-session).
#
# From npm, at the versions below: express-session, its test tools, connect-redis (whose
# package carries its index_test.ts), vitest, and this repository's Node client packed as
# it would be published. express-session's npm package holds no tests: they are in its
# GitHub repository, which this suite cannot download; point EXPRESS_SESSION_REPO at a
# checkout of github.com/expressjs/session (tag v$EXPRESS_SESSION_VERSION) to run them,
# else that half is skipped and says so.
#
# Environment: BATON_BIN (the server binary), EXPRESS_SESSION_REPO (optional),
# CONFORMANCE_WORK (a directory to work in; default a new temporary one).
set -euo pipefail

EXPRESS_SESSION_VERSION=1.19.0
CONNECT_REDIS_VERSION=9.0.0

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${CONFORMANCE_WORK:-$(mktemp -d -t baton-conformance-express-session-XXXXXX)}
mkdir -p "$work"
echo "express-session conformance: working in $work"

# The client as users install it (npm pack runs its build, which empties dist/), then its
# test harness, which starts redis-server and baton.
(cd "$repo/clients/node" && npm pack --silent --pack-destination "$work" >/dev/null && npx tsc -p .)
client_tarball=$(ls "$work"/baton-dev-baton-client-*.tgz)

cat >"$work/package.json" <<JSON
{
  "private": true,
  "dependencies": {
    "@baton-dev/baton-client": "file:$(basename "$client_tarball")",
    "express-session": "$EXPRESS_SESSION_VERSION",
    "after": "0.8.2",
    "cookie-parser": "1.4.6",
    "express": "4.17.3",
    "mocha": "10.8.2",
    "supertest": "6.3.4",
    "vitest": "3.2.4"
  }
}
JSON
(cd "$work" && npm install --silent --no-audit --no-fund)

# connect-redis's test, from its npm package, beside the stand-ins for its imports.
mkdir -p "$work/connect-redis"
(cd "$work" && npm pack --silent "connect-redis@$CONNECT_REDIS_VERSION" >/dev/null)
tar -xzf "$work/connect-redis-$CONNECT_REDIS_VERSION.tgz" -C "$work/connect-redis" --strip-components=1 package/index_test.ts
cp "$here"/connect-redis/*.mjs "$work/connect-redis/"

package="$work/node_modules/express-session"
if [ -n "${EXPRESS_SESSION_REPO:-}" ]; then
  EXPRESS_SESSION_REPO=$(cd "$EXPRESS_SESSION_REPO" && pwd)
  version=$(node -p "require('$EXPRESS_SESSION_REPO/package.json').version")
  if [ "$version" != "$EXPRESS_SESSION_VERSION" ]; then
    echo "EXPRESS_SESSION_REPO holds express-session $version; its tests are run against $EXPRESS_SESSION_VERSION"
  fi
  rm -rf "$package/test"
  cp -R "$EXPRESS_SESSION_REPO/test" "$package/test"
  # The certificates its HTTPS tests use.
  (cd "$package" && ./test/support/gencert.sh >/dev/null 2>&1)
fi

status=0
(cd "$work" && node "$here/run.mjs" "$repo" "$package") || status=$?
[ -n "${CONFORMANCE_WORK:-}" ] || rm -rf "$work"
exit "$status"
