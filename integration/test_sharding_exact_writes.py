"""Statements whose shard keys or replicated effects the router cannot see
as written (SPEC §5 "Sharding"): the answer must still be exact, or 0A000.

- A write to a reference table runs on every shard: reading a sharded table
  (each shard sees only its rows) or calling random()/now() (each server its
  own value) would leave the copies different, so it is refused.
- INSERT ... DEFAULT VALUES into a sharded table: the key is computed by the
  shard that runs it, so no shard is known to be right: refused.
- A key literal under a cast that changes it (`'abc'::varchar(2)` is 'ab')
  is routed by the cast's value, or not routed by it at all.
- `key = ANY('{{1,2},{3,4}}')`: PostgreSQL compares with every element.

Shares the three-shard setup of test_sharding_routing.py."""
from __future__ import annotations

import psycopg
import pytest

from harness.clients import connect
from harness import wire
from harness.pg import APP_DB, APP_PASSWORD, APP_USER
from test_sharding_routing import hash_shard, per_shard, refused, shards, srouter  # noqa: F401 (fixtures)


def test_reference_table_writes_that_would_differ_per_shard_are_refused(srouter, shards):
    for s in shards:
        with s.connect(APP_DB) as c:
            c.execute("CREATE OR REPLACE FUNCTION public.sh_own_fn() RETURNS text LANGUAGE sql AS $$SELECT 'x'$$")
    with connect(srouter.dsn()) as conn:
        conn.execute("INSERT INTO sh_countries VALUES ('de'), ('fr'), ('it')")
        conn.execute("INSERT INTO sh_items (customer_id, item) VALUES (1, 'de'), (2, 'fr'), (3, 'it')")
        for sql in ["UPDATE sh_countries SET code = 'x' WHERE code IN (SELECT item FROM sh_items WHERE customer_id = 1)",
                    "DELETE FROM sh_countries WHERE code IN (SELECT item FROM sh_items WHERE customer_id > 1)",
                    "DELETE FROM sh_countries c USING sh_items i WHERE i.item = c.code",
                    "INSERT INTO sh_countries SELECT item || '2' FROM sh_items"]:
            assert "reads sharded table \"sh_items\"" in refused(conn, sql), sql
        for sql in ["UPDATE sh_countries SET code = md5(random()::text) WHERE code = 'de'",
                    "INSERT INTO sh_countries VALUES (gen_random_uuid()::text)",
                    "INSERT INTO sh_countries VALUES (now()::text)",
                    "UPDATE sh_countries SET code = CURRENT_TIMESTAMP::text WHERE code = 'de'",
                    "INSERT INTO sh_countries VALUES (current_database())",
                    "DELETE FROM sh_countries WHERE random() < 0.5",
                    # A function of the database's own: whether every server
                    # gives the same value is not known.
                    "INSERT INTO sh_countries VALUES (public.sh_own_fn())"]:
            assert "must be deterministic" in refused(conn, sql), sql
        # One that does not exist: PostgreSQL's own error, as from one server
        # (the statement is rejected anyway).
        assert "does not exist" in refused(conn, "INSERT INTO sh_countries VALUES (public.sh_no_such_fn())",
                                           code="42883")
        # Deterministic writes, reading only reference tables: every copy alike.
        cur = conn.execute("UPDATE sh_countries SET code = upper(code) WHERE code IN ('de', 'fr')")
        assert cur.statusmessage == "UPDATE 2"
        cur = conn.execute("INSERT INTO sh_countries SELECT lower(code) FROM sh_countries WHERE code = 'DE'")
        assert cur.statusmessage == "INSERT 0 1"
        conn.execute("UPDATE sh_countries SET code = code || current_user WHERE code = 'it'")
    want = [("DE",), ("FR",), ("de",), ("itapp",)]
    assert per_shard(shards, "SELECT code FROM sh_countries ORDER BY code COLLATE \"C\"") == [want] * 3


def test_insert_default_values_into_a_sharded_table_is_refused(srouter, shards):
    with connect(srouter.dsn()) as conn:
        msg = refused(conn, "INSERT INTO sh_orders DEFAULT VALUES")
        assert "DEFAULT VALUES" in msg and "customer_id" in msg
        refused(conn, "WITH w AS (INSERT INTO sh_orders DEFAULT VALUES RETURNING *) SELECT * FROM w")
        refused(conn, "EXPLAIN (ROUTE) INSERT INTO sh_orders DEFAULT VALUES")
        # A reference table has no key: DEFAULT VALUES is written everywhere.
        conn.execute("INSERT INTO sh_countries DEFAULT VALUES")
    assert per_shard(shards, "SELECT count(*) FROM sh_orders") == [[(0,)]] * 3
    assert per_shard(shards, "SELECT count(*) FROM sh_countries") == [[(1,)]] * 3


def test_key_literals_under_value_changing_casts(srouter, shards):
    with connect(srouter.dsn()) as conn:
        # Text key: 'ab' and 'abc', 'x' and 'xyz' are on different shards.
        conn.execute("INSERT INTO sh_users (name, age) VALUES ('ab', 1), ('abc', 2), ('x', 3)")
        conn.execute("INSERT INTO sh_orders (customer_id, note) VALUES (3, 'three'), (1000, 'k')")
        for sql, want in [("SELECT age FROM sh_users WHERE name = 'abc'::varchar(2)", [1]),
                          ("SELECT age FROM sh_users WHERE name = CAST('abc' AS character varying(2))", [1]),
                          ("SELECT age FROM sh_users WHERE name = 'xyz'::char(1)", [3]),
                          ("SELECT age FROM sh_users WHERE name = 'xyz'::char", [3]),
                          ("SELECT age FROM sh_users WHERE name = 'abc   '::char(6)", [2]),
                          ("SELECT age FROM sh_users WHERE name = 'x  '::bpchar", [3]),
                          ("SELECT age FROM sh_users WHERE name IN ('abq'::varchar(2), 'x')", [1, 3]),
                          ("SELECT age FROM sh_users WHERE name = ANY(ARRAY['abcd', 'xy']::varchar(1)[])", [3]),
                          ("SELECT age FROM sh_users WHERE name = ANY('{abcd}'::varchar(3)[])", [2]),
                          ("SELECT age FROM sh_users WHERE name = 'abc'::varchar", [2])]:
            got = sorted(r[0] for r in conn.execute(sql).fetchall())
            assert got == want, sql
        for sql, want in [("SELECT note FROM sh_orders WHERE customer_id = 2.7::int", ["three"]),
                          ("SELECT note FROM sh_orders WHERE customer_id = 1e3::bigint", ["k"])]:
            assert [r[0] for r in conn.execute(sql).fetchall()] == want, sql
        with conn.cursor() as cur:
            cur.execute("SELECT age FROM sh_users WHERE name = %s::varchar(2)", ("abc",))
            assert cur.fetchall() == [(1,)]
        # A write whose key is unknown is refused, not misplaced.
        refused(conn, "INSERT INTO sh_users (name, age) VALUES ('xyz'::varchar(1), 4)")
        refused(conn, "INSERT INTO sh_users (name, age) VALUES (%s::varchar(1), 4)", ("xyz",))
        refused(conn, "INSERT INTO sh_orders (customer_id, note) VALUES (2.7::int, 'r')")
        # Casts that keep the value still route to one shard.
        conn.execute("INSERT INTO sh_users (name, age) VALUES ('q'::varchar, 5), (CAST('r' AS text), 6)")
        assert conn.execute("SELECT age FROM sh_users WHERE name IN ('q', 'r') ORDER BY age").fetchall() == [(5,), (6,)]
    assert sum(c for [(c,)] in per_shard(shards, "SELECT count(*) FROM sh_users WHERE age >= 4")) == 2


def test_any_with_a_multidimensional_array(srouter, shards):
    with connect(srouter.dsn()) as conn:
        for k in range(1, 6):
            conn.execute("INSERT INTO sh_orders (customer_id, note) VALUES (%s, 'n')", (k,))
        for sql in ["SELECT customer_id FROM sh_orders WHERE customer_id = ANY('{{1,2},{3,4}}') ORDER BY 1",
                    "SELECT customer_id FROM sh_orders WHERE customer_id = ANY('{{1,2},{3,4}}'::bigint[]) ORDER BY 1",
                    "SELECT customer_id FROM sh_orders WHERE customer_id = ANY('[0:1][1:2]={{1,2},{3,4}}') "
                    "ORDER BY 1"]:
            assert conn.execute(sql).fetchall() == [(1,), (2,), (3,), (4,)], sql
        for fmt in ("%s", "%b"):
            got = conn.execute(f"SELECT customer_id FROM sh_orders WHERE customer_id = ANY({fmt}::bigint[]) "
                               "ORDER BY 1", ([[1, 5], [3, 4]],)).fetchall()
            assert got == [(1,), (3,), (4,), (5,)], fmt
        # Malformed: PostgreSQL's own error.
        try:
            conn.execute("SELECT 1 FROM sh_orders WHERE customer_id = ANY('{{1,2},3}')")
            raise AssertionError("accepted")
        except psycopg.Error as e:
            assert e.sqlstate == "22P02"


def test_pipeline_failing_on_one_shard_of_a_transaction_reports_failed_status(srouter, shards):
    """A pipeline inside a transaction with statements on two shards, one
    failing (23505): every ReadyForQuery after it — the explicit Sync's and
    the one psycopg sends at the pipeline's end — says the transaction
    failed (E), as PostgreSQL's would; later statements get 25P02."""
    on = {}
    for k in range(1, 50):
        on.setdefault(hash_shard(shards[0], "sh_hp_int8", 3, k), k)
    a, b, c3 = on[0], on[1], on[2]
    for s in shards:
        with s.connect(APP_DB) as c:
            c.execute("CREATE UNIQUE INDEX IF NOT EXISTS sh_orders_key ON sh_orders (customer_id)")
    try:
        with connect(srouter.dsn(), autocommit=False) as conn:
            conn.execute("INSERT INTO sh_orders (customer_id, note) VALUES (%s, 'a'), (%s, 'b'), (%s, 'c')",
                         (a, b, c3))
            conn.commit()
            with pytest.raises(psycopg.errors.UniqueViolation):
                with conn.pipeline() as p:
                    conn.execute("UPDATE sh_orders SET note = 'a2' WHERE customer_id = %s", (a,))
                    conn.execute("INSERT INTO sh_orders (customer_id, note) VALUES (%s, 'dup')", (b,))
                    conn.execute("UPDATE sh_orders SET note = 'c3' WHERE customer_id = %s", (c3,))
                    p.sync()
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                conn.execute("SELECT note FROM sh_orders WHERE customer_id = %s", (a,))
            conn.rollback()
            got = conn.execute("SELECT customer_id, note FROM sh_orders ORDER BY 1").fetchall()
            assert got == sorted([(a, "a"), (b, "b"), (c3, "c")])
            conn.rollback()
    finally:
        for s in shards:
            with s.connect(APP_DB) as c:
                c.execute("DROP INDEX IF EXISTS sh_orders_key")


WRITES_ON_SEVERAL_SHARDS = [
    "UPDATE sh_orders SET note = 'u'",
    "DELETE FROM sh_orders WHERE note = 'nobody'",
    "INSERT INTO sh_orders (customer_id, note) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    "UPDATE sh_orders SET note = 'r' RETURNING customer_id",
    "INSERT INTO sh_orders (customer_id, note) VALUES (4, 'd'), (5, 'e'), (6, 'f') RETURNING note",
]


DDL_ON_EVERY_SHARD = ["CREATE TABLE sh_ddl_probe (a int)", "DROP TABLE sh_ddl_probe"]


def kinds(conn: wire.RawConn, sql: str) -> list[bytes]:
    """The message kinds answering Parse/Bind/Describe portal/Execute/Sync
    of `sql` (DataRows left out: the row counts differ), with the command
    tag's verb and ReadyForQuery's status."""
    conn.send(wire.extended_query(sql) + wire.sync_message())
    out = []
    for m in conn.read_batches(1)[0]:
        if m.kind == b"D":
            continue
        if m.kind == b"E":
            raise AssertionError(wire.parse_error_fields(m.body))
        extra = {b"C": m.body.split(b" ")[0], b"Z": m.body[:1]}.get(m.kind, b"")
        out.append(m.kind + extra)
    return out


@pytest.mark.parametrize("in_transaction", [False, True])
def test_writes_on_several_shards_answer_describe_as_postgresql(srouter, shards, in_transaction):
    """A Describe of the portal of a statement on several shards (write,
    DDL, savepoint, SET) is answered as PostgreSQL answers it: NoData
    without a result (it was left out), the RowDescription with one."""
    more = ["SAVEPOINT sp", "SET LOCAL work_mem = '8MB'", "RELEASE SAVEPOINT sp"] if in_transaction else []
    statements = WRITES_ON_SEVERAL_SHARDS + DDL_ON_EVERY_SHARD + more

    def answers(port: int) -> list[list[bytes]]:
        conn = wire.RawConn.open(port)
        conn.startup(APP_USER, APP_DB, APP_PASSWORD)
        try:
            if in_transaction:
                conn.simple_query("BEGIN")
            # Through the router: on every shard of the transaction already.
            conn.simple_query("INSERT INTO sh_orders (customer_id, note) VALUES (7, 'x'), (8, 'y'), (9, 'z')")
            return [kinds(conn, sql) for sql in statements]
        finally:
            conn.simple_query("ROLLBACK" if in_transaction else "DELETE FROM sh_orders")
            conn.close()

    direct = answers(shards[1].port)
    routed = answers(srouter.port)
    for sql, d, r in zip(statements, direct, routed):
        assert r == d, sql


def test_a_read_on_several_shards_whose_bind_fails_answers_as_postgresql(srouter, shards):
    """A Bind the shards refuse (too few parameters, a value that is not
    an integer) gets ParseComplete and the ErrorResponse, as PostgreSQL
    answers: no BindComplete first (the router used to say it before the
    shards answered)."""
    batches = [
        wire.parse_message("SELECT note FROM sh_orders WHERE note = $1") + wire.bind_message(),
        wire.parse_message("SELECT note FROM sh_orders WHERE customer_id > $1::int")
        + wire.bind_message(["abc"]),
        wire.parse_message("SELECT note FROM sh_orders WHERE customer_id > $1::int")
        + wire.bind_message(["1"]),
    ]

    def answers(port: int) -> list[list[bytes]]:
        conn = wire.RawConn.open(port)
        conn.startup(APP_USER, APP_DB, APP_PASSWORD)
        out = []
        try:
            for batch in batches:
                conn.send(batch + wire.describe_message() + wire.execute_message() + wire.sync_message())
                out.append([m.kind + (wire.parse_error_fields(m.body)["C"].encode() if m.kind == b"E" else b"")
                            for m in conn.read_batches(1)[0] if m.kind != b"D"])
        finally:
            conn.close()
        return out

    direct, routed = answers(shards[1].port), answers(srouter.port)
    assert routed == direct
    assert [a[:2] for a in routed] == [[b"1", b"E08P01"], [b"1", b"E22P02"], [b"1", b"2"]]


def test_a_named_statement_parsed_and_bound_in_one_batch_is_routed_by_its_keys(srouter, shards):
    """pgjdbc (past prepareThreshold) and Npgsql send Parse of a named
    statement and its Bind in one batch. The router planned such a Bind
    without the statement (it learns named statements as their Parse is
    forwarded): a read on several shards ran on one shard only (a silently
    partial result), an INSERT went to shard 0 whatever its key, a keyless
    UPDATE changed one shard's rows."""
    keys = list(range(1, 13))
    placed = {k: hash_shard(shards[0], "sh_hp_int8", 3, k) for k in keys}
    assert len(set(placed.values())) == 3
    conn = wire.RawConn.open(srouter.port)
    conn.startup(APP_USER, APP_DB, APP_PASSWORD)

    def batch(sql: str, name: str, params: list[str], portal: str = "") -> list[wire.Msg]:
        conn.send(wire.parse_message(sql, name) + wire.bind_message(params, portal=portal, statement=name)
                  + wire.describe_message(b"P", portal) + wire.execute_message(portal) + wire.sync_message())
        msgs = conn.read_batches(1)[0]
        errors = [wire.parse_error_fields(m.body) for m in msgs if m.kind == b"E"]
        assert not errors, errors
        return msgs

    try:
        for k in keys:
            batch("INSERT INTO sh_orders (customer_id, note) VALUES ($1, 'n')", f"S_ins{k}", [str(k)])
        for shard, server in enumerate(shards):
            with server.connect(APP_DB) as c:
                got = {r[0] for r in c.execute("SELECT customer_id FROM sh_orders")}
            assert got == {k for k in keys if placed[k] == shard}, f"shard {shard}"
        rows = batch("SELECT customer_id FROM sh_orders ORDER BY 1", "S_read", [], portal="C_1")
        assert [int(wire.data_row_values(m.body)[0]) for m in rows if m.kind == b"D"] == keys
        done = batch("UPDATE sh_orders SET note = 'u'", "S_upd", [])
        assert [m.body for m in done if m.kind == b"C"] == [b"UPDATE 12\0"]
        for server in shards:
            with server.connect(APP_DB) as c:
                assert c.execute("SELECT count(*) FROM sh_orders WHERE note <> 'u'").fetchone() == (0,)
    finally:
        conn.close()
