"""Attacks on JWT login and on JWT sessions (issue 4 items 1, 4 and 9):
forged, expired and mismatched tokens are refused with 28P01 naming the
cause; every way to change the effective role is refused with 42501 and the
session stays usable, in simple queries, multi-statement strings, the
extended protocol and SQL PREPARE; RESET ALL / DISCARD ALL keep the role."""
from __future__ import annotations

import time
import uuid

import asyncpg
import psycopg
import pytest

from harness.clients import connect, refusal_in_and_out_of_transaction, run_async
from harness.pg import APP_DB
from harness.jwt_setup import (AUTHENTICATOR, TABLE, WEIRD_ROLE, jwt_db, keys,  # noqa: F401
                               login_error, module_routers, start_jwt_router, whoami)
from harness.jwt_tokens import (AUDIENCE, SigningKey, alg_none_token, claims,
                                flip_signature, hs256_token, tamper_payload)


@pytest.fixture(scope="module")
def router(module_routers, jwt_db, keys):
    """RS256 PEM router, algorithms RS256 + ES256, issuer and audience set,
    allowed_roles limited, pool of 2 for the authenticator."""
    return start_jwt_router(module_routers, keys["rsa"], auth_pool_size=2,
                            jwt={"algorithms": ["RS256", "ES256"],
                                 "allowed_roles": ["web_user", "web_reader", WEIRD_ROLE]})


def uname() -> str:
    return f"atk_{uuid.uuid4().hex[:6]}"


# ------------------------------------------------------------ bad tokens --
def without(c: dict, key: str) -> dict:
    c = dict(c)
    c.pop(key, None)
    return c


def _cases(keys):
    rsa = keys["rsa"]
    other = SigningKey("rsa")
    now = int(time.time())
    pem = rsa.public_pem()
    return {
        # name: (token for user U, expected word); U is substituted at run time.
        "expired": (lambda u: rsa.sign(claims(u, "web_user", exp=now - 60)), "expired"),
        "not yet valid": (lambda u: rsa.sign(claims(u, "web_user", nbf=now + 600)), "not yet valid"),
        "tampered payload": (lambda u: tamper_payload(rsa.sign(claims(u, "web_user")), role=WEIRD_ROLE),
                             "signature"),
        "tampered sub": (lambda u: tamper_payload(rsa.sign(claims("someone_else", "web_user")), sub=u),
                         "signature"),
        "bad signature": (lambda u: flip_signature(rsa.sign(claims(u, "web_user"))), "signature"),
        "other key": (lambda u: other.sign(claims(u, "web_user"), kid=rsa.kid), "signature"),
        "alg none": (lambda u: alg_none_token(claims(u, "web_user")), "algorithm"),
        "hs256 with public key": (lambda u: hs256_token(claims(u, "web_user"), pem), "algorithm"),
        "alg not allowed (RS384)": (lambda u: rsa.sign(claims(u, "web_user"), alg="RS384"), "algorithm"),
        "wrong issuer": (lambda u: rsa.sign(claims(u, "web_user", iss="https://evil.test")), "issuer"),
        "no issuer": (lambda u: rsa.sign(claims(u, "web_user", iss=None)), None),
        "wrong audience": (lambda u: rsa.sign(claims(u, "web_user", aud="someone-else")), "audience"),
        "audience list without ours": (lambda u: rsa.sign(claims(u, "web_user", aud=["a", "b"])),
                                       "audience"),
        "no audience": (lambda u: rsa.sign(claims(u, "web_user", aud=None)), None),
        "user does not match": (lambda u: rsa.sign(claims("somebody_else", "web_user")),
                                "user does not match"),
        "missing sub": (lambda u: rsa.sign(without(claims(u, "web_user"), "sub")), None),
        "missing exp": (lambda u: rsa.sign(claims(u, "web_user", exp=None)), "missing claim"),
        "role not allowed": (lambda u: rsa.sign(claims(u, "web_admin")), "role not allowed"),
        "not a jwt": (lambda u: "not-a-token", None),
        "empty": (lambda u: "", None),
    }


CASES = ["expired", "not yet valid", "tampered payload", "tampered sub", "bad signature",
         "other key", "alg none", "hs256 with public key", "alg not allowed (RS384)",
         "wrong issuer", "no issuer", "wrong audience", "audience list without ours",
         "no audience", "user does not match", "missing sub", "missing exp", "role not allowed",
         "not a jwt", "empty"]


@pytest.mark.parametrize("case", CASES)
def test_bad_token_refused(router, keys, case):
    make, word = _cases(keys)[case]
    u = uname()
    err = login_error(router, u, make(u))
    assert err.sqlstate == "28P01", err
    assert err.fields.get("S") == "FATAL", err
    if word:
        assert word in err.message, err.message


def test_good_token_variants_accepted(router, keys):
    """The control group: a plain token, an audience list containing ours,
    an nbf in the past, no kid in the header (PEM key): all log in."""
    rsa = keys["rsa"]
    u = uname()
    for tok in (rsa.sign(claims(u, "web_user")),
                rsa.sign(claims(u, "web_user", aud=["x", AUDIENCE])),
                rsa.sign(claims(u, "web_reader", nbf=int(time.time()) - 5)),
                rsa.sign(claims(u, WEIRD_ROLE), kid=False)):
        with connect(router.dsn(user=u, password=tok)) as c:
            assert whoami(c)[1] == AUTHENTICATOR


def test_leeway(routers, jwt_db, keys):
    """exp and nbf are checked with leeway_s (here with disconnect_on_expiry
    off, so only the login is judged)."""
    router = start_jwt_router(routers, keys["rsa"], jwt={"leeway_s": 30, "disconnect_on_expiry": False})
    rsa = keys["rsa"]
    u = uname()
    now = int(time.time())
    with connect(router.dsn(user=u, password=rsa.sign(claims(u, "web_user", exp=now - 10)))) as c:
        assert whoami(c)[0] == "web_user"
    with connect(router.dsn(user=u, password=rsa.sign(claims(u, "web_user", nbf=now + 10)))) as c:
        assert whoami(c)[0] == "web_user"
    err = login_error(router, u, rsa.sign(claims(u, "web_user", exp=now - 60)))
    assert err.sqlstate == "28P01" and "expired" in err.message, err
    err = login_error(router, u, rsa.sign(claims(u, "web_user", nbf=now + 60)))
    assert err.sqlstate == "28P01" and "not yet valid" in err.message, err


def test_leeway_applies_to_disconnect_on_expiry(routers, jwt_db, keys):
    """A token the login accepted thanks to leeway_s is not declared expired
    by disconnect_on_expiry at the very next statement: both use exp + leeway."""
    router = start_jwt_router(routers, keys["rsa"], jwt={"leeway_s": 30, "disconnect_on_expiry": True})
    u = uname()
    tok = keys["rsa"].sign(claims(u, "web_user", exp=int(time.time()) - 10))
    with connect(router.dsn(user=u, password=tok)) as c:
        assert whoami(c)[0] == "web_user"


def test_hs256_in_algorithms_is_refused_at_startup_or_login(routers, jwt_db, keys):
    """Even if a DBA lists HS256, an HMAC token signed with the public key
    must never log in."""
    u = uname()
    try:
        router = start_jwt_router(routers, keys["rsa"], jwt={"algorithms": ["RS256", "HS256"]})
    except RuntimeError:
        routers.routers[-1].stop_requested = True
        return  # refused at start-up: fine
    err = login_error(router, u, hs256_token(claims(u, "web_user"), keys["rsa"].public_pem()))
    assert err.sqlstate == "28P01", err


# ----------------------------------------------------------------- escapes --
ESCAPES_SIMPLE = [
    "SET ROLE web_admin",
    "SET SESSION ROLE web_admin",
    "SET LOCAL ROLE web_admin",
    "SET ROLE NONE",
    "RESET ROLE",
    "set role 'web_admin'",
    "SET role TO web_admin",
    "SET SESSION AUTHORIZATION authenticator",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET SESSION AUTHORIZATION",
    "SELECT set_config('role', 'web_admin', false)",
    "SELECT set_config('ROLE', 'web_admin', false)",
    "SELECT pg_catalog.set_config('role', 'web_admin', false)",
    "SELECT set_config('role', 'web_admin', true)",
    "SELECT set_config('session_authorization', 'authenticator', false)",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('transaction_read_only', 'off', true)",
    "SELECT (SELECT set_config('role', 'web_admin', false))",
    "SELECT 1 WHERE set_config('role', 'web_admin', false) IS NOT NULL",
    "WITH x AS (SELECT set_config('role', 'web_admin', false) AS r) SELECT r FROM x",
    "SELECT * FROM (SELECT set_config('role', 'web_admin', false)) s",
    "SELECT set_config(n, 'web_admin', false) FROM (VALUES ('role')) v(n)",
    "SELECT set_config('ro' || 'le', 'web_admin', false)",
    "DO $$ BEGIN EXECUTE 'SET ROLE web_admin'; END $$",
    "DO $$ BEGIN PERFORM 1; END $$",
    "DO LANGUAGE plpgsql $$ BEGIN RESET ROLE; END $$",
    "SELECT 1; SET ROLE web_admin",
    "SET ROLE web_admin; SELECT current_user",
    "SELECT 1; RESET ROLE; SELECT current_user",
    "SELECT 1; SELECT set_config('role', 'web_admin', false)",
    "PREPARE esc AS SELECT set_config('role', 'web_admin', false)",
    # SQL run from text by built-ins (the text can be computed, so it is not read).
    "SELECT query_to_xml('select set_config(''role'',''web_admin'',false)', true, true, '')",
    "SELECT query_to_xml(convert_from(decode('c2VsZWN0IDE=', 'base64'), 'UTF8'), true, true, '')",
    "SELECT pg_catalog.QUERY_TO_XMLSCHEMA('select 1', true, true, '')",
    "SELECT query_to_xml_and_xmlschema('select 1', true, true, '')",
    "SELECT * FROM ts_stat('select set_config(''role'',''web_admin'',false)::tsvector')",
    "SELECT ts_rewrite('a'::tsquery, 'select ''a''::tsquery, ''b''::tsquery')",
    # Functions whose bodies would change the role when called (temporary or not).
    "CREATE FUNCTION pg_temp.esc() RETURNS void LANGUAGE plpgsql AS "
    "$$BEGIN SET ROLE web_admin; END$$",
    "CREATE FUNCTION pg_temp.esc() RETURNS text LANGUAGE sql AS "
    "$$SELECT set_config('role', 'web_admin', false)$$",
    "CREATE PROCEDURE pg_temp.esc() LANGUAGE plpgsql AS $$BEGIN EXECUTE 'RESET ROLE'; END$$",
    "CREATE OR REPLACE FUNCTION pg_temp.esc() RETURNS void LANGUAGE plpgsql AS "
    "$$BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); END$$",
    "CREATE FUNCTION pg_temp.esc() RETURNS xml LANGUAGE sql AS $$SELECT query_to_xml('x', true, true, '')$$",
    # A function's SET clause changes the role while it runs, whatever its body.
    "CREATE FUNCTION pg_temp.esc() RETURNS text LANGUAGE sql SET role = 'web_admin' AS $$SELECT 'x'$$",
    "CREATE FUNCTION pg_temp.esc() RETURNS text LANGUAGE sql SET session_authorization = 'authenticator' "
    "AS $$SELECT 'x'$$",
    # Spellings: a quoted setting name, set_config() in FROM.
    "SET \"role\" = 'web_admin'",
    "RESET \"role\"",
    "SELECT * FROM set_config('role', 'web_admin', false)",
]


@pytest.fixture
def session(router, keys):
    u = uname()
    conn = connect(router.dsn(user=u, password=keys["rsa"].sign(claims(u, "web_user"))))
    yield conn
    conn.close()


def assert_still_web_user(conn):
    assert whoami(conn) == ("web_user", AUTHENTICATOR)
    conn.execute("BEGIN")
    assert whoami(conn) == ("web_user", AUTHENTICATOR)
    conn.execute("COMMIT")


@pytest.mark.parametrize("sql", ESCAPES_SIMPLE)
def test_escape_refused_simple(session, sql):
    with pytest.raises(psycopg.Error) as err:
        session.execute(sql)
        # A PREPARE that was let through must not run later.
        if sql.startswith("PREPARE"):
            session.execute("EXECUTE esc")
    assert err.value.sqlstate == "42501", f"{err.value.sqlstate}: {err.value}"
    assert_still_web_user(session)


def test_the_temp_function_escape_writes_nothing(session, primary):
    """The attack end to end: create the function, call it, then write to
    a table only web_admin may write. Every step is refused (42501) or
    fails; nothing is written and the session stays web_user."""
    before = primary.scalar(f"SELECT count(*) FROM {TABLE}")
    with pytest.raises(psycopg.Error) as err:
        session.execute("BEGIN; CREATE FUNCTION pg_temp.esc() RETURNS void LANGUAGE plpgsql AS "
                        "$$BEGIN SET ROLE web_admin; END$$; SELECT pg_temp.esc(); "
                        f"INSERT INTO {TABLE} (note) VALUES ('escaped'); COMMIT")
    assert err.value.sqlstate == "42501", f"{err.value.sqlstate}: {err.value}"
    session.execute("ROLLBACK")
    assert primary.scalar(f"SELECT count(*) FROM {TABLE}") == before
    assert_still_web_user(session)


def test_functions_that_cannot_change_the_role_may_be_created(session):
    """Ordinary function bodies are allowed: SQL and PL/pgSQL that name
    none of the role, set_config, EXECUTE or SQL-running built-ins."""
    session.execute("CREATE FUNCTION pg_temp.add1(a int) RETURNS int LANGUAGE sql AS $$SELECT a + 1$$")
    session.execute("CREATE FUNCTION pg_temp.twice(a int) RETURNS int LANGUAGE plpgsql AS "
                    "$$DECLARE r int; BEGIN r := a * 2; RETURN r; END$$")
    assert session.execute("SELECT pg_temp.add1(1), pg_temp.twice(3)").fetchone() == (2, 6)
    assert_still_web_user(session)


ESCAPES_EXTENDED = [
    ("SET ROLE web_admin", None),
    ("RESET ROLE", None),
    ("SET SESSION AUTHORIZATION authenticator", None),
    ("SELECT set_config('role', %s, false)", ("web_admin",)),
    ("SELECT set_config(%s, 'web_admin', false)", ("role",)),
    ("SELECT set_config(%s, %s, false)", ("session_authorization", "authenticator")),
    ("SELECT (SELECT set_config('role', %s, false))", ("web_admin",)),
    ("WITH x AS (SELECT set_config('default_transaction_read_only', %s, false)) SELECT * FROM x",
     ("off",)),
    ("DO $$ BEGIN EXECUTE 'SET ROLE web_admin'; END $$", None),
]


@pytest.mark.parametrize("sql,params", ESCAPES_EXTENDED)
def test_escape_refused_extended_psycopg(session, sql, params):
    """Parse/Bind/Execute (psycopg sends the extended protocol for binary
    cursors and for queries with parameters)."""
    with pytest.raises(psycopg.Error) as err:
        if params is None:
            session.cursor(binary=True).execute(sql)
        else:
            session.execute(sql, params)
    assert err.value.sqlstate == "42501", f"{err.value.sqlstate}: {err.value}"
    assert_still_web_user(session)


def test_escape_refused_extended_asyncpg(router, keys):
    u = uname()
    tok = keys["rsa"].sign(claims(u, "web_user"))
    attempts = [
        ("fetch", "SET ROLE web_admin", ()),
        ("fetch", "RESET ROLE", ()),
        ("fetchval", "SELECT set_config('role', $1, false)", ("web_admin",)),
        ("fetchval", "SELECT set_config($1, $2, false)", ("role", "web_admin")),
        ("prepare", "SELECT set_config('session_authorization', 'authenticator', false)", ()),
        ("execute", "SET ROLE web_admin", ()),           # simple protocol
        ("execute", "SELECT 1; RESET ROLE", ()),
    ]

    async def main():
        conn = await asyncpg.connect(**router.connect_kwargs(user=u, password=tok))
        wrong = []
        try:
            for how, sql, args in attempts:
                try:
                    if how == "prepare":
                        stmt = await conn.prepare(sql)
                        await stmt.fetchval()
                    else:
                        await getattr(conn, how)(sql, *args)
                    wrong.append(f"{how} {sql!r}: accepted")
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate != "42501":
                        wrong.append(f"{how} {sql!r}: {exc.sqlstate} {exc}")
                who = await conn.fetchrow("SELECT current_user, session_user")
                if tuple(who) != ("web_user", AUTHENTICATOR):
                    wrong.append(f"after {how} {sql!r}: running as {tuple(who)}")
        finally:
            await conn.close()
        return wrong
    assert run_async(main()) == []


def test_refused_multi_statement_has_no_effect(session, primary):
    """A string with a write and an escape is refused as a whole: the write
    does not happen either."""
    note = f"esc_{uuid.uuid4().hex[:8]}"
    with pytest.raises(psycopg.Error) as err:
        session.execute(f"INSERT INTO {TABLE} (note) VALUES ('{note}'); RESET ROLE")
    assert err.value.sqlstate == "42501"
    with pytest.raises(psycopg.Error) as err:
        session.execute(f"SET ROLE web_admin; INSERT INTO {TABLE} (note) VALUES ('{note}')")
    assert err.value.sqlstate == "42501"
    assert primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (note,)) == 0
    assert_still_web_user(session)


def test_escape_inside_transaction(session):
    """Refused inside an open transaction: the role never changes, and the
    session recovers after ROLLBACK."""
    session.execute("BEGIN")
    session.execute("SELECT 1")
    with pytest.raises(psycopg.Error) as err:
        session.execute("SET LOCAL ROLE web_admin")
    assert err.value.sqlstate == "42501"
    try:
        assert session.execute("SELECT current_user").fetchone() == ("web_user",)
    except psycopg.errors.InFailedSqlTransaction:
        pass  # the transaction is aborted, as after any error: also fine
    session.execute("ROLLBACK")
    assert_still_web_user(session)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_escape_refused_in_a_transaction_gets_the_same_error(session, protocol):
    """The refusal inside a transaction fails it (raised through the
    server) but reaches the client exactly as outside one: the router's
    error, without the PL/pgSQL CONTEXT line and source fields of the raise."""
    outside, inside = refusal_in_and_out_of_transaction(session, "SET ROLE web_admin",
                                                        binary=protocol == "extended")
    assert outside["sqlstate"] == "42501" and outside["context"] is None, outside
    assert inside == outside
    assert_still_web_user(session)


def test_escape_does_not_leak_to_next_client(router, keys):
    """Try every escape on one client, then check a client with another role
    on the same pool (pool of 2) and the attacker itself."""
    ua, ub = uname(), uname()
    a = connect(router.dsn(user=ua, password=keys["rsa"].sign(claims(ua, "web_user"))))
    b = connect(router.dsn(user=ub, password=keys["rsa"].sign(claims(ub, WEIRD_ROLE))))
    try:
        for sql in ESCAPES_SIMPLE:
            try:
                a.execute(sql)
            except psycopg.Error:
                pass
            if a.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                a.execute("ROLLBACK")
            assert whoami(b) == (WEIRD_ROLE, AUTHENTICATOR), sql
        assert_still_web_user(a)
    finally:
        a.close()
        b.close()


# -------------------------------------------------------- RESET/DISCARD ALL --
def test_reset_all_and_discard_all_keep_role(session):
    session.execute("SET statement_timeout = '17s'")
    session.execute("SET application_name = 'jwt_app'")
    cur = session.execute("RESET ALL")
    assert cur.statusmessage == "RESET"
    assert session.execute("SHOW statement_timeout").fetchone() != ("17s",)
    assert session.execute("SHOW application_name").fetchone() != ("jwt_app",)
    assert_still_web_user(session)

    session.execute("SET statement_timeout = '18s'")
    cur = session.execute("DISCARD ALL")
    assert cur.statusmessage == "DISCARD ALL"
    assert session.execute("SHOW statement_timeout").fetchone() != ("18s",)
    assert_still_web_user(session)


def test_reset_all_and_discard_all_extended_protocol(session):
    """The same through Parse/Bind/Execute (what drivers such as Npgsql send)."""
    session.execute("SET statement_timeout = '19s'")
    cur = session.cursor(binary=True)
    cur.execute("DISCARD ALL")
    assert cur.statusmessage == "DISCARD ALL"
    assert session.execute("SHOW statement_timeout").fetchone() != ("19s",)
    cur.execute("RESET ALL")
    assert cur.statusmessage == "RESET"
    assert_still_web_user(session)


def test_discard_all_drops_prepared_statements(session):
    """DISCARD ALL from a JWT session drops the client's prepared statements
    (SQL PREPARE and protocol-level), as PostgreSQL's would."""
    session.execute("PREPARE before_discard AS SELECT 1")
    assert session.execute("EXECUTE before_discard").fetchone() == (1,)
    session.execute("DISCARD ALL")
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        session.execute("EXECUTE before_discard")
    assert_still_web_user(session)


def test_role_not_allowed_is_refused_at_login(router, keys):
    u = uname()
    err = login_error(router, u, keys["rsa"].sign(claims(u, "web_admin")))
    assert err.sqlstate == "28P01" and "role not allowed" in err.message, err
    # The allowed ones log in.
    with connect(router.dsn(user=u, password=keys["rsa"].sign(claims(u, "web_reader")))) as c:
        assert whoami(c) == ("web_reader", AUTHENTICATOR)


def test_discard_all_in_a_pipeline_keeps_the_role(session):
    """DISCARD ALL followed by other statements in one extended batch (a
    psycopg pipeline): the statements after it still run as the token's
    role, never as the connect_as user."""
    try:
        with session.pipeline():
            session.execute("DISCARD ALL")
            cur = session.execute("SELECT current_user")
        got = cur.fetchone()
    except psycopg.Error as exc:
        got = exc.sqlstate
    assert got == "42501", got
    assert_still_web_user(session)


@pytest.mark.parametrize("mode,pin", [("session", False), ("transaction", True)])
@pytest.mark.parametrize("command,tag", [("RESET ALL", "RESET"), ("DISCARD ALL", "DISCARD ALL")])
def test_reset_all_and_discard_all_on_a_held_connection(routers, jwt_db, keys, mode, pin, command, tag):
    """On a server connection the client holds (session mode, or pinned by a
    temporary table) RESET ALL and DISCARD ALL reset the server too: the
    settings go back to the startup values, DISCARD ALL drops the temporary
    table and advisory locks; the role stays the token's. Both protocols."""
    r = start_jwt_router(routers, keys["rsa"], general={"pool_mode": mode})
    u = uname()
    shown = ("SELECT current_setting('search_path'), current_setting('application_name'), "
             "current_setting('statement_timeout')")
    startup = ('"$user", public', "startup_app", "0")
    for binary in (False, True):
        with connect(r.dsn(user=u, password=keys["rsa"].sign(claims(u, "web_user")),
                           application_name="startup_app")) as conn:
            if pin:
                conn.execute("CREATE TEMP TABLE held_tt (x int)")
            conn.execute("SELECT pg_advisory_lock(4242)")
            conn.execute("SET search_path = public, pg_temp")
            conn.execute("SET statement_timeout = '7s'")
            conn.execute("SET application_name = 'changed'")
            cur = conn.cursor(binary=binary)
            cur.execute(command)
            assert cur.statusmessage == tag
            assert conn.execute(shown).fetchone() == startup
            assert_still_web_user(conn)
            temp = conn.execute("SELECT count(*) FROM pg_class WHERE relpersistence = 't' "
                                "AND relname = 'held_tt'").fetchone()[0]
            locks = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                 "AND pid = pg_backend_pid()").fetchone()[0]
            if command == "DISCARD ALL":
                assert (temp, locks) == (0, 0)
            else:
                assert temp == (1 if pin else 0) and locks == 1
                conn.execute("SELECT pg_advisory_unlock_all()")


@pytest.mark.parametrize("role", ["none", "web_user\u0000x", "", "web_user" + "x" * 56])
def test_role_set_role_cannot_apply_is_refused_at_login(routers, jwt_db, keys, role):
    """With no allowed_roles every role claim is taken as given — except
    those `SET ROLE "<role>"` cannot apply: "none" (PostgreSQL reads even
    the quoted `SET ROLE "none"` as SET ROLE NONE, so the session would run
    as connect_as), a NUL byte (it would cut the router's own query short)
    and more than 63 bytes (PostgreSQL would cut the name, perhaps to
    another role's); an empty claim names no role. All refused at login
    with 28P01."""
    r = start_jwt_router(routers, keys["rsa"])
    u = uname()
    err = login_error(r, u, keys["rsa"].sign(claims(u, role)))
    assert err.sqlstate == "28P01", err
    word = "missing claim" if role == "" else "role not allowed"
    assert word in err.message, err.message
    # The username fallback (no role claim) is held to the same rule.
    if role == "none":
        err = login_error(r, "none", keys["rsa"].sign(claims("none")))
        assert err.sqlstate == "28P01" and "role not allowed" in err.message, err
    # The control: an ordinary role logs in.
    with connect(r.dsn(user=u, password=keys["rsa"].sign(claims(u, "web_user")))) as c:
        assert whoami(c) == ("web_user", AUTHENTICATOR)


# ------------------------------------------- state planted for another role --
def test_a_temp_table_planted_through_the_search_path_never_reaches_another_role(routers, jwt_db, keys):
    """Alice puts pg_temp first on her search_path and creates an unqualified
    table shadowing a real one: she is pinned like after CREATE TEMP, so Bob
    (another role, same one-connection pool) reads the real table, never
    hers."""
    router = start_jwt_router(routers, keys["rsa"], auth_pool_size=1,
                              general={"checkout_timeout_ms": 1500})
    ua, ub = uname(), uname()
    alice = connect(router.dsn(user=ua, password=keys["rsa"].sign(claims(ua, "web_user"))))
    try:
        alice.execute("SET search_path = pg_temp, public")
        alice.execute(f"CREATE TABLE {TABLE} (id int, note text)")
        alice.execute(f"INSERT INTO {TABLE} VALUES (1, 'planted by alice')")
        alice.execute(f"GRANT ALL ON {TABLE} TO PUBLIC")
        bob = connect(router.dsn(user=ub, password=keys["rsa"].sign(claims(ub, WEIRD_ROLE))))
        with pytest.raises(psycopg.errors.QueryCanceled):
            bob.execute("SELECT 1")  # alice holds the only connection
        bob.close()
    finally:
        alice.close()
    bob = connect(router.dsn(user=ub, password=keys["rsa"].sign(claims(ub, WEIRD_ROLE))))
    try:
        assert whoami(bob) == (WEIRD_ROLE, AUTHENTICATOR)
        assert bob.execute("SELECT count(*) FROM pg_class WHERE relpersistence = 't'").fetchone() == (0,)
    finally:
        bob.close()


def test_settings_a_function_left_never_reach_another_role(routers, jwt_db, keys, primary):
    """A function of the database's own sets a tenant setting with
    set_config(..., false): the connection is cleaned before Bob's next
    statement on it, and Alice keeps her role."""
    with primary.connect(APP_DB) as direct:
        direct.execute("""CREATE OR REPLACE FUNCTION jwt_set_tenant(t text) RETURNS void
                          LANGUAGE sql AS $$SELECT set_config('app.tenant', t, false)$$""")
        direct.execute("GRANT EXECUTE ON FUNCTION jwt_set_tenant(text) TO PUBLIC")
    router = start_jwt_router(routers, keys["rsa"], auth_pool_size=1)
    ua, ub = uname(), uname()
    try:
        with connect(router.dsn(user=ua, password=keys["rsa"].sign(claims(ua, "web_user")))) as alice:
            alice.execute("SELECT jwt_set_tenant('alice')")
            assert whoami(alice) == ("web_user", AUTHENTICATOR)
        with connect(router.dsn(user=ub, password=keys["rsa"].sign(claims(ub, WEIRD_ROLE)))) as bob:
            assert bob.execute("SELECT current_setting('app.tenant', true)").fetchone()[0] in (None, "")
            assert whoami(bob) == (WEIRD_ROLE, AUTHENTICATOR)
    finally:
        with primary.connect(APP_DB) as direct:
            direct.execute("DROP FUNCTION jwt_set_tenant(text)")
