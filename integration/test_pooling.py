"""Pool behaviour: checkout timeout, session state across pooled server
connections, session mode."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest

from harness import wire
from harness.clients import BackendPeak, Timer, connect, run_clients
from harness.pg import APP_DB, APP_PASSWORD, APP_USER
from harness.ops import admin_general, admin_rows
from harness.router import app_user
from harness.util import wait_until

CHECKOUT_MSG = "timed out waiting for a server connection"


def test_checkout_timeout(routers):
    router = routers.start(general={"default_pool_size": 1, "checkout_timeout_ms": 500})
    holder = connect(router.dsn(), autocommit=False)
    waiter = connect(router.dsn())
    try:
        holder.execute("SELECT 1")  # transaction open: the only server connection is taken
        with Timer() as t:
            with pytest.raises(psycopg.Error) as err:
                waiter.execute("SELECT 'waiter'")
        assert CHECKOUT_MSG in str(err.value), str(err.value)
        assert 0.4 <= t.elapsed < 5, t.elapsed
        holder.commit()
        # Once the holder's transaction is over, the waiter is served.
        assert waiter.execute("SELECT 'waiter'").fetchone() == ("waiter",)
    finally:
        holder.close()
        waiter.close()


def test_waiting_client_served_when_connection_frees(routers):
    """Within checkout_timeout_ms a waiting client just waits."""
    router = routers.start(general={"default_pool_size": 1, "checkout_timeout_ms": 5000})
    holder = connect(router.dsn(), autocommit=False)
    holder.execute("SELECT 1")
    committer = threading.Timer(1.0, holder.commit)
    committer.start()
    try:
        with connect(router.dsn()) as waiter, Timer() as t:
            assert waiter.execute("SELECT 'served'").fetchone() == ("served",)
        assert 0.8 <= t.elapsed < 4.5, t.elapsed
    finally:
        committer.join(10)
        holder.close()


def test_clients_leaving_the_queue_lose_no_connection(routers):
    """Clients that hang up while waiting for a server leave the queue; a
    connection freed at that moment goes to the next waiter, so the pool
    keeps all its capacity (pool_size 1: one lost lease would stall everyone)."""
    router = routers.start(general=admin_general(default_pool_size=1, checkout_timeout_ms=10000))
    holder = connect(router.dsn(), autocommit=False)
    holder.execute("SELECT 1")  # the pool's only connection is taken
    leavers = []
    try:
        for _ in range(5):
            raw = wire.RawConn.open(router.port)
            raw.startup(APP_USER, APP_DB, APP_PASSWORD)
            raw.send(wire.query_message("SELECT 'left'"))
            leavers.append(raw)
        wait_until(lambda: int(pool_row(router)["cl_waiting"]) == 5, 5, what="5 waiting")
        for i, raw in enumerate(leavers):
            raw.close(reset=i % 2 == 0)
        holder.commit()  # frees the connection while the leavers' sessions end
        for _ in range(3):
            with connect(router.dsn()) as c, Timer() as t:
                assert c.execute("SELECT 'served'").fetchone() == ("served",)
            assert t.elapsed < 5, t.elapsed
        wait_until(lambda: int(pool_row(router)["cl_waiting"]) == 0, 5, what="queue empty")
    finally:
        holder.close()


def pool_row(router) -> dict:
    """The SHOW POOLS row of the router's only pool."""
    [row] = admin_rows(router, "SHOW POOLS")
    return row


def test_user_pool_size_overrides_default(routers, primary):
    router = routers.start(general={"default_pool_size": 10, "checkout_timeout_ms": 500},
                           users=[app_user(pool_size=2)])
    a = connect(router.dsn(), autocommit=False)
    b = connect(router.dsn(), autocommit=False)
    c = connect(router.dsn())
    try:
        a.execute("SELECT 1")
        b.execute("SELECT 1")
        with pytest.raises(psycopg.Error) as err:
            c.execute("SELECT 1")
        assert CHECKOUT_MSG in str(err.value)
        assert len(primary.pool_backends(user="app", db="app")) == 2
    finally:
        a.close()
        b.close()
        c.close()


def settings(conn) -> tuple:
    """(application_name, search_path without spaces, TimeZone, statement_timeout)."""
    return conn.execute("SELECT current_setting('application_name'), "
                        "replace(current_setting('search_path'), ' ', ''), "
                        "current_setting('TimeZone'), current_setting('statement_timeout')").fetchone()


def test_session_params_survive_transaction_pooling(routers, primary):
    primary.sql("CREATE SCHEMA IF NOT EXISTS schema_a AUTHORIZATION app")
    router = routers.start(general={"default_pool_size": 1})
    a = connect(router.dsn(application_name="client_a",
                           options="-c search_path=schema_a,public -c TimeZone=Asia/Tokyo"))
    b = connect(router.dsn(application_name="client_b", options="-c TimeZone=America/New_York"))
    try:
        base_path = primary.scalar("SHOW search_path")
        for _ in range(3):
            assert settings(a)[:3] == ("client_a", "schema_a,public", "Asia/Tokyo")
            assert settings(b)[:3] == ("client_b", base_path.replace(" ", ""), "America/New_York")
            with a.transaction():
                assert a.execute("SHOW application_name").fetchone() == ("client_a",)
                assert a.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
            with b.transaction():
                assert b.execute("SHOW application_name").fetchone() == ("client_b",)
                assert b.execute("SHOW search_path").fetchone() == (base_path,)
        # Both clients really share one server connection.
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        pid_b = b.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pid_a == pid_b
    finally:
        a.close()
        b.close()


def test_startup_options_on_reused_server_connection(routers):
    """Clients one after another on a pool of 1, each with startup options:
    every client sees its own settings, also when the previous client of
    that server connection asked for the same ones."""
    router = routers.start(general={"default_pool_size": 1})
    sequence = ["Asia/Tokyo", "Asia/Tokyo", "America/New_York", None, "Asia/Tokyo", None]
    default = None
    seen = []
    for tz in sequence:
        extra = {"options": f"-c TimeZone={tz}"} if tz else {}
        with connect(router.dsn(**extra)) as conn:
            value = conn.execute("SHOW TimeZone").fetchone()[0]
            if tz is None and default is None:
                default = value
            seen.append(value)
    assert default not in ("Asia/Tokyo", "America/New_York")
    assert seen == [tz or default for tz in sequence]


def test_set_is_tracked_per_client(routers):
    router = routers.start(general={"default_pool_size": 1})
    a = connect(router.dsn(application_name="a"))
    b = connect(router.dsn(application_name="b"))
    try:
        default_timeout = b.execute("SHOW statement_timeout").fetchone()[0]
        a.execute("SET statement_timeout = '12s'")
        a.execute("SET application_name = 'a_renamed'")
        for _ in range(3):
            assert a.execute("SHOW statement_timeout").fetchone() == ("12s",)
            assert b.execute("SHOW statement_timeout").fetchone() == (default_timeout,)
            assert a.execute("SHOW application_name").fetchone() == ("a_renamed",)
            assert b.execute("SHOW application_name").fetchone() == ("b",)
        # SET LOCAL lasts for its transaction only.
        with a.transaction():
            a.execute("SET LOCAL statement_timeout = '7s'")
            assert a.execute("SHOW statement_timeout").fetchone() == ("7s",)
        assert a.execute("SHOW statement_timeout").fetchone() == ("12s",)
        # A SET rolled back with its transaction does not stick.
        a.execute("BEGIN")
        a.execute("SET statement_timeout = '99s'")
        a.execute("ROLLBACK")
        assert a.execute("SHOW statement_timeout").fetchone() == ("12s",)
        assert b.execute("SHOW statement_timeout").fetchone() == (default_timeout,)
        # RESET goes back to the default.
        a.execute("RESET statement_timeout")
        assert a.execute("SHOW statement_timeout").fetchone() == (default_timeout,)
    finally:
        a.close()
        b.close()


def test_session_mode_temp_table_and_discard(routers):
    router = routers.start(general={"pool_mode": "session", "default_pool_size": 1})
    with connect(router.dsn(), autocommit=False) as a:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        a.execute("CREATE TEMP TABLE session_scratch (x int)")
        a.commit()
        a.execute("INSERT INTO session_scratch VALUES (1), (2)")
        a.commit()
        a.execute("SET statement_timeout = '33s'")
        a.commit()
        assert a.execute("SELECT sum(x) FROM session_scratch").fetchone() == (3,)
        assert a.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        a.commit()
    with connect(router.dsn()) as b:
        assert b.execute("SELECT to_regclass('pg_temp.session_scratch')").fetchone() == (None,)
        assert b.execute("SHOW statement_timeout").fetchone() != ("33s",)
        # The same server connection was reused (pool of 1), after a reset.
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid


def test_session_mode_per_user(routers):
    """users.toml pool_mode overrides [general] pool_mode."""
    router = routers.start(general={"pool_mode": "transaction"},
                           users=[app_user(pool_mode="session")])
    with connect(router.dsn()) as a:
        a.execute("CREATE TEMP TABLE per_user_scratch (x int)")
        a.execute("INSERT INTO per_user_scratch VALUES (5)")
        assert a.execute("SELECT x FROM per_user_scratch").fetchone() == (5,)


def test_session_mode_client_holds_server(routers):
    router = routers.start(general={"pool_mode": "session", "default_pool_size": 1,
                                    "checkout_timeout_ms": 500})
    a = connect(router.dsn())
    try:
        a.execute("SELECT 1")
        with pytest.raises(psycopg.Error) as err:
            with connect(router.dsn()) as b:
                b.execute("SELECT 1")
        assert CHECKOUT_MSG in str(err.value), str(err.value)
    finally:
        a.close()
    time.sleep(0.3)
    with connect(router.dsn()) as b:
        assert b.execute("SELECT 1").fetchone() == (1,)


def test_listen_notify_session_mode(routers):
    router = routers.start(general={"pool_mode": "session"})
    with connect(router.dsn()) as listener, connect(router.dsn()) as sender:
        listener.execute("LISTEN pgrouter_test")
        sender.execute("NOTIFY pgrouter_test, 'hello'")
        got = []
        for n in listener.notifies(timeout=5, stop_after=1):
            got.append((n.channel, n.payload))
        assert got == [("pgrouter_test", "hello")]


def test_notify_delivered_in_transaction_mode(routers, primary):
    """NOTIFY sent through the router reaches a listener connected directly."""
    router = routers.start()
    with psycopg.connect(primary.dsn(), autocommit=True) as listener:
        listener.execute("LISTEN pgrouter_tx_test")
        with connect(router.dsn()) as sender:
            sender.execute("NOTIFY pgrouter_tx_test, 'via router'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
        assert got == [("pgrouter_tx_test", "via router")]


def test_max_clients_53300(routers):
    router = routers.start(general={"max_clients": 2})
    a = connect(router.dsn())
    b = connect(router.dsn())
    try:
        with pytest.raises(wire.ServerError) as err:
            wire.connect(router.port, "app", "app", "app-secret")
        assert err.value.sqlstate == "53300"
        assert a.execute("SELECT 1").fetchone() == (1,)
    finally:
        b.close()
    # A freed slot can be taken again.
    time.sleep(0.3)
    with connect(router.dsn()) as c:
        assert c.execute("SELECT 2").fetchone() == (2,)
    a.close()


def test_pool_size_is_a_hard_limit_health_checks_included(routers, primary):
    """100 clients over pool_size = 10 with health checks every 100 ms:
    PostgreSQL never sees more than 10 connections of that user (issue 15
    item 4: the health check used to keep an 11th of its own)."""
    router = routers.start(general={"default_pool_size": 10, "healthcheck_interval_ms": 100,
                                    "checkout_timeout_ms": 30000})

    def client():
        with connect(router.dsn()) as conn:
            for _ in range(10):
                conn.execute("SELECT pg_sleep(0.01)")

    with BackendPeak(primary, APP_USER, APP_DB, interval=0.05) as seen:
        errors = run_clients(client, [()] * 100)
        time.sleep(0.3)  # a few more health checks with every client gone
    assert errors == []
    assert 0 < seen.peak <= 10, f"{seen.peak} backends of {APP_USER} seen"


def test_min_pool_size_connections_are_kept_past_the_idle_timeout(routers, primary):
    """server_idle_timeout_ms closes idle connections above min_pool_size;
    those min_pool_size wants are kept, not closed and opened again each
    maintenance cycle (PgBouncer keeps them too)."""
    router = routers.start(general={"min_pool_size": 2, "server_idle_timeout_ms": 500,
                                    "default_pool_size": 5})

    def backends():
        return set(r[0] for r in primary.sql(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'"))
    # Five connections in use at once, then idle.
    conns = [connect(router.dsn(), autocommit=False) for _ in range(5)]
    for c in conns:
        c.execute("SELECT 1")
    for c in conns:
        c.rollback()
        c.close()
    deadline = time.monotonic() + 10
    while len(backends()) != 2:
        assert time.monotonic() < deadline, backends()
        time.sleep(0.2)
    kept = backends()
    time.sleep(3)  # several idle timeouts and maintenance cycles
    assert backends() == kept
