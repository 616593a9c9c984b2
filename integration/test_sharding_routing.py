"""Routing by shard key (SPEC §5 "Sharding", issue 17, first half) against
three real PostgreSQL primaries: the session cluster's primary is shard 0,
two PostgreSQL servers of this module's own are shards 1 and 2.

Rows must land where PostgreSQL's own PARTITION BY HASH puts them (checked
with satisfies_hash_partition() on every shard), point statements must run
on exactly the shard their key names — simple and extended protocol, text
and binary parameters, asyncpg prepared statements — and everything that
would need several shards is refused with 0A000 rather than answered from
one shard."""
from __future__ import annotations

import struct
import uuid

import asyncpg
import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, refusal_in_and_out_of_transaction, run_async, sqlstate
from harness.pg import APP_DB, APP_PASSWORD, APP_USER
from harness.shards import shard_databases, three_shards

PORT = "inet_server_port()"

TABLES = """
DROP TABLE IF EXISTS sh_orders, sh_users, sh_devices, sh_regions, sh_countries, sh_items;
CREATE TABLE sh_orders (customer_id bigint, note text);
CREATE TABLE sh_items (customer_id bigint, item text);
CREATE TABLE sh_users (name text, age int);
CREATE TABLE sh_devices (id uuid, label text);
CREATE TABLE sh_regions (region varchar, v int);
CREATE TABLE sh_countries (code text);
GRANT ALL ON sh_orders, sh_users, sh_devices, sh_regions, sh_countries, sh_items TO app;
-- Ground truth for placement: PostgreSQL's own hash partitioning.
DROP TABLE IF EXISTS sh_hp_int8, sh_hp_text, sh_hp_uuid;
CREATE TABLE sh_hp_int8 (k bigint) PARTITION BY HASH (k);
CREATE TABLE sh_hp_text (k text) PARTITION BY HASH (k);
CREATE TABLE sh_hp_uuid (k uuid) PARTITION BY HASH (k);
"""


@pytest.fixture(scope="module")
def shards(cluster):
    with three_shards(cluster, "shard", TABLES,
                      "DROP TABLE IF EXISTS sh_orders, sh_users, sh_devices, sh_regions, sh_countries, "
                      "sh_items, sh_hp_int8, sh_hp_text, sh_hp_uuid") as servers:
        yield servers


SHARDED = [
    {"database": "app", "name": "sh_orders", "column": "customer_id", "data_type": "bigint"},
    {"database": "app", "name": "sh_items", "column": "customer_id", "data_type": "bigint"},
    {"database": "app", "name": "sh_users", "column": "name", "data_type": "text"},
    {"database": "app", "name": "sh_devices", "column": "id", "data_type": "uuid"},
    {"database": "app", "name": "sh_regions", "column": "region", "data_type": "varchar", "mapping": "list",
     "rules": [{"values": ["eu", "uk"], "shard": 1}, {"values": ["us"], "shard": 2}]},
]


def start_router(routers, shards, general=None):
    dbs = shard_databases(shards)
    return routers.start(databases=dbs, general=general or {}, sharded_tables=SHARDED,
                         reference_tables=[{"database": "app", "names": ["sh_countries"]}])


@pytest.fixture
def srouter(routers, shards):
    r = start_router(routers, shards)
    yield r
    for s in shards:
        with s.connect(APP_DB) as conn:
            conn.execute("TRUNCATE sh_orders, sh_users, sh_devices, sh_regions, sh_countries, sh_items")


def hash_shard(server, table: str, n: int, value) -> int:
    """The remainder PostgreSQL's hash partitioning gives `value` among n."""
    cast = {"sh_hp_int8": "bigint", "sh_hp_text": "text", "sh_hp_uuid": "uuid"}[table]
    with server.connect(APP_DB) as conn:
        for r in range(n):
            if conn.execute(f"SELECT satisfies_hash_partition('{table}'::regclass, %s, %s, %s::{cast})",
                            (n, r, value)).fetchone()[0]:
                return r
    raise AssertionError("no remainder")


def port_of(shards, i):
    return shards[i].port


def per_shard(shards, sql):
    """`sql`'s rows on each shard, read directly."""
    out = []
    for s in shards:
        with s.connect(APP_DB) as conn:
            out.append(conn.execute(sql).fetchall())
    return out


def refused(conn, sql, params=None, code="0A000"):
    with pytest.raises(psycopg.Error) as err:
        conn.execute(sql, params)
    assert sqlstate(err.value) == code, str(err.value)
    return str(err.value)


def test_rows_land_where_postgresql_hash_puts_them(srouter, shards):
    with connect(srouter.dsn()) as conn:
        for k in range(1, 61):
            conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k}, 'n{k}')")
        for name in ["a", "b", "c", "d", "e", "f", "", "grüße", "日本"]:
            conn.execute("INSERT INTO sh_users (name, age) VALUES (%s, 1)", (name,))
        for _ in range(30):
            conn.execute("INSERT INTO sh_devices (id, label) VALUES (%s, 'x')", (uuid.uuid4(),))
    counts = []
    for i, s in enumerate(shards):
        with s.connect(APP_DB) as conn:
            for table, hp, col in [("sh_orders", "sh_hp_int8", "customer_id"), ("sh_users", "sh_hp_text", "name"),
                                   ("sh_devices", "sh_hp_uuid", "id")]:
                bad = conn.execute(f"SELECT count(*) FROM {table} WHERE NOT satisfies_hash_partition("
                                   f"'{hp}'::regclass, 3, {i}, {col})").fetchone()[0]
                assert bad == 0, f"{table} rows on shard {i} that PostgreSQL would place elsewhere"
            counts.append(conn.execute("SELECT count(*) FROM sh_orders").fetchone()[0])
    assert sum(counts) == 60 and all(c > 0 for c in counts), counts  # really spread


def test_point_statements_run_on_the_keys_shard(srouter, shards):
    with connect(srouter.dsn()) as conn:
        for k in [1, 2, 3, 7, 100, -5]:
            want = port_of(shards, hash_shard(shards[0], "sh_hp_int8", 3, k))
            conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k}, 'p')")
            got = conn.execute(f"SELECT {PORT}, note FROM public.sh_orders WHERE customer_id = {k}").fetchall()
            assert got == [(want, "p")]
            # Key on the right, alias, AND with other terms, IN of one shard.
            assert conn.execute(f"SELECT {PORT} FROM sh_orders x WHERE note = 'p' AND {k} = x.customer_id"
                                ).fetchone()[0] == want
            assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id IN ({k}, {k})").fetchone()[0] \
                == want
            assert conn.execute(f"UPDATE sh_orders SET note = 'u' WHERE customer_id = {k} RETURNING {PORT}"
                                ).fetchone()[0] == want
            assert conn.execute(f"DELETE FROM sh_orders WHERE customer_id = {k} RETURNING {PORT}"
                                ).fetchone()[0] == want


def test_extended_protocol_text_and_binary_parameters(srouter, shards):
    with connect(srouter.dsn()) as conn:
        for binary in (False, True):
            for k in [4, 5, 6, 2**40]:
                want = port_of(shards, hash_shard(shards[0], "sh_hp_int8", 3, k))
                cur = conn.cursor(binary=binary)
                cur.execute("INSERT INTO sh_orders (customer_id, note) VALUES (%s, %s)", (k, "e"))
                cur.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = %s", (k,))
                assert cur.fetchone()[0] == want
                # = ANY of an array parameter whose keys share one shard.
                cur.execute(f"SELECT {PORT}, count(*) FROM sh_orders WHERE customer_id = ANY(%s) GROUP BY 1",
                            ([k, k],))
                assert cur.fetchall() == [(want, 1)]
                cur.execute("DELETE FROM sh_orders WHERE customer_id = %s", (k,))
            for name in ["a", "b", "zz"]:
                want = port_of(shards, hash_shard(shards[0], "sh_hp_text", 3, name))
                cur = conn.cursor(binary=binary)
                cur.execute("INSERT INTO sh_users (name, age) VALUES (%s, 1)", (name,))
                cur.execute(f"SELECT {PORT} FROM sh_users WHERE name = %s", (name,))
                assert cur.fetchone()[0] == want
            u = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
            want = port_of(shards, hash_shard(shards[0], "sh_hp_uuid", 3, u))
            cur = conn.cursor(binary=binary)
            cur.execute("INSERT INTO sh_devices (id, label) VALUES (%s, 'd')", (u,))
            cur.execute(f"SELECT {PORT} FROM sh_devices WHERE id = %s", (u,))
            assert cur.fetchone()[0] == want


def test_asyncpg_prepared_statements_route_by_each_execution(srouter, shards):
    async def go():
        conn = await aconnect(srouter)
        try:
            stmt = await conn.prepare(f"SELECT {PORT} FROM sh_orders WHERE customer_id = $1 OR $1 IS NULL LIMIT 1")
            ins = await conn.prepare("INSERT INTO sh_orders (customer_id, note) VALUES ($1, $2)")
            seen = {}
            for k in range(1, 13):
                await ins.fetch(k, "a")
                seen[k] = await conn.fetchval(f"SELECT {PORT} FROM sh_orders WHERE customer_id = $1", k)
            return seen
        finally:
            await conn.close()
    seen = run_async(go())
    for k, port in seen.items():
        assert port == port_of(shards, hash_shard(shards[0], "sh_hp_int8", 3, k)), k
    assert len(set(seen.values())) == 3


def test_sql_prepare_execute_routes_by_the_execute_arguments(srouter, shards):
    """SPEC: prepared statements, PREPARE/EXECUTE included, still work on
    sharded databases. An EXECUTE's key values are its arguments."""
    with connect(srouter.dsn()) as conn:
        conn.execute("PREPARE ins(bigint, text) AS INSERT INTO sh_orders (customer_id, note) VALUES ($1, $2)")
        conn.execute(f"PREPARE sel(bigint) AS SELECT {PORT}, note FROM sh_orders WHERE customer_id = $1")
        conn.execute("PREPARE upd(text, bigint) AS UPDATE sh_orders SET note = $1 WHERE customer_id = $2 "
                     "RETURNING customer_id, note")
        conn.execute("PREPARE uins(text) AS INSERT INTO sh_users (name, age) VALUES ($1, 1)")
        conn.execute(f"PREPARE usel(text) AS SELECT {PORT}, age FROM sh_users WHERE name = $1")
        for k in range(1, 13):
            conn.execute(f"EXECUTE ins({k}, 'n{k}')")
        for k in range(1, 13):
            want = port_of(shards, hash_shard(shards[0], "sh_hp_int8", 3, k))
            assert conn.execute(f"EXECUTE sel({k})").fetchall() == [(want, f"n{k}")], k
        assert conn.execute("EXECUTE sel('7'::bigint)").fetchall()[0][1] == "n7"
        assert conn.execute("EXECUTE upd('u', 5)").fetchall() == [(5, "u")]
        assert conn.execute("EXECUTE sel(5)").fetchall()[0][1] == "u"
        for name in ["a", "zz", "grüße"]:
            conn.execute(f"EXECUTE uins('{name}')")
            want = port_of(shards, hash_shard(shards[0], "sh_hp_text", 3, name))
            assert conn.execute(f"EXECUTE usel('{name}')").fetchall() == [(want, 1)]
        # Inside a transaction writing on several shards, too.
        conn.execute("BEGIN")
        conn.execute("EXECUTE ins(20, 'tx')")
        conn.execute("EXECUTE ins(21, 'tx')")
        assert conn.execute("EXECUTE sel(21)").fetchall()[0][1] == "tx"
        conn.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM sh_orders WHERE note = 'tx'").fetchone() == (2,)
        # A bad key value gets PostgreSQL's own error.
        refused(conn, "EXECUTE sel('x')", code="22P02")
        # What would need several shards is still refused, never answered
        # from one shard.
        conn.execute("PREPARE all_rows(int) AS SELECT count(*) FROM sh_orders WHERE length(note) > $1")
        assert "several shards" in refused(conn, "EXECUTE all_rows(0)")
        assert "constant" in refused(conn, "EXECUTE sel(1 + 2)")
    placed = per_shard(shards, "SELECT customer_id FROM sh_orders")
    assert sorted(k for rows in placed for (k,) in rows) == list(range(1, 13)) + [20, 21]


def test_statements_that_cannot_be_answered_exactly_are_refused(srouter, shards):
    """What needs several shards and is not answered exactly is refused with
    0A000 (what several shards do answer is in test_sharding_fanout.py)."""
    with connect(srouter.dsn()) as conn:
        a, b = 1, 2
        assert hash_shard(shards[0], "sh_hp_int8", 3, a) != hash_shard(shards[0], "sh_hp_int8", 3, b)
        msg = refused(conn, f"UPDATE sh_orders SET customer_id = {b} WHERE customer_id = {a}")
        assert "another shard" in msg
        # Without a column list, the key's position comes from the table.
        conn.execute(f"INSERT INTO sh_orders VALUES ({b}, 'no column list')")
        assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = {b}").fetchone()[0] == \
            shards[hash_shard(shards[0], "sh_hp_int8", 3, b)].port
        msg = refused(conn, "INSERT INTO sh_users VALUES (DEFAULT)")
        assert "must be a constant or a parameter" in msg
        msg = refused(conn, "INSERT INTO sh_orders (note) VALUES ('no key')")
        assert "add the shard key" in msg
        refused(conn, "INSERT INTO sh_orders (customer_id) SELECT 1")
        refused(conn, f"SELECT (SELECT count(*) FROM sh_orders), {PORT}")
        refused(conn, "SELECT * FROM sh_orders a JOIN sh_items b ON a.note = b.item")
        refused(conn, "UPDATE sh_orders SET note = 'x' WHERE note IN (SELECT item FROM sh_items)")
        refused(conn, "LOCK TABLE sh_orders")
        # The session goes on, and a key-preserving UPDATE is fine.
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({a}, 'k')")
        assert conn.execute(f"UPDATE sh_orders SET customer_id = {a}, note = 'm' WHERE customer_id = {a}"
                            ).rowcount == 1


def test_upserts_and_data_modifying_with_keep_rows_on_their_shard(srouter, shards):
    """INSERT ... ON CONFLICT DO UPDATE may not move a row's key to another
    shard; an INSERT inside WITH runs on its key's shard; a data-modifying
    WITH that would need several shards is refused with 0A000."""
    a, b = 7, 7000
    sa, sb = (hash_shard(shards[0], "sh_hp_int8", 3, k) for k in (a, b))
    assert sa != sb
    for s in shards:
        with s.connect(APP_DB) as conn:
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS sh_orders_key ON sh_orders (customer_id)")
    try:
        with connect(srouter.dsn()) as conn:
            conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({a}, 'a')")
            upsert = f"INSERT INTO sh_orders (customer_id, note) VALUES ({a}, 'b') ON CONFLICT (customer_id) DO UPDATE "
            msg = refused(conn, upsert + f"SET customer_id = {b}")
            assert "another shard" in msg
            refused(conn, upsert + "SET customer_id = excluded.customer_id + 1")
            refused(conn, upsert + "SET customer_id = %s", (b,))
            # Same shard, the excluded row's own key, or other columns: fine.
            conn.execute(upsert + "SET customer_id = excluded.customer_id, note = excluded.note")
            conn.execute(upsert + f"SET customer_id = {a}, note = 'c'")
            conn.execute(upsert + "SET note = %s", ("d",))
            rows = shards[sa].connect(APP_DB).execute("SELECT customer_id, note FROM sh_orders").fetchall()
            assert rows == [(a, "d")]

            k = 21
            sk = hash_shard(shards[0], "sh_hp_int8", 3, k)
            cur = conn.execute(f"WITH w AS (INSERT INTO sh_orders (customer_id, note) VALUES ({k}, 'cte') "
                               f"RETURNING *) SELECT customer_id, {PORT} FROM w")
            assert cur.fetchall() == [(k, shards[sk].port)]
            assert conn.execute(f"SELECT note FROM sh_orders WHERE customer_id = {k}").fetchall() == [("cte",)]
            # The same without a column list (the columns are learnt).
            conn.execute(f"WITH w AS (INSERT INTO sh_items VALUES ({k}, 'cte')) SELECT 1")
            assert conn.execute(f"SELECT {PORT} FROM sh_items WHERE customer_id = {k}").fetchone()[0] == \
                shards[sk].port
            # Rows for two shards, a keyless write, a key moved, a reference
            # table written: no exact single-shard run exists.
            refused(conn, f"WITH w AS (INSERT INTO sh_orders (customer_id, note) VALUES ({a}, 'x'), ({b}, 'y') "
                          "RETURNING *) SELECT * FROM w")
            refused(conn, f"WITH w AS (INSERT INTO sh_items (customer_id, item) VALUES ({b}, 'x')) "
                          f"INSERT INTO sh_orders (customer_id, note) VALUES ({a}, 'y')")
            refused(conn, "WITH d AS (DELETE FROM sh_orders WHERE note = 'x' RETURNING *) SELECT count(*) FROM d")
            refused(conn, f"WITH u AS (UPDATE sh_orders SET customer_id = {b} WHERE customer_id = {a} "
                          "RETURNING *) SELECT * FROM u")
            refused(conn, f"WITH c AS (INSERT INTO sh_countries VALUES ('fr')) "
                          f"SELECT * FROM sh_orders WHERE customer_id = {a}")
            # One shard: fine.
            got = conn.execute(f"WITH u AS (UPDATE sh_orders SET note = 'e' WHERE customer_id = {a} RETURNING *) "
                               f"SELECT note, {PORT} FROM u").fetchall()
            assert got == [("e", shards[sa].port)]
            counts = [s.connect(APP_DB).execute("SELECT count(*) FROM sh_orders").fetchone()[0] for s in shards]
            assert sum(counts) == 2, counts
    finally:
        for s in shards:
            with s.connect(APP_DB) as conn:
                conn.execute("DROP INDEX IF EXISTS sh_orders_key")


def test_a_join_not_on_the_keys_with_keys_on_two_shards_is_refused(srouter, shards):
    """Tables not equated on their keys meet only where one shard holds the
    rows of both: keys on two shards cannot be joined exactly."""
    a, c = 1, 3
    sa, sc = (hash_shard(shards[0], "sh_hp_int8", 3, k) for k in (a, c))
    assert sa != sc
    with connect(srouter.dsn()) as conn:
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({a}, 'o{a}')")
        conn.execute(f"INSERT INTO sh_items (customer_id, item) VALUES ({c}, 'i{c}')")
        for q in (f"SELECT o.note, i.item FROM sh_orders o, sh_items i WHERE o.customer_id = {a} "
                  f"AND i.customer_id = {c}",
                  f"SELECT o.note, i.item FROM sh_orders o JOIN sh_items i ON true WHERE o.customer_id = {a} "
                  f"AND i.customer_id = {c}",
                  f"SELECT o.note FROM sh_orders o, sh_items i WHERE o.customer_id IN ({a}, {c}) "
                  f"AND i.customer_id = {a}"):
            assert "not equated on their shard keys" in refused(conn, q)
            assert "not equated" in refused(conn, "EXPLAIN (ROUTE) " + q)
        # Keys on one shard: that shard holds both rows.
        conn.execute(f"INSERT INTO sh_items (customer_id, item) VALUES ({a}, 'i{a}')")
        assert conn.execute(f"SELECT o.note, i.item FROM sh_orders o, sh_items i WHERE o.customer_id = {a} "
                            f"AND i.customer_id = {a}").fetchall() == [(f"o{a}", f"i{a}")]


def test_joins_and_reference_tables(srouter, shards):
    with connect(srouter.dsn()) as conn:
        k = 7
        want = port_of(shards, hash_shard(shards[0], "sh_hp_int8", 3, k))
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k}, 'o')")
        conn.execute(f"INSERT INTO sh_items (customer_id, item) VALUES ({k}, 'i')")
        row = conn.execute(f"SELECT o.note, i.item, {PORT} FROM sh_orders o JOIN sh_items i "
                           f"ON i.customer_id = o.customer_id WHERE o.customer_id = {k}").fetchone()
        assert row == ("o", "i", want)
        # Joined but not on the key: both tables need their own key.
        refused(conn, f"SELECT * FROM sh_orders o JOIN sh_items i ON i.item = o.note WHERE o.customer_id = {k}")
        # Reference tables: reads go to one shard, alone or joined with a keyed table.
        assert conn.execute("SELECT count(*) FROM sh_countries").fetchone()[0] == 0
        assert conn.execute(f"SELECT {PORT} FROM sh_orders o, sh_countries c WHERE o.customer_id = {k} "
                            f"UNION ALL SELECT {PORT} LIMIT 1").fetchone()[0] == want


def test_bad_key_values_get_postgresqls_errors(srouter, shards):
    with connect(srouter.dsn()) as conn:
        msg = refused(conn, "SELECT * FROM sh_orders WHERE customer_id = 'x'", code="22P02")
        assert 'invalid input syntax for type bigint: "x"' in msg
        msg = refused(conn, "SELECT * FROM sh_orders WHERE customer_id = '9223372036854775808'", code="22003")
        assert "out of range for type bigint" in msg
        refused(conn, "SELECT * FROM sh_devices WHERE id = 'nope'", code="22P02")
        refused(conn, "SELECT * FROM sh_orders WHERE customer_id = %s", ("y",), code="22P02")
        msg = refused(conn, "INSERT INTO sh_regions (region, v) VALUES ('jp', 1)", code="22023")
        assert "'jp'" in msg
        conn.execute("INSERT INTO sh_regions (region, v) VALUES ('uk', 1), ('eu', 2)")
        conn.execute("INSERT INTO sh_regions (region, v) VALUES ('us', 3)")
        assert conn.execute(f"SELECT {PORT} FROM sh_regions WHERE region = 'uk'").fetchone()[0] == shards[1].port
        assert conn.execute(f"SELECT {PORT} FROM sh_regions WHERE region = 'us'").fetchone()[0] == shards[2].port


def test_text_keys_in_another_client_encoding_are_placed_where_postgresql_hashes_them(srouter, shards):
    """A session in client_encoding LATIN1: PostgreSQL converts its text to
    the database's UTF-8 and hashes that. The router reads the session's
    text (literals and text parameters) as LATIN1 too, so a key lands
    where a UTF8 session's same key lands, and where PostgreSQL's hash
    puts it — 'Ã©' is C3 A9 in LATIN1, never the 'é' those bytes are in
    UTF-8. In SQL_ASCII, which the router does not read, a non-ASCII key
    is refused (0A000), never hashed as bytes the server may see as other
    text."""
    names = ["Ã©", "café", "naïve", "Ã±a", "grüße", "Øre"]
    with connect(srouter.dsn()) as conn:
        conn.execute("SET client_encoding = 'LATIN1'")
        for name in names:
            # A literal (simple query), then a text parameter.
            conn.execute(f"INSERT INTO sh_users (name, age) VALUES ('{name}', 1)")
            conn.execute("INSERT INTO sh_users (name, age) VALUES (%s, 2)", (name,))
        conn.execute("SET pgrouter.sharding_key = 'café'")
        assert conn.execute("SELECT count(*) FROM sh_users WHERE age < 3 AND name LIKE 'caf%'").fetchone()[0] == 2
        conn.execute("RESET pgrouter.sharding_key")
    with connect(srouter.dsn()) as utf8:
        for name in names:
            utf8.execute("INSERT INTO sh_users (name, age) VALUES (%s, 3)", (name,))
    with connect(srouter.dsn()) as conn:
        conn.execute("SET client_encoding = 'LATIN1'")
        for name in names:
            # A point query: one shard, which has all three rows.
            rows = conn.execute(f"SELECT age, {PORT} FROM sh_users WHERE name = %s ORDER BY age",
                                (name,)).fetchall()
            assert [r[0] for r in rows] == [1, 2, 3], (name, rows)
            assert len({r[1] for r in rows}) == 1, (name, rows)
        # On every shard: the statement goes out in LATIN1 to each.
        assert conn.execute("SELECT count(*) FROM sh_users WHERE name LIKE '%é%'").fetchone() == (3,)
        conn.execute("SET client_encoding = 'SQL_ASCII'")
        refused(conn, b"INSERT INTO sh_users (name, age) VALUES ('\xc3\xa9', 4)")
    for i, s in enumerate(shards):
        with s.connect(APP_DB) as c:
            bad = c.execute("SELECT name FROM sh_users WHERE NOT satisfies_hash_partition("
                            "'sh_hp_text'::regclass, 3, %s, name)", (i,)).fetchall()
            assert bad == [], f"rows on shard {i} that PostgreSQL would place elsewhere: {bad}"
    with connect(srouter.dsn()) as conn:
        got = sorted(r[0] for r in conn.execute("SELECT name FROM sh_users").fetchall())
    assert got == sorted(names * 3)


def test_copy_text_keys_in_latin1_are_placed_where_postgresql_hashes_them(srouter, shards):
    """COPY FROM STDIN split per shard in a LATIN1 session: each row's key
    is read as LATIN1, as the server converts it."""
    names = ["café", "naïve", "Ã©", "Øre", "plain"]
    with connect(srouter.dsn()) as conn:
        conn.execute("SET client_encoding = 'LATIN1'")
        with conn.cursor().copy("COPY sh_users (name, age) FROM STDIN") as copy:
            for name in names:
                copy.write_row((name, 7))
        for name in names:
            assert conn.execute("SELECT age FROM sh_users WHERE name = %s", (name,)).fetchall() == [(7,)]
    for i, s in enumerate(shards):
        with s.connect(APP_DB) as c:
            bad = c.execute("SELECT name FROM sh_users WHERE NOT satisfies_hash_partition("
                            "'sh_hp_text'::regclass, 3, %s, name)", (i,)).fetchall()
            assert bad == [], f"rows on shard {i} that PostgreSQL would place elsewhere: {bad}"


def test_query_text_not_utf8_is_22021_and_fails_the_transaction(srouter, shards):
    """Text that is not UTF-8 (client_encoding UTF8) gets PostgreSQL's 22021
    and the connection goes on; in a transaction block the transaction
    fails, even right after a BEGIN the router has not sent yet, and in an
    extended batch the statements before it run and the rest is skipped
    to the Sync, on one shard or several."""
    bad = b"SELECT 'a\xff' FROM sh_orders"
    message = 'invalid byte sequence for encoding "UTF8": 0xff'
    with connect(srouter.dsn()) as conn:
        assert refused(conn, bad, code="22021") == message
        assert conn.execute("SELECT 1").fetchone() == (1,)
        for first in [None, "INSERT INTO sh_orders VALUES (1, 'x')"]:
            conn.execute("BEGIN")
            if first:
                conn.execute(first)
            refused(conn, bad, code="22021")
            refused(conn, "SELECT 1", code="25P02")
            assert conn.info.transaction_status.name == "INERROR"
            conn.execute("ROLLBACK")
        assert conn.execute("SELECT count(*) FROM sh_orders").fetchone() == (0,)

    def insert(key: str) -> bytes:
        return (wire.parse_message("INSERT INTO sh_orders VALUES ($1::bigint, 'y')")
                + wire.bind_message([key]) + wire.execute_message())
    bad_parse = wire.message(b"P", b"\0" + bad + b"\0\0\0") + wire.bind_message([]) + wire.execute_message()
    raw = wire.connect(srouter.port, APP_USER, APP_DB, APP_PASSWORD)
    try:
        # One shard: as PostgreSQL answers it.
        raw.send(insert("1") + bad_parse + insert("2") + wire.sync_message())
        [batch] = raw.read_batches(1)
        assert [m.kind for m in batch] == [b"1", b"2", b"C", b"E", b"Z"], batch
        assert wire.errors_in(batch)[0]["M"] == message and batch[-1].body == b"I"
        # Several shards in a transaction block: the batch fails whole
        # (its statements on several shards are taken together), and so
        # does the transaction.
        raw.simple_query("BEGIN")
        raw.send(insert("1") + insert("2") + bad_parse + wire.sync_message())
        [batch] = raw.read_batches(1)
        assert [e["C"] for e in wire.errors_in(batch)] == ["22021"], batch
        assert batch[-1].body == b"E", batch
        with pytest.raises(wire.ServerError) as err:
            raw.simple_query("SELECT 1")
        assert err.value.sqlstate == "25P02"
        raw.simple_query("ROLLBACK")
        assert raw.simple_query("SELECT 'still here'")[0] == [["still here"]]
    finally:
        raw.close()
    with connect(srouter.dsn()) as conn:
        assert conn.execute("SELECT customer_id FROM sh_orders").fetchall() == []


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_refusal_in_a_transaction_gets_the_same_error(srouter, shards, protocol):
    """A key value no rule covers (22023), refused inside a transaction:
    raised through the server so that the transaction fails, but the
    client gets the router's error exactly as outside a transaction (no
    PL/pgSQL CONTEXT line, no source fields of the raise)."""
    sql, params = "INSERT INTO sh_regions (region, v) VALUES ('jp', 1)", None
    if protocol == "extended":
        sql, params = "INSERT INTO sh_regions (region, v) VALUES (%s, 1)", ("jp",)
    with connect(srouter.dsn()) as conn:
        outside, inside = refusal_in_and_out_of_transaction(conn, sql, params)
    assert outside["sqlstate"] == "22023" and outside["context"] is None, outside
    assert inside == outside


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_refusal_right_after_a_deferred_begin_fails_the_transaction(routers, shards, protocol):
    """The router holds a BEGIN back until a statement picks the shard: a
    statement refused before routing (session_state = "refuse") right after
    it must still fail the transaction (it stayed open: the next statement
    ran), with the router's error as outside a transaction."""
    router = start_router(routers, shards, general={"session_state": "refuse"})
    with connect(router.dsn()) as conn:
        outside, inside = refusal_in_and_out_of_transaction(conn, "LISTEN sh_chan", first=None,
                                                            binary=protocol == "extended")
    assert outside["sqlstate"] == "0A000" and "session_state" in outside["message_primary"], outside
    assert inside == outside


def test_hints_and_sharding_key_setting(srouter, shards):
    with connect(srouter.dsn()) as conn:
        assert conn.execute(f"/* pgrouter: shard=2 */ SELECT {PORT} FROM sh_orders LIMIT 1").fetchall() == []
        assert conn.execute(f"/* pgrouter: shard=2 */ SELECT {PORT}").fetchone()[0] == shards[2].port
        conn.execute("SET pgrouter.shard = 1")
        assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = 1 UNION ALL SELECT {PORT}"
                            ).fetchone()[0] == shards[1].port
        conn.execute("RESET pgrouter.shard")
        k = 5
        want = port_of(shards, hash_shard(shards[0], "sh_hp_int8", 3, k))
        conn.execute(f"SET pgrouter.sharding_key = '{k}'")
        assert conn.execute(f"SELECT {PORT}").fetchone()[0] == want
        # A transaction started under the key stays on its shard.
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k}, 't')")
        assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = {k}").fetchone()[0] == want
        conn.execute("COMMIT")
        conn.execute("SET pgrouter.sharding_key = 'nope'")
        refused(conn, f"SELECT {PORT}", code="22P02")
        conn.execute("RESET pgrouter.sharding_key")
        assert conn.execute(f"SELECT {PORT}").fetchone()[0] == shards[0].port  # no table: shard 0


def test_cross_shard_refuse_setting(routers, shards):
    r = start_router(routers, shards, general={"cross_shard": "refuse"})
    with connect(r.dsn()) as conn:
        msg = refused(conn, "SELECT * FROM sh_orders WHERE customer_id IN (1, 2)")
        assert 'cross_shard = "refuse"' in msg
        conn.execute("SELECT * FROM sh_orders WHERE customer_id = 1")


def test_explain_route_answers_without_running(srouter, shards):
    k = 9
    shard = hash_shard(shards[0], "sh_hp_int8", 3, k)
    with connect(srouter.dsn()) as conn:
        cur = psycopg.ClientCursor(conn)  # the simple query protocol
        cur.execute(f"EXPLAIN (ROUTE) INSERT INTO sh_orders (customer_id, note) VALUES ({k}, 'never')")
        assert [d.name for d in cur.description] == ["shard", "role", "server", "reason"]
        rows = cur.fetchall()
        assert rows == [(shard, "primary", f"127.0.0.1:{shards[shard].port}", f"sh_orders.customer_id = {k}")]
        # No shard has a replica here: reads run on the primaries, and say so.
        cur.execute(f"EXPLAIN (ROUTE) SELECT * FROM sh_orders o WHERE o.customer_id = {k}")
        assert cur.fetchall() == [(shard, "primary", f"127.0.0.1:{shards[shard].port}", f"o.customer_id = {k}")]
        cur.execute("EXPLAIN (ROUTE) SELECT 1")
        assert cur.fetchall() == [(0, "primary", f"127.0.0.1:{shards[0].port}", "no sharded table: shard 0")]
        # Without a column list the key's place is learnt from the table
        # first, as for the INSERT itself (simple, then extended protocol).
        where = (shard, "primary", f"127.0.0.1:{shards[shard].port}")
        cur.execute(f"EXPLAIN (ROUTE) INSERT INTO sh_orders VALUES ({k}, 'never')")
        assert cur.fetchall() == [(*where, f"sh_orders.customer_id = {k}")]
        assert conn.execute(f"EXPLAIN (ROUTE) INSERT INTO sh_items VALUES ({k}, 'never')").fetchall() == \
            [(*where, f"sh_items.customer_id = {k}")]
        cur.execute("/* pgrouter: shard=2 */ EXPLAIN (ROUTE) SELECT * FROM sh_orders")
        assert cur.fetchall()[0][0:2] == (2, "primary")
        cur.execute("EXPLAIN (ROUTE) SELECT * FROM sh_orders")
        assert [r[0] for r in cur.fetchall()] == [0, 1, 2]
        # The extended protocol too (psycopg's default), binary results included.
        for binary in (False, True):
            got = conn.cursor(binary=binary).execute(
                f"EXPLAIN (ROUTE) DELETE FROM sh_orders WHERE customer_id = {k}").fetchall()
            assert got == [(shard, "primary", f"127.0.0.1:{shards[shard].port}", f"sh_orders.customer_id = {k}")]
        got = conn.execute("EXPLAIN (ROUTE) UPDATE sh_orders SET note = 'x'").fetchall()
        assert [(r[0], r[1]) for r in got] == [(0, "primary"), (1, "primary"), (2, "primary")]
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        # Nothing ran.
        assert conn.execute(f"SELECT count(*) FROM sh_orders WHERE customer_id = {k}").fetchone()[0] == 0


def test_explain_route_of_a_hinted_statement_shows_the_hint(srouter, shards):
    """`EXPLAIN (ROUTE) /* pgrouter: shard=2 */ SELECT ...` explains the
    statement after it, which, run, goes to shard 2 by its hint: the route
    said shard 0 ("no sharded table") or every shard, ignoring the hint."""
    with connect(srouter.dsn()) as conn:
        cur = psycopg.ClientCursor(conn)  # the simple query protocol
        for c in (cur, conn.cursor()):
            got = c.execute("EXPLAIN (ROUTE) /* pgrouter: shard=2 */ SELECT 1").fetchall()
            assert [r[:3] for r in got] == [(2, "primary", f"127.0.0.1:{shards[2].port}")]
            assert "hint" in got[0][3]
            got = c.execute("EXPLAIN (ROUTE) /* pgrouter: shard=1 */ SELECT * FROM sh_orders").fetchall()
            assert [r[0] for r in got] == [1] and "hint" in got[0][3]
        assert conn.execute(f"/* pgrouter: shard=2 */ SELECT {PORT}").fetchone()[0] == shards[2].port


def test_explain_route_with_parameters_routes_by_the_bound_values(srouter, shards):
    """psycopg sends `EXPLAIN (ROUTE) ... = %s` as Parse/Bind/Execute with
    the key as $1: the route is the one the statement would take with those
    values (it was refused with 0A000 "parameter $1, whose value the router
    does not see here"). Nothing runs."""
    k, j = 9, 4
    sk, sj = hash_shard(shards[0], "sh_hp_int8", 3, k), hash_shard(shards[0], "sh_hp_int8", 3, j)
    with connect(srouter.dsn()) as conn:
        for binary in (False, True):
            got = conn.cursor(binary=binary).execute(
                "EXPLAIN (ROUTE) SELECT * FROM sh_orders WHERE customer_id = %s", (k,)).fetchall()
            assert got == [(sk, "primary", f"127.0.0.1:{shards[sk].port}", f"sh_orders.customer_id = {k}")]
        got = conn.execute("EXPLAIN (ROUTE) DELETE FROM sh_orders WHERE customer_id = %b", (k,)).fetchall()
        assert [r[:2] for r in got] == [(sk, "primary")]
        got = conn.execute("EXPLAIN (ROUTE) INSERT INTO sh_orders (customer_id, note) VALUES (%s, %s), (%s, %s)",
                           (k, "a", j, "b")).fetchall()
        assert sorted(r[0] for r in got) == sorted({sk, sj})
        got = conn.execute("EXPLAIN (ROUTE) SELECT * FROM sh_orders WHERE note = %s", ("x",)).fetchall()
        assert [r[0] for r in got] == [0, 1, 2]
        # Errors are the statement's own.
        with pytest.raises(psycopg.Error) as err:
            conn.execute("EXPLAIN (ROUTE) SELECT * FROM sh_regions WHERE region = %s", ("jp",))
        assert sqlstate(err.value) == "22023" and "jp" in str(err.value)
        with pytest.raises(psycopg.Error) as err:
            conn.execute("EXPLAIN (ROUTE) SELECT * FROM sh_orders WHERE customer_id = %s", ("x",))
        assert sqlstate(err.value) == "22P02"
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM sh_orders").fetchone() == (0,)
    # psycopg prepares a statement run often (prepare_threshold, 5 by
    # default) by name, with Parse and Sync first: that name is answered too
    # (it got PostgreSQL's 42601 "unrecognized EXPLAIN option").
    with connect(srouter.dsn(), prepare_threshold=1) as conn:
        for key, shard in [(k, sk), (j, sj), (k, sk)] * 2:
            got = conn.execute("EXPLAIN (ROUTE) SELECT * FROM sh_orders WHERE customer_id = %s", (key,)).fetchall()
            assert [r[:2] for r in got] == [(shard, "primary")], key
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_explain_route_of_statements_postgresql_cannot_explain(srouter, shards):
    """DDL, TRUNCATE, COPY, VACUUM: PostgreSQL's EXPLAIN does not take them
    (a syntax error), but EXPLAIN (ROUTE) is the router's: it shows where
    they run — every shard — and runs nothing, in either protocol."""
    everywhere = [(i, "primary", f"127.0.0.1:{s.port}") for i, s in enumerate(shards)]
    with connect(srouter.dsn()) as conn:
        cur = psycopg.ClientCursor(conn)  # the simple query protocol
        for sql in ["CREATE TABLE sh_never (a int)", "CREATE INDEX CONCURRENTLY sh_never_i ON sh_orders (note)",
                    "TRUNCATE sh_orders", "ALTER TABLE sh_orders ADD COLUMN never int",
                    "COPY sh_orders (customer_id, note) FROM STDIN", "VACUUM sh_orders"]:
            for c in (cur, conn.cursor()):
                c.execute(f"EXPLAIN (ROUTE) {sql}")
                assert [d.name for d in c.description] == ["shard", "role", "server", "reason"], sql
                assert [r[:3] for r in c.fetchall()] == everywhere, sql
        cur.execute("-- why\nexplain ( route ) DROP TABLE sh_orders")
        assert len(cur.fetchall()) == 3
        # Not the option: PostgreSQL's own answer.
        with pytest.raises(psycopg.Error) as err:
            cur.execute("EXPLAIN (ROUTE) CREATE TABLE")
        assert sqlstate(err.value) == "42601"
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    for s in shards:
        with s.connect(APP_DB) as c:
            assert c.execute("SELECT to_regclass('sh_never') IS NULL AND to_regclass('sh_orders') IS NOT NULL "
                             "AND to_regclass('sh_never_i') IS NULL").fetchone()[0]


def test_explain_route_through_asyncpg_named_statements(srouter, shards):
    """asyncpg prepares every statement by name (Parse, Describe, Flush),
    then Binds and Executes it: the router answers both batches, again on
    the statement cache's second run, and the name does not outlive a
    Parse of other text under it."""
    k = 9
    shard = hash_shard(shards[0], "sh_hp_int8", 3, k)
    want = [(shard, "primary", f"127.0.0.1:{shards[shard].port}", f"sh_orders.customer_id = {k}")]

    async def go():
        c = await aconnect(srouter)
        try:
            sql = f"EXPLAIN (ROUTE) SELECT * FROM sh_orders WHERE customer_id = {k}"
            first = [tuple(r) for r in await c.fetch(sql)]
            again = [tuple(r) for r in await c.fetch(sql)]  # the cached statement
            row = tuple(await c.fetchrow("EXPLAIN (ROUTE) UPDATE sh_orders SET note = 'x'"))
            stmt = await c.prepare("EXPLAIN (ROUTE) SELECT 1")
            one = [tuple(r) for r in await stmt.fetch()]
            cols = [a.name for a in stmt.get_attributes()]
            plain = await c.fetchval("SELECT count(*) FROM sh_orders WHERE customer_id = $1", k)
            return first, again, row, one, cols, plain
        finally:
            await c.close()
    first, again, row, one, cols, plain = run_async(go())
    assert first == again == want
    assert row[:2] == (0, "primary")
    assert one == [(0, "primary", f"127.0.0.1:{shards[0].port}", "no sharded table: shard 0")]
    assert cols == ["shard", "role", "server", "reason"]
    assert plain == 0


def test_explain_route_with_parameters_through_asyncpg(srouter, shards):
    """asyncpg prepares `EXPLAIN (ROUTE) ... = $1` with Parse, Describe
    statement and Flush, and encodes its arguments by the parameter types
    it is told: the router asks a shard for them (a Parse of the explained
    statement; nothing runs) and answers the route for the bound values —
    it used to pass the statement on, and PostgreSQL answered 42601
    (unrecognized EXPLAIN option "route"). A statement PostgreSQL rejects
    fails at the prepare, with PostgreSQL's error."""
    k, j = 9, 4
    sk, sj = hash_shard(shards[0], "sh_hp_int8", 3, k), hash_shard(shards[0], "sh_hp_int8", 3, j)

    async def go():
        c = await aconnect(srouter)
        try:
            sql = "EXPLAIN (ROUTE) SELECT * FROM sh_orders WHERE customer_id = $1"
            got = [tuple(r) for r in await c.fetch(sql, k)]
            again = [tuple(r) for r in await c.fetch(sql, j)]  # the cached statement
            stmt = await c.prepare("EXPLAIN (ROUTE) UPDATE sh_orders SET note = $2 WHERE customer_id = $1")
            types = [t.name for t in stmt.get_parameters()]
            upd = [tuple(r) for r in await stmt.fetch(k, "x")]
            text = [tuple(r) for r in await c.fetch(
                "EXPLAIN (ROUTE) SELECT * FROM sh_users WHERE name = $1", "a")]
            every = [tuple(r) for r in await c.fetch(
                "EXPLAIN (ROUTE) SELECT * FROM sh_orders WHERE note = $1", "x")]
            with pytest.raises(asyncpg.PostgresError) as err:
                await c.fetch("EXPLAIN (ROUTE) SELECT * FROM sh_no_such_table WHERE a = $1", 1)
            missing = sqlstate(err.value)
            with pytest.raises(asyncpg.PostgresError) as err:
                await c.fetch("EXPLAIN (ROUTE) SELECT no_such_col FROM sh_orders WHERE customer_id = $1", 1)
            no_col = sqlstate(err.value)
            plain = await c.fetchval("SELECT count(*) FROM sh_orders WHERE customer_id = $1", k)
            return got, again, types, upd, text, every, missing, no_col, plain
        finally:
            await c.close()
    got, again, types, upd, text, every, missing, no_col, plain = run_async(go())
    assert got == [(sk, "primary", f"127.0.0.1:{shards[sk].port}", f"sh_orders.customer_id = {k}")]
    assert again == [(sj, "primary", f"127.0.0.1:{shards[sj].port}", f"sh_orders.customer_id = {j}")]
    assert types == ["int8", "text"]
    assert [r[:2] for r in upd] == [(sk, "primary")]
    assert [r[3] for r in text] == ["sh_users.name = 'a'"], text
    assert [r[0] for r in every] == [0, 1, 2]
    assert (missing, no_col) == ("42P01", "42703")
    assert plain == 0


def test_explain_route_names_the_replica_a_read_would_use(routers, shards, cluster):
    dbs = shard_databases(shards)
    dbs.append({"name": "app", "host": "127.0.0.1", "port": cluster.replica.port, "database_name": "app",
                "role": "replica", "shard": 0})
    r = routers.start(databases=dbs, sharded_tables=SHARDED)
    with connect(r.dsn()) as conn:
        got = conn.execute("EXPLAIN (ROUTE) SELECT * FROM sh_orders").fetchall()
        assert [(row[0], row[1], row[2]) for row in got] == [
            (0, "replica", f"127.0.0.1:{cluster.replica.port}"),
            (1, "primary", f"127.0.0.1:{shards[1].port}"),
            (2, "primary", f"127.0.0.1:{shards[2].port}")]


def test_read_only_transactions_run_on_each_shards_replica(routers, shards, cluster):
    """`BEGIN READ ONLY` (or a session with default_transaction_read_only)
    runs its transaction on a replica, per shard: shard 0's replica here,
    the primary of shards without one (read-only all the same). The
    transaction's BEGIN used to be sent to shard 0's primary."""
    from harness.routes import wait_replayed
    dbs = shard_databases(shards)
    dbs.append({"name": "app", "host": "127.0.0.1", "port": cluster.replica.port, "database_name": "app",
                "role": "replica", "shard": 0})
    r = routers.start(databases=dbs, sharded_tables=SHARDED)
    wait_replayed(cluster)
    a = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 0)
    b = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 1)
    probe = (f"SELECT {PORT}, current_setting('transaction_read_only') FROM sh_orders WHERE customer_id = %s "
             f"UNION ALL SELECT {PORT}, current_setting('transaction_read_only')")
    with connect(r.dsn()) as conn:
        for begin, setting in [("BEGIN READ ONLY", None), ("START TRANSACTION READ ONLY", None),
                               ("BEGIN", "default_transaction_read_only = on")]:
            if setting:
                conn.execute(f"SET {setting}")
            conn.execute(begin)
            assert conn.execute(probe, (a,)).fetchall() == [(cluster.replica.port, "on")], begin
            assert conn.execute(probe, (b,)).fetchall() == [(shards[1].port, "on")], begin
            refused(conn, "INSERT INTO sh_orders (customer_id) VALUES (%s)", (b,), code="25006")
            conn.execute("ROLLBACK")
            # Its first statement on shard 1, then shard 0 joins: a replica there too.
            conn.execute(begin)
            assert conn.execute(probe, (b,)).fetchall() == [(shards[1].port, "on")], begin
            assert conn.execute(probe, (a,)).fetchall() == [(cluster.replica.port, "on")], begin
            conn.execute("COMMIT")
        conn.execute("RESET default_transaction_read_only")
        # A read-write transaction stays on the primaries.
        conn.execute("BEGIN")
        assert conn.execute(probe, (a,)).fetchall() == [(shards[0].port, "off")]
        conn.execute("COMMIT")


def test_reload_cannot_change_the_shard_count(srouter, shards):
    from harness.ops import reload_error_text, reload_marks, wait_reload
    cfg = dict(srouter.config)
    cfg["databases"] = cfg["databases"] + [{**cfg["databases"][0], "shard": 3}]
    srouter.write_files(config=cfg)
    before = reload_marks(srouter)
    srouter.reload()
    assert wait_reload(srouter, before) == "error"
    text = reload_error_text(srouter, before[1])
    assert "router.toml:" in text and "databases.shard" in text and "from 3 to 4" in text, text
    # Still routing over three shards.
    k = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 2)
    with connect(srouter.dsn()) as conn:
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k}, 'r')")
        assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = {k}").fetchone()[0] \
            == shards[2].port


def test_read_only_sessions_per_shard(routers, shards):
    from harness.router import app_user
    dbs = shard_databases(shards)
    r = routers.start(databases=dbs, sharded_tables=SHARDED, users=[{**app_user(), "read_only": True}])
    k = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 1)
    with connect(r.dsn()) as conn:
        # No replicas: reads run on the key's shard primary, read-only.
        row = conn.execute(f"SELECT {PORT}, current_setting('transaction_read_only') FROM sh_orders "
                           f"WHERE customer_id = %s UNION ALL SELECT {PORT}, 'x' LIMIT 1", (k,)).fetchone()
        assert row[0] == shards[1].port
        refused(conn, "INSERT INTO sh_orders (customer_id) VALUES (%s)", (k,), code="25006")
        # Without a key: every shard, still read-only.
        assert conn.execute("SELECT customer_id FROM sh_orders WHERE note = %s", ("none",)).fetchall() == []
        refused(conn, "UPDATE sh_orders SET note = 'x'", code="25006")


def test_batches_spanning_shards_run_each_statement_on_its_shard(srouter, shards):
    a = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 0)
    b = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 1)

    async def go():
        conn = await aconnect(srouter)
        try:
            await conn.executemany("INSERT INTO sh_orders (customer_id, note) VALUES ($1, 'm')", [(a,), (a,)])
            await conn.executemany("INSERT INTO sh_orders (customer_id, note) VALUES ($1, 'm')", [(a,), (b,)])
        finally:
            await conn.close()
    run_async(go())
    with shards[0].connect(APP_DB) as conn:
        assert conn.execute("SELECT count(*) FROM sh_orders WHERE note = 'm'").fetchone()[0] == 3
    with shards[1].connect(APP_DB) as conn:
        assert conn.execute("SELECT count(*) FROM sh_orders WHERE note = 'm'").fetchone()[0] == 1


def test_null_keys_and_array_literals(srouter, shards):
    with connect(srouter.dsn()) as conn:
        conn.execute("INSERT INTO sh_orders (customer_id, note) VALUES (NULL, 'null key')")
        assert conn.execute(f"SELECT {PORT}, note FROM sh_orders WHERE customer_id IS NULL").fetchall() \
            == [(shards[0].port, "null key")]
        k = 11
        want = port_of(shards, hash_shard(shards[0], "sh_hp_int8", 3, k))
        conn.execute(f"INSERT INTO sh_orders (customer_id, note) VALUES ({k}, 'arr')")
        assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = ANY('{{{k},{k}}}')"
                            ).fetchone()[0] == want
        assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = ANY(ARRAY[{k}])").fetchone()[0] \
            == want


def test_session_mode_routes_by_key_on_every_shard(routers, shards):
    """Session mode keeps one connection per shard it used (it used to
    stay on its first shard and refuse keys elsewhere)."""
    from harness.router import app_user
    dbs = shard_databases(shards)
    r = routers.start(databases=dbs, sharded_tables=SHARDED, users=[{**app_user(), "pool_mode": "session"}])
    a = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 0)
    b = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 1)
    with connect(r.dsn()) as conn:
        assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = {a} UNION ALL SELECT {PORT}"
                            ).fetchone()[0] == shards[0].port
        assert conn.execute(f"SELECT {PORT} FROM sh_orders WHERE customer_id = {b} UNION ALL SELECT {PORT}"
                            ).fetchone()[0] == shards[1].port
        pids = {conn.execute(f"SELECT pg_backend_pid() FROM sh_orders WHERE customer_id = {k} UNION ALL "
                             f"SELECT pg_backend_pid()").fetchone()[0] for k in (a, b, a, b)}
        assert len(pids) == 2, "one connection per shard, kept for the session"


def test_a_bind_sent_after_its_batch_was_routed_is_checked_against_the_held_shard(srouter, shards):
    """The routing plans the part of an extended batch that has arrived; a
    Bind sent later in the same batch (after a Flush, once the first rows
    are back) must fit the shard the batch already runs on — the policy
    guard plans it then, and refuses one whose key is on another shard
    (the batch is one implicit transaction: its first INSERT is undone).
    A whole batch (up to its Sync) on one shard is planned once."""
    a = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 0)
    b = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 1)
    insert = "INSERT INTO sh_orders (customer_id, note) VALUES ($1, 'g')"
    conn = wire.RawConn.open(srouter.port)
    try:
        conn.startup(APP_USER, APP_DB, APP_PASSWORD)
        conn.send(wire.parse_message(insert) + wire.bind_message([str(a)]) + wire.execute_message()
                  + wire.flush_message())
        assert [conn.read_msg().kind for _ in range(3)] == [b"1", b"2", b"C"]
        conn.send(wire.bind_message([str(b)]) + wire.execute_message() + wire.sync_message())
        with pytest.raises(wire.ServerError) as err:
            conn.read_results()
        assert err.value.sqlstate == "0A000", err.value.message
        assert "is on shard 1" in err.value.message, err.value.message
        # A whole batch on one shard: both rows there.
        conn.send(wire.parse_message(insert) + wire.bind_message([str(a)]) + wire.execute_message()
                  + wire.bind_message([str(a)]) + wire.execute_message() + wire.sync_message())
        _, tags, _ = conn.read_results()
        assert tags == ["INSERT 0 1", "INSERT 0 1"]
    finally:
        conn.close()
    counts = []
    for s in shards:
        with s.connect(APP_DB) as c:
            counts.append(c.execute("SELECT count(*) FROM sh_orders WHERE note = 'g'").fetchone()[0])
    assert counts == [2, 0, 0], counts


def test_key_parameters_declared_bpchar_or_name_are_placed_by_the_value_postgresql_sees(srouter, shards):
    """A text key sent as a parameter declared `bpchar` in Parse loses its
    trailing blanks when PostgreSQL compares or stores it as text, and one
    declared `name` keeps 63 bytes: the router must place the key by that
    value, not by the bytes sent, in the point path and the general one
    (`= ANY` arrays). `"char"` (one byte kept) is refused."""
    def shard_of(v):
        return hash_shard(shards[0], "sh_hp_text", 3, v)
    base = next(f"bp{i}" for i in range(200) if shard_of(f"bp{i}") != shard_of(f"bp{i}   "))
    padded = base + "   "
    long = next(f"{'n' * 63}{i}" for i in range(200) if shard_of(f"{'n' * 63}{i}") != shard_of("n" * 63))
    BPCHAR, BPCHAR_ARRAY, NAME, CHAR = 1042, 1014, 19, 18
    conn = wire.RawConn.open(srouter.port)
    try:
        conn.startup(APP_USER, APP_DB, APP_PASSWORD)

        def run(sql, types, params):
            conn.send(wire.parse_message(sql, param_types=types) + wire.bind_message(params)
                      + wire.execute_message() + wire.sync_message())
            return conn.read_results()

        _, tags, _ = run("INSERT INTO sh_users (name, age) VALUES ($1, 1)", (BPCHAR,), [padded])
        assert tags == ["INSERT 0 1"]
        _, tags, _ = run("INSERT INTO sh_users (name, age) VALUES ($1, 2)", (NAME,), [long])
        assert tags == ["INSERT 0 1"]
        rows, _, _ = run("SELECT age, " + PORT + " FROM sh_users WHERE name = $1", (BPCHAR,), [padded])
        assert rows == [["1", str(port_of(shards, shard_of(base)))]], rows
        rows, _, _ = run("SELECT age FROM sh_users WHERE name = ANY($1)", (BPCHAR_ARRAY,), ['{"' + padded + '"}'])
        assert rows == [["1"]], rows
        rows, _, _ = run("SELECT age FROM sh_users WHERE name = $1", (NAME,), [long])
        assert rows == [["2"]], rows
        with pytest.raises(wire.ServerError) as err:
            run("SELECT age FROM sh_users WHERE name = $1::text", (CHAR,), ["bp"])
        assert err.value.sqlstate == "0A000", err.value.message
    finally:
        conn.close()
    # Each row is where PostgreSQL's hash of the stored value puts it.
    placed = per_shard(shards, "SELECT name FROM sh_users ORDER BY age")
    expected = [[], [], []]
    expected[shard_of(base)].append((base,))
    expected[shard_of("n" * 63)].append(("n" * 63,))
    assert placed == expected, placed


# ---------------------------------- batches compared with one PostgreSQL --
# The same messages sent to shard 0 directly (a PostgreSQL that has the
# tables) and through the router: the same answers, message for message
# (the rows differ: only kinds, command tags and errors are compared).
def answers(port: int, steps: list[bytes]) -> list:
    """Per step (its messages, up to one ReadyForQuery): the kinds, the
    command tags and ReadyForQuery states, and the errors' S, C and M."""
    conn = wire.connect(port, APP_USER, APP_DB, APP_PASSWORD)
    out = []
    try:
        for step in steps:
            conn.send(step)
            [batch] = conn.read_batches(1)
            out.append([(m.kind, m.body if m.kind in (b"C", b"Z") else None) for m in batch])
            out.append([{k: v for k, v in e.items() if k in "SCM"} for e in wire.errors_in(batch)])
        return out
    finally:
        conn.close()


def two_shard_keys(shards) -> tuple[int, int]:
    """Keys of sh_orders on shards 0 and 1."""
    a = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 0)
    b = next(k for k in range(1, 50) if hash_shard(shards[0], "sh_hp_int8", 3, k) == 1)
    return a, b


def insert_key(key: int) -> bytes:
    return (wire.bind_message([str(key)], statement="ins") + wire.execute_message())


PARSE_INSERT = wire.parse_message("INSERT INTO sh_orders VALUES ($1, 'b')", name="ins", param_types=(20,))
BEGIN, ROLLBACK = wire.query_message("BEGIN"), wire.query_message("ROLLBACK")


@pytest.mark.parametrize("in_tx", [False, True], ids=["batch", "transaction"])
def test_a_syntax_error_in_a_batch_on_several_shards_is_answered_in_turn(srouter, shards, in_tx):
    """A batch on two shards whose third statement does not parse: the
    router answered ParseComplete for that Parse (the statement was parsed
    again with its Bind, on a shard) and only then the error. PostgreSQL
    answers the earlier statements, then the syntax error in place of the
    ParseComplete, skips the rest, ReadyForQuery; the router must too. A
    Parse-only part of such a batch gets its ParseCompletes."""
    a, b = two_shard_keys(shards)
    batch = (PARSE_INSERT + insert_key(a) + insert_key(b)
             + wire.parse_message("SELEC oops") + wire.bind_message([]) + wire.execute_message()
             + insert_key(a) + wire.sync_message())
    first_bad = (wire.parse_message("SELEC oops") + insert_key(a) + wire.sync_message())
    steps = [batch, wire.query_message("SELECT 1"), PARSE_INSERT + wire.bind_message([str(a)], statement="ins")
             + wire.execute_message() + first_bad]
    if in_tx:
        steps = [BEGIN] + steps + [ROLLBACK]
    direct = answers(shards[0].port, steps)
    at = 2 if in_tx else 0
    assert [k for k, _ in direct[at]] == [b"1", b"2", b"C", b"2", b"C", b"E", b"Z"], direct
    assert direct[at + 1][0]["C"] == "42601", direct
    assert answers(srouter.port, steps) == direct
    with connect(srouter.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM sh_orders").fetchone() == (0,)


def test_names_not_utf8_in_batches_on_several_shards(srouter, shards):
    """A Bind or Execute whose portal name is not UTF-8, in a batch whose
    statements need several shards (a pipeline, or one statement on all
    shards): 22021 after the answers to the messages before it, the rest
    skipped, the connection kept — as PostgreSQL answers."""
    a, b = two_shard_keys(shards)
    bad_bind = wire.message(b"B", b"p\xfe\0\0" + struct.pack("!hhh", 0, 0, 0)) + wire.execute_message()
    pipeline = PARSE_INSERT + insert_key(a) + insert_key(b) + bad_bind + wire.sync_message()
    everywhere = wire.parse_message("SELECT count(*) FROM sh_orders") + bad_bind + wire.sync_message()
    bad_execute = (wire.parse_message("SELECT count(*) FROM sh_orders") + wire.bind_message([])
                   + wire.message(b"E", b"p\xff\0" + struct.pack("!i", 0)) + wire.sync_message())
    for batch in (pipeline, everywhere, bad_execute):
        for steps in ([batch, wire.query_message("SELECT 1")],
                      [BEGIN, batch, wire.query_message("SELECT 1"), ROLLBACK]):
            direct = answers(shards[0].port, steps)
            errors = direct[1] if len(steps) == 2 else direct[3]  # the batch's
            assert [e["C"] for e in errors] == ["22021"], direct
            assert answers(srouter.port, steps) == direct
    with connect(srouter.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM sh_orders").fetchone() == (0,)


def test_a_named_portal_bound_again_in_a_transaction_is_42P03(srouter, shards):
    """A named portal lives until its transaction ends (or a Close), and a
    second Bind of its name gets 42P03. A statement on several shards runs
    there as the unnamed portal, so the router let a second Bind of the
    name through; it now answers as PostgreSQL does — whether the portal
    ran on several shards or one, before or after — and a Close, or the
    transaction's end, frees the name."""
    a, _ = two_shard_keys(shards)

    def bind_run(sql: str) -> bytes:
        return (wire.parse_message(sql) + wire.bind_message([], portal="p")
                + wire.execute_message("p") + wire.sync_message())
    everywhere, one = bind_run("SELECT count(*) FROM sh_orders"), bind_run(
        f"SELECT count(*) FROM sh_orders WHERE customer_id = {a}")
    for first, second in [(everywhere, everywhere), (everywhere, one), (one, everywhere), (one, one)]:
        steps = [BEGIN, first, second, wire.query_message("SELECT 1"), ROLLBACK, second]
        direct = answers(shards[0].port, steps)
        assert direct[5] == [{"S": "ERROR", "C": "42P03", "M": 'cursor "p" already exists'}], direct
        assert answers(srouter.port, steps) == direct
    close = wire.close_message(b"P", "p") + wire.sync_message()
    steps = [BEGIN, everywhere, close, everywhere, one, ROLLBACK]
    direct = answers(shards[0].port, steps)
    assert [e for e in direct[1::2] if e] == [[{"S": "ERROR", "C": "42P03", "M": 'cursor "p" already exists'}]]
    assert answers(srouter.port, steps) == direct
    # In a pipeline on two shards: the second Bind of the name.
    a, b = two_shard_keys(shards)
    pipeline = (PARSE_INSERT + wire.bind_message([str(a)], portal="q", statement="ins") + wire.execute_message("q")
                + wire.bind_message([str(b)], portal="q", statement="ins") + wire.execute_message("q")
                + wire.sync_message())
    for steps in ([pipeline], [BEGIN, pipeline, ROLLBACK]):
        direct = answers(shards[0].port, steps)
        assert answers(srouter.port, steps) == direct
    # Run on several shards, the portal is kept by none: executing or
    # describing it again is refused (PostgreSQL answers from its portal).
    for again in (wire.execute_message("p"), wire.describe_message(b"P", "p")):
        got = answers(srouter.port, [BEGIN, everywhere, again + wire.sync_message(), ROLLBACK])
        assert got[5][0]["C"] == "0A000" and 'portal "p" ran on several shards' in got[5][0]["M"], got


def test_metrics_count_every_statement_by_its_shards(routers, shards):
    """pgrouter_sharded_statements_total{shards}: statements on one shard
    inside a transaction block were not counted at all (only those outside
    one, and those on several shards). Each statement counts once, with
    the number of shards it needed; BEGIN and COMMIT are not statements
    of their own there (outside a transaction each statement is one)."""
    from harness.ops import scrape
    from harness.util import free_port
    r = start_router(routers, shards, general={"metrics_listen": f"127.0.0.1:{free_port()}"})
    a, b = two_shard_keys(shards)

    def counts():
        s = scrape(r)
        return {n: s.value("pgrouter_sharded_statements_total", shards=str(n)) for n in (1, 3)}
    try:
        with connect(r.dsn()) as conn:
            before = counts()
            with conn.transaction():
                conn.execute(f"SELECT * FROM sh_orders WHERE customer_id = {a}").fetchall()
                conn.execute("SELECT * FROM sh_orders WHERE customer_id = %s", (b,)).fetchall()
                conn.execute(f"INSERT INTO sh_orders VALUES ({a}, 'm')")
                conn.execute("SELECT count(*) FROM sh_orders").fetchall()
            assert counts() == {1: before[1] + 3, 3: before[3] + 1}
            conn.execute(f"SELECT * FROM sh_orders WHERE customer_id = {b}").fetchall()
            assert counts() == {1: before[1] + 4, 3: before[3] + 1}
    finally:
        for s in shards:
            with s.connect(APP_DB) as c:
                c.execute("TRUNCATE sh_orders")
