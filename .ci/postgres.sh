#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback for the distributed-tuning tests and
# benchmark, and print its URL (the last line of stdout; progress goes to stderr).
#
#   export PANTHER_TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"    # or: make postgres
#
# Installs Debian's `postgresql` package when no server binaries are found (needs root),
# keeps the cluster in $PANTHER_PG_DIR (default /tmp/panther-postgres) owned by the
# `postgres` user, listens on 127.0.0.1:$PANTHER_PG_PORT (default 55432, so a system
# cluster on 5432 is left alone) and creates the user and database `panther`.
# Running it again reuses a running server. Durability is switched off (fsync, synchronous
# commit): this server holds test data only, and tests should not wait on the disk.
set -euo pipefail

PGDIR="${PANTHER_PG_DIR:-/tmp/panther-postgres}"
PORT="${PANTHER_PG_PORT:-55432}"
URL="postgresql+psycopg2://panther:panther@127.0.0.1:${PORT}/panther"

say() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    done
    return 1
}

if ! BIN="$(find_bindir)"; then
    if [ "$(id -u)" != 0 ]; then
        say "PostgreSQL is not installed; run as root or: sudo apt-get install postgresql"
        exit 1
    fi
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BIN="$(find_bindir)"
fi

# The server refuses to run as root: it runs as `postgres` (or as the caller when not root).
if [ "$(id -u)" = 0 ]; then
    OWNER=postgres
    as_owner() { runuser -u postgres -- "$@"; }
else
    OWNER="$(id -un)"
    as_owner() { "$@"; }
fi

if [ ! -s "$PGDIR/data/PG_VERSION" ]; then
    say "creating a cluster in $PGDIR/data"
    mkdir -p "$PGDIR/data" "$PGDIR/run"
    chown -R "$OWNER" "$PGDIR"
    chmod 700 "$PGDIR/data"
    as_owner "$BIN/initdb" -D "$PGDIR/data" -U postgres -A trust --no-sync >/dev/null
fi

if ! as_owner "$BIN/pg_ctl" -D "$PGDIR/data" status >/dev/null 2>&1; then
    say "starting the server on 127.0.0.1:$PORT"
    as_owner "$BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 start \
        -o "-p $PORT -k $PGDIR/run -c listen_addresses=127.0.0.1 -c max_connections=300 \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >&2 \
        || { cat "$PGDIR/server.log" >&2; exit 1; }
fi

psql_admin() { as_owner "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qtAX "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'panther'")" != 1 ]; then
    psql_admin -c "CREATE ROLE panther LOGIN PASSWORD 'panther'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'panther'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE panther OWNER panther" >&2
fi
say "ready: $URL"
echo "$URL"
