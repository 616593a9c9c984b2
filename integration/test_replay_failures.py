"""Failures of the router's own replay reach the client (issue 16 item 4).

In transaction mode the router re-creates what a client's statement needs on
the server connection it gets: the client's settings, its SQL `PREPARE`d
statements, its protocol-level prepared statements. When the server refuses
that replay (the table was dropped, the setting's object is gone), the client
must get PostgreSQL's error (same SQLSTATE, same message) in place of the
statement that needed it, the protocol must stay in sync (inside a
transaction block the block fails, as PostgreSQL would fail it), and the
session must go on. Each test forces the other connection the same way: a
pool of two, and a second client holding the connection the first one used.
"""
from __future__ import annotations

import asyncpg
import psycopg
import pytest

from harness.clients import aconnect, connect, run_async, sqlstate
from harness.pg import APP_DB


def two_connection_router(routers):
    return routers.start(general={"default_pool_size": 2, "checkout_timeout_ms": 10000})


def backend(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


class Hog:
    """Another client holding, in an open transaction, the server connection
    the client under test used last (`pid`): the client's next transaction
    runs on the pool's other connection. A hog that got the other one opens
    a second (which then gets `pid`) and lets the first go."""

    def __init__(self, router, pid: int):
        held = []
        for _ in range(2):
            conn = connect(router.dsn())
            conn.execute("BEGIN")
            held.append(conn)
            if backend(conn) == pid:
                break
        assert backend(held[-1]) == pid, "a hog holds the client's last connection"
        for other in held[:-1]:
            other.execute("COMMIT")
            other.close()
        self.conn = held[-1]

    def release(self):
        self.conn.execute("COMMIT")
        self.conn.close()


@pytest.fixture
def table(primary):
    """A fresh table of the app user's, dropped (or not) by the test."""
    def make(name: str):
        with primary.connect(APP_DB) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute("SET ROLE app")
            conn.execute(f"CREATE TABLE {name} (a int)")
            conn.execute(f"INSERT INTO {name} VALUES (1)")
    return make


def drop(primary, sql: str):
    with primary.connect(APP_DB) as conn:
        conn.execute(sql)


# --------------------------------------------------------- SQL PREPARE ----
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_sql_prepare_replay_failure_is_the_executes_error(routers, primary, table, protocol):
    table("replay_sql_t")
    router = two_connection_router(routers)
    cursor = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with connect(router.dsn(), cursor_factory=cursor) as a:
        a.execute("PREPARE replay_s AS SELECT a FROM replay_sql_t")
        assert a.execute("EXECUTE replay_s").fetchone() == (1,)
        hog = Hog(router, backend(a))
        drop(primary, "DROP TABLE replay_sql_t")
        # Outside a transaction: the re-PREPARE on the other connection fails
        # with PostgreSQL's own error, not "prepared statement does not exist".
        with pytest.raises(psycopg.errors.UndefinedTable) as err:
            a.execute("EXECUTE replay_s")
        assert sqlstate(err.value) == "42P01"
        assert 'relation "replay_sql_t" does not exist' in str(err.value)
        assert a.execute("SELECT 1").fetchone() == (1,), "the session goes on"
        # Inside a transaction block: the block fails, as with PostgreSQL.
        a.execute("BEGIN")
        assert a.execute("SELECT 2").fetchone() == (2,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            a.execute("EXECUTE replay_s")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            a.execute("SELECT 3")
        a.execute("ROLLBACK")
        assert a.execute("SELECT 4").fetchone() == (4,)
        hog.release()
        # Once the table is back, the statement runs again (re-prepared).
        table("replay_sql_t")
        assert a.execute("EXECUTE replay_s").fetchone() == (1,)


def test_sql_prepare_replay_failure_asyncpg(routers, primary, table):
    table("replay_sql_ta")
    router = two_connection_router(routers)

    async def main():
        a = await aconnect(router)
        try:
            await a.execute("PREPARE replay_sa AS SELECT a FROM replay_sql_ta")
            assert await a.fetchval("EXECUTE replay_sa") == 1
            hog = Hog(router, await a.fetchval("SELECT pg_backend_pid()"))
            drop(primary, "DROP TABLE replay_sql_ta")
            for run in (a.execute, a.fetchval):  # simple, then extended protocol
                with pytest.raises(asyncpg.UndefinedTableError) as err:
                    await run("EXECUTE replay_sa")
                assert 'relation "replay_sql_ta" does not exist' in str(err.value)
                assert await a.fetchval("SELECT 5") == 5
            hog.release()
        finally:
            await a.close()
    run_async(main())


# ------------------------------------------------- protocol-level Parse ----
def test_protocol_prepared_statement_reparse_failure(routers, primary, table):
    table("replay_proto_t")
    router = two_connection_router(routers)
    with connect(router.dsn()) as a:
        sql = "SELECT a FROM replay_proto_t"
        assert a.execute(sql, prepare=True).fetchone() == (1,)
        hog = Hog(router, backend(a))
        drop(primary, "DROP TABLE replay_proto_t")
        with pytest.raises(psycopg.errors.UndefinedTable) as err:
            a.execute(sql, prepare=True)
        assert 'relation "replay_proto_t" does not exist' in str(err.value)
        assert a.execute("SELECT 1").fetchone() == (1,)
        a.execute("BEGIN")
        with pytest.raises(psycopg.errors.UndefinedTable):
            a.execute(sql, prepare=True)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            a.execute("SELECT 2")
        a.execute("ROLLBACK")
        hog.release()
        table("replay_proto_t")
        assert a.execute(sql, prepare=True).fetchone() == (1,)


def test_protocol_prepared_statement_reparse_failure_asyncpg(routers, primary, table):
    table("replay_proto_ta")
    router = two_connection_router(routers)

    async def main():
        a = await aconnect(router)
        try:
            stmt = await a.prepare("SELECT a FROM replay_proto_ta")
            assert await stmt.fetchval() == 1
            hog = Hog(router, await a.fetchval("SELECT pg_backend_pid()"))
            drop(primary, "DROP TABLE replay_proto_ta")
            with pytest.raises(asyncpg.UndefinedTableError) as err:
                await stmt.fetchval()
            assert 'relation "replay_proto_ta" does not exist' in str(err.value)
            assert await a.fetchval("SELECT 6") == 6
            hog.release()
        finally:
            await a.close()
    run_async(main())


# ------------------------------------------------------------ settings ----
@pytest.fixture
def ts_config(primary):
    with primary.connect(APP_DB) as conn:
        conn.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS public.replay_cfg")
        conn.execute("CREATE TEXT SEARCH CONFIGURATION public.replay_cfg (COPY = english)")
    yield "replay_cfg"
    with primary.connect(APP_DB) as conn:
        conn.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS public.replay_cfg")


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_set_replay_failure_is_the_next_statements_error(routers, primary, ts_config, protocol):
    router = two_connection_router(routers)
    cursor = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with connect(router.dsn(), cursor_factory=cursor) as a:
        a.execute("SET work_mem = '77kB'")
        a.execute(f"SET default_text_search_config = '{ts_config}'")
        assert a.execute("SHOW default_text_search_config").fetchone() == (f"public.{ts_config}",)
        hog = Hog(router, backend(a))
        drop(primary, f"DROP TEXT SEARCH CONFIGURATION public.{ts_config}")
        with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
            a.execute("SELECT 1")
        assert sqlstate(err.value) == "22023"
        assert f'invalid value for parameter "default_text_search_config": "{ts_config}"' in str(err.value)
        # The setting the server refused is dropped; the others stay.
        assert a.execute("SELECT 2").fetchone() == (2,)
        assert a.execute("SHOW default_text_search_config").fetchone() == ("pg_catalog.english",)
        assert a.execute("SHOW work_mem").fetchone() == ("77kB",)
        hog.release()
        assert a.execute("SHOW work_mem").fetchone() == ("77kB",)


def test_set_role_replay_failure_at_begin(routers, primary):
    """The role the client SET was dropped: its next transaction, on another
    connection, fails at its BEGIN (the statement that needed the role
    carried there); nothing runs as another role meanwhile, and the session
    goes on (as its login user: the role is gone)."""
    with primary.connect("postgres") as conn:
        conn.execute("DROP ROLE IF EXISTS replay_role")
        conn.execute("CREATE ROLE replay_role")
        conn.execute("GRANT replay_role TO app")
    router = two_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("SET ROLE replay_role")
        assert a.execute("SELECT current_user").fetchone() == ("replay_role",)
        hog = Hog(router, backend(a))
        drop(primary, "DROP ROLE replay_role")
        with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
            a.execute("BEGIN")
        assert 'role "replay_role" does not exist' in str(err.value)
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        a.execute("BEGIN")
        assert a.execute("SELECT current_user").fetchone() == ("app",)
        a.execute("COMMIT")
        hog.release()


def test_set_replay_failure_asyncpg(routers, primary, ts_config):
    router = two_connection_router(routers)

    async def main():
        a = await aconnect(router)
        try:
            await a.execute(f"SET default_text_search_config = '{ts_config}'")
            hog = Hog(router, await a.fetchval("SELECT pg_backend_pid()"))
            drop(primary, f"DROP TEXT SEARCH CONFIGURATION public.{ts_config}")
            with pytest.raises(asyncpg.InvalidParameterValueError) as err:
                await a.fetchval("SELECT 1")
            assert "default_text_search_config" in str(err.value)
            assert await a.fetchval("SELECT 7") == 7
            hog.release()
        finally:
            await a.close()
    run_async(main())


def test_client_told_of_its_setting_after_a_replay(routers):
    """The settings replay and the client's own SET share one answer: the
    server reports only values that differ from the last it reported, maybe
    to another client. The client is told of its SET all the same."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as b:
        b.execute("SET TimeZone = 'UTC'")  # the connection reports UTC to b
        assert b.info.parameter_status("TimeZone") == "UTC"
    with connect(router.dsn()) as a:
        assert a.info.parameter_status("TimeZone") != "UTC"
        a.execute("SET TimeZone = 'UTC'")
        assert a.info.parameter_status("TimeZone") == "UTC"
        assert a.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_statements_that_refuse_pipelines_run_after_a_replay(routers, table, protocol):
    """The replay ahead of a statement commits on its own, so VACUUM (which
    refuses to run in a pipeline or a transaction block) still runs."""
    table("replay_vacuum_t")
    router = routers.start(general={"default_pool_size": 1})
    cursor = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with connect(router.dsn()) as other:
        other.execute("SET work_mem = '88kB'")
    with connect(router.dsn(), cursor_factory=cursor, application_name="replay_vac") as a:
        a.execute("SET work_mem = '99kB'")
        a.execute("PREPARE replay_v AS SELECT a FROM replay_vacuum_t")
        with connect(router.dsn()) as other:
            other.execute("SET work_mem = '77kB'")  # the connection changes hands
            assert other.execute("SHOW work_mem").fetchone() == ("77kB",)
        a.execute("VACUUM replay_vacuum_t")  # settings replayed first
        assert a.execute("SHOW work_mem").fetchone() == ("99kB",)
        assert a.execute("EXECUTE replay_v").fetchone() == (1,)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_failed_prepare_is_not_replayed(routers, table, protocol):
    """A PREPARE that failed created nothing: EXECUTE on another connection
    says so (26000), and a corrected PREPARE of that name is the one used."""
    table("replay_fixed_t")
    router = two_connection_router(routers)
    cursor = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with connect(router.dsn(), cursor_factory=cursor) as a:
        with pytest.raises(psycopg.errors.UndefinedTable):
            a.execute("PREPARE replay_fix AS SELECT a FROM replay_fixed_typo")
        hog = Hog(router, backend(a))
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE replay_fix")
        a.execute("PREPARE replay_fix AS SELECT a FROM replay_fixed_t")
        hog.release()
        hog = Hog(router, backend(a))
        assert a.execute("EXECUTE replay_fix").fetchone() == (1,)
        hog.release()
