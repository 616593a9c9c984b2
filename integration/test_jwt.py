"""JWT login (SPEC §5 "JWT login", issue 4): tokens as passwords, PEM keys
of every kind, JWKS with rotation and rate-limited refreshes, the role claim
applied with SET ROLE on the connect_as user's pooled connections, role
isolation, auto-provisioning, token expiry, start-up preflight."""
from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from harness import wire
from harness.clients import connect, run_async
from harness.jwks_server import JwksServer
from harness.jwt_setup import (AUTHENTICATOR, TABLE, UNGRANTED_ROLE, WEIRD_ROLE,  # noqa: F401
                               authenticator_user, jwt_db, keys, login_error,
                               start_jwt_router, whoami)
from harness.jwt_tokens import SigningKey, claims
from harness.netns import netns  # noqa: F401  (pytest fixture)
from harness.ops import line_of, reload_marks, wait_reload
from harness.pg import pg_tool
from harness.routes import WHERE, Places, where
from harness.util import wait_until


def token(key: SigningKey, sub: str, role: str | None = "web_user", **extra) -> str:
    return key.sign(claims(sub, role, **extra))


def uname(prefix: str = "jwt") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:6]}"


# ----------------------------------------------------------------- login --
@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_login_with_each_key_type(routers, jwt_db, keys, kind):
    key = keys[kind]
    router = start_jwt_router(routers, key)
    user = uname()
    tok = token(key, user, "web_user")
    with connect(router.dsn(user=user, password=tok)) as conn:
        assert whoami(conn) == ("web_user", AUTHENTICATOR)

    async def main():
        conn = await asyncpg.connect(**router.connect_kwargs(user=user, password=tok))
        try:
            return await conn.fetchrow("SELECT current_user, session_user, $1::int", 7)
        finally:
            await conn.close()
    assert tuple(run_async(main())) == ("web_user", AUTHENTICATOR, 7)


def test_router_asks_for_cleartext_password(routers, jwt_db, keys):
    router = start_jwt_router(routers, keys["rsa"])
    conn = wire.RawConn.open(router.port)
    try:
        conn.send(wire.startup_message({"user": uname(), "database": "app"}))
        m = conn.read_msg()
        assert m.kind == b"R" and struct.unpack("!i", m.body[:4])[0] == 3, m
    finally:
        conn.close()


def test_psql_login(routers, jwt_db, keys):
    router = start_jwt_router(routers, keys["rsa"])
    user = uname()
    env = router.psql_env(user=user, password=token(keys["rsa"], user, "web_admin"))
    out = subprocess.run([pg_tool("psql"), "-X", "-A", "-t", "-c",
                          "SELECT current_user || '/' || session_user"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"web_admin/{AUTHENTICATOR}"


def test_large_token_and_the_login_message_limit(routers, jwt_db, keys):
    """Tokens with many group claims run to tens of KiB: one that fits in a
    password message (64 KiB, as in PostgreSQL) logs in. A bigger message
    is refused with 08P01 naming the limit that applied — the login one,
    not max_message_size, which is for sessions."""
    key = keys["rsa"]
    router = start_jwt_router(routers, key, general={"max_message_size": 1 << 20})
    user = uname()
    groups = [f"group-{i:05}" for i in range(2500)]
    tok = token(key, user, "web_user", groups=groups)
    assert 32 * 1024 < len(tok) < 64 * 1024 - 5, len(tok)
    with connect(router.dsn(user=user, password=tok)) as conn:
        assert whoami(conn) == ("web_user", AUTHENTICATOR)
    huge = token(key, user, "web_user", groups=groups * 2)
    assert len(huge) > 64 * 1024
    try:
        wire.connect(router.port, user, "app", huge).close()
        raise AssertionError("a login message over 64 KiB was accepted")
    except wire.ServerError as exc:
        assert exc.sqlstate == "08P01", exc
        assert "login message limit (65536 bytes)" in exc.message, exc.message
        assert "max_message_size" not in exc.message, exc.message
    assert router.alive()


def test_role_name_with_quote_and_space(routers, jwt_db, keys):
    router = start_jwt_router(routers, keys["rsa"])
    user = uname()
    with connect(router.dsn(user=user, password=token(keys["rsa"], user, WEIRD_ROLE))) as conn:
        assert whoami(conn) == (WEIRD_ROLE, AUTHENTICATOR)
        row = conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('weird') RETURNING who").fetchone()
        assert row == (WEIRD_ROLE,)


@pytest.mark.parametrize("role", ["r\u00f4le \u00fcn\u00ef", "it's", "back\\slash", "$1", "Mixed Case",
                                  "r" * 60 + "\u20ac"])
def test_role_names_that_need_quoting(routers, jwt_db, keys, role):
    """`SET ROLE "<role>"` with the identifier quoted and escaped: unicode,
    a quote, a backslash, a dollar, upper case, and a name of exactly 63
    bytes (the longest PostgreSQL keeps) ending in a 3-byte character."""
    with jwt_db.primary.connect("postgres") as c:
        q = '"' + role.replace('"', '""') + '"'
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            c.execute(f"CREATE ROLE {q} NOLOGIN")
        c.execute(f"GRANT {q} TO {AUTHENTICATOR}")
    router = start_jwt_router(routers, keys["rsa"])
    u = uname()
    with connect(router.dsn(user=u, password=token(keys["rsa"], u, role))) as c:
        assert whoami(c) == (role, AUTHENTICATOR)
        c.execute("BEGIN")
        assert whoami(c) == (role, AUTHENTICATOR)
        c.execute("COMMIT")


def test_copy_runs_under_the_role(routers, jwt_db, keys, primary):
    """COPY both ways (asyncpg: copy_records_to_table, copy_from_query) runs
    as the token's role like any other statement."""
    router = start_jwt_router(routers, keys["rsa"], auth_pool_size=1)
    u = uname()
    note = f"jcp_{uuid.uuid4().hex[:6]}"

    async def main():
        conn = await asyncpg.connect(**router.connect_kwargs(user=u, password=token(keys["rsa"], u)))
        try:
            tag = await conn.copy_records_to_table(TABLE, records=[(note,)] * 10, columns=["note"])
            out = []

            async def sink(chunk):
                out.append(chunk)
            await conn.copy_from_query("SELECT current_user, session_user", output=sink)
            return tag, b"".join(out)
        finally:
            await conn.close()
    assert run_async(main()) == ("COPY 10", b"web_user\tauthenticator\n")
    assert primary.sql(f"SELECT count(*), min(who), max(who) FROM {TABLE} WHERE note = %s",
                       (note,))[0] == (10, "web_user", "web_user")


def test_missing_role_claim_means_username(routers, jwt_db, keys):
    router = start_jwt_router(routers, keys["rsa"])
    tok = token(keys["rsa"], "web_admin", role=None)
    with connect(router.dsn(user="web_admin", password=tok)) as conn:
        assert whoami(conn) == ("web_admin", AUTHENTICATOR)


def test_every_transaction_runs_under_the_role(routers, jwt_db, keys, cluster):
    """Implicit and explicit transactions, reads on the replica and writes on
    the primary, extended protocol and asyncpg's prepared statements: all
    under the token's role on connections of the authenticator."""
    router = start_jwt_router(routers, keys["rsa"], with_replica=True, auth_pool_size=2)
    places = Places(cluster)
    user = uname()
    tok = token(keys["rsa"], user, "web_admin")
    note = uname("note")
    with connect(router.dsn(user=user, password=tok)) as conn:
        for _ in range(3):
            row = where(conn, f"SELECT current_user, session_user, {WHERE}")
            assert row[:2] == ("web_admin", AUTHENTICATOR) and places.row(row) == "replica"
            row = where(conn, f"INSERT INTO {TABLE} (note) VALUES (%s) RETURNING who, session_user, {WHERE}",
                        (note,))
            assert row[:2] == ("web_admin", AUTHENTICATOR) and places.row(row) == "primary"
            conn.execute("BEGIN")
            assert whoami(conn) == ("web_admin", AUTHENTICATOR)
            conn.execute(f"UPDATE {TABLE} SET note = note WHERE note = %s", (note,))
            assert whoami(conn) == ("web_admin", AUTHENTICATOR)
            conn.execute("COMMIT")
    assert cluster.primary.sql(f"SELECT DISTINCT who FROM {TABLE} WHERE note = %s", (note,)) \
        == [("web_admin",)]
    # Only the authenticator logs in to the servers for JWT sessions.
    users = {b["user"] for b in cluster.primary.pool_backends(db="app")
             if b["user"] not in ("app",)}
    assert users <= {AUTHENTICATOR}, users

    async def main():
        conn = await asyncpg.connect(**router.connect_kwargs(user=user, password=tok))
        try:
            stmt = await conn.prepare("SELECT current_user, $1::int")
            for i in range(5):
                assert tuple(await stmt.fetchrow(i)) == ("web_admin", i)
                async with conn.transaction():
                    assert await conn.fetchval("SELECT current_user") == "web_admin"
        finally:
            await conn.close()
    run_async(main())


def test_role_isolation_pool_size_1(routers, jwt_db, keys, primary):
    """Two clients with different roles alternate 200 transactions each over
    one server connection: every transaction sees its own role."""
    router = start_jwt_router(routers, keys["rsa"], auth_pool_size=1)
    ua, ub = uname("iso_a"), uname("iso_b")
    a = connect(router.dsn(user=ua, password=token(keys["rsa"], ua, "web_user")))
    b = connect(router.dsn(user=ub, password=token(keys["rsa"], ub, WEIRD_ROLE)))
    wrong = []
    pids = set()
    try:
        for i in range(200):
            for conn, role in ((a, "web_user"), (b, WEIRD_ROLE)):
                if i % 4 == 0:
                    conn.execute("BEGIN")
                    got = conn.execute("SELECT current_user, pg_backend_pid()").fetchone()
                    conn.execute("COMMIT")
                elif i % 4 == 1:
                    got = conn.execute("SELECT current_user, pg_backend_pid()", prepare=False,
                                       binary=True).fetchone()
                elif i % 4 == 2:
                    got = conn.execute("SELECT current_user, pg_backend_pid() WHERE %s", (True,)).fetchone()
                else:
                    got = conn.execute("SELECT current_user, pg_backend_pid()").fetchone()
                pids.add(got[1])
                if got[0] != role:
                    wrong.append((i, role, got[0]))
    finally:
        a.close()
        b.close()
    assert wrong == [], wrong[:10]
    assert len(pids) == 1, pids


def test_role_isolation_concurrent(routers, jwt_db, keys):
    """8 threads, 4 roles, one pool of 2: every transaction sees its own role."""
    router = start_jwt_router(routers, keys["rsa"], auth_pool_size=2,
                              general={"checkout_timeout_ms": 20000})
    roles = ["web_user", "web_admin", "web_reader", WEIRD_ROLE]
    wrong = []

    def worker(i):
        role = roles[i % len(roles)]
        u = uname("conc")
        try:
            with connect(router.dsn(user=u, password=token(keys["rsa"], u, role))) as c:
                for n in range(50):
                    if n % 2:
                        with c.transaction():
                            got = c.execute("SELECT current_user").fetchone()[0]
                    else:
                        got = c.execute("SELECT current_user, %s::int", (n,)).fetchone()[0]
                    if got != role:
                        wrong.append((i, n, role, got))
        except Exception as exc:  # noqa: BLE001
            wrong.append((i, repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert wrong == [], wrong[:10]


def test_role_restored_after_function_resets_it(routers, jwt_db, keys):
    """A DBA-written function runs RESET ROLE inside a client's transaction:
    neither that client's next transaction nor another client on the same
    server connection runs as the authenticator."""
    router = start_jwt_router(routers, keys["rsa"], auth_pool_size=1)
    ua, ub = uname("rr_a"), uname("rr_b")
    with connect(router.dsn(user=ua, password=token(keys["rsa"], ua, "web_user"))) as a, \
            connect(router.dsn(user=ub, password=token(keys["rsa"], ub, "web_admin"))) as b:
        assert a.execute("SELECT jwt_reset_role()").fetchone() == (AUTHENTICATOR,)
        assert whoami(b) == ("web_admin", AUTHENTICATOR)
        assert whoami(a) == ("web_user", AUTHENTICATOR)
        a.execute("SELECT jwt_reset_role()")
        assert whoami(a) == ("web_user", AUTHENTICATOR)
        # Inside one explicit transaction too; the next transaction is clean.
        a.execute("BEGIN")
        a.execute("SELECT jwt_reset_role()")
        a.execute("COMMIT")
        assert whoami(b) == ("web_admin", AUTHENTICATOR)
        assert whoami(a) == ("web_user", AUTHENTICATOR)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_statements_that_cannot_run_in_a_transaction(routers, jwt_db, keys, protocol):
    """VACUUM and friends refuse to run inside a transaction block or a
    pipeline; the per-transaction SET ROLE must not put them in one."""
    router = start_jwt_router(routers, keys["rsa"])
    u = uname()
    with connect(router.dsn(user=u, password=token(keys["rsa"], u, "web_user"))) as c:
        cur = c.cursor(binary=(protocol == "extended"))
        for sql in (f"VACUUM {TABLE}", f"ANALYZE {TABLE}"):
            cur.execute(sql)   # a WARNING (not the owner), not an error
        assert whoami(c) == ("web_user", AUTHENTICATOR)


def test_password_users_unaffected(routers, jwt_db, keys):
    """A password user of the same router, sharing nothing with JWT sessions."""
    router = start_jwt_router(routers, keys["rsa"], auth_pool_size=1)
    u = uname()
    with connect(router.dsn(user=u, password=token(keys["rsa"], u, "web_user"))) as j, \
            connect(router.dsn()) as p:
        for _ in range(3):
            assert whoami(j) == ("web_user", AUTHENTICATOR)
            assert whoami(p) == ("app", "app")


# ------------------------------------------------------ users and databases --
def test_users_toml_jwt_and_password_or_jwt(routers, jwt_db, keys):
    users = [
        {"name": "jwt_listed", "database": "app", "auth": "jwt"},
        {"name": "pw_or_jwt", "database": "app", "auth": "password_or_jwt",
         "password": "pj-secret", "server_user": "app", "server_password": "app-secret"},
    ]
    router = start_jwt_router(routers, keys["rsa"], users=users, jwt={"auto_provision": False})
    key = keys["rsa"]
    with connect(router.dsn(user="jwt_listed", password=token(key, "jwt_listed", "web_user"))) as c:
        assert whoami(c) == ("web_user", AUTHENTICATOR)
    with connect(router.dsn(user="pw_or_jwt", password="pj-secret")) as c:
        assert whoami(c) == ("app", "app")
    with connect(router.dsn(user="pw_or_jwt", password=token(key, "pw_or_jwt", "web_admin"))) as c:
        assert whoami(c) == ("web_admin", AUTHENTICATOR)
    err = login_error(router, "pw_or_jwt", "wrong-password")
    assert err.sqlstate == "28P01", err
    # auto_provision = false: unknown users are refused even with a valid token.
    stranger = uname()
    err = login_error(router, stranger, token(key, stranger, "web_user"))
    assert err.sqlstate in ("28000", "28P01"), err
    # The connect_as entry (login = false) cannot log in itself.
    err = login_error(router, AUTHENTICATOR, "auth-secret")
    assert err.sqlstate == "28000", err


def test_auto_provision_shares_connect_as_pool(routers, jwt_db, keys, primary):
    router = start_jwt_router(routers, keys["rsa"], auth_pool_size=2)
    names = [uname("auto") for _ in range(8)]
    conns = [connect(router.dsn(user=n, password=token(keys["rsa"], n, "web_user"))) for n in names]
    try:
        for c in conns:
            assert whoami(c) == ("web_user", AUTHENTICATOR)
        backends = primary.pool_backends(db="app")
        mine = [b for b in backends if b["user"] in names]
        auth = [b for b in backends if b["user"] == AUTHENTICATOR]
        assert mine == [] and 1 <= len(auth) <= 2, backends
    finally:
        for c in conns:
            c.close()


def test_jwt_databases_limit(routers, jwt_db, keys, cluster):
    dbs = routers.databases() + [{"name": "app2", "host": "127.0.0.1", "port": cluster.primary.port,
                                  "database_name": "app", "role": "primary"}]
    router = start_jwt_router(routers, keys["rsa"], databases=dbs, jwt={"databases": ["app"]},
                              users=[authenticator_user(database="app2")])
    u = uname()
    tok = token(keys["rsa"], u, "web_user")
    with connect(router.dsn(user=u, password=tok)) as c:
        assert whoami(c) == ("web_user", AUTHENTICATOR)
    err = login_error(router, u, tok, db="app2")
    assert err.sqlstate in ("28000", "28P01"), err


# ----------------------------------------------------------------- expiry --
def test_disconnect_on_expiry(routers, jwt_db, keys):
    router = start_jwt_router(routers, keys["rsa"])
    u = uname()
    exp = int(time.time()) + 2
    tok = keys["rsa"].sign(claims(u, "web_user", exp=exp))
    conn = wire.connect(router.port, u, "app", tok)
    holder = wire.connect(router.port, u, "app", tok)
    try:
        assert conn.simple_query("SELECT current_user")[0] == [["web_user"]]
        # A transaction opened before the expiry may finish.
        holder.simple_query("BEGIN")
        time.sleep(max(0.0, exp - time.time()) + 1.2)
        assert holder.simple_query("SELECT current_user")[0] == [["web_user"]]
        holder.simple_query("COMMIT")
        # The next transaction: FATAL, token expired, connection closed.
        conn.send(wire.query_message("SELECT 1"))
        msgs = conn.read_until_eof(timeout=10)
        errors = wire.errors_in(msgs)
        assert errors, [m.kind for m in msgs]
        assert errors[0].get("S") == "FATAL", errors
        assert errors[0].get("C") == "28P01", errors
        assert "expired" in errors[0].get("M", ""), errors
        assert not any(m.kind == b"D" for m in msgs)
        holder.send(wire.query_message("SELECT 1"))
        errors = wire.errors_in(holder.read_until_eof(timeout=10))
        assert errors and "expired" in errors[0].get("M", ""), errors
    finally:
        conn.close()
        holder.close()


def test_token_expiring_during_copy_from_stdin_ends_the_session_after_it(routers, jwt_db, keys, primary):
    """A token that expires while its COPY FROM STDIN streams: the COPY is
    one statement, not a transaction boundary, so it completes (every row
    stored, as the token's role) and the session is closed at its next
    statement with 28P01 "expired"."""
    import psycopg
    router = start_jwt_router(routers, keys["rsa"])
    u = uname()
    note = f"cpx_{uuid.uuid4().hex[:6]}"
    exp = int(time.time()) + 2
    with connect(router.dsn(user=u, password=token(keys["rsa"], u, exp=exp))) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {TABLE} (note) FROM STDIN") as copy:
                copy.write_row((f"{note}_0",))
                time.sleep(max(0.0, exp - time.time()) + 1.2)
                for i in range(1, 50):
                    copy.write_row((f"{note}_{i}",))
            assert cur.rowcount == 50
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("SELECT 1")
        assert err.value.sqlstate == "28P01" and "expired" in str(err.value), err.value
    assert primary.sql(f"SELECT count(*), min(who), max(who) FROM {TABLE} WHERE note LIKE %s",
                       (note + "%",))[0] == (50, "web_user", "web_user")


def test_no_disconnect_on_expiry_when_off(routers, jwt_db, keys):
    router = start_jwt_router(routers, keys["rsa"], jwt={"disconnect_on_expiry": False})
    u = uname()
    exp = int(time.time()) + 2
    with connect(router.dsn(user=u, password=keys["rsa"].sign(claims(u, "web_user", exp=exp)))) as c:
        time.sleep(max(0.0, exp - time.time()) + 1.2)
        assert whoami(c) == ("web_user", AUTHENTICATOR)


# -------------------------------------------------------------- preflight --
def test_preflight_bad_allowed_roles_stop_startup(routers, jwt_db, keys):
    missing = "no_such_role_" + uuid.uuid4().hex[:6]
    with pytest.raises(RuntimeError) as err:
        start_jwt_router(routers, keys["rsa"],
                         jwt={"allowed_roles": ["web_user", missing, UNGRANTED_ROLE]})
    r = routers.routers[-1]
    r.stop_requested = True  # it exited on purpose
    assert r.proc.returncode not in (None, 0)
    log = r.log()
    assert missing in log, log
    # Problems are reported together: the role not granted to connect_as too.
    assert UNGRANTED_ROLE in log, log
    # At file, line and key, as every other configuration problem.
    line = line_of(r.config_path.read_text(), "allowed_roles")
    assert f"router.toml:{line}: jwt.allowed_roles: " in log, log


def test_preflight_connect_as_refused_by_the_server_stops_startup(routers, jwt_db, keys):
    """SPEC: connect_as "must be able to log in to every primary". A server
    that answers and refuses the login (here a wrong server_password) stops
    the start; only a server that does not answer is a warning."""
    from harness.jwt_setup import jwt_section, password_user
    pem = routers.base_dir / "preflight-refused.pem"
    keys["rsa"].write_public_pem(pem)
    with pytest.raises(RuntimeError):
        routers.start(users=[password_user(), authenticator_user(server_password="not-the-password")],
                      jwt=jwt_section(public_key_file=str(pem)))
    r = routers.routers[-1]
    r.stop_requested = True  # it exited on purpose
    assert r.proc.returncode not in (None, 0)
    log = r.log()
    assert "cannot log in" in log and AUTHENTICATOR in log, log
    assert "router.toml:" in log and ": jwt.connect_as: " in log, log


def test_preflight_warns_about_inherit(routers, jwt_db, keys, cluster):
    with cluster.primary.connect("postgres") as conn:
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'auth_inherit') "
                     "THEN CREATE ROLE auth_inherit LOGIN INHERIT PASSWORD 'inh-secret'; END IF; END $$")
        conn.execute("GRANT web_user TO auth_inherit")
    users = [{"name": "auth_inherit", "database": "app", "server_password": "inh-secret",
              "login": False}]
    router = start_jwt_router(routers, keys["rsa"], users=users,
                              jwt={"connect_as": "auth_inherit", "allowed_roles": ["web_user"]})
    u = uname()
    with connect(router.dsn(user=u, password=token(keys["rsa"], u, "web_user"))) as c:
        assert whoami(c) == ("web_user", "auth_inherit")
    log = router.log()
    assert any("WARN" in line and "auth_inherit" in line and "INHERIT" in line.upper()
               for line in log.splitlines()), log


# ------------------------------------------------------------------- JWKS --
@pytest.fixture
def jwks():
    srv = JwksServer().start()
    yield srv
    srv.stop()


def jwks_router(routers, srv, **jwt):
    section = {"jwks_url": srv.url, "jwks_min_refresh_interval_s": 1, "jwks_cache_ttl_s": 300}
    section.update(jwt)
    return start_jwt_router(routers, None, jwt=section)


def test_jwks_login_and_key_rotation(routers, jwt_db, jwks):
    k1, k2 = SigningKey("rsa"), SigningKey("ec")
    jwks.set_keys([k1.jwk()])
    router = jwks_router(routers, jwks)
    wait_until(lambda: jwks.count >= 1, 5, what="start-up JWKS fetch")
    u = uname()
    with connect(router.dsn(user=u, password=token(k1, u, "web_user"))) as c:
        assert whoami(c) == ("web_user", AUTHENTICATOR)
    fetched = jwks.count
    assert fetched == 1
    # An unknown kid: refused while the endpoint does not know it either.
    err = login_error(router, u, token(k2, u, "web_user"))
    assert err.sqlstate == "28P01" and "unknown key" in err.message, err
    # Rotation: the endpoint now has k2 (and later drops k1).
    time.sleep(1.1)
    jwks.set_keys([k1.jwk(), k2.jwk()])
    with connect(router.dsn(user=u, password=token(k2, u, "web_admin"))) as c:
        assert whoami(c) == ("web_admin", AUTHENTICATOR)
    assert jwks.count >= fetched + 1
    # A known kid does not cause fetches.
    before = jwks.count
    for _ in range(5):
        with connect(router.dsn(user=u, password=token(k1, u, "web_user"))) as c:
            assert whoami(c)[0] == "web_user"
    assert jwks.count == before


def test_jwks_burst_of_unknown_kids_fetches_once(routers, jwt_db, jwks):
    interval = 3
    k1, k2, k3 = SigningKey("rsa"), SigningKey("ec"), SigningKey("rsa")
    jwks.set_keys([k1.jwk()])
    router = jwks_router(routers, jwks, jwks_min_refresh_interval_s=interval)
    wait_until(lambda: jwks.count >= 1, 5, what="start-up JWKS fetch")
    start_count = jwks.count

    async def burst(tokens: list[tuple[str, str]]) -> list:
        async def one(user, tok):
            try:
                conn = await asyncpg.connect(**router.connect_kwargs(user=user, password=tok))
            except Exception as exc:  # noqa: BLE001
                return exc
            try:
                return await conn.fetchval("SELECT current_user")
            finally:
                await conn.close()
        return await asyncio.gather(*(one(u, t) for u, t in tokens))

    # 50 logins at once with a kid the router has not seen: one fetch, all in.
    jwks.set_keys([k1.jwk(), k2.jwk()])
    users = [uname("burst") for _ in range(50)]
    results = run_async(burst([(u, token(k2, u, "web_user")) for u in users]), timeout=60)
    assert all(r == "web_user" for r in results), [r for r in results if r != "web_user"][:5]
    assert jwks.count - start_count == 1, jwks.count - start_count
    # At once another 50 with another unknown kid, and 50 random kids: within
    # the interval nothing is fetched and they are refused.
    jwks.set_keys([k1.jwk(), k2.jwk(), k3.jwk()])
    count = jwks.count
    results = run_async(burst([(u, token(k3, u, "web_user")) for u in users]
                              + [(u, k1.sign(claims(u, "web_user"), kid=uuid.uuid4().hex))
                                 for u in users]), timeout=60)
    refused = [r for r in results if isinstance(r, Exception)]
    fetched = jwks.count - count
    # The first fetch's interval may run out during this burst: at most one more.
    assert fetched <= 1, fetched
    if fetched == 0:
        assert len(refused) == 100, [r for r in results if not isinstance(r, Exception)][:3]
        assert all(getattr(r, "sqlstate", None) == "28P01" and "unknown key" in str(r)
                   for r in refused), refused[:3]
    # After the interval the new key is picked up.
    time.sleep(interval + 0.2)
    with connect(router.dsn(user=users[0], password=token(k3, users[0], "web_user"))) as c:
        assert whoami(c)[0] == "web_user"
    assert jwks.count - count <= 2


def test_jwks_endpoint_failure_keeps_last_good_keys(routers, jwt_db, jwks):
    k1, k2 = SigningKey("rsa"), SigningKey("rsa")
    jwks.set_keys([k1.jwk()])
    router = jwks_router(routers, jwks)
    wait_until(lambda: jwks.count >= 1, 5, what="start-up JWKS fetch")
    jwks.fail = True
    time.sleep(1.1)
    u = uname()
    err = login_error(router, u, token(k2, u, "web_user"))
    assert err.sqlstate == "28P01" and "unknown key" in err.message, err
    assert jwks.count >= 2  # it did try
    with connect(router.dsn(user=u, password=token(k1, u, "web_user"))) as c:
        assert whoami(c) == ("web_user", AUTHENTICATOR)
    assert router.alive()


def test_jwks_login_after_ttl_uses_refreshed_keys(routers, jwt_db, jwks):
    """Once jwks_cache_ttl_s is over, the next login waits for the refresh:
    a key the issuer removed is refused at once (not one login later), a
    key it added is accepted, and all that costs one fetch."""
    k1, k2, k3 = SigningKey("rsa"), SigningKey("rsa"), SigningKey("ec")
    jwks.set_keys([k1.jwk(), k2.jwk()])
    router = jwks_router(routers, jwks, jwks_cache_ttl_s=2, jwks_min_refresh_interval_s=1)
    wait_until(lambda: jwks.count >= 1, 5, what="start-up JWKS fetch")
    u = uname()
    with connect(router.dsn(user=u, password=token(k1, u, "web_user"))) as c:
        assert whoami(c)[0] == "web_user"
    jwks.set_keys([k2.jwk(), k3.jwk()])
    time.sleep(2.3)
    err = login_error(router, u, token(k1, u, "web_user"))
    assert err.sqlstate == "28P01" and "unknown key" in err.message, err
    assert jwks.count == 2
    with connect(router.dsn(user=u, password=token(k2, u, "web_user"))) as c:
        assert whoami(c)[0] == "web_user"
    with connect(router.dsn(user=u, password=token(k3, u, "web_user"))) as c:
        assert whoami(c)[0] == "web_user"
    assert jwks.count == 2


def test_jwks_down_after_ttl_keeps_last_good_keys(routers, jwt_db, jwks):
    k1 = SigningKey("ed25519")
    jwks.set_keys([k1.jwk()])
    router = jwks_router(routers, jwks, jwks_cache_ttl_s=1, jwks_min_refresh_interval_s=0)
    wait_until(lambda: jwks.count >= 1, 5, what="start-up JWKS fetch")
    jwks.fail = True
    time.sleep(1.3)
    u = uname()
    with connect(router.dsn(user=u, password=token(k1, u, "web_user"))) as c:
        assert whoami(c)[0] == "web_user"
    assert jwks.count >= 2  # it did try before falling back


# -------------------------------------------------------------- transport --
# The raw wire client, run inside the test host's namespace (wire.RawConn
# itself would connect from the pytest process, i.e. from this machine): logs
# in with the token as the password and prints, as JSON, either the error
# fields or the row of `SELECT current_user, session_user`.
REMOTE_LOGIN = r"""
import json, sys
from harness import wire
host, port, user, password = sys.argv[1:]
conn = wire.RawConn.open(int(port), host=host)
try:
    conn.startup(user, "app", password)
    print(json.dumps({"row": conn.simple_query("SELECT current_user, session_user")[0][0]}))
except wire.ServerError as exc:
    print(json.dumps({"error": exc.fields}))
finally:
    conn.close()
"""


def remote_login(netns, port: int, user: str, password: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent))
    out = netns.run([sys.executable, "-c", REMOTE_LOGIN, netns.host_ip, str(port), user, password],
                    env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("allow", [False, True])
def test_jwt_over_plain_tcp_from_non_loopback(routers, jwt_db, keys, netns, allow):
    """Without TLS, a JWT (a bearer credential) is only accepted from loopback
    unless allow_insecure_transport = true. The non-loopback client is a test
    host in a network namespace (harness/netns.py), connecting to 198.18.0.1."""
    from harness.util import free_port
    port = free_port()
    router = start_jwt_router(routers, keys["rsa"], general={"listen": f"0.0.0.0:{port}"},
                              jwt={"allow_insecure_transport": allow})
    u = uname()
    tok = token(keys["rsa"], u, "web_user")
    got = remote_login(netns, port, u, tok)
    if allow:
        assert got == {"row": ["web_user", AUTHENTICATOR]}, got
    else:
        fields = got.get("error")
        assert fields, got
        assert fields.get("C", "").startswith("28"), fields
        assert "TLS" in fields.get("M", ""), fields
    # Loopback still works.
    with connect(router.dsn(user=u, password=tok)) as c:
        assert whoami(c) == ("web_user", AUTHENTICATOR)


def test_a_key_file_rotated_in_place_is_read_again_at_reload(routers, jwt_db, keys):
    """The PEM file replaced under the same name (key rotation) and the
    router reloaded: tokens signed with the new key log in, those of the old
    key are refused — without a restart, and without any other edit."""
    old_key, new_key = keys["rsa"], SigningKey("rsa")
    r = start_jwt_router(routers, old_key)
    path = Path(r.config["jwt"]["public_key_file"])
    u = uname()
    with connect(r.dsn(user=u, password=token(old_key, u))) as c:
        assert whoami(c) == ("web_user", AUTHENTICATOR)
    new_key.write_public_pem(path)
    before = reload_marks(r)
    r.reload()
    assert wait_reload(r, before) == "ok"
    with connect(r.dsn(user=u, password=token(new_key, u))) as c:
        assert whoami(c) == ("web_user", AUTHENTICATOR)
    err = login_error(r, u, token(old_key, u))
    assert err.sqlstate == "28P01" and "signature" in err.message, err
