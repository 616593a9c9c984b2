"""Tables that are neither sharded nor reference tables (SPEC §5 "Sharding"):
statements on them alone go to shard 0, so that is where their rows live.

- A write to such a table that reads a sharded table must run on shard 0:
  when the rows it reads are on another shard (or several) it would write
  them where no later statement on the table looks, so it is refused.
- CREATE TABLE ... AS, CREATE MATERIALIZED VIEW and CREATE VIEW over a
  sharded table run as DDL on every shard, where each sees its own rows
  only, and the new object is read on shard 0 alone: refused, like
  `SELECT ... INTO`.

Shares the three-shard setup of test_sharding_routing.py."""
from __future__ import annotations

import pytest

from harness.clients import connect
from harness.pg import APP_DB
from test_sharding_routing import hash_shard, per_shard, refused, shards, srouter  # noqa: F401 (fixtures)

OBJECTS = ["shw_plain", "shw_copy", "shw_mv", "shw_v", "shw_ref_copy", "shw_ref_v"]


@pytest.fixture
def cleanup(shards):
    yield
    for s in shards:
        with s.connect(APP_DB) as conn:
            conn.execute("DROP VIEW IF EXISTS shw_v, shw_ref_v")
            conn.execute("DROP MATERIALIZED VIEW IF EXISTS shw_mv")
            conn.execute("DROP TABLE IF EXISTS shw_plain, shw_copy, shw_ref_copy")


def keys_by_shard(shards):
    """A sh_orders key on shard 0 and one on another shard."""
    on = {}
    for k in range(1, 50):
        on.setdefault(hash_shard(shards[0], "sh_hp_int8", 3, k), k)
    return on[0], on.get(1) or on[2]


def test_writes_to_an_unsharded_table_stay_on_shard_0(srouter, shards, cleanup):
    k0, far = keys_by_shard(shards)
    with connect(srouter.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE shw_plain (customer_id bigint, note text)")
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k0}, 'zero'), ({far}, 'far')")
        conn.execute("INSERT INTO sh_countries VALUES ('de')")
        for sql in [f"INSERT INTO shw_plain SELECT customer_id, note FROM sh_orders WHERE customer_id = {far}",
                    "INSERT INTO shw_plain SELECT customer_id, note FROM sh_orders",
                    f"INSERT INTO shw_plain SELECT customer_id, note FROM sh_orders WHERE customer_id IN ({k0}, {far})",
                    f"UPDATE shw_plain p SET note = o.note FROM sh_orders o WHERE o.customer_id = {far}",
                    "DELETE FROM shw_plain p USING sh_orders o WHERE o.customer_id = p.customer_id",
                    f"WITH x AS (INSERT INTO shw_plain VALUES (9, 'x') RETURNING 1) "
                    f"SELECT note FROM sh_orders WHERE customer_id = {far}",
                    f"INSERT INTO shw_plain VALUES (8, 'y'); SELECT note FROM sh_orders WHERE customer_id = {far}",
                    f"EXPLAIN (ROUTE) INSERT INTO shw_plain SELECT customer_id, note FROM sh_orders "
                    f"WHERE customer_id = {far}"]:
            msg = refused(conn, sql)
            assert 'unsharded table "shw_plain"' in msg and "shard 0" in msg, (sql, msg)
        # Extended protocol, key in a parameter.
        msg = refused(conn, "INSERT INTO shw_plain SELECT customer_id, note FROM sh_orders WHERE customer_id = %s",
                      (far,))
        assert 'unsharded table "shw_plain"' in msg
        # Reading shard 0 only, or only reference tables: exact, on shard 0.
        cur = conn.execute(f"INSERT INTO shw_plain SELECT customer_id, note FROM sh_orders WHERE customer_id = {k0}")
        assert cur.statusmessage == "INSERT 0 1"
        cur = conn.execute("INSERT INTO shw_plain SELECT %s, note FROM sh_orders WHERE customer_id = %s", (7, k0))
        assert cur.statusmessage == "INSERT 0 1"
        conn.execute("INSERT INTO shw_plain SELECT 5, code FROM sh_countries")
        cur = conn.execute(f"UPDATE shw_plain p SET note = o.note || '!' FROM sh_orders o "
                           f"WHERE o.customer_id = {k0} AND p.customer_id = 7")
        assert cur.statusmessage == "UPDATE 1"
        assert conn.execute("SELECT customer_id, note FROM shw_plain ORDER BY 1").fetchall() == \
            sorted([(k0, "zero"), (7, "zero!"), (5, "de")])
    assert per_shard(shards, "SELECT count(*) FROM shw_plain") == [[(3,)], [(0,)], [(0,)]]


def test_objects_defined_by_a_query_on_a_sharded_table_are_refused(srouter, shards, cleanup):
    k0, far = keys_by_shard(shards)
    with connect(srouter.dsn(), autocommit=True) as conn:
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k0}, 'zero'), ({far}, 'far')")
        conn.execute("INSERT INTO sh_countries VALUES ('de')")
        for sql, what in [("CREATE TABLE shw_copy AS SELECT * FROM sh_orders", "CREATE TABLE ... AS"),
                          (f"CREATE TABLE shw_copy AS SELECT * FROM sh_orders WHERE customer_id = {far}",
                           "CREATE TABLE ... AS"),
                          ("CREATE MATERIALIZED VIEW shw_mv AS SELECT count(*) AS n FROM sh_orders",
                           "CREATE MATERIALIZED VIEW"),
                          ("CREATE MATERIALIZED VIEW shw_mv AS SELECT count(*) AS n FROM sh_orders WITH NO DATA",
                           "CREATE MATERIALIZED VIEW"),
                          ("CREATE VIEW shw_v AS SELECT * FROM sh_orders", "CREATE VIEW"),
                          ("CREATE OR REPLACE VIEW shw_v AS SELECT o.note FROM sh_countries c "
                           "JOIN public.sh_orders o ON o.note = c.code", "CREATE VIEW")]:
            msg = refused(conn, sql)
            assert what in msg and 'sharded table "' in msg and "HINT" in msg, (sql, msg)
        # Empty copies, and objects over reference tables: alike on every shard.
        conn.execute("CREATE TABLE shw_copy AS SELECT * FROM sh_orders WITH NO DATA")
        conn.execute("CREATE TABLE shw_ref_copy AS SELECT * FROM sh_countries")
        conn.execute("CREATE VIEW shw_ref_v AS SELECT code FROM sh_countries")
        assert conn.execute("SELECT count(*) FROM shw_copy").fetchone() == (0,)
        assert conn.execute("SELECT code FROM shw_ref_v").fetchall() == [("de",)]
    assert per_shard(shards, "SELECT count(*) FROM pg_class WHERE relname IN ('shw_mv', 'shw_v')") == [[(0,)]] * 3
    assert per_shard(shards, "SELECT count(*) FROM shw_copy") == [[(0,)]] * 3
    assert per_shard(shards, "SELECT count(*) FROM shw_ref_copy") == [[(1,)]] * 3


def test_reads_joining_an_unsharded_table_run_on_shard_0_or_are_refused(srouter, shards, cleanup):
    """A read of a sharded table together with an unsharded one (join,
    subquery) must see the unsharded table's rows, which live on shard 0:
    it runs when its keys name shard 0 only, and is refused (0A000) when it
    would run elsewhere and read another shard's copy. Reference tables and
    the system catalogs are alike on every shard."""
    k0, far = keys_by_shard(shards)
    with connect(srouter.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE shw_plain (customer_id bigint, note text)")
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k0}, 'zero'), ({far}, 'far')")
        conn.execute(f"INSERT INTO shw_plain VALUES ({k0}, 'p0'), ({far}, 'pfar')")
        conn.execute("INSERT INTO sh_countries VALUES ('de')")
        join = "SELECT o.note, p.note FROM sh_orders o JOIN shw_plain p USING (customer_id)"
        assert conn.execute(f"{join} WHERE o.customer_id = {k0}").fetchall() == [("zero", "p0")]
        assert conn.execute(f"{join} WHERE o.customer_id = %s", (k0,)).fetchall() == [("zero", "p0")]
        for sql, params in [(f"{join} WHERE o.customer_id = {far}", None),
                            (f"{join} WHERE o.customer_id = %s", (far,)),
                            (join, None),
                            ("SELECT note FROM sh_orders WHERE customer_id = (SELECT max(customer_id) FROM shw_plain "
                             f"WHERE customer_id = {far}) AND customer_id = {far}", None)]:
            msg = refused(conn, sql, params)
            assert 'unsharded table "shw_plain"' in msg, (sql, msg)
        # Reference tables and catalogs: fine on any shard.
        assert conn.execute(f"SELECT o.note, c.code FROM sh_orders o, sh_countries c "
                            f"WHERE o.customer_id = {far}").fetchall() == [("far", "de")]
        assert conn.execute(f"SELECT o.note FROM sh_orders o WHERE o.customer_id = {far} AND EXISTS "
                            "(SELECT 1 FROM pg_catalog.pg_class WHERE relname = 'sh_orders')").fetchall() == [("far",)]


def test_reference_table_writes_reading_an_unsharded_table_are_refused(srouter, shards, cleanup):
    """A write to a reference table runs on every shard; an unsharded
    table's rows are on shard 0 only, so reading one there would give every
    other shard's copy different rows: refused (0A000), nothing written.
    Reading constants or reference tables stays exact on every shard."""
    with connect(srouter.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE shw_plain (customer_id bigint, note text)")
        conn.execute("INSERT INTO shw_plain VALUES (1, 'xx')")
        conn.execute("INSERT INTO sh_countries VALUES ('de')")
        for sql in ["INSERT INTO sh_countries SELECT note FROM shw_plain",
                    "INSERT INTO sh_countries VALUES ((SELECT note FROM shw_plain LIMIT 1))",
                    "UPDATE sh_countries c SET code = p.note FROM shw_plain p",
                    "DELETE FROM sh_countries c USING shw_plain p WHERE p.note <> c.code",
                    "WITH x AS (SELECT note FROM shw_plain) INSERT INTO sh_countries SELECT note FROM x"]:
            msg = refused(conn, sql)
            assert 'reference table "sh_countries"' in msg and 'unsharded table "shw_plain"' in msg, (sql, msg)
        msg = refused(conn, "INSERT INTO sh_countries SELECT note FROM shw_plain WHERE customer_id = %s", (1,))
        assert 'unsharded table "shw_plain"' in msg
        assert per_shard(shards, "SELECT code FROM sh_countries") == [[("de",)]] * 3
        cur = conn.execute("INSERT INTO sh_countries SELECT code || '2' FROM sh_countries")
        assert cur.statusmessage == "INSERT 0 1"
    assert per_shard(shards, "SELECT code FROM sh_countries ORDER BY 1") == [[("de",), ("de2",)]] * 3
