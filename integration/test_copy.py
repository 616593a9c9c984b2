"""COPY both ways through the router, checked against the primary itself."""
from __future__ import annotations

import hashlib
import subprocess

import asyncpg
import psycopg
import pytest

from harness.clients import aconnect, connect, run_async

N = 100_000


def row_text(i: int) -> str:
    return f"row {i} \u00e9\u00e8 {'x' * (i % 37)}"


def checksum_sql(table: str) -> str:
    return (f"SELECT count(*), coalesce(sum(id), 0), "
            f"md5(coalesce(string_agg(id::text || ':' || val, ',' ORDER BY id), '')) FROM {table}")


def expected_checksum(ids) -> tuple:
    ids = sorted(ids)
    joined = ",".join(f"{i}:{row_text(i)}" for i in ids)
    return (len(ids), sum(ids), hashlib.md5(joined.encode()).hexdigest())


def create(primary, table):
    primary.sql(f"CREATE TABLE {table} (id int primary key, val text not null)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")


def test_copy_from_stdin_100k(router, primary, table):
    create(primary, table)
    with connect(router.dsn()) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} (id, val) FROM STDIN") as copy:
                for i in range(1, N + 1):
                    copy.write_row((i, row_text(i)))
            assert cur.rowcount == N
        via_router = conn.execute(checksum_sql(table)).fetchone()
    direct = tuple(primary.sql(checksum_sql(table))[0])
    assert direct == expected_checksum(range(1, N + 1))
    assert tuple(via_router) == direct


def test_copy_to_stdout_100k(router, primary, table):
    create(primary, table)
    primary.sql(f"INSERT INTO {table} SELECT g, 'row ' || g || ' éè ' || repeat('x', g % 37) "
                f"FROM generate_series(1, {N}) g")
    query = f"COPY (SELECT id, val FROM {table} ORDER BY id) TO STDOUT"

    def copy_out(dsn: str) -> tuple[int, str]:
        h = hashlib.md5()
        lines = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.cursor() as cur:
                with cur.copy(query) as copy:
                    for block in copy:
                        h.update(block)
                        lines += bytes(block).count(b"\n")
        return lines, h.hexdigest()

    via_router = copy_out(router.dsn())
    direct = copy_out(primary.dsn())
    assert direct[0] == N
    assert via_router == direct
    expected = "".join(f"{i}\t{row_text(i)}\n" for i in range(1, N + 1)).encode()
    assert direct[1] == hashlib.md5(expected).hexdigest()


def test_copy_binary_roundtrip_asyncpg(router, primary, table):
    create(primary, table)

    async def main():
        conn = await aconnect(router, statement_cache_size=0)
        try:
            await conn.copy_records_to_table(
                table, records=[(i, row_text(i)) for i in range(1, 20001)], columns=["id", "val"])
            out = []

            async def sink(chunk):
                out.append(chunk)
            await conn.copy_from_query(f"SELECT id FROM {table} ORDER BY id", output=sink,
                                       format="csv")
            return b"".join(out)
        finally:
            await conn.close()
    data = run_async(main())
    assert data.split() == [str(i).encode() for i in range(1, 20001)]
    assert tuple(primary.sql(checksum_sql(table))[0]) == expected_checksum(range(1, 20001))


class ClientAbort(Exception):
    pass


def test_copy_error_midway_keeps_connection(router, primary, table):
    create(primary, table)
    with connect(router.dsn()) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with conn.cursor() as cur:
                with cur.copy(f"COPY {table} (id, val) FROM STDIN") as copy:
                    for i in range(1, 1000):
                        copy.write(f"{i}\tok\n")
                    copy.write("not-a-number\tbad\n")
                    for i in range(1000, 2000):
                        copy.write(f"{i}\tok\n")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        # The client aborts a COPY itself: psycopg sends CopyFail.
        with pytest.raises(ClientAbort):
            with conn.cursor() as cur:
                with cur.copy(f"COPY {table} (id, val) FROM STDIN") as copy:
                    copy.write("1\tok\n")
                    raise ClientAbort("client gave up")
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
    assert primary.scalar(f"SELECT count(*) FROM {table}") == 0


def test_copy_inside_transaction(router, primary, table):
    create(primary, table)
    with connect(router.dsn(), autocommit=False) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} FROM STDIN") as copy:
                for i in range(1, 101):
                    copy.write_row((i, row_text(i)))
            cur.execute(f"UPDATE {table} SET val = 'changed' WHERE id <= 10")
        conn.rollback()
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} FROM STDIN") as copy:
                for i in range(1, 51):
                    copy.write_row((i, row_text(i)))
        conn.commit()
    assert tuple(primary.sql(checksum_sql(table))[0]) == expected_checksum(range(1, 51))


@pytest.mark.parametrize("in_tx", [False, True])
@pytest.mark.parametrize("reset", [False, True])
def test_client_gone_mid_copy_never_hands_the_copy_to_another_client(routers, primary, table,
                                                                       in_tx, reset):
    """A client that goes away in the middle of COPY FROM STDIN (after some
    data, without CopyDone or CopyFail): the server connection is never
    given to another client still inside that COPY, and nothing the gone
    client sent is committed."""
    from harness import wire
    from harness.pg import APP_DB, APP_PASSWORD, APP_USER
    create(primary, table)
    router = routers.start(general={"default_pool_size": 1})
    raw = wire.RawConn.open(router.port)
    raw.startup(APP_USER, APP_DB, APP_PASSWORD)
    sql = f"COPY {table} (id, val) FROM STDIN"
    raw.send(wire.query_message(f"BEGIN; {sql}" if in_tx else sql))
    kinds = []
    while not kinds or kinds[-1] != b"G":
        kinds.append(raw.read_msg().kind)
    raw.send(wire.message(b"d", b"1\tone\n2\ttwo\n"))
    raw.close(reset=reset)
    with connect(router.dsn()) as c:
        for _ in range(3):
            assert c.execute("SELECT 1").fetchone() == (1,)
            assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


# ------------------------------------------- COPY in the extended protocol --
def libpq_conn(dsn: str):
    """A bare libpq connection (psycopg.pq): COPY sent with PQsendQueryParams
    goes as Parse/Bind/Describe/Execute/Sync, and PQputCopyEnd then sends
    CopyDone *and* a second Sync — the server ignores the first Sync while
    in COPY mode and answers only the second (tokio-postgres does the same)."""
    from psycopg import pq
    conn = pq.PGconn.connect(dsn.encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    return conn


def libpq_wait(conn, timeout: float = 10.0) -> None:
    """Wait until libpq has a whole result (or COPY data) to hand out;
    fail instead of blocking forever when the answer never comes."""
    import select
    import time
    deadline = time.monotonic() + timeout
    while conn.is_busy():
        left = deadline - time.monotonic()
        assert left > 0, "no answer within the timeout"
        select.select([conn.socket], [], [], left)
        conn.consume_input()


def libpq_wait_readable(conn, timeout: float = 10.0) -> None:
    import select
    assert select.select([conn.socket], [], [], timeout)[0], "no COPY data within the timeout"
    conn.consume_input()


def libpq_results(conn) -> list:
    """Every result of the request in flight, up to the end (None)."""
    out = []
    while True:
        libpq_wait(conn)
        res = conn.get_result()
        if res is None:
            return out
        out.append(res)


def libpq_copy_in(conn, sql: str, chunks: list[bytes], fail: str | None = None) -> list:
    """COPY ... FROM STDIN through the extended protocol; returns the
    results after the end of the data (CopyFail with `fail` if given)."""
    from psycopg import pq
    conn.send_query_params(sql.encode(), None)
    libpq_wait(conn)
    res = conn.get_result()
    assert res.status == pq.ExecStatus.COPY_IN, (res.status, res.error_message)
    for chunk in chunks:
        assert conn.put_copy_data(chunk) == 1
    assert conn.put_copy_end(fail.encode() if fail else None) == 1
    return libpq_results(conn)


def libpq_value(conn, sql: str):
    from psycopg import pq
    conn.send_query_params(sql.encode(), None)
    results = libpq_results(conn)
    assert [r.status for r in results] == [pq.ExecStatus.TUPLES_OK], \
        [(r.status, r.error_message) for r in results]
    return results[0].get_value(0, 0).decode()


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_copy_from_stdin_in_the_extended_protocol(routers, primary, table, pool_mode):
    """libpq's PQsendQueryParams("COPY ... FROM STDIN"): the Sync sent
    before the data is ignored by the server (it is in COPY mode), so the
    whole COPY has one ReadyForQuery. The client gets its COPY tag, its
    next statements answered, and (pool of 1, transaction mode) the server
    goes back to the pool for another client — also after a bad row and
    after a CopyFail."""
    from psycopg import pq
    create(primary, table)
    router = routers.start(general={"default_pool_size": 1, "pool_mode": pool_mode,
                                    "checkout_timeout_ms": 2000})
    conn = libpq_conn(router.dsn())
    try:
        sql = f"COPY {table} (id, val) FROM STDIN"
        results = libpq_copy_in(conn, sql, [f"{i}\t{row_text(i)}\n".encode() for i in range(1, 101)])
        assert [(r.status, r.command_status) for r in results] == [(pq.ExecStatus.COMMAND_OK, b"COPY 100")]
        assert libpq_value(conn, f"SELECT count(*) FROM {table}") == "100"
        # A bad row: the COPY fails with the server's error, the session goes on.
        results = libpq_copy_in(conn, sql, [b"101\tok\n", b"oops\tbad\n"])
        assert [r.status for r in results] == [pq.ExecStatus.FATAL_ERROR]
        assert results[0].error_field(pq.DiagnosticField.SQLSTATE) == b"22P02"
        assert libpq_value(conn, f"SELECT count(*) FROM {table}") == "100"
        # The client gives up: CopyFail.
        results = libpq_copy_in(conn, sql, [b"102\tok\n"], fail="client gave up")
        assert [r.status for r in results] == [pq.ExecStatus.FATAL_ERROR]
        assert b"client gave up" in results[0].error_message
        assert libpq_value(conn, "SELECT 'usable'") == "usable"
        if pool_mode == "transaction":
            with connect(router.dsn()) as other:
                assert other.execute(f"SELECT count(*) FROM {table}").fetchone() == (100,)
    finally:
        conn.finish()
    assert tuple(primary.sql(checksum_sql(table))[0]) == expected_checksum(range(1, 101))


def test_copy_to_stdout_in_the_extended_protocol(routers, primary, table):
    """COPY ... TO STDOUT through PQsendQueryParams: the data, the tag, and
    the server back in the pool for the next client."""
    from psycopg import pq
    create(primary, table)
    primary.sql(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 1000) g")
    router = routers.start(general={"default_pool_size": 1, "checkout_timeout_ms": 2000})
    conn = libpq_conn(router.dsn())
    try:
        conn.send_query_params(f"COPY (SELECT id, val FROM {table} ORDER BY id) TO STDOUT (FORMAT csv)".encode(),
                               None)
        libpq_wait(conn)
        res = conn.get_result()
        assert res.status == pq.ExecStatus.COPY_OUT, (res.status, res.error_message)
        data = b""
        while True:
            n, chunk = conn.get_copy_data(1)
            if n == 0:
                libpq_wait_readable(conn)
                continue
            if n < 0:
                break
            data += bytes(chunk)
        results = libpq_results(conn)
        assert [(r.status, r.command_status) for r in results] == [(pq.ExecStatus.COMMAND_OK, b"COPY 1000")]
        assert data == "".join(f"{i},v{i}\n" for i in range(1, 1001)).encode()
        assert libpq_value(conn, "SELECT 'usable'") == "usable"
        with connect(router.dsn()) as other:
            assert other.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.finish()


# ------------------------------------------------------- other clients --
def test_psycopg_binary_and_csv_both_ways(router, primary, table):
    """psycopg's cursor.copy in binary format and in CSV with HEADER, quotes,
    embedded delimiters and newlines, both ways."""
    create(primary, table)
    with connect(router.dsn()) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} (id, val) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                for i in range(1, 5001):
                    copy.write_row((i, row_text(i)))
            assert cur.rowcount == 5000
            with cur.copy(f"COPY {table} (id, val) FROM STDIN (FORMAT csv, HEADER)") as copy:
                copy.write('id,val\n5001,"a,""b""\nc"\n')
            with cur.copy(f"COPY (SELECT id, val FROM {table} ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                rows = list(copy.rows())
            assert rows == [(i, row_text(i)) for i in range(1, 5001)] + [(5001, 'a,"b"\nc')]
            with cur.copy(f"COPY (SELECT id, val FROM {table} WHERE id >= 4999 ORDER BY id) "
                          "TO STDOUT (FORMAT csv, HEADER)") as copy:
                data = b"".join(bytes(b) for b in copy)
            assert data == f'id,val\n4999,{row_text(4999)}\n5000,{row_text(5000)}\n5001,"a,""b""\nc"\n'.encode()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_asyncpg_copy_to_and_from_table(router, primary, table, tmp_path):
    """asyncpg's copy_to_table from a CSV file, copy_records_to_table, and
    copy_from_table to a file; a COPY that fails (duplicate key) leaves the
    connection usable."""
    create(primary, table)
    src = tmp_path / "in.csv"
    src.write_text("".join(f"{i},{row_text(i)}\n" for i in range(1, 3001)))
    out = tmp_path / "out.txt"

    async def main():
        conn = await aconnect(router)
        try:
            tags = [await conn.copy_to_table(table, source=str(src), format="csv", columns=["id", "val"]),
                    await conn.copy_records_to_table(table, records=[(i, row_text(i)) for i in range(3001, 4001)]),
                    await conn.copy_from_table(table, output=str(out), format="text")]
            try:
                await conn.copy_records_to_table(table, records=[(1, "duplicate")])
                failed = None
            except asyncpg.UniqueViolationError as exc:
                failed = exc.sqlstate
            return tags, failed, await conn.fetchval(f"SELECT count(*) FROM {table}")
        finally:
            await conn.close()
    assert run_async(main()) == (["COPY 3000", "COPY 1000", "COPY 4000"], "23505", 4000)
    assert sorted(out.read_text().splitlines()) == sorted(f"{i}\t{row_text(i)}" for i in range(1, 4001))


def test_psql_copy_both_ways(router, primary, table, tmp_path):
    """psql: \\copy from and to a file, a bad row (the error, then the next
    command runs), and COPY FROM STDIN with inline data in a script, inside
    a transaction rolled back and outside one."""
    create(primary, table)
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{i}\t{row_text(i)}\n" for i in range(1, 2001)))
    out = tmp_path / "out.txt"
    env = router.psql_env()

    def psql(*args, script=None):
        return subprocess.run(["psql", "-X", "-At", *args], input=script, env=env,
                              capture_output=True, text=True, timeout=60)
    r = psql("-v", "ON_ERROR_STOP=1", "-c", f"\\copy {table} from '{src}'",
             "-c", f"\\copy (select * from {table} order by id) to '{out}'")
    assert r.returncode == 0, r.stderr
    assert out.read_text() == src.read_text()
    bad = tmp_path / "bad.txt"
    bad.write_text("5000\tok\nnot-a-number\tbad\n")
    r = psql("-c", f"\\copy {table} from '{bad}'", "-c", "select 'after the bad row'")
    assert 'invalid input syntax for type integer: "not-a-number"' in r.stderr, r.stderr
    assert r.stdout.strip() == "after the bad row", r.stdout
    script = (f"BEGIN;\nCOPY {table} FROM STDIN;\n9001\tx\n9002\ty\n\\.\nROLLBACK;\n"
              f"COPY {table} FROM STDIN;\n9003\tz\n\\.\nSELECT count(*) FROM {table};\n")
    r = psql("-v", "ON_ERROR_STOP=1", script=script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "2001"
    assert primary.scalar(f"SELECT count(*) FROM {table} WHERE id > 2000") == 1


def test_large_copy_with_a_20mb_value_both_ways(router, primary, table):
    """Tens of MB each way, one row holding a single 20 MB value."""
    primary.sql(f"CREATE TABLE {table} (id int, val text)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    big = "y" * 20_000_000
    with connect(router.dsn()) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} FROM STDIN") as copy:
                copy.write_row((1, big))
                for i in range(2, 300_001):
                    copy.write_row((i, "z" * 100))
            assert cur.rowcount == 300_000
            via_router = hashlib.md5()
            with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
                for block in copy:
                    via_router.update(block)
    expected = hashlib.md5(("1\t" + big + "\n" + "".join(f"{i}\t{'z' * 100}\n" for i in range(2, 300_001)))
                           .encode()).hexdigest()
    assert via_router.hexdigest() == expected
    assert primary.scalar(f"SELECT length(val) FROM {table} WHERE id = 1") == 20_000_000


def test_client_gone_mid_copy_out_leaves_nothing_for_the_next_client(routers, primary, table):
    """A client that resets its connection in the middle of a COPY TO STDOUT
    (pool of one): the next client gets a clean server at once."""
    from harness import wire
    from harness.pg import APP_DB, APP_PASSWORD, APP_USER
    create(primary, table)
    router = routers.start(general={"default_pool_size": 1, "checkout_timeout_ms": 3000})
    raw = wire.RawConn.open(router.port)
    raw.startup(APP_USER, APP_DB, APP_PASSWORD)
    raw.send(wire.query_message("COPY (SELECT g, repeat('x', 1000) FROM generate_series(1, 200000) g) "
                                "TO STDOUT"))
    while raw.read_msg().kind != b"H":
        pass
    assert raw.read_msg().kind == b"d"
    raw.close(reset=True)
    with connect(router.dsn()) as c:
        for _ in range(3):
            assert c.execute("SELECT 1").fetchone() == (1,)
        with c.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            copy.write_row((1, "after"))
        assert c.execute(f"SELECT val FROM {table}").fetchall() == [("after",)]
