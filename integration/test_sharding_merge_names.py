"""Merged reads that must resolve names and compare values exactly as one
PostgreSQL would (SPEC §5 "Sharding"): a GROUP BY name is an input column
before an output name, an ORDER BY expression (`v COLLATE "C"`) sees only
input columns, GROUP BY / DISTINCT keys of types whose equal values may be
spelt differently (records) are refused with 0A000, and a merged float NaN
is PostgreSQL's. Three real primaries; ground truth is one unsharded server."""
from __future__ import annotations

import math

import psycopg
import pytest

from harness.clients import connect, sqlstate
from harness.pg import APP_DB, PgCluster

SHARDED = [{"database": "app", "name": "mn_w", "column": "k", "data_type": "bigint"}]
TABLES = "mn_w"
SCHEMA = ["DROP TABLE IF EXISTS mn_w",
          "CREATE TABLE mn_w (k bigint, id int, v text, n numeric, f float8, a int[])",
          "GRANT ALL ON mn_w TO app"]


@pytest.fixture(scope="module")
def shards(cluster):
    with PgCluster(with_replica=False, prefix="pgrouter-mn1-") as s1, \
            PgCluster(with_replica=False, prefix="pgrouter-mn2-") as s2, \
            PgCluster(with_replica=False, prefix="pgrouter-mn-truth-") as truth:
        servers = [cluster.primary, s1.primary, s2.primary]
        for s in servers + [truth.primary]:
            with s.connect(APP_DB) as conn:
                conn.execute("GRANT CREATE ON SCHEMA public TO app")
        yield servers, truth.primary
        with cluster.primary.connect(APP_DB) as conn:
            conn.execute("DROP TABLE IF EXISTS mn_w")


@pytest.fixture
def srouter(routers, shards):
    servers, truth = shards
    for s in servers + [truth]:
        with s.connect(APP_DB) as conn:
            for sql in SCHEMA:
                conn.execute(sql)
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app", "role": "primary",
            "shard": i} for i, s in enumerate(servers)]
    yield routers.start(databases=dbs, sharded_tables=SHARDED)


def load(srouter, truth, rows):
    """The same rows through the router (spread over the shards) and into the truth server, in order."""
    with connect(srouter.dsn()) as rc, truth.connect(APP_DB) as tc:
        for c in (rc, tc):
            c.execute("DELETE FROM mn_w")
            for r in rows:
                c.execute("INSERT INTO mn_w (k, id, v, n, f) VALUES (%s, %s, %s, %s, %s)", r)


def same(srouter, truth, sql, params=None, any_order=False):
    with connect(srouter.dsn()) as rc, truth.connect(APP_DB) as tc:
        got = rc.execute(sql, params).fetchall()
        want = tc.execute(sql, params).fetchall()
    if any_order:
        got, want = sorted(got), sorted(want)
    assert got == want, sql


def refused(srouter, sql):
    with connect(srouter.dsn()) as rc:
        with pytest.raises(psycopg.Error) as err:
            rc.execute(sql).fetchall()
    assert sqlstate(err.value) == "0A000", (sql, err.value)


ROWS = [(1, 1, "a", 1, 1), (2, 1, "A", 1, 1), (3, 1, "b", 1, 1),
        (4, 1, "d", 1, 1), (5, 1, "e", 1, 1), (6, 1, "f", 1, 1)]


def test_group_by_a_name_that_is_an_input_column_and_an_output_alias(srouter, shards):
    _, truth = shards
    load(srouter, truth, ROWS)
    for sql in ["SELECT k % 2 AS k, count(*) FROM mn_w GROUP BY k ORDER BY 1, 2",
                "SELECT upper(v) AS v, count(*) FROM mn_w GROUP BY v ORDER BY 1, 2",
                "SELECT upper(v) AS v, count(*) FROM mn_w AS x GROUP BY v ORDER BY 1, 2",
                "SELECT upper(v) AS v, count(*) FROM public.mn_w GROUP BY v HAVING count(*) > 0 ORDER BY v",
                # An alias that is no input column still groups by the output column.
                "SELECT k % 2 AS r, count(*) FROM mn_w GROUP BY r ORDER BY 1, 2",
                "SELECT upper(v) AS u, count(*) FROM mn_w GROUP BY u ORDER BY 1, 2"]:
        same(srouter, truth, sql)
    # Extended protocol with a parameter.
    same(srouter, truth, "SELECT k %% 2 AS k, count(*) FROM mn_w WHERE id >= %s GROUP BY k ORDER BY 1, 2", (0,))


def test_order_by_an_expression_of_a_name_sees_the_input_column(srouter, shards):
    _, truth = shards
    load(srouter, truth, [(1, 30, "a", 1, 1), (2, 10, "c", 1, 1), (3, 20, "b", 1, 1)])
    same(srouter, truth, 'SELECT k, id AS v FROM mn_w ORDER BY v COLLATE "C"')
    same(srouter, truth, 'SELECT k, id AS v FROM mn_w ORDER BY v COLLATE "C" DESC LIMIT 2')
    # A bare ORDER BY name is the output column first.
    same(srouter, truth, "SELECT k, id AS v FROM mn_w ORDER BY v")


def test_group_by_or_distinct_on_records_is_refused(srouter, shards):
    _, truth = shards
    load(srouter, truth, [(1, 1, "a", "1.0", 1), (2, 1, "a ", "1.00", 1), (3, 1, "a  ", "1", 1)])
    for sql in ["SELECT ROW(n) AS r, count(*) FROM mn_w GROUP BY 1",
                "SELECT DISTINCT ROW(n) FROM mn_w",
                "SELECT DISTINCT ROW(v::bpchar) FROM mn_w",
                "SELECT DISTINCT mn_w FROM mn_w",
                "SELECT DISTINCT ARRAY[n] FROM mn_w"]:
        refused(srouter, sql)
    # Types whose equality the merge reads exactly still merge.
    with connect(srouter.dsn()) as rc, truth.connect(APP_DB) as tc:
        for c in (rc, tc):
            c.execute("UPDATE mn_w SET a = ARRAY[k::int % 2]")
    for sql in ["SELECT n, count(*) FROM mn_w GROUP BY 1",
                "SELECT a, count(*) FROM mn_w GROUP BY a",
                "SELECT DISTINCT a FROM mn_w"]:
        same(srouter, truth, sql, any_order=True)


def test_merged_float_nan_is_postgresqls(srouter, shards):
    _, truth = shards
    # Every placement of the NaN; the truth server reads the NaN first.
    for nan_key in (1, 2, 3):
        others = [k for k in (1, 2, 3) if k != nan_key]
        load(srouter, truth, [(nan_key, 1, "x", 1, "NaN"), (others[0], 1, "x", 1, "inf"),
                              (others[1], 1, "x", 1, "-inf")])
        with connect(srouter.dsn()) as rc, truth.connect(APP_DB) as tc:
            for sql in ["SELECT avg(f), sum(f) FROM mn_w", "SELECT avg(f::float4), sum(f::float4) FROM mn_w"]:
                got = rc.cursor(binary=True).execute(sql).fetchone()
                want = tc.cursor(binary=True).execute(sql).fetchone()
                assert all(math.isnan(v) for v in got + want), (sql, got, want)
                signs = lambda row: [math.copysign(1.0, v) for v in row]  # noqa: E731
                assert signs(got) == signs(want), (nan_key, sql, got, want)
