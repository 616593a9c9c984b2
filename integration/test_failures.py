"""Things going wrong: cancels, clients vanishing, server backends killed."""
from __future__ import annotations

import asyncio
import signal
import threading
import time

import psycopg
import pytest

from harness import wire
from harness.clients import Timer, aconnect, connect, run_async, spawn_lock_holder
from harness.util import wait_until


def no_sleeping_backends(primary) -> bool:
    return not any("pg_sleep(30)" in (b["query"] or "") and b["state"] == "active"
                   for b in primary.backends(user="app"))


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_pg_sleep_psycopg(router, primary, method):
    with connect(router.dsn()) as conn:
        def cancel_later():
            time.sleep(1.0)
            getattr(conn, method)()
        t = threading.Thread(target=cancel_later, daemon=True)
        with Timer() as timer:
            t.start()
            with pytest.raises(psycopg.errors.QueryCanceled) as err:
                conn.execute("SELECT pg_sleep(30)")
        t.join(5)
        assert err.value.sqlstate == "57014"
        assert timer.elapsed < 5, f"cancel took {timer.elapsed:.1f}s"
        # The connection goes on working.
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)
    wait_until(lambda: no_sleeping_backends(primary), 5, what="pg_sleep gone from the primary")


def test_cancel_inside_transaction(router):
    with connect(router.dsn(), autocommit=False) as conn:
        conn.execute("SELECT 1")
        threading.Timer(1.0, conn.cancel).start()
        with Timer() as timer, pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert timer.elapsed < 5
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_cancel_asyncpg_timeout(router, primary):
    """asyncpg's query timeout sends a CancelRequest through the router."""
    async def main():
        conn = await aconnect(router, statement_cache_size=0)
        try:
            start = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetch("SELECT pg_sleep(30)", timeout=1.0)
            # The server stopped the query: nothing sleeps there any more.
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_until(lambda: no_sleeping_backends(primary), 4,
                                         what="cancelled query to stop"))
            assert time.monotonic() - start < 5
            assert await conn.fetchval("SELECT 3") == 3
        finally:
            await conn.close()
    run_async(main())


def test_cancel_with_wrong_key_does_nothing(router):
    """A CancelRequest with keys the router never handed out cancels nothing."""
    problems = []
    with connect(router.dsn()) as conn:
        def bogus_cancel():
            try:
                time.sleep(0.5)
                s = wire.RawConn.open(router.port)
                s.send(wire.cancel_request(12345, 67890))
                # The router hangs up after a CancelRequest, as PostgreSQL does.
                s.read_until_eof(5)
                s.close()
            except Exception as exc:  # noqa: BLE001
                problems.append(repr(exc))
        t = threading.Thread(target=bogus_cancel, daemon=True)
        t.start()
        assert conn.execute("SELECT pg_sleep(1.5), 'not cancelled'").fetchone()[1] == "not cancelled"
        t.join(10)
    assert problems == []


def _lock_after_release(router, table, within: float) -> float:
    """Lock row 1 with NOWAIT until it works; return how long it took."""
    start = time.monotonic()
    with connect(router.dsn()) as conn:
        while True:
            try:
                with conn.transaction():
                    conn.execute(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE NOWAIT").fetchall()
                return time.monotonic() - start
            except psycopg.errors.LockNotAvailable:
                if time.monotonic() - start > within:
                    raise AssertionError(f"row still locked after {within}s") from None
                time.sleep(0.1)


def _lock_table(primary, table):
    primary.sql(f"CREATE TABLE {table} (id int primary key, v int)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    primary.sql(f"INSERT INTO {table} VALUES (1, 0)")


def test_killed_client_releases_row_lock(router, primary, table):
    _lock_table(primary, table)
    holder = spawn_lock_holder(router.dsn(), table)
    try:
        # The lock really is held: NOWAIT fails now.
        with connect(router.dsn()) as conn:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE NOWAIT")
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        took = _lock_after_release(router, table, within=5)
        assert took < 5
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=10)


def test_reset_client_releases_row_lock(router, primary, table):
    """Same with a TCP RST instead of a FIN, from a raw connection mid-transaction."""
    _lock_table(primary, table)
    raw = wire.connect(router.port, "app", "app", "app-secret")
    raw.simple_query("BEGIN")
    raw.simple_query(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE")
    with connect(router.dsn()) as conn:
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE NOWAIT")
    raw.close(reset=True)
    assert _lock_after_release(router, table, within=5) < 5
    # And the pool is healthy afterwards.
    with connect(router.dsn()) as conn:
        assert conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == (0,)


def test_client_vanishing_mid_query_does_not_leak(routers, primary):
    """A client that disconnects while its query runs: the server connection is
    not handed to the next client with that query's results pending."""
    router = routers.start(general={"default_pool_size": 1})
    raw = wire.connect(router.port, "app", "app", "app-secret")
    raw.send(wire.query_message("SELECT pg_sleep(1.5), 'stale result'"))
    time.sleep(0.3)
    raw.close()
    with connect(router.dsn()) as conn:
        for i in range(5):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)


def test_server_backend_killed(routers, primary, table):
    """pg_terminate_backend on the backend serving one client: only that
    client sees an error; the others keep going; new clients are served."""
    _lock_table(primary, table)
    router = routers.start(general={"default_pool_size": 5})
    stop = threading.Event()
    errors: list[str] = []
    counts: list[int] = []

    def worker(i):
        n = 0
        try:
            with connect(router.dsn()) as conn:
                while not stop.is_set():
                    with conn.transaction():
                        assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
                        conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone()
                    n += 1
                    time.sleep(0.01)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"worker {i}: {exc!r}")
        counts.append(n)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        victim = connect(router.dsn())
        victim.execute("BEGIN")
        pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert primary.kill_backend(pid)
        with pytest.raises(psycopg.Error):
            victim.execute("SELECT 1")
            victim.execute("COMMIT")
        victim.close()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert errors == []
    assert len(counts) == 4 and all(c > 0 for c in counts), counts
    with connect(router.dsn()) as conn:
        for _ in range(10):  # more than the pool size: no dead connection comes back
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert router.alive()


def test_server_connections_killed_while_idle(routers, primary):
    """Idle pooled server connections killed behind the router's back (as a
    PostgreSQL restart or an idle-timeout would): like PgBouncer, the router
    notices and no client is handed a dead connection."""
    router = routers.start(general={"default_pool_size": 3})
    with connect(router.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    killed = [b["pid"] for b in primary.pool_backends(user="app", db="app")]
    assert killed
    for pid in killed:
        primary.kill_backend(pid)
    wait_until(lambda: not set(killed) & {b["pid"] for b in primary.backends(user="app")}, 5,
               what="backends gone")
    time.sleep(0.5)
    with connect(router.dsn()) as conn:
        for _ in range(6):
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert router.alive()


def test_pipelined_syncs_all_answered_when_the_server_dies(routers, primary):
    """Three Syncs pipelined; the server dies while the second batch runs:
    every Sync still gets its ReadyForQuery (issue 15 item 5: the owed count
    was taken from an already reset queue, one came and the client hung)."""
    router = routers.start(general={"default_pool_size": 2})
    conn = wire.RawConn.open(router.port)
    try:
        conn.startup("app", "app", "app-secret")
        sync = wire.sync_message()
        conn.send(wire.extended_query("SELECT pg_backend_pid()") + sync
                  + wire.extended_query("SELECT pg_sleep(30)") + sync
                  + wire.extended_query("SELECT 3") + sync)
        first = conn.read_batches(1, timeout=10)[0]
        pid = int(next(wire.data_row_values(m.body)[0] for m in first if m.kind == b"D"))
        wait_until(lambda: any("pg_sleep(30)" in (b["query"] or "") and b["state"] == "active"
                               for b in primary.backends(user="app")), 5, what="sleep running")
        assert primary.kill_backend(pid)
        rest = conn.read_batches(2, timeout=10)
        assert [b[-1].kind for b in rest] == [b"Z", b"Z"]
        errors = [wire.parse_error_fields(m.body) for b in rest for m in b if m.kind == b"E"]
        assert errors, "the lost request must be reported"
        # The session goes on with another server connection.
        rows, _tags, _ = conn.simple_query("SELECT 42")
        assert rows == [["42"]]
    finally:
        conn.close()
    assert router.alive()


def test_a_cancel_never_stops_another_clients_query(routers):
    """A CancelRequest travels on its own connection: by the time
    PostgreSQL acts on it, the client's query may be over and its server
    (transaction mode, a small pool) running another client's query. The
    router must not let a cancel reach a server the client no longer uses,
    nor give a server with a cancel on its way to anyone else. Client A
    cancels itself at random moments while B clients share A's servers;
    directly to PostgreSQL no B query is ever cancelled, nor may one be
    here."""
    import random
    router = routers.start(general={"default_pool_size": 2})
    a = connect(router.dsn())
    stop = threading.Event()
    b_cancelled, b_done, a_cancelled, errors = [], [0], [0], []

    def b_client(i):
        with connect(router.dsn()) as c:
            while not stop.is_set():
                try:
                    c.execute("SELECT pg_sleep(0.02)")
                    b_done[0] += 1
                except psycopg.errors.QueryCanceled as e:
                    b_cancelled.append((i, str(e)))
                except psycopg.Error as e:  # noqa: PERF203
                    errors.append(repr(e))

    def a_client():
        while not stop.is_set():
            try:
                a.execute("SELECT pg_sleep(0.01)")
            except psycopg.errors.QueryCanceled:
                a_cancelled[0] += 1
            except psycopg.Error as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=b_client, args=(i,), daemon=True) for i in range(3)]
    threads.append(threading.Thread(target=a_client, daemon=True))
    for t in threads:
        t.start()
    rng = random.Random(7)
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.001, 0.02))
        a.cancel()
    stop.set()
    for t in threads:
        t.join(10)
    a.close()
    assert errors == []
    assert b_done[0] > 50
    assert a_cancelled[0] > 5, "A's own cancels must still work"
    assert b_cancelled == [], f"{len(b_cancelled)} of B's queries were cancelled by A's cancels"


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_cancel_while_waiting_for_a_server_ends_the_wait(routers, protocol):
    """A client queued for a server connection (the pool is busy) and
    cancelled (Ctrl-C in psql, a driver's timeout) used to wait out the whole
    checkout_timeout_ms: no server had the statement yet, so the cancel was
    dropped. PostgreSQL answers a cancel with 57014 at once; so does the
    router, and the statement never runs."""
    r = routers.start(general={"default_pool_size": 1, "checkout_timeout_ms": 15000})
    holder = connect(r.dsn(), autocommit=False)
    waiter = connect(r.dsn())
    try:
        holder.execute("SELECT 1")  # holds the pool's only connection
        threading.Timer(1.0, waiter.cancel_safe).start()
        with Timer() as timer, pytest.raises(psycopg.errors.QueryCanceled) as err:
            if protocol == "simple":
                waiter.execute("SELECT 'should not run'", prepare=False)
            else:
                waiter.execute("SELECT %s::text", ["should not run"], prepare=True)
        assert err.value.sqlstate == "57014"
        assert "canceling statement due to user request" in str(err.value)
        assert timer.elapsed < 5, f"the cancel took {timer.elapsed:.1f}s"
        holder.commit()
        # The session goes on, and the pool was not left short.
        assert waiter.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)
        assert holder.execute("SELECT 2").fetchone() == (2,)
    finally:
        holder.close()
        waiter.close()
