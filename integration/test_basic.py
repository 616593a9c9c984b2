"""Plain use through the router: simple and extended queries with psycopg 3,
asyncpg and psql; results, types, notices, parameter status, pooling."""
from __future__ import annotations

import datetime
import decimal
import subprocess
import uuid

import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, run_async
from harness.pg import pg_tool


def test_psycopg_simple_query(router):
    with connect(router.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", "app")
        # Several statements in one simple Query message: the last result first,
        # then nextset() walks on.
        cur = conn.cursor()
        cur.execute("SELECT 1 AS a; SELECT 'two' AS b, 3 AS c")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        assert cur.fetchall() == [("two", 3)]


def test_psycopg_parameters_and_types(router):
    values = (
        42, -7.5, "héllo wörld", None, True, b"\x00\x01\xff",
        decimal.Decimal("12345.678"), datetime.date(2024, 2, 29),
        uuid.UUID("12345678-1234-5678-1234-567812345678"), [1, 2, 3],
    )
    with connect(router.dsn()) as conn:
        row = conn.execute(
            "SELECT %s::int, %s::float8, %s::text, %s::text, %s::bool, %s::bytea, "
            "%s::numeric, %s::date, %s::uuid, %s::int[]", values).fetchone()
        assert row == values
        # Binary results too.
        cur = conn.cursor(binary=True)
        assert cur.execute("SELECT %s::int8, %s::text", (2**40, "bin")).fetchone() == (2**40, "bin")


def test_ddl_insert_select(router, primary, table):
    with connect(router.dsn()) as conn:
        conn.execute(f"CREATE TABLE {table} (id int primary key, name text)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(i, f"n{i}") for i in range(50)])
        assert conn.execute(f"SELECT count(*), sum(id) FROM {table}").fetchone() == (50, 1225)
        cur = conn.execute(f"UPDATE {table} SET name = 'x' WHERE id < 10")
        assert cur.rowcount == 10
    # What the router said it did is what the primary holds.
    assert primary.scalar(f"SELECT count(*) FROM {table} WHERE name = 'x'") == 10


def test_large_results_and_values(router):
    with connect(router.dsn()) as conn:
        rows = conn.execute("SELECT g, md5(g::text) FROM generate_series(1, 100000) g").fetchall()
        assert len(rows) == 100000 and rows[-1][0] == 100000
        big = "x" * (5 * 1024 * 1024)
        assert conn.execute("SELECT length(%s::text)", (big,)).fetchone() == (len(big),)
        assert len(conn.execute("SELECT repeat('y', 8000000)").fetchone()[0]) == 8000000


def test_notices_are_forwarded(router):
    seen = []
    with connect(router.dsn()) as conn:
        conn.add_notice_handler(lambda d: seen.append((d.severity_nonlocalized, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        conn.execute("SELECT 1")
    assert ("NOTICE", "hello from plpgsql") in seen


def test_parameter_status_and_server_version(router, primary):
    with connect(router.dsn()) as conn:
        assert conn.info.parameter_status("server_version").startswith("15")
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        conn.execute("SET application_name = 'param_status_test'")
        assert conn.info.parameter_status("application_name") == "param_status_test"
        assert conn.execute("SHOW application_name").fetchone() == ("param_status_test",)


def test_empty_query_raw(router):
    conn = wire.connect(router.port, "app", "app", "app-secret")
    try:
        rows, tags, msgs = conn.simple_query("")
        assert [m.kind for m in msgs] == [b"I", b"Z"]
        rows, tags, _ = conn.simple_query("SELECT 7")
        assert rows == [["7"]] and tags == ["SELECT 1"]
    finally:
        conn.close()


def test_asyncpg_basic(router):
    async def main():
        conn = await aconnect(router, statement_cache_size=0)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            assert await conn.fetchval("SELECT $1::int + $2::int", 20, 22) == 42
            rows = await conn.fetch("SELECT g, g * 2 AS d FROM generate_series(1, 1000) g")
            assert len(rows) == 1000 and rows[999]["d"] == 2000
            assert await conn.fetchrow("SELECT current_user AS u") == ("app",)
            await conn.execute("SELECT pg_sleep(0)")
        finally:
            await conn.close()
    run_async(main())


def test_sequential_clients_reuse_server_connections(router, primary):
    """30 clients one after another: the router pools, so they share at most
    `default_pool_size` (10) server backends, and none is left half-used."""
    pids = set()
    for i in range(30):
        with connect(router.dsn()) as conn:
            pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
    assert 1 <= len(pids) <= 10, pids
    backends = primary.pool_backends(user="app", db="app")
    assert len(backends) <= 10
    assert all(b["state"] == "idle" for b in backends), backends


def test_psql(router, table, tmp_path):
    env = router.psql_env()
    psql = pg_tool("psql")
    out = subprocess.run([psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c",
                          "SELECT current_user || '@' || current_database()"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app@app"

    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{i},name {i}\n" for i in range(1, 1001)))
    script = f"""
\\set ON_ERROR_STOP 1
CREATE TABLE {table} (id int primary key, name text);
BEGIN;
INSERT INTO {table} VALUES (0, 'zero');
COMMIT;
\\copy {table} FROM '{data}' WITH (FORMAT csv)
SELECT count(*), sum(id) FROM {table};
"""
    out = subprocess.run([psql, "-X", "-A", "-t", "-q"], input=script, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1001|500500"


def test_psql_reports_errors(router):
    out = subprocess.run([pg_tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT 1/0"],
                         env=router.psql_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "division by zero" in out.stderr


def test_prepared_statement_inside_one_transaction_psycopg(router):
    """psycopg prepares (named) statements it runs often; inside one
    transaction the server connection is pinned, so that always works."""
    with connect(router.dsn(), autocommit=False, prepare_threshold=0) as conn:
        with conn.transaction():
            for i in range(10):
                assert conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone() == (2 * i,)
        conn.rollback()


def test_unknown_sql_error_keeps_connection(router):
    with connect(router.dsn()) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table_here")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
        assert conn.execute("SELECT 'still fine'").fetchone() == ("still fine",)
