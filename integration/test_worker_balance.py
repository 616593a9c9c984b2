"""Which workers take clients (`worker_spread_percent`), and clients moving
between workers between their transactions.

With several workers, one serves everyone while it is not busy; once an
active worker stays busier than `worker_spread_percent` of a core for a
second, another takes clients too and clients move to it; once the load
fits on one worker fewer at half that, the last one sheds its clients.
0 spreads clients over every worker at once, 100 never spreads them.

A client moves only between transactions, holding no server connection.
Everything of its session goes with it: tracked settings, prepared
statements (protocol-level, and SQL PREPARE), its pool's limit.
"""
from __future__ import annotations

import asyncio
import subprocess
import time

from harness.clients import aconnect, connect, in_thread, run_async
from harness.ops import admin_general, admin_rows, pools, reload_marks, scrape, wait_reload
from harness.pg import APP_DB, APP_USER, pg_tool
from harness.router import app_user
from harness.util import wait_until
from test_concurrency import _processed_and_failed
from test_tls import ca, certdir, router_cert, tls_general  # noqa: F401 - fixtures

POOL = 4


def start(routers, percent: int, **general):
    return routers.start(
        general=admin_general(metrics=True, workers=2, worker_spread_percent=percent, **general),
        users=[app_user(pool_size=POOL)])


def set_percent(router, percent: int) -> None:
    before = reload_marks(router)
    router.config["general"]["worker_spread_percent"] = percent
    router.write_files()
    router.reload()
    assert wait_reload(router, before) == "ok", router.log()


def app_workers(router) -> list[int]:
    """The worker of each of the app user's clients, by client id."""
    rows = [r for r in admin_rows(router, "SHOW CLIENTS") if r["user"] == APP_USER]
    return [int(r["worker"]) for r in sorted(rows, key=lambda r: int(r["id"]))]


def active_workers(router) -> float:
    return scrape(router).one("pgrouter_workers_active")


def moves(router) -> float:
    return scrape(router).one("pgrouter_client_moves_total")


class Client:
    """A psycopg client with a setting of its own, a protocol-level
    prepared statement and an SQL prepared statement."""

    def __init__(self, router, i: int, **dsn):
        self.i = i
        self.conn = connect(router.dsn(**dsn), prepare_threshold=0)
        self.conn.execute(f"SET work_mem = '{i + 1}MB'")
        self.conn.execute(f"PREPARE mine AS SELECT {i} * 10 + $1::int")

    def check(self) -> None:
        """The client's own state, on whichever worker it is now."""
        c, i = self.conn, self.i
        assert c.execute("SHOW work_mem").fetchone() == (f"{i + 1}MB",)
        # prepare_threshold=0: psycopg prepares it on the server (Parse with a
        # name), then runs it by name.
        assert c.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone() == (i + 1,)
        assert c.execute("EXECUTE mine(3)").fetchone() == (i * 10 + 3,)

    def close(self) -> None:
        self.conn.close()


def run_until(clients, what: str, condition, timeout: float = 15) -> None:
    """Every client runs its checks, again and again, until `condition()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for c in clients:
            c.check()
        time.sleep(0.05)


def test_one_worker_takes_every_client_while_load_is_light(routers):
    router = start(routers, 70)
    clients = [Client(router, i) for i in range(6)]
    try:
        for _ in range(10):
            for c in clients:
                c.check()
        assert app_workers(router) == [0] * 6
        s = scrape(router)
        assert s.one("pgrouter_workers") == 2
        assert s.one("pgrouter_workers_active") == 1
        assert s.one("pgrouter_client_moves_total") == 0
        # The app clients on worker 0 (admin sessions may add to either).
        assert s.one("pgrouter_worker_clients", worker=0) >= 6
        assert 0 <= s.one("pgrouter_worker_busy_ratio", worker=1) < 0.05
    finally:
        for c in clients:
            c.close()


def test_clients_move_to_a_new_worker_and_back_with_their_session(routers, primary):
    router = start(routers, 100)
    clients = [Client(router, i) for i in range(6)]
    try:
        for c in clients:
            c.check()
        assert app_workers(router) == [0] * 6
        # 0: both workers take clients at once, and worker 0 sheds half of
        # its clients as they finish their transactions.
        set_percent(router, 0)
        run_until(clients, "clients to spread over both workers",
                  lambda: sorted(app_workers(router)) == [0, 0, 0, 1, 1, 1])
        assert active_workers(router) == 2
        assert moves(router) >= 3
        for c in clients:
            c.check()
        # 100: the idle router fits on one worker; after two seconds worker
        # 1 sheds its clients, which come back to worker 0.
        set_percent(router, 100)
        run_until(clients, "clients to come back to worker 0",
                  lambda: app_workers(router) == [0] * 6)
        assert active_workers(router) == 1
        assert moves(router) >= 6
        for c in clients:
            c.check()
        # Moving never opened more server connections than the pool allows.
        assert len(primary.pool_backends(user=APP_USER, db=APP_DB)) <= POOL
    finally:
        for c in clients:
            c.close()


def test_a_client_in_a_transaction_stays_until_it_ends(routers, primary):
    with connect(primary.dsn()) as direct:
        direct.execute("DROP TABLE IF EXISTS balance_moves")
        direct.execute("CREATE TABLE balance_moves (i int)")
    router = start(routers, 100)
    # Three idle clients, then the one in a transaction: with both workers
    # taking clients, worker 0 sheds two; the idle ones take those turns
    # while the transaction is open.
    clients = [Client(router, i) for i in range(3)]
    in_tx = connect(router.dsn(), autocommit=False)
    try:
        in_tx.execute("INSERT INTO balance_moves VALUES (1)")
        pid = in_tx.execute("SELECT pg_backend_pid()").fetchone()[0]
        set_percent(router, 0)
        run_until(clients, "two idle clients to move",
                  lambda: sorted(app_workers(router)[:3]) == [0, 1, 1])
        # The transaction's client is still on worker 0, on its server.
        assert app_workers(router)[3] == 0
        assert in_tx.execute("SELECT pg_backend_pid(), count(*) FROM balance_moves").fetchone() == (pid, 1)
        in_tx.commit()
        assert primary.scalar("SELECT count(*) FROM balance_moves") == 1
        for c in clients:
            c.check()
    finally:
        for c in clients:
            c.close()
        in_tx.close()


def test_asyncpg_clients_keep_their_statements_across_moves(routers):
    router = start(routers, 100)

    async def main():
        conns = [await aconnect(router) for _ in range(4)]
        try:
            stmts = [await c.prepare("SELECT $1::int * 3") for c in conns]
            set_percent(router, 0)
            deadline = time.monotonic() + 15
            while sorted(app_workers(router)) != [0, 0, 1, 1]:
                assert time.monotonic() < deadline, app_workers(router)
                for k, s in enumerate(stmts):
                    assert await s.fetchval(k) == k * 3
                await asyncio.sleep(0.05)
            # Every connection at once, right after the moves: statements
            # prepared before, and a pipeline (executemany).
            async def use(k, c, s):
                for n in range(5):
                    assert await s.fetchval(k + n) == (k + n) * 3
                await c.executemany("SELECT $1::int", [(n,) for n in range(20)])
            await asyncio.gather(*(use(k, c, s) for k, (c, s) in enumerate(zip(conns, stmts))))
        finally:
            for c in conns:
                await c.close()

    run_async(main(), timeout=60)


def test_a_busy_worker_brings_in_another_and_lets_it_go_when_idle(routers, tmp_path):
    """5 % of a core: the load of eight pgbench clients is more than that
    on one worker, so within seconds both workers take clients and clients
    move; once pgbench is done the idle router folds back to one."""
    router = start(routers, 5)
    script = tmp_path / "select.sql"
    script.write_text("SELECT 1;\n")
    cmd = [pg_tool("pgbench"), "-n", "-c", "8", "-j", "2", "-T", "6", "-f", str(script),
           "-h", "127.0.0.1", "-p", str(router.port), "-U", APP_USER, APP_DB]
    bench = subprocess.Popen(cmd, env=router.psql_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    seen_two, peak_busy = False, 0.0
    while bench.poll() is None:
        s = scrape(router)
        seen_two = seen_two or s.one("pgrouter_workers_active") == 2
        peak_busy = max(peak_busy, s.one("pgrouter_worker_busy_ratio", worker=0))
        time.sleep(0.1)
    text = bench.stdout.read()
    assert bench.returncode == 0, text
    processed, failed = _processed_and_failed(text)
    assert failed == 0 and processed > 100, text
    assert seen_two, router.log()
    assert moves(router) >= 1
    # What was compared with the 5 %: worker 0's share of a core.
    assert peak_busy >= 0.05, peak_busy
    wait_until(lambda: active_workers(router) == 1, 10, what="the idle router to fold to one worker")


def test_clients_queued_on_a_worker_that_stops_taking_clients_are_served_first(routers):
    """Pool 2 over 2 workers taking clients: one connection each. A (worker
    1) and B (worker 0) hold them; C waits on worker 1, E and F on worker 0.
    Then worker 1 stops taking clients: worker 0's part gets the whole pool
    and E the new room (E sleeps 3 s), worker 1's part none. C, queued
    there, must get the next connection given back on worker 0 (B's), not
    F behind it: otherwise it would wait for room nobody on worker 0 leaves
    while worker 0 has waiters of its own (here until E's sleep ends)."""
    router = routers.start(
        general=admin_general(metrics=True, workers=2, worker_spread_percent=0,
                              checkout_timeout_ms=20000),
        users=[app_user(pool_size=2)])
    conns = {f"c{i}": connect(router.dsn(), autocommit=False, application_name=f"c{i}")
             for i in range(6)}
    threads = []
    try:
        on = {r["application_name"]: int(r["worker"]) for r in admin_rows(router, "SHOW CLIENTS")
              if r["application_name"] in conns}
        w0 = [conns[n] for n in sorted(on) if on[n] == 0]
        w1 = [conns[n] for n in sorted(on) if on[n] == 1]
        assert len(w0) == 3 and len(w1) == 3, on
        (b, e, f), (a, c, _) = w0, w1
        a.execute("SELECT 1")
        b.execute("SELECT 1")
        done = {}

        def run(name, conn, sql):
            conn.execute(sql)
            conn.commit()
            done[name] = time.monotonic()
        threads.append(in_thread(run, "c", c, "SELECT 'c'"))
        wait_until(lambda: int(pools(router)[0]["cl_waiting"]) == 1, 5, what="C to wait")
        threads.append(in_thread(run, "e", e, "SELECT pg_sleep(3)"))
        wait_until(lambda: int(pools(router)[0]["cl_waiting"]) == 2, 5, what="E to wait")
        threads.append(in_thread(run, "f", f, "SELECT 'f'"))
        wait_until(lambda: int(pools(router)[0]["cl_waiting"]) == 3, 5, what="F to wait")
        set_percent(router, 100)
        wait_until(lambda: active_workers(router) == 1, 10, what="worker 1 to stop taking clients")
        # E got worker 0's new room; C and F still wait.
        wait_until(lambda: int(pools(router)[0]["cl_waiting"]) == 2, 5, what="E to be served")
        assert "c" not in done and "f" not in done, done
        gave_back = time.monotonic()
        b.commit()
        wait_until(lambda: "c" in done, 2.5, what="C to get B's connection")
        assert done["c"] - gave_back < 2.0
        for t in threads:
            t.join(10)
        assert set(done) == {"c", "e", "f"}, done
        # F got the connection after C, who waited longer.
        assert done["c"] < done["f"], done
        a.commit()
    finally:
        for t in threads:
            t.join(10)
        for conn in conns.values():
            conn.close()


def test_tls_clients_move_with_their_tls_session(routers, ca, certdir):  # noqa: F811 - fixtures
    router = routers.start(
        general={**tls_general(router_cert(ca, certdir)),
                 **admin_general(metrics=True, workers=2, worker_spread_percent=100)},
        users=[app_user(pool_size=POOL)])
    clients = [Client(router, i, sslmode="require") for i in range(4)]
    try:
        for c in clients:
            c.check()
        set_percent(router, 0)
        run_until(clients, "TLS clients to spread over both workers",
                  lambda: sorted(app_workers(router)) == [0, 0, 1, 1])
        set_percent(router, 100)
        run_until(clients, "TLS clients to come back to worker 0",
                  lambda: app_workers(router) == [0] * 4)
        assert moves(router) >= 4
        for c in clients:
            c.check()
            # Still the TLS session it began with.
            assert c.conn.pgconn.ssl_in_use
        rows = [r for r in admin_rows(router, "SHOW CLIENTS") if r["user"] == APP_USER]
        assert {r["tls"] for r in rows} == {"t"}, rows
    finally:
        for c in clients:
            c.close()


def test_clients_under_load_lose_nothing_while_workers_come_and_go(routers, primary):
    """Eight asyncpg clients run prepared statements, pipelines and
    transactions that write, without pause, while the workers taking
    clients go from one to two and back three times: every answer is
    right, every committed row is there, nobody waits out a timeout."""
    with connect(primary.dsn()) as direct:
        direct.execute("DROP TABLE IF EXISTS balance_load")
        direct.execute("CREATE TABLE balance_load (client int, n int, PRIMARY KEY (client, n))")
    router = start(routers, 100, checkout_timeout_ms=5000)
    stop = asyncio.Event()
    committed = {}

    async def client(i):
        conn = await aconnect(router)
        try:
            stmt = await conn.prepare("SELECT $1::int + $2::int")
            n = 0
            while not stop.is_set():
                n += 1
                assert await stmt.fetchval(i, n) == i + n
                await conn.executemany("SELECT $1::int", [(k,) for k in range(5)])
                async with conn.transaction():
                    await conn.execute("INSERT INTO balance_load VALUES ($1, $2)", i, n)
                    assert await conn.fetchval(
                        "SELECT count(*) FROM balance_load WHERE client = $1", i) == n
                committed[i] = n
        finally:
            await conn.close()

    async def main():
        tasks = [asyncio.create_task(client(i)) for i in range(8)]
        loop = asyncio.get_running_loop()
        for _ in range(3):
            await loop.run_in_executor(None, set_percent, router, 0)
            await asyncio.sleep(1)
            await loop.run_in_executor(None, set_percent, router, 100)
            await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*tasks)

    run_async(main(), timeout=120)
    assert moves(router) >= 6
    assert len(committed) == 8 and min(committed.values()) > 10, committed
    for i, n in committed.items():
        assert primary.scalar("SELECT count(*) FROM balance_load WHERE client = %s", (i,)) == n
