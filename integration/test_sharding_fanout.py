"""Statements on several shards (SPEC §5 "Sharding", issue 17): reads merged
from every shard, DDL and reference-table writes on every shard, keyless
UPDATE/DELETE with summed tags — all-or-nothing — against three real
PostgreSQL primaries. Ground truth for every read is the same query on one
unsharded copy of the data (`fo_all` on a server of its own)."""
from __future__ import annotations

import time
from decimal import Decimal

import asyncpg
import psycopg
import pytest

from harness.clients import aconnect, connect, run_async, sqlstate
from harness.ops import admin_general, http_get, metrics_port
from harness import wire
from harness.pg import APP_DB, APP_PASSWORD, APP_USER, PgCluster

PORT = "inet_server_port()"

SHARDED = [
    {"database": "app", "name": "fo_orders", "column": "customer_id", "data_type": "bigint"},
    {"database": "app", "name": "fo_lines", "column": "customer_id", "data_type": "bigint"},
]


@pytest.fixture(scope="module")
def shards(cluster):
    with PgCluster(with_replica=False, prefix="pgrouter-fo1-") as s1, \
            PgCluster(with_replica=False, prefix="pgrouter-fo2-") as s2, \
            PgCluster(with_replica=False, prefix="pgrouter-fo-truth-") as truth:
        servers = [cluster.primary, s1.primary, s2.primary]
        for s in servers:
            with s.connect(APP_DB) as conn:
                conn.execute("DROP TABLE IF EXISTS fo_orders, fo_lines, fo_countries, fo_made")
                conn.execute("GRANT CREATE ON SCHEMA public TO app")
        yield servers, truth.primary
        with cluster.primary.connect(APP_DB) as conn:
            conn.execute("DROP TABLE IF EXISTS fo_orders, fo_lines, fo_countries, fo_made")


@pytest.fixture
def srouter(routers, shards):
    servers, _ = shards
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app", "role": "primary",
            "shard": i} for i, s in enumerate(servers)]
    r = routers.start(databases=dbs, sharded_tables=SHARDED, general=admin_general(metrics=True),
                      reference_tables=[{"database": "app", "names": ["fo_countries"]}])
    yield r
    for s in servers:
        with s.connect(APP_DB) as conn:
            conn.execute("DROP TABLE IF EXISTS fo_orders, fo_lines, fo_countries, fo_made")


CREATE = ("CREATE TABLE fo_orders (customer_id bigint NOT NULL, id int NOT NULL, amount numeric, "
          "note text, PRIMARY KEY (customer_id, id))")


def tables_everywhere(servers) -> list[bool]:
    out = []
    for s in servers:
        with s.connect(APP_DB) as conn:
            out.append(conn.execute("SELECT to_regclass('fo_orders') IS NOT NULL").fetchone()[0])
    return out


def load(conn, n=60):
    for k in range(1, n + 1):
        conn.execute(f"INSERT INTO fo_orders (customer_id, id, amount, note) VALUES ({k}, {k % 7}, {k * 1.5}, 'n{k % 5}')")


def per_shard_counts(servers, table="fo_orders") -> list[int]:
    counts = []
    for s in servers:
        with s.connect(APP_DB) as conn:
            counts.append(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    return counts


def test_ddl_runs_on_every_shard_simple_and_extended(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        # psycopg sends a statement without parameters as a simple query...
        conn.execute(CREATE)
        assert tables_everywhere(servers) == [True, True, True]
        cur = conn.execute("DROP TABLE fo_orders")
        assert cur.statusmessage == "DROP TABLE"
        assert tables_everywhere(servers) == [False, False, False]
    async def extended():
        c = await aconnect(srouter)
        try:
            # ... asyncpg sends everything through the extended protocol.
            assert await c.execute(CREATE) == "CREATE TABLE"
        finally:
            await c.close()
    run_async(extended())
    assert tables_everywhere(servers) == [True, True, True]


def test_keyless_read_returns_every_shards_rows(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        load(conn)
        counts = per_shard_counts(servers)
        assert sum(counts) == 60 and all(c > 0 for c in counts), counts
        rows = conn.execute("SELECT customer_id, note FROM fo_orders").fetchall()
        assert sorted(rows) == [(k, f"n{k % 5}") for k in range(1, 61)]
        cur = conn.execute("SELECT customer_id FROM fo_orders WHERE note = %s", ("n1",))
        assert sorted(r[0] for r in cur.fetchall()) == [k for k in range(1, 61) if k % 5 == 1]
        assert cur.rowcount == 12
        # IN over several shards: exactly those rows, from their shards.
        rows = conn.execute(f"SELECT customer_id, {PORT} FROM fo_orders WHERE customer_id IN (1, 2, 3, 4)"
                            ).fetchall()
        assert sorted(r[0] for r in rows) == [1, 2, 3, 4]
        assert len({r[1] for r in rows}) > 1
        # Binary results through the extended protocol.
        with conn.cursor(binary=True) as bc:
            bc.execute("SELECT customer_id, amount FROM fo_orders WHERE customer_id = ANY(%s)", ([5, 6, 7],))
            assert sorted(bc.fetchall()) == [(5, 7.5), (6, 9.0), (7, 10.5)] or \
                sorted((a, float(b)) for a, b in bc.fetchall()) == [(5, 7.5), (6, 9.0), (7, 10.5)]
        # Nothing matches anywhere: an empty result with its columns.
        cur = conn.execute("SELECT customer_id FROM fo_orders WHERE note = 'none'")
        assert cur.fetchall() == [] and cur.description[0].name == "customer_id"


def test_asyncpg_prepared_fanout(srouter, shards):
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        load(conn)
    async def go():
        c = await aconnect(srouter)
        try:
            stmt = await c.prepare("SELECT customer_id FROM fo_orders WHERE note = $1")
            for note in ["n0", "n1", "n2"]:
                got = sorted(r[0] for r in await stmt.fetch(note))
                assert got == [k for k in range(1, 61) if f"n{k % 5}" == note]
            return True
        finally:
            await c.close()
    assert run_async(go())


def test_keyless_update_and_delete_sum_their_tags(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        load(conn)
        cur = conn.execute("UPDATE fo_orders SET note = 'x' WHERE id = %s", (3,))
        assert cur.rowcount == sum(1 for k in range(1, 61) if k % 7 == 3)
        cur = conn.execute("UPDATE fo_orders SET amount = amount + 1 WHERE id = 4 RETURNING customer_id")
        assert sorted(r[0] for r in cur.fetchall()) == [k for k in range(1, 61) if k % 7 == 4]
        cur = conn.execute("DELETE FROM fo_orders WHERE id = 0")
        assert cur.rowcount == sum(1 for k in range(1, 61) if k % 7 == 0)
        assert sum(per_shard_counts(servers)) == 60 - cur.rowcount


def test_a_failure_on_one_shard_rolls_back_every_shard(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        load(conn)
        conn.execute("ALTER TABLE fo_orders ADD CONSTRAINT small CHECK (amount < 1000)")
        # Only one row breaks the constraint; every shard must stay as it was.
        big = 59
        with pytest.raises(psycopg.Error) as err:
            conn.execute(f"UPDATE fo_orders SET amount = CASE WHEN customer_id = {big} THEN 5000 ELSE 0 END")
        assert sqlstate(err.value) == "23514"
        assert conn.execute("SELECT count(*) FROM fo_orders WHERE amount = 0 AND customer_id = 1").fetchone()[0] == 0
        for s in servers:
            with s.connect(APP_DB) as c:
                assert c.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()[0] == 0
                assert c.execute("SELECT count(*) FROM fo_orders WHERE amount = 0").fetchone()[0] == 0
        # DDL that fails on one shard only is undone on the others.
        with servers[2].connect(APP_DB) as c:
            c.execute("CREATE TABLE fo_made (a int)")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("CREATE TABLE fo_made (a int)")
        assert sqlstate(err.value) == "42P07"
        with servers[0].connect(APP_DB) as c:
            assert c.execute("SELECT to_regclass('fo_made')").fetchone()[0] is None


def test_reference_tables_are_written_everywhere_and_read_once(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute("CREATE TABLE fo_countries (code text PRIMARY KEY, name text)")
        cur = conn.execute("INSERT INTO fo_countries VALUES ('fr', 'France'), ('de', 'Germany') RETURNING code")
        assert cur.rowcount == 2 and sorted(r[0] for r in cur.fetchall()) == ["de", "fr"]
        assert per_shard_counts(servers, "fo_countries") == [2, 2, 2]
        cur = conn.execute("UPDATE fo_countries SET name = upper(name) WHERE code = %s", ("fr",))
        assert cur.rowcount == 1
        assert conn.execute("SELECT count(*) FROM fo_countries").fetchone()[0] == 2
        for s in servers:
            with s.connect(APP_DB) as c:
                assert c.execute("SELECT name FROM fo_countries WHERE code = 'fr'").fetchone()[0] == "FRANCE"


def test_statements_outside_transactions_run_shard_by_shard(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        conn.execute("CREATE INDEX CONCURRENTLY fo_note ON fo_orders (note)")
        for s in servers:
            with s.connect(APP_DB) as c:
                assert c.execute("SELECT to_regclass('fo_note') IS NOT NULL").fetchone()[0]
        with servers[1].connect(APP_DB) as c:
            c.execute("CREATE INDEX fo_amount ON fo_orders (amount)")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("CREATE INDEX CONCURRENTLY fo_amount ON fo_orders (amount)")
        assert sqlstate(err.value) == "42P07"
        assert "failed on shard(s) 1" in str(err.value) and "succeeded on shard(s) 0, 2" in str(err.value)


def test_metrics_count_statements_by_shards(srouter, shards):
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        conn.execute("SELECT * FROM fo_orders").fetchall()
        conn.execute("SELECT * FROM fo_orders WHERE customer_id = 1").fetchall()
    text = http_get(metrics_port(srouter))[2]
    text = text.decode() if isinstance(text, bytes) else text
    assert 'pgrouter_sharded_statements_total{shards="3"}' in text
    assert 'pgrouter_sharded_statements_total{shards="1"}' in text


def keys_on_distinct_shards(servers, n=3):
    """One bigint key per shard, found through the router's own placement."""
    found = {}
    for s_i, s in enumerate(servers):
        with s.connect(APP_DB) as c:
            for k in range(1, 200):
                if c.execute("SELECT count(*) FROM fo_orders WHERE customer_id = %s", (k,)).fetchone()[0]:
                    found.setdefault(s_i, k)
    return [found[i] for i in range(n)]


def keyed_empty_table(conn, servers):
    """fo_orders created (through the router) and left empty, and one key
    on each shard."""
    conn.execute(CREATE)
    load(conn, 30)
    keys = keys_on_distinct_shards(servers)
    conn.execute("DELETE FROM fo_orders")
    return keys


def assert_failed_transaction(conn, keys):
    """Statements on the shards of `keys` get 25P02, and COMMIT answers
    ROLLBACK: the transaction failed as a PostgreSQL one does."""
    for k in keys:
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT * FROM fo_orders WHERE customer_id = %s", (k,))
        assert sqlstate(err.value) == "25P02"
    assert conn.execute("COMMIT").statusmessage == "ROLLBACK"


def test_transactions_span_shards_and_commit_together(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)
    # psycopg's own transactions (a bare BEGIN first), committed.
    with connect(srouter.dsn(), autocommit=False) as conn:
        conn.execute("INSERT INTO fo_orders (customer_id, id, note) VALUES (%s, 1, 'tx')", (a,))
        conn.execute("INSERT INTO fo_orders (customer_id, id, note) VALUES (%s, 1, 'tx')", (b,))
        # The transaction reads its own writes, on every shard.
        assert sorted(r[0] for r in conn.execute("SELECT customer_id FROM fo_orders").fetchall()) == sorted([a, b])
        conn.execute(f"UPDATE fo_orders SET amount = 1 WHERE note = 'tx'")
        conn.commit()
        conn.execute("INSERT INTO fo_orders (customer_id, id, note) VALUES (%s, 2, 'gone')", (a,))
        conn.execute("INSERT INTO fo_orders (customer_id, id, note) VALUES (%s, 2, 'gone')", (c,))
        conn.rollback()
    assert per_shard_counts(servers) == [1 if k in (a, b) else 0 for k in (a, b, c)]
    with connect(srouter.dsn()) as conn:
        rows = conn.execute("SELECT customer_id, amount FROM fo_orders").fetchall()
        assert sorted((k, int(v)) for k, v in rows) == sorted([(a, 1), (b, 1)])
    for s in servers:
        with s.connect(APP_DB) as conn:
            assert conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()[0] == 0


def test_a_failed_statement_fails_the_whole_transaction(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (b,))
        conn.execute("BEGIN")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 7)", (a,))
        with pytest.raises(psycopg.Error) as err:
            conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (b,))
        assert sqlstate(err.value) == "23505"
        # Any shard now answers as PostgreSQL does in a failed transaction.
        assert_failed_transaction(conn, (a, c))
        assert conn.execute("SELECT count(*) FROM fo_orders WHERE customer_id = %s", (a,)).fetchone()[0] == 0
        # Every leg ended with the transaction: none is left in it.
        for s in servers:
            with s.connect(APP_DB) as c:
                assert c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' "
                                 "AND state LIKE 'idle in transaction%'").fetchone()[0] == 0


def test_a_refused_statement_fails_the_transaction_and_a_nested_begin_warns(srouter, shards):
    """A statement the router refuses inside a transaction on several shards
    fails it as any error fails a PostgreSQL transaction (nothing written
    before it commits); a redundant BEGIN gets PostgreSQL's warning."""
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)
        notices = []
        conn.add_notice_handler(lambda d: notices.append((d.sqlstate, d.severity_nonlocalized)))
        conn.execute("BEGIN")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (a,))
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (b,))
        assert conn.execute("BEGIN").statusmessage == "BEGIN"
        assert notices == [("25001", "WARNING")]
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT customer_id, row_number() OVER () FROM fo_orders")
        assert sqlstate(err.value) == "0A000"
        assert_failed_transaction(conn, (a, c))
        assert per_shard_counts(servers) == [0, 0, 0]
        # Rolled back to a savepoint before the refusal, the transaction goes on.
        conn.execute("BEGIN")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 2)", (a,))
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 2)", (b,))
        conn.execute("SAVEPOINT s")
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT customer_id, row_number() OVER () FROM fo_orders")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        assert conn.execute("COMMIT").statusmessage == "COMMIT"
        assert sorted(per_shard_counts(servers)) == [0, 1, 1]


def test_settings_made_inside_a_transaction_hold_on_every_shard(srouter, shards):
    """SET and SET LOCAL inside a transaction apply to its statements on
    every shard, those joining later included, as on one PostgreSQL."""
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        conn.execute("CREATE SCHEMA IF NOT EXISTS fo_tenant")
        conn.execute("CREATE TABLE fo_tenant.fo_orders (customer_id bigint, id int)")
        load(conn, 30)
        a, b, c = keys_on_distinct_shards(servers)
        conn.execute("DELETE FROM fo_orders")
        try:
            for set_sql in ("SET LOCAL search_path = fo_tenant", "SET search_path = fo_tenant"):
                conn.execute("RESET search_path")
                conn.execute("BEGIN")
                conn.execute(set_sql)  # before a second shard joins
                conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (a,))
                conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (b,))
                conn.execute("RESET search_path")
                conn.execute(set_sql)  # with two legs: on both, and on the third joining
                conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 2)", (a,))
                conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 2)", (c,))
                conn.execute("COMMIT")
            assert per_shard_counts(servers) == [0, 0, 0]  # nothing in public
            tenant = sorted(conn.execute("SELECT customer_id, id FROM fo_tenant.fo_orders").fetchall())
            assert tenant == sorted([(a, 1), (b, 1), (a, 2), (c, 2)] * 2)
            # SET (not LOCAL) outlives its transaction, SET LOCAL does not.
            assert conn.execute("SHOW search_path").fetchone()[0] == "fo_tenant"
            conn.execute("BEGIN")
            conn.execute("SELECT * FROM fo_orders WHERE customer_id = %s", (a,))
            conn.execute("SET LOCAL statement_timeout = '50ms'")
            with pytest.raises(psycopg.Error) as err:
                conn.execute("SELECT pg_sleep(1), customer_id FROM fo_orders WHERE customer_id = %s", (b,))
            assert sqlstate(err.value) == "57014"
            conn.execute("ROLLBACK")
        finally:
            conn.execute("RESET search_path")
            conn.execute("DROP SCHEMA fo_tenant CASCADE")


def test_a_batch_refused_inside_a_transaction_is_answered_whatever_its_pace(srouter, shards):
    """An extended batch inside a transaction whose statements need several
    shards is refused whole with 0A000, also when its messages arrive one by
    one (as a pipelining driver sends them); it used to hang."""
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)

    def unit(sql, params):
        return [wire.parse_message(sql), wire.bind_message(params), wire.describe_message(b"P"),
                wire.execute_message()]
    insert = "INSERT INTO fo_orders (customer_id, id) VALUES ($1, 1)"
    msgs = unit(insert, [str(a)]) + unit("SELECT count(*) FROM fo_orders", []) + unit(insert, [str(c)]) \
        + [wire.sync_message()]
    for gap in (0, 0.02):
        w = wire.connect(srouter.port, APP_USER, APP_DB, APP_PASSWORD)
        try:
            w.simple_query("BEGIN")
            if gap == 0:
                w.send(b"".join(msgs))
            else:
                for m in msgs:
                    w.send(m)
                    time.sleep(gap)
            batch = w.read_batches(1, timeout=10)[0]
            assert [e.get("C") for e in wire.errors_in(batch)] == ["0A000"], gap
            assert batch[-1].kind == b"Z"
        finally:
            w.close()
    assert per_shard_counts(servers) == [0, 0, 0]


def test_savepoints_and_isolation_reach_every_leg(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (a,))
        conn.execute("SAVEPOINT s1")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (b,))
        # A shard joining after the savepoint gets it too.
        iso = conn.execute("SELECT current_setting('transaction_isolation') FROM fo_orders "
                           "WHERE customer_id = %s UNION ALL SELECT current_setting('transaction_isolation')",
                           (c,)).fetchall()
        assert iso == [("repeatable read",)]
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (c,))
        conn.execute("ROLLBACK TO SAVEPOINT s1")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 2)", (c,))
        conn.execute("COMMIT")
        got = sorted(conn.execute("SELECT customer_id, id FROM fo_orders").fetchall())
        assert got == sorted([(a, 1), (c, 2)])


def test_savepoints_and_settings_in_the_extended_protocol_reach_joining_legs(srouter, shards):
    """SAVEPOINT and SET LOCAL sent as Parse/Bind/Execute (psycopg's
    pipeline mode, JDBC, prepared by the driver) while the transaction is
    on one shard hold on shards joining it later, as in the simple
    protocol: a ROLLBACK TO SAVEPOINT then works on every shard (it failed
    with 3B001 on the joining shard, failing the transaction)."""
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)
        for prepare in (False, True, True):  # the third run Binds the named statements only
            conn.execute("BEGIN")
            conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (a,))
            with conn.pipeline():
                conn.execute("SAVEPOINT s", prepare=prepare)
                conn.execute("SET LOCAL work_mem = '7MB'", prepare=prepare)
            conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 2)", (a,))
            got = conn.execute("SELECT current_setting('work_mem') FROM fo_orders WHERE customer_id = %s "
                               "UNION ALL SELECT current_setting('work_mem')", (c,)).fetchall()
            assert got == [("7MB",)], prepare
            conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 2)", (c,))
            with conn.pipeline():
                conn.execute("ROLLBACK TO SAVEPOINT s", prepare=prepare)
            conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 3)", (b,))
            assert conn.execute("COMMIT").statusmessage == "COMMIT"
            got = sorted(conn.execute("SELECT customer_id, id FROM fo_orders").fetchall())
            assert got == sorted([(a, 1), (b, 3)]), prepare
            conn.execute("DELETE FROM fo_orders")
    assert per_shard_counts(servers) == [0, 0, 0]


def test_a_pipeline_moving_shards_midway_is_refused_for_what_it_is(srouter, shards):
    """A pipeline that started on one shard (a SAVEPOINT ran) and then needs
    another cannot move: 0A000 naming that — not the old claim that
    transactions on several shards need an unsupported two-phase commit.
    The same statements in batches of their own run, two-phase committed."""
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (a,))
        with pytest.raises(psycopg.Error) as err:
            with conn.pipeline():
                conn.execute("SAVEPOINT s")
                conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (c,))
        msg = str(err.value)
        assert sqlstate(err.value) == "0A000", msg
        assert "two-phase commit" not in msg and "batch" in msg and "Sync" in msg, msg
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (a,))
        conn.execute("SAVEPOINT s")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, 1)", (c,))
        assert conn.execute("COMMIT").statusmessage == "COMMIT"
    assert sorted(per_shard_counts(servers)) == [0, 1, 1]


def test_asyncpg_transaction_over_shards(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)
    async def go():
        con = await aconnect(srouter)
        try:
            ins = await con.prepare("INSERT INTO fo_orders (customer_id, id, note) VALUES ($1, $2, $3)")
            async with con.transaction():
                for k in (a, b, c):
                    await ins.fetch(k, 5, "async")
                # A read of every shard inside the transaction sees its rows.
                assert len(await con.fetch("SELECT id FROM fo_orders WHERE note = $1", "async")) == 3
            try:
                async with con.transaction():
                    await ins.fetch(a, 6, "never")
                    await ins.fetch(b, 6, "never")
                    raise RuntimeError("abort")
            except RuntimeError:
                pass
            return sorted(r[0] for r in await con.fetch("SELECT customer_id FROM fo_orders"))
        finally:
            await con.close()
    assert run_async(go()) == sorted([a, b, c])


def test_a_transaction_on_one_shard_holds_only_that_shard(srouter, shards):
    """A bare BEGIN names no shard: the transaction's first statement picks it."""
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        load(conn, 30)
        a, b, c = keys_on_distinct_shards(servers)
    def in_tx_backends(server):
        with server.connect(APP_DB) as c:
            return c.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                             "AND state LIKE 'idle in transaction%'").fetchone()[0]
    with connect(srouter.dsn(), autocommit=False) as conn:
        assert conn.execute("SELECT note FROM fo_orders WHERE customer_id = %s", (c,)).fetchone()[0] == f"n{c % 5}"
        conn.execute("UPDATE fo_orders SET note = 'one' WHERE customer_id = %s", (c,))
        assert [in_tx_backends(s) for s in servers] == [0, 0, 1]
        conn.commit()
        # BEGIN then COMMIT with nothing between: nothing to hold at all.
        conn.execute("SELECT 1 WHERE false")
        conn.rollback()
        # psycopg's pipeline mode sends its BEGIN in the extended protocol,
        # Synced on its own: deferred alike.
        with conn.pipeline():
            conn.execute("UPDATE fo_orders SET note = 'piped' WHERE customer_id = %s", (b,))
            conn.execute("UPDATE fo_orders SET note = 'piped' WHERE customer_id = %s", (b,))
        assert [in_tx_backends(s) for s in servers] == [0, 1, 0]
        conn.commit()
    with connect(srouter.dsn()) as conn:
        conn.execute("BEGIN")
        assert conn.execute("COMMIT").statusmessage == "COMMIT"
        assert conn.execute("SELECT note FROM fo_orders WHERE customer_id = %s", (c,)).fetchone()[0] == "one"


def test_jwt_sessions_run_under_their_role_on_every_shard(routers, shards):
    """Each shard's connection of a JWT session runs under the token's role:
    reads of several shards, writes of several shards, and transactions that
    move between shards (a role left on a pooled connection by an earlier
    session must never be used)."""
    from harness.jwt_setup import ensure_roles, start_jwt_router
    from harness.jwt_tokens import SigningKey, claims

    class OneServer:
        def __init__(self, primary):
            self.primary, self.replica = primary, None

    from harness.twophase import fresh_decision_tables

    servers, _ = shards
    for s in servers:
        ensure_roles(OneServer(s))
    # Made by `app`'s routers: this one's two-phase commits run as authenticator.
    fresh_decision_tables(servers[0], "authenticator")
    for s in servers:
        with s.connect(APP_DB) as c:
            c.execute(CREATE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
            c.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON fo_orders TO web_user, web_reader")
    key = SigningKey("rsa")
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app", "role": "primary",
            "shard": i} for i, s in enumerate(servers)]
    r = start_jwt_router(routers, key, databases=dbs, sharded_tables=SHARDED, auth_pool_size=2)
    try:
        def session(role, read_only=False):
            extra = {"read_only": True} if read_only else {}
            return connect(r.dsn(user="alice", password=key.sign(claims("alice", role, **extra))))
        with session("web_user") as conn:
            for k in range(1, 31):
                conn.execute("INSERT INTO fo_orders (customer_id, id, note) VALUES (%s, 1, current_user)", (k,))
            assert {row[0] for row in conn.execute("SELECT note FROM fo_orders").fetchall()} == {"web_user"}
            cur = conn.execute("UPDATE fo_orders SET note = current_user || '!' RETURNING note")
            assert cur.rowcount == 30 and {row[0] for row in cur.fetchall()} == {"web_user!"}
            conn.execute("BEGIN")
            for k in (1, 2, 3, 4):
                conn.execute("UPDATE fo_orders SET note = current_user WHERE customer_id = %s", (k,))
            conn.execute("COMMIT")
        # Another role on the same pooled connections sees only its grants.
        with session("web_admin") as conn:
            with pytest.raises(psycopg.Error) as err:
                conn.execute("SELECT note FROM fo_orders").fetchall()
            assert sqlstate(err.value) == "42501"
        with session("web_reader") as conn:
            rows = conn.execute("SELECT current_user, note FROM fo_orders").fetchall()
            assert {row[0] for row in rows} == {"web_reader"} and len(rows) == 30
    finally:
        r.stop()  # its 2PC recovery would make the decision tables again
        for s in servers:
            with s.connect(APP_DB) as c:
                c.execute("DROP TABLE IF EXISTS fo_orders")
        fresh_decision_tables(servers[0])


def test_session_settings_reach_every_shard(srouter, shards):
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        load(conn, 30)
        conn.execute("SET application_name = 'fanout-app'")
        conn.execute("SET search_path = public, pg_catalog")
        rows = conn.execute("SELECT current_setting('application_name'), current_setting('search_path') "
                            "FROM fo_orders").fetchall()
        assert set(rows) == {("fanout-app", "public, pg_catalog")} and len(rows) == 30
        conn.execute("BEGIN")
        conn.execute("SET LOCAL application_name = 'in-tx'")
        conn.execute("ROLLBACK")
        rows = conn.execute("SELECT current_setting('application_name') FROM fo_orders").fetchall()
        assert set(rows) == {("fanout-app",)}


def test_executemany_pipelines_run_each_row_on_its_shard(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        # psycopg: one pipeline (Parse, Bind/Execute per row, one Sync).
        conn.cursor().executemany("INSERT INTO fo_orders (customer_id, id, note) VALUES (%s, %s, %s)",
                                  [(k, 1, "many") for k in range(1, 41)])
        counts = per_shard_counts(servers)
        assert sum(counts) == 40 and all(c > 0 for c in counts), counts
        # RETURNING rows come back in the order of the rows sent.
        cur = conn.cursor()
        cur.executemany("UPDATE fo_orders SET id = 2 WHERE customer_id = %s RETURNING customer_id",
                        [(k,) for k in (5, 1, 9, 2)], returning=True)
        got = []
        while True:
            got.append(cur.fetchone()[0])
            if not cur.nextset():
                break
        assert got == [5, 1, 9, 2]
        # One failing row: the whole batch is rolled back on every shard.
        with pytest.raises(psycopg.Error) as err:
            conn.cursor().executemany("INSERT INTO fo_orders (customer_id, id, note) VALUES (%s, %s, %s)",
                                      [(100, 1, "x"), (101, 1, "x"), (3, 1, "dup"), (102, 1, "x")])
        assert sqlstate(err.value) == "23505"
        assert sum(per_shard_counts(servers)) == 40
    async def go():
        c = await aconnect(srouter)
        try:
            await c.executemany("INSERT INTO fo_orders (customer_id, id, note) VALUES ($1, $2, $3)",
                                [(k, 3, "asyncpg") for k in range(200, 230)])
            return len(await c.fetch("SELECT 1 FROM fo_orders WHERE note = 'asyncpg'"))
        finally:
            await c.close()
    assert run_async(go()) == 30


MERGE_QUERIES = [
    "SELECT count(*) FROM fo_orders",
    "SELECT count(*), count(amount), sum(amount), min(amount), max(amount), avg(amount) FROM fo_orders",
    "SELECT sum(id), avg(id), min(note), max(note), bool_and(id > 0), bool_or(id > 5) FROM fo_orders",
    "SELECT note, count(*), sum(amount), avg(id) FROM fo_orders GROUP BY note ORDER BY note COLLATE \"C\"",
    "SELECT id, count(*) FROM fo_orders GROUP BY id HAVING count(*) > 8 ORDER BY id",
    "SELECT id % 3 AS r, max(amount) FROM fo_orders GROUP BY id % 3 ORDER BY 1",
    "SELECT customer_id, amount FROM fo_orders ORDER BY amount DESC NULLS LAST, customer_id LIMIT 7",
    "SELECT customer_id FROM fo_orders ORDER BY amount NULLS FIRST, customer_id LIMIT 5 OFFSET 3",
    "SELECT customer_id FROM fo_orders ORDER BY id DESC, customer_id DESC",
    "SELECT customer_id, note FROM fo_orders ORDER BY note COLLATE \"C\" DESC, customer_id LIMIT 10",
    "SELECT DISTINCT id FROM fo_orders ORDER BY id",
    "SELECT DISTINCT note FROM fo_orders",
    # The test clusters' collation is C: text orders by bytes without COLLATE.
    "SELECT customer_id, note FROM fo_orders ORDER BY note NULLS FIRST, customer_id LIMIT 9",
    "SELECT customer_id FROM fo_orders WHERE customer_id IN (3, 4, 5, 6) ORDER BY customer_id",
    "SELECT count(*) FROM fo_orders WHERE note = 'nothing'",
    "SELECT max(amount) FROM fo_orders WHERE note = 'nothing'",
    # FILTER: each shard keeps its own rows, the partials merge as usual.
    "SELECT count(*) FILTER (WHERE amount > 50), sum(amount) FILTER (WHERE id < 4), "
    "avg(amount) FILTER (WHERE note = 'n1'), avg(amount), min(id) FILTER (WHERE amount IS NULL), "
    "max(amount) FILTER (WHERE id = 0), bool_and(id > 2) FILTER (WHERE id > 0) FROM fo_orders",
    "SELECT note, count(*) FILTER (WHERE id > 4), avg(amount) FILTER (WHERE id % 2 = 0) FROM fo_orders "
    "GROUP BY note HAVING count(*) FILTER (WHERE id > 4) > 1 ORDER BY note COLLATE \"C\"",
    "SELECT count(*) FILTER (WHERE false), sum(amount) FILTER (WHERE false), "
    "avg(amount) FILTER (WHERE false), coalesce(sum(id) FILTER (WHERE false), 0) FROM fo_orders",
    # DISTINCT and ORDER BY inside aggregates whose result ignores them.
    "SELECT min(DISTINCT amount), max(DISTINCT note ORDER BY note), bool_and(DISTINCT id > 0), "
    "bool_or(id > 7 ORDER BY id), count(amount ORDER BY id DESC) FROM fo_orders",
    "SELECT id, max(DISTINCT amount), count(note ORDER BY note) FROM fo_orders GROUP BY id ORDER BY id",
]


def load_both(router_conn, truth_conn, n=120):
    truth_conn.execute("DROP TABLE IF EXISTS fo_orders")
    truth_conn.execute(CREATE)
    for k in range(1, n + 1):
        amount = None if k % 11 == 0 else round(k * 1.25, 2)
        row = (k, k % 9, amount, f"n{k % 6}" if k % 13 else None)
        for c in (router_conn, truth_conn):
            c.execute("INSERT INTO fo_orders (customer_id, id, amount, note) VALUES (%s, %s, %s, %s)", row)


def test_merged_reads_equal_one_servers_answer(srouter, shards):
    """Every query answered across three shards exactly as one PostgreSQL
    holding all the rows answers it (text and binary results)."""
    servers, truth = shards
    with connect(srouter.dsn()) as conn, truth.connect(APP_DB) as t:
        conn.execute(CREATE)
        load_both(conn, t)
        assert all(c > 0 for c in per_shard_counts(servers))
        for sql in MERGE_QUERIES:
            want = t.execute(sql).fetchall()
            got = conn.execute(sql).fetchall()
            if "ORDER BY" in sql:
                assert got == want, sql
            else:
                assert sorted(got, key=repr) == sorted(want, key=repr), sql
            with conn.cursor(binary=True) as bc, t.cursor(binary=True) as tc:
                bgot, bwant = bc.execute(sql).fetchall(), tc.execute(sql).fetchall()
                key = (lambda r: r) if "ORDER BY" in sql else (lambda r: sorted(r, key=repr))
                assert key(bgot) == key(bwant), f"binary: {sql}"
        # Parameters in LIMIT/OFFSET and HAVING (extended protocol).
        sql = "SELECT customer_id FROM fo_orders ORDER BY customer_id DESC LIMIT %s OFFSET %s"
        assert conn.execute(sql, (4, 2)).fetchall() == t.execute(sql, (4, 2)).fetchall()
        sql = "SELECT id FROM fo_orders GROUP BY id HAVING count(*) >= %s ORDER BY id"
        assert conn.execute(sql, (13,)).fetchall() == t.execute(sql, (13,)).fetchall()


def test_reads_a_merge_cannot_answer_are_refused(srouter, shards):
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        load(conn, 10)
        for sql in ["SELECT count(DISTINCT note) FROM fo_orders",
                    "SELECT customer_id, rank() OVER (ORDER BY amount) FROM fo_orders",
                    "SELECT * FROM fo_orders WHERE amount > (SELECT avg(amount) FROM fo_orders)",
                    "SELECT count(*) FILTER (WHERE amount > (SELECT avg(amount) FROM fo_orders)) "
                    "FROM fo_orders",
                    "SELECT sum(DISTINCT amount) FROM fo_orders",
                    "SELECT sum(amount ORDER BY id) FROM fo_orders",
                    "SELECT string_agg(note, ',') FROM fo_orders",
                    "SELECT DISTINCT ON (note) customer_id FROM fo_orders",
                    "SELECT * FROM fo_orders FOR UPDATE"]:
            with pytest.raises(psycopg.Error) as err:
                conn.execute(sql).fetchall()
            assert sqlstate(err.value) == "0A000", sql
            assert "shard" in str(err.value), sql
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_asyncpg_merged_reads(srouter, shards):
    servers, truth = shards
    with connect(srouter.dsn()) as conn, truth.connect(APP_DB) as t:
        conn.execute(CREATE)
        load_both(conn, t, 60)
        want = t.execute("SELECT note, count(*), avg(amount) FROM fo_orders GROUP BY note "
                         "ORDER BY note COLLATE \"C\" NULLS FIRST").fetchall()
        want_top = t.execute("SELECT customer_id FROM fo_orders ORDER BY amount DESC NULLS LAST, customer_id "
                             "LIMIT 5").fetchall()
        filtered = ("SELECT id, count(*) FILTER (WHERE amount > {0}), avg(amount) FILTER (WHERE amount > {0}) "
                    "FROM fo_orders GROUP BY id HAVING count(*) FILTER (WHERE amount > {0}) > 0 ORDER BY id")
        want_filtered = t.execute(filtered.format("%s"), (30,) * 3).fetchall()
    async def go():
        c = await aconnect(srouter)
        try:
            rows = await c.fetch("SELECT note, count(*), avg(amount) FROM fo_orders GROUP BY note "
                                 "ORDER BY note COLLATE \"C\" NULLS FIRST")
            stmt = await c.prepare("SELECT customer_id FROM fo_orders ORDER BY amount DESC NULLS LAST, "
                                   "customer_id LIMIT $1")
            top = await stmt.fetch(5)
            # A parameter inside FILTER reaches every shard with the Bind.
            by_id = await c.fetch(filtered.format("$1"), 30)
            return [tuple(r) for r in rows], [tuple(r) for r in top], [tuple(r) for r in by_id]
        finally:
            await c.close()
    rows, top, by_id = run_async(go())
    assert rows == [tuple(r) for r in want]
    assert top == [tuple(r) for r in want_top]
    assert by_id == [tuple(r) for r in want_filtered] and by_id


def test_having_parameters_in_binary_format_are_read_by_their_type(srouter, shards):
    """asyncpg sends parameters in binary format: a HAVING `$1` compared
    with numeric, float8, text or date aggregates is a numeric, float8, ...
    value, not an integer guessed from its byte count (which returned no
    group at all, silently). One under a cast whose type the router cannot
    know is refused with 0A000, never guessed."""
    servers, truth = shards
    queries = [
        ("SELECT note, max(amount) FROM fo_orders GROUP BY note HAVING max(amount) > $1 "
         "ORDER BY note COLLATE \"C\" NULLS FIRST", [Decimal("140.5")]),
        ("SELECT id, sum(amount) FROM fo_orders GROUP BY id HAVING sum(amount) <= $1 ORDER BY id",
         [Decimal("1000")]),
        ("SELECT id, avg(id) FROM fo_orders GROUP BY id HAVING avg(id) >= $1 ORDER BY id", [Decimal("4")]),
        ("SELECT id, count(*) FROM fo_orders GROUP BY id HAVING count(*) > $1 ORDER BY id", [13]),
        ("SELECT id FROM fo_orders GROUP BY id HAVING max(note) = $1 ORDER BY id", ["n5"]),
        ("SELECT id FROM fo_orders GROUP BY id HAVING min(amount::float8) < $1 ORDER BY id", [5.5]),
        ("SELECT id FROM fo_orders GROUP BY id HAVING bool_or(customer_id > 100) = $1 ORDER BY id", [True]),
    ]
    with connect(srouter.dsn()) as conn, truth.connect(APP_DB) as t:
        conn.execute(CREATE)
        load_both(conn, t, 120)
        want = [t.execute(sql.replace("$1", "%s"), args).fetchall() for sql, args in queries]
    async def go():
        c = await aconnect(srouter)
        try:
            out = [[tuple(r) for r in await c.fetch(sql, *args)] for sql, args in queries]
            try:
                await c.fetch("SELECT id FROM fo_orders GROUP BY id HAVING max(amount) > $1::numeric",
                              Decimal("1"))
                out.append("ran")
            except asyncpg.PostgresError as e:
                out.append(e.sqlstate)
            return out
        finally:
            await c.close()
    got = run_async(go())
    for (sql, _), g, w in zip(queries, got, want):
        assert w, sql  # the data makes every query return groups
        assert g == w, sql
    assert got[-1] == "0A000"


def test_router_killed_between_prepare_and_commit_is_finished_by_another(routers, shards):
    """A client's transaction on three shards; the router is SIGKILLed after
    PREPARE TRANSACTION is visible on every shard and its commit record is
    written, before COMMIT PREPARED. A second router instance finishes it
    within 30 s: nothing stays prepared, and the rows are on every shard."""
    import signal
    import threading
    import time

    from harness.twophase import prepared, wait_drained
    from harness.util import wait_until

    servers, _ = shards
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app", "role": "primary",
            "shard": i} for i, s in enumerate(servers)]
    first = routers.start(databases=dbs, sharded_tables=SHARDED, env={"PGROUTER_TEST_2PC_PAUSE_MS": "60000"})
    with connect(first.dsn()) as conn:
        conn.execute(CREATE)
        load(conn, 30)
    errors = []

    def client():
        try:
            with connect(first.dsn()) as c:
                c.execute("UPDATE fo_orders SET note = 'crash'")
        except Exception as e:  # the router dies under it
            errors.append(e)
    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        wait_until(lambda: all(prepared(s) for s in servers), 20, what="prepared on every shard")
        time.sleep(0.3)
    finally:
        first.signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        first.stop_requested = True  # killed on purpose
    t.join(10)
    assert errors, "the client saw its connection end"
    killed = time.monotonic()
    second = routers.start(databases=dbs, sharded_tables=SHARDED)
    wait_drained(servers, timeout=30)
    assert time.monotonic() - killed < 30
    with connect(second.dsn()) as conn:
        notes = conn.execute("SELECT DISTINCT note FROM fo_orders").fetchall()
        assert notes == [("crash",)], "committed on every shard"
    for s in servers:
        with s.connect(APP_DB) as c:
            assert c.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()[0] == 0
            c.execute("DROP TABLE fo_orders")


def test_multi_row_insert_is_split_by_shard(srouter, shards):
    servers, truth = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        cur = conn.execute("INSERT INTO fo_orders (customer_id, id, note) VALUES "
                           + ", ".join(f"({k}, 1, 'v{k}')" for k in range(1, 31)) + " RETURNING customer_id")
        assert cur.statusmessage == "INSERT 0 30"
        assert sorted(r[0] for r in cur.fetchall()) == list(range(1, 31))
        counts = per_shard_counts(servers)
        assert sum(counts) == 30 and all(c > 0 for c in counts), counts
        # Extended protocol with parameters (renumbered per shard), and no column list.
        rows = [(k, 2, f"p{k}") for k in range(31, 41)]
        cur = conn.execute("INSERT INTO fo_orders VALUES " + ", ".join(["(%s, %s, NULL, %s)"] * len(rows)),
                           [v for r in rows for v in r])
        assert cur.rowcount == 10
        for k in (31, 35, 40):
            assert conn.execute("SELECT note FROM fo_orders WHERE customer_id = %s", (k,)).fetchone() == (f"p{k}",)
        # A row failing on one shard: none of the rows anywhere.
        with pytest.raises(psycopg.Error) as err:
            conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (100, 1), (101, 1), (5, 1), (102, 1)")
        assert sqlstate(err.value) == "23505"
        assert conn.execute("SELECT count(*) FROM fo_orders").fetchone() == (40,)
        # Inside a transaction on several shards.
        conn.execute("BEGIN")
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (200, 1), (201, 1), (202, 1)")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT count(*) FROM fo_orders").fetchone() == (40,)
    async def go():
        c = await aconnect(srouter)
        try:
            stmt = await c.prepare("INSERT INTO fo_orders (customer_id, id, note) VALUES ($1, 3, $2), ($3, 3, $4) "
                                   "RETURNING customer_id, note")
            out = []
            for a, b in [(300, 301), (302, 303), (304, 305)]:
                out += [tuple(r) for r in await stmt.fetch(a, f"a{a}", b, f"a{b}")]
            return sorted(out)
        finally:
            await c.close()
    assert run_async(go()) == [(k, f"a{k}") for k in range(300, 306)]


def test_copy_from_stdin_splits_rows_by_key(srouter, shards):
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        with conn.cursor().copy("COPY fo_orders (customer_id, id, note) FROM STDIN") as copy:
            for k in range(1, 41):
                copy.write_row((k, 1, f"tab\\there {k}" if k % 7 == 0 else f"c{k}"))
        counts = per_shard_counts(servers)
        assert sum(counts) == 40 and all(c > 0 for c in counts), counts
        # CSV with a header, quoted delimiters and an embedded newline.
        data = "customer_id,id,note\n" + "".join(f'{k},2,"x, ""y""\nz{k}"\n' for k in range(41, 61))
        with conn.cursor().copy("COPY fo_orders (customer_id, id, note) FROM STDIN (FORMAT csv, HEADER)") as copy:
            copy.write(data)
        assert conn.execute("SELECT note FROM fo_orders WHERE customer_id = 50").fetchone() == ('x, "y"\nz50',)
        # Binary, through psycopg's binary copy.
        with conn.cursor().copy("COPY fo_orders (customer_id, id) FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(["int8", "int4"])
            for k in range(61, 71):
                copy.write_row((k, 3))
        assert conn.execute("SELECT count(*) FROM fo_orders").fetchone() == (70,)
        # Every row where PostgreSQL's own hash partitioning puts it.
        for i, s in enumerate(servers):
            with s.connect(APP_DB) as c:
                c.execute("CREATE TABLE IF NOT EXISTS fo_hp (k bigint) PARTITION BY HASH (k)")
                bad = c.execute("SELECT count(*) FROM fo_orders o WHERE NOT satisfies_hash_partition("
                                "'fo_hp'::regclass, 3, %s, o.customer_id)", (i,)).fetchone()[0]
                c.execute("DROP TABLE fo_hp")
                assert bad == 0
        # Without a column list: the table's columns, learnt from shard 0.
        with conn.cursor().copy("COPY fo_orders FROM STDIN") as copy:
            copy.write_row((71, 4, 1.5, "no list"))
        assert conn.execute("SELECT note FROM fo_orders WHERE customer_id = 71").fetchone() == ("no list",)
        conn.execute("DELETE FROM fo_orders WHERE customer_id = 71")
        # A bad key: nothing copied anywhere, the session goes on.
        with pytest.raises(psycopg.Error) as err:
            with conn.cursor().copy("COPY fo_orders (customer_id, id) FROM STDIN") as copy:
                copy.write("100\t1\nnot-a-number\t1\n")
        assert sqlstate(err.value) == "22P02"
        assert conn.execute("SELECT count(*) FROM fo_orders").fetchone() == (70,)


def test_a_client_gone_mid_copy_leaves_no_shard_connection_in_copy(srouter, shards):
    """A client that vanishes in the middle of COPY FROM STDIN into a sharded
    table: its shards' connections are still in COPY, so they are closed
    (PostgreSQL aborts the COPY) — never checked in, where the next clients'
    first messages landed in that COPY (08P01 "unexpected message type 0x50
    during COPY from stdin")."""
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        a, b, c = keyed_empty_table(conn, servers)
    w = wire.connect(srouter.port, APP_USER, APP_DB, APP_PASSWORD)
    w.send(wire.query_message("COPY fo_orders (customer_id, id) FROM STDIN"))
    time.sleep(0.3)
    data = "".join(f"{k}\t1\n" for k in range(1, 50)).encode()
    w.send(wire.message(b"d", data))
    time.sleep(0.3)
    w.close()
    time.sleep(0.1)
    for i in range(10):
        with connect(srouter.dsn()) as conn:
            for k in (a, b, c):
                conn.execute("SELECT count(*) FROM fo_orders WHERE customer_id = %s", (k,)).fetchall()
            conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (%s, %s), (%s, %s)", (a, i, c, i))
    assert sum(per_shard_counts(servers)) == 20, "none of the gone client's rows"

    def in_copy():
        n = 0
        for s in servers:
            with s.connect(APP_DB) as conn:
                n += conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                                  "AND query LIKE 'COPY%' AND state = 'active'").fetchone()[0]
        return n == 0
    from harness.util import wait_until
    wait_until(in_copy, 3, what="the gone client's COPY ended on every shard")


def test_copy_to_stdout_joins_every_shard(srouter, shards):
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)
        load(conn, 30)
        for opts, parse in [("", lambda line: int(line.split("\t")[0])),
                            ("(FORMAT csv, HEADER)", lambda line: int(line.split(",")[0]))]:
            data = b""
            with conn.cursor().copy(f"COPY fo_orders (customer_id, note) TO STDOUT {opts}") as copy:
                for chunk in copy:
                    data += bytes(chunk)
            lines = data.decode().splitlines()
            if "HEADER" in opts:
                assert lines[0] == "customer_id,note" and "customer_id,note" not in lines[1:]
                lines = lines[1:]
            assert sorted(parse(line) for line in lines) == list(range(1, 31)), opts
        # Binary: one header, one trailer, every row, read back by psycopg.
        with conn.cursor().copy("COPY fo_orders (customer_id, id) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int8", "int4"])
            rows = list(copy.rows())
        assert sorted(r[0] for r in rows) == list(range(1, 31))
        # COPY (query): a plain union of rows is joined alike.
        data = b""
        with conn.cursor().copy("COPY (SELECT customer_id, upper(note) FROM fo_orders WHERE id < 3) "
                                "TO STDOUT (FORMAT csv, HEADER)") as copy:
            for chunk in copy:
                data += bytes(chunk)
        lines = data.decode().splitlines()
        want = [(k, f"N{k % 5}") for k in range(1, 31) if k % 7 < 3]
        assert lines[0] == "customer_id,upper"
        assert sorted((int(a), b) for a, b in (line.split(",") for line in lines[1:])) == want
        # ... but not an order, a limit or an aggregate, which joining cannot keep.
        for query in ["SELECT customer_id FROM fo_orders ORDER BY customer_id",
                      "SELECT count(*) FROM fo_orders", "SELECT customer_id FROM fo_orders LIMIT 3"]:
            with pytest.raises(psycopg.Error) as err:
                with conn.cursor().copy(f"COPY ({query}) TO STDOUT") as copy:
                    for _ in copy:
                        pass
            assert sqlstate(err.value) == "0A000", query
        assert conn.execute("SELECT count(*) FROM fo_orders").fetchone() == (30,)


def test_copy_and_executemany_inside_a_transaction(srouter, shards):
    """psycopg's default (not autocommit) sends BEGIN before the first
    statement: COPY and executemany then run inside that transaction, on
    every shard they need, and commit or roll back with it."""
    servers, _ = shards
    with connect(srouter.dsn()) as setup:
        setup.execute(CREATE)
    with connect(srouter.dsn(), autocommit=False) as conn:
        with conn.cursor().copy("COPY fo_orders (customer_id, id, note) FROM STDIN") as copy:
            for k in range(1, 31):
                copy.write_row((k, 1, "tx"))
        # The transaction sees its own rows; nobody else does yet.
        assert conn.execute("SELECT count(*) FROM fo_orders").fetchone() == (30,)
        assert sum(per_shard_counts(servers)) == 0
        conn.cursor().executemany("INSERT INTO fo_orders (customer_id, id, note) VALUES (%s, %s, %s)",
                                  [(k, 2, "many") for k in range(31, 51)])
        data = b""
        with conn.cursor().copy("COPY fo_orders (customer_id) TO STDOUT") as copy:
            for chunk in copy:
                data += bytes(chunk)
        assert sorted(int(x) for x in data.decode().split()) == list(range(1, 51))
        conn.commit()
        counts = per_shard_counts(servers)
        assert sum(counts) == 50 and all(c > 0 for c in counts), counts
        # Rolled back: nothing stays anywhere.
        with conn.cursor().copy("COPY fo_orders (customer_id, id) FROM STDIN") as copy:
            for k in range(100, 120):
                copy.write_row((k, 1))
        conn.cursor().executemany("INSERT INTO fo_orders (customer_id, id) VALUES (%s, %s)",
                                  [(k, 2) for k in range(120, 130)])
        conn.rollback()
        assert sum(per_shard_counts(servers)) == 50
        # A bad row fails the transaction, as PostgreSQL fails it.
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES (200, 1)")
        with pytest.raises(psycopg.Error) as err:
            with conn.cursor().copy("COPY fo_orders (customer_id, id) FROM STDIN") as copy:
                copy.write("201\t1\nnot-a-number\t1\n")
        assert sqlstate(err.value) == "22P02"
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT count(*) FROM fo_orders")
        assert sqlstate(err.value) == "25P02"
        conn.rollback()
        # A failing executemany row fails it too; the session goes on.
        with pytest.raises(psycopg.Error) as err:
            conn.cursor().executemany("INSERT INTO fo_orders (customer_id, id) VALUES (%s, %s)",
                                      [(300, 1), (301, 1), (5, 1), (302, 1)])
        assert sqlstate(err.value) == "23505"
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM fo_orders").fetchone() == (50,)
        conn.commit()
        # executemany first in its transaction: psycopg's BEGIN goes in the
        # same pipeline; the rows stay uncommitted until COMMIT.
        conn.cursor().executemany("INSERT INTO fo_orders (customer_id, id) VALUES (%s, %s)",
                                  [(k, 5) for k in range(400, 420)])
        assert sum(per_shard_counts(servers)) == 50
        assert conn.execute("SELECT count(*) FROM fo_orders").fetchone() == (70,)
        conn.rollback()
        conn.cursor().executemany("INSERT INTO fo_orders (customer_id, id) VALUES (%s, %s)",
                                  [(k, 5) for k in range(400, 420)])
        conn.commit()
    assert sum(per_shard_counts(servers)) == 70


def test_asyncpg_fetchrow_and_fetchval_over_shards(srouter, shards):
    """asyncpg's fetchrow and fetchval execute with a row limit of 1. A
    merged read answers as PostgreSQL does: that many rows, then
    PortalSuspended; in and outside a transaction, prepared or not."""
    servers, truth = shards
    order = "SELECT customer_id, amount FROM fo_orders ORDER BY amount DESC NULLS LAST, customer_id"
    with connect(srouter.dsn()) as conn, truth.connect(APP_DB) as t:
        conn.execute(CREATE)
        load_both(conn, t, 60)
        assert all(c > 0 for c in per_shard_counts(servers))
        want_count = t.execute("SELECT count(*) FROM fo_orders").fetchone()[0]
        want_max = t.execute("SELECT max(amount) FROM fo_orders").fetchone()[0]
        want_first = t.execute(order).fetchone()
        keys_with_id_3 = {r[0] for r in t.execute("SELECT customer_id FROM fo_orders WHERE id = 3")}
        want_groups = t.execute("SELECT id, count(*) FROM fo_orders GROUP BY id ORDER BY id").fetchall()

    async def reads(c):
        stmt = await c.prepare(order)
        return (await c.fetchval("SELECT count(*) FROM fo_orders"),
                await c.fetchval("SELECT max(amount) FROM fo_orders"),
                tuple(await c.fetchrow(order)),
                tuple(await stmt.fetchrow()),
                (await c.fetchrow("SELECT customer_id FROM fo_orders WHERE id = 3"))[0],
                tuple(await c.fetchrow("SELECT id, count(*) FROM fo_orders GROUP BY id ORDER BY id")),
                await c.fetchval("SELECT customer_id FROM fo_orders WHERE id = -1"))

    async def go():
        c = await aconnect(srouter)
        try:
            outside = await reads(c)
            async with c.transaction():
                inside = await reads(c)
                # Still usable in the same transaction afterwards.
                after = await c.fetchval("SELECT count(*) FROM fo_orders")
            return outside, inside, after
        finally:
            await c.close()
    outside, inside, after = run_async(go())
    for got in (outside, inside):
        count, top, first, first_prepared, key, group, none = got
        assert (count, top, first, first_prepared) == (want_count, want_max, tuple(want_first),
                                                         tuple(want_first))
        assert key in keys_with_id_3
        assert group == tuple(want_groups[0])
        assert none is None
    assert after == want_count


def test_execute_row_limits_answer_as_one_server_does(srouter, shards):
    """Execute with a row limit on the unnamed portal, in the wire protocol,
    compared message by message with one PostgreSQL holding all the rows:
    the first rows then PortalSuspended (also when exactly that many rows
    exist), or every row then CommandComplete when fewer. What cannot be
    answered exactly is refused with 0A000: continuing a suspended portal
    inside a transaction, and a named portal (a cursor) read in parts."""
    servers, truth = shards
    with connect(srouter.dsn()) as conn, truth.connect(APP_DB) as t:
        conn.execute(CREATE)
        load_both(conn, t, 60)
        t.execute("GRANT SELECT ON fo_orders TO app")
    ordered = "SELECT customer_id, amount FROM fo_orders ORDER BY customer_id"
    count = "SELECT count(*) FROM fo_orders"

    def exchange(port: int, sql: str, max_rows: int) -> list[tuple[bytes, list | None]]:
        c = wire.connect(port, APP_USER, APP_DB, APP_PASSWORD)
        try:
            c.send(wire.parse_message(sql) + wire.bind_message() + wire.execute_message("", max_rows)
                   + wire.sync_message())
            [batch] = c.read_batches(1)
            return [(m.kind, wire.data_row_values(m.body) if m.kind == b"D" else None)
                    for m in batch if m.kind not in (b"1", b"2")]
        finally:
            c.close()

    for sql, max_rows in [(ordered, 2), (ordered, 60), (ordered, 61), (ordered, 1000), (count, 1)]:
        want = exchange(truth.port, sql, max_rows)
        got = exchange(srouter.port, sql, max_rows)
        assert got == want, (sql, max_rows)
        assert want[-2][0] == (b"s" if max_rows <= 60 and sql == ordered or sql == count else b"C")

    c = wire.connect(srouter.port, APP_USER, APP_DB, APP_PASSWORD)
    try:
        c.simple_query("BEGIN")
        c.send(wire.parse_message(ordered) + wire.bind_message() + wire.execute_message("", 3)
               + wire.sync_message())
        [first] = c.read_batches(1)
        assert [m.kind for m in first if m.kind in b"DsC"] == [b"D", b"D", b"D", b"s"]
        # The rest of that portal: the shards ran theirs to the end.
        c.send(wire.execute_message("", 0) + wire.sync_message())
        [rest] = c.read_batches(1)
        [err] = wire.errors_in(rest)
        assert err["C"] == "0A000" and "shards" in err["M"], err
        assert rest[-1].body == b"E"
        c.simple_query("ROLLBACK")
        # A named portal read in parts (a cursor).
        c.simple_query("BEGIN")
        c.send(wire.parse_message(ordered) + wire.bind_message(portal="cur") + wire.execute_message("cur", 5)
               + wire.sync_message())
        [named] = c.read_batches(1)
        [err] = wire.errors_in(named)
        assert err["C"] == "0A000" and "cursor" in err["M"], err
        c.simple_query("ROLLBACK")
        # A new Bind starts a new portal: read whole, as usual.
        rows, tags, _ = c.simple_query(ordered)
        assert len(rows) == 60 and tags == ["SELECT 60"]
    finally:
        c.close()


def test_asyncpg_copy_records_and_queries_after_prepare_split_by_key(srouter, shards):
    """asyncpg's `copy_records_to_table` prepares a keyless SELECT of the
    table (Parse, Describe, Flush: no Sync), then sends its binary COPY as a
    simple Query; `execute()` without arguments after a `prepare()` does
    the same with an INSERT. Each row must land on its key's shard, not on
    the shard the prepared batch was routed to."""
    servers, _ = shards
    with connect(srouter.dsn()) as conn:
        conn.execute(CREATE)

    async def go():
        c = await aconnect(srouter)
        try:
            tag = await c.copy_records_to_table(
                "fo_orders", records=[(k, k % 7, k * 1.5, f"r{k}") for k in range(1, 41)],
                columns=["customer_id", "id", "amount", "note"])
            await c.prepare("SELECT customer_id FROM fo_orders")
            ins = await c.execute("INSERT INTO fo_orders VALUES " + ", ".join(
                f"({k}, 1, 1, 'x')" for k in range(41, 61)))
            found = [await c.fetchval("SELECT count(*) FROM fo_orders WHERE customer_id = $1", k)
                     for k in range(1, 61)]
            return tag, ins, found
        finally:
            await c.close()
    tag, ins, found = run_async(go())
    assert (tag, ins) == ("COPY 40", "INSERT 0 20")
    assert found == [1] * 60  # each key found on the shard its key names
    counts = per_shard_counts(servers)
    assert sum(counts) == 60 and all(c > 0 for c in counts), counts


def test_asyncpg_cursor_over_shards_is_refused_naming_the_cursor(srouter, shards):
    """asyncpg's `cursor()` binds a named portal (Bind + Sync) and fetches
    it in parts: reading a merged result in parts is not supported, and the
    refusal (0A000) says it is the cursor, not a batch shape the user
    never wrote. A cursor on one shard (its key given) works."""
    servers, truth = shards
    with connect(srouter.dsn()) as conn, truth.connect(APP_DB) as t:
        conn.execute(CREATE)
        load_both(conn, t, 30)
        key = t.execute("SELECT customer_id FROM fo_orders LIMIT 1").fetchone()[0]
        want_key_rows = t.execute("SELECT count(*) FROM fo_orders WHERE customer_id = %s", (key,)).fetchone()[0]

    async def go():
        c = await aconnect(srouter)
        try:
            async with c.transaction():
                cur = await c.cursor("SELECT id FROM fo_orders WHERE customer_id = $1", key)
                one_shard = len(await cur.fetch(100))
            with pytest.raises(asyncpg.exceptions.FeatureNotSupportedError) as err:
                async with c.transaction():
                    cur = await c.cursor("SELECT id FROM fo_orders")
                    await cur.fetch(5)
            return one_shard, str(err.value), await c.fetchval("SELECT 1")
        finally:
            await c.close()
    one_shard, refusal, after = run_async(go())
    assert one_shard == want_key_rows
    assert "cursor" in refusal, refusal
    assert after == 1


def copy_failure(conn, sql: str, data) -> tuple[str, str, str]:
    """(SQLSTATE, message, CONTEXT) of a COPY FROM STDIN of `data` that fails."""
    with pytest.raises(psycopg.Error) as err:
        with conn.cursor().copy(sql) as copy:
            copy.write(data)
    d = err.value.diag
    return d.sqlstate, d.message_primary, d.context


def shard_of_keys(servers, keys) -> dict[int, int]:
    """Which shard each key's row is on (the rows are there already)."""
    out = {}
    for i, s in enumerate(servers):
        with s.connect(APP_DB) as c:
            for (k,) in c.execute("SELECT customer_id FROM fo_orders WHERE customer_id = ANY(%s)",
                                  (list(keys),)):
                out[k] = i
    return out


def binary_copy(rows) -> bytes:
    """COPY binary data of (customer_id int8, id) rows; an `id` given as
    bytes is sent as they are (a malformed int4 when not 4 bytes)."""
    import struct
    out = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    for k, v in rows:
        field = v if isinstance(v, bytes) else struct.pack("!i", v)
        out += struct.pack("!hiq", 2, 8, k) + struct.pack("!i", len(field)) + field
    return out + struct.pack("!h", -1)


def test_a_shards_copy_error_names_the_clients_line(srouter, shards):
    """A bad value in COPY FROM data split across shards gets the error one
    PostgreSQL gives for the client's data: its CONTEXT names the row's line
    in what the client sent, not among the rows its shard got, and of two
    bad rows on different shards the first one in the client's data. Text,
    CSV with a header and rows spanning several lines, and binary."""
    servers, truth = shards
    keys = range(1, 61)
    with connect(srouter.dsn()) as conn, truth.connect(APP_DB) as t:
        t.autocommit = True
        t.execute("DROP TABLE IF EXISTS fo_orders")
        t.execute(CREATE)
        conn.execute(CREATE)
        conn.execute("INSERT INTO fo_orders (customer_id, id) VALUES "
                     + ", ".join(f"({k}, 0)" for k in keys))
        on = shard_of_keys(servers, keys)
        conn.execute("DELETE FROM fo_orders")
        # Two bad rows, the later one on shard 0 (whose error came first
        # when the shards' errors were taken in shard order): 40th and a
        # later row of shard 0, the earlier one on another shard.
        late = [k for k in keys if on[k] == 0 and k > 40][0]
        early = [k for k in keys if on[k] != 0 and k > 20][0]
        assert early < late
        def bad(k):
            return k in (early, late)
        text = "".join(f"{k}\t{'x' if bad(k) else 1}\tn{k}\n" for k in keys)
        csv = "customer_id,id,note\n" + "".join(
            f'{k},{"x" if bad(k) else 1},"two\nlines {k}"\n' if k % 3 == 0 else f"{k},{'x' if bad(k) else 1},one\n"
            for k in keys)
        binary = binary_copy([(k, b"\x00\x01" if bad(k) else 1) for k in keys])
        cases = [
            ("COPY fo_orders (customer_id, id, note) FROM STDIN", text),
            ("COPY fo_orders (customer_id, id, note) FROM STDIN (FORMAT csv, HEADER)", csv),
            ("COPY fo_orders (customer_id, id) FROM STDIN (FORMAT binary)", binary),
        ]
        for sql, data in cases:
            ours = copy_failure(conn, sql, data)
            theirs = copy_failure(t, sql, data)
            assert ours == theirs, (sql, ours, theirs)
            assert f"line {early + (1 if 'HEADER' in sql else 0)}" in ours[2] or "csv" in sql, ours
        assert sum(per_shard_counts(servers)) == 0
        t.execute("DROP TABLE fo_orders")
