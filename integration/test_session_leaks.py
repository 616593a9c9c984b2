"""No session state crosses from one client to another (SPEC §5 "Pooling and
protocol", issue 16). For each kind of session state the router cannot carry
between server connections, client A creates it (transaction mode: A is
pinned to its server connection meanwhile) and leaves; client B, given the
very same server connection (pool of one), must not see it. Plus the SET
tracking after errors, and `session_state = "refuse"`."""
from __future__ import annotations

import psycopg
import pytest

from harness.clients import connect, sqlstate
from harness.ops import admin_general, admin_rows, scrape
from harness.pg import APP_DB, APP_USER
from harness.router import app_user
from harness.util import wait_until

SU, SU_PASSWORD = "leak_su", "su-secret"


@pytest.fixture(scope="module")
def roles(cluster):
    """A superuser that may SET SESSION AUTHORIZATION, a role to become, and
    pg_monitor for `app` (SET ROLE)."""
    with cluster.primary.connect("postgres") as conn:
        conn.execute(f"DROP ROLE IF EXISTS {SU}")
        conn.execute(f"CREATE ROLE {SU} SUPERUSER LOGIN PASSWORD '{SU_PASSWORD}'")
        conn.execute("DROP ROLE IF EXISTS leak_target")
        conn.execute("CREATE ROLE leak_target NOLOGIN")
        conn.execute(f"GRANT pg_monitor TO {APP_USER}")
    yield
    with cluster.primary.connect("postgres") as conn:
        conn.execute(f"REVOKE pg_monitor FROM {APP_USER}")


def one_connection_router(routers, **general):
    gen = {"default_pool_size": 1, "checkout_timeout_ms": 10000}
    gen.update(general)
    return routers.start(general=admin_general(metrics=True, **gen),
                         users=[app_user(), app_user(name=SU, password=SU_PASSWORD)])


def backend(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def pinned(router, user=APP_USER) -> list:
    return [r["pinned"] for r in admin_rows(router, "SHOW CLIENTS") if r["user"] == user]


def test_temp_table_pins_then_is_discarded(routers, roles):
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("CREATE TEMP TABLE secret_tmp AS SELECT 'a-data'::text AS v")
        pid = backend(a)
        # Later transactions of A still see it: A is pinned to its connection.
        assert a.execute("SELECT v FROM secret_tmp").fetchone() == ("a-data",)
        assert backend(a) == pid
        assert pinned(router) == ["temp"]
    with connect(router.dsn()) as b:
        assert backend(b) == pid, "pool of one: B gets A's connection"
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute("SELECT v FROM secret_tmp")
        assert b.execute("SELECT count(*) FROM pg_class WHERE relpersistence = 't'").fetchone() == (0,)


def test_listen_and_advisory_lock_do_not_survive_the_client(routers, roles, primary):
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("LISTEN leak_channel")
        a.execute("SELECT pg_advisory_lock(4242)")
        pid = backend(a)
        assert pinned(router) == ["listen, advisory_lock"]
    # The lock is free again as soon as the router has reset the connection
    # (just after A leaves: B must not wait for it, nor anyone else).
    from harness.util import wait_until
    with primary.connect(APP_DB) as direct:
        wait_until(lambda: direct.execute("SELECT pg_try_advisory_lock(4242)").fetchone() == (True,), 5,
                   what="advisory lock 4242 released by the reset")
        direct.execute("SELECT pg_advisory_unlock(4242)")
    with connect(router.dsn()) as b:
        assert backend(b) == pid
        assert b.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)
        assert b.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                         "AND pid = pg_backend_pid()").fetchone() == (0,)


def test_hold_cursor_and_sequence_state(routers, roles, primary):
    with primary.connect(APP_DB) as direct:
        direct.execute("CREATE SEQUENCE IF NOT EXISTS leak_seq")
        direct.execute(f"GRANT USAGE, SELECT ON SEQUENCE leak_seq TO {APP_USER}")
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        n = a.execute("SELECT nextval('leak_seq')").fetchone()[0]
        # currval in a later transaction works: same connection.
        assert a.execute("SELECT currval('leak_seq')").fetchone() == (n,)
        a.execute("DECLARE leak_cur CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g")
        assert a.execute("FETCH 1 FROM leak_cur").fetchone() == (1,)
        assert a.execute("FETCH 1 FROM leak_cur").fetchone() == (2,)
        pid = backend(a)
    with connect(router.dsn()) as b:
        assert backend(b) == pid
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            b.execute("SELECT currval('leak_seq')")
    with connect(router.dsn()) as b:
        with pytest.raises(psycopg.errors.InvalidCursorName):
            b.execute("FETCH 1 FROM leak_cur")


def test_session_authorization_and_do_blocks_do_not_leak(routers, roles):
    router = one_connection_router(routers)
    with connect(router.dsn(user=SU, password=SU_PASSWORD)) as a:
        a.execute("SET SESSION AUTHORIZATION leak_target")
        assert a.execute("SELECT session_user").fetchone() == ("leak_target",)
        assert a.execute("SELECT session_user").fetchone() == ("leak_target",), "pinned"
        pid = backend(a)
    with connect(router.dsn(user=SU, password=SU_PASSWORD)) as b:
        assert backend(b) == pid
        assert b.execute("SELECT session_user, current_user").fetchone() == (SU, SU)
    with connect(router.dsn()) as a:
        a.execute("DO $$BEGIN EXECUTE 'SET ROLE pg_monitor'; END$$")
        assert a.execute("SELECT current_user").fetchone() == ("pg_monitor",)
        assert pinned(router) == ["do"]
        pid = backend(a)
    with connect(router.dsn()) as b:
        assert backend(b) == pid
        assert b.execute("SELECT current_user").fetchone() == (APP_USER,)


def test_set_config_role_in_a_complex_select_does_not_leak(routers, roles):
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("SELECT set_config('role', 'pg_monitor', false) FROM generate_series(1, 1)")
        pid = backend(a)
    with connect(router.dsn()) as b:
        assert backend(b) == pid
        assert b.execute("SELECT current_user").fetchone() == (APP_USER,)


def test_unlisten_ends_the_pin(routers, roles):
    router = one_connection_router(routers)
    with connect(router.dsn()) as a, connect(router.dsn()) as other:
        a.execute("LISTEN ch1")
        assert pinned(router)[0] == "listen"
        # The pinned client holds the only connection: another client waits...
        a.execute("UNLISTEN *")
        assert pinned(router) == [None, None]
        # ... and once A is unpinned both share the connection again.
        assert other.execute("SELECT 1").fetchone() == (1,)
        assert a.execute("SELECT 2").fetchone() == (2,)


def test_pinned_clients_metric(routers, roles):
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("CREATE TEMP TABLE t_metric (a int)")
        now = scrape(router)
        assert now.one("pgrouter_pinned_clients", reason="temp") == 1
        assert now.one("pgrouter_pinned_clients", reason="listen") == 0
    # The client's Terminate reaches the router after close() returns: the
    # pin goes when the router has ended that session.
    wait_until(lambda: scrape(router).one("pgrouter_pinned_clients", reason="temp") == 0,
               5, what="the pin of the client that left to be gone")


def test_first_set_after_an_error_is_kept(routers, roles):
    """Issue 16, leak 2: `SET ROLE x; SELECT 1/0; RESET ROLE` left every later
    statement running as x; `SELECT 1/0; SET work_mem` was not carried and
    leaked to the next client of that connection."""
    router = routers.start(general={"default_pool_size": 2})
    with connect(router.dsn()) as a, connect(router.dsn()) as hog:
        a.execute("SET ROLE pg_monitor")
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.execute("SELECT 1/0")
        a.execute("RESET ROLE")
        for _ in range(4):
            assert a.execute("SELECT current_user").fetchone() == (APP_USER,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.execute("SELECT 1/0")
        a.execute("SET work_mem = '99kB'")
        # Both connections of the pool: A's setting follows A to each.
        hog.execute("BEGIN")
        hog.execute("SELECT 1")
        assert a.execute("SHOW work_mem").fetchone() == ("99kB",)
        hog.execute("COMMIT")
        a.execute("BEGIN")
        assert a.execute("SHOW work_mem").fetchone() == ("99kB",)
        assert hog.execute("SHOW work_mem").fetchone() == ("4MB",)
        a.execute("COMMIT")
    with connect(router.dsn()) as b:
        for _ in range(4):
            assert b.execute("SHOW work_mem").fetchone() == ("4MB",)


def test_refuse_mode_answers_0A000(routers, roles):
    router = routers.start(general={"session_state": "refuse", "default_pool_size": 2})
    with connect(router.dsn()) as conn:
        for sql in ["CREATE TEMP TABLE t_refused (a int)", "LISTEN ch", "SELECT pg_advisory_lock(7)",
                    "DECLARE c CURSOR WITH HOLD FOR SELECT 1"]:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as err:
                conn.execute(sql)
            assert sqlstate(err.value) == "0A000"
            assert "session_state" in str(err.value)
        # The session goes on, and nothing is pinned.
        assert conn.execute("SELECT pg_advisory_xact_lock(7), 1").fetchone()[1] == 1
        assert conn.execute("CREATE TABLE IF NOT EXISTS t_not_temp (a int)") is not None


def test_refuse_mode_allows_sequences_inside_a_transaction_block(routers, roles, primary):
    """`session_state = "refuse"`: `nextval` outside a transaction block is
    refused (its `currval` state would outlive the statement), but inside
    one it runs and `currval` works there, as ORMs need. The state is
    discarded once the transaction ends: neither the client (whichever
    connection it gets next) nor the next client of that connection reads
    an old value; they get PostgreSQL's "not yet defined" error."""
    with primary.connect(APP_DB) as direct:
        direct.execute("DROP SEQUENCE IF EXISTS refuse_seq")
        direct.execute("CREATE SEQUENCE refuse_seq")
        direct.execute(f"GRANT ALL ON refuse_seq TO {APP_USER}")
    router = one_connection_router(routers, session_state="refuse")
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a.execute("SELECT nextval('refuse_seq')")
        for _ in range(2):
            with a.transaction():
                n = a.execute("SELECT nextval('refuse_seq')").fetchone()[0]
                assert a.execute("SELECT currval('refuse_seq'), lastval()").fetchone() == (n, n)
            assert pinned(router) == [None, None]
            for conn in (b, a):
                with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                    conn.execute("SELECT currval('refuse_seq')")


def test_a_failed_deallocate_does_not_undo_the_reset(routers, roles, primary):
    """Before a client's first statement the router resets what the last
    client left that it could not follow (an untracked set_config) and drops
    that client's SQL prepared statements. A DEALLOCATE that fails (the
    statement was deallocated behind the router's back, by dynamic SQL in a
    function) must not take the RESET back with it."""
    with primary.connect(APP_DB) as direct:
        direct.execute("CREATE OR REPLACE FUNCTION leak_dealloc(name text) RETURNS void "
                       "LANGUAGE plpgsql AS $$BEGIN EXECUTE format('DEALLOCATE %I', name); END$$")
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("PREPARE leak_ps AS SELECT 1")
        a.execute("SELECT leak_dealloc('leak_ps')")
        # Last: the router resets the connection before its next client.
        pid = a.execute("SELECT pg_backend_pid(), set_config('work_mem', '64kB', false) "
                        "FROM generate_series(1, 1)").fetchone()[0]
    with connect(router.dsn()) as b:
        # B's first statement: the one the reset runs ahead of.
        assert b.execute("SELECT current_setting('work_mem'), pg_backend_pid()").fetchone() == ("4MB", pid)


def test_a_serial_default_leaves_no_sequence_state_for_the_next_client(routers, roles, primary):
    """An INSERT that takes a serial default calls nextval unseen by the
    router (no pin): the next client must still not read lastval/currval."""
    with primary.connect(APP_DB) as direct:
        direct.execute("DROP TABLE IF EXISTS leak_serial")
        direct.execute("CREATE TABLE leak_serial (id serial PRIMARY KEY, note text)")
        direct.execute(f"GRANT ALL ON leak_serial, leak_serial_id_seq TO {APP_USER}")
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("INSERT INTO leak_serial (note) VALUES ('a')")
        assert pinned(router) == [None]  # not pinned: the router did not see a nextval
        pid = backend(a)
    for protocol in ("simple", "extended"):
        with connect(router.dsn()) as b:
            assert backend(b) == pid
            cur = psycopg.ClientCursor(b) if protocol == "simple" else b.cursor()
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                cur.execute("SELECT lastval()")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                cur.execute("SELECT currval('leak_serial_id_seq')")
    # The same client keeps its own, as on a connection of its own.
    with connect(router.dsn()) as a:
        a.execute("INSERT INTO leak_serial (note) VALUES ('again')")
        assert a.execute("SELECT lastval()").fetchone()[0] == 2
    with primary.connect(APP_DB) as direct:
        direct.execute("DROP TABLE leak_serial")


def test_sequence_state_is_discarded_before_any_first_statement(routers, roles, primary):
    """The DISCARD SEQUENCES owed after another client's writes is pipelined
    with the next client's first statement where PostgreSQL allows it: it
    must still run before a statement bound to a named prepared statement,
    and must not break one PostgreSQL refuses inside a pipeline (VACUUM)."""
    with primary.connect(APP_DB) as direct:
        direct.execute("DROP TABLE IF EXISTS leak_serial2")
        direct.execute("CREATE TABLE leak_serial2 (id serial PRIMARY KEY, note text)")
        direct.execute(f"GRANT ALL ON leak_serial2, leak_serial2_id_seq TO {APP_USER}")
    router = one_connection_router(routers)
    with connect(router.dsn()) as b, connect(router.dsn()) as a:
        # B prepares a statement (named, server-side) in a unit of its own.
        lastval = "SELECT lastval()"
        a.execute("INSERT INTO leak_serial2 (note) VALUES ('a')")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            b.execute(lastval, prepare=True)
        for _ in range(2):
            # A writes (a serial default), then B's first message on the
            # connection is a Bind of its prepared statement.
            a.execute("INSERT INTO leak_serial2 (note) VALUES ('a')")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                b.execute(lastval, prepare=True)
        # A writes, then B's first statement is VACUUM (refused in a
        # pipeline): it runs, and the sequence state is gone all the same.
        a.execute("INSERT INTO leak_serial2 (note) VALUES ('a')")
        b.autocommit = True
        b.execute("VACUUM leak_serial2")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            b.execute("SELECT currval('leak_serial2_id_seq')")
        # So is CLUSTER of a partitioned table (the regression suite's
        # cluster test): B gets PostgreSQL's own answer, not "cannot be
        # executed within a pipeline".
        b.execute("CREATE TABLE leak_part (a int) PARTITION BY RANGE (a)")
        b.execute("CREATE TABLE leak_part1 PARTITION OF leak_part FOR VALUES FROM (0) TO (10)")
        b.execute("CREATE INDEX leak_part_idx ON leak_part (a)")
        a.execute("INSERT INTO leak_serial2 (note) VALUES ('a')")
        psycopg.ClientCursor(b).execute("CLUSTER leak_part USING leak_part_idx")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            b.execute("SELECT currval('leak_serial2_id_seq')")
        b.execute("DROP TABLE leak_part")
        # A writes, then B's transaction sets its isolation level after
        # BEGIN (PostgreSQL refuses that once the transaction took a
        # snapshot: the discard must not come before it), then reads.
        for begin in ("BEGIN", "BEGIN ISOLATION LEVEL SERIALIZABLE"):
            a.execute("INSERT INTO leak_serial2 (note) VALUES ('a')")
            b.execute(begin)
            if begin == "BEGIN":
                b.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            assert b.execute("SHOW transaction_isolation").fetchone()[0] in (
                "repeatable read", "serializable")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                b.execute("SELECT lastval()")
            b.execute("ROLLBACK")
        # The same in one pipeline (no Sync between BEGIN and the read): the
        # discard goes in front of the read, in the middle of the batch.
        a.execute("INSERT INTO leak_serial2 (note) VALUES ('a')")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            with b.pipeline():
                b.execute("BEGIN")
                b.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                b.execute("SELECT lastval()")
        b.execute("ROLLBACK")
        # The same in one simple query: the discard runs before it, alone.
        a.execute("INSERT INTO leak_serial2 (note) VALUES ('a')")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            psycopg.ClientCursor(b).execute("SHOW work_mem; SELECT lastval()")
        assert a.execute("SELECT count(*) FROM leak_serial2").fetchone() == (9,)
    with primary.connect(APP_DB) as direct:
        direct.execute("DROP TABLE leak_serial2")


SEARCH_PATH_TEMP_CREATES = [
    "CREATE TABLE sp_obj (v text)",
    "SELECT 'a-data'::text AS v INTO sp_obj",
    "CREATE TABLE sp_obj AS SELECT 'a-data'::text AS v",
    "CREATE SEQUENCE sp_obj",
    "CREATE VIEW sp_obj AS SELECT 'a-data'::text AS v",
]


@pytest.mark.parametrize("set_path", [
    "SET search_path = pg_temp, public",
    "SELECT set_config('search_path', 'pg_temp,public', false)",
    'SET search_path = "$user", pg_temp, public',
])
@pytest.mark.parametrize("create", SEARCH_PATH_TEMP_CREATES)
def test_unqualified_create_under_a_temp_search_path_pins(routers, roles, set_path, create):
    """With `pg_temp` on the search_path, an unqualified CREATE makes a
    temporary object: the client is pinned like after CREATE TEMP, and the
    next client of the connection never sees the object."""
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute(set_path)
        a.execute(create)
        assert a.execute("SELECT relpersistence FROM pg_class WHERE relname = 'sp_obj'").fetchone() == ("t",)
        assert pinned(router)[0] == "temp"
        pid = backend(a)
    with connect(router.dsn()) as b:
        assert backend(b) == pid, "pool of one: B gets A's connection"
        assert b.execute("SELECT count(*) FROM pg_class WHERE relpersistence = 't'").fetchone() == (0,)


def test_the_temp_schema_by_its_real_name_pins(routers, roles):
    """`pg_temp_<n>` is the temporary schema too, as a qualifier or on the
    search_path."""
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("CREATE TEMP TABLE sp_first (a int)")  # makes the schema exist
        schema = a.execute("SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()").fetchone()[0]
        a.execute("DROP TABLE sp_first")
        assert pinned(router) == [None], "the DROP ended the pin (checked with the server)"
        a.execute(f"CREATE TABLE {schema}.sp_named (v text)")
        assert pinned(router) == ["temp"]
        a.execute("DROP TABLE sp_named")
        assert pinned(router) == [None]
        a.execute(f"SET search_path = {schema}, public")
        a.execute("CREATE TABLE sp_path (v text)")
        assert pinned(router) == ["temp"]


def test_an_unqualified_create_without_pg_temp_does_not_pin(routers, roles, primary):
    """The control: ordinary DDL under an ordinary search_path pins nothing."""
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute("SET search_path = public")
        a.execute("CREATE TABLE IF NOT EXISTS sp_plain (v text)")
        assert pinned(router) == [None]
    with primary.connect(APP_DB) as direct:
        direct.execute("DROP TABLE sp_plain")


def test_refuse_mode_refuses_a_create_under_a_temp_search_path(routers, roles):
    router = routers.start(general={"session_state": "refuse", "default_pool_size": 1})
    with connect(router.dsn()) as conn:
        conn.execute("SET search_path = pg_temp, public")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as err:
            conn.execute("CREATE TABLE sp_refused (a int)")
        assert "temp" in str(err.value)
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'sp_refused'").fetchone() == (0,)


@pytest.fixture
def stateful_function(primary):
    """A function of the database's own that leaves every kind of session
    state behind: a setting, a temporary table, an advisory lock, a LISTEN
    and a search_path."""
    with primary.connect(APP_DB) as direct:
        direct.execute("""
            CREATE OR REPLACE FUNCTION leave_state() RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
              PERFORM set_config('app.tenant', 'alice', false);
              CREATE TEMP TABLE IF NOT EXISTS fn_scratch AS SELECT 'alice-scratch'::text AS v;
              PERFORM pg_advisory_lock(7777);
              LISTEN fn_channel;
              PERFORM set_config('search_path', 'pg_catalog, public', false);
            END $$""")
        direct.execute(f"GRANT EXECUTE ON FUNCTION leave_state() TO {APP_USER}")
    yield
    with primary.connect(APP_DB) as direct:
        direct.execute("DROP FUNCTION leave_state()")


@pytest.mark.parametrize("call", ["SELECT leave_state()", "SELECT public.leave_state()",
                                  "SELECT 1 FROM (SELECT leave_state()) s"])
def test_state_a_function_left_never_reaches_the_next_client(routers, roles, primary, stateful_function, call):
    """The router cannot see what a function of the database's own does: a
    connection that ran one is cleaned (DISCARD ALL) before its next
    statement, so B, on the same connection, sees none of A's state."""
    router = one_connection_router(routers)
    with connect(router.dsn()) as a:
        a.execute(call)
        pid = backend(a)
    with connect(router.dsn()) as b:
        assert backend(b) == pid, "pool of one: B gets A's connection"
        row = b.execute("""SELECT current_setting('app.tenant', true),
                                  to_regclass('pg_temp.fn_scratch'),
                                  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
                                  (SELECT count(*) FROM pg_listening_channels()),
                                  current_setting('search_path')""").fetchone()
        assert row[0] in (None, "")
        assert row[1:4] == (None, 0, 0)
        assert row[4] == '"$user", public'
    with primary.connect(APP_DB) as direct:
        assert direct.execute("SELECT pg_try_advisory_lock(7777)").fetchone() == (True,)
        direct.execute("SELECT pg_advisory_unlock(7777)")
