"""Statements PostgreSQL itself rejects, on a sharded database (SPEC §5
"Sharding"): the client gets PostgreSQL's error — its SQLSTATE, at the
protocol step where PostgreSQL gives it — never the router's 0A000 for a
statement that could not run anyway, and never at a later step (a Parse
PostgreSQL rejects fails at the Parse, not at the Bind after it). Every
answer is compared with the same messages sent to one PostgreSQL directly
(shard 1, which has the same tables)."""
from __future__ import annotations

import asyncpg
import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, run_async, sqlstate
from harness.pg import APP_DB, APP_PASSWORD, APP_USER
from harness.shards import shard_databases, three_shards

SHARDED = [{"database": "app", "name": "pe_orders", "column": "customer_id", "data_type": "bigint"}]

TABLES = """
DROP TABLE IF EXISTS pe_orders;
CREATE TABLE pe_orders (customer_id bigint, id int, note text);
GRANT ALL ON pe_orders TO app;
"""


@pytest.fixture(scope="module")
def shards(cluster):
    with three_shards(cluster, "pe", TABLES,
                      "DROP TABLE IF EXISTS pe_orders") as servers:
        yield servers


@pytest.fixture
def srouter(routers, shards):
    dbs = shard_databases(shards)
    r = routers.start(databases=dbs, sharded_tables=SHARDED)
    with connect(r.dsn()) as conn:
        for k in range(1, 13):
            conn.execute(f"INSERT INTO pe_orders (customer_id, id, note) VALUES ({k}, {k % 4}, 'n{k % 3}')")
    yield r
    for s in shards:
        with s.connect(APP_DB) as conn:
            conn.execute("TRUNCATE pe_orders")


# Statements PostgreSQL rejects at parse analysis, each needing every shard.
REJECTED_AT_PARSE = [
    ("SELECT * FROM pe_no_such_table", "42P01"),
    ("SELECT no_such_col FROM pe_orders", "42703"),
    ("SELECT * FROM pe_orders WHERE", "42601"),
    ("UPDATE pe_orders SET no_such_col = 1", "42703"),
]


def answers(port: int, batches: list[bytes]) -> list[list[bytes]]:
    """Per batch (each ending with Sync): the kinds of the messages that
    answer it, an ErrorResponse with its SQLSTATE, DataRows left out."""
    conn = wire.RawConn.open(port)
    conn.startup(APP_USER, APP_DB, APP_PASSWORD)
    out = []
    try:
        for batch in batches:
            conn.send(batch)
            out.append([m.kind + (wire.parse_error_fields(m.body)["C"].encode() if m.kind == b"E" else b"")
                        for m in conn.read_batches(1)[0] if m.kind != b"D"])
    finally:
        conn.close()
    return out


def statement(sql: str, name: str = "", params: list[str] = ()) -> bytes:
    return (wire.parse_message(sql, name) + wire.bind_message(list(params), statement=name)
            + wire.describe_message(b"P") + wire.execute_message())


@pytest.mark.parametrize("sql,code", REJECTED_AT_PARSE)
def test_asyncpg_prepare_fails_with_postgresqls_error(srouter, shards, sql, code):
    """asyncpg prepares with Parse, Describe statement and Flush: a
    statement PostgreSQL rejects fails there, in `prepare()` (and in
    `fetch()`), with PostgreSQL's SQLSTATE; the connection goes on."""
    async def go(connect_to):
        c = await connect_to()
        try:
            got = []
            for call in (lambda: c.prepare(sql), lambda: c.fetch(sql)):
                try:
                    await call()
                    got.append(None)
                except asyncpg.PostgresError as e:
                    got.append(sqlstate(e))
            got.append(await c.fetchval("SELECT count(*) FROM pe_orders"))
            # Inside a transaction: the prepare fails it, as PostgreSQL's.
            tx = c.transaction()
            await tx.start()
            for call in (lambda: c.prepare(sql), lambda: c.fetchval("SELECT 1")):
                try:
                    await call()
                    got.append(None)
                except asyncpg.PostgresError as e:
                    got.append(sqlstate(e))
            await tx.rollback()
            got.append(await c.fetchval("SELECT count(*) FROM pe_orders"))
            return got
        finally:
            await c.close()

    direct = run_async(go(lambda: asyncpg.connect(host="127.0.0.1", port=shards[1].port, user=APP_USER,
                                                  password=APP_PASSWORD, database=APP_DB)))
    routed = run_async(go(lambda: aconnect(srouter)))
    assert direct[:2] == [code, code] and direct[3:5] == [code, "25P02"]
    assert routed == [code, code, 12, code, "25P02", 12]


@pytest.mark.parametrize("sql,code", REJECTED_AT_PARSE)
def test_a_rejected_parse_fails_at_the_parse_in_every_batch_shape(srouter, shards, sql, code):
    """The rejected Parse alone with Sync (psycopg's prepare), named with
    its Bind, unnamed with its Bind, and in a pipeline after a statement
    on another shard and before others: PostgreSQL's error answers the
    Parse, the rest up to Sync is skipped, one ReadyForQuery; the next
    batch runs."""
    good = "SELECT count(*) FROM pe_orders WHERE customer_id = $1"
    batches = [
        wire.parse_message(sql, "s_bad") + wire.sync_message(),
        wire.parse_message(sql, "s_bad2") + wire.describe_message(b"S", "s_bad2") + wire.sync_message(),
        statement(sql, "s_bad3") + wire.sync_message(),
        statement(sql) + wire.sync_message(),
        statement(good, "", ["1"]) + statement(sql) + statement(good, "", ["2"]) + wire.sync_message(),
        # Named in a pipeline: PostgreSQL keeps no statement whose Parse failed.
        statement(good, "", ["1"]) + statement(sql, "s_pipe") + statement(good, "", ["2"]) + wire.sync_message(),
        wire.bind_message([], statement="s_pipe") + wire.execute_message() + wire.sync_message(),
        statement(good, "", ["3"]) + wire.sync_message(),
    ]
    direct, routed = answers(shards[1].port, batches), answers(srouter.port, batches)
    for i, (d, r) in enumerate(zip(direct, routed)):
        assert r == d, i
    assert direct[0] == [b"E" + code.encode(), b"Z"]


@pytest.mark.parametrize("sql,code", REJECTED_AT_PARSE)
def test_psycopg_pipeline_and_prepare_get_postgresqls_error(srouter, shards, sql, code):
    """psycopg's pipeline mode (statements on different shards, the bad one
    among them) gets the first statement's result and PostgreSQL's error
    — it got the router's 0A000 for the whole batch when the bad statement
    needed several shards; psycopg's prepared statements (Parse and Sync
    first) fail with PostgreSQL's error; the session goes on."""
    good = "SELECT count(*) FROM pe_orders WHERE customer_id = %s"

    def run(dsn):
        out = []
        with connect(dsn) as conn:
            cur = conn.cursor()
            try:
                with conn.pipeline():
                    cur.execute(good, (1,))
                    conn.execute(sql)
                    conn.execute(good, (2,))
            except psycopg.Error as e:
                out.append(sqlstate(e))
            out.append(cur.fetchone())
            with pytest.raises(psycopg.Error) as err:
                conn.execute(sql, prepare=True)
            out.append(sqlstate(err.value))
            out.append(conn.execute(good, (3,), prepare=True).fetchone())
        return out

    direct, routed = run(shards[1].dsn()), run(srouter.dsn())
    assert direct[0] == direct[2] == code
    assert routed[0] == routed[2] == code
    assert routed[1] == (1,) and routed[3] == (1,)
    assert direct[1] in ((0,), (1,))


def test_a_parse_postgresql_accepts_still_answers_as_before(srouter, shards):
    """The check does not change what a valid statement gets: Parse alone,
    then Bind on several shards; a Describe of the statement."""
    sql = "SELECT customer_id, note FROM pe_orders WHERE id = $1 ORDER BY customer_id"
    batches = [
        wire.parse_message(sql, "s_ok") + wire.sync_message(),
        wire.parse_message(sql, "s_ok2") + wire.describe_message(b"S", "s_ok2") + wire.sync_message(),
        wire.bind_message(["1"], statement="s_ok") + wire.describe_message(b"P") + wire.execute_message()
        + wire.sync_message(),
    ]
    assert answers(srouter.port, batches) == answers(shards[1].port, batches)


# Statements the router refuses on several shards that PostgreSQL rejects
# anyway: PostgreSQL's error, not the router's 0A000.
REJECTED_BY_ANALYSIS = [
    ("SELECT DISTINCT customer_id FROM pe_orders ORDER BY id", "42P10"),
    ("SELECT customer_id, count(*) FROM pe_orders GROUP BY id", "42803"),
    ("SELECT id, count(*) FROM pe_orders", "42803"),
    ("SELECT * FROM pe_orders WHERE count(*) > 1", "42803"),
    ("SELECT * FROM pe_orders WHERE row_number() OVER () > 1", "42P20"),
    ("SELECT DISTINCT ON (id) customer_id FROM pe_orders ORDER BY customer_id", "42P10"),
    # Refused by the shard planner (a join not on the keys, a key moving
    # shards, INSERT ... SELECT and a subquery across shards, FOR UPDATE).
    ("SELECT * FROM pe_orders a JOIN pe_orders b ON a.id = b.no_col", "42703"),
    ("SELECT * FROM pe_orders FOR UPDATE OF nosuch", "42P01"),
    ("UPDATE pe_orders SET customer_id = no_col", "42703"),
    ("INSERT INTO pe_orders SELECT * FROM pe_orders WHERE no_col = 1", "42703"),
    ("SELECT * FROM pe_orders WHERE customer_id = (SELECT max(no_col) FROM pe_orders)", "42703"),
]


@pytest.mark.parametrize("sql,code", REJECTED_BY_ANALYSIS)
def test_statements_postgresql_rejects_get_postgresqls_error(srouter, shards, sql, code):
    """psycopg (simple and extended protocol, as the first statement of a
    transaction too) and asyncpg get PostgreSQL's SQLSTATE and message, as
    from one server."""
    def errors(dsn):
        got = []
        with connect(dsn) as conn:
            for cur in (psycopg.ClientCursor(conn), conn.cursor()):
                with pytest.raises(psycopg.Error) as err:
                    cur.execute(sql)
                got.append((sqlstate(err.value), err.value.diag.message_primary))
            conn.autocommit = False
            with pytest.raises(psycopg.Error) as err:
                conn.execute(sql)
            got.append((sqlstate(err.value), err.value.diag.message_primary))
            conn.rollback()
            conn.autocommit = True
            assert conn.execute("SELECT count(*) FROM pe_orders").fetchone()[0] in (12, 4, 5, 3, 0)
        return got

    direct, routed = errors(shards[1].dsn()), errors(srouter.dsn())
    assert routed == direct
    assert [c for c, _ in routed] == [code] * 3

    async def go():
        c = await aconnect(srouter)
        try:
            with pytest.raises(asyncpg.PostgresError) as err:
                await c.fetch(sql)
            return sqlstate(err.value), await c.fetchval("SELECT count(*) FROM pe_orders")
        finally:
            await c.close()
    assert run_async(go()) == (code, 12)


def test_a_refusal_postgresql_would_not_give_stands(srouter, shards):
    """What PostgreSQL accepts keeps the router's 0A000 (the statement
    cannot be answered exactly), in and out of a transaction block; the
    check ran nothing (no row moved)."""
    with connect(srouter.dsn()) as conn:
        for sql in ["SELECT DISTINCT ON (customer_id) customer_id, id FROM pe_orders ORDER BY customer_id",
                    "UPDATE pe_orders SET customer_id = customer_id + 1",
                    "SELECT * FROM pe_orders a JOIN pe_orders b ON a.id = b.id"]:
            with pytest.raises(psycopg.Error) as err:
                conn.execute(sql)
            assert sqlstate(err.value) == "0A000", sql
        with conn.transaction():
            conn.execute("SELECT count(*) FROM pe_orders")
            with pytest.raises(psycopg.Error) as err:
                conn.execute("UPDATE pe_orders SET customer_id = customer_id + 1")
            assert sqlstate(err.value) == "0A000"
            raise psycopg.Rollback()
        assert conn.execute("SELECT sum(customer_id) FROM pe_orders").fetchone()[0] == sum(range(1, 13))
