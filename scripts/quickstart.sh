#!/usr/bin/env bash
# Local demo of pgrouter:
#   - a PostgreSQL 15 primary (127.0.0.1:15432) and a streaming replica
#     (127.0.0.1:15433, made with pg_basebackup -R) under ./demo/pg/
#   - role `app` (password app-secret, SCRAM) owning database `app`, with a
#     small table `items`
#   - role `report` (password report-secret, SELECT on items): a read-only
#     login in users.toml
#   - for JWT login: `authenticator` (LOGIN NOINHERIT, password
#     authenticator-secret, the [jwt] connect_as user) and the NOLOGIN roles
#     `app_reader` (SELECT on items) and `app_writer` (SELECT, INSERT, UPDATE,
#     DELETE), both granted to authenticator
#   - an RSA key pair (demo/jwt.pem, demo/jwt-private.pem) and two sample
#     tokens valid for a day: demo/jwt-alice.token (sub=alice, role=app_writer)
#     and demo/jwt-bob.token (sub=bob, role=app_reader, read_only=true)
#   - pgrouter on 127.0.0.1:6432 with ./example.router.toml and ./users.toml,
#     run from the repository root, logging to demo/pgrouter.log
#
#   bash scripts/quickstart.sh          # set up (or reuse) and start everything
#   bash scripts/quickstart.sh stop     # stop the router and both servers
#   bash scripts/quickstart.sh status   # what is running
#   bash scripts/quickstart.sh clean    # stop and delete ./demo
#
# Re-running start reuses the clusters (roles and grants are brought up to
# date, fresh tokens are signed) and restarts the router, so a freshly built
# binary or an edited config is picked up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEMO="$ROOT/demo"
PGBIN=/usr/lib/postgresql/15/bin
PRIMARY_PORT=15432
REPLICA_PORT=15433
ROUTER_HOST=127.0.0.1
ROUTER_PORT=6432
ROUTER_PID_FILE="$DEMO/pgrouter.pid"
ROUTER_LOG="$DEMO/pgrouter.log"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
ROUTER_BIN="$TARGET_DIR/release/pgrouter"

say() { printf '[quickstart] %s\n' "$*"; }
die() { printf '[quickstart] error: %s\n' "$*" >&2; exit 1; }

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

# PostgreSQL refuses to run as root: as root, run its tools as `postgres`.
as_pg() {
    if [ "$IS_ROOT" -eq 1 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Where the data directories live. Normally demo/pg; if the postgres user
# cannot reach the repository (e.g. it sits under /root), a folder in /var/tmp.
pg_root() {
    local dir="$DEMO/pg"
    if [ "$IS_ROOT" -eq 1 ] && ! runuser -u postgres -- test -x "$DEMO" 2>/dev/null; then
        dir="/var/tmp/pgrouter-demo-$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)"
    fi
    printf '%s' "$dir"
}

mkdir -p "$DEMO"
PGROOT="$(pg_root)"
PRIMARY="$PGROOT/primary"
REPLICA="$PGROOT/replica"
SOCK="$PGROOT/run"
# Unix socket paths are limited to 107 bytes.
if [ "${#SOCK}" -gt 90 ]; then
    SOCK="/tmp/pgrouter-demo-sock-$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)"
fi

pg_running() { [ -f "$1/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

router_pid() {
    local pid
    [ -f "$ROUTER_PID_FILE" ] || return 1
    pid="$(cat "$ROUTER_PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # Only if that pid still is our router (pids get reused).
    case "$(cat "/proc/$pid/cmdline" 2>/dev/null | tr '\0' ' ')" in
        *pgrouter*) printf '%s' "$pid" ;;
        *) return 1 ;;
    esac
}

stop_router() {
    local pid
    if pid="$(router_pid)"; then
        say "stopping pgrouter (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "pgrouter did not stop within 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$ROUTER_PID_FILE"
}

stop_clusters() {
    local dir
    for dir in "$REPLICA" "$PRIMARY"; do
        if pg_running "$dir"; then
            say "stopping PostgreSQL in $dir"
            as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
        fi
    done
}

status() {
    local pid
    if pg_running "$PRIMARY"; then say "primary: running on $PRIMARY_PORT ($PRIMARY)"; else say "primary: stopped"; fi
    if pg_running "$REPLICA"; then say "replica: running on $REPLICA_PORT ($REPLICA)"; else say "replica: stopped"; fi
    if pid="$(router_pid)"; then say "pgrouter: running on $ROUTER_PORT (pid $pid)"; else say "pgrouter: stopped"; fi
}

psql_su() {  # psql as superuser through the primary's unix socket
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PRIMARY_PORT" -U postgres "$@"
}

start_pg() {  # datadir logfile port
    if pg_running "$1"; then
        return 0
    fi
    if port_open "$3"; then
        die "port $3 is in use by something else; stop it or free the port"
    fi
    rm -f "$1/postmaster.pid"
    as_pg setsid -w "$PGBIN/pg_ctl" -D "$1" -l "$2" -w -t 60 start >/dev/null \
        || { tail -n 30 "$2" >&2 || true; die "PostgreSQL in $1 did not start (log: $2)"; }
}

setup_primary() {
    if [ ! -f "$PRIMARY/PG_VERSION" ]; then
        say "creating primary in $PRIMARY"
        # A replica of an older primary cannot follow a new one.
        rm -rf "$PRIMARY" "$REPLICA"
        as_pg "$PGBIN/initdb" -D "$PRIMARY" -U postgres -E UTF8 --locale=C \
            --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        as_pg tee -a "$PRIMARY/postgresql.conf" >/dev/null <<EOF

# --- pgrouter quickstart ---
listen_addresses = '127.0.0.1'
port = $PRIMARY_PORT
unix_socket_directories = '$SOCK'
max_connections = 200
shared_buffers = 128MB
wal_level = replica
max_wal_senders = 5
wal_keep_size = '256MB'
hot_standby = on
password_encryption = 'scram-sha-256'
EOF
        as_pg tee "$PRIMARY/pg_hba.conf" >/dev/null <<'EOF'
# pgrouter quickstart: local socket trusted, TCP needs a SCRAM password.
local   all          all                    trust
local   replication  all                    trust
host    all          all      127.0.0.1/32  scram-sha-256
EOF
    fi
    start_pg "$PRIMARY" "$PGROOT/primary.log" "$PRIMARY_PORT"

    say "ensuring roles (app, report, authenticator, app_reader, app_writer), database app, table items"
    # Roles are created only when missing; their attributes, passwords and
    # grants are (re)applied on every run.
    psql_su -d postgres <<'EOF'
SET client_min_messages = warning;
SET password_encryption = 'scram-sha-256';
SELECT format('CREATE ROLE %I', r) FROM unnest(ARRAY['app', 'report', 'authenticator', 'app_reader', 'app_writer']) AS r
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r)\gexec
ALTER ROLE app LOGIN PASSWORD 'app-secret';
ALTER ROLE report LOGIN PASSWORD 'report-secret';
-- The [jwt] connect_as user: NOINHERIT, so it holds no table rights of its
-- own; JWT sessions get them through SET ROLE app_reader / app_writer.
ALTER ROLE authenticator LOGIN NOINHERIT NOSUPERUSER PASSWORD 'authenticator-secret';
ALTER ROLE app_reader NOLOGIN;
ALTER ROLE app_writer NOLOGIN;
GRANT app_reader, app_writer TO authenticator;
SELECT 'CREATE DATABASE app OWNER app' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'app')\gexec
EOF
    psql_su -d app <<'EOF'
ALTER SCHEMA public OWNER TO app;
SET client_min_messages = warning;
SET ROLE app;
CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text NOT NULL, price numeric(10, 2) NOT NULL);
INSERT INTO items VALUES (1, 'apple', 0.50), (2, 'bread', 2.20), (3, 'cheese', 7.90), (4, 'dates', 4.10)
ON CONFLICT (id) DO NOTHING;
GRANT USAGE ON SCHEMA public TO report, app_reader, app_writer;
GRANT SELECT ON items TO report, app_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO app_writer;
EOF
}

setup_replica() {
    if [ ! -f "$REPLICA/PG_VERSION" ]; then
        say "creating replica in $REPLICA (pg_basebackup -R)"
        rm -rf "$REPLICA"
        as_pg "$PGBIN/pg_basebackup" -D "$REPLICA" -R -X stream -c fast \
            -h "$SOCK" -p "$PRIMARY_PORT" -U postgres
        printf '\n# replica\nport = %s\n' "$REPLICA_PORT" | as_pg tee -a "$REPLICA/postgresql.conf" >/dev/null
    fi
    start_pg "$REPLICA" "$PGROOT/replica.log" "$REPLICA_PORT"
    local n=0
    for _ in $(seq 1 300); do
        n="$(psql_su -d postgres -At -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")"
        [ "$n" -ge 1 ] && break
        sleep 0.1
    done
    [ "$n" -ge 1 ] || die "the replica is not streaming (log: $PGROOT/replica.log)"
}

make_jwt() {
    "$ROOT/.venv/bin/python" - "$DEMO" <<'EOF'
import pathlib, sys, time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

demo = pathlib.Path(sys.argv[1])
private_path, public_path = demo / "jwt-private.pem", demo / "jwt.pem"
if not private_path.exists() or not public_path.exists():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    private_path.chmod(0o600)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
private_key = private_path.read_bytes()
now = int(time.time())
samples = {
    "alice": {"sub": "alice", "role": "app_writer"},
    "bob": {"sub": "bob", "role": "app_reader", "read_only": True},
}
for name, claims in samples.items():
    token = jwt.encode({**claims, "iat": now, "exp": now + 86400}, private_key, algorithm="RS256")
    (demo / f"jwt-{name}.token").write_text(token + "\n")
# The single sample token of earlier versions of this script.
(demo / "jwt.token").unlink(missing_ok=True)
EOF
}

start_router() {
    stop_router
    [ -f "$ROOT/example.router.toml" ] || die "example.router.toml is missing from the repository root"
    [ -f "$ROOT/users.toml" ] || die "users.toml is missing from the repository root"
    [ -x "$ROUTER_BIN" ] || die "$ROUTER_BIN is missing (scripts/setup.sh builds it)"
    if port_open "$ROUTER_PORT"; then
        die "port $ROUTER_PORT is in use by something else; stop it first"
    fi
    "$ROUTER_BIN" check --config "$ROOT/example.router.toml" --users "$ROOT/users.toml" \
        || die "example.router.toml / users.toml do not pass 'pgrouter check'"
    say "starting pgrouter on $ROUTER_HOST:$ROUTER_PORT (log: demo/pgrouter.log)"
    printf '\n=== %s: quickstart start ===\n' "$(date -Is)" >> "$ROUTER_LOG"
    # setsid: the router runs in its own session, detached from this shell.
    RUST_LOG="${RUST_LOG:-info}" setsid "$ROUTER_BIN" \
        --config "$ROOT/example.router.toml" --users "$ROOT/users.toml" \
        >> "$ROUTER_LOG" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid" > "$ROUTER_PID_FILE"
    for _ in $(seq 1 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$ROUTER_LOG" >&2
            die "pgrouter exited during start-up (log: $ROUTER_LOG)"
        fi
        port_open "$ROUTER_PORT" && return 0
        sleep 0.1
    done
    tail -n 40 "$ROUTER_LOG" >&2
    die "pgrouter is not listening on $ROUTER_PORT after 15 s"
}

start() {
    bash "$ROOT/scripts/setup.sh"
    mkdir -p "$PGROOT" "$SOCK"
    if [ "$IS_ROOT" -eq 1 ]; then
        chown postgres:postgres "$PGROOT" "$SOCK"
    fi
    chmod 0755 "$PGROOT"
    setup_primary
    setup_replica
    make_jwt
    start_router

    local check who alice bob
    check="$("$PGBIN/psql" -X -At "host=$ROUTER_HOST port=$ROUTER_PORT dbname=app user=app password=app-secret connect_timeout=5" \
        -c "SELECT count(*) FROM items" 2>&1)" || die "a query through the router failed: $check"
    alice="$(cat "$DEMO/jwt-alice.token")"
    bob="$(cat "$DEMO/jwt-bob.token")"
    who="$(PGPASSWORD="$alice" "$PGBIN/psql" -X -At "host=$ROUTER_HOST port=$ROUTER_PORT dbname=app user=alice connect_timeout=5" \
        -c "SELECT current_user" 2>&1)" || die "a JWT login through the router failed: $who"
    [ "$who" = app_writer ] || die "alice's JWT session runs as \"$who\", expected app_writer"

    local r="host=$ROUTER_HOST port=$ROUTER_PORT dbname=app"
    cat <<EOF

pgrouter is running on $ROUTER_HOST:$ROUTER_PORT (the items table has $check rows).
Reads go to the replica ($REPLICA_PORT), writes and transactions to the primary
($PRIMARY_PORT): inet_server_port() shows which server answered.

Password logins (SCRAM-SHA-256):
  psql "$r user=app password=app-secret"
  psql "$r user=report password=report-secret" -c "select current_user, inet_server_port(), count(*) from items"

JWT logins: the token is the password (RS256, signed with demo/jwt-private.pem,
valid for 1 day; also in demo/jwt-alice.token and demo/jwt-bob.token).

# alice: role app_writer (users.toml entry, auth = "jwt"): reads on the replica, writes on the primary
PGPASSWORD=$alice psql "$r user=alice" -c "select current_user, session_user, inet_server_port()"

PGPASSWORD=$alice psql "$r user=alice" -c "insert into items values (5, 'eggs', 3.20) on conflict (id) do update set price = excluded.price returning *, inet_server_port()"

# bob: role app_reader, read_only=true (no users.toml entry: auto-provisioned): reads work, writes get SQLSTATE 25006
PGPASSWORD=$bob psql "$r user=bob" -c "select current_user, inet_server_port(), count(*) from items"

PGPASSWORD=$bob psql "$r user=bob" -v VERBOSITY=verbose -c "insert into items values (6, 'figs', 1.10)"

Directly, for comparison:
  psql "host=127.0.0.1 port=$PRIMARY_PORT dbname=app user=app password=app-secret"   # primary
  psql "host=127.0.0.1 port=$REPLICA_PORT dbname=app user=app password=app-secret"   # replica (read-only)

Router log:  demo/pgrouter.log
Stop:        bash scripts/quickstart.sh stop
EOF
}

case "${1:-start}" in
    start) start ;;
    stop) stop_router; stop_clusters ;;
    status) status ;;
    clean) stop_router; stop_clusters; rm -rf "$DEMO" "$PGROOT"; say "removed demo/" ;;
    -h|--help|help) sed -n '2,26p' "$0" ;;
    *) die "unknown command '$1' (start | stop | status | clean)" ;;
esac
