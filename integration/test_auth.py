"""Authentication: client -> router (users.toml `auth`, stored password forms)
and router -> server (the server's pg_hba method for each role)."""
from __future__ import annotations

import struct
import subprocess
import uuid

import asyncpg
import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, run_async
from harness.router import app_user, router_binary
from harness.util import SASLPREP_PASSWORD, SASLPREP_PREPARED


def login_error(router, user, password, db="app") -> Exception:
    """Try to log in with asyncpg; return the error (fail if login works)."""
    async def main():
        try:
            conn = await aconnect(router, user=user, password=password, db=db,
                                  statement_cache_size=0)
        except Exception as exc:  # noqa: BLE001
            return exc
        await conn.close()
        return None
    exc = run_async(main())
    assert exc is not None, f"login as {user}/{db} with password {password!r} was accepted"
    return exc


def whoami(router, user, password, db="app") -> tuple[str, str]:
    with connect(router.dsn(user=user, password=password, db=db)) as conn:
        return conn.execute("SELECT current_user, current_database()").fetchone()


def whoami_asyncpg(router, user, password, db="app") -> str:
    async def main():
        conn = await aconnect(router, user=user, password=password, db=db, statement_cache_size=0)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()
    return run_async(main())


def first_auth_request(router, user, db="app") -> int:
    """The authentication request code the router sends first (3 cleartext,
    5 md5, 10 SASL), read off the raw protocol."""
    conn = wire.RawConn.open(router.port)
    try:
        conn.send(wire.startup_message({"user": user, "database": db}))
        m = conn.read_msg()
        if m.kind == b"E":
            raise wire.ServerError(wire.parse_error_fields(m.body))
        assert m.kind == b"R", m
        return struct.unpack("!i", m.body[:4])[0]
    finally:
        conn.close()


# ------------------------------------------------------------------ errors --
def test_wrong_password_28P01(router):
    exc = login_error(router, "app", "not-the-password")
    assert isinstance(exc, asyncpg.InvalidPasswordError), repr(exc)
    assert exc.sqlstate == "28P01"
    with pytest.raises(wire.ServerError) as err:
        wire.connect(router.port, "app", "app", "nope")
    assert err.value.sqlstate == "28P01"
    with pytest.raises(psycopg.OperationalError):
        connect(router.dsn(password="also wrong"))


def test_unknown_user_28000(router):
    exc = login_error(router, "nobody_here", "whatever")
    assert getattr(exc, "sqlstate", None) == "28000", repr(exc)


def test_unknown_database_3D000(router):
    exc = login_error(router, "app", "app-secret", db="no_such_db")
    assert getattr(exc, "sqlstate", None) == "3D000", repr(exc)


def test_empty_password_refused(router):
    with pytest.raises(wire.ServerError) as err:
        wire.connect(router.port, "app", "app", "")
    assert err.value.sqlstate == "28P01"


# ------------------------------------------------ client -> router methods --
@pytest.mark.parametrize("auth,code", [("scram", 10), ("md5", 5), ("plain", 3)])
def test_client_auth_methods(routers, auth, code):
    router = routers.start(users=[app_user(auth=auth)])
    assert first_auth_request(router, "app") == code
    assert whoami(router, "app", "app-secret") == ("app", "app")
    assert whoami_asyncpg(router, "app", "app-secret") == "app"
    raw = wire.connect(router.port, "app", "app", "app-secret")
    assert raw.simple_query("SELECT current_user")[0] == [["app"]]
    raw.close()
    exc = login_error(router, "app", "wrong-" + auth)
    assert exc.sqlstate == "28P01", repr(exc)


def test_stored_scram_secret_generated(routers):
    secret = wire.scram_secret("client-secret-1")
    router = routers.start(users=[app_user(password=secret, server_password="app-secret")])
    assert whoami(router, "app", "client-secret-1") == ("app", "app")
    assert whoami_asyncpg(router, "app", "client-secret-1") == "app"
    assert login_error(router, "app", "app-secret").sqlstate == "28P01"
    assert login_error(router, "app", secret).sqlstate == "28P01"


def test_stored_scram_secret_from_pg_authid(routers, primary):
    secret = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert secret.startswith("SCRAM-SHA-256$")
    router = routers.start(users=[app_user(password=secret, server_password="app-secret")])
    assert whoami(router, "app", "app-secret") == ("app", "app")
    assert login_error(router, "app", "app-secret-not").sqlstate == "28P01"


def test_a_scram_secret_cut_short_is_refused_with_file_line_and_key(routers, primary):
    """A secret copied from pg_authid with a key cut short (or any key
    that is not 32 bytes): PostgreSQL's parse_scram_secret refuses it. The
    router used to start with it and fail every login with a bare 28P01
    naming no cause; it is a config problem at users.toml's line and key."""
    secret = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    head, server_key = secret.rsplit(":", 1)
    cut = f"{head}:{server_key[:40]}"  # base64 still, of 30 bytes
    router = routers.start(users=[app_user(password=cut, server_password="app-secret")],
                           wait=False)
    with pytest.raises(RuntimeError) as err:
        router.start()
    router.stop_requested = True  # it exited on purpose
    log = str(err.value)
    assert "users.toml:4: users.password: malformed SCRAM secret" in log, log
    proc = subprocess.run([str(router_binary()), "check", "--config", str(router.config_path),
                           "--users", str(router.users_path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "users.toml:4: users.password: malformed SCRAM secret" in proc.stderr, proc.stderr


def test_a_secret_without_server_password_logs_in_to_servers_with_the_clients_proof(routers, primary):
    """users.toml `password` = the SCRAM secret from pg_authid and no
    `server_password` (PgBouncer's auth_file of secrets): the router logs
    in to PostgreSQL with the keys recovered from the client's SCRAM proof,
    for every new server connection. An md5 hash
    answers a server's md5 challenge the same way."""
    secret = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    router = routers.start(users=[app_user(password=secret)], general={"default_pool_size": 3})
    conns = [connect(router.dsn(password="app-secret"), autocommit=False) for _ in range(3)]
    try:
        pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns}
        assert len(pids) == 3  # three server connections, each logged in with the keys
    finally:
        for c in conns:
            c.close()
    assert whoami_asyncpg(router, "app", "app-secret") == "app"
    assert login_error(router, "app", "wrong").sqlstate == "28P01"
    md5 = wire.md5_secret("md5-secret", "md5user")
    router = routers.start(users=[{"name": "md5user", "database": "app", "password": md5,
                                   "auth": "md5"}])
    assert whoami(router, "md5user", "md5-secret") == ("md5user", "app")


def test_stored_md5_secret(routers):
    secret = wire.md5_secret("client-md5-pw", "app")
    router = routers.start(users=[app_user(password=secret, auth="md5",
                                           server_password="app-secret")])
    assert first_auth_request(router, "app") == 5
    assert whoami(router, "app", "client-md5-pw") == ("app", "app")
    assert whoami_asyncpg(router, "app", "client-md5-pw") == "app"
    assert login_error(router, "app", "app-secret").sqlstate == "28P01"


def test_stored_md5_secret_without_auth_key_uses_md5(routers):
    """An entry with an md5 secret and no `auth` logs in with MD5: SCRAM
    could not check the secret (PgBouncer picks the method by the secret)."""
    secret = wire.md5_secret("client-md5-pw", "app")
    user = app_user(password=secret, server_password="app-secret")
    del user["auth"]
    router = routers.start(users=[user])
    assert first_auth_request(router, "app") == 5
    assert whoami(router, "app", "client-md5-pw") == ("app", "app")
    assert whoami_asyncpg(router, "app", "client-md5-pw") == "app"
    assert login_error(router, "app", "wrong-pw").sqlstate == "28P01"


def test_plain_password_with_separate_server_password(routers):
    router = routers.start(users=[app_user(password="client-only", server_password="app-secret")])
    assert whoami(router, "app", "client-only") == ("app", "app")
    assert login_error(router, "app", "app-secret").sqlstate == "28P01"


# ------------------------------------------------ router -> server methods --
@pytest.mark.parametrize("role,server_password", [
    ("md5user", "md5-secret"),       # pg_hba: md5, stored md5
    ("plainuser", "plain-secret"),   # pg_hba: password (cleartext)
    ("trustuser", None),             # pg_hba: trust
])
@pytest.mark.parametrize("client_auth", ["scram", "md5"])
def test_server_auth_methods(routers, role, server_password, client_auth):
    client_password = f"{role}-client-pw"
    entry = {"name": role, "database": "app", "password": client_password, "auth": client_auth}
    if server_password is not None:
        entry["server_password"] = server_password
    router = routers.start(users=[entry])
    assert whoami(router, role, client_password) == (role, "app")
    assert whoami_asyncpg(router, role, client_password) == role
    assert login_error(router, role, "bad").sqlstate == "28P01"


def test_server_password_defaults_to_plain_password(routers):
    """No server_password: the plain `password` is used for the server too."""
    router = routers.start(users=[{"name": "md5user", "database": "app",
                                   "password": "md5-secret", "auth": "scram"}])
    assert whoami(router, "md5user", "md5-secret") == ("md5user", "app")


def test_server_user_mapping(routers):
    router = routers.start(users=[
        app_user(),
        {"name": "alias", "database": "app", "password": "alias-pw", "auth": "scram",
         "server_user": "app", "server_password": "app-secret"},
    ])
    assert whoami(router, "alias", "alias-pw") == ("app", "app")
    assert whoami(router, "app", "app-secret") == ("app", "app")
    assert login_error(router, "alias", "app-secret").sqlstate == "28P01"


def test_wrong_server_password_is_an_error_not_a_hang(routers):
    router = routers.start(users=[app_user(password="client-pw", server_password="wrong-for-server")],
                           general={"connect_timeout_ms": 2000, "checkout_timeout_ms": 3000})
    with pytest.raises(psycopg.Error):
        with connect(router.dsn(password="client-pw")) as conn:
            conn.execute("SELECT 1")
    assert router.alive()


def test_several_users_same_router(routers):
    router = routers.start(users=[
        app_user(),
        {"name": "md5user", "database": "app", "password": "md5-secret", "auth": "md5"},
        {"name": "plainuser", "database": "app", "password": "plain-secret", "auth": "plain"},
    ])
    for _ in range(3):
        assert whoami(router, "app", "app-secret")[0] == "app"
        assert whoami(router, "md5user", "md5-secret")[0] == "md5user"
        assert whoami(router, "plainuser", "plain-secret")[0] == "plainuser"
    # A user's password does not open another user's entry.
    assert login_error(router, "md5user", "app-secret").sqlstate == "28P01"


# ---------------------------------------------------------------- SASLprep --
@pytest.fixture
def saslprep_role(primary):
    """A role whose password SASLprep rewrites (PostgreSQL stores the SCRAM
    secret of its prepared form); dropped afterwards."""
    name = f"sp_{uuid.uuid4().hex[:8]}"
    primary.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{SASLPREP_PASSWORD}'")
    yield name
    primary.sql(f"DROP ROLE {name}")


def test_a_plain_password_saslprep_rewrites_logs_in_to_the_router_and_the_server(
        routers, primary, saslprep_role):
    """The users.toml plain password, as the router's SCRAM secret for
    clients (libpq and asyncpg prepare what they send) and as what it logs
    in to PostgreSQL with. Both sides prepare it, so its prepared form is
    the same password, as it is for PostgreSQL itself."""
    name = saslprep_role
    assert whoami(primary, name, SASLPREP_PASSWORD) == (name, "app")  # PostgreSQL itself
    router = routers.start(users=[{"name": name, "database": "app", "auth": "scram",
                                   "password": SASLPREP_PASSWORD}])
    assert whoami(router, name, SASLPREP_PASSWORD) == (name, "app")
    assert whoami_asyncpg(router, name, SASLPREP_PASSWORD) == name
    assert whoami(router, name, SASLPREP_PREPARED) == (name, "app")
    assert login_error(router, name, "password\u00a0fi").sqlstate == "28P01"


def test_a_server_password_saslprep_rewrites(routers, saslprep_role):
    """Only the router's own login to PostgreSQL uses the password."""
    name = saslprep_role
    router = routers.start(users=[{"name": name, "database": "app", "auth": "scram",
                                   "password": "client-pw", "server_password": SASLPREP_PASSWORD}])
    assert whoami(router, name, "client-pw") == (name, "app")


def test_a_cleartext_password_checked_against_postgres_secret(routers, primary, saslprep_role):
    """`auth = "plain"` with the SCRAM secret from pg_authid: the router
    hashes the cleartext password it receives with the secret's salt."""
    name = saslprep_role
    secret = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,))
    router = routers.start(users=[{"name": name, "database": "app", "auth": "plain",
                                   "password": secret, "server_password": SASLPREP_PASSWORD}])
    assert first_auth_request(router, name) == 3
    assert whoami(router, name, SASLPREP_PASSWORD) == (name, "app")
    assert whoami_asyncpg(router, name, SASLPREP_PASSWORD) == name
    assert login_error(router, name, "pass\u00adword").sqlstate == "28P01"
