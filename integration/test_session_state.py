"""Session state in transaction mode (SPEC §5 "Pooling and protocol", issue
3 item 5): session-level SET/RESET is tracked per client and applied on
whichever server connection the client gets; SET LOCAL and SETs of
rolled-back transactions are not kept; RESET, RESET ALL and DISCARD ALL are
honoured; a later client never inherits another client's settings."""
from __future__ import annotations

import threading

import psycopg
import pytest

from harness.clients import connect
from harness.routes import WHERE, Places, wait_replayed, where

SETTINGS_SQL = ("SELECT replace(current_setting('search_path'), ' ', ''), "
                "current_setting('statement_timeout'), current_setting('application_name'), "
                "current_setting('TimeZone')")


def settings(conn) -> tuple:
    """(search_path without spaces, statement_timeout, application_name, TimeZone)."""
    return conn.execute(SETTINGS_SQL).fetchone()


@pytest.fixture(scope="module")
def schema(cluster):
    cluster.primary.sql("CREATE SCHEMA IF NOT EXISTS ss_schema AUTHORIZATION app")
    cluster.primary.sql("CREATE TABLE IF NOT EXISTS ss_schema.ss_t (id serial PRIMARY KEY, tz text)")
    cluster.primary.sql("ALTER TABLE ss_schema.ss_t OWNER TO app")
    wait_replayed(cluster)
    return "ss_schema"


def pid(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_no_leak_between_clients_pool_size_1(routers, schema):
    router = routers.start(general={"default_pool_size": 1})
    a = connect(router.dsn(application_name="client_a"))
    b = connect(router.dsn(application_name="client_b"))
    try:
        defaults_b = settings(b)
        assert defaults_b[2] == "client_b"
        a.execute("SET search_path TO ss_schema, public")
        a.execute("SET statement_timeout = 1234")
        a.execute("SET application_name = 'a_renamed'")
        a.execute("SET TIME ZONE 'Asia/Tokyo'")
        want_a = ("ss_schema,public", "1234ms", "a_renamed", "Asia/Tokyo")
        for _ in range(5):
            assert settings(a) == want_a
            assert settings(b) == defaults_b
            # The unqualified table resolves through a's search_path only.
            assert a.execute("SELECT count(*) >= 0 FROM ss_t").fetchone() == (True,)
            with pytest.raises(psycopg.errors.UndefinedTable):
                b.execute("SELECT count(*) FROM ss_t")
            # Inside explicit transactions too.
            with a.transaction():
                assert settings(a) == want_a
            with b.transaction():
                assert settings(b) == defaults_b
        # One server connection served both.
        assert pid(a) == pid(b)
        # A third client arriving later starts clean as well.
        with connect(router.dsn()) as c:
            s = settings(c)
            assert s[0] == defaults_b[0] and s[1] == defaults_b[1] and s[3] == defaults_b[3]
            assert s[2] != "a_renamed"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("made_by", ["SET", "set_config"])
def test_settings_follow_client_to_every_server(routers, schema, cluster, made_by):
    """With a replica: the client's SETs (or plain `set_config` calls) hold on
    the replica (reads) and on the primary (writes)."""
    places = Places(cluster)
    router = routers.start(general={"default_pool_size": 2}, with_replica=True)
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        default_tz = b.execute("SHOW TimeZone").fetchone()[0]
        if made_by == "SET":
            a.execute("SET TimeZone = 'Pacific/Auckland'")
            a.execute("SET search_path = ss_schema, public")
        else:
            a.execute("SELECT set_config('TimeZone', 'Pacific/Auckland', false), "
                      "set_config('search_path', 'ss_schema, public', false)")
        for _ in range(3):
            row = where(a, f"SELECT current_setting('TimeZone'), {WHERE}")
            assert places.row(row) == "replica" and row[0] == "Pacific/Auckland"
            row = where(a, f"INSERT INTO ss_t (tz) VALUES (current_setting('TimeZone')) "
                           f"RETURNING tz, {WHERE}")
            assert places.row(row) == "primary" and row[0] == "Pacific/Auckland"
            row = where(b, f"SELECT current_setting('TimeZone'), {WHERE}")
            assert places.row(row) == "replica" and row[0] == default_tz
            row = where(b, f"SELECT current_setting('TimeZone'), {WHERE} /* pgrouter: role=primary */")
            assert places.row(row) == "primary" and row[0] == default_tz


def test_set_local_and_rolled_back_set_not_kept(routers):
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        default = b.execute("SHOW statement_timeout").fetchone()[0]
        a.execute("SET statement_timeout = '11s'")
        # SET LOCAL: for its transaction only.
        a.execute("BEGIN")
        a.execute("SET LOCAL statement_timeout = '22s'")
        assert a.execute("SHOW statement_timeout").fetchone() == ("22s",)
        a.execute("COMMIT")
        assert a.execute("SHOW statement_timeout").fetchone() == ("11s",)
        b.execute("SELECT 1")  # b takes the server connection in between
        assert a.execute("SHOW statement_timeout").fetchone() == ("11s",)
        # A SET in a transaction that is rolled back.
        a.execute("BEGIN")
        a.execute("SET statement_timeout = '33s'")
        a.execute("ROLLBACK")
        assert b.execute("SHOW statement_timeout").fetchone() == (default,)
        assert a.execute("SHOW statement_timeout").fetchone() == ("11s",)
        # A SET in a transaction that fails (and is then rolled back).
        a.execute("BEGIN")
        a.execute("SET statement_timeout = '44s'")
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.execute("SELECT 1/0")
        a.execute("ROLLBACK")
        assert b.execute("SHOW statement_timeout").fetchone() == (default,)
        assert a.execute("SHOW statement_timeout").fetchone() == ("11s",)
        # A SET in a committed transaction is kept.
        a.execute("BEGIN")
        a.execute("SET statement_timeout = '55s'")
        a.execute("COMMIT")
        assert b.execute("SHOW statement_timeout").fetchone() == (default,)
        assert a.execute("SHOW statement_timeout").fetchone() == ("55s",)


def test_set_in_rolled_back_savepoint_not_kept(routers):
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        a.execute("SET statement_timeout = '11s'")
        a.execute("BEGIN")
        a.execute("SAVEPOINT s1")
        a.execute("SET statement_timeout = '66s'")
        a.execute("ROLLBACK TO SAVEPOINT s1")
        assert a.execute("SHOW statement_timeout").fetchone() == ("11s",)
        a.execute("COMMIT")
        b.execute("SELECT 1")
        assert a.execute("SHOW statement_timeout").fetchone() == ("11s",)


def test_reset_reset_all_discard_all(routers):
    """RESET, RESET ALL and DISCARD ALL go back to the session's start values
    (the startup packet's application_name included), as on a dedicated
    connection; DISCARD ALL also drops the client's prepared statements."""
    router = routers.start(general={"default_pool_size": 1})
    a = connect(router.dsn(application_name="start_app"))
    b = connect(router.dsn())
    try:
        start = settings(a)
        assert start[2] == "start_app"

        def change():
            a.execute("SET search_path = ss_schema, public")
            a.execute("SET statement_timeout = '9s'")
            a.execute("SET application_name = 'changed'")
            a.execute("SET TimeZone = 'Asia/Kolkata'")
            b.execute("SELECT 1")
            assert settings(a) == ("ss_schema,public", "9s", "changed", "Asia/Kolkata")

        change()
        a.execute("RESET statement_timeout")
        a.execute("RESET TimeZone")
        a.execute("RESET application_name")
        b.execute("SELECT 1")
        assert settings(a) == ("ss_schema,public", start[1], "start_app", start[3])

        change()
        cur = a.execute("RESET ALL")
        assert cur.statusmessage == "RESET"
        b.execute("SELECT 1")
        assert settings(a) == start

        change()
        cur = a.execute("DISCARD ALL")
        assert cur.statusmessage == "DISCARD ALL"
        b.execute("SELECT 1")
        assert settings(a) == start
        # b never saw any of it.
        assert settings(b)[2] != "changed"
    finally:
        a.close()
        b.close()


def test_reset_returns_to_startup_options(routers):
    """RESET / RESET ALL return to the values the client asked for in the
    startup packet's options (-c TimeZone=...), not to the server defaults."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn(options="-c TimeZone=Asia/Tokyo -c statement_timeout=5s")) as a, \
            connect(router.dsn()) as b:
        assert a.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
        a.execute("SET TimeZone = 'Europe/Paris'")
        a.execute("RESET TimeZone")
        b.execute("SELECT 1")
        assert a.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
        a.execute("SET statement_timeout = '8s'")
        a.execute("RESET ALL")
        b.execute("SELECT 1")
        assert a.execute("SELECT current_setting('TimeZone'), current_setting('statement_timeout')"
                         ).fetchone() == ("Asia/Tokyo", "5s")


def test_discard_all_drops_sql_prepared_statements(routers):
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        a.execute("PREPARE ss_p AS SELECT 1")
        assert a.execute("EXECUTE ss_p").fetchone() == (1,)
        a.execute("DISCARD ALL")
        b.execute("SELECT 1")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE ss_p")


@pytest.mark.parametrize("options", ["-c TimeZone=Asia/Tokyo",
                                     "-c TimeZone=Asia/Tokyo -c statement_timeout=5s"])
def test_set_overrides_startup_option(routers, options):
    """A session SET of a parameter that came in the startup packet's
    `options` (-c TimeZone=...) wins over the startup value on every later
    server connection."""
    router = routers.start(general={"default_pool_size": 1})
    zones = ["Europe/Paris", "America/New_York", "UTC", "Africa/Cairo"]
    wrong = []
    for attempt in range(4):
        with connect(router.dsn(options=options)) as a, connect(router.dsn()) as b:
            for tz in zones:
                a.execute(f"SET TimeZone = '{tz}'")
                b.execute("SELECT 1")   # a gets the server connection again afterwards
                got = a.execute("SHOW TimeZone").fetchone()[0]
                if got != tz:
                    wrong.append(f"client {attempt}: SET TimeZone = '{tz}', then SHOW says {got}")
    assert wrong == [], "\n".join(wrong)


def test_failed_set_is_not_tracked(routers):
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        default = a.execute("SHOW statement_timeout").fetchone()[0]
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            a.execute("SET statement_timeout = 'not a duration'")
        b.execute("SELECT 1")
        assert a.execute("SHOW statement_timeout").fetchone() == (default,)
        with pytest.raises(psycopg.errors.UndefinedObject):
            a.execute("SET no_such_setting_xyz = 1")
        assert a.execute("SELECT 'usable'").fetchone() == ("usable",)


def test_set_forms(routers):
    """SET inside a multi-statement string, through the extended protocol,
    custom (dotted) settings, SET ... FROM CURRENT-free forms."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        a.execute("SET statement_timeout = '3s'; SELECT 1")
        a.cursor(binary=True).execute("SET lock_timeout = '4s'")  # extended protocol
        a.execute("SET myapp.tenant = '42'")
        a.execute("SET SESSION work_mem = '5MB'")
        a.execute("SET datestyle TO 'ISO', 'DMY'")
        b.execute("SELECT 1")
        row = a.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
                        "current_setting('myapp.tenant'), current_setting('work_mem'), "
                        "current_setting('DateStyle')").fetchone()
        assert row == ("3s", "4s", "42", "5MB", "ISO, DMY")
        row = b.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
                        "coalesce(current_setting('myapp.tenant', true), ''), current_setting('work_mem'), "
                        "current_setting('DateStyle')").fetchone()
        assert row[0] != "3s" and row[1] != "4s" and row[2] == "" and row[3] != "5MB"
        assert row[4] != "ISO, DMY"


def test_session_characteristics_are_carried_and_never_leak(routers, cluster, schema):
    """`SET SESSION CHARACTERISTICS AS TRANSACTION ...` is the SQL-standard
    spelling of SET default_transaction_isolation / _read_only / _deferrable:
    the client keeps it on every server connection (its later transactions
    run at that level; a READ ONLY session's INSERT gets PostgreSQL's 25006),
    and the next client of the connection never inherits it. Pool size 1:
    one connection per server, shared by both clients."""
    router = routers.start(general={"default_pool_size": 1}, with_replica=True)
    defaults = ("read committed", "off", "off")
    shown = ("SELECT current_setting('default_transaction_isolation'), "
             "current_setting('default_transaction_read_only'), "
             "current_setting('default_transaction_deferrable')")
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        a.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, "
                  "DEFERRABLE")
        for _ in range(3):
            assert b.execute(shown).fetchone() == defaults
            with b.transaction():
                b.execute("INSERT INTO ss_schema.ss_t (tz) VALUES ('b')")
                assert b.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
            with a.transaction():
                a.execute("INSERT INTO ss_schema.ss_t (tz) VALUES ('a')")
                assert a.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
            assert a.execute(shown).fetchone() == ("repeatable read", "off", "on")
        a.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        for _ in range(3):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                a.execute("INSERT INTO ss_schema.ss_t (tz) VALUES ('a')")
            assert b.execute(shown).fetchone() == defaults
            b.execute("INSERT INTO ss_schema.ss_t (tz) VALUES ('b')")
        a.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE, ISOLATION LEVEL READ COMMITTED")
        a.execute("INSERT INTO ss_schema.ss_t (tz) VALUES ('a')")
        assert a.execute(shown).fetchone() == ("read committed", "off", "on")


def test_set_config_session_does_not_leak(routers):
    """`SELECT set_config(name, value, false)` is a session-level change made
    through a function: the next client of that server connection must not
    inherit it either."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        default = b.execute("SHOW statement_timeout").fetchone()[0]
        a.execute("SELECT set_config('statement_timeout', '77s', false)")
        assert b.execute("SHOW statement_timeout").fetchone() == (default,)


def test_set_config_session_is_carried_like_set(routers, schema):
    """`SELECT set_config(name, value, false)` that certainly runs (the
    pg_dump preamble form) is tracked like SET: the client keeps it after
    another client used the server connection, and that client never sees
    it. Both protocols: one statement (extended) and a multi-statement string
    (simple Query)."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        default_timeout = b.execute("SHOW statement_timeout").fetchone()[0]
        assert a.execute("SELECT pg_catalog.set_config('search_path', 'ss_schema, public', false)"
                         ).fetchone() == ("ss_schema, public",)
        a.execute("SELECT 1; SELECT set_config('statement_timeout', '77s', false), "
                  "set_config('myapp.tenant', 't42', false)")
        for _ in range(3):
            with pytest.raises(psycopg.errors.UndefinedTable):
                b.execute("SELECT count(*) FROM ss_t")
            row = b.execute("SELECT current_setting('statement_timeout'), "
                            "coalesce(current_setting('myapp.tenant', true), '')").fetchone()
            assert row == (default_timeout, "")
            assert a.execute("SELECT count(*) >= 0 FROM ss_t").fetchone() == (True,)
            row = a.execute("SELECT current_setting('statement_timeout'), "
                            "current_setting('myapp.tenant')").fetchone()
            assert row == ("77s", "t42")
        # pg_dump's empty search_path is an empty list, not '""' (the value
        # is replayed through set_config, as it was given).
        a.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        b.execute("SELECT 1")
        assert a.execute("SHOW search_path").fetchone() == ("",)
        # Rolled back: not kept.
        a.execute("BEGIN")
        a.execute("SELECT set_config('statement_timeout', '88s', false)")
        a.execute("ROLLBACK")
        b.execute("SELECT 1")
        assert a.execute("SHOW statement_timeout").fetchone() == ("77s",)
        # RESET ALL undoes it like a SET.
        a.execute("RESET ALL")
        b.execute("SELECT 1")
        assert a.execute("SHOW statement_timeout").fetchone() == (default_timeout,)


def test_uncertain_set_config_never_leaks(routers):
    """A set_config call the router cannot follow (under a condition, in a
    subquery, PREPAREd and EXECUTEd) is not carried, but the server
    connection is reset before another client gets it."""
    router = routers.start(general={"default_pool_size": 1})
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        default = b.execute("SHOW statement_timeout").fetchone()[0]
        a.execute("SELECT set_config('statement_timeout', '61s', false) WHERE 1 = 1")
        assert b.execute("SHOW statement_timeout").fetchone() == (default,)
        a.execute("SELECT (SELECT set_config('statement_timeout', '62s', false))")
        assert b.execute("SHOW statement_timeout").fetchone() == (default,)
        a.execute("PREPARE sc AS SELECT set_config('statement_timeout', '63s', false)")
        b.execute("SELECT 1")
        assert a.execute("EXECUTE sc").fetchone() == ("63s",)
        assert b.execute("SHOW statement_timeout").fetchone() == (default,)
        # pg_settings has a rule that turns an UPDATE into set_config().
        a.execute("UPDATE pg_settings SET setting = '64s' WHERE name = 'statement_timeout'")
        assert b.execute("SHOW statement_timeout").fetchone() == (default,)
        # A reported setting comes back in ParameterStatus: carried anyway.
        b_app = b.execute("SHOW application_name").fetchone()[0]
        a.execute("SELECT set_config('application_name', 'via_fn', false) WHERE 1 = 1")
        assert b.execute("SHOW application_name").fetchone() == (b_app,)
        assert a.execute("SHOW application_name").fetchone() == ("via_fn",)


def test_settings_changed_by_sql_run_from_text_never_leak(routers):
    """SQL given as text to a built-in (`query_to_xml`) is not read by the
    router, like a DO block: the client is pinned to its connection (so it
    keeps what that SQL set, as on PostgreSQL), and the connection is reset
    before any other client gets it."""
    router = routers.start(general={"default_pool_size": 2})
    with connect(router.dsn()) as b:
        default = b.execute("SHOW statement_timeout").fetchone()[0]
        with connect(router.dsn()) as a:
            a.execute("SELECT query_to_xml('select set_config(''statement_timeout'', ''1234'', false), "
                      "set_config(''myapp.secret'', ''a-data'', false)', true, true, '')")
            for _ in range(3):
                assert a.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
                assert b.execute("SHOW statement_timeout").fetchone() == (default,)
        for _ in range(3):
            with connect(router.dsn()) as c:
                for conn in (b, c):
                    assert conn.execute("SHOW statement_timeout").fetchone() == (default,)
                    assert conn.execute("SELECT current_setting('myapp.secret', true)").fetchone() in [
                        (None,), ("",)]


def test_set_config_of_router_settings_is_not_a_router_setting(routers, cluster):
    """Only `SET pgrouter.role` steers routing (where the session's policy
    checks it); `set_config('pgrouter.role', ...)` just sets a custom
    setting on the server, and reads stay on the replica."""
    places = Places(cluster)
    router = routers.start(general={"default_pool_size": 2}, with_replica=True)
    with connect(router.dsn()) as a:
        a.execute("SELECT set_config('pgrouter.role', 'primary', false)")
        for _ in range(3):
            assert places.row(where(a)) == "replica"
        a.execute("SET pgrouter.role = 'primary'")
        assert places.row(where(a)) == "primary"


def test_many_clients_own_settings(routers, cluster):
    """12 clients over a pool of 2 (primary + replica), each with its own
    TimeZone and application_name, interleaving reads and transactions."""
    router = routers.start(general={"default_pool_size": 2}, with_replica=True)
    zones = ["UTC", "Asia/Tokyo", "Europe/Paris", "America/New_York", "Australia/Sydney",
             "Africa/Cairo"]
    errors = []

    def worker(i):
        tz = zones[i % len(zones)]
        app = f"client_{i}"
        try:
            with connect(router.dsn()) as conn:
                conn.execute(f"SET TimeZone = '{tz}'")
                conn.execute(f"SET application_name = '{app}'")
                for j in range(30):
                    if j % 3 == 0:
                        with conn.transaction():
                            got = conn.execute("SELECT current_setting('TimeZone'), "
                                               "current_setting('application_name')").fetchone()
                    else:
                        got = conn.execute("SELECT current_setting('TimeZone'), "
                                           "current_setting('application_name')").fetchone()
                    if got != (tz, app):
                        errors.append((i, j, got, (tz, app)))
        except Exception as exc:  # noqa: BLE001
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_discard_all_in_a_transaction_block_fails_and_discards_nothing(routers):
    """PostgreSQL refuses DISCARD ALL inside a transaction block (25001, or
    25P02 once the transaction failed) and discards nothing: the client's
    prepared statements (protocol-level and SQL PREPARE) and settings stay,
    whether DISCARD ALL is sent as a simple query or as a named statement."""
    router = routers.start(general={"default_pool_size": 1})

    def code(conn, sql):
        with pytest.raises(psycopg.Error) as err:
            conn.execute(sql)
        return err.value.sqlstate

    # a: every statement prepared (named); s: simple queries.
    with connect(router.dsn(), prepare_threshold=0) as a, connect(router.dsn()) as s, \
            connect(router.dsn()) as b:
        # A) as a named prepared statement, in an open transaction.
        assert a.execute("SELECT 42").fetchone() == (42,)
        a.execute("BEGIN")
        assert code(a, "DISCARD ALL") == "25001"
        a.execute("ROLLBACK")
        b.execute("SELECT 1")
        assert a.execute("SELECT 42").fetchone() == (42,)
        # B) as a simple query, in a failed transaction.
        a.execute("BEGIN")
        assert code(a, "SELECT 1/0") == "22012"
        a.prepare_threshold = None
        assert code(a, "DISCARD ALL") == "25P02"
        a.prepare_threshold = 0
        assert code(a, "SELECT 42") == "25P02"
        a.execute("ROLLBACK")
        assert a.execute("SELECT 42").fetchone() == (42,)
        # C) as a simple query, in an open transaction: SQL prepared
        # statements and settings stay.
        s.execute("PREPARE ss_keep AS SELECT 7")
        s.execute("SET application_name = 'kept'")
        s.execute("BEGIN")
        assert code(s, "DISCARD ALL") == "25001"
        s.execute("ROLLBACK")
        b.execute("SELECT 1")
        assert s.execute("EXECUTE ss_keep").fetchone() == (7,)
        assert s.execute("SHOW application_name").fetchone() == ("kept",)
        # Outside a transaction it discards everything, as before.
        s.execute("DISCARD ALL")
        assert code(s, "EXECUTE ss_keep") == "26000"
        assert s.execute("SHOW application_name").fetchone() != ("kept",)
        a.execute("DISCARD ALL")
        assert a.execute("SELECT 42").fetchone() == (42,)
