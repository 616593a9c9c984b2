"""Sharding with connections the session keeps (SPEC §5 "Sharding":
"Everything else still holds on sharded databases"), against three real
PostgreSQL primaries (the session cluster's primary is shard 0).

A session pinned by session state (`nextval`, LISTEN, a session advisory
lock) and a session in `pool_mode = "session"` hold a server connection
between their transactions; the statements after must still run on the
shards their keys need — never on the held connection's shard alone —
while the pinned state stays where it was made. Inside a transaction,
statements on unsharded tables and sequences go to shard 0 as they do
outside one, not to the shard the transaction used last.

Keys (bigint, hash, 3 shards): 1 is on shard 2, 2 on shard 0, 3 on shard 1.
"""
from __future__ import annotations

import psycopg
import pytest

from harness.clients import connect
from harness.pg import APP_DB
from harness.shards import shard_databases, three_shards
from test_sharding_routing import per_shard

TABLES = """
DROP TABLE IF EXISTS ss_items, ss_countries, ss_plain;
DROP SEQUENCE IF EXISTS ss_seq;
CREATE TABLE ss_items (customer_id bigint, item text);
CREATE TABLE ss_countries (code text, name text);
CREATE TABLE ss_plain (a int);
CREATE SEQUENCE ss_seq;
GRANT ALL ON ss_items, ss_countries, ss_plain, ss_seq TO app;
"""

SHARDED = [{"database": "app", "name": "ss_items", "column": "customer_id", "data_type": "bigint"}]


@pytest.fixture(scope="module")
def shards(cluster):
    with three_shards(cluster, "ss", TABLES,
                      "DROP TABLE IF EXISTS ss_items, ss_countries, ss_plain; DROP SEQUENCE IF EXISTS ss_seq") as servers:
        yield servers


def start(routers, shards, general=None):
    dbs = shard_databases(shards)
    return routers.start(databases=dbs, general=general or {}, sharded_tables=SHARDED,
                         reference_tables=[{"database": "app", "names": ["ss_countries"]}])


@pytest.fixture(autouse=True)
def clean(shards):
    def reset():
        for s in shards:
            with s.connect(APP_DB) as conn:
                conn.execute("TRUNCATE ss_items, ss_countries, ss_plain; ALTER SEQUENCE ss_seq RESTART")
                conn.execute("INSERT INTO ss_countries VALUES ('de', 'Germany')")
    reset()
    for i, s in enumerate(shards):
        with s.connect(APP_DB) as conn:
            conn.execute("INSERT INTO ss_items VALUES (%s, 'seed')", ({0: 2, 1: 3, 2: 1}[i],))
    yield
    reset()


def check_sharding_works(conn, shards):
    """What a session must get whatever connection it holds."""
    assert conn.execute("SELECT count(*) FROM ss_items").fetchone() == (3,)
    for key in (1, 2, 3):
        assert conn.execute("SELECT item FROM ss_items WHERE customer_id = %s", (key,)).fetchall() == [("seed",)]
    conn.execute("INSERT INTO ss_items VALUES (1, 'new'), (3, 'new'), (2, 'new')")
    assert per_shard(shards, "SELECT customer_id FROM ss_items WHERE item = 'new'") == [[(2,)], [(3,)], [(1,)]]
    conn.execute("UPDATE ss_countries SET name = 'changed'")
    assert per_shard(shards, "SELECT name FROM ss_countries") == [[("changed",)]] * 3


@pytest.mark.parametrize("pin", ["SELECT nextval('ss_seq')", "LISTEN ss_channel", "SELECT pg_advisory_lock(4711)"])
def test_a_pinned_session_keeps_sharding_and_its_state(routers, shards, pin):
    r = start(routers, shards)
    with connect(r.dsn()) as conn:
        conn.execute(pin)
        check_sharding_works(conn, shards)
        # A transaction on several shards, then the pinned state is still
        # there (on shard 0's connection, which was not given away).
        conn.execute("BEGIN")
        conn.execute("INSERT INTO ss_items VALUES (1, 'tx'), (3, 'tx')")
        conn.execute("INSERT INTO ss_items VALUES (2, 'tx')")
        conn.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM ss_items").fetchone() == (9,)
        if "nextval" in pin:
            assert conn.execute("SELECT currval('ss_seq')").fetchone() == (1,)
        elif "LISTEN" in pin:
            assert conn.execute("SELECT pg_listening_channels()").fetchall() == [("ss_channel",)]
        else:
            held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                "AND pid = pg_backend_pid()").fetchone()
            assert held == (1,)
    # Nobody else got the pinned state.
    with connect(r.dsn()) as other:
        assert other.execute("SELECT pg_listening_channels()").fetchall() == []


def test_a_refusing_cross_shard_setting_still_refuses_when_pinned(routers, shards):
    r = start(routers, shards, general={"cross_shard": "refuse"})
    with connect(r.dsn()) as conn:
        conn.execute("SELECT nextval('ss_seq')")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT count(*) FROM ss_items")
        assert err.value.sqlstate == "0A000"


def test_session_mode_routes_every_statement_by_its_keys(routers, shards):
    r = start(routers, shards, general={"pool_mode": "session"})
    with connect(r.dsn()) as conn:
        check_sharding_works(conn, shards)
        conn.execute("SET application_name = 'ss-session'")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO ss_items VALUES (1, 'tx')")
        conn.execute("INSERT INTO ss_items VALUES (2, 'tx')")
        assert conn.execute("SELECT count(*) FROM ss_items WHERE item = 'tx'").fetchone() == (2,)
        conn.execute("COMMIT")
        assert per_shard(shards, "SELECT customer_id FROM ss_items WHERE item = 'tx'") == [[(2,)], [], [(1,)]]
        # The session's settings hold on every shard's connection.
        got = conn.execute("SELECT current_setting('application_name') FROM ss_items WHERE customer_id = 1")
        assert got.fetchall() == [("ss-session",)] * 3


def test_unsharded_tables_and_sequences_in_a_transaction_stay_on_shard_0(routers, shards):
    r = start(routers, shards)
    with connect(r.dsn()) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO ss_plain VALUES (1)")
        conn.execute("INSERT INTO ss_items VALUES (1, 'w')")
        assert conn.execute("SELECT a FROM ss_plain").fetchall() == [(1,)]
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO ss_items VALUES (3, 'w')")
        conn.execute("INSERT INTO ss_plain VALUES (2)")
        assert conn.execute("SELECT nextval('ss_seq')").fetchone() == (1,)
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO ss_items VALUES (1, 'w')")
        assert conn.execute("SELECT nextval('ss_seq')").fetchone() == (2,)
        conn.execute("COMMIT")
    assert per_shard(shards, "SELECT a FROM ss_plain ORDER BY 1") == [[(1,), (2,)], [], []]


def test_a_temp_table_is_the_sessions_own_on_shard_0(routers, shards):
    r = start(routers, shards)
    with connect(r.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE ss_tmp (a int)")
        conn.execute("INSERT INTO ss_tmp VALUES (1), (2)")
        assert conn.execute("SELECT count(*) FROM ss_items").fetchone() == (3,)
        assert conn.execute("SELECT a FROM ss_tmp ORDER BY a").fetchall() == [(1,), (2,)]
        conn.execute("BEGIN")
        conn.execute("INSERT INTO ss_tmp VALUES (3)")
        assert conn.execute("SELECT count(*) FROM ss_tmp").fetchone() == (3,)
        conn.execute("COMMIT")
        # Made from a sharded table it would hold one shard's rows: refused.
        with pytest.raises(psycopg.Error) as err:
            conn.execute("CREATE TEMP TABLE ss_tmp2 AS SELECT * FROM ss_items")
        assert err.value.sqlstate == "0A000"
    assert per_shard(shards, "SELECT count(*) FROM pg_class WHERE relname = 'ss_tmp'") == [[(0,)]] * 3


def test_ddl_on_a_temp_table_runs_on_its_shard_only(routers, shards):
    """DDL runs on every shard, but a temporary table lives on the one
    shard that created it: ALTER/DROP/TRUNCATE naming only the session's
    temporary tables run there. A temporary table hiding an ordinary one
    of the same name must not make the router drop or change the ordinary
    one anywhere; once the temporary one is dropped, the name is the
    ordinary table's again (on every shard). Mixed DDL is refused."""
    r = start(routers, shards)
    with connect(r.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE ss_tmp (a int)")
        conn.execute("ALTER TABLE ss_tmp ADD COLUMN b int")
        conn.execute("INSERT INTO ss_tmp VALUES (1, 2)")
        assert conn.execute("SELECT a, b FROM ss_tmp").fetchall() == [(1, 2)]
        conn.execute("CREATE INDEX ON ss_tmp (b)")
        conn.execute("TRUNCATE ss_tmp")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("DROP TABLE ss_tmp, ss_plain")
        assert err.value.sqlstate == "0A000", err.value
        conn.execute("DROP TABLE ss_tmp")
        # A temporary table hiding the ordinary ss_plain of every shard.
        conn.execute("CREATE TEMP TABLE ss_plain (z int)")
        conn.execute("ALTER TABLE ss_plain ADD COLUMN y int")
        conn.execute("DROP TABLE ss_plain")
        # Created by a transaction that rolled back: never a temp table.
        conn.execute("CREATE TEMP TABLE ss_keep (k int)")  # keeps the session pinned
        conn.execute("CREATE TABLE ss_own (o int)")  # on every shard, owned by app
        conn.execute("BEGIN")
        conn.execute("CREATE TEMP TABLE ss_own (z int)")
        conn.execute("ROLLBACK")
        conn.execute("ALTER TABLE ss_own ADD COLUMN extra int")
        # Created on a hinted shard: its DDL goes there.
        conn.execute("DROP TABLE ss_keep")
        conn.execute("/* pgrouter: shard=2 */ CREATE TEMP TABLE ss_far (f int)")
        conn.execute("ALTER TABLE ss_far ADD COLUMN g int")
        conn.execute("DROP TABLE ss_far")
    # The ordinary ss_plain is intact on every shard; no temp tables left.
    assert per_shard(shards, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'ss_plain'::regclass "
                             "AND attnum > 0 AND NOT attisdropped") == [[(1,)]] * 3
    assert per_shard(shards, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'ss_own'::regclass "
                             "AND attnum > 0 AND NOT attisdropped") == [[(2,)]] * 3
    for s in shards:
        with s.connect(APP_DB) as c:
            c.execute("DROP TABLE ss_own")
    assert per_shard(shards, "SELECT count(*) FROM pg_class WHERE relpersistence = 't' "
                             "AND relname LIKE 'ss\\_%'") == [[(0,)]] * 3


def test_discard_all_in_a_transaction_block_is_refused_as_by_postgresql(routers, shards):
    """BEGIN on a sharded database is answered before a shard is chosen;
    a DISCARD ALL after it must still fail as PostgreSQL's does (25001)
    and discard nothing, not be answered "DISCARD ALL" by the router."""
    r = start(routers, shards)
    with connect(r.dsn()) as conn:
        conn.execute("PREPARE ss_p AS SELECT 7")
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("DISCARD ALL")
        assert err.value.sqlstate == "25001", err.value
        conn.execute("ROLLBACK")
        assert conn.execute("EXECUTE ss_p").fetchone() == (7,)
