#!/usr/bin/env bash
# Bring up a PostgreSQL server for the tooti test-suite and print the URL.
#
# Idempotent: safe to run again on a machine where the server is already up
# and the role/database already exist.  Must run as root (CI and dev boxes).
# All progress goes to stderr; stdout carries exactly one line,
#     export TOOTI_TEST_POSTGRES_URL=postgresql://...
# so callers can do:   eval "$(.ci/postgres.sh)"
#
# Auth: a password role over TCP on 127.0.0.1 (Debian's default pg_hba uses
# scram-sha-256 for host connections), so the tests can connect as any OS
# user.  The role gets CREATEDB because every test builds a throw-away
# database of its own.
set -euo pipefail

ROLE="${TOOTI_TEST_PG_ROLE:-tooti_test}"
PASSWORD="${TOOTI_TEST_PG_PASSWORD:-tooti_test}"
DB="${TOOTI_TEST_PG_DB:-tooti_test}"

log() { echo "postgres.sh: $*" >&2; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "pg_ctlcluster not found; installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi

# Pick the first cluster Debian knows about (e.g. "15 main").
read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters --no-header | head -n1) || true
if [ -z "${VERSION:-}" ]; then
    VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
    CLUSTER=main
    log "no cluster found; creating $VERSION/$CLUSTER"
    pg_createcluster "$VERSION" "$CLUSTER" >&2
    read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters --no-header | head -n1)
fi

if [ "$STATUS" != "online" ]; then
    log "starting cluster $VERSION/$CLUSTER"
    pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

# Wait until the server accepts connections (start can return early).
for _ in $(seq 1 50); do
    if su postgres -c "pg_isready -q -p $PORT"; then break; fi
    sleep 0.2
done
su postgres -c "pg_isready -q -p $PORT" || { log "server did not come up"; exit 1; }

psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qAt -p $PORT $*"; }

if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'\"")" != "1" ]; then
    log "creating role $ROLE"
    psql_admin "-c \"CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'\"" >&2
else
    # Re-assert the password/privileges so a half-configured role is repaired.
    psql_admin "-c \"ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'\"" >&2
fi

if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$DB'\"")" != "1" ]; then
    log "creating database $DB"
    psql_admin "-c \"CREATE DATABASE $DB OWNER $ROLE\"" >&2
fi

echo "export TOOTI_TEST_POSTGRES_URL=postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
