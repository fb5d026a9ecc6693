#!/usr/bin/env bash
# Makes the RustSec snapshot (plain files) into the git checkout cargo-deny reads with
# --offline: <db-path>/advisory-db-<hash of the db url>, committed at the snapshot's date.
set -euo pipefail
snapshot=${1:?usage: advisory-db.sh SNAPSHOT_DIR DB_PATH}
db_path=${2:?usage: advisory-db.sh SNAPSHOT_DIR DB_PATH}
# cargo-deny's directory name for https://github.com/rustsec/advisory-db.
checkout="$db_path/advisory-db-3157b0e258782691"
stamp="$checkout/.snapshot"
if [ -f "$stamp" ] && cmp -s "$stamp" "$snapshot/SNAPSHOT"; then
    exit 0
fi
rm -rf "$checkout"
mkdir -p "$checkout"
cp -R "$snapshot/." "$checkout/"
date=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' "$snapshot/SNAPSHOT" | head -n1)
(
    cd "$checkout"
    git init -q
    git add -A
    GIT_AUTHOR_DATE="${date}T00:00:00Z" GIT_COMMITTER_DATE="${date}T00:00:00Z" \
        git -c user.name=baton -c user.email=baton@localhost commit -q -m "RustSec snapshot $date"
)
cp "$snapshot/SNAPSHOT" "$stamp"
