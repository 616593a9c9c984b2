"""`[jit]` just-in-time access (SPEC §5 "remote token checks", issue 18):
tokens checked by a remote API at every login (Supavisor's contract), then
passed on to PostgreSQL, which checks them again through PAM.

Set-up (module scope): a mock JIT API (harness/jit_api.py), a PAM service in
/etc/pam.d whose pam_exec script asks the same API (harness/pam.py), and a
PostgreSQL server whose pg_hba.conf uses `pam` for members of `jit_users`
(harness/login_checks.py). The router reaches the server through its Unix
socket: PAM needs the token in cleartext, which the router sends only over
a socket or TLS.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest

from harness import wire
from harness.certs import CertAuthority
from harness.clients import connect, run_async
from harness.jit_api import JitApi
from harness.jwt_setup import AUTHENTICATOR, authenticator_user, ensure_roles, jwt_section
from harness.jwt_tokens import SigningKey, b64url, b64url_json, claims
from harness.login_checks import LOOKUP_QUERY, LoginChecksCluster, lookup_user_entry
from harness.ops import admin_general, admin_rows, full_log, pools, scrape
from harness.pam import PamService
from harness.netns import netns  # noqa: F401  (pytest fixture)
from harness.pg import APP_DB
from harness.router import RouterFactory, app_user
from harness.util import SASLPREP_PASSWORD, SASLPREP_PREPARED, wait_until


@pytest.fixture(scope="module")
def api():
    a = JitApi().start()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def jit_cluster(api):
    c = LoginChecksCluster()
    pam = PamService(c.tmpdir, api.url).install()
    c.pam_service = pam.name
    c.pam = pam
    try:
        c.start()
        ensure_roles(c)  # authenticator & web roles, for the [jwt] + [jit] test
        yield c
    finally:
        c.teardown()
        pam.remove()


@pytest.fixture
def jit_routers(jit_cluster, api, request):
    api.mode = "ok"
    api.delay_s = 0.0
    base = jit_cluster.tmpdir / "routers" / f"{request.node.name[:50]}-{uuid.uuid4().hex[:6]}"
    base.mkdir(parents=True)
    factory = RouterFactory(jit_cluster, base)
    yield factory
    problems = factory.finish()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def socket_db(cluster) -> list[dict]:
    return [{"name": APP_DB, "host": str(cluster.sockdir), "port": cluster.primary.port,
             "database_name": APP_DB, "role": "primary"}]


def start(routers, cluster, api_url: str, jit: dict | None = None, users=None,
          general: dict | None = None, **sections):
    section = {"api_url": api_url, "timeout_ms": 2000, "token_prefixes": ["sbp_"]}
    section.update(jit or {})
    return routers.start(
        general=admin_general(metrics=True, **(general or {})),
        users=users if users is not None else [app_user(), lookup_user_entry()],
        databases=socket_db(cluster), jit=section,
        auth_query={"user": "pgrouter_auth", "query": LOOKUP_QUERY}, **sections)


def jit_role(cluster) -> str:
    name, _pw = cluster.make_role("scram", prefix="jit", groups=("jit_users",))
    return name


def token() -> str:
    return f"sbp_{uuid.uuid4().hex}"


def jwt_shaped() -> str:
    """Looks like a JWT (three base64url parts, a header with `alg`); signed by nobody."""
    return ".".join([b64url_json({"alg": "RS256", "typ": "JWT"}),
                     b64url_json({"sub": uuid.uuid4().hex}), b64url(uuid.uuid4().bytes)])


def session_user(router, user: str, password: str) -> str:
    with connect(router.dsn(user=user, password=password)) as c:
        return c.execute("SELECT session_user::text").fetchone()[0]


def refusal(router, user: str, password: str) -> wire.ServerError:
    try:
        conn = wire.connect(router.port, user, APP_DB, password)
    except wire.ServerError as exc:
        return exc
    conn.close()
    raise AssertionError(f"login as {user!r} was accepted")


def router_calls(api, tok: str) -> list:
    return [c for c in api.calls_from("router") if c.token == tok]


# ---------------------------------------------------------------- granted --
def test_granted_token_logs_in_and_postgres_checks_it_again(jit_cluster, api, jit_routers):
    r = start(jit_routers, jit_cluster, api.url)
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    with connect(r.dsn(user=role, password=tok)) as c:
        assert c.execute("SELECT session_user::text").fetchone() == (role,)
        auth = [x["auth"] for x in admin_rows(r, "SHOW CLIENTS") if x["user"] == role]
        assert auth == ["jit"]
    (call,) = router_calls(api, tok)
    assert call.body["role"] == role
    assert call.body["rhost"] == "127.0.0.1"
    assert call.body["_content_type"] == "application/json"
    # PostgreSQL's PAM check saw the same token for that role, and granted it.
    assert {"user": role, "token": tok, "ok": True} in jit_cluster.pam.seen()
    m = scrape(r)
    assert m.value("pgrouter_jit_checks_total", result="granted") == 1
    assert m.value("pgrouter_jit_check_duration_seconds_count") == 1


def test_tokens_are_checked_at_every_login(jit_cluster, api, jit_routers):
    r = start(jit_routers, jit_cluster, api.url)
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    for _ in range(3):
        assert session_user(r, role, tok) == role
    assert len(router_calls(api, tok)) == 3


def test_an_unused_jit_users_pools_are_dropped_and_made_again_at_its_next_login(
        jit_cluster, api, jit_routers):
    """The pools a token login made for its role go once no client is on
    them and server_idle_timeout_ms has passed since their last use: they
    leave SHOW POOLS and the metrics. The role's next login makes new ones
    (and the API is asked again, as at every login)."""
    r = start(jit_routers, jit_cluster, api.url, general={"server_idle_timeout_ms": 500})
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    for _round in range(2):
        with connect(r.dsn(user=role, password=tok)) as c:
            assert c.execute("SELECT session_user::text").fetchone() == (role,)
            assert pools(r, user=role), "listed in SHOW POOLS while used"
        wait_until(lambda: not pools(r, user=role), timeout=10,
                   what="the unused pools to be dropped")
        assert [s for s in scrape(r).samples if s.labels.get("user") == role] == []
    assert session_user(r, role, tok) == role
    assert len(router_calls(api, tok)) == 3
    assert "dropped the unused pools of a learnt user" in full_log(r)


# ---------------------------------------------------------------- refused --
def test_revoked_token_is_refused_at_the_next_login_while_an_open_session_goes_on(
        jit_cluster, api, jit_routers):
    r = start(jit_routers, jit_cluster, api.url)
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    with connect(r.dsn(user=role, password=tok)) as open_session:
        assert open_session.execute("SELECT 1").fetchone() == (1,)
        api.revoke(tok)
        err = refusal(r, role, tok)
        assert err.sqlstate == "28P01"
        assert "token not granted" in err.message and "rejected by the JIT API" in err.message
        for _ in range(3):
            assert open_session.execute("SELECT session_user::text").fetchone() == (role,)
    m = scrape(r)
    assert m.value("pgrouter_jit_checks_total", result="rejected") == 1
    assert m.value("pgrouter_logins_total", result="bad_token") == 1


def test_token_granted_for_another_role_is_refused(jit_cluster, api, jit_routers):
    r = start(jit_routers, jit_cluster, api.url)
    role, other, tok = jit_role(jit_cluster), jit_role(jit_cluster), token()
    api.grant(tok, other)
    err = refusal(r, role, tok)
    assert err.sqlstate == "28P01"
    assert "token not granted" in err.message and other in err.message
    assert scrape(r).value("pgrouter_jit_checks_total", result="not_granted") == 1


def test_unknown_token_is_refused(jit_cluster, api, jit_routers):
    r = start(jit_routers, jit_cluster, api.url)
    role = jit_role(jit_cluster)
    err = refusal(r, role, token())
    assert err.sqlstate == "28P01" and "token not granted" in err.message


def test_a_token_no_http_header_can_carry_is_refused_without_asking_the_api(
        jit_cluster, api, jit_routers):
    """A token with a newline cannot be put in an Authorization header: the
    API is not called, and the refusal says why (not an HTTP status)."""
    r = start(jit_routers, jit_cluster, api.url)
    role = jit_role(jit_cluster)
    tok = token() + "\r\nX-Injected: 1"
    before = len(api.calls_from("router"))
    err = refusal(r, role, tok)
    assert err.sqlstate == "28P01" and "token not granted" in err.message
    assert "HTTP header" in err.message and "HTTP 400" not in err.message, err.message
    assert len(api.calls_from("router")) == before


# ------------------------------------------------------------ API failing --
def test_api_down_refuses_within_the_timeout_and_password_logins_still_work(
        jit_cluster, api, jit_routers):
    r = start(jit_routers, jit_cluster, api.url, jit={"timeout_ms": 300})
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    api.mode = "slow"
    api.delay_s = 5.0
    started = time.monotonic()
    err = refusal(r, role, tok)
    took = time.monotonic() - started
    assert err.sqlstate == "28P01"
    assert "JIT API unavailable: timeout" in err.message
    assert took < 2.0, took

    # While token logins hang on the API, password logins do not wait for it.
    async def both():
        async def token_login():
            try:
                await asyncpg.connect(**r.connect_kwargs(user=role, password=tok))
            except Exception as exc:  # noqa: BLE001
                return exc
        async def password_login():
            t0 = time.monotonic()
            conn = await asyncpg.connect(**r.connect_kwargs())
            await conn.close()
            return time.monotonic() - t0
        results = await asyncio.gather(*(token_login() for _ in range(20)), password_login())
        return results[:-1], results[-1]
    refused, password_took = run_async(both())
    assert all(isinstance(e, asyncpg.InvalidPasswordError) for e in refused), refused
    assert password_took < 1.0, password_took

    api.mode = "down"
    api.delay_s = 0.0
    err = refusal(r, role, tok)
    assert "JIT API unavailable: HTTP status 500" in err.message
    api.mode = "garbage"
    assert "JIT API unavailable" in refusal(r, role, tok).message
    api.mode = "ok"
    assert session_user(r, role, tok) == role
    assert scrape(r).value("pgrouter_jit_checks_total", result="unavailable") >= 23


def test_unreachable_api(jit_cluster, api, jit_routers):
    from harness.util import free_port
    r = start(jit_routers, jit_cluster, f"http://127.0.0.1:{free_port()}/check")
    role = jit_role(jit_cluster)
    err = refusal(r, role, token())
    assert err.sqlstate == "28P01" and "JIT API unavailable" in err.message
    assert session_user(r, "app", "app-secret") == "app"


# --------------------------------------------------------------- passwords --
def test_other_passwords_are_users_toml_or_auth_query(jit_cluster, api, jit_routers):
    r = start(jit_routers, jit_cluster, api.url)
    before = len(api.calls_from("router"))
    assert session_user(r, "app", "app-secret") == "app"
    name, pw = jit_cluster.make_role("scram")
    with connect(r.dsn(user=name, password=pw)) as c:
        assert c.execute("SELECT session_user::text").fetchone() == (name,)
        auth = {x["user"]: x["auth"] for x in admin_rows(r, "SHOW CLIENTS")}
    assert auth[name] == "auth_query/password"
    assert refusal(r, "app", "wrong").sqlstate == "28P01"
    assert refusal(r, name, "wrong").sqlstate == "28P01"
    assert len(api.calls_from("router")) == before  # passwords never go to the API



def test_a_password_saslprep_rewrites_is_checked_as_postgres_checks_it(jit_cluster, api,
                                                                      jit_routers):
    """With [jit] the router asks for cleartext, and checks a password that
    is not a token against the SCRAM secret the lookup finds: hashed after
    SASLprep, as PostgreSQL hashed it when the role's password was set."""
    r = start(jit_routers, jit_cluster, api.url)
    name, pw = jit_cluster.make_role("scram", password=SASLPREP_PASSWORD)
    assert session_user(r, name, pw) == name
    assert session_user(r, name, SASLPREP_PREPARED) == name
    assert refusal(r, name, "pass\u00adword").sqlstate == "28P01"


def start_with_an_entry_and_its_pools_twin(jit_cluster, api, jit_routers):
    """Roles `u…` (a users.toml entry, password 'entry-pw') and `u… (jit)`
    (named like that entry's JIT pools, password 'twin-pw'), and a router
    with the entry: (entry, twin, users.toml entries, router)."""
    entry = f"u{uuid.uuid4().hex[:8]}"
    twin = f"{entry} (jit)"
    for sql in (f"CREATE ROLE {entry} LOGIN PASSWORD 'entry-pw'",
                f"GRANT CONNECT ON DATABASE {APP_DB} TO {entry}",
                f"CREATE ROLE \"{twin}\" LOGIN PASSWORD 'twin-pw'",
                f"GRANT CONNECT ON DATABASE {APP_DB} TO \"{twin}\""):
        jit_cluster.primary.sql(sql, db="postgres")
    users = [app_user(), lookup_user_entry(),
             app_user(name=entry, password="entry-pw", auth="scram")]
    return entry, twin, users, start(jit_routers, jit_cluster, api.url, users=users)


def test_a_role_named_like_the_jit_pools_of_an_entry_gets_its_own_server_connections(
        jit_cluster, api, jit_routers):
    """The JIT pools of users.toml entry `u` are named "u (jit)", which is
    also a valid PostgreSQL role name. A role of that name logging in with
    its own password (auth_query) must run as itself, never on the pools
    that log in as `u` (it was handed them: a session as another role)."""
    entry, twin, users, r = start_with_an_entry_and_its_pools_twin(jit_cluster, api, jit_routers)
    tok = token()
    api.grant(tok, entry)
    assert session_user(r, entry, tok) == entry  # its JIT pools, "<entry> (jit)"
    assert session_user(r, twin, "twin-pw") == twin
    assert session_user(r, entry, tok) == entry
    names = {(p["user"]) for p in admin_rows(r, "SHOW POOLS")}
    assert twin in names and f"{twin} #2" in names, names


def test_an_open_jit_session_never_moves_to_an_entry_a_reload_names_like_its_pools(
        jit_cluster, api, jit_routers):
    """A reload that adds users.toml entry "u (jit)" (a real role) must not
    move the open JIT session of `u`, whose pools have that name, onto the
    new entry's pools: the session keeps running as `u` or ends, never as
    the other role."""
    from harness.ops import reload_marks, wait_reload
    entry, twin, users, r = start_with_an_entry_and_its_pools_twin(jit_cluster, api, jit_routers)
    tok = token()
    api.grant(tok, entry)
    with connect(r.dsn(user=entry, password=tok)) as c:
        assert c.execute("SELECT session_user::text").fetchone() == (entry,)
        marks = reload_marks(r)
        r.write_files(users={"users": users + [app_user(name=twin, password="twin-pw",
                                                         auth="scram")]})
        r.reload()
        wait_reload(r, marks)
        try:
            who = c.execute("SELECT session_user::text").fetchone()
        except psycopg.OperationalError as exc:
            assert "removed from the configuration" in str(exc), exc
        else:
            assert who == (entry,)
    assert session_user(r, twin, "twin-pw") == twin
    assert session_user(r, entry, tok) == entry


def test_jit_logins_of_a_user_with_an_entry_keep_its_pool_mode_and_size(jit_cluster, api,
                                                                       jit_routers):
    """A token login of a users.toml user runs on pools of its own, which
    took [general]'s pool_mode and default_pool_size: a user whose entry
    says session pooling got transaction pooling when logging in with a
    token. They follow the entry."""
    entry = f"u{uuid.uuid4().hex[:8]}"
    for sql in (f"CREATE ROLE {entry} LOGIN PASSWORD 'entry-pw'",
                f"GRANT CONNECT ON DATABASE {APP_DB} TO {entry}"):
        jit_cluster.primary.sql(sql, db="postgres")
    users = [app_user(), lookup_user_entry(),
             app_user(name=entry, password="entry-pw", auth="scram", pool_mode="session",
                      pool_size=2)]
    r = start(jit_routers, jit_cluster, api.url, users=users)
    tok = token()
    api.grant(tok, entry)
    with connect(r.dsn(user=entry, password=tok)) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()
        for _ in range(3):
            assert c.execute("SELECT pg_backend_pid()").fetchone() == pid
        (pool,) = [p for p in admin_rows(r, "SHOW POOLS") if p["user"] == f"{entry} (jit)"]
    assert pool["pool_mode"] == "session" and pool["pool_size"] == "2", pool


# ------------------------------------------------------------ JWT-shaped --
def test_jwt_shaped_token_goes_to_the_api_without_a_jwt_section(jit_cluster, api, jit_routers):
    r = start(jit_routers, jit_cluster, api.url)
    role, tok = jit_role(jit_cluster), jwt_shaped()
    api.grant(tok, role)
    assert session_user(r, role, tok) == role
    assert len(router_calls(api, tok)) == 1


def test_with_jwt_and_jit_a_jwt_goes_to_jwt_and_a_prefixed_token_to_the_api(
        jit_cluster, api, jit_routers):
    key = SigningKey("rsa")
    pem = jit_routers.base_dir / "jwt.pem"
    key.write_public_pem(pem)
    r = start(jit_routers, jit_cluster, api.url,
              users=[app_user(), lookup_user_entry(), authenticator_user()],
              jwt=jwt_section(public_key_file=str(pem)))
    # A JWT of a user with no entry (auto_provision): verified by [jwt], the
    # API is not asked.
    jwt = key.sign(claims("jwt_person", role="web_user"))
    api.grant(jwt, "jwt_person")
    with connect(r.dsn(user="jwt_person", password=jwt)) as c:
        assert c.execute("SELECT current_user::text").fetchone() == ("web_user",)
        auth = {x["user"]: x["auth"] for x in admin_rows(r, "SHOW CLIENTS")}
    assert auth["jwt_person"] == "jwt"
    assert router_calls(api, jwt) == []
    # A prefixed token still goes to the JIT API.
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    assert session_user(r, role, tok) == role
    assert len(router_calls(api, tok)) == 1


# ------------------------------------------------------------------ https --
def test_https_api_with_a_private_ca(jit_cluster, api, jit_routers, tmp_path):
    ca = CertAuthority.create(tmp_path / "ca", "jit test CA")
    leaf = ca.issue(tmp_path / "api", "jit api", dns=["localhost"], ips=["127.0.0.1"])
    secure = JitApi(tls=(leaf.cert_path, leaf.key_path)).start()
    try:
        role, tok = jit_role(jit_cluster), token()
        secure.grant(tok, role)
        api.grant(tok, role)  # PostgreSQL's PAM script asks the http one
        r = start(jit_routers, jit_cluster, secure.url, jit={"api_ca": str(ca.cert_path)})
        assert session_user(r, role, tok) == role
        assert len(secure.calls_from("router")) == 1
        # PostgreSQL really checks: a token the router's API grants but the
        # one PAM asks does not is refused by the server.
        role2, tok2 = jit_role(jit_cluster), token()
        secure.grant(tok2, role2)
        err = refusal(r, role2, tok2)
        # The server's own refusal (its SQLSTATE passed on, as for a
        # statement), not a connection failure.
        assert err.sqlstate.startswith("28"), err
        assert "PAM authentication failed" in err.message, err
        assert {"user": role2, "token": tok2, "ok": False} in jit_cluster.pam.seen()
        # Without the CA the API's certificate is not trusted.
        r2 = start(jit_routers, jit_cluster, secure.url)
        err = refusal(r2, role, tok)
        assert "JIT API unavailable" in err.message
        assert "certificate" in err.message.lower() or "issuer" in err.message.lower()
    finally:
        secure.stop()


def test_a_valid_token_after_one_postgres_refused_logs_in_at_once(jit_cluster, api,
                                                                  jit_routers, tmp_path):
    """PostgreSQL refusing a token (PAM) backs the user's pools off for
    ban_time_ms, so that a crowd with that token does not hammer it. A
    login with another token is another credential: it is tried at once
    (it was answered with the old token's refusal until the back-off ended)."""
    ca = CertAuthority.create(tmp_path / "ca", "jit test CA")
    leaf = ca.issue(tmp_path / "api", "jit api", dns=["localhost"], ips=["127.0.0.1"])
    routers_api = JitApi(tls=(leaf.cert_path, leaf.key_path)).start()
    try:
        r = start(jit_routers, jit_cluster, routers_api.url, jit={"api_ca": str(ca.cert_path)})
        role, refused_by_pam = jit_role(jit_cluster), token()
        routers_api.grant(refused_by_pam, role)  # PAM asks `api`, which does not grant it
        for _ in range(2):
            err = refusal(r, role, refused_by_pam)
            assert "PAM authentication failed" in err.message, err
        assert len([s for s in jit_cluster.pam.seen() if s["user"] == role]) == 1  # backed off
        good = token()
        routers_api.grant(good, role)
        api.grant(good, role)
        assert session_user(r, role, good) == role
    finally:
        routers_api.stop()


# ----------------------------------------------------------------- storms --
def test_a_burst_of_token_logins_one_api_call_each_and_pool_bounded(jit_cluster, api,
                                                                      jit_routers):
    r = start(jit_routers, jit_cluster, api.url)
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)

    async def burst():
        async def one():
            conn = await asyncpg.connect(**r.connect_kwargs(user=role, password=tok))
            try:
                return await conn.fetchval("SELECT session_user::text")
            finally:
                await conn.close()
        return await asyncio.gather(*(one() for _ in range(200)))

    assert run_async(burst(), timeout=120) == [role] * 200
    assert len(router_calls(api, tok)) == 200
    # The server saw at most a pool's worth of PAM logins for the role.
    pam_logins = [s for s in jit_cluster.pam.seen() if s["user"] == role]
    assert 1 <= len(pam_logins) <= 10, len(pam_logins)
    assert len(jit_cluster.primary.backends(user=role)) <= 10


# ---------------------------------------------------------------- transport --
REMOTE_LOGIN = r"""
import json, sys
from harness import wire
host, port, user, password = sys.argv[1:]
conn = wire.RawConn.open(int(port), host=host)
try:
    conn.startup(user, "app", password)
    print(json.dumps({"row": conn.simple_query("SELECT session_user")[0][0]}))
except wire.ServerError as exc:
    print(json.dumps({"error": exc.fields}))
finally:
    conn.close()
"""


def test_no_cleartext_over_plain_tcp_from_another_host(jit_cluster, api, jit_routers, netns):
    """A client on another host without TLS is asked for SCRAM as if there were
    no [jit]: its token never travels in cleartext and never reaches the API,
    and its password logins work as usual. (The other host is a network
    namespace, harness/netns.py.)"""
    from harness.util import free_port
    port = free_port()
    r = jit_routers.start(
        general=admin_general(listen=f"0.0.0.0:{port}"),
        users=[app_user(), lookup_user_entry()], databases=socket_db(jit_cluster),
        jit={"api_url": api.url}, auth_query={"user": "pgrouter_auth", "query": LOOKUP_QUERY})
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent))

    def remote(user, password):
        out = netns.run([sys.executable, "-c", REMOTE_LOGIN, netns.host_ip, str(port), user,
                         password], env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    got = remote(role, tok)
    assert got.get("error", {}).get("C") == "28P01", got
    assert router_calls(api, tok) == []
    assert remote("app", "app-secret") == {"row": ["app"]}
    # From loopback the same token is accepted.
    assert session_user(r, role, tok) == role


def test_ipv4_loopback_clients_of_a_dual_stack_listener_are_loopback(jit_cluster, api,
                                                                     jit_routers):
    """With `listen = "[::]:port"` an IPv4 client's address is IPv4-mapped
    (::ffff:127.0.0.1). A client on 127.0.0.1 is still on loopback: its token
    is taken without TLS (it was asked for SCRAM and refused with 28P01
    "password authentication failed"), the API reads rhost 127.0.0.1, and a
    JWT is accepted too (it was "JWT login requires TLS")."""
    from harness.util import free_port
    key = SigningKey("rsa")
    pem = jit_routers.base_dir / "jwt.pem"
    key.write_public_pem(pem)
    port = free_port()
    r = jit_routers.start(
        general=admin_general(listen=f"[::]:{port}"),
        users=[app_user(), lookup_user_entry(), authenticator_user()],
        databases=socket_db(jit_cluster), jit={"api_url": api.url},
        auth_query={"user": "pgrouter_auth", "query": LOOKUP_QUERY},
        jwt=jwt_section(public_key_file=str(pem)), wait=False)
    r.port = port
    r.start()
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    assert session_user(r, role, tok) == role
    (call,) = router_calls(api, tok)
    assert call.body["rhost"] == "127.0.0.1"
    jwt = key.sign(claims("jwt_person", role="web_user"))
    with connect(r.dsn(user="jwt_person", password=jwt)) as c:
        assert c.execute("SELECT current_user::text").fetchone() == ("web_user",)
        addrs = {x["addr"] for x in admin_rows(r, "SHOW CLIENTS") if "addr" in x}
    assert all(not a.startswith("::ffff:") for a in addrs), addrs


# --------------------------------------------------------- configuration --
def test_jit_added_by_a_reload_and_limited_to_its_databases(jit_cluster, api, jit_routers):
    from harness.ops import reload_marks, wait_reload
    r = jit_routers.start(general=admin_general(), users=[app_user(), lookup_user_entry()],
                          databases=socket_db(jit_cluster),
                          auth_query={"user": "pgrouter_auth", "query": LOOKUP_QUERY})
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    assert refusal(r, role, tok).sqlstate == "28P01"  # no [jit] yet: just a wrong password
    assert router_calls(api, tok) == []

    def reload_with(jit):
        marks = reload_marks(r)
        r.write_files(config=dict(r.config, jit=jit))
        r.reload()
        wait_reload(r, marks)

    reload_with({"api_url": api.url, "databases": ["app"]})
    assert session_user(r, role, tok) == role
    assert len(router_calls(api, tok)) == 1
    # [jit] for other databases only: app is back to plain password logins.
    other = {"name": "other", "host": str(jit_cluster.sockdir), "port": jit_cluster.primary.port,
             "database_name": APP_DB, "role": "primary"}
    marks = reload_marks(r)
    r.write_files(config=dict(r.config, databases=socket_db(jit_cluster) + [other],
                              jit={"api_url": api.url, "databases": ["other"]}))
    r.reload()
    wait_reload(r, marks)
    assert refusal(r, role, tok).sqlstate == "28P01"
    assert len(router_calls(api, tok)) == 1


def test_unreadable_api_ca_stops_the_start(jit_cluster, api, jit_routers, tmp_path):
    with pytest.raises(RuntimeError) as info:
        start(jit_routers, jit_cluster, "https://127.0.0.1:9/check",
              jit={"api_ca": str(tmp_path / "missing.pem")})
    # Located as every config problem is: router.toml:LINE: jit.api_ca.
    assert re.search(r"router\.toml:\d+: jit\.api_ca: ", str(info.value)), str(info.value)
    assert "missing.pem" in str(info.value)
    jit_routers.routers[-1].stop_requested = True  # exiting was the point


@pytest.mark.parametrize("edit", ["removed", "api-moved"])
def test_a_reload_that_takes_jit_away_ends_no_open_session(jit_cluster, api, jit_routers, edit):
    """SPEC [jit]: tokens are checked at every login and never cached, so a
    revocation takes effect at the next login. A reload that removes `[jit]`
    (or limits it to other databases) is the same for a session already
    logged in with a token: it goes on (its server connections logged in
    with the token, which PostgreSQL checks again for each new one), while
    the token's next login is refused. Unlike [jwt] (see
    test_jwt_reload.py), there is no token the router could check again
    without calling the API."""
    from harness.ops import reload_marks, wait_reload
    r = start(jit_routers, jit_cluster, api.url)
    role, tok = jit_role(jit_cluster), token()
    api.grant(tok, role)
    with connect(r.dsn(user=role, password=tok)) as c:
        assert c.execute("SELECT session_user::text").fetchone() == (role,)
        marks = reload_marks(r)
        config = {k: v for k, v in r.config.items() if k != "jit"}
        if edit == "api-moved":
            config["jit"] = dict(r.config["jit"], api_url="http://127.0.0.1:9/check")
        r.write_files(config=config)
        r.reload()
        assert wait_reload(r, marks) == "ok"
        for _ in range(3):
            assert c.execute("SELECT session_user::text").fetchone() == (role,)
    assert refusal(r, role, tok).sqlstate == "28P01"
