"""Merged reads and split writes that must be exact or refused (SPEC §5
"Sharding"): text merged only in a byte-ordered collation (a column's own
collation, a COLLATE clause and an ICU database default all count), bytea
not merged by its text form, and RETURNING rows of a split INSERT in VALUES
order. Three real primaries; ground truth is one unsharded server."""
from __future__ import annotations

import psycopg
import pytest

from harness.clients import aconnect, connect, run_async, sqlstate
from harness.pg import APP_DB, PgCluster, conninfo
from harness.router import app_user

SHARDED = [{"database": "app", "name": "mx_orders", "column": "customer_id", "data_type": "bigint"}]
WORDS = ["apple", "Banana", "cherry", "Apple", "banana", "Zebra"]
TABLES = "mx_orders, mx_plain"


@pytest.fixture(scope="module")
def shards(cluster):
    with PgCluster(with_replica=False, prefix="pgrouter-mx1-") as s1, \
            PgCluster(with_replica=False, prefix="pgrouter-mx2-") as s2, \
            PgCluster(with_replica=False, prefix="pgrouter-mx-truth-") as truth:
        servers = [cluster.primary, s1.primary, s2.primary]
        for s in servers + [truth.primary]:
            with s.connect(APP_DB) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLES}")
                conn.execute("GRANT CREATE ON SCHEMA public TO app")
        yield servers, truth.primary
        with cluster.primary.connect(APP_DB) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLES}")


@pytest.fixture
def srouter(routers, shards):
    servers, truth = shards
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app", "role": "primary",
            "shard": i} for i, s in enumerate(servers)]
    yield routers.start(databases=dbs, sharded_tables=SHARDED)
    for s in servers + [truth]:
        with s.connect(APP_DB) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLES}")


def both(srouter, truth):
    return connect(srouter.dsn()), truth.connect(APP_DB)


def refused(conn, sql, params=None):
    with pytest.raises(psycopg.Error) as err:
        conn.execute(sql, params).fetchall()
    assert sqlstate(err.value) == "0A000", (sql, err.value)
    assert "collation" in str(err.value), (sql, err.value)


def test_text_in_a_non_byte_collation_is_refused_not_merged_by_bytes(srouter, shards):
    _, truth = shards
    rc, tc = both(srouter, truth)
    with rc, tc:
        for c in (rc, tc):
            c.execute('CREATE TABLE mx_orders (customer_id bigint, icu text COLLATE "en-x-icu", t text)')
            for k, w in enumerate(WORDS, 1):
                c.execute("INSERT INTO mx_orders VALUES (%s, %s, %s)", (k, w, w))
        rc.execute("CREATE COLLATION IF NOT EXISTS mx_ci (provider = icu, locale = 'und-u-ks-level2', "
                   "deterministic = false)")
        for sql in ["SELECT icu FROM mx_orders ORDER BY icu",
                    "SELECT customer_id FROM mx_orders ORDER BY icu DESC",
                    'SELECT t FROM mx_orders ORDER BY t COLLATE "en-x-icu"',
                    'SELECT t AS x FROM mx_orders ORDER BY t COLLATE "en-x-icu", 1',
                    "SELECT lower(icu) FROM mx_orders ORDER BY 1",
                    "SELECT min(icu), max(icu) FROM mx_orders",
                    'SELECT min(t COLLATE "en-x-icu"), max(t COLLATE "en-x-icu") FROM mx_orders',
                    "SELECT icu, count(*) FROM mx_orders GROUP BY icu ORDER BY icu",
                    "SELECT DISTINCT icu FROM mx_orders ORDER BY icu",
                    "SELECT icu FROM mx_orders GROUP BY icu HAVING icu > 'b'",
                    "SELECT t COLLATE mx_ci, count(*) FROM mx_orders GROUP BY 1",
                    "SELECT DISTINCT t COLLATE mx_ci FROM mx_orders"]:
            refused(rc, sql)
        # The statement's own error comes through as it is.
        with pytest.raises(psycopg.Error) as err:
            rc.execute("SELECT nosuch FROM mx_orders ORDER BY icu").fetchall()
        assert sqlstate(err.value) == "42703"
        # Extended protocol with parameters: the same answer.
        refused(rc, "SELECT icu FROM mx_orders WHERE customer_id <> %s ORDER BY icu", (0,))
        # Inside a transaction the refusal leaves the transaction usable up to it.
        rc.execute("BEGIN")
        refused(rc, "SELECT icu FROM mx_orders ORDER BY icu")
        rc.execute("ROLLBACK")
        # What orders by bytes is still merged, and exactly.
        for sql in ['SELECT icu FROM mx_orders ORDER BY icu COLLATE "C"',
                    "SELECT t FROM mx_orders ORDER BY t",
                    'SELECT min(icu COLLATE "C"), max(t) FROM mx_orders',
                    "SELECT icu, count(*) FROM mx_orders GROUP BY icu ORDER BY icu COLLATE \"C\"",
                    "SELECT DISTINCT t FROM mx_orders ORDER BY t"]:
            assert rc.execute(sql).fetchall() == tc.execute(sql).fetchall(), sql
        sql = "SELECT t FROM mx_orders WHERE customer_id <> %s ORDER BY t DESC"
        assert rc.execute(sql, (2,)).fetchall() == tc.execute(sql, (2,)).fetchall()
        # Equality in a deterministic ICU collation is byte equality: merged.
        sql = "SELECT icu, count(*) FROM mx_orders GROUP BY icu"
        assert sorted(rc.execute(sql).fetchall()) == sorted(tc.execute(sql).fetchall())


def test_an_icu_database_default_is_not_taken_for_bytes(routers, shards):
    """datcollate is C.UTF-8 but the ICU locale decides (datlocprovider 'i')."""
    servers, truth = shards
    for s in servers + [truth]:
        with s.connect("postgres") as c:
            c.execute("DROP DATABASE IF EXISTS mxicu")
            c.execute("CREATE DATABASE mxicu OWNER app TEMPLATE template0 LOCALE_PROVIDER icu "
                      "ICU_LOCALE 'en' LOCALE 'C.UTF-8'")
    r = None
    try:
        dbs = [{"name": "mxicu", "host": "127.0.0.1", "port": s.port, "database_name": "mxicu",
                "role": "primary", "shard": i} for i, s in enumerate(servers)]
        r = routers.start(databases=dbs, users=[app_user(database="mxicu")],
                          sharded_tables=[{"database": "mxicu", "name": "mx_orders", "column": "customer_id",
                                           "data_type": "bigint"}])
        tdsn = conninfo(host="127.0.0.1", port=truth.port, dbname="mxicu", user="app", password="app-secret")
        with connect(r.dsn(db="mxicu")) as rc, psycopg.connect(tdsn, autocommit=True) as tc:
            for c in (rc, tc):
                c.execute("CREATE TABLE mx_orders (customer_id bigint, t text, c text COLLATE \"C\")")
                for k, w in enumerate(WORDS, 1):
                    c.execute("INSERT INTO mx_orders VALUES (%s, %s, %s)", (k, w, w))
            for sql in ["SELECT t FROM mx_orders ORDER BY t",
                        "SELECT min(t), max(t) FROM mx_orders",
                        "SELECT DISTINCT t FROM mx_orders ORDER BY t",
                        "SELECT t, count(*) FROM mx_orders GROUP BY t ORDER BY t"]:
                refused(rc, sql)
            for sql in ['SELECT t FROM mx_orders ORDER BY t COLLATE "C"',
                        "SELECT c FROM mx_orders ORDER BY c",
                        "SELECT min(c), max(c) FROM mx_orders"]:
                assert rc.execute(sql).fetchall() == tc.execute(sql).fetchall(), sql
    finally:
        if r is not None:
            r.stop()
        for s in servers + [truth]:
            with s.connect("postgres") as c:
                c.execute("DROP DATABASE IF EXISTS mxicu WITH (FORCE)")


def test_split_insert_returns_rows_in_values_order(srouter, shards):
    """ORMs pair RETURNING rows with their objects by position."""
    _, truth = shards
    rc, tc = both(srouter, truth)
    with rc, tc:
        for c in (rc, tc):
            c.execute("CREATE TABLE mx_orders (customer_id bigint PRIMARY KEY, item text)")
        sql = ("INSERT INTO mx_orders VALUES (1,'a'),(2,'b'),(3,'c'),(4,'d'),(5,'e'),(6,'f'),(7,'g') "
               "RETURNING customer_id, item")
        cur = rc.execute(sql)
        assert cur.fetchall() == tc.execute(sql).fetchall() == [(k, "abcdefg"[k - 1]) for k in range(1, 8)]
        assert cur.statusmessage == "INSERT 0 7"
        sql = "INSERT INTO mx_orders VALUES (%s, 'x'), (%s, 'y'), (%s, 'z') RETURNING customer_id, item"
        assert rc.execute(sql, (13, 11, 12)).fetchall() == [(13, "x"), (11, "y"), (12, "z")]
        # ON CONFLICT DO NOTHING inserting every row: still exact.
        sql = ("INSERT INTO mx_orders VALUES (21,'a'),(22,'b'),(23,'c'),(24,'d') "
               "ON CONFLICT DO NOTHING RETURNING customer_id")
        assert rc.execute(sql).fetchall() == [(21,), (22,), (23,), (24,)]
        # A row skipped while several shards return rows: which positions
        # the rows had is unknown, so refused and nothing inserted.
        with pytest.raises(psycopg.Error) as err:
            rc.execute("INSERT INTO mx_orders VALUES (31,'a'),(1,'b'),(32,'c'),(33,'d'),(34,'e') "
                       "ON CONFLICT DO NOTHING RETURNING customer_id").fetchall()
        assert sqlstate(err.value) == "0A000"
        assert rc.execute("SELECT count(*) FROM mx_orders WHERE customer_id > 30").fetchone() == (0,)
        # Without RETURNING nothing is refused.
        rc.execute("INSERT INTO mx_orders VALUES (31,'a'),(1,'b'),(32,'c') ON CONFLICT DO NOTHING")
        assert rc.execute("SELECT count(*) FROM mx_orders WHERE customer_id > 30").fetchone() == (2,)

    async def go():
        c = await aconnect(srouter)
        try:
            stmt = await c.prepare("INSERT INTO mx_orders VALUES ($1, 'a'), ($2, 'b'), ($3, 'c') "
                                   "RETURNING customer_id")
            return [r[0] for r in await stmt.fetch(41, 42, 43)] + [r[0] for r in await stmt.fetch(46, 45, 44)]
        finally:
            await c.close()
    assert run_async(go()) == [41, 42, 43, 46, 45, 44]


def test_bytea_merges_by_its_bytes_in_either_output_format(srouter, shards):
    _, truth = shards
    rc, tc = both(srouter, truth)
    values = [b"A", b"\x0b", b"\\", b"z", b"\x00\x01", b"~", b"\xff", b"\x7f"]
    with rc, tc:
        for c in (rc, tc):
            c.execute("CREATE TABLE mx_orders (customer_id bigint, b bytea)")
            for k, v in enumerate(values, 1):
                c.execute("INSERT INTO mx_orders VALUES (%s, %s)", (k, v))
        for output in ("hex", "escape"):
            for c in (rc, tc):
                c.execute(f"SET bytea_output = {output}")
            for sql in ["SELECT customer_id, b FROM mx_orders ORDER BY b",
                        "SELECT customer_id, b FROM mx_orders ORDER BY b DESC",
                        "SELECT b, count(*) FROM mx_orders GROUP BY b ORDER BY b DESC",
                        "SELECT DISTINCT b FROM mx_orders ORDER BY b"]:
                assert rc.execute(sql).fetchall() == tc.execute(sql).fetchall(), (output, sql)
                with rc.cursor(binary=True) as rb, tc.cursor(binary=True) as tb:
                    assert rb.execute(sql).fetchall() == tb.execute(sql).fetchall(), (output, sql)


def test_merged_floats_and_intervals_follow_the_sessions_output_settings(srouter, shards):
    """sum()/avg() of floats computed by the router are written as
    PostgreSQL writes them with extra_float_digits >= 1; below that,
    PostgreSQL rounds (and the shards' rounded partial sums no longer add
    up to the true sum), so text results are refused while binary ones,
    which carry every bit, are merged. Likewise intervals in text need
    IntervalStyle postgres."""
    _, truth = shards
    rc, tc = both(srouter, truth)
    with rc, tc:
        for c in (rc, tc):
            c.execute("CREATE TABLE mx_orders (customer_id bigint, f float8, r real, iv interval)")
            c.execute("INSERT INTO mx_orders VALUES (1, 1234567.5, 1.5, '1 day'), "
                      "(2, 0.25, 2.25, '2 hours'), (3, 3456789.125, 3.125, '1 mon 3 sec')")
        q = "SELECT sum(f), avg(f), sum(r), sum(iv) FROM mx_orders"
        def texts(c):
            result = psycopg.ClientCursor(c).execute(q).pgresult
            return [result.get_value(0, i).decode() for i in range(4)]
        assert texts(rc) == texts(tc)
        for efd in (0, -10):
            for c in (rc, tc):
                c.execute(f"SET extra_float_digits = {efd}")
            with pytest.raises(psycopg.Error) as err:
                psycopg.ClientCursor(rc).execute("SELECT sum(f) FROM mx_orders")
            assert sqlstate(err.value) == "0A000", err.value
            assert "extra_float_digits" in str(err.value)
            for sql in ("SELECT avg(f) FROM mx_orders", "SELECT sum(r) FROM mx_orders"):
                with pytest.raises(psycopg.Error) as err:
                    rc.execute(sql).fetchall()
                assert sqlstate(err.value) == "0A000", (sql, err.value)
            # Binary results carry every bit: merged as ever.
            got = rc.cursor(binary=True).execute("SELECT sum(r), min(f), max(f) FROM mx_orders").fetchall()
            assert got == tc.cursor(binary=True).execute("SELECT sum(r), min(f), max(f) FROM mx_orders").fetchall()
            # The shards' own values pass through as PostgreSQL wrote them.
            assert rc.execute("SELECT min(f) FROM mx_orders").pgresult.get_value(0, 0) == \
                tc.execute("SELECT min(f) FROM mx_orders").pgresult.get_value(0, 0)
        for c in (rc, tc):
            c.execute("RESET extra_float_digits")
            c.execute("SET IntervalStyle = iso_8601")
        for sql in ("SELECT sum(iv) FROM mx_orders", "SELECT max(iv) FROM mx_orders",
                    "SELECT customer_id FROM mx_orders ORDER BY iv"):
            with pytest.raises(psycopg.Error) as err:
                rc.execute(sql).fetchall()
            assert sqlstate(err.value) == "0A000", (sql, err.value)
            assert "IntervalStyle" in str(err.value)
        got = rc.cursor(binary=True).execute("SELECT sum(iv) FROM mx_orders").fetchall()
        assert got == tc.cursor(binary=True).execute("SELECT sum(iv) FROM mx_orders").fetchall()
