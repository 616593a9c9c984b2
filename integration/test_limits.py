"""Limits and timeouts operators rely on (SPEC §5 "Limits and timeouts",
issue 19 item 4): `client_login_timeout_ms`, `idle_transaction_timeout_ms`,
`query_timeout_ms`, and the back-off after a server refuses the router's
logins."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import psycopg
import pytest

from harness import wire
from harness.clients import BackendPeak, Timer, connect, run_clients, sqlstate
from harness.ops import ADMIN_DB, ADMIN_USER, admin_general, reload_marks, wait_reload
from harness.pg import APP_DB, APP_PASSWORD, APP_USER, PgCluster
from harness.router import app_user
from harness.util import wait_until


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Reads until the router closes the connection (True) or `timeout` passes."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False



def assert_closed_idle_in_transaction(conn, after: float) -> None:
    """`conn`, left idle inside a transaction for `after` seconds, was
    closed with 25P03 (idle_transaction_timeout_ms)."""
    time.sleep(after)
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT 1")
    assert sqlstate(err.value) == "25P03", err.value
    conn.close()

def test_stalled_logins_are_closed_and_free_their_slots(routers):
    router = routers.start(general={"client_login_timeout_ms": 1000, "max_clients": 4})
    stalled = []
    for i in range(4):
        s = socket.create_connection(("127.0.0.1", router.port))
        if i % 2:
            # A startup packet, then silence when the password is asked for.
            s.sendall(wire.startup_message({"user": APP_USER, "database": APP_DB}))
        stalled.append(s)
    time.sleep(0.2)
    # Every slot is taken by a stalled login: a real client is refused ...
    with pytest.raises(psycopg.OperationalError) as err:
        connect(router.dsn())
    assert "too many clients" in str(err.value)
    # ... until the router closes the stalled ones.
    with Timer() as timer:
        assert all(closed_by_peer(s, 5) for s in stalled)
    assert timer.elapsed < 3, f"stalled logins closed after {timer.elapsed:.1f}s"
    for s in stalled:
        s.close()
    with connect(router.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stalled_admin_console_logins_are_closed(routers):
    """The admin console's login is a login too: a client that asks for
    the admin database and then never answers the password request is
    closed at client_login_timeout_ms, and its max_clients slot freed."""
    router = routers.start(general=admin_general(client_login_timeout_ms=1000, max_clients=1))
    s = socket.create_connection(("127.0.0.1", router.port))
    s.sendall(wire.startup_message({"user": ADMIN_USER, "database": ADMIN_DB}))
    with Timer() as timer:
        assert closed_by_peer(s, 10), "the stalled admin login was never closed"
    s.close()
    assert timer.elapsed < 5, f"stalled admin login closed after {timer.elapsed:.1f}s"
    with connect(router.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_logins_within_the_timeout_are_untouched(routers):
    router = routers.start(general={"client_login_timeout_ms": 2000})
    with connect(router.dsn()) as conn:
        time.sleep(2.5)  # the session lasts longer than the login timeout
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_idle_in_transaction_timeout_closes_the_client_and_frees_its_locks(routers, primary, table):
    primary.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
    primary.sql(f"INSERT INTO {table} VALUES (1, 1)")
    primary.sql(f"GRANT ALL ON {table} TO {APP_USER}")
    router = routers.start(general={"idle_transaction_timeout_ms": 500, "default_pool_size": 1})
    conn = connect(router.dsn(), autocommit=False)
    conn.execute(f"SELECT v FROM {table} WHERE id = 1 FOR UPDATE")
    time.sleep(1.5)
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT 1")
    assert sqlstate(err.value) == "25P03"
    assert "idle-in-transaction" in str(err.value)
    conn.close()
    # Its row lock is gone, and the pool's only connection serves others.
    with connect(router.dsn()) as other:
        other.execute("SET lock_timeout = '2s'")
        other.execute(f"UPDATE {table} SET v = v WHERE id = 1")
    # A client busy in its transaction is not cut off.
    with connect(router.dsn(), autocommit=False) as busy:
        for _ in range(4):
            busy.execute("SELECT pg_sleep(0.3)")
        busy.commit()


def test_query_timeout_cancels_the_statement(routers, primary):
    router = routers.start(general={"query_timeout_ms": 1500})
    with connect(router.dsn()) as conn:
        with Timer() as timer, pytest.raises(psycopg.errors.QueryCanceled) as err:
            conn.execute("SELECT pg_sleep(10)")
        assert sqlstate(err.value) == "57014"
        assert 1.4 < timer.elapsed < 5
        # The session goes on; statements shorter than the timeout run.
        for _ in range(3):
            assert conn.execute("SELECT 1").fetchone() == (1,)
    wait_until(lambda: not any("pg_sleep(10)" in (b["query"] or "") and b["state"] == "active"
                               for b in primary.backends(user=APP_USER)), 5,
               what="the cancelled sleep gone from the server")


def test_query_timeout_cancels_a_statement_pipelined_behind_another(routers, primary):
    """Two Syncs sent at once: the second statement starts when the first
    is answered, and query_timeout_ms times it from there (it used to run
    untimed, the clock stopping at the first ReadyForQuery)."""
    router = routers.start(general={"query_timeout_ms": 800})
    conn = wire.RawConn.open(router.port)
    try:
        conn.startup(APP_USER, APP_DB, APP_PASSWORD)
        sync = wire.sync_message()
        with Timer() as timer:
            conn.send(wire.extended_query("SELECT pg_sleep(0.1)") + sync
                      + wire.extended_query("SELECT pg_sleep(20)") + sync)
            first, second = conn.read_batches(2, timeout=15)
        assert wire.errors_in(first) == []
        assert [e["C"] for e in wire.errors_in(second)] == ["57014"]
        assert timer.elapsed < 8, f"the pipelined statement ran {timer.elapsed:.1f}s"
        rows, _tags, _ = conn.simple_query("SELECT 'still usable'")
        assert rows == [["still usable"]]
    finally:
        conn.close()


def test_reloaded_timeouts_bind_clients_already_connected(routers):
    """As after PgBouncer's RELOAD, query_timeout_ms and
    idle_transaction_timeout_ms set by a reload apply to clients connected
    before it (from their next transaction), not only to new ones."""
    router = routers.start()
    slow = connect(router.dsn())
    idle = connect(router.dsn())
    for conn in (slow, idle):
        assert conn.execute("SELECT 1").fetchone() == (1,)
    config = router.config
    config["general"].update(query_timeout_ms=800, idle_transaction_timeout_ms=800)
    router.write_files(config)
    before = reload_marks(router)
    router.reload()
    assert wait_reload(router, before) == "ok"
    with Timer() as timer, pytest.raises(psycopg.errors.QueryCanceled):
        slow.execute("SELECT pg_sleep(20)")
    assert timer.elapsed < 8, f"the statement ran {timer.elapsed:.1f}s"
    assert slow.execute("SELECT 2").fetchone() == (2,)
    slow.close()
    idle.execute("BEGIN")
    idle.execute("SELECT 1")
    assert_closed_idle_in_transaction(idle, after=2)


@pytest.mark.parametrize("cap", ["max_db_connections", "max_user_connections"])
def test_a_login_waiting_on_a_connection_cap_gets_the_checkout_timeout(routers, cap):
    """A pool's first client needs a server connection at login (for the
    server's parameters). When a cap leaves no room, the login waits
    checkout_timeout_ms and then gets SPEC's checkout-timeout error (it
    used to get 08006 "could not connect to the server ... cap")."""
    router = routers.start(general={cap: 1, "checkout_timeout_ms": 800},
                           users=[app_user(),
                                  app_user(name="app2", password="app2-secret",
                                           server_user=APP_USER, server_password="app-secret")])
    holder = connect(router.dsn(), autocommit=False)
    try:
        holder.execute("SELECT 1")  # the cap's only connection, in a transaction
        with Timer() as timer, pytest.raises(wire.ServerError) as err:
            wire.connect(router.port, "app2", APP_DB, "app2-secret")
        assert "timed out waiting for a server connection" in err.value.message, err.value.message
        assert err.value.sqlstate == "57014"
        assert 0.7 < timer.elapsed < 8, timer.elapsed
    finally:
        holder.commit()
        holder.close()
    # With the connection idle again, the other pool gets room.
    with connect(router.dsn(user="app2", password="app2-secret")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_refused_server_login_keeps_its_sqlstate_for_the_client(routers):
    """Clients waiting at login while the server refuses the router get the
    server's error with its SQLSTATE (28P01 here), not a generic 08006."""
    router = routers.start(general={"ban_time_ms": 60000},
                           users=[app_user(server_password="wrong-password")])
    for _ in range(2):  # the refusal itself, then the back-off's copy of it
        with pytest.raises(wire.ServerError) as err:
            wire.connect(router.port, APP_USER, APP_DB, APP_PASSWORD)
        assert err.value.sqlstate == "28P01", err.value.message
        assert "password authentication failed" in err.value.message


def test_a_refused_server_login_is_not_retried_by_every_client(routers, primary):
    """200 clients while the router's server password is wrong: the server
    sees at most a pool's worth of failed logins per ban_time_ms, and every
    client gets the server's error."""
    log = primary.logfile
    before = log.read_text(errors="replace").count(f'password authentication failed for user "{APP_USER}"')
    router = routers.start(general={"default_pool_size": 2, "ban_time_ms": 60000},
                           users=[app_user(server_password="wrong-password")])
    codes: list[str | None] = []
    lock = threading.Lock()

    def client():
        try:
            with connect(router.dsn()) as conn:
                conn.execute("SELECT 1")
            code = "ok"
        except psycopg.Error as exc:
            # At login psycopg keeps the message only, not the SQLSTATE.
            code = sqlstate(exc) or ("28P01" if "password authentication failed" in str(exc)
                                     else str(exc))
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=client) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(codes) == 200
    assert set(codes) == {"28P01"}, set(codes)
    time.sleep(0.5)
    after = log.read_text(errors="replace").count(f'password authentication failed for user "{APP_USER}"')
    assert after - before <= 2, f"{after - before} failed logins reached the server"


def test_max_db_and_user_connections_cap_across_pools(routers, primary):
    """Two users.toml entries for the same server user (two pools of 5):
    max_user_connections = 3 keeps PostgreSQL at 3 connections of that user
    whatever the pools want; idle connections of one pool make room for the
    other. max_db_connections likewise per database."""
    for cap in ("max_user_connections", "max_db_connections"):
        router = routers.start(general={cap: 3, "default_pool_size": 5,
                                        "checkout_timeout_ms": 20000},
                               users=[app_user(),
                                      app_user(name="app2", password="app2-secret",
                                               server_user=APP_USER, server_password="app-secret")])
        def client(user, password):
            with connect(router.dsn(user=user, password=password)) as conn:
                for _ in range(5):
                    conn.execute("SELECT pg_sleep(0.02)")

        with BackendPeak(primary, APP_USER, APP_DB) as seen:
            errors = run_clients(client, [(APP_USER, "app-secret"), ("app2", "app2-secret")] * 8)
        assert errors == [], cap
        assert 0 < seen.peak <= 3, f"{cap}: {seen.peak} connections on the server"
        router.stop()


def test_a_cap_set_by_reload_counts_connections_already_open(routers, primary):
    """max_db_connections set by a reload (from 0) counts the server
    connections already open, idle ones and one in use across the reload:
    the pool does not open the cap's worth on top of them."""
    router = routers.start(general={"default_pool_size": 5, "checkout_timeout_ms": 20000})
    held = [connect(router.dsn()) for _ in range(3)]
    for conn in held:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
    for conn in held[1:]:
        conn.execute("COMMIT")
    assert len(primary.backends(user=APP_USER, db=APP_DB)) >= 3
    config = router.config
    config["general"]["max_db_connections"] = 3
    router.write_files(config)
    before = reload_marks(router)
    router.reload()
    assert wait_reload(router, before) == "ok"
    held[0].execute("COMMIT")  # in use during the reload, back now

    def client():
        with connect(router.dsn()) as conn:
            for _ in range(5):
                conn.execute("SELECT pg_sleep(0.05)")

    with BackendPeak(primary, APP_USER, APP_DB) as seen:
        errors = run_clients(client, [()] * 8)
    for conn in held:
        conn.close()
    assert errors == []
    assert 0 < seen.peak <= 3, f"{seen.peak} connections on the server"


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_client_idle_timeout_closes_idle_clients_in_both_pool_modes(routers, mode):
    """client_idle_timeout_ms ends a client idle between transactions with
    57P05, in session mode too (where the idle client holds its server
    connection); a client that keeps working is never cut off."""
    router = routers.start(general={"client_idle_timeout_ms": 600, "pool_mode": mode})
    idle = connect(router.dsn())
    idle.execute("SELECT 1")
    with connect(router.dsn()) as busy:
        for _ in range(6):
            busy.execute("SELECT pg_sleep(0.2)")
        assert busy.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.Error) as err:
        idle.execute("SELECT 1")
    assert sqlstate(err.value) == "57P05"
    idle.close()


# ------------------------------------------------------- sharded databases --
SHARDED_ORDERS = [{"database": APP_DB, "name": "lim_orders", "column": "customer_id",
                   "data_type": "bigint"}]


@pytest.fixture(scope="module")
def two_shards(cluster):
    """The suite's primary as shard 0 and a server of its own as shard 1,
    each with an empty `lim_orders`."""
    with PgCluster(with_replica=False, prefix="pgrouter-lim1-") as s1:
        servers = [cluster.primary, s1.primary]
        for s in servers:
            with s.connect(APP_DB) as conn:
                conn.execute("DROP TABLE IF EXISTS lim_orders")
                conn.execute("CREATE TABLE lim_orders (customer_id bigint, v int)")
                conn.execute("ALTER TABLE lim_orders OWNER TO app")
        yield servers
        with cluster.primary.connect(APP_DB) as conn:
            conn.execute("DROP TABLE IF EXISTS lim_orders")


def start_sharded(routers, servers, **general):
    dbs = [{"name": APP_DB, "host": "127.0.0.1", "port": s.port, "database_name": APP_DB,
            "role": "primary", "shard": i} for i, s in enumerate(servers)]
    return routers.start(databases=dbs, sharded_tables=SHARDED_ORDERS, general=general)


def test_query_timeout_cancels_a_read_on_several_shards(routers, two_shards):
    """A read fanned out to every shard is one statement: query_timeout_ms
    cancels it on every shard still running it (57014), and the session
    goes on (the fan-out used to run to its end, however long)."""
    router = start_sharded(routers, two_shards, query_timeout_ms=800)
    with connect(router.dsn()) as conn:
        conn.execute("INSERT INTO lim_orders VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
        with Timer() as timer, pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10), customer_id FROM lim_orders").fetchall()
        assert timer.elapsed < 8, f"the fan-out ran {timer.elapsed:.1f}s"
        assert conn.execute("SELECT count(*) FROM lim_orders").fetchone() == (4,)
    for server in two_shards:
        wait_until(lambda s=server: not any("pg_sleep(10)" in (b["query"] or "") and b["state"] == "active"
                                            for b in s.backends(user=APP_USER)), 5,
                   what="the cancelled sleeps gone from the shards")


def test_idle_transaction_timeout_after_a_lone_begin_on_a_sharded_database(routers, two_shards):
    """On a sharded database the router answers a lone BEGIN itself (the
    shards are not known yet) and holds no server: the client is inside a
    transaction all the same, and idle_transaction_timeout_ms closes it."""
    router = start_sharded(routers, two_shards, idle_transaction_timeout_ms=500)
    conn = connect(router.dsn())
    conn.execute("BEGIN")
    assert_closed_idle_in_transaction(conn, after=1.5)
    # Between transactions nobody is cut off.
    with connect(router.dsn()) as other:
        other.execute("BEGIN")
        other.execute("COMMIT")
        time.sleep(1)
        assert other.execute("SELECT 1").fetchone() == (1,)


def sleep_on_shard(port: int, seconds: int) -> str:
    """A condition true on every row that sleeps `seconds` on the shard
    listening on `port` only: one statement, slow on one shard."""
    return (f"pg_sleep(CASE WHEN inet_server_port() = {port} "
            f"THEN {seconds} ELSE 0 END)::text = ''")


def shard_rows(servers) -> list[list[tuple]]:
    out = []
    for s in servers:
        with s.connect(APP_DB) as conn:
            out.append(conn.execute("SELECT customer_id, v FROM lim_orders ORDER BY 1").fetchall())
    return out


def assert_sleeps_gone(servers) -> None:
    for server in servers:
        wait_until(lambda s=server: not any("pg_sleep" in (b["query"] or "") and b["state"] == "active"
                                            for b in s.backends(user=APP_USER)), 5,
                   what="the cancelled sleeps gone from the shards")


@pytest.mark.parametrize("two_phase", [False, True])
def test_query_timeout_cancels_a_write_on_several_shards(routers, two_shards, two_phase):
    """A keyless UPDATE runs on every shard: query_timeout_ms cancels it
    where it still runs (57014), and no shard keeps its part — not even
    one that had finished before the timeout (it used to run to its end,
    however long)."""
    router = start_sharded(routers, two_shards, query_timeout_ms=800,
                           two_phase_commit=two_phase)
    with connect(router.dsn()) as conn:
        conn.execute("DELETE FROM lim_orders")
        conn.execute("INSERT INTO lim_orders VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
        before = shard_rows(two_shards)
        assert all(before), f"rows on every shard: {before}"
        slow = sleep_on_shard(two_shards[1].port, 10)
        with Timer() as timer, pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"UPDATE lim_orders SET v = v + 100 WHERE {slow}")
        assert timer.elapsed < 8, f"the write ran {timer.elapsed:.1f}s"
        assert shard_rows(two_shards) == before
        # The session goes on, and so does a quick write on every shard.
        conn.execute("UPDATE lim_orders SET v = v + 1")
        assert conn.execute("SELECT sum(v) FROM lim_orders").fetchone() == (14,)
    assert_sleeps_gone(two_shards)


def test_query_timeout_cancels_a_write_in_a_transaction_on_several_shards(routers, two_shards):
    """Inside a transaction already on both shards, a statement on every
    shard is cancelled by query_timeout_ms (57014): the transaction is
    failed as in PostgreSQL, ROLLBACK ends it, nothing of it stays."""
    router = start_sharded(routers, two_shards, query_timeout_ms=800)
    with connect(router.dsn()) as conn:
        conn.execute("DELETE FROM lim_orders")
        conn.execute("INSERT INTO lim_orders VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
        before = shard_rows(two_shards)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO lim_orders VALUES (5, 5), (6, 6), (7, 7), (8, 8)")
        slow = sleep_on_shard(two_shards[0].port, 10)
        with Timer() as timer, pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"DELETE FROM lim_orders WHERE {slow}")
        assert timer.elapsed < 8, f"the write ran {timer.elapsed:.1f}s"
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert shard_rows(two_shards) == before
        assert conn.execute("SELECT count(*) FROM lim_orders").fetchone() == (4,)
    assert_sleeps_gone(two_shards)


def test_query_timeout_cancels_a_split_insert(routers, two_shards):
    """A multi-row INSERT split over the shards is one statement:
    query_timeout_ms cancels it, and no shard keeps its rows."""
    router = start_sharded(routers, two_shards, query_timeout_ms=800)
    with connect(router.dsn()) as conn:
        conn.execute("DELETE FROM lim_orders")
        values = ", ".join(f"({k}, length(pg_sleep(CASE WHEN inet_server_port() = "
                           f"{two_shards[1].port} THEN 10 ELSE 0 END)::text) + {k})"
                           for k in range(1, 9))
        with Timer() as timer, pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"INSERT INTO lim_orders VALUES {values}")
        assert timer.elapsed < 8, f"the insert ran {timer.elapsed:.1f}s"
        assert shard_rows(two_shards) == [[], []]
        conn.execute("INSERT INTO lim_orders VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
        assert conn.execute("SELECT count(*) FROM lim_orders").fetchone() == (4,)
    assert_sleeps_gone(two_shards)


def test_a_shard_answering_neither_a_write_nor_its_cancel_is_given_up(routers, two_shards):
    """A shard whose backend is frozen (SIGSTOP) answers neither the write
    nor its cancel: another query_timeout_ms later the router gives up on
    it (08006 naming the shard), rolls the other shards back, and the
    session goes on."""
    router = start_sharded(routers, two_shards, query_timeout_ms=2000)
    with connect(router.dsn()) as conn:
        conn.execute("DELETE FROM lim_orders")
        conn.execute("INSERT INTO lim_orders VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
        before = shard_rows(two_shards)
        slow = sleep_on_shard(two_shards[1].port, 30)
        failure: list[BaseException] = []

        def write():
            try:
                conn.execute(f"UPDATE lim_orders SET v = v + 100 WHERE {slow}")
            except psycopg.Error as e:
                failure.append(e)

        writer = threading.Thread(target=write)
        writer.start()
        pid = wait_until(lambda: next((b["pid"] for b in two_shards[1].backends(user=APP_USER)
                                       if "pg_sleep" in (b["query"] or "") and b["state"] == "active"),
                                      None), 1.5, interval=0.02, what="the sleep on shard 1")
        os.kill(pid, signal.SIGSTOP)
        try:
            writer.join(15)
            assert not writer.is_alive(), "the write was never given up"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert failure and sqlstate(failure[0]) == "08006", failure
        assert "shard 1" in str(failure[0]), failure[0]
        assert conn.execute("SELECT count(*) FROM lim_orders").fetchone() == (4,)
    assert shard_rows(two_shards) == before
    assert_sleeps_gone(two_shards)
