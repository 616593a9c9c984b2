"""A hot reload that takes away what a running JWT session was allowed
(SPEC §5 "JWT login" and "Operations"): the session is checked again, as
its login would be now, at its next transaction boundary.

- Its token would now be refused (its role taken out of `allowed_roles`, its
  PEM key replaced, `issuer`/`audience` changed, its users.toml entry gone
  with `auto_provision` off, set to `login = false` or to a password
  `auth`): FATAL 28000, the message naming the cause in
  the words login uses ("role not allowed", "signature", "issuer", ...).
- Its token is still accepted but would log in differently (`connect_as`
  changed): FATAL 08006, as for password users whose settings changed.
- A transaction open at the reload finishes first (COMMIT works); a COPY in
  progress completes; sessions whose login is still valid never notice.
"""
from __future__ import annotations

import copy
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from harness.clients import connect, sqlstate
from harness.jwt_setup import (AUTHENTICATOR, TABLE, authenticator_user, jwt_db,  # noqa: F401
                               keys, login_error, password_user, qident, qliteral,
                               start_jwt_router, whoami)
from harness.jwt_tokens import SigningKey, claims
from harness.netns import netns  # noqa: F401  (pytest fixture)
from harness.ops import reload_marks, wait_reload
from harness.pg import APP_DB, APP_PASSWORD, APP_USER

REVOKED = "a configuration reload revoked this JWT session"


def uname(prefix: str = "jr") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:6]}"


def token(key: SigningKey, sub: str, role: str = "web_user", **extra) -> str:
    return key.sign(claims(sub, role, **extra))


def reload(router, config: dict | None = None, users: list[dict] | None = None) -> None:
    """Rewrite the files and SIGHUP; wait for the reload to be applied."""
    router.write_files(config=config, users={"users": users} if users is not None else None)
    before = reload_marks(router)
    router.reload()
    assert wait_reload(router, before) == "ok", router.log()


def with_jwt(router, **changes) -> dict:
    cfg = copy.deepcopy(router.config)
    cfg["jwt"].update(changes)
    return cfg


def ended(conn, sql: str = "SELECT 1") -> psycopg.OperationalError:
    """The FATAL error that ends `conn` at its next statement."""
    with pytest.raises(psycopg.OperationalError) as err:
        conn.execute(sql)
    assert conn.closed or conn.broken, "the session was not ended"
    return err.value


def note(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_role_taken_out_of_allowed_roles_ends_its_sessions_at_their_next_transaction(
        routers, jwt_db, keys, primary):
    """`allowed_roles` loses web_admin: web_admin sessions end at their next
    transaction boundary with 28000 "role not allowed" — an idle one at its
    next statement, one inside a transaction after its COMMIT, one in a COPY
    FROM STDIN after the COPY. web_user sessions (idle, and one whose
    transaction spans the reload) and password users carry on untouched,
    on the same server session. New web_admin logins are refused."""
    key = keys["rsa"]
    router = start_jwt_router(routers, key,
                              jwt={"allowed_roles": ["web_user", "web_admin", "web_reader"]})
    admin_user, web_user = uname("adm"), uname("web")
    admin_tok = token(key, admin_user, "web_admin")
    idle = connect(router.dsn(user=admin_user, password=admin_tok))
    in_tx = connect(router.dsn(user=admin_user, password=admin_tok))
    copying = connect(router.dsn(user=admin_user, password=admin_tok))
    stays = connect(router.dsn(user=web_user, password=token(key, web_user, "web_user")))
    stays_tx = connect(router.dsn(user=web_user, password=token(key, web_user, "web_user")))
    pw = connect(router.dsn(user=APP_USER, password=APP_PASSWORD))
    tag = note("rev")
    try:
        for c in (idle, in_tx, copying):
            assert whoami(c) == ("web_admin", AUTHENTICATOR)
        assert whoami(stays) == ("web_user", AUTHENTICATOR)
        in_tx.execute("BEGIN")
        in_tx.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (f"{tag}_tx_before",))
        stays_tx.execute("BEGIN")
        stays_tx.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (f"{tag}_stays_before",))
        stays_pid = stays_tx.execute("SELECT pg_backend_pid()").fetchone()[0]
        with copying.cursor() as cur:
            with cur.copy(f"COPY {TABLE} (note) FROM STDIN") as cp:
                cp.write_row((f"{tag}_copy_0",))
                reload(router, with_jwt(router, allowed_roles=["web_user", "web_reader"]))
                for i in range(1, 20):
                    cp.write_row((f"{tag}_copy_{i}",))
            assert cur.rowcount == 20

        # The open transactions finish: web_admin's under its role, then it ends.
        in_tx.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (f"{tag}_tx_after",))
        assert whoami(in_tx) == ("web_admin", AUTHENTICATOR)
        in_tx.execute("COMMIT")
        stays_tx.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (f"{tag}_stays_after",))
        assert stays_tx.execute("SELECT pg_backend_pid()").fetchone()[0] == stays_pid
        stays_tx.execute("COMMIT")

        for c in (idle, in_tx, copying):
            err = ended(c, f"INSERT INTO {TABLE} (note) VALUES ('{tag}_after_reload')")
            assert sqlstate(err) == "28000", repr(err)
            text = str(err)
            assert REVOKED in text and "role not allowed" in text and "web_admin" in text, text

        # Still allowed: nothing happened to them.
        assert whoami(stays) == ("web_user", AUTHENTICATOR)
        assert whoami(stays_tx) == ("web_user", AUTHENTICATOR)
        assert pw.execute("SELECT current_user").fetchone() == (APP_USER,)
        err = login_error(router, admin_user, admin_tok)
        assert err.sqlstate == "28P01" and "role not allowed" in err.message, err
        rows = primary.sql(f"SELECT note, who FROM {TABLE} WHERE note LIKE %s ORDER BY note",
                           (tag + "%",))
        copied = [(f"{tag}_copy_{i}", "web_admin") for i in range(20)]
        assert rows == sorted(copied + [(f"{tag}_stays_after", "web_user"),
                                        (f"{tag}_stays_before", "web_user"),
                                        (f"{tag}_tx_after", "web_admin"),
                                        (f"{tag}_tx_before", "web_admin")]), rows
        assert router.alive()
    finally:
        for c in (idle, in_tx, copying, stays, stays_tx, pw):
            c.close()


def test_unrelated_reload_keeps_jwt_sessions(routers, jwt_db, keys):
    """A reload that changes nothing a JWT session's login depends on — the
    PEM key is read again at every reload — ends nobody: idle sessions, one
    in a transaction, read-only ones, an auto-provisioned one."""
    key = keys["ec"]
    router = start_jwt_router(routers, key, jwt={"allowed_roles": ["web_user", "web_reader"],
                                                 "read_only_claim": "ro"})
    a, b = uname(), uname()
    one = connect(router.dsn(user=a, password=token(key, a, "web_user")))
    ro = connect(router.dsn(user=b, password=token(key, b, "web_reader", ro=True)))
    try:
        one.execute("BEGIN")
        assert whoami(one) == ("web_user", AUTHENTICATOR)
        cfg = with_jwt(router, leeway_s=5, allowed_roles=["web_reader", "web_user", "web_admin"])
        cfg["general"]["default_pool_size"] = cfg["general"].get("default_pool_size", 10) + 1
        reload(router, cfg)
        assert whoami(one) == ("web_user", AUTHENTICATOR)
        one.execute("COMMIT")
        for _ in range(3):
            assert whoami(one) == ("web_user", AUTHENTICATOR)
            assert whoami(ro) == ("web_reader", AUTHENTICATOR)
        assert ro.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    finally:
        one.close()
        ro.close()


def test_replaced_key_file_ends_sessions_whose_token_it_does_not_verify(routers, jwt_db, keys):
    """The PEM file replaced with another key: sessions whose token the new
    key does not verify end at their next statement (28000, "signature");
    tokens of the new key log in."""
    old_key, new_key = keys["rsa"], SigningKey("rsa")
    router = start_jwt_router(routers, old_key)
    u = uname()
    conn = connect(router.dsn(user=u, password=token(old_key, u)))
    try:
        assert whoami(conn) == ("web_user", AUTHENTICATOR)
        new_key.write_public_pem(Path(router.config["jwt"]["public_key_file"]))
        reload(router)
        err = ended(conn)
        assert sqlstate(err) == "28000" and REVOKED in str(err) and "signature" in str(err), err
        with connect(router.dsn(user=u, password=token(new_key, u))) as again:
            assert whoami(again) == ("web_user", AUTHENTICATOR)
    finally:
        conn.close()


@pytest.mark.parametrize("setting,word", [("issuer", "issuer"), ("audience", "audience")])
def test_issuer_or_audience_change_ends_sessions_whose_token_no_longer_fits(
        routers, jwt_db, keys, setting, word):
    key = keys["rsa"]
    router = start_jwt_router(routers, key)
    u, v = uname(), uname()
    old = connect(router.dsn(user=u, password=token(key, u)))
    new_value = f"https://other-{setting}.test"
    # A token made for the new value cannot log in before the reload ...
    fits_new = token(key, v, **{"iss" if setting == "issuer" else "aud": new_value})
    assert login_error(router, v, fits_new).sqlstate == "28P01"
    try:
        assert whoami(old) == ("web_user", AUTHENTICATOR)
        reload(router, with_jwt(router, **{setting: new_value}))
        err = ended(old)
        assert sqlstate(err) == "28000" and REVOKED in str(err) and word in str(err), err
        # ... and does after it.
        with connect(router.dsn(user=v, password=fits_new)) as c:
            assert whoami(c) == ("web_user", AUTHENTICATOR)
    finally:
        old.close()


USERS_TOML_CHANGES = {
    # change: (the entry after the reload, or None to remove it; words in the message)
    "removed": (None, "auto_provision"),
    "login_false": ({"login": False}, "cannot log in directly"),
    "auth_scram": ({"auth": "scram", "password": "pw"}, "no longer logs in with a JWT"),
}


@pytest.mark.parametrize("change", list(USERS_TOML_CHANGES))
def test_users_toml_entry_change_that_refuses_the_token_ends_the_session(
        routers, jwt_db, keys, change):
    """A JWT user with its own users.toml entry (`auth = "jwt"`) and
    `auto_provision = false`: removing the entry, setting `login = false`
    or changing its `auth` to a password method ends its session with 28000
    (its token would be refused at login); another JWT user's entry stays,
    and so does its session."""
    key = keys["rsa"]
    gone_user, kept_user = uname("gone"), uname("kept")
    entry = lambda name, **kw: {"name": name, "database": APP_DB, "auth": "jwt", **kw}  # noqa: E731
    router = start_jwt_router(routers, key, jwt={"auto_provision": False},
                              users=[entry(gone_user), entry(kept_user)])
    gone = connect(router.dsn(user=gone_user, password=token(key, gone_user)))
    kept = connect(router.dsn(user=kept_user, password=token(key, kept_user, "web_reader")))
    after, words = USERS_TOML_CHANGES[change]
    try:
        assert whoami(gone) == ("web_user", AUTHENTICATOR)
        assert whoami(kept) == ("web_reader", AUTHENTICATOR)
        changed = [] if after is None else [entry(gone_user, **after)]
        reload(router, users=[password_user(), authenticator_user(), entry(kept_user)] + changed)
        err = ended(gone)
        assert sqlstate(err) == "28000" and REVOKED in str(err), err
        assert words in str(err) and gone_user in str(err), err
        assert whoami(kept) == ("web_reader", AUTHENTICATOR)
    finally:
        gone.close()
        kept.close()


CONNECT_AS_2 = "jwt_authenticator2"


def test_connect_as_change_ends_sessions_with_08006(routers, jwt_db, keys, primary):
    """`connect_as` changed: the token is still good, but the session's
    server connections belong to the old user, so it ends at its next
    transaction boundary like a password session whose settings changed
    (08006, naming connect_as); logging in again runs on the new user."""
    with primary.connect("postgres") as c:
        c.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                  f"{qliteral(CONNECT_AS_2)}) THEN CREATE ROLE {qident(CONNECT_AS_2)} "
                  f"LOGIN NOINHERIT PASSWORD 'auth2-secret'; END IF; END $$")
        c.execute(f"GRANT web_user TO {qident(CONNECT_AS_2)}")
        c.execute(f"GRANT CONNECT ON DATABASE {APP_DB} TO {qident(CONNECT_AS_2)}")
    key = keys["rsa"]
    second = authenticator_user(name=CONNECT_AS_2, server_password="auth2-secret")
    router = start_jwt_router(routers, key, jwt={"allowed_roles": ["web_user"]}, users=[second])
    u = uname()
    tok = token(key, u)
    conn = connect(router.dsn(user=u, password=tok))
    try:
        conn.execute("BEGIN")
        assert whoami(conn) == ("web_user", AUTHENTICATOR)
        reload(router, with_jwt(router, connect_as=CONNECT_AS_2))
        assert whoami(conn) == ("web_user", AUTHENTICATOR)
        conn.execute("COMMIT")
        err = ended(conn)
        assert sqlstate(err) == "08006" and "connect_as" in str(err), err
        with connect(router.dsn(user=u, password=tok)) as again:
            assert whoami(again) == ("web_user", CONNECT_AS_2)
    finally:
        conn.close()


def test_reload_does_not_end_an_expired_session_when_disconnect_on_expiry_is_off(
        routers, jwt_db, keys):
    """The check after a reload is not a login: with `disconnect_on_expiry =
    false`, a session whose token has expired since keeps running through a
    reload (only what the reload changed can end it)."""
    key = keys["rsa"]
    router = start_jwt_router(routers, key, jwt={"disconnect_on_expiry": False,
                                                 "allowed_roles": ["web_user", "web_admin"]})
    u = uname()
    exp = int(time.time()) + 2
    conn = connect(router.dsn(user=u, password=key.sign(claims(u, "web_user", exp=exp))))
    try:
        time.sleep(max(0.0, exp - time.time()) + 1.2)
        reload(router, with_jwt(router, allowed_roles=["web_user"]))
        for _ in range(2):
            assert whoami(conn) == ("web_user", AUTHENTICATOR)
    finally:
        conn.close()


# A JWT session of another host, over plain TCP: a raw wire client run in
# the test host's network namespace (harness/netns.py; the router listens
# on 0.0.0.0 and sees the peer 198.18.0.2). It logs in, runs a statement,
# prints "ready", and after a line on stdin runs another, printing as JSON
# the first error's fields (or the kinds of the messages) up to the end of
# the connection.
REMOTE_SESSION = r"""
import json, sys
from harness import wire
host, port, user, password = sys.argv[1:]
conn = wire.RawConn.open(int(port), host=host)
try:
    conn.startup(user, "app", password)
    conn.simple_query("SELECT 1")
    print("ready", flush=True)
    sys.stdin.readline()
    conn.send(wire.query_message("SELECT current_user"))
    msgs = conn.read_until_eof(10)
    errors = wire.errors_in(msgs)
    print(json.dumps({"error": errors[0]} if errors else {"kinds": [m.kind.decode() for m in msgs]}),
          flush=True)
finally:
    conn.close()
"""


def test_insecure_transport_turned_off_ends_jwt_sessions_of_other_hosts_on_plain_tcp(
        routers, jwt_db, keys, netns):
    """`allow_insecure_transport` true -> false: a JWT session logged in
    without TLS from another host would now be refused at login ("JWT login
    requires TLS"), so it ends at its next transaction boundary with 28000
    naming that, as other revoked logins do; a loopback session carries on."""
    import json
    import subprocess
    import sys
    from harness.netns import _ip
    from harness.util import free_port
    key = keys["rsa"]
    port = free_port()
    router = start_jwt_router(routers, key, general={"listen": f"0.0.0.0:{port}"},
                              jwt={"allow_insecure_transport": True})
    u = uname()
    env = dict(PYTHONPATH=str(Path(__file__).resolve().parent), PATH="/usr/bin:/bin")
    remote = subprocess.Popen([_ip(), "netns", "exec", netns.name, sys.executable, "-c", REMOTE_SESSION,
                               netns.host_ip, str(port), u, token(key, u)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    local = connect(router.dsn(user=u, password=token(key, u)))
    try:
        assert remote.stdout.readline().strip() == "ready", remote.stderr.read()
        reload(router, with_jwt(router, allow_insecure_transport=False))
        out, err = remote.communicate("go\n", timeout=30)
        fields = json.loads(out.strip().splitlines()[-1]).get("error")
        assert fields and fields["C"] == "28000" and fields["S"] == "FATAL", out
        assert REVOKED in fields["M"] and "requires TLS" in fields["M"], fields
        assert whoami(local) == ("web_user", AUTHENTICATOR)
    finally:
        local.close()
        if remote.poll() is None:
            remote.kill()
