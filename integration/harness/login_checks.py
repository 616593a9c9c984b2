"""A PostgreSQL 15 server set up for the `[auth_query]` and `[jit]` tests.

`LoginChecksCluster` is a PgCluster (primary only) whose pg_hba.conf adds,
before the harness's own lines:

| who                   | where          | method                       |
|-----------------------|----------------|------------------------------|
| members of jit_users  | Unix socket    | pam (the service of pam.py)  |
| members of jit_users  | 127.0.0.1      | pam                          |
| members of md5_users  | 127.0.0.1      | md5                          |
| everyone else         | (harness)      | socket trust, TCP scram-sha-256 |

and the worked example of the README: a lookup role `pgrouter_auth` (no
superuser) allowed to run `pgrouter.lookup(name)`, a `SECURITY DEFINER`
function owned by the superuser that returns `rolname, rolpassword,
rolcanlogin` from pg_authid.

`make_role()` creates a role in PostgreSQL only (never in users.toml) with a
unique name, its password stored as SCRAM or md5.
"""
from __future__ import annotations

import uuid

from .pg import APP_DB, PgCluster

LOOKUP_USER = "pgrouter_auth"
LOOKUP_PASSWORD = "lookup-secret"
LOOKUP_QUERY = "SELECT rolname, rolpassword, rolcanlogin FROM pgrouter.lookup($1)"

LOOKUP_FUNCTION = """
CREATE SCHEMA IF NOT EXISTS pgrouter;
CREATE OR REPLACE FUNCTION pgrouter.lookup(p_user text)
  RETURNS TABLE (rolname name, rolpassword text, rolcanlogin boolean)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $$
  SELECT rolname, rolpassword, rolcanlogin FROM pg_catalog.pg_authid
  WHERE rolname = p_user
    AND (rolvaliduntil IS NULL OR rolvaliduntil > now())
$$;
REVOKE ALL ON FUNCTION pgrouter.lookup(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgrouter TO pgrouter_auth;
GRANT EXECUTE ON FUNCTION pgrouter.lookup(text) TO pgrouter_auth;
"""


class LoginChecksCluster(PgCluster):
    def __init__(self, pam_service: str | None = None, **kw):
        kw.setdefault("with_replica", False)
        kw.setdefault("prefix", "pgrouter-login-checks-")
        super().__init__(**kw)
        self.pam_service = pam_service

    def _hba(self) -> str:
        lines = ["# pgrouter login-check tests"]
        if self.pam_service:
            lines += [
                f"local   all  +jit_users                pam pamservice={self.pam_service}",
                f"host    all  +jit_users  127.0.0.1/32  pam pamservice={self.pam_service}",
            ]
        lines.append("host    all  +md5_users  127.0.0.1/32  md5")
        return "\n".join(lines) + "\n" + super()._hba()

    def _create_roles(self) -> None:
        super()._create_roles()
        with self.primary.connect("postgres") as conn:
            conn.execute("CREATE ROLE jit_users NOLOGIN")
            conn.execute("CREATE ROLE md5_users NOLOGIN")
            conn.execute(f"CREATE ROLE {LOOKUP_USER} LOGIN PASSWORD '{LOOKUP_PASSWORD}'")
        with self.primary.connect(APP_DB) as conn:
            conn.execute(LOOKUP_FUNCTION)

    def make_role(self, kind: str = "scram", password: str | None = None,
                  prefix: str = "aq", groups: tuple[str, ...] = ()) -> tuple[str, str]:
        """A new login role known only to PostgreSQL: (name, password).
        kind "md5" stores an md5 secret and joins md5_users (pg_hba md5)."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        password = password or f"pw-{uuid.uuid4().hex[:12]}"
        with self.primary.connect("postgres") as conn:
            conn.execute(f"SET password_encryption = '{'md5' if kind == 'md5' else 'scram-sha-256'}'")
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            if kind == "md5":
                conn.execute(f"GRANT md5_users TO {name}")
            for g in groups:
                conn.execute(f"GRANT {g} TO {name}")
            conn.execute(f"GRANT CONNECT ON DATABASE {APP_DB} TO {name}")
        return name, password

    def set_password(self, name: str, password: str, kind: str = "scram") -> None:
        with self.primary.connect("postgres") as conn:
            conn.execute(f"SET password_encryption = '{'md5' if kind == 'md5' else 'scram-sha-256'}'")
            conn.execute(f"ALTER ROLE {name} PASSWORD '{password}'")


def lookup_user_entry(**overrides) -> dict:
    """The users.toml entry whose server credentials run the lookup; it
    cannot log in through the router itself."""
    entry = {"name": LOOKUP_USER, "database": APP_DB, "server_password": LOOKUP_PASSWORD,
             "login": False}
    entry.update(overrides)
    return entry
