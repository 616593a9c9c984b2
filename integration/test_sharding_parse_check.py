"""The router's Parse check on a sharded database (SPEC §5 "Sharding"): a
`PQprepare` the router answers itself is first Parsed on a shard, so a
statement PostgreSQL rejects fails at the prepare. The check is the
router's own errand and must never make a client wait for a connection
(pgbench -M prepared stalled when it did: one pgbench thread holds every
connection through its other clients while it waits in a PQprepare), must
leave nothing on the connection it used, and is asked once per statement
for all clients (until DDL through the router, or a reload).

Pool size 1 per shard throughout, so that any wait for a connection another
client holds shows up as a stall (the checkout timeout is 10 s)."""
from __future__ import annotations

import time

import pytest

from harness import wire
from harness.clients import connect, sqlstate
from harness.ops import reload_marks, wait_reload
from harness.pg import APP_DB, APP_PASSWORD, APP_USER
from harness.shards import shard_databases, three_shards

SHARDED = [{"database": "app", "name": "pc_orders", "column": "customer_id", "data_type": "bigint"}]

TABLES = """
DROP TABLE IF EXISTS pc_orders, pc_gone;
CREATE TABLE pc_orders (customer_id bigint, id int, note text);
GRANT ALL ON pc_orders TO app;
"""

PROMPT = 3.0  # seconds; a wait for a held connection would take 10


@pytest.fixture(scope="module")
def shards(cluster):
    with three_shards(cluster, "pc", TABLES,
                      "DROP TABLE IF EXISTS pc_orders, pc_gone") as servers:
        yield servers


@pytest.fixture
def prouter(routers, shards):
    dbs = shard_databases(shards)
    r = routers.start(databases=dbs, sharded_tables=SHARDED,
                      general={"default_pool_size": 1, "checkout_timeout_ms": 10000})
    with connect(r.dsn()) as conn:
        for k in range(1, 13):
            conn.execute(f"INSERT INTO pc_orders (customer_id, id, note) VALUES ({k}, {k}, 'n{k}')")
    yield r
    for s in shards:
        with s.connect(APP_DB) as conn:
            conn.execute("TRUNCATE pc_orders")


def key_on(shards) -> list[int]:
    """A customer_id placed on each shard (read on the shards directly)."""
    keys = []
    for s in shards:
        with s.connect(APP_DB) as conn:
            keys.append(conn.execute("SELECT min(customer_id) FROM pc_orders").fetchone()[0])
    assert all(k is not None for k in keys), keys
    return keys


def timed(fn):
    started = time.monotonic()
    out = fn()
    took = time.monotonic() - started
    assert took < PROMPT, f"took {took:.1f}s: waited for a connection another client holds"
    return out


def preparing(dsn: str, autocommit: bool = True):
    """A psycopg connection that prepares when asked to (`prepare=True`;
    the harness's default, no threshold, never prepares)."""
    return connect(dsn, autocommit=autocommit, prepare_threshold=100)


def prepared(conn, sql: str, key: int):
    """A first PQprepare of `sql` (psycopg: Parse and Sync), then its run."""
    return conn.execute(sql, [key], prepare=True).fetchall()


def test_a_first_prepare_never_waits_for_a_connection_another_client_holds(prouter, shards):
    keys = key_on(shards)
    dsn = prouter.dsn()
    with preparing(dsn, autocommit=False) as a, preparing(dsn, autocommit=False) as b, \
            preparing(dsn, autocommit=False) as c, preparing(dsn) as d:
        # Two clients each in a transaction holding its shard's only
        # connection (shard 0, where the check asks, and shard 1).
        assert a.execute("SELECT id FROM pc_orders WHERE customer_id = %s", [keys[0]]).fetchall() == [(keys[0],)]
        assert b.execute("SELECT id FROM pc_orders WHERE customer_id = %s", [keys[1]]).fetchall() == [(keys[1],)]
        # Each prepares a new statement inside its transaction.
        assert timed(lambda: prepared(a, "SELECT note FROM pc_orders WHERE customer_id = %s", keys[0])) \
            == [(f"n{keys[0]}",)]
        assert timed(lambda: prepared(b, "SELECT note, id FROM pc_orders WHERE customer_id = %s", keys[1])) \
            == [(f"n{keys[1]}", keys[1])]
        # A client whose BEGIN the router has not sent yet, and one outside
        # any transaction, prepare while shard 0 is held: no check then, the
        # router answers the prepare itself and the statement runs on shard 2.
        assert timed(lambda: prepared(c, "SELECT id, note FROM pc_orders WHERE customer_id = %s", keys[2])) \
            == [(keys[2], f"n{keys[2]}")]
        c.commit()  # shard 2's connection, for d
        assert timed(lambda: prepared(d, "SELECT id + 1 FROM pc_orders WHERE customer_id = %s", keys[2])) \
            == [(keys[2] + 1,)]
        # Unchecked, a statement PostgreSQL rejects still fails, with
        # PostgreSQL's error, promptly (at its Bind).
        with pytest.raises(Exception) as e:
            timed(lambda: prepared(d, "SELECT no_such_col FROM pc_orders WHERE customer_id = %s", keys[2]))
        assert sqlstate(e.value) == "42703", e.value
        for conn in (a, b):
            conn.commit()
        # Shard 0 free again: the check runs, and the same mistake fails at
        # the prepare.
        with pytest.raises(Exception) as e:
            timed(lambda: prepared(d, "SELECT no_such_col2 FROM pc_orders WHERE customer_id = %s", keys[2]))
        assert sqlstate(e.value) == "42703", e.value


def test_the_check_leaves_nothing_on_its_connection(prouter, shards):
    keys = key_on(shards)
    with preparing(prouter.dsn()) as d:
        # Checked on shard 0's only connection, accepted and rejected.
        assert prepared(d, "SELECT id FROM pc_orders WHERE customer_id = %s", keys[1]) == [(keys[1],)]
        with pytest.raises(Exception):
            prepared(d, "SELECT nope FROM pc_orders WHERE customer_id = %s", keys[1])
    with connect(prouter.dsn()) as e:
        # The same connection (pool size 1), idle, with no statement of the check's.
        rows = e.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE '%%parse_check%%'").fetchall()
        assert rows == []
        assert e.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' "
                         "AND state LIKE 'idle in transaction%%'").fetchone()[0] == 0


def parse_answer(port: int, sql: str) -> list[bytes]:
    """The kinds of the messages answering a lone Parse and Sync (a
    PQprepare); an ErrorResponse with its SQLSTATE."""
    conn = wire.RawConn.open(port)
    conn.startup(APP_USER, APP_DB, APP_PASSWORD)
    try:
        conn.send(wire.parse_message(sql, "s1") + wire.sync_message())
        return [m.kind + (wire.parse_error_fields(m.body)["C"].encode() if m.kind == b"E" else b"")
                for m in conn.read_batches(1)[0]]
    finally:
        conn.close()


def test_accepted_statements_are_asked_about_once_until_a_reload(prouter, shards):
    for s in shards:
        with s.connect(APP_DB) as conn:
            conn.execute("CREATE TABLE pc_gone (k int); GRANT ALL ON pc_gone TO app")
    sql = "SELECT k FROM pc_gone"
    assert parse_answer(prouter.port, sql) == [b"1", b"Z"]
    # Dropped behind the router's back: the verdict remembered stands, so
    # another client's prepare is answered without asking (PostgreSQL's
    # error would then come at the Bind).
    with shards[0].connect(APP_DB) as conn:
        conn.execute("DROP TABLE pc_gone")
    assert parse_answer(prouter.port, sql) == [b"1", b"Z"]
    # A reload forgets every verdict: asked again, PostgreSQL's error.
    before = reload_marks(prouter)
    prouter.reload()
    assert wait_reload(prouter, before) == "ok"
    assert parse_answer(prouter.port, sql) == [b"E42P01", b"Z"]
    for s in shards[1:]:
        with s.connect(APP_DB) as conn:
            conn.execute("DROP TABLE pc_gone")


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "transaction"])
def test_ddl_through_the_router_forgets_the_verdicts(prouter, shards, in_transaction):
    """DDL sent through the router (on every shard) forgets what was
    accepted: a prepare of a statement the DDL broke fails at its Parse
    again, with PostgreSQL's error, without a reload."""
    with connect(prouter.dsn()) as conn:
        conn.execute("CREATE TABLE pc_gone (k int)")
        conn.execute("GRANT ALL ON pc_gone TO app")
    sql = "SELECT k FROM pc_gone"
    assert parse_answer(prouter.port, sql) == [b"1", b"Z"]
    with connect(prouter.dsn()) as conn:
        if in_transaction:
            with conn.transaction():
                conn.execute("ALTER TABLE pc_gone RENAME COLUMN k TO k2")
        else:
            conn.execute("ALTER TABLE pc_gone RENAME COLUMN k TO k2")
    assert parse_answer(prouter.port, sql) == [b"E42703", b"Z"]
    assert parse_answer(prouter.port, "SELECT k2 FROM pc_gone") == [b"1", b"Z"]
    with connect(prouter.dsn()) as conn:
        conn.execute("DROP TABLE pc_gone")
    assert parse_answer(prouter.port, "SELECT k2 FROM pc_gone") == [b"E42P01", b"Z"]
