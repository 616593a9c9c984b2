"""Columns of user-defined types (here an enum) in reads on several shards
(SPEC §5 "Sharding": merged exactly, or 0A000). Each shard's server gives
the type an OID of its own, so the shards' RowDescriptions differ there:
in text format that is the same type, and rows are merged; grouping and
DISTINCT compare the labels. Sorting by an enum (declaration order) is
refused, as is a user type in binary format (its values may carry the OID).

Shares the three-shard setup of test_sharding_routing.py."""
from __future__ import annotations

import asyncpg
import psycopg
import pytest

from harness.clients import aconnect, connect, run_async
from harness.pg import APP_DB
from test_sharding_routing import per_shard, shards, srouter  # noqa: F401 (fixtures)

MOODS = ["sad", "ok", "happy", "zany"]


@pytest.fixture
def moods(shards):
    for i, s in enumerate(shards):
        with s.connect(APP_DB) as conn:
            # A type made first on one shard only: the enum's OIDs differ.
            conn.execute(f"CREATE TYPE sh_pad_{i} AS (x int)" if i == 1 else "SELECT 1")
            conn.execute("CREATE TYPE sh_mood AS ENUM ('sad', 'ok', 'happy', 'zany')")
            conn.execute("ALTER TABLE sh_orders ADD COLUMN m sh_mood")
    oids = [per_shard([s], "SELECT 'sh_mood'::regtype::oid")[0][0][0] for s in shards]
    assert len(set(oids)) > 1, oids
    yield
    for i, s in enumerate(shards):
        with s.connect(APP_DB) as conn:
            conn.execute("ALTER TABLE sh_orders DROP COLUMN m")
            conn.execute("DROP TYPE sh_mood")
            conn.execute(f"DROP TYPE IF EXISTS sh_pad_{i}")


def test_enum_columns_merge_across_shards(srouter, shards, moods):
    rows = [(k, f"n{k}", MOODS[k % 4]) for k in range(1, 41)]
    with connect(srouter.dsn(), autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO sh_orders (customer_id, note, m) VALUES (%s, %s, %s)", rows)
        assert sum(1 for r in per_shard(shards, "SELECT 1 FROM sh_orders") if r) == 3
        got = conn.execute("SELECT customer_id, m FROM sh_orders WHERE customer_id <= 8 "
                           "ORDER BY customer_id").fetchall()
        assert got == [(k, MOODS[k % 4]) for k in range(1, 9)]
        assert sorted(conn.execute("SELECT m FROM sh_orders").fetchall()) == sorted((m,) for _, _, m in rows)
        counts = conn.execute("SELECT m, count(*), sum(customer_id) FROM sh_orders GROUP BY m").fetchall()
        assert sorted(counts) == sorted((m, 10, sum(k for k, _, x in rows if x == m)) for m in MOODS)
        assert sorted(conn.execute("SELECT DISTINCT m FROM sh_orders").fetchall()) == sorted((m,) for m in MOODS)
        assert conn.execute("SELECT m::text, count(*) FROM sh_orders GROUP BY m HAVING count(*) > 9 "
                            "ORDER BY 2, 1 LIMIT 1").fetchone() == ("happy", 10)
        assert conn.execute("SELECT count(*) FROM sh_orders WHERE m = 'ok'").fetchone() == (10,)
        for sql in ["SELECT m FROM sh_orders ORDER BY m", "SELECT max(m) FROM sh_orders"]:
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                conn.execute(sql)
        # Binary format: the value may carry the type's OID: refused.
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            conn.cursor(binary=True).execute("SELECT customer_id, m FROM sh_orders").fetchall()
        assert "user-defined type in binary format" in str(e.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)

    async def with_asyncpg():
        """asyncpg asks for enums in binary: merged where the router knows
        the column is an enum (it asks a shard about grouping keys), a clear
        0A000 otherwise; cast to text, it is merged."""
        a = await aconnect(srouter)
        try:
            grouped = await a.fetch("SELECT m, count(*) FROM sh_orders GROUP BY m")
            with pytest.raises(asyncpg.exceptions.FeatureNotSupportedError) as e:
                await a.fetch("SELECT customer_id, m FROM sh_orders WHERE customer_id > $1", 0)
            assert "user-defined type in binary format" in str(e.value)
            cast = await a.fetch("SELECT customer_id, m::text FROM sh_orders "
                                 "WHERE customer_id = ANY($1::bigint[]) ORDER BY customer_id", [1, 2, 3, 4])
            return sorted((r[0], r[1]) for r in grouped), [(r[0], r[1]) for r in cast]
        finally:
            await a.close()

    grouped, cast = run_async(with_asyncpg())
    assert grouped == sorted((m, 10) for m in MOODS)
    assert cast == [(k, MOODS[k % 4]) for k in range(1, 5)]
