"""Prepared statements in transaction mode (SPEC §5 "Pooling and protocol",
issue 3 item 6): protocol-level named statements (asyncpg's statement cache,
psycopg with prepare_threshold=0), SQL PREPARE/EXECUTE/DEALLOCATE, pgbench
-M prepared, and unnamed statements in pipelines — with more clients than
server connections, and with a replica so statements are prepared lazily on
both servers."""
from __future__ import annotations

import asyncio
import re
import subprocess
import threading

import asyncpg
import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, run_async
from harness.pg import APP_DB, APP_PASSWORD, APP_USER, pg_tool
from harness.routes import WHERE, Places, wait_replayed, where


@pytest.fixture(scope="module")
def ptable(cluster):
    with cluster.primary.connect("app") as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE IF NOT EXISTS ps_t (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("TRUNCATE ps_t")
        conn.execute("INSERT INTO ps_t SELECT g, g * 10 FROM generate_series(1, 100) g")
        conn.execute("CREATE TABLE IF NOT EXISTS ps_log (client int, n int, v int)")
        conn.execute("TRUNCATE ps_log")
    wait_replayed(cluster)
    return "ps_t"


# ---------------------------------------------------------------- asyncpg --
def test_asyncpg_50_clients_pool_2(routers, ptable, cluster):
    """asyncpg with its default statement cache (named statements, reused
    across transactions): 50 concurrent clients over pool_size 2, prepared
    reads outside transactions and writes inside them."""
    router = routers.start(general={"default_pool_size": 2, "checkout_timeout_ms": 20000},
                           with_replica=True)
    places = Places(cluster)
    rounds = 10

    async def client(i: int):
        conn = await aconnect(router)  # statement_cache_size defaults to 100
        try:
            seen = set()
            for n in range(rounds):
                k = (i * 7 + n) % 100 + 1
                row = await conn.fetchrow(f"SELECT v, $1::int AS k, {WHERE} FROM ps_t WHERE id = $1", k)
                assert (row["v"], row["k"]) == (k * 10, k), (i, n, row)
                seen.add(places.row(tuple(row)))
                # An explicit prepared statement object, reused.
                stmt = await conn.prepare("SELECT $1::int * $2::int")
                assert await stmt.fetchval(i, n) == i * n
                async with conn.transaction():
                    await conn.execute("INSERT INTO ps_log VALUES ($1, $2, $3)", i, n, k)
                    v = await conn.fetchval("SELECT v FROM ps_t WHERE id = $1", k)
                    assert v == k * 10
                    total = await conn.fetchval("SELECT count(*) FROM ps_log WHERE client = $1", i)
                    assert total == n + 1, (i, n, total)
            return seen
        finally:
            await conn.close()

    async def main():
        return await asyncio.gather(*(client(i) for i in range(50)))

    seen = run_async(main(), timeout=100)
    assert all(s == {"replica"} for s in seen), seen
    assert cluster.primary.scalar("SELECT count(*) FROM ps_log WHERE client < 50") == 50 * rounds


def test_asyncpg_prepared_statement_reused_on_other_server_connections(routers, ptable, primary):
    """One client's prepared statement, used after another client took its
    server connection, and after the server connection it was prepared on
    is gone."""
    router = routers.start(general={"default_pool_size": 1})

    async def main():
        a = await aconnect(router)
        b = await aconnect(router)
        try:
            stmt = await a.prepare("SELECT v FROM ps_t WHERE id = $1")
            assert await stmt.fetchval(3) == 30
            # b prepares a different statement under (likely) the same asyncpg name.
            assert await b.fetchval("SELECT v + 1 FROM ps_t WHERE id = $1", 3) == 31
            assert await stmt.fetchval(4) == 40
            assert await b.fetchval("SELECT v + 1 FROM ps_t WHERE id = $1", 4) == 41
            # The server connection dies: the router prepares again on a new one.
            pid = await b.fetchval("SELECT pg_backend_pid()")
            assert primary.kill_backend(pid)
            await asyncio.sleep(0.2)
            for attempt in range(2):
                try:
                    assert await stmt.fetchval(5) == 50
                    break
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    # Only the request that met the dead backend may fail (08xxx / 57P01).
                    assert attempt == 0 and getattr(exc, "sqlstate", "08")[:2] in ("08", "57"), exc
            assert await stmt.fetchval(6) == 60
        finally:
            await a.close()
            await b.close()
    run_async(main())


# ---------------------------------------------------------------- psycopg --
def test_psycopg_prepare_threshold_0(routers, ptable, cluster):
    """psycopg prepares every statement (named) with prepare_threshold=0:
    4 threads over pool_size 1, in and out of transactions."""
    router = routers.start(general={"default_pool_size": 1, "checkout_timeout_ms": 20000},
                           with_replica=True)
    errors = []

    def worker(i: int):
        try:
            with connect(router.dsn(), prepare_threshold=0) as conn:
                for n in range(25):
                    k = (i * 13 + n) % 100 + 1
                    assert conn.execute("SELECT v FROM ps_t WHERE id = %s", (k,)).fetchone() == (k * 10,)
                    assert conn.execute("SELECT %s::int + %s::int", (i, n)).fetchone() == (i + n,)
                    with conn.transaction():
                        conn.execute("INSERT INTO ps_log VALUES (%s, %s, %s)", (1000 + i, n, k))
                        assert conn.execute("SELECT v FROM ps_t WHERE id = %s", (k,)).fetchone() == (k * 10,)
                # psycopg really prepared them.
                assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] >= 0
        except Exception as exc:  # noqa: BLE001
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert cluster.primary.scalar("SELECT count(*) FROM ps_log WHERE client >= 1000 AND client < 1004") \
        == 4 * 25


def test_psycopg_explicit_prepare_and_rollback(routers, ptable):
    """A prepared statement that errors, a rolled-back transaction, then
    reuse: the statement stays usable."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn(), prepare_threshold=0) as a, connect(router.dsn(), prepare_threshold=0) as b:
        q = "SELECT 100 / %s::int"
        assert a.execute(q, (5,)).fetchone() == (20,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.execute(q, (0,))
        assert b.execute(q, (4,)).fetchone() == (25,)
        a.execute("BEGIN")
        assert a.execute(q, (2,)).fetchone() == (50,)
        a.execute("ROLLBACK")
        assert a.execute(q, (10,)).fetchone() == (10,)
        assert b.execute(q, (1,)).fetchone() == (100,)


def test_unnamed_statements_in_pipeline(routers, ptable, cluster):
    """psycopg pipelines of unnamed Parse/Bind/Execute (prepare_threshold=None):
    several clients at once over a small pool, read pipelines and write
    pipelines (a mixed one is in test_routing), in and out of transactions."""
    router = routers.start(general={"default_pool_size": 2, "checkout_timeout_ms": 20000},
                           with_replica=True)
    errors = []

    def worker(i: int):
        try:
            with connect(router.dsn()) as conn:
                for n in range(5):
                    with conn.pipeline():
                        curs = [conn.execute("SELECT %s::int * 2, %s::text", (j, f"c{i}")) for j in range(20)]
                        after = conn.execute("SELECT v FROM ps_t WHERE id = %s", (n + 1,))
                    for j, cur in enumerate(curs):
                        assert cur.fetchone() == (j * 2, f"c{i}"), (i, n, j)
                    assert after.fetchone() == ((n + 1) * 10,)
                    with conn.pipeline():
                        ins = [conn.execute("INSERT INTO ps_log VALUES (%s, %s, %s) RETURNING v",
                                            (2000 + i, n, i * n + j)) for j in range(3)]
                    assert [c.fetchone() for c in ins] == [(i * n + j,) for j in range(3)]
                # Reads and a write in a transaction.
                with conn.transaction(), conn.pipeline():
                    curs = [conn.execute("SELECT %s::int", (j,)) for j in range(10)]
                    ins = conn.execute("INSERT INTO ps_log VALUES (%s, 99, 0) RETURNING client", (2000 + i,))
                assert [c.fetchone()[0] for c in curs] == list(range(10))
                assert ins.fetchone() == (2000 + i,)
        except Exception as exc:  # noqa: BLE001
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert cluster.primary.scalar("SELECT count(*) FROM ps_log WHERE client >= 2000 AND client < 2006") \
        == 6 * (5 * 3 + 1)


def test_statements_beyond_the_per_server_limit(routers, ptable):
    """More named statements than a server connection keeps (1000): the least
    recently used are closed on the server, which then holds exactly the
    limit, and one of them used again is prepared again without the client
    noticing. (The router answers a Parse itself and prepares the statement
    on a server when it is first bound there.)"""
    router = routers.start(general={"default_pool_size": 1})
    n = 1010
    conn = wire.RawConn.open(router.port)
    try:
        conn.startup("app", "app", "app-secret")
        conn.send(b"".join(wire.parse_message(f"SELECT {i} + $1::int", name=f"s{i}")
                           for i in range(n)) + wire.sync_message())
        (answers,) = conn.read_batches(1)
        assert [m.kind for m in answers] == [b"1"] * n + [b"Z"]
        conn.send(b"".join(wire.bind_message(["1"], statement=f"s{i}") + wire.execute_message()
                           for i in range(n)) + wire.sync_message())
        (answers,) = conn.read_batches(1)
        assert [m.kind for m in answers] == [b"2", b"D", b"C"] * n + [b"Z"]
        assert wire.data_row_values(answers[-3].body) == [str(n)]
        rows, _, _ = conn.simple_query("SELECT count(*) FROM pg_prepared_statements")
        assert rows == [["1000"]]
        # s0 was the first to go; s1009 is still there.
        for name, want in (("s0", "5"), ("s1009", "1014")):
            conn.send(wire.bind_message(["5"], statement=name) + wire.execute_message()
                      + wire.sync_message())
            (answers,) = conn.read_batches(1)
            assert [m.kind for m in answers] == [b"2", b"D", b"C", b"Z"]
            assert wire.data_row_values(answers[1].body) == [want]
        rows, _, _ = conn.simple_query("SELECT count(*) FROM pg_prepared_statements")
        assert rows == [["1000"]]
    finally:
        conn.close()


# ------------------------------------------------------------ SQL PREPARE --
def test_sql_prepare_execute_deallocate(routers, ptable):
    """PREPARE/EXECUTE/DEALLOCATE across transactions with pool_size 1 and a
    second client interleaving — with a clashing statement name."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        a.execute("PREPARE p1 (int) AS SELECT v FROM ps_t WHERE id = $1")
        a.execute("PREPARE p2 AS SELECT 'a-two'")
        b.execute("PREPARE p1 (int) AS SELECT $1 * 1000")   # same name, other text: b's own
        for k in (1, 2, 3):
            assert a.execute(f"EXECUTE p1({k})").fetchone() == (k * 10,)
            assert b.execute(f"EXECUTE p1({k})").fetchone() == (k * 1000,)
        a.execute("BEGIN")
        assert a.execute("EXECUTE p1(7)").fetchone() == (70,)
        assert a.execute("EXECUTE p2").fetchone() == ("a-two",)
        a.execute("COMMIT")
        assert a.execute("EXECUTE p1(4)").fetchone() == (40,)
        # DEALLOCATE.
        a.execute("DEALLOCATE p1")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE p1(1)")
        assert a.execute("EXECUTE p2").fetchone() == ("a-two",)
        assert b.execute("EXECUTE p1(2)").fetchone() == (2000,)
        # Re-PREPARE under a freed name with a new text.
        a.execute("PREPARE p1 AS SELECT 'new p1'")
        b.execute("SELECT 1")
        assert a.execute("EXECUTE p1").fetchone() == ("new p1",)
        a.execute("DEALLOCATE ALL")
        for name in ("p1", "p2"):
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                a.execute(f"EXECUTE {name}")
        assert b.execute("EXECUTE p1(3)").fetchone() == (3000,)
        # PREPARE is not transactional in PostgreSQL: a statement prepared in a
        # rolled-back transaction still exists afterwards, through the router too.
        a.execute("BEGIN")
        a.execute("PREPARE p3 AS SELECT 3")
        a.execute("ROLLBACK")
        b.execute("SELECT 1")
        assert a.execute("EXECUTE p3").fetchone() == (3,)


def test_sql_prepare_duplicate_name(routers, ptable):
    """PREPARE of a name the client already prepared fails with 42P05, as on
    PostgreSQL, and the first statement stays — also when another client
    used the server connection in between."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        a.execute("PREPARE dup (int) AS SELECT $1 * 10")
        b.execute("SELECT 1")
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            a.execute("PREPARE dup (int) AS SELECT 0")
        assert a.execute("EXECUTE dup(4)").fetchone() == (40,)


def test_sql_prepared_statement_private_to_its_client(routers, ptable):
    """Another client on the same server connection can neither EXECUTE nor
    see a client's SQL-prepared statement (as with its own connection)."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        a.execute("PREPARE secret_p AS SELECT 'a-secret'")
        assert a.execute("EXECUTE secret_p").fetchone() == ("a-secret",)
        assert b.execute("SELECT name FROM pg_prepared_statements").fetchall() == []
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            b.execute("EXECUTE secret_p")


def test_sql_prepare_in_a_multi_statement_string(routers, ptable):
    """A PREPARE sent among other statements in one simple query is the
    client's like any other: EXECUTE works later on a server connection that
    never saw it (the router prepares it there), DEALLOCATE removes it."""
    router = routers.start(general={"default_pool_size": 2})

    async def main():
        a = await aconnect(router)
        b = await aconnect(router)
        c = await aconnect(router)
        try:
            # b holds one server; a's string runs on the other one.
            await b.execute("BEGIN")
            b_pid = await b.fetchval("SELECT pg_backend_pid()")
            await a.execute("SELECT 1; PREPARE mp (int) AS SELECT $1 * 7, pg_backend_pid(); "
                            "SELECT 2")
            # c takes a's server; b gives its own back: a must use b's, which
            # has never seen the PREPARE.
            await c.execute("BEGIN")
            assert await c.fetchval("SELECT pg_backend_pid()") != b_pid
            await b.execute("COMMIT")
            row = await a.fetchrow("EXECUTE mp(6)")
            assert tuple(row) == (42, b_pid)
            await a.execute("DEALLOCATE mp; SELECT 1")
            with pytest.raises(asyncpg.InvalidSQLStatementNameError):
                await a.fetchrow("EXECUTE mp(1)")
            await c.execute("COMMIT")
        finally:
            for conn in (a, b, c):
                await conn.close()

    run_async(main())


def test_sql_prepare_on_replica_and_primary(routers, ptable, cluster):
    """A SQL-prepared read executes on the replica, a prepared write on the
    primary: the router prepares them where it runs them."""
    router = routers.start(general={"default_pool_size": 1}, with_replica=True)
    places = Places(cluster)
    with connect(router.dsn()) as a:
        a.execute(f"PREPARE rd (int) AS SELECT v, {WHERE} FROM ps_t WHERE id = $1")
        a.execute(f"PREPARE wr (int) AS UPDATE ps_t SET v = v WHERE id = $1 RETURNING v, {WHERE}")
        row = where(a, "EXECUTE rd(9)")
        assert row[0] == 90 and places.row(row) == "replica"
        row = where(a, "EXECUTE wr(9)")
        assert row[0] == 90 and places.row(row) == "primary"


# ---------------------------------------------------------------- pgbench --
def _pgbench_init(primary):
    if not primary.scalar("SELECT to_regclass('public.pgbench_accounts') IS NOT NULL"):
        out = subprocess.run([pg_tool("pgbench"), "-i", "-s", "1", "-q", "-h", str(primary.sockdir),
                              "-p", str(primary.port), "-U", "app", "app"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr


def _pgbench(router, *args) -> tuple[int, int, str]:
    cmd = [pg_tool("pgbench"), "-n", "-c", "10", "-j", "2", "-T", "5", "-M", "prepared",
           "-h", "127.0.0.1", "-p", str(router.port), "-U", "app", *args, "app"]
    out = subprocess.run(cmd, env=router.psql_env(), capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    assert processed and failed, text
    return int(processed.group(1)), int(failed.group(1)), text


@pytest.mark.parametrize("mode", ["select-only", "tpcb"])
def test_pgbench_prepared(routers, cluster, mode):
    _pgbench_init(cluster.primary)
    wait_replayed(cluster)
    router = routers.start(general={"default_pool_size": 2, "checkout_timeout_ms": 20000},
                           with_replica=True)
    args = ["-S"] if mode == "select-only" else []
    processed, failed, text = _pgbench(router, *args)
    assert failed == 0, text
    assert processed > 100, text
    print(f"pgbench -M prepared {mode}: {processed} transactions")


@pytest.mark.parametrize("sql, columns", [
    ("SELECT 1 AS a, 'x'::text AS b", ["a", "b"]),
    ("EXECUTE gdesc_p", ["first", "second"]),
])
def test_unnamed_statement_described_in_a_later_transaction(routers, sql, columns):
    """psql's `\\gdesc`: Parse of the unnamed statement + Sync, then Describe
    + Sync. Meanwhile another client used the only server connection (its
    simple query destroyed the unnamed statement): the router parses it
    again, with the SQL prepared statement it EXECUTEs."""
    router = routers.start(general={"default_pool_size": 1})
    conn = wire.RawConn.open(router.port)
    try:
        conn.startup("app", "app", "app-secret")
        conn.simple_query("PREPARE gdesc_p AS SELECT 1 AS first, 2 AS second")
        conn.send(wire.parse_message(sql) + wire.sync_message())
        assert [m.kind for m in conn.read_batches(1)[0]] == [b"1", b"Z"]
        with connect(router.dsn()) as other:
            other.execute("SELECT 42")
        conn.send(wire.describe_message(b"S", "") + wire.sync_message())
        batch = conn.read_batches(1)[0]
        kinds = [m.kind for m in batch]
        assert kinds == [b"t", b"T", b"Z"], kinds
        described = next(m for m in batch if m.kind == b"T")
        for column in columns:
            assert column.encode() + b"\0" in described.body
    finally:
        conn.close()


# ------------------------------------------------- duplicate protocol Parse --
def _dup_parse_transcript(port: int) -> list:
    """Protocol-level Parse of names that exist, do not, or no longer exist,
    sent over the raw wire; the answers, normalized for comparison."""
    W = wire

    def norm(msgs):
        out = []
        for m in msgs:
            if m.kind == b"E":
                f = W.parse_error_fields(m.body)
                out.append(("E", f.get("C"), f.get("M") if f.get("C") == "42P05" else None))
            elif m.kind == b"D":
                out.append(("D", W.data_row_values(m.body)))
            elif m.kind in (b"C", b"Z"):
                out.append((m.kind.decode(), m.body.rstrip(b"\0").decode()))
            elif m.kind in (b"S", b"N", b"K"):
                continue
            else:
                out.append(m.kind.decode())
        return out

    def execute(name):
        return W.bind_message([], statement=name) + W.execute_message()

    steps = [
        ("parse s1", W.parse_message("SELECT 'first'", "s1") + W.sync_message()),
        ("parse s1 again", W.parse_message("SELECT 'second'", "s1") + W.sync_message()),
        ("execute s1", execute("s1") + W.sync_message()),
        # The rest of the batch is skipped after the error, up to Sync.
        ("dup in one batch", W.parse_message("SELECT 'x'", "s2") + W.parse_message("SELECT 'y'", "s2")
         + execute("s2") + W.sync_message()),
        ("execute s2", execute("s2") + W.sync_message()),
        # The unnamed statement may be parsed again freely.
        ("unnamed twice", W.parse_message("SELECT 1") + W.parse_message("SELECT 2") + execute("")
         + W.sync_message()),
        # A Parse that failed created nothing: the name is free.
        ("failed parse", W.parse_message("SELEC 3", "s3") + W.sync_message()),
        ("parse s3", W.parse_message("SELECT 3", "s3") + W.sync_message()),
        ("execute s3", execute("s3") + W.sync_message()),
        # Nor did one skipped after an error.
        ("skipped parse", W.parse_message("SELEC 4", "s4") + W.parse_message("SELECT 5", "s5")
         + W.sync_message()),
        ("parse s5", W.parse_message("SELECT 55", "s5") + W.sync_message()),
        ("execute s5", execute("s5") + W.sync_message()),
        # Close frees the name.
        ("close s1, parse s1", W.close_message(b"S", "s1") + W.parse_message("SELECT 'third'", "s1")
         + W.sync_message()),
        ("execute s1 again", execute("s1") + W.sync_message()),
        # In a transaction block the error aborts it.
        ("begin", W.query_message("BEGIN")),
        ("dup in a transaction", W.parse_message("SELECT 'tx'", "s1") + W.sync_message()),
        ("rollback", W.query_message("ROLLBACK")),
        ("execute s1 after rollback", execute("s1") + W.sync_message()),
        # DEALLOCATE ALL frees every name.
        ("deallocate all", W.query_message("DEALLOCATE ALL")),
        ("parse s1 after deallocate", W.parse_message("SELECT 'fourth'", "s1") + W.sync_message()),
        ("execute s1 last", execute("s1") + W.sync_message()),
    ]
    conn = W.connect(port, "app", "app", "app-secret")
    try:
        transcript = []
        for label, data in steps:
            conn.send(data)
            transcript.append((label, norm(conn.read_batches(1, 10)[0])))
        return transcript
    finally:
        conn.close()


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_parse_of_an_existing_statement_name_fails_like_postgres(routers, cluster, pool_mode):
    """A second Parse of a named statement without a Close in between gets
    42P05 `prepared statement "s1" already exists` (the rest of the batch is
    skipped up to Sync) and the first statement stays, exactly as on
    PostgreSQL; the unnamed statement, a name whose Parse failed or was
    skipped, and a closed or deallocated name may be parsed again."""
    expected = _dup_parse_transcript(cluster.primary.port)
    assert ("parse s1 again", [("E", "42P05", 'prepared statement "s1" already exists'),
                               ("Z", "I")]) in expected, expected
    router = routers.start(general={"pool_mode": pool_mode, "default_pool_size": 1})
    got = _dup_parse_transcript(router.port)
    for (label, want), (_, have) in zip(expected, got):
        assert have == want, f"{label}: router {have} != PostgreSQL {want}"
    assert len(got) == len(expected)


def test_another_clients_protocol_statement_cannot_be_executed_or_deallocated(routers):
    """The router names protocol-level statements `pgrouter_<n>` on the
    shared server; another client naming one in SQL (EXECUTE, DEALLOCATE)
    gets what PostgreSQL gives for a statement it never prepared (26000),
    and the owner's statement keeps working."""
    router = routers.start(general={"default_pool_size": 1})
    hint = "/* pgrouter: role=primary */ "
    q = hint + "SELECT %s::text || ' (B private)' AS b_col"
    with connect(router.dsn(), prepare_threshold=0) as b, connect(router.dsn()) as a:
        assert b.execute(q, ("x",)).fetchone() == ("x (B private)",)
        names = [r[0] for r in a.execute(
            hint + "SELECT name FROM pg_prepared_statements WHERE statement LIKE '%(B private)%'")]
        assert names and all(n.startswith("pgrouter_") for n in names), names
        for sql in (f"EXECUTE {names[0]}('run by A')", f"DEALLOCATE {names[0]}"):
            with pytest.raises(psycopg.Error) as err:
                a.execute(hint + sql)
            assert err.value.sqlstate == "26000", (sql, err.value)
        for _ in range(3):
            assert b.execute(q, ("x",)).fetchone() == ("x (B private)",)


def test_statements_prepared_after_a_table_changed_are_planned_afresh(routers, cluster, table):
    """After ALTER TABLE changes a table's columns, PostgreSQL refuses to
    run statements planned before (0A000 "cached plan must not change
    result type"); asyncpg then prepares the statement again, and a new
    client prepares it anew. Through the router's shared statements that
    new Parse must not land on the stale one again (it did: every
    execution failed, for every client)."""
    router = routers.start(general={"default_pool_size": 2})
    q = f"SELECT * FROM {table} WHERE a = $1"

    async def main():
        c = await aconnect(router)
        await c.execute(f"CREATE TABLE {table} (a int, b text); INSERT INTO {table} VALUES (1, 'x')")
        await asyncio.get_running_loop().run_in_executor(None, wait_replayed, cluster)
        assert [tuple(r) for r in await c.fetch(q, 1)] == [(1, "x")]
        warm = [await aconnect(router) for _ in range(4)]
        for _ in range(3):
            await asyncio.gather(*[w.fetch(q, 1) for w in warm])
        for w in warm:
            await w.close()
        await c.execute(f"ALTER TABLE {table} ADD COLUMN c int DEFAULT 7")
        await asyncio.get_running_loop().run_in_executor(None, wait_replayed, cluster)
        for _ in range(3):
            assert [tuple(r) for r in await c.fetch(q, 1)] == [(1, "x", 7)]
        for _ in range(3):
            n = await aconnect(router)
            try:
                assert [tuple(r) for r in await n.fetch(q, 1)] == [(1, "x", 7)]
            finally:
                await n.close()
        await c.close()
    run_async(main())


def test_create_table_as_execute_and_explain_execute_find_the_prepared_statement(routers, table):
    """`CREATE TABLE t AS EXECUTE p` and `EXPLAIN EXECUTE p` run a SQL
    prepared statement like `EXECUTE p` does: the router must make sure
    the server running them has it. (Here another client's DEALLOCATE of
    that name on the one shared connection took it off the server: the
    router re-creates it there for the owner, as for a plain EXECUTE.)"""
    router = routers.start(general={"default_pool_size": 1})
    primary = "/* pgrouter: role=primary */ "
    with connect(router.dsn()) as conn, connect(router.dsn()) as other:
        simple = psycopg.ClientCursor(conn)  # psql's simple query protocol
        simple.execute(primary + "PREPARE ctas_p(int) AS SELECT g AS n FROM generate_series(1, $1) g")
        assert simple.execute(primary + "EXECUTE ctas_p(1)").fetchall() == [(1,)]
        with pytest.raises(psycopg.Error) as err:
            other.execute(primary + "DEALLOCATE ctas_p")
        assert err.value.sqlstate == "26000", err.value
        assert simple.execute(f"CREATE TABLE {table} AS EXECUTE ctas_p(3)").statusmessage == "SELECT 3"
        assert conn.execute(primary + "SELECT count(*) FROM " + table).fetchone() == (3,)
        other.execute(primary + "PREPARE ctas_p AS SELECT 'other'")
        plan = simple.execute(primary + "EXPLAIN EXECUTE ctas_p(2)").fetchall()
        assert plan and "Function Scan" in plan[0][0], plan
        # Not this client's statement: 26000 as on PostgreSQL.
        with pytest.raises(psycopg.Error) as err:
            psycopg.ClientCursor(other).execute(f"CREATE TABLE {table}_x AS EXECUTE nobody_p(1)")
        assert err.value.sqlstate == "26000", err.value



def test_sql_prepare_failing_at_execute_in_extended_protocol(routers, ptable, cluster):
    """A PREPARE sent with the extended protocol (asyncpg prepares every
    statement) is checked by PostgreSQL only at Execute. Through the router
    (pool_size 1, another client on the same server connection in between)
    every step answers as on a direct connection: a failed PREPARE leaves
    the name free, a second PREPARE of it succeeds, EXECUTE runs it."""
    router = routers.start(general={"default_pool_size": 1})
    # (statement, whether another client uses the server right after it:
    # not while the first one's transaction holds it, pool_size being 1).
    steps = [
        ("PREPARE xp AS SELECT nosuchcol FROM ps_t", True),
        ("EXECUTE xp", True),
        ("PREPARE xp AS SELECT 42", True),
        ("EXECUTE xp", True),
        ("BEGIN", False),
        ("PREPARE xq AS SELECT * FROM no_such_table", False),
        ("SELECT 1", False),
        ("ROLLBACK", True),
        ("PREPARE xq AS SELECT 'q'", True),
        ("EXECUTE xq", True),
        ("DEALLOCATE xq", True),
        ("EXECUTE xq", True),
    ]

    async def outcomes(connect_a, connect_b):
        a, b = await connect_a(), await connect_b()
        seen = []
        try:
            for sql, interleave in steps:
                try:
                    seen.append(await a.fetch(sql))
                except asyncpg.PostgresError as e:
                    seen.append(e.sqlstate)
                except Exception as e:  # noqa: BLE001 (a driver-side failure is an outcome too)
                    seen.append(type(e).__name__)
                if interleave:  # another client takes the server connection
                    assert await b.fetchval("SELECT 7") == 7
        finally:
            await a.close()
            await b.close()
        return [[tuple(r) for r in x] if isinstance(x, list) else x for x in seen]

    def direct():
        p = cluster.primary
        return asyncpg.connect(host=p.host, port=p.port, user=APP_USER,
                               password=APP_PASSWORD, database=APP_DB)

    async def main():
        want = await outcomes(direct, direct)
        got = await outcomes(lambda: aconnect(router), lambda: aconnect(router))
        return want, got

    want, got = run_async(main())
    assert want[0] == "42703" and want[2] == [] and want[9] == [("q",)], want
    assert got == want


def test_sql_prepare_parsed_and_bound_in_two_round_trips(routers, ptable, cluster):
    """A driver may Parse a PREPARE / DEALLOCATE (Parse + Describe + Sync)
    and Bind + Execute it in a second round trip, with another client on
    the server connection in between (pool_size 1). Only the Execute makes
    or drops the statement — every step answers as directly on PostgreSQL."""
    router = routers.start(general={"default_pool_size": 1})

    def parse_then_bind(conn, sql, between):
        conn.send(wire.parse_message(sql) + wire.describe_message(b"S") + wire.sync_message())
        first = conn.read_batches(1)[0]
        between()
        conn.send(wire.bind_message() + wire.execute_message() + wire.sync_message())
        second = conn.read_batches(1)[0]
        errors = wire.errors_in(first + second)
        if errors:
            return errors[0]["C"]
        return [m.body.rstrip(b"\0").decode() for m in second if m.kind == b"C"]

    def simple(conn, sql):
        try:
            rows, tags, _ = conn.simple_query(sql)
            return rows or tags
        except wire.ServerError as e:
            return e.sqlstate

    def outcomes(port):
        a = wire.connect(port, APP_USER, APP_DB, APP_PASSWORD)
        with connect(f"host=127.0.0.1 port={port} user={APP_USER} "
                     f"password={APP_PASSWORD} dbname={APP_DB}") as b:
            def between():
                assert b.execute("SELECT 7").fetchone() == (7,)
            try:
                return [
                    parse_then_bind(a, "PREPARE tw AS SELECT 5", between),
                    simple(a, "EXECUTE tw"),
                    parse_then_bind(a, "PREPARE tw AS SELECT 6", between),  # 42P05
                    simple(a, "EXECUTE tw"),
                    parse_then_bind(a, "DEALLOCATE tw", between),
                    simple(a, "EXECUTE tw"),  # 26000
                    parse_then_bind(a, "PREPARE tw AS SELECT 8", between),
                    (between(), simple(a, "EXECUTE tw"))[1],
                ]
            finally:
                a.close()

    want = outcomes(cluster.primary.port)
    assert want == [["PREPARE"], [["5"]], "42P05", [["5"]], ["DEALLOCATE"], "26000",
                    ["PREPARE"], [["8"]]], want
    assert outcomes(router.port) == want
