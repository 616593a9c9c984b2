"""`workers = 1`: the whole router on one thread (a current-thread runtime,
like PgBouncer's single process). The same behaviour as the default (one
worker thread per core, pools split among them), under load, with prepared statements, routing,
cancel, logins with SCRAM, and graceful shutdown.
"""
from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, run_async
from harness.pg import APP_DB, APP_PASSWORD, APP_USER
from test_concurrency import _pgbench_init, _processed_and_failed, _run_pgbench

ONE_THREAD = {"workers": 1, "healthcheck_interval_ms": 200}


def runtime_threads(pid: int) -> list[str]:
    """Names of the router's threads that run client tasks: its workers
    (pgrouter-worker-N, cut to 15 bytes) or a tokio work-stealing runtime's."""
    names = [(p / "comm").read_text().strip() for p in Path(f"/proc/{pid}/task").iterdir()]
    return [n for n in names if n in ("pgrouter-worker", "tokio-rt-worker")]


def test_one_thread_serves_many_clients_with_prepared_statements(routers, cluster):
    router = routers.start(general={**ONE_THREAD, "default_pool_size": 3}, with_replica=True)
    assert runtime_threads(router.pid) == [], "workers = 1 must not start worker threads"

    async def client(i):
        # Every client logs in with SCRAM on the one thread.
        conn = await aconnect(router)
        try:
            stmt = await conn.prepare("SELECT $1::int * 2, pg_is_in_recovery()")
            for k in range(25):
                assert tuple(await stmt.fetchrow(i * 1000 + k)) == ((i * 1000 + k) * 2, True)
            async with conn.transaction():
                assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        finally:
            await conn.close()

    async def main():
        await asyncio.gather(*(client(i) for i in range(60)))

    run_async(main(), timeout=90)
    assert router.alive()


def test_one_thread_pgbench_tpcb_prepared(routers, cluster):
    _pgbench_init(cluster.primary)
    router = routers.start(general={**ONE_THREAD, "default_pool_size": 4})
    processed, failed = _processed_and_failed(_run_pgbench(router, "-M", "prepared"))
    assert failed == 0
    assert processed > 50


def test_one_thread_cancel_and_shutdown(routers, cluster):
    router = routers.start(general={**ONE_THREAD, "shutdown_timeout_ms": 10000})
    with connect(router.dsn()) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)

    busy = connect(router.dsn(), autocommit=False)
    idle = wire.RawConn.open(router.port)
    try:
        idle.startup(APP_USER, APP_DB, APP_PASSWORD)
        busy.execute("SELECT txid_current()")
        router.stop_requested = True
        router.signal(signal.SIGTERM)
        # The idle session is told at once that the router is going away ...
        msg = idle.read_msg()
        assert msg.kind == b"E", msg
        fields = wire.parse_error_fields(msg.body)
        assert (fields["S"], fields["C"]) == ("FATAL", "57P01"), fields
        assert router.alive(), "router exited while a transaction was open"
        # ... while the open transaction may still finish.
        busy.execute("SELECT 1")
        busy.commit()
    finally:
        busy.close()
        idle.close()
    assert router.wait(8) is not None, "router still running after its last transaction ended"
