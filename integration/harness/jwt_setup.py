"""Shared set-up for the JWT-login tests: PostgreSQL roles and tables, key
pairs, and a router started with a `[jwt]` section.

Import the fixtures into a test module to use them:

    from harness.jwt_setup import jwt_db, keys  # noqa: F401  (pytest fixtures)

Roles created on the primary (idempotently; the replica gets them by
streaming):

| role           | kind                                   |
|----------------|----------------------------------------|
| authenticator  | LOGIN NOINHERIT, password auth-secret  |
| web_user       | NOLOGIN, granted to authenticator      |
| web_admin      | NOLOGIN, granted to authenticator      |
| web_reader     | NOLOGIN, granted to authenticator      |
| we"ird role    | NOLOGIN, granted to authenticator      |
| jwt_ungranted  | NOLOGIN, *not* granted to authenticator|

Table `jwt_items(id serial, note text, who text default current_user)` and
sequence `jwt_seq` are owned by `app`; the web roles may read and write them.
Function `jwt_reset_role()` (plpgsql, SECURITY INVOKER) runs `RESET ROLE` —
a "DBA-written function" the router cannot see into.
"""
from __future__ import annotations

import uuid

import pytest

from . import wire
from .router import RouterFactory

from .jwt_tokens import AUDIENCE, ISSUER, SigningKey
from .routes import wait_replayed
from .pg import APP_DB, APP_PASSWORD, APP_USER

AUTHENTICATOR = "authenticator"
AUTH_PASSWORD = "auth-secret"
WEIRD_ROLE = 'we"ird role'
WEB_ROLES = ["web_user", "web_admin", "web_reader", WEIRD_ROLE]
UNGRANTED_ROLE = "jwt_ungranted"
TABLE = "jwt_items"
SEQ = "jwt_seq"


def qident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qliteral(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ensure_roles(cluster) -> None:
    """Create the roles, grants, table, sequence and function (idempotent),
    then wait until the replica has them."""
    p = cluster.primary
    with p.connect("postgres") as conn:
        def role(name: str, options: str) -> None:
            conn.execute(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {qliteral(name)}) "
                f"THEN CREATE ROLE {qident(name)} {options}; END IF; END $$")
        role(AUTHENTICATOR, f"LOGIN NOINHERIT PASSWORD {qliteral(AUTH_PASSWORD)}")
        for r in WEB_ROLES:
            role(r, "NOLOGIN")
            conn.execute(f"GRANT {qident(r)} TO {AUTHENTICATOR}")
        role(UNGRANTED_ROLE, "NOLOGIN")
        conn.execute(f"GRANT CONNECT ON DATABASE {APP_DB} TO {AUTHENTICATOR}")
    with p.connect(APP_DB) as conn:
        conn.execute(f"SET ROLE {APP_USER}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} "
                     "(id serial PRIMARY KEY, note text, who text DEFAULT current_user)")
        conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQ}")
        conn.execute("CREATE OR REPLACE FUNCTION jwt_reset_role() RETURNS text "
                     "LANGUAGE plpgsql AS $$ BEGIN RESET ROLE; RETURN current_user; END $$")
        grantees = ", ".join(qident(r) for r in WEB_ROLES)
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE} TO {grantees}")
        conn.execute(f"GRANT USAGE, SELECT, UPDATE ON SEQUENCE {TABLE}_id_seq, {SEQ} TO {grantees}")
        conn.execute("RESET ROLE")
    wait_replayed(cluster)


def authenticator_user(**overrides) -> dict:
    user = {"name": AUTHENTICATOR, "database": APP_DB, "server_password": AUTH_PASSWORD,
            "login": False}
    user.update(overrides)
    return user


def password_user(**overrides) -> dict:
    user = {"name": APP_USER, "database": APP_DB, "password": APP_PASSWORD, "auth": "scram"}
    user.update(overrides)
    return user


def jwt_section(**overrides) -> dict:
    section = {
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "leeway_s": 0,
        "username_claim": "sub",
        "role_claim": "role",
        "connect_as": AUTHENTICATOR,
        "auto_provision": True,
        "auto_provision_read_only": False,
        "disconnect_on_expiry": True,
    }
    for k, v in overrides.items():
        if v is None:
            section.pop(k, None)
        else:
            section[k] = v
    return section


def start_jwt_router(routers, key: SigningKey | None = None, jwt: dict | None = None,
                     users: list[dict] | None = None, general: dict | None = None,
                     with_replica: bool = False, auth_pool_size: int | None = None, **kw):
    """A router with [jwt]: the PEM of `key` (unless `jwt` names a jwks_url),
    users `app` (password) + `authenticator` (+ `users`)."""
    section = dict(jwt or {})
    if key is not None and "jwks_url" not in section:
        pem = routers.base_dir / f"{key.kid}.pem"
        key.write_public_pem(pem)
        section.setdefault("public_key_file", str(pem))
    auth = authenticator_user()
    if auth_pool_size is not None:
        auth["pool_size"] = auth_pool_size
    all_users = [password_user(), auth] + list(users or [])
    return routers.start(general=general, users=all_users, with_replica=with_replica,
                         jwt=jwt_section(**section), **kw)


# ----------------------------------------------------------------- fixtures --
@pytest.fixture(scope="module")
def jwt_db(cluster):
    ensure_roles(cluster)
    return cluster


@pytest.fixture(scope="module")
def keys():
    """One key of each kind: keys["rsa"], keys["ec"], keys["ed25519"]."""
    return {k: SigningKey(k) for k in ("rsa", "ec", "ed25519")}


@pytest.fixture(scope="module")
def module_routers(cluster, request):
    """A RouterFactory for routers shared by a whole module (the `routers`
    fixture is per test). Problems (a router died or panicked) fail the
    module's last test at teardown."""
    safe = "".join(c if c.isalnum() else "_" for c in request.module.__name__)[:40]
    base = cluster.tmpdir / "routers" / f"{safe}-{uuid.uuid4().hex[:6]}"
    base.mkdir(parents=True)
    factory = RouterFactory(cluster, base)
    yield factory
    problems = factory.finish()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


# ------------------------------------------------------------------ login --
def login_error(router, user: str, token: str, db: str = APP_DB) -> wire.ServerError:
    """Log in over the raw protocol with `token` as the password; return the
    ErrorResponse (fails the test if the login is accepted)."""
    try:
        conn = wire.connect(router.port, user, db, token)
    except wire.ServerError as exc:
        return exc
    conn.close()
    raise AssertionError(f"login as {user!r} with this token was accepted")


def whoami(conn) -> tuple:
    """(current_user, session_user) of a psycopg connection."""
    return conn.execute("SELECT current_user, session_user").fetchone()
