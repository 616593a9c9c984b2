"""Graceful shutdown on SIGTERM / SIGINT."""
from __future__ import annotations

import copy
import signal
import time

import psycopg
import pytest

from harness.clients import connect
from harness.ops import reload_marks, wait_reload
from harness.util import port_open, wait_until


def make_table(primary, table):
    primary.sql(f"CREATE TABLE {table} (id int primary key)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")


def new_connection_refused(router) -> bool:
    try:
        with psycopg.connect(router.dsn(connect_timeout=3), autocommit=True) as c:
            c.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_open_transaction_can_commit_during_shutdown(routers, primary, table, sig):
    make_table(primary, table)
    router = routers.start(general={"shutdown_timeout_ms": 10000})
    conn = connect(router.dsn(), autocommit=False)
    try:
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        router.stop_requested = True
        router.signal(sig)
        time.sleep(0.5)
        assert router.alive(), "router exited while a transaction was open"
        assert new_connection_refused(router)
        conn.execute(f"INSERT INTO {table} VALUES (2)")
        conn.commit()
    finally:
        conn.close()
    assert primary.scalar(f"SELECT array_agg(id ORDER BY id) FROM {table}") == [1, 2]
    # With no transaction left it exits well before the timeout.
    code = router.wait(8)
    assert code is not None, "router still running after its last transaction ended"
    assert not port_open(router.port)


def test_shutdown_timeout_ends_stuck_transaction(routers, primary, table):
    make_table(primary, table)
    router = routers.start(general={"shutdown_timeout_ms": 2000})
    conn = connect(router.dsn(), autocommit=False)
    try:
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        start = time.monotonic()
        router.terminate()
        code = router.wait(15)
        took = time.monotonic() - start
        assert code is not None, "router did not exit after shutdown_timeout_ms"
        assert 1.5 <= took < 10, took
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    # The unfinished transaction was rolled back on the server.
    wait_until(lambda: primary.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'",
        db="postgres") == 0, 10, what="server transaction to end")
    assert primary.scalar(f"SELECT count(*) FROM {table}") == 0


def test_shutdown_timeout_changed_by_reload_is_the_one_used(routers, primary):
    """shutdown_timeout_ms is not a restart key: a reload that changes it
    (reported as changed) must also change how long a later SIGTERM waits;
    it used to keep waiting the value read at start-up."""
    router = routers.start(general={"shutdown_timeout_ms": 20000})
    cfg = copy.deepcopy(router.config)
    cfg["general"]["shutdown_timeout_ms"] = 1000
    router.write_files(config=cfg)
    before = reload_marks(router)
    router.reload()
    assert wait_reload(router, before) == "ok"
    assert "shutdown_timeout_ms" in router.log()
    conn = connect(router.dsn(), autocommit=False)
    try:
        conn.execute("SELECT 1")  # an open transaction delays shutdown
        start = time.monotonic()
        router.terminate()
        code = router.wait(30)
        took = time.monotonic() - start
        assert code is not None, "router did not exit"
        assert 0.8 <= took < 8, took
    finally:
        conn.close()


def test_idle_clients_do_not_delay_shutdown(routers):
    router = routers.start(general={"shutdown_timeout_ms": 20000})
    idle = [connect(router.dsn()) for _ in range(5)]
    try:
        for c in idle:
            c.execute("SELECT 1")
        start = time.monotonic()
        router.terminate()
        code = router.wait(10)
        assert code is not None, "idle clients kept the router alive"
        assert time.monotonic() - start < 10
        for c in idle:
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")
    finally:
        for c in idle:
            c.close()


def test_exit_code_zero_on_clean_shutdown(routers):
    router = routers.start()
    with connect(router.dsn()) as c:
        c.execute("SELECT 1")
    router.terminate()
    assert router.wait(10) == 0


def test_a_client_held_by_pause_gets_57p01_at_shutdown(routers):
    """A client whose statement waits for RESUME has no transaction open:
    a shutdown ends it at once with 57P01 (it used to wait out
    shutdown_timeout_ms and be dropped without an error)."""
    from harness.ops import admin_general, psql_admin
    import threading
    router = routers.start(general=admin_general(shutdown_timeout_ms=20000))
    assert psql_admin(router, "PAUSE").stdout.strip() == "PAUSE"
    held = connect(router.dsn())
    got = {}

    def run():
        try:
            held.execute("SELECT 1")
            got["r"] = "ran"
        except psycopg.Error as e:
            got["r"] = e.sqlstate
    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)
    assert "r" not in got, "PAUSE did not hold the statement"
    start = time.monotonic()
    router.terminate()
    assert router.wait(10) == 0
    t.join(5)
    assert time.monotonic() - start < 5
    assert got.get("r") == "57P01"
    held.close()


def test_a_client_queued_for_a_busy_pool_gets_57p01_at_shutdown(routers, primary, table):
    """A client queued for a server (the pool busy with an open
    transaction) has not started anything: at shutdown it used to get the
    connection the finishing transaction returned and run its statement, a
    new transaction begun after SIGTERM. It gets 57P01 at once, as an idle
    client or one held by PAUSE does; the open transaction still commits."""
    import threading
    make_table(primary, table)
    router = routers.start(general={"shutdown_timeout_ms": 10000, "default_pool_size": 1,
                                    "checkout_timeout_ms": 15000})
    holder = connect(router.dsn(), autocommit=False)
    queued = connect(router.dsn())
    got = {}

    def run():
        try:
            queued.execute(f"INSERT INTO {table} VALUES (2)")
            got["r"] = "ran"
        except psycopg.Error as e:
            got["r"] = e.sqlstate
    try:
        holder.execute(f"INSERT INTO {table} VALUES (1)")
        t = threading.Thread(target=run, daemon=True)
        t.start()
        time.sleep(0.5)
        assert "r" not in got, "the pool of one should be busy"
        router.stop_requested = True
        router.signal(signal.SIGTERM)
        t.join(5)
        assert got.get("r") == "57P01", got
        holder.execute(f"INSERT INTO {table} VALUES (3)")
        holder.commit()
    finally:
        holder.close()
        queued.close()
    assert router.wait(8) == 0
    assert primary.scalar(f"SELECT array_agg(id ORDER BY id) FROM {table}") == [1, 3]
