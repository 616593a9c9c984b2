"""Many clients over a small pool: correctness under contention, pgbench."""
from __future__ import annotations

import asyncio
import random
import re
import subprocess
import threading
import time

from harness.clients import aconnect, connect, run_async
from harness.pg import pg_tool

CLIENTS = 200
TRANSFERS_PER_CLIENT = 10
ACCOUNTS = 100
START_BALANCE = 1000


def test_200_clients_bank_transfers(routers, primary, table):
    ledger = f"{table}_ledger"
    primary.sql(f"CREATE TABLE {table} (id int primary key, balance bigint not null)")
    primary.sql(f"CREATE TABLE {ledger} (client int, n int, src int, dst int, amount int)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    primary.sql(f"ALTER TABLE {ledger} OWNER TO app")
    primary.sql(f"INSERT INTO {table} SELECT g, {START_BALANCE} FROM generate_series(1, {ACCOUNTS}) g")
    # Pool of 10 for 200 clients; the wait for a server can be long under
    # this load on 2 cores, and this test is about correctness, not latency.
    router = routers.start(general={"default_pool_size": 10, "checkout_timeout_ms": 60000})

    # Watch the number of server connections the router opens.
    max_backends = 0
    stop = threading.Event()

    def watch():
        nonlocal max_backends
        while not stop.is_set():
            n = len(primary.pool_backends(user="app", db="app"))
            max_backends = max(max_backends, n)
            time.sleep(0.05)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    errors: list[str] = []

    async def client(cid: int):
        rnd = random.Random(cid)
        try:
            conn = await aconnect(router, statement_cache_size=0, timeout=60)
        except Exception as exc:  # noqa: BLE001 - every failure is a test failure
            errors.append(f"client {cid} connect: {exc!r}")
            return
        try:
            for n in range(TRANSFERS_PER_CLIENT):
                a, b = rnd.sample(range(1, ACCOUNTS + 1), 2)
                amount = rnd.randint(1, 50)
                lo, hi = sorted((a, b))
                async with conn.transaction():
                    # Lock both rows in a consistent order: no deadlocks.
                    await conn.fetch(f"SELECT id FROM {table} WHERE id IN ($1, $2) "
                                     f"ORDER BY id FOR UPDATE", lo, hi)
                    await conn.execute(f"UPDATE {table} SET balance = balance - $1 WHERE id = $2",
                                       amount, a)
                    await conn.execute(f"UPDATE {table} SET balance = balance + $1 WHERE id = $2",
                                       amount, b)
                    await conn.execute(f"INSERT INTO {ledger} VALUES ($1, $2, $3, $4, $5)",
                                       cid, n, a, b, amount)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"client {cid}: {exc!r}")
        finally:
            await conn.close()

    async def main():
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    try:
        run_async(main(), timeout=100)
    finally:
        stop.set()
        watcher.join(5)

    assert errors == [], errors[:10]
    assert primary.scalar(f"SELECT sum(balance) FROM {table}") == ACCOUNTS * START_BALANCE
    assert primary.scalar(f"SELECT count(*) FROM {ledger}") == CLIENTS * TRANSFERS_PER_CLIENT
    # Each account's balance is what the ledger says.
    mismatched = primary.scalar(
        f"SELECT count(*) FROM {table} a WHERE a.balance <> {START_BALANCE} "
        f"+ coalesce((SELECT sum(amount) FROM {ledger} WHERE dst = a.id), 0) "
        f"- coalesce((SELECT sum(amount) FROM {ledger} WHERE src = a.id), 0)")
    assert mismatched == 0
    assert 1 <= max_backends <= 10, max_backends
    primary.sql(f"DROP TABLE {ledger}")


def test_threads_sharing_small_pool(routers, primary, table):
    """psycopg from 40 threads over a pool of 3: every statement answered."""
    primary.sql(f"CREATE TABLE {table} (id int primary key, hits int not null)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    primary.sql(f"INSERT INTO {table} VALUES (1, 0)")
    router = routers.start(general={"default_pool_size": 3, "checkout_timeout_ms": 30000})
    errors = []

    def worker(i):
        try:
            with connect(router.dsn()) as conn:
                for j in range(20):
                    assert conn.execute("SELECT %s::int", (i * 100 + j,)).fetchone() == (i * 100 + j,)
                    conn.execute(f"UPDATE {table} SET hits = hits + 1 WHERE id = 1")
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert errors == []
    assert primary.scalar(f"SELECT hits FROM {table} WHERE id = 1") == 40 * 20
    assert len(primary.pool_backends(user="app", db="app")) <= 3


def _pgbench_init(primary):
    exists = primary.scalar("SELECT to_regclass('public.pgbench_accounts') IS NOT NULL")
    if not exists:
        # Directly on the primary (unix socket, as app so that app owns the tables).
        out = subprocess.run([pg_tool("pgbench"), "-i", "-s", "1", "-q", "-h", str(primary.sockdir),
                              "-p", str(primary.port), "-U", "app", "app"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr


def _run_pgbench(router, *args) -> str:
    cmd = [pg_tool("pgbench"), "-n", "-c", "10", "-j", "2", "-T", "5",
           "-h", "127.0.0.1", "-p", str(router.port), "-U", "app", *args, "app"]
    out = subprocess.run(cmd, env=router.psql_env(), capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    return text


def _processed_and_failed(text: str) -> tuple[int, int]:
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    assert processed and failed, text
    return int(processed.group(1)), int(failed.group(1))


def test_pgbench_tpcb_simple(router, primary):
    _pgbench_init(primary)
    text = _run_pgbench(router, "-M", "simple")
    processed, failed = _processed_and_failed(text)
    assert failed == 0, text
    assert processed > 50, text


def test_pgbench_select_only_extended(router, primary):
    _pgbench_init(primary)
    text = _run_pgbench(router, "-S", "-M", "extended")
    processed, failed = _processed_and_failed(text)
    assert failed == 0, text
    assert processed > 100, text
