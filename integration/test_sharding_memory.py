"""Bounded memory of a cross-shard read (issue 17: "Bounded memory"): the
router merges an ORDER BY without LIMIT over two shards row by row, so its
resident memory stays far below the result's size — also when the client
does not read for a while and the shards have their rows ready.

The result here is ~1.5 M rows of ~80 bytes on the wire (~120 MB): a router
that buffered it, or read the shards ahead of a stalled client, would pass
64 MiB."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import pq

from harness.clients import aconnect, run_async
from harness.pg import APP_DB, PgCluster

ROWS_PER_SHARD = 750_000
LIMIT_BYTES = 64 * 1024 * 1024
SHARDED = [{"database": "app", "name": "mem_rows", "column": "id", "data_type": "bigint"}]


@pytest.fixture(scope="module")
def shards():
    clusters = [PgCluster(with_replica=False, prefix=f"pgrouter-mem{i}-") for i in range(2)]
    threads = [threading.Thread(target=c.start) for c in clusters]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = []

        def fill(server, shard):
            try:
                fill_shard(server, shard)
            except Exception as exc:  # noqa: BLE001 - raised below
                errors.append(exc)
        fills = [threading.Thread(target=fill, args=(c.primary, i)) for i, c in enumerate(clusters)]
        for t in fills:
            t.start()
        for t in fills:
            t.join()
        if errors:
            raise errors[0]
        yield [c.primary for c in clusters]
    finally:
        for c in clusters:
            c.teardown()


def fill_shard(server, shard: int) -> None:
    """The keys 1..2N that PostgreSQL's hash partitioning puts on `shard`
    (where the router places them), generated on the shard itself."""
    with server.connect(APP_DB) as conn:
        conn.execute("CREATE TABLE mem_rows (id bigint NOT NULL, v int NOT NULL, note text)")
        conn.execute("CREATE TEMP TABLE placement (k bigint) PARTITION BY HASH (k)")
        conn.execute(
            "INSERT INTO mem_rows SELECT k, ((k * 7919) % 1000003)::int, md5(k::text) || md5(k::text) "
            f"FROM generate_series(1::bigint, {2 * ROWS_PER_SHARD}) k "
            f"WHERE satisfies_hash_partition('placement'::regclass, 2, {shard}, k)")
        conn.execute("GRANT SELECT ON mem_rows TO app")


def stream_rows(conn: pq.PGconn, chunk: int) -> None:
    """Results in chunks of `chunk` rows (libpq 17+), else row by row."""
    try:
        conn.set_chunked_rows_mode(chunk)
    except (AttributeError, psycopg.NotSupportedError):
        conn.set_single_row_mode()


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def test_rss_stays_bounded_while_a_stalled_client_streams_a_cross_shard_order_by(routers, shards):
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app",
            "role": "primary", "shard": i} for i, s in enumerate(shards)]
    router = routers.start(databases=dbs, sharded_tables=SHARDED)
    expected = sum(s.scalar("SELECT count(*) FROM mem_rows") for s in shards)
    assert all(s.scalar("SELECT count(*) FROM mem_rows") > ROWS_PER_SHARD * 0.9 for s in shards)
    # The DataRow messages' size: 19 bytes of framing per row, then the values.
    wire_bytes = sum(s.scalar("SELECT sum(19 + octet_length(id::text) + octet_length(v::text) "
                              "+ octet_length(note)) FROM mem_rows") for s in shards)
    assert wire_bytes > 1.5 * LIMIT_BYTES, wire_bytes  # the result is well above the bound

    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], vm_kib(router.pid, "VmRSS"))
    sampler = threading.Thread(target=sample, daemon=True)

    conn = pq.PGconn.connect(router.dsn().encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    try:
        sampler.start()
        conn.send_query(b"SELECT id, v, note FROM mem_rows ORDER BY v, id")
        stream_rows(conn, 5000)
        # The client stalls while the shards have sorted and begin to send.
        time.sleep(2.0)
        rows, last, errors = 0, (-1, -1), []
        while (res := conn.get_result()) is not None:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                errors.append(res.error_message)
                continue
            for i in range(res.ntuples):
                key = (int(res.get_value(i, 1)), int(res.get_value(i, 0)))
                assert key > last, f"row {rows + i}: {key} after {last}"
                last = key
            rows += res.ntuples
    finally:
        stop.set()
        sampler.join()
        conn.finish()
    assert not errors, errors
    assert rows == expected
    hwm = vm_kib(router.pid, "VmHWM") * 1024
    assert hwm < LIMIT_BYTES, f"router peak RSS {hwm / 2**20:.1f} MiB (sampled {peak[0] / 1024:.1f} MiB)"
    print(f"{rows} rows: router VmHWM {hwm / 2**20:.1f} MiB, sampled peak {peak[0] / 1024:.1f} MiB")


def test_server_connections_answer_small_requests_after_a_large_cross_shard_result(routers, shards):
    """While a fan-out streams a large result, each leg's socket wakes the
    router only for 64 KiB at a time (`SO_RCVLOWAT`, `net/low_water.rs`).
    The mark must be lowered for the tail of the result, and before anything
    else reads those connections: the next statement of the same
    transaction (on legs the transaction keeps), and the next client (a pool
    of one connection per shard hands it the same ones). A mark left raised
    leaves a small answer unread: each step here would time out."""
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app",
            "role": "primary", "shard": i} for i, s in enumerate(shards)]
    router = routers.start(general={"default_pool_size": 1}, databases=dbs, sharded_tables=SHARDED)
    big_sql = "SELECT id, note FROM mem_rows WHERE id % 10 = 0"
    expected = sum(s.scalar("SELECT count(*) FROM mem_rows WHERE id % 10 = 0") for s in shards)
    # Several MiB from each shard: well past the 512 KiB after which the
    # mark is raised.
    per_shard = [s.scalar("SELECT sum(19 + octet_length(id::text) + octet_length(note)) "
                          "FROM mem_rows WHERE id % 10 = 0") for s in shards]
    assert min(per_shard) > 4 * 1024 * 1024, per_shard

    async def at_once(awaitable):
        return await asyncio.wait_for(awaitable, 10)

    async def scenario():
        first = await aconnect(router)
        try:
            async with first.transaction():
                rows = await at_once(first.fetch(big_sql))
                assert len(rows) == expected
                assert await at_once(first.fetchval("SELECT id FROM mem_rows WHERE id = 2")) == 2
                assert await at_once(first.fetchval(
                    "SELECT count(*) FROM mem_rows WHERE id <= 10")) == 10
                rows = await at_once(first.fetch(big_sql + " ORDER BY id"))
                assert [r["id"] for r in rows[:3]] == [10, 20, 30]
            assert len(await at_once(first.fetch(big_sql))) == expected
        finally:
            await first.close()
        second = await aconnect(router)
        try:
            assert await at_once(second.fetchval("SELECT count(*) FROM mem_rows WHERE id <= 10")) == 10
            assert await at_once(second.fetchval("SELECT note FROM mem_rows WHERE id = 3")) is not None
        finally:
            await second.close()
    run_async(scenario(), timeout=100)
