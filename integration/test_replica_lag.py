"""Lag-aware reads and read-your-writes (SPEC §5 Routing, issue 19 item 3),
against a primary and a streaming replica of this module's own whose
`recovery_min_apply_delay` keeps it 2 s behind."""
from __future__ import annotations

import threading
import time

import pytest

from harness.clients import connect
from harness.pg import APP_DB, APP_USER, PgCluster
from harness.util import wait_until

DELAY_S = 2
PORT = "SELECT inet_server_port()"


@pytest.fixture(scope="module")
def delayed():
    with PgCluster(with_replica=True, prefix="pgrouter-lag-",
                   extra_conf={"recovery_min_apply_delay": f"{DELAY_S}s"}) as c:
        with c.primary.connect(APP_DB) as conn:
            conn.execute("CREATE TABLE lag_t (id int PRIMARY KEY, note text)")
            conn.execute(f"GRANT ALL ON lag_t TO {APP_USER}")
        yield c


def lag_router(routers, c, **general):
    gen = {"healthcheck_interval_ms": 100, "default_pool_size": 4}
    gen.update(general)
    dbs = [{"name": APP_DB, "host": "127.0.0.1", "port": c.primary.port, "database_name": APP_DB,
            "role": "primary"},
           {"name": APP_DB, "host": "127.0.0.1", "port": c.replica.port, "database_name": APP_DB,
            "role": "replica"}]
    return routers.start(general=gen, databases=dbs)


def writes_in_background(c, stop: threading.Event):
    def run():
        with c.primary.connect(APP_DB) as conn:
            conn.autocommit = True
            i = 1_000_000
            while not stop.is_set():
                i += 1
                conn.execute("INSERT INTO lag_t VALUES (%s, 'background')", (i,))
                time.sleep(0.05)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_lagging_replica_takes_no_reads(routers, delayed):
    fresh = lag_router(routers, delayed, max_replica_lag_ms=500)
    unlimited = lag_router(routers, delayed)
    # Caught up and idle: the replica takes the reads.
    wait_until(lambda: connect(fresh.dsn()).execute(PORT).fetchone()[0] == delayed.replica.port,
               DELAY_S * 5, what="reads on the replica once it has caught up")
    stop = threading.Event()
    writer = writes_in_background(delayed, stop)
    try:
        time.sleep(DELAY_S)  # the replica now lags about DELAY_S behind
        with connect(fresh.dsn()) as conn, connect(unlimited.dsn()) as other:
            ports = [conn.execute(PORT).fetchone()[0] for _ in range(10)]
            assert set(ports) == {delayed.primary.port}, "a replica over max_replica_lag_ms was used"
            assert other.execute(PORT).fetchone()[0] == delayed.replica.port, \
                "without the limit the lagging replica still takes reads"
    finally:
        stop.set()
        writer.join(5)
    # Caught up again: back to the replica.
    wait_until(lambda: connect(fresh.dsn()).execute(PORT).fetchone()[0] == delayed.replica.port,
               DELAY_S * 5, what="reads back on the replica")


def stale_reads(router, first_id: int, n: int = 10) -> int:
    """Insert a row, read it back at once, n times: how many reads missed it."""
    stale = 0
    with connect(router.dsn()) as conn:
        for i in range(first_id, first_id + n):
            conn.execute("INSERT INTO lag_t VALUES (%s, 'mine')", (i,))
            if conn.execute("SELECT count(*) FROM lag_t WHERE id = %s", (i,)).fetchone()[0] != 1:
                stale += 1
    return stale


def test_read_your_writes(routers, delayed):
    on = lag_router(routers, delayed, read_your_writes=True)
    off = lag_router(routers, delayed)
    wait_until(lambda: connect(on.dsn()).execute(PORT).fetchone()[0] == delayed.replica.port,
               DELAY_S * 5, what="reads on the replica before the test")
    assert stale_reads(on, 1) == 0
    # The same workload without it reads older states (this is what the
    # setting prevents; it also shows the replica really lags).
    missed = stale_reads(off, 100)
    print(f"[read_your_writes] stale reads of the session's own rows: on 0/10, off {missed}/10")
    assert missed > 0, "the replica was not behind: the test proves nothing"
    # Once the replica has replayed the session's writes, its reads go
    # there again.
    with connect(on.dsn()) as conn:
        conn.execute("INSERT INTO lag_t VALUES (200, 'mine')")
        assert conn.execute(PORT).fetchone()[0] == delayed.primary.port
        wait_until(lambda: conn.execute(PORT).fetchone()[0] == delayed.replica.port,
                   DELAY_S * 5, what="reads back on the replica after it replayed the write")
        assert conn.execute("SELECT count(*) FROM lag_t WHERE id = 200").fetchone()[0] == 1
