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
#   - a sharded database `shop` over three shards: shard 0 is the primary
#     above (with its replica), shards 1 and 2 are two more primaries
#     (127.0.0.1:15434 and 127.0.0.1:15435, same roles and passwords); on each,
#     database `shop` owned by `app` with the sharded table `orders` (key
#     customer_id) and the reference table `countries` (the same rows everywhere);
#     on shard 0, CREATE on schema public for `authenticator`, the two-phase
#     commit coordinator user, which makes the router's decision tables there
#   - max_prepared_transactions = 10 on every primary (and the replica): the
#     router commits writes on several shards with two-phase commit
#   - pgrouter on 127.0.0.1:6432 with ./example.router.toml and ./users.toml,
#     run from the repository root, logging to demo/pgrouter.log
#
#   bash scripts/quickstart.sh          # set up (or reuse) and start everything
#   bash scripts/quickstart.sh stop     # stop the router and all four servers
#   bash scripts/quickstart.sh status   # what is running
#   bash scripts/quickstart.sh clean    # stop and delete ./demo
#
# Re-running start reuses the clusters (roles and grants are brought up to
# date, fresh tokens are signed) and restarts the router, so a freshly built
# binary or an edited config is picked up. Clusters made by an earlier version
# of this script are brought up to date (the shard servers are added,
# max_prepared_transactions is set and the servers restarted once).
#
# Environment: CARGO_TARGET_DIR (the binary is $CARGO_TARGET_DIR/release/pgrouter),
# PGROUTER_BIN (run this binary instead), PGROUTER_NO_BUILD=1 (scripts/setup.sh
# skips `cargo build --release`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEMO="$ROOT/demo"
PGBIN=/usr/lib/postgresql/15/bin
PRIMARY_PORT=15432
REPLICA_PORT=15433
SHARD1_PORT=15434
SHARD2_PORT=15435
ROUTER_HOST=127.0.0.1
ROUTER_PORT=6432
ROUTER_PID_FILE="$DEMO/pgrouter.pid"
ROUTER_LOG="$DEMO/pgrouter.log"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
ROUTER_BIN="${PGROUTER_BIN:-$TARGET_DIR/release/pgrouter}"

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
SHARD1="$PGROOT/shard1"
SHARD2="$PGROOT/shard2"
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
    for dir in "$REPLICA" "$PRIMARY" "$SHARD1" "$SHARD2"; do
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
    if pg_running "$SHARD1"; then say "shard 1: running on $SHARD1_PORT ($SHARD1)"; else say "shard 1: stopped"; fi
    if pg_running "$SHARD2"; then say "shard 2: running on $SHARD2_PORT ($SHARD2)"; else say "shard 2: stopped"; fi
    if pid="$(router_pid)"; then say "pgrouter: running on $ROUTER_PORT (pid $pid)"; else say "pgrouter: stopped"; fi
}

psql_at() {  # port, psql args: psql as superuser through that server's unix socket
    local port="$1"
    shift
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$port" -U postgres "$@"
}

psql_su() { psql_at "$PRIMARY_PORT" "$@"; }

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

# The settings every demo server gets; the replica inherits the primary's
# through pg_basebackup (then overrides the port).
write_conf() {  # datadir port
    as_pg tee -a "$1/postgresql.conf" >/dev/null <<EOF

# --- pgrouter quickstart ---
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$SOCK'
max_connections = 200
shared_buffers = 128MB
wal_level = replica
max_wal_senders = 5
wal_keep_size = '256MB'
hot_standby = on
password_encryption = 'scram-sha-256'
# Two-phase commit of writes on several shards (PREPARE TRANSACTION).
max_prepared_transactions = 10
EOF
    as_pg tee "$1/pg_hba.conf" >/dev/null <<'EOF'
# pgrouter quickstart: local socket trusted, TCP needs a SCRAM password.
local   all          all                    trust
local   replication  all                    trust
host    all          all      127.0.0.1/32  scram-sha-256
EOF
}

init_server() {  # datadir port
    say "creating PostgreSQL server in $1 (port $2)"
    as_pg "$PGBIN/initdb" -D "$1" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    write_conf "$1" "$2"
}

# Clusters made before the sharded demo lack max_prepared_transactions: add it
# and stop the server, so that its next start (right after) picks it up. A hot
# standby needs at least the primary's value, so the replica is done first.
ensure_prepared_xacts() {  # datadir
    [ -f "$1/PG_VERSION" ] || return 0
    if ! grep -Eq '^[[:space:]]*max_prepared_transactions[[:space:]]*=[[:space:]]*[1-9]' \
            "$1/postgresql.conf" "$1/postgresql.auto.conf" 2>/dev/null; then
        say "setting max_prepared_transactions = 10 in $1"
        printf '\n# pgrouter quickstart: two-phase commit across shards\nmax_prepared_transactions = 10\n' \
            | as_pg tee -a "$1/postgresql.conf" >/dev/null
        if pg_running "$1"; then
            say "restarting PostgreSQL in $1 to apply it"
            as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null
        fi
    fi
}

# Roles are created only when missing; their attributes, passwords and grants
# are (re)applied on every run. The same on every primary: the router logs in
# to each shard with the same credentials, and the JWT start-up check wants
# the roles on every primary.
ensure_roles() {  # port
    psql_at "$1" -d postgres <<'EOF'
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
EOF
}

# Database `shop` on one shard's primary: the sharded table `orders` (empty
# at first: rows go in through the router, which places them) and the
# reference table `countries`, whose rows every shard holds alike.
ensure_shop() {  # port
    psql_at "$1" -d postgres <<'EOF'
SELECT 'CREATE DATABASE shop OWNER app' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'shop')\gexec
EOF
    psql_at "$1" -d shop <<'EOF'
ALTER SCHEMA public OWNER TO app;
SET client_min_messages = warning;
SET ROLE app;
CREATE TABLE IF NOT EXISTS orders (
    customer_id bigint,
    id bigint,
    amount numeric,
    note text,
    PRIMARY KEY (customer_id, id)
);
CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY, name text);
INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France'), ('jp', 'Japan'), ('us', 'United States')
ON CONFLICT (code) DO NOTHING;
GRANT USAGE ON SCHEMA public TO app_reader, app_writer;
GRANT SELECT ON orders, countries TO app_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON orders, countries TO app_writer;
EOF
    if [ "$1" = "$PRIMARY_PORT" ]; then
        # Shard 0 holds the two-phase commit records (coordinator_database
        # "" = shop), which the router makes on the first write on several
        # shards, logged in as the database's coordinator user: the [jwt]
        # connect_as user, authenticator. PostgreSQL 15 no longer lets every
        # role create in schema public, so it gets CREATE there (README
        # "Two-phase commit"); without it every cross-shard write fails 58000.
        psql_at "$1" -d shop -c "GRANT USAGE, CREATE ON SCHEMA public TO authenticator"
    fi
}

setup_primary() {
    if [ ! -f "$PRIMARY/PG_VERSION" ]; then
        # A replica of an older primary cannot follow a new one.
        rm -rf "$PRIMARY" "$REPLICA"
        init_server "$PRIMARY" "$PRIMARY_PORT"
    fi
    ensure_prepared_xacts "$REPLICA"
    ensure_prepared_xacts "$PRIMARY"
    start_pg "$PRIMARY" "$PGROOT/primary.log" "$PRIMARY_PORT"

    say "ensuring roles (app, report, authenticator, app_reader, app_writer), database app, table items"
    ensure_roles "$PRIMARY_PORT"
    psql_su -d postgres <<'EOF'
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

# Shards 1 and 2 of `shop`: primaries of their own (no replica).
setup_shard() {  # datadir port name
    if [ ! -f "$1/PG_VERSION" ]; then
        rm -rf "$1"
        init_server "$1" "$2"
    fi
    ensure_prepared_xacts "$1"
    start_pg "$1" "$PGROOT/$3.log" "$2"
    ensure_roles "$2"
}

setup_shop() {
    say "ensuring database shop (tables orders, countries) on shards 0, 1, 2 ($PRIMARY_PORT, $SHARD1_PORT, $SHARD2_PORT)"
    local port
    for port in "$PRIMARY_PORT" "$SHARD1_PORT" "$SHARD2_PORT"; do
        ensure_shop "$port"
    done
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
    [ -x "$ROUTER_BIN" ] || die "$ROUTER_BIN is missing (scripts/setup.sh builds it; PGROUTER_BIN names another binary)"
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
    setup_shard "$SHARD1" "$SHARD1_PORT" shard1
    setup_shard "$SHARD2" "$SHARD2_PORT" shard2
    setup_shop
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
    local countries
    countries="$("$PGBIN/psql" -X -At "host=$ROUTER_HOST port=$ROUTER_PORT dbname=shop user=app password=app-secret connect_timeout=5" \
        -c "SELECT count(*) FROM countries" 2>&1)" || die "a query on the sharded database shop through the router failed: $countries"

    local r="host=$ROUTER_HOST port=$ROUTER_PORT dbname=app"
    local s="host=$ROUTER_HOST port=$ROUTER_PORT dbname=shop user=app password=app-secret"
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

Sharded database shop: shard 0 = $PRIMARY_PORT (reads on its replica $REPLICA_PORT), shard 1 = $SHARD1_PORT,
shard 2 = $SHARD2_PORT. orders is split by customer_id (PostgreSQL's hash partitioning,
modulus 3); countries ($countries rows) is whole on every shard.

# rows go to the shard of their customer_id (1 -> shard 2, 2 -> shard 0, 3 -> shard 1)
psql "$s" -c "INSERT INTO orders (customer_id, id, amount, note) VALUES (1, 1, 10.00, 'first'), (2, 1, 20.00, NULL), (3, 1, 30.00, NULL)"

# which shard a statement goes to, and why (nothing is run)
psql "$s" -c "EXPLAIN (ROUTE) SELECT * FROM orders WHERE customer_id = 2"

# no key: every shard answers, one result
psql "$s" -c "SELECT customer_id, amount FROM orders"

# keys on several shards: just those shards
psql "$s" -c "SELECT * FROM orders WHERE customer_id IN (1, 2, 3)"

# a reference-table write reaches every shard; its reads go to one
psql "$s" -c "INSERT INTO countries VALUES ('it', 'Italy') ON CONFLICT DO NOTHING" -c "SELECT * FROM countries"

# a JWT session (bob: app_reader, read-only) on several shards runs as its role on each
PGPASSWORD=$bob psql "host=$ROUTER_HOST port=$ROUTER_PORT dbname=shop user=bob" -c "SELECT current_user, customer_id, amount FROM orders WHERE customer_id IN (1, 2, 3)"

# where the rows live: each shard directly
for port in $PRIMARY_PORT $SHARD1_PORT $SHARD2_PORT; do psql "host=127.0.0.1 port=\$port dbname=shop user=app password=app-secret" -c "SELECT inet_server_port() AS server, * FROM orders"; done

Router log:  demo/pgrouter.log
Stop:        bash scripts/quickstart.sh stop
EOF
}

case "${1:-start}" in
    start) start ;;
    stop) stop_router; stop_clusters ;;
    status) status ;;
    clean) stop_router; stop_clusters; rm -rf "$DEMO" "$PGROOT"; say "removed demo/" ;;
    -h|--help|help) sed -n '2,41p' "$0" ;;
    *) die "unknown command '$1' (start | stop | status | clean)" ;;
esac
