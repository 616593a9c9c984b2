"""Transactions and the extended protocol through the router (transaction mode
unless said otherwise)."""
from __future__ import annotations

import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, run_async


def make_table(primary, table, rows=0):
    primary.sql(f"CREATE TABLE {table} (id int primary key, v int not null default 0)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    if rows:
        primary.sql(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {rows}) g")


def test_commit_and_rollback(router, primary, table):
    make_table(primary, table)
    with connect(router.dsn(), autocommit=False) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1, 10)")
        conn.commit()
        conn.execute(f"INSERT INTO {table} VALUES (2, 20)")
        # Uncommitted: the primary does not see it from outside.
        assert primary.scalar(f"SELECT count(*) FROM {table}") == 1
        conn.rollback()
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (3, 30)")
        assert conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}").fetchone() == ([1, 3],)
        conn.commit()
    assert primary.scalar(f"SELECT array_agg(id ORDER BY id) FROM {table}") == [1, 3]


def test_explicit_begin_commit_simple_protocol(router, primary, table):
    make_table(primary, table)
    with connect(router.dsn()) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
        pid1 = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute(f"UPDATE {table} SET v = 2 WHERE id = 1")
        pid2 = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        # Inside a transaction the client keeps one server connection.
        assert pid1 == pid2
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("COMMIT")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert primary.scalar(f"SELECT v FROM {table} WHERE id = 1") == 2


def test_error_in_transaction_then_rollback(router, primary, table):
    make_table(primary, table)
    with connect(router.dsn()) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    assert primary.scalar(f"SELECT count(*) FROM {table}") == 0


def test_savepoints(router, table, primary):
    make_table(primary, table)
    with connect(router.dsn(), autocommit=False) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            with conn.transaction():  # a savepoint inside the outer transaction
                conn.execute(f"INSERT INTO {table} VALUES (2, 2)")
                conn.execute("SELECT 1/0")
        conn.execute(f"INSERT INTO {table} VALUES (3, 3)")
        conn.commit()
    assert primary.scalar(f"SELECT array_agg(id ORDER BY id) FROM {table}") == [1, 3]


def test_psycopg_pipeline_many_executes(router, primary, table):
    make_table(primary, table)
    with connect(router.dsn()) as conn:
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(1, 501):
                cur.execute(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", (i, i * 2))
            cur.execute(f"SELECT count(*), sum(v) FROM {table}")
        assert cur.fetchone() == (500, 500 * 501)
    assert primary.scalar(f"SELECT sum(v) FROM {table}") == 500 * 501


def test_pipeline_error_in_second_batch(router, primary, table):
    """psycopg pipeline: an error in the second Sync batch aborts that batch
    only; the first batch is committed and the connection goes on."""
    make_table(primary, table)
    with connect(router.dsn()) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.pipeline() as p:
                c1, c2, c3 = (conn.cursor() for _ in range(3))
                c1.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, 1))
                c1.execute(f"INSERT INTO {table} VALUES (%s, %s)", (2, 2))
                p.sync()
                c2.execute(f"INSERT INTO {table} VALUES (%s, %s)", (3, 3))
                c3.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, 99))  # duplicate: fails
                p.sync()
        assert conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}").fetchone() == ([1, 2],)
    assert primary.scalar(f"SELECT array_agg(id ORDER BY id) FROM {table}") == [1, 2]


def test_several_syncs_in_flight_raw(router, primary, table):
    """Three Sync batches written at once before reading anything: the error
    in batch 2 is reported there, and batches 1 and 3 run (each its own
    implicit transaction)."""
    make_table(primary, table)
    conn = wire.connect(router.port, "app", "app", "app-secret")
    try:
        ins = f"INSERT INTO {table} VALUES ($1::int, $2::int)"
        data = (wire.extended_query(ins, ["1", "1"]) + wire.extended_query(ins, ["2", "2"])
                + wire.sync_message()
                + wire.extended_query(ins, ["3", "3"]) + wire.extended_query(ins, ["1", "9"])
                + wire.extended_query(ins, ["4", "4"]) + wire.sync_message()
                + wire.extended_query(ins, ["5", "5"]) + wire.extended_query(
                    f"SELECT count(*) FROM {table}") + wire.sync_message())
        conn.send(data)
        b1, b2, b3 = conn.read_batches(3)
        assert [m.kind for m in b1] == [b"1", b"2", b"n", b"C"] * 2 + [b"Z"]
        assert b1[-1].body == b"I"
        errors = wire.errors_in(b2)
        assert len(errors) == 1 and errors[0]["C"] == "23505", errors
        kinds2 = [m.kind for m in b2]
        assert kinds2[:4] == [b"1", b"2", b"n", b"C"] and kinds2[-2:] == [b"E", b"Z"]
        assert b2[-1].body == b"I"
        rows = [wire.data_row_values(m.body) for m in b3 if m.kind == b"D"]
        assert rows == [["3"]]  # rows 1, 2, 5 (3 was rolled back with its batch)
        assert b3[-1].body == b"I"
        # And again, on the same connection.
        conn.send(wire.extended_query("SELECT $1::text", ["again"]) + wire.sync_message())
        (b4,) = conn.read_batches(1)
        assert [wire.data_row_values(m.body) for m in b4 if m.kind == b"D"] == [["again"]]
    finally:
        conn.close()
    assert primary.scalar(f"SELECT array_agg(id ORDER BY id) FROM {table}") == [1, 2, 5]


def test_flush_without_sync_inside_transaction_raw(router):
    """Flush (not Sync) in a transaction: results arrive without ReadyForQuery."""
    conn = wire.connect(router.port, "app", "app", "app-secret")
    try:
        conn.simple_query("BEGIN")
        conn.send(wire.extended_query("SELECT $1::int + 1", ["41"]) + wire.flush_message())
        msgs = []
        while not msgs or msgs[-1].kind != b"C":
            msgs.append(conn.read_msg())
        assert [wire.data_row_values(m.body) for m in msgs if m.kind == b"D"] == [["42"]]
        conn.send(wire.sync_message())
        (tail,) = conn.read_batches(1)
        assert [m.kind for m in tail] == [b"Z"] and tail[0].body == b"T"
        conn.simple_query("COMMIT")
    finally:
        conn.close()


def test_pipeline_with_syncs_results(router):
    with connect(router.dsn()) as conn:
        with conn.pipeline() as p:
            curs = []
            for i in range(20):
                c = conn.cursor()
                c.execute("SELECT %s::int, pg_backend_pid()", (i,))
                curs.append(c)
                if i % 3 == 2:
                    p.sync()
            p.sync()
        values = [c.fetchone()[0] for c in curs]
        assert values == list(range(20))


def test_pipeline_inside_transaction(router, primary, table):
    make_table(primary, table)
    with connect(router.dsn(), autocommit=False) as conn:
        with conn.pipeline() as p:
            cur = conn.cursor()
            for i in range(100):
                cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, i))
                if i % 10 == 9:
                    p.sync()
        assert primary.scalar(f"SELECT count(*) FROM {table}") == 0
        conn.commit()
    assert primary.scalar(f"SELECT count(*) FROM {table}") == 100


def test_asyncpg_transactions_and_executemany(router, primary, table):
    make_table(primary, table)

    async def main():
        conn = await aconnect(router, statement_cache_size=0)
        try:
            await conn.executemany(f"INSERT INTO {table} (id, v) VALUES ($1, $2)",
                                   [(i, i) for i in range(1, 1001)])
            assert await conn.fetchval(f"SELECT sum(v) FROM {table}") == 500500
            async with conn.transaction():
                await conn.execute(f"UPDATE {table} SET v = v + 1")
            assert await conn.fetchval(f"SELECT sum(v) FROM {table}") == 501500
            try:
                async with conn.transaction():
                    await conn.execute(f"UPDATE {table} SET v = 0")
                    raise RuntimeError("roll back please")
            except RuntimeError:
                pass
            assert await conn.fetchval(f"SELECT sum(v) FROM {table}") == 501500
            # An error inside a transaction, then the connection goes on.
            import asyncpg
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
            except asyncpg.UniqueViolationError:
                pass
            else:
                raise AssertionError("duplicate key was accepted")
            assert await conn.fetchval("SELECT 5") == 5
        finally:
            await conn.close()
    run_async(main())
    assert primary.scalar(f"SELECT sum(v) FROM {table}") == 501500


def test_asyncpg_prepared_within_transaction(router):
    """Transaction mode: a named prepared statement used within one transaction."""
    async def main():
        conn = await aconnect(router, statement_cache_size=0)
        try:
            async with conn.transaction():
                stmt = await conn.prepare("SELECT $1::int * 3")
                for i in range(20):
                    assert await stmt.fetchval(i) == 3 * i
        finally:
            await conn.close()
    run_async(main())


def test_asyncpg_session_mode_with_statement_cache(routers, primary, table):
    """Session mode: asyncpg's default statement cache (named statements reused
    across transactions) works, and prepare() outlives transactions."""
    make_table(primary, table, rows=100)
    router = routers.start(general={"pool_mode": "session", "default_pool_size": 4})

    async def main():
        for _ in range(3):  # several clients in turn over the same pool
            conn = await aconnect(router)  # default statement_cache_size
            try:
                for i in range(1, 30):
                    async with conn.transaction():
                        assert await conn.fetchval(f"SELECT v FROM {table} WHERE id = $1", i) == 0
                stmt = await conn.prepare(f"SELECT count(*) FROM {table} WHERE id <= $1")
                for i in range(5):
                    async with conn.transaction():
                        assert await stmt.fetchval(10 * i) == 10 * i
                await conn.executemany(f"UPDATE {table} SET v = v + 1 WHERE id = $1",
                                       [(i,) for i in range(1, 101)])
                await conn.executemany(f"UPDATE {table} SET v = v - 1 WHERE id = $1",
                                       [(i,) for i in range(1, 101)])
            finally:
                await conn.close()
    run_async(main())
    assert primary.scalar(f"SELECT sum(v) FROM {table}") == 0


def test_extended_protocol_error_then_recovery(router):
    with connect(router.dsn()) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / %s::int", (0,))
        assert conn.execute("SELECT 1 / %s::int", (1,)).fetchone() == (1,)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("SELECT %s::int", ("not a number",))
        assert conn.execute("SELECT %s::text", ("ok",)).fetchone() == ("ok",)
