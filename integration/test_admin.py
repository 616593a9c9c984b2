"""The admin console (SPEC §5 "Operations", issue 5 item 2; docs/operations.md)
driven through the real psql binary: SHOW POOLS / CLIENTS / SERVERS / STATS /
CONFIG / VERSION, RELOAD, PAUSE, RESUME, SHUTDOWN, errors."""
from __future__ import annotations

import copy
import re
import signal
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

from harness import tomlw, wire
from harness.clients import connect, in_thread, run_async
from harness.ops import (ADMIN_DB, ADMIN_PASSWORD, ADMIN_USER, admin_columns, admin_general,
                         admin_rows, config_map, metrics_port, pools, psql_admin,
                         reload_marks, scrape, wait_reload, write_in_place)
from harness.jwt_setup import AUTHENTICATOR, jwt_db, keys, start_jwt_router  # noqa: F401 (fixtures)
from harness.jwt_tokens import claims
from harness.pg import APP_DB, APP_USER
from harness.router import app_user, router_binary
from harness.util import free_port, port_open, wait_until

COMMANDS = ["SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS", "SHOW STATS", "SHOW CONFIG",
            "SHOW VERSION", "RELOAD", "PAUSE", "RESUME", "SHUTDOWN"]
POOL_COLUMNS = ["database", "user", "shard", "role", "host", "port", "cl_active", "cl_waiting",
                "sv_active", "sv_idle", "pool_size", "maxwait_ms"]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")


@pytest.fixture
def admin_router(routers):
    return routers.start(general=admin_general(default_pool_size=4), with_replica=True)


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"psql failed ({out.returncode}):\n{out.stderr}\n{out.stdout}"
    return out


# --------------------------------------------------------------------- SHOW --
def test_show_pools(admin_router, primary, replica):
    r = admin_router
    # The psql table output works (header, separator, rows).
    table = ok(psql_admin(r, "SHOW POOLS")).stdout
    header = table.splitlines()[0]
    for col in POOL_COLUMNS:
        assert re.search(rf"\b{col}\b", header), (col, header)
    assert "(2 rows)" in table, table

    cols = admin_columns(r, "SHOW POOLS")
    assert cols[:len(POOL_COLUMNS)] == POOL_COLUMNS or set(POOL_COLUMNS) <= set(cols), cols
    holder = connect(r.dsn(), autocommit=False)
    try:
        holder.execute("SELECT 1")  # transaction open: one server connection checked out
        rows = {row["role"]: row for row in admin_rows(r, "SHOW POOLS")}
        assert set(rows) == {"primary", "replica"}
        p = rows["primary"]
        assert (p["database"], p["user"], p["shard"]) == (APP_DB, APP_USER, "0")
        assert (p["host"], int(p["port"])) == ("127.0.0.1", primary.port)
        assert int(rows["replica"]["port"]) == replica.port
        assert int(p["cl_active"]) == 1 and int(p["sv_active"]) == 1, p
        assert int(p["cl_waiting"]) == 0 and int(p["maxwait_ms"]) == 0, p
        assert int(p["pool_size"]) == 4
        assert int(p["sv_idle"]) >= 0
    finally:
        holder.rollback()
        holder.close()
    p = {row["role"]: row for row in admin_rows(r, "SHOW POOLS")}["primary"]
    assert (int(p["cl_active"]), int(p["sv_active"])) == (0, 0), p
    assert int(p["sv_idle"]) >= 1, p


def test_show_pools_counts_waiting_clients(routers):
    r = routers.start(general=admin_general(checkout_timeout_ms=10000), users=[app_user(pool_size=1)])
    holder = connect(r.dsn(), autocommit=False)
    holder.execute("SELECT 1")
    done = threading.Event()

    def waiter():
        with connect(r.dsn()) as c:
            c.execute("SELECT 1")
        done.set()
    th = in_thread(waiter)
    try:
        wait_until(lambda: int(pools(r)[0]["cl_waiting"]) == 1, 5, what="cl_waiting = 1")
        time.sleep(0.3)
        p = pools(r)[0]
        assert int(p["maxwait_ms"]) >= 200, p
        assert int(p["cl_active"]) == 1 and int(p["sv_active"]) == 1, p
    finally:
        holder.rollback()
        holder.close()
        th.join(10)
    assert done.is_set()


def test_show_clients(admin_router, primary):
    r = admin_router
    c = connect(r.dsn(application_name="admin-test-client"), autocommit=False)
    try:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # in a transaction
        rows = admin_rows(r, "SHOW CLIENTS")
        mine = [row for row in rows if row["application_name"] == "admin-test-client"]
        assert len(mine) == 1, rows
        row = mine[0]
        assert (row["user"], row["database"]) == (APP_USER, APP_DB)
        assert row["addr"].startswith("127.0.0.1:"), row
        assert row["state"] == "active", row
        assert row["auth"].startswith("scram"), row
        assert TIME_RE.match(row["connect_time"]), row
        assert row["tls"] == "f" and row["read_only"] == "f", row
        # The role its statements run as: for a password login, the role
        # its pools log in as (server_user, by default the user itself).
        assert row["role"] == APP_USER, row
        # docs/operations.md: `host:port`; the router may add the backend pid.
        assert row["server"] in (f"127.0.0.1:{primary.port}", f"127.0.0.1:{primary.port} pid {pid}"), row
        assert int(row["id"]) > 0
        c.rollback()
        row = [x for x in admin_rows(r, "SHOW CLIENTS") if x["id"] == row["id"]][0]
        assert row["state"] == "idle" and row["server"] is None, row
    finally:
        c.close()
    wait_until(lambda: not [x for x in admin_rows(r, "SHOW CLIENTS")
                            if x["application_name"] == "admin-test-client"], 5,
               what="the closed client to leave SHOW CLIENTS")


def test_show_servers(admin_router, primary):
    r = admin_router
    a = connect(r.dsn(), autocommit=False)
    b = connect(r.dsn(), autocommit=False)
    try:
        pids = {a.execute("SELECT pg_backend_pid()").fetchone()[0],
                b.execute("SELECT pg_backend_pid()").fetchone()[0]}
        rows = [x for x in admin_rows(r, "SHOW SERVERS") if x["role"] == "primary"]
        active = {int(x["backend_pid"]): x for x in rows if x["state"] == "active"}
        assert set(active) == pids, rows
        clients = {x["id"] for x in admin_rows(r, "SHOW CLIENTS")}
        for x in active.values():
            assert x["pool"] == f"{APP_USER}@{APP_DB}/0", x
            assert (x["host"], int(x["port"])) == ("127.0.0.1", primary.port)
            assert x["client_id"] in clients, (x, clients)
            assert TIME_RE.match(x["connect_time"]), x
        # Every pid the router reports exists on the primary.
        on_server = {b_["pid"] for b_ in primary.backends(user=APP_USER, db=APP_DB)}
        assert {int(x["backend_pid"]) for x in rows} <= on_server
    finally:
        a.rollback()
        b.rollback()
        a.close()
        b.close()
    rows = [x for x in admin_rows(r, "SHOW SERVERS") if int(x["backend_pid"]) in pids]
    assert rows and all(x["state"] == "idle" and x["client_id"] is None for x in rows), rows


def test_show_servers_lists_each_connection_once_in_its_own_pool(routers, primary):
    """Two users of one database on one server: each busy server connection
    is one SHOW SERVERS row, in the pool of the user whose client holds it
    (the router used to match connections to pools by server address only,
    listing each under every user's pool), and SHOW POOLS and the metrics
    count the client as cl_active only in that pool."""
    r = routers.start(general=admin_general(metrics=True),
                      users=[app_user(), {"name": "plainuser", "database": APP_DB,
                                          "password": "plain-secret", "auth": "plain"}])
    a = connect(r.dsn(), autocommit=False)
    b = connect(r.dsn(user="plainuser", password="plain-secret"), autocommit=False)
    try:
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        pid_b = b.execute("SELECT pg_backend_pid()").fetchone()[0]
        rows = admin_rows(r, "SHOW SERVERS")
        by_pid = {}
        for x in rows:
            by_pid.setdefault(int(x["backend_pid"]), []).append(x)
        assert all(len(v) == 1 for v in by_pid.values()), rows
        assert by_pid[pid_a][0]["pool"] == f"{APP_USER}@{APP_DB}/0", rows
        assert by_pid[pid_b][0]["pool"] == f"plainuser@{APP_DB}/0", rows
        assert all(x["state"] == "active" for x in (by_pid[pid_a][0], by_pid[pid_b][0])), rows
        # Every row's pid is a backend of that row's user.
        for user in (APP_USER, "plainuser"):
            on_server = {x["pid"] for x in primary.backends(user=user, db=APP_DB)}
            assert {int(x["backend_pid"]) for x in rows if x["user"] == user} <= on_server, rows
        for user in (APP_USER, "plainuser"):
            (p,) = pools(r, database=APP_DB, user=user)
            assert (p["cl_active"], p["sv_active"]) == ("1", "1"), p
            m = scrape(metrics_port(r))
            assert m.one("pgrouter_pool_clients", database=APP_DB, user=user,
                         state="active") == 1, m
    finally:
        a.rollback()
        b.rollback()
        a.close()
        b.close()


def test_jwt_only_user_has_no_pools_of_its_own(routers, jwt_db, keys):
    """A users.toml entry with auth = "jwt" runs its sessions on the
    connect_as user's connections (docs/operations.md: JWT sessions share
    the pools of their connect_as user). It used to get SHOW POOLS rows and
    metric series of its own that never moved; now its clients are counted
    in connect_as's pool and it has none."""
    r = start_jwt_router(routers, keys["rsa"], general=admin_general(metrics=True),
                         users=[{"name": "jwt_only", "database": APP_DB, "auth": "jwt"}])
    token = keys["rsa"].sign(claims("jwt_only", "web_user"))
    c = connect(r.dsn(user="jwt_only", password=token), autocommit=False)
    try:
        assert c.execute("SELECT current_user").fetchone() == ("web_user",)
        assert pools(r, user="jwt_only") == []
        (p,) = pools(r, database=APP_DB, user=AUTHENTICATOR)
        assert (p["cl_active"], p["sv_active"]) == ("1", "1"), p
        m = scrape(metrics_port(r))
        assert m.find("pgrouter_queries_total", user="jwt_only") == [], m.text
        assert m.find("pgrouter_pool_clients", user="jwt_only") == [], m.text
        (row,) = [x for x in admin_rows(r, "SHOW CLIENTS") if x["user"] == "jwt_only"]
        assert (row["auth"], row["role"]) == ("jwt", "web_user"), row
        (srv,) = [x for x in admin_rows(r, "SHOW SERVERS") if x["client_id"] == row["id"]]
        assert srv["pool"] == f"{AUTHENTICATOR}@{APP_DB}/0", srv
    finally:
        c.rollback()
        c.close()


def test_show_stats(admin_router):
    r = admin_router
    before = {x["database"]: x for x in admin_rows(r, "SHOW STATS")}.get(APP_DB)
    base_x = int(before["total_xact_count"]) if before else 0
    base_q = int(before["total_query_count"]) if before else 0
    with connect(r.dsn()) as c:
        for i in range(7):
            c.execute("SELECT %s::int", (i,))
        for i in range(3):
            with c.transaction():
                c.execute("SELECT pg_sleep(0.01)")
                c.execute("SELECT 1")
    rows = {x["database"]: x for x in admin_rows(r, "SHOW STATS")}
    s = rows[APP_DB]
    for col in ("total_xact_count", "total_query_count", "total_received", "total_sent",
                "total_xact_time_us", "total_query_time_us", "total_wait_time_us",
                "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time_us",
                "avg_query_time_us", "avg_wait_time_us"):
        assert col in s and int(s[col]) >= 0, (col, s)
    assert int(s["total_xact_count"]) - base_x == 10, s
    # 7 single statements + 3 x (BEGIN, two statements, COMMIT)
    assert int(s["total_query_count"]) - base_q == 19, s
    assert int(s["total_received"]) > 0 and int(s["total_sent"]) > 0
    assert int(s["total_query_time_us"]) >= 3 * 10_000, s
    assert int(s["total_xact_time_us"]) >= int(s["total_query_time_us"]) * 0.5, s


def test_show_config(routers):
    r = routers.start(general=admin_general(default_pool_size=6))
    conf = config_map(r)
    assert conf["default_pool_size"][0] == "6"
    assert conf["default_pool_size"][1].endswith("router.toml"), conf["default_pool_size"]
    assert conf["checkout_timeout_ms"][0] == "5000"
    assert conf["parse_cache_size"][1] == "default"
    assert conf["admin_password"][0] == "********"
    assert ADMIN_PASSWORD not in ok(psql_admin(r, "SHOW CONFIG")).stdout
    assert conf["last_reload"] == ("none", "reload")

    assert ok(psql_admin(r, "RELOAD"))
    conf = config_map(r)
    assert conf["last_reload"][0] == "ok"
    assert TIME_RE.match(conf["last_reload_time"][0]), conf["last_reload_time"]
    assert "last_reload_message" in conf

    cfg = copy.deepcopy(r.config)
    text = tomlw.dumps(cfg).replace("[general]\n", "[general]\nmax_clientz = 5\n")
    write_in_place(r.config_path, text)
    out = psql_admin(r, "RELOAD")
    assert out.returncode != 0
    conf = config_map(r)
    assert conf["last_reload"][0] == "error"
    assert "router.toml:2" in conf["last_reload_message"][0], conf["last_reload_message"]
    assert "max_clientz" in conf["last_reload_message"][0]
    assert conf["default_pool_size"][0] == "6"


def test_show_config_source_is_the_file_when_it_sets_a_key_to_its_default(routers):
    """docs/operations.md: source says where a value came from. A key written
    in router.toml is from router.toml even when its value is the default
    (it used to say "default" then, hiding which file to edit)."""
    r = routers.start(general=admin_general(pool_mode="transaction", two_phase_commit=True))
    text = r.config_path.read_text()
    assert 'pool_mode = "transaction"' in text and "two_phase_commit = true" in text, text
    conf = config_map(r)
    assert conf["pool_mode"][0] == "transaction" and conf["pool_mode"][1].endswith("router.toml")
    assert conf["two_phase_commit"][0] == "true", conf["two_phase_commit"]
    assert conf["two_phase_commit"][1].endswith("router.toml"), conf["two_phase_commit"]
    # Keys the file does not set are defaults.
    assert conf["read_your_writes"] == ("false", "default")
    # A reload that removes the key makes it a default again.
    cfg = copy.deepcopy(r.config)
    del cfg["general"]["two_phase_commit"]
    r.write_files(config=cfg)
    ok(psql_admin(r, "RELOAD"))
    assert config_map(r)["two_phase_commit"] == ("true", "default")


# Every [general] key of SPEC §3.
SPEC_GENERAL_KEYS = [
    "listen", "workers", "pool_mode", "session_state", "default_pool_size", "min_pool_size",
    "connect_timeout_ms", "checkout_timeout_ms", "server_idle_timeout_ms", "server_lifetime_ms",
    "client_idle_timeout_ms", "shutdown_timeout_ms", "max_clients", "max_message_size",
    "read_write_split", "load_balancing", "healthcheck_interval_ms", "ban_time_ms",
    "write_functions", "parse_cache_size", "admin_database", "admin_user", "admin_password",
    "metrics_listen", "hot_reload", "tls_certificate", "tls_private_key", "client_tls",
    "server_tls", "server_tls_ca", "log_format", "client_login_timeout_ms",
    "idle_transaction_timeout_ms", "query_timeout_ms", "max_db_connections",
    "max_user_connections", "max_replica_lag_ms", "read_your_writes", "cross_shard",
    "two_phase_commit", "coordinator_database",
]


def test_show_config_lists_every_general_key(routers):
    r = routers.start(general=admin_general(query_timeout_ms=1234, session_state="refuse",
                                            cross_shard="refuse"))
    conf = config_map(r)
    missing = [k for k in SPEC_GENERAL_KEYS if k not in conf]
    assert not missing, missing
    assert conf["query_timeout_ms"][0] == "1234" and conf["query_timeout_ms"][1].endswith("router.toml")
    assert conf["session_state"][0] == "refuse"
    assert conf["cross_shard"][0] == "refuse"
    assert conf["two_phase_commit"] == ("true", "default")
    assert conf["read_your_writes"] == ("false", "default")


def test_show_config_lists_the_login_sections_in_force(routers, jwt_db, keys):
    """SHOW CONFIG shows every effective setting: the keys of [jwt] (and of
    [auth_query] and [jit] when present) as `jwt.<key>`, with the values a
    reload put in force; a router without the section has no such rows."""
    plain = routers.start(general=admin_general())
    assert not [k for k in config_map(plain) if k.startswith(("jwt.", "jit.", "auth_query."))]
    r = start_jwt_router(routers, keys["rsa"], general=admin_general(),
                         jwt={"leeway_s": 5, "allowed_roles": ["web_user", "web_reader"]})
    conf = config_map(r)
    assert conf["jwt.leeway_s"][0] == "5" and conf["jwt.leeway_s"][1].endswith("router.toml")
    assert conf["jwt.connect_as"][0] == AUTHENTICATOR
    assert conf["jwt.allowed_roles"][0] == "web_user,web_reader"
    assert conf["jwt.algorithms"][0] == "RS256,ES256,EdDSA"
    assert conf["jwt.disconnect_on_expiry"][0] == "true"  # the default
    assert conf["jwt.read_only_claim"][0] == ""  # not set: the default
    cfg = copy.deepcopy(r.config)
    cfg["jwt"]["leeway_s"] = 7
    r.write_files(config=cfg)
    ok(psql_admin(r, "RELOAD"))
    assert config_map(r)["jwt.leeway_s"][0] == "7"


def test_show_config_after_reload_of_listen_shows_the_address_in_effect(routers):
    """A reload cannot move the listening socket: SHOW CONFIG keeps showing
    the address the router listens on, and says a restart is pending; the
    RELOAD answer is a sentence saying so (not a debug dump)."""
    r = routers.start(general=admin_general())
    old = r.config["general"]["listen"]
    cfg = copy.deepcopy(r.config)
    new = f"127.0.0.1:{free_port()}"
    cfg["general"]["listen"] = new
    cfg["general"]["default_pool_size"] = 7
    write_in_place(r.config_path, tomlw.dumps(cfg))
    out = ok(psql_admin(r, "RELOAD"))
    notice = out.stderr
    assert "ConfigDiff" not in notice and "jwt_changed" not in notice, notice
    assert "changed: [general] listen, default_pool_size" in notice, notice
    assert f'Not applied until the router restarts: listen (still "{old}")' in notice, notice
    assert port_open(r.port) and not port_open(int(new.rsplit(":", 1)[1]))
    conf = config_map(r)
    value, source = conf["listen"]
    assert value == old, conf["listen"]
    assert "restart pending" in source and new in source, source
    assert conf["default_pool_size"][0] == "7"
    assert "listen" in conf["last_reload_message"][0]
    # A later reload that changes something else still says listen is pending.
    cfg["general"]["default_pool_size"] = 8
    write_in_place(r.config_path, tomlw.dumps(cfg))
    notice = ok(psql_admin(r, "RELOAD")).stderr
    assert "changed: [general] default_pool_size." in notice, notice
    assert "restarts: listen" in notice, notice
    assert config_map(r)["listen"][0] == old


def test_show_version(admin_router):
    out = ok(psql_admin(admin_router, "SHOW VERSION", "-At")).stdout.strip()
    binary = subprocess.run([str(router_binary()), "--version"], capture_output=True, text=True,
                            timeout=10).stdout.strip()
    version = binary.split()[-1]
    assert out == f"pgrouter {version}", (out, binary)


def test_show_help_and_case_insensitivity(admin_router):
    out = ok(psql_admin(admin_router, "show help")).stdout
    for cmd in COMMANDS:
        assert cmd in out, (cmd, out)
    # Lower case, trailing semicolon, several commands in one string.
    out = ok(psql_admin(admin_router, "show version; SHOW pools;", "-At")).stdout
    assert out.startswith("pgrouter "), out
    assert f"{APP_DB}|{APP_USER}|0|primary" in out, out


# -------------------------------------------------------------------- errors --
def test_unknown_command_lists_commands_and_session_continues(admin_router):
    r = admin_router
    out = psql_admin(r, None, "-At", stdin="FROBNICATE;\nSHOW VERSION;\nSHOW FOO;\nSELECT 1;\nSHOW VERSION;\n")
    assert "ERROR:  42601" in out.stderr, out.stderr
    assert "ERROR:  0A000" in out.stderr, out.stderr
    first = out.stderr.split("ERROR:", 2)[1]
    for cmd in COMMANDS:
        assert cmd in first, (cmd, first)
    # The session went on after each error.
    assert out.stdout.count("pgrouter ") == 2, out.stdout


def test_wrong_admin_password_and_wrong_user(admin_router):
    r = admin_router
    out = psql_admin(r, "SHOW VERSION", password="not-the-password")
    assert out.returncode == 2, out
    assert "password authentication failed" in out.stderr, out.stderr
    with pytest.raises(wire.ServerError) as err:
        wire.connect(r.port, ADMIN_USER, ADMIN_DB, "not-the-password")
    assert err.value.sqlstate == "28P01", err.value
    # An ordinary user cannot open the admin console.
    with pytest.raises(wire.ServerError) as err:
        wire.connect(r.port, APP_USER, ADMIN_DB, "app-secret")
    assert err.value.sqlstate in ("28P01", "28000"), err.value
    # The right password works over the raw protocol too (SCRAM).
    conn = wire.connect(r.port, ADMIN_USER, ADMIN_DB, ADMIN_PASSWORD)
    try:
        rows, _tags, _msgs = conn.simple_query("SHOW VERSION")
        assert rows[0][0].startswith("pgrouter ")
    finally:
        conn.close()


def test_extended_protocol_is_refused_politely(admin_router):
    with pytest.raises(psycopg.Error) as err:
        with psycopg.connect(admin_router.dsn(user=ADMIN_USER, password=ADMIN_PASSWORD, db=ADMIN_DB),
                             autocommit=True) as c:
            c.execute("SHOW POOLS WHERE %s", (1,))
    assert "simple query protocol" in str(err.value), str(err.value)


def test_extended_protocol_clients_prepare_and_run_commands(admin_router):
    """Drivers that always prepare (asyncpg's fetch, psycopg with
    prepare=True) get the same answers as psql: typed columns (int8 in
    binary for asyncpg), commands without rows, errors that leave the
    session usable."""
    r = admin_router

    async def go():
        c = await asyncpg.connect(host="127.0.0.1", port=r.port, user=ADMIN_USER,
                                  password=ADMIN_PASSWORD, database=ADMIN_DB)
        try:
            rows = await c.fetch("SHOW POOLS")
            assert set(POOL_COLUMNS) <= set(rows[0].keys()), rows[0].keys()
            row = next(x for x in rows if x["database"] == APP_DB and x["role"] == "primary")
            assert row["pool_size"] == 4 and isinstance(row["cl_active"], int), dict(row)
            assert (await c.fetchval("SHOW VERSION")).startswith("pgrouter ")
            stmt = await c.prepare("SHOW STATS")
            assert any(x["database"] == APP_DB for x in await stmt.fetch())
            with pytest.raises(asyncpg.PostgresError) as err:
                await c.fetch("SHOW NOTHING")
            assert err.value.sqlstate == "0A000", err.value
            await c.execute("PAUSE")  # simple protocol
            await (await c.prepare("RESUME")).fetch()  # extended, no rows
            assert (await c.fetchval("SHOW VERSION")).startswith("pgrouter ")
        finally:
            await c.close()

    run_async(go())
    with psycopg.connect(r.dsn(user=ADMIN_USER, password=ADMIN_PASSWORD, db=ADMIN_DB),
                         autocommit=True) as c:
        rows = c.execute("SHOW POOLS", prepare=True).fetchall()
        assert any(row[0] == APP_DB for row in rows), rows
    # The app still runs after the PAUSE/RESUME pair.
    with connect(r.dsn()) as app:
        assert app.execute("SELECT 1").fetchone() == (1,)


# -------------------------------------------------------------------- RELOAD --
def test_reload_command(routers):
    r = routers.start(general=admin_general())
    r.write_files(users={"users": [app_user(),
                                   {"name": "md5user", "database": APP_DB, "password": "md5-secret",
                                    "auth": "scram"}]})
    before = reload_marks(r)
    out = ok(psql_admin(r, "RELOAD"))
    assert out.stdout.strip() == "RELOAD", out.stdout
    assert "NOTICE:" in out.stderr, out.stderr
    assert wait_reload(r, before) == "ok"
    with connect(r.dsn(user="md5user", password="md5-secret")) as c:
        assert c.execute("SELECT current_user").fetchone() == ("md5user",)
    # A bad edit: ERROR F0000 naming file and key; nothing changes.
    write_in_place(r.config_path, tomlw.dumps(r.config).replace("[general]\n", "[general]\nfoo_bar = 1\n"))
    out = psql_admin(r, "RELOAD")
    assert out.returncode == 1
    assert "ERROR:  F0000" in out.stderr, out.stderr
    assert "router.toml:2" in out.stderr and "foo_bar" in out.stderr, out.stderr
    assert "unchanged" in out.stderr
    with connect(r.dsn()) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


# ------------------------------------------------------------- PAUSE/RESUME --
def test_pause_waits_for_open_transactions_and_holds_new_ones(routers, primary, table):
    primary.sql(f"CREATE TABLE {table} (id int)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    r = routers.start(general=admin_general(metrics=True, checkout_timeout_ms=3000))
    in_tx = connect(r.dsn(), autocommit=False)
    idle = connect(r.dsn())
    idle.execute("SELECT 1")
    in_tx.execute(f"INSERT INTO {table} VALUES (1)")
    pause_result = {}

    def pause():
        pause_result["out"] = psql_admin(r, "PAUSE app")
        pause_result["done_at"] = time.monotonic()
    try:
        th = in_thread(pause)
        time.sleep(1.0)
        assert "out" not in pause_result, "PAUSE returned while a transaction was open"
        # The open transaction may go on and finish.
        in_tx.execute(f"INSERT INTO {table} VALUES (2)")
        committed_at = time.monotonic()
        in_tx.commit()
        th.join(10)
        assert "out" in pause_result, "PAUSE did not return after the transaction ended"
        ok(pause_result["out"])
        assert pause_result["out"].stdout.strip() == "PAUSE"
        assert pause_result["done_at"] >= committed_at
        assert all(p["paused"] == "t" for p in pools(r, database=APP_DB))

        # New transactions wait (longer than checkout_timeout_ms, without error) until RESUME.
        served = {}

        def new_tx(name, conn):
            try:
                served[name] = (conn.execute("SELECT 'ran'").fetchone(), time.monotonic())
            except Exception as exc:  # noqa: BLE001
                served[name] = (exc, time.monotonic())
        threads = [in_thread(new_tx, "idle", idle)]
        fresh = connect(r.dsn())  # logging in works while paused
        threads.append(in_thread(new_tx, "fresh", fresh))
        time.sleep(3.5)
        assert served == {}, f"transactions ran while paused: {served}"
        assert len([c for c in admin_rows(r, "SHOW CLIENTS") if c["state"] == "waiting"]) == 2
        # SHOW POOLS and the metrics count them as waiting too, once (on the primary).
        app_pools = pools(r, database=APP_DB)
        assert sum(int(p["cl_waiting"]) for p in app_pools) == 2, app_pools
        assert max(int(p["maxwait_ms"]) for p in app_pools) >= 3000, app_pools
        assert scrape(r).value("pgrouter_pool_clients", state="waiting") == 2
        resumed_at = time.monotonic()
        out = ok(psql_admin(r, "RESUME app"))
        assert out.stdout.strip() == "RESUME"
        for t in threads:
            t.join(10)
        for name in ("idle", "fresh"):
            row, at = served[name]
            assert row == ("ran",), (name, row)
            assert at >= resumed_at and at - resumed_at < 2, (name, at - resumed_at)
        assert all(p["paused"] == "f" for p in pools(r, database=APP_DB))
        fresh.close()
    finally:
        in_tx.close()
        idle.close()
    assert primary.scalar(f"SELECT count(*) FROM {table}") == 2


def test_pause_all_and_resume_all_and_unknown_database(routers):
    r = routers.start(general=admin_general())
    out = psql_admin(r, "PAUSE nosuchdb")
    assert out.returncode == 1 and "ERROR:  55000" in out.stderr, out.stderr
    ok(psql_admin(r, "PAUSE"))
    assert all(p["paused"] == "t" for p in pools(r))
    with connect(r.dsn()) as c:
        result = {}
        th = in_thread(lambda: result.setdefault("row", c.execute("SELECT 5").fetchone()))
        time.sleep(0.8)
        assert result == {}
        ok(psql_admin(r, "RESUME"))
        th.join(5)
        assert result == {"row": (5,)}
    assert all(p["paused"] == "f" for p in pools(r))
    # RESUME of a database that is not paused is harmless.
    ok(psql_admin(r, "RESUME app"))


def test_resume_unknown_database_is_an_error_like_pause(routers):
    """`RESUME nosuchdb` used to answer RESUME: a typo silently resumed
    nothing. It is the same error as `PAUSE nosuchdb`."""
    r = routers.start(general=admin_general())
    paused = psql_admin(r, "PAUSE nosuchdb")
    resumed = psql_admin(r, "RESUME nosuchdb")
    assert resumed.returncode == 1, resumed.stdout
    assert 'ERROR:  55000: pgrouter: no such database "nosuchdb"' in resumed.stderr, resumed.stderr
    assert resumed.stderr.replace("RESUME", "PAUSE") == paused.stderr.replace("RESUME", "PAUSE")


def test_sigusr1_pauses_and_sigusr2_resumes_as_pgbouncer_does(routers):
    """PgBouncer's signals for a maintenance window: SIGUSR1 is PAUSE and
    SIGUSR2 is RESUME. Both used to end the router (their default action),
    dropping every client, when sent by a script written for PgBouncer."""
    r = routers.start(general=admin_general())
    with connect(r.dsn()) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
        r.signal(signal.SIGUSR1)
        wait_until(lambda: pools(r) and all(p["paused"] == "t" for p in pools(r)), 5,
                   what="SHOW POOLS paused after SIGUSR1")
        assert r.alive()
        result = {}
        th = in_thread(lambda: result.setdefault("row", c.execute("SELECT 5").fetchone()))
        time.sleep(0.8)
        assert result == {}, "a statement ran while paused"
        r.signal(signal.SIGUSR2)
        th.join(5)
        assert result == {"row": (5,)}
        assert r.alive()
    assert all(p["paused"] == "f" for p in pools(r))


def test_cancel_of_a_statement_held_by_pause_cancels_it(routers, primary, table):
    """Ctrl-C on a statement held by PAUSE used to be dropped (no server
    had it yet): the client kept waiting, and after RESUME the statement the
    user had cancelled ran. It is cancelled at once (57014) and never runs."""
    primary.sql(f"CREATE TABLE {table} (id int)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    r = routers.start(general=admin_general())
    c = connect(r.dsn())
    try:
        ok(psql_admin(r, "PAUSE app"))
        threading.Timer(1.0, c.cancel_safe).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as err:
            c.execute(f"INSERT INTO {table} VALUES (1)")
        assert err.value.sqlstate == "57014"
        assert time.monotonic() - started < 5
        assert not [x for x in admin_rows(r, "SHOW CLIENTS") if x["state"] == "waiting"]
        ok(psql_admin(r, "RESUME app"))
        assert c.execute("SELECT 'after'").fetchone() == ("after",)
    finally:
        psql_admin(r, "RESUME")
        c.close()
    time.sleep(0.5)
    assert primary.scalar(f"SELECT count(*) FROM {table}") == 0


def test_pause_holds_clients_already_queued_for_a_server(routers):
    """A client queued for a busy pool when PAUSE came used to get the
    connection the finishing transaction returned, and start a new
    transaction while the pool was paused. PAUSE waits for transactions in
    progress only; a client that has not started one waits for RESUME, as
    in PgBouncer."""
    r = routers.start(general=admin_general(default_pool_size=1, checkout_timeout_ms=15000))
    holder = connect(r.dsn(), autocommit=False)
    waiter = connect(r.dsn())
    served, paused = {}, {}
    try:
        holder.execute("SELECT 1")
        th = in_thread(lambda: served.setdefault(
            "at", (waiter.execute("SELECT 'ran'").fetchone(), time.monotonic())))
        time.sleep(0.5)
        assert served == {}, "the pool of one should be busy"
        pt = in_thread(lambda: paused.setdefault("out", psql_admin(r, "PAUSE")))
        time.sleep(0.5)
        assert paused == {}, "PAUSE returned while a transaction was open"
        holder.commit()
        pt.join(10)
        assert "out" in paused, "PAUSE did not return once the transaction ended"
        ok(paused["out"])
        time.sleep(1.0)
        assert served == {}, f"a queued client ran a transaction while paused: {served}"
        resumed_at = time.monotonic()
        ok(psql_admin(r, "RESUME"))
        th.join(10)
        row, at = served["at"]
        assert row == ("ran",) and at >= resumed_at
    finally:
        psql_admin(r, "RESUME")
        holder.close()
        waiter.close()

def test_a_client_that_leaves_while_held_by_pause_is_gone_and_its_statement_never_runs(
        routers, primary, table):
    """A client that closed its connection while PAUSE held its statement
    (an application's own timeout, a killed process) used to stay in SHOW
    CLIENTS as waiting, and at RESUME the statement it had given up on ran
    (a retried INSERT ran twice). The router notices the client leave, as
    PgBouncer does: it is gone at once and its statement never runs."""
    primary.sql(f"CREATE TABLE {table} (id int)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    r = routers.start(general=admin_general())
    ok(psql_admin(r, "PAUSE app"))
    try:
        for reset in (False, True):
            raw = wire.connect(r.port, APP_USER, APP_DB, "app-secret")
            raw.send(wire.query_message(f"INSERT INTO {table} VALUES (1)"))
            wait_until(lambda: any(c["state"] == "waiting" for c in admin_rows(r, "SHOW CLIENTS")),
                       5, what="the client held by PAUSE")
            raw.close(reset=reset)
            wait_until(lambda: not admin_rows(r, "SHOW CLIENTS"), 5,
                       what="the client that left to be gone from SHOW CLIENTS")
    finally:
        ok(psql_admin(r, "RESUME app"))
    time.sleep(0.5)
    assert primary.scalar(f"SELECT count(*) FROM {table}") == 0

def test_pause_reload_resume_sends_held_statements_to_the_new_server(routers, primary, replica):
    """The PgBouncer failover routine: PAUSE, point the config at the new
    server, RELOAD, RESUME. Statements held by the PAUSE used to run on the
    server of the configuration they arrived under (the old primary, in a
    failover the one that must not take writes any more); they run on the
    one the configuration names at RESUME, as every later one does."""
    r = routers.start(general=admin_general())
    held = connect(r.dsn())
    try:
        assert held.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        ok(psql_admin(r, "PAUSE"))
        got = {}
        th = in_thread(lambda: got.setdefault("row", held.execute(
            "SELECT inet_server_port(), pg_is_in_recovery()").fetchone()))
        time.sleep(0.5)
        assert got == {}
        cfg = copy.deepcopy(r.config)
        cfg["databases"][0]["port"] = replica.port  # "the new primary"
        r.write_files(config=cfg)
        ok(psql_admin(r, "RELOAD"))
        ok(psql_admin(r, "RESUME"))
        th.join(10)
        assert got.get("row") == (replica.port, True), \
            f"the held statement ran on the old server: {got}"
        assert held.execute("SELECT inet_server_port()").fetchone() == (replica.port,)
    finally:
        psql_admin(r, "RESUME")
        held.close()

def test_pause_undone_by_resume_before_it_completes_is_an_error(routers):
    """A RESUME while PAUSE still waited for a transaction used to leave the
    PAUSE answering `PAUSE` once the transaction ended, though nothing was
    paused: a script running `PAUSE` then maintenance went on with clients
    running. That PAUSE now fails (55000) and says why."""
    r = routers.start(general=admin_general(shutdown_timeout_ms=20000))
    tx = connect(r.dsn(), autocommit=False)
    got = {}
    try:
        tx.execute("SELECT 1")
        th = in_thread(lambda: got.setdefault("out", psql_admin(r, "PAUSE")))
        time.sleep(0.5)
        assert got == {}, "PAUSE returned while a transaction was open"
        ok(psql_admin(r, "RESUME"))
        th.join(5)
        tx.commit()
        th.join(5)
        out = got["out"]
        assert out.returncode == 1, out.stdout
        assert "ERROR:  55000" in out.stderr and "RESUME" in out.stderr, out.stderr
        assert all(p["paused"] == "f" for p in pools(r))
    finally:
        tx.close()

# ------------------------------------------------------------------ SHUTDOWN --
def test_shutdown_command_stops_the_router(routers):
    r = routers.start(general=admin_general())
    client = connect(r.dsn())
    client.execute("SELECT 1")
    r.stop_requested = True  # the router exits on purpose
    out = psql_admin(r, "SHUTDOWN")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SHUTDOWN", out.stdout
    code = r.wait(10)
    assert code == 0, f"exit code {code}\n{r.log()}"
    assert not port_open(r.port)
    client.close()
