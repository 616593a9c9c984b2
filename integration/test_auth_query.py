"""`[auth_query]` (SPEC §5 "Logins checked against the database", issue 18):
roles that exist only in PostgreSQL log in through the router with the
password PostgreSQL stores, and the router logs in to the server as them
without ever knowing the password (SCRAM keys recovered from the client's
proof; the stored md5 hash for md5 roles).

The server is a LoginChecksCluster (harness/login_checks.py): md5 roles are
checked with `md5` in pg_hba.conf, every other role with scram-sha-256 over
TCP, and the lookup runs through the README's SECURITY DEFINER function as
the non-superuser `pgrouter_auth`.
"""
from __future__ import annotations

import subprocess
import time
import uuid

import asyncpg
import psycopg
import pytest

from harness.certs import CertAuthority
from harness.clients import connect, run_async, sqlstate
from harness.login_checks import LOOKUP_QUERY, LoginChecksCluster, lookup_user_entry
from harness.ops import admin_general, admin_rows, full_log, pools, scrape
from harness.pg import APP_DB, pg_tool
from harness.router import RouterFactory, app_user
from harness.util import SASLPREP_PASSWORD, SASLPREP_PREPARED, wait_until


@pytest.fixture(scope="module")
def aq_cluster():
    c = LoginChecksCluster().start()
    try:
        yield c
    finally:
        c.teardown()


@pytest.fixture
def aq_routers(aq_cluster, request):
    base = aq_cluster.tmpdir / "routers" / f"{request.node.name[:50]}-{uuid.uuid4().hex[:6]}"
    base.mkdir(parents=True)
    factory = RouterFactory(aq_cluster, base)
    yield factory
    problems = factory.finish()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def start(aq_routers, cache_ttl_s: int = 60, query: str = LOOKUP_QUERY, **general):
    return aq_routers.start(
        general=admin_general(metrics=True, **general),
        users=[app_user(), lookup_user_entry()],
        auth_query={"user": "pgrouter_auth", "query": query, "cache_ttl_s": cache_ttl_s})


def lookups(router, result: str = "found") -> float:
    return scrape(router).value("pgrouter_auth_query_lookups_total", result=result)


def who_am_i(router, user: str, password: str) -> tuple[str, str]:
    with connect(router.dsn(user=user, password=password)) as c:
        return c.execute("SELECT session_user::text, current_user::text").fetchone()


def login_error(router, user: str, password: str) -> Exception:
    """The error of a login with asyncpg (which reports the SQLSTATE of a
    FATAL at login, unlike libpq); fails the test if the login works."""
    async def main():
        try:
            conn = await asyncpg.connect(**router.connect_kwargs(user=user, password=password))
        except Exception as exc:  # noqa: BLE001
            return exc
        await conn.close()
        return None
    exc = run_async(main())
    assert exc is not None, f"login as {user} with password {password!r} was accepted"
    return exc


# ------------------------------------------------------------- logging in --
def test_scram_role_known_only_to_postgres_logs_in_with_every_client(aq_cluster, aq_routers):
    r = start(aq_routers)
    name, pw = aq_cluster.make_role("scram")
    # psycopg (libpq)
    assert who_am_i(r, name, pw) == (name, name)
    # asyncpg (its own SCRAM implementation)
    async def via_asyncpg():
        conn = await asyncpg.connect(**r.connect_kwargs(user=name, password=pw))
        try:
            return await conn.fetchval("SELECT session_user::text")
        finally:
            await conn.close()
    assert run_async(via_asyncpg()) == name
    # psql
    out = subprocess.run([pg_tool("psql"), "-X", "-At", "-c", "SELECT session_user"],
                         env=r.psql_env(user=name, password=pw), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == name
    # The server-side backends run as that user (the pool keeps them open).
    assert aq_cluster.primary.backends(user=name), "no server connection of the role"
    # One lookup served all three logins (cache_ttl_s = 60).
    assert lookups(r) == 1
    # Its pool is sized by default_pool_size.
    (pool,) = pools(r, user=name)
    assert pool["pool_size"] == "10"


def test_scram_role_over_tls_with_channel_binding(aq_cluster, aq_routers, tmp_path):
    """Over TLS the lookup's SCRAM exchange offers SCRAM-SHA-256-PLUS: libpq's
    channel_binding=require logs in, and the keys recovered from the bound
    proof log in to the server. An unknown role is answered the same way as
    a wrong password (the made-up exchange offers PLUS too)."""
    ca = CertAuthority.create(tmp_path / "ca")
    leaf = ca.issue(tmp_path / "router", "pgrouter", dns=["localhost"], ips=["127.0.0.1"])
    r = start(aq_routers, tls_certificate=str(leaf.cert_path), tls_private_key=str(leaf.key_path))
    name, pw = aq_cluster.make_role("scram")
    with connect(r.dsn(user=name, password=pw, sslmode="require",
                       channel_binding="require")) as c:
        assert c.execute("SELECT session_user::text").fetchone()[0] == name
    assert aq_cluster.primary.backends(user=name), "no server connection of the role"
    for user, password in ((name, "wrong"), ("no_such_role_cb", pw)):
        with pytest.raises(psycopg.OperationalError) as err:
            connect(r.dsn(user=user, password=password, sslmode="require",
                          channel_binding="require"))
        assert f'password authentication failed for user "{user}"' in str(err.value), err.value


def test_md5_role_logs_in_and_the_router_answers_md5_from_the_stored_hash(aq_cluster, aq_routers):
    r = start(aq_routers)
    name, pw = aq_cluster.make_role("md5")
    stored = aq_cluster.primary.scalar(
        "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,), db="postgres")
    assert stored.startswith("md5")
    with connect(r.dsn(user=name, password=pw)) as c:
        assert c.execute("SELECT session_user::text").fetchone()[0] == name
        auth = [x["auth"] for x in admin_rows(r, "SHOW CLIENTS") if x["user"] == name]
        assert auth == ["auth_query/md5"]


def test_show_clients_names_the_method(aq_cluster, aq_routers):
    r = start(aq_routers)
    name, pw = aq_cluster.make_role("scram")
    with connect(r.dsn(user=name, password=pw)), connect(r.dsn()):
        auth = {x["user"]: x["auth"] for x in admin_rows(r, "SHOW CLIENTS")}
    assert auth[name] == "auth_query/scram-sha-256"
    assert auth["app"] == "scram-sha-256"


def test_users_toml_entries_do_not_use_the_lookup(aq_routers):
    r = start(aq_routers)
    assert who_am_i(r, "app", "app-secret") == ("app", "app")
    assert lookups(r) == 0 and lookups(r, "not_found") == 0
    # The lookup user has login = false: it cannot come in through the router.
    err = login_error(r, "pgrouter_auth", "lookup-secret")
    assert sqlstate(err) == "28000"


# -------------------------------------------------------------- refusals --
def test_wrong_password_and_unknown_user_get_the_same_answer(aq_cluster, aq_routers):
    r = start(aq_routers)
    name, pw = aq_cluster.make_role("scram")
    wrong = login_error(r, name, pw + "x")
    ghost = f"ghost_{uuid.uuid4().hex[:6]}"
    unknown = login_error(r, ghost, "whatever")
    assert sqlstate(wrong) == sqlstate(unknown) == "28P01"
    assert str(wrong).replace(name, "U") == str(unknown).replace(ghost, "U")
    assert "password authentication failed" in str(wrong)
    log = full_log(r)
    assert "wrong password" in log and "unknown user" in log
    md5name, md5pw = aq_cluster.make_role("md5")
    assert sqlstate(login_error(r, md5name, "nope")) == "28P01"
    # The right password still works after the failures.
    assert who_am_i(r, name, pw) == (name, name)


def direct_login_error(server, user: str, password: str) -> Exception:
    """The error of an asyncpg login to PostgreSQL itself."""
    async def main():
        try:
            conn = await asyncpg.connect(host=server.host, port=server.port, user=user,
                                         password=password, database=APP_DB)
        except Exception as exc:  # noqa: BLE001
            return exc
        await conn.close()
        return None
    exc = run_async(main())
    assert exc is not None, f"PostgreSQL accepted the login as {user}"
    return exc


@pytest.mark.parametrize("kind", ["scram", "md5"])
def test_a_role_that_may_not_log_in_is_refused_as_postgres_refuses_it(aq_cluster, aq_routers, kind):
    """PostgreSQL refuses a NOLOGIN role once its password is proved, with
    28000 `role "…" is not permitted to log in`; a wrong password gets 28P01
    as for any user, so that nobody without the password learns the role
    exists. The router answered 28P01 to the right password too. Nothing of
    the role's reaches a server; after ALTER ROLE … LOGIN it logs in at
    once (the refusal is looked up again, at most once a second), not
    after cache_ttl_s."""
    r = start(aq_routers)
    name, pw = aq_cluster.make_role(kind)
    aq_cluster.primary.sql(f"ALTER ROLE {name} NOLOGIN", db="postgres")
    direct = direct_login_error(aq_cluster.primary, name, pw)
    direct_wrong = direct_login_error(aq_cluster.primary, name, "nope")
    assert (sqlstate(direct), str(direct)) == ("28000", f'role "{name}" is not permitted to log in')
    assert sqlstate(direct_wrong) == "28P01"
    for _ in range(2):  # the lookup's answer, then the cached one
        err = login_error(r, name, pw)
        assert (sqlstate(err), str(err)) == (sqlstate(direct), str(direct))
        wrong = login_error(r, name, "nope")
        assert (sqlstate(wrong), str(wrong)) == (sqlstate(direct_wrong), str(direct_wrong))
    assert aq_cluster.primary.backends(user=name) == []
    assert "the role may not log in" in full_log(r)
    aq_cluster.primary.sql(f"ALTER ROLE {name} LOGIN", db="postgres")
    time.sleep(1.1)  # past the once-a-second limit of lookups after a refusal
    assert who_am_i(r, name, pw) == (name, name)


# The default query: no rolvaliduntil condition (a SECURITY DEFINER twin of
# it, so that the non-superuser lookup role may run it).
NO_EXPIRY_QUERY = "SELECT rolname, rolpassword, rolcanlogin FROM pgrouter.lookup_any($1)"
NO_EXPIRY_FUNCTION = """
CREATE OR REPLACE FUNCTION pgrouter.lookup_any(p_user text)
  RETURNS TABLE (rolname name, rolpassword text, rolcanlogin boolean)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $$
  SELECT rolname, rolpassword, rolcanlogin FROM pg_catalog.pg_authid WHERE rolname = p_user
$$;
GRANT EXECUTE ON FUNCTION pgrouter.lookup_any(text) TO pgrouter_auth;
"""


@pytest.mark.parametrize("kind", ["scram", "md5"])
def test_an_expired_role_is_refused_as_postgres_refuses_it(aq_cluster, aq_routers, kind):
    """With a lookup that does not look at rolvaliduntil (the default query),
    the router accepts the password of an expired role and then cannot log
    in to the server (PostgreSQL answers an expired role with a made-up
    SCRAM salt). The client must read what PostgreSQL says, 28P01
    "password authentication failed", at every attempt (it got 08006 "could
    not connect to the server ... SCRAM salt", then 28P01 with that text)."""
    aq_cluster.primary.sql(NO_EXPIRY_FUNCTION, db=APP_DB)
    r = start(aq_routers, query=NO_EXPIRY_QUERY)
    name, pw = aq_cluster.make_role(kind)
    aq_cluster.primary.sql(f"ALTER ROLE {name} VALID UNTIL '2000-01-01'", db="postgres")
    for _ in range(2):
        err = login_error(r, name, pw)
        assert sqlstate(err) == "28P01", err
        assert f'password authentication failed for user "{name}"' in str(err), err
        assert "salt" not in str(err) and "pg_hba" not in str(err), err
    assert "server login with the client's credentials is impossible" in full_log(r)


def test_a_server_login_the_router_cannot_make_gets_the_same_answer_every_time(aq_routers):
    """plainuser's server login asks a cleartext password over plain TCP,
    which the router does not send for auth_query users. The first client
    got 08006 "could not connect to the server", the ones during the
    back-off 28P01 "server refused the connection": the same error now."""
    r = start(aq_routers)
    first = login_error(r, "plainuser", "plain-secret")
    second = login_error(r, "plainuser", "plain-secret")
    assert sqlstate(first) == sqlstate(second) == "08006", (first, second)
    assert str(first) == str(second)
    assert "cleartext" in str(first), first


def test_lookup_failure_names_auth_query(aq_routers):
    r = start(aq_routers, query="SELECT rolname, rolpassword FROM no_such_function($1)")
    err = login_error(r, "someone", "pw")
    assert sqlstate(err) == "28000"
    assert "auth_query" in str(err) and "no_such_function" in str(err)
    assert lookups(r, "error") >= 1


def test_a_hung_lookup_is_named_and_cancelled_on_the_server(aq_cluster, aq_routers):
    """A lookup that does not answer (a lock, a slow function) used to hold
    the login until client_login_timeout_ms ("login timed out", 08P01, not
    naming auth_query) and to keep running on the server after the client
    had gone: one busy backend per login. It is given up in time to say so,
    and cancelled."""
    from harness.util import wait_until
    sleepy = "SELECT rolname, rolpassword FROM pgrouter.lookup($1), pg_sleep(60)"
    r = start(aq_routers, query=sleepy, client_login_timeout_ms=2000)
    started = time.monotonic()
    err = login_error(r, "someone", "pw")
    assert time.monotonic() - started < 2.0
    assert sqlstate(err) == "08006", err
    assert "auth_query" in str(err) and "did not answer" in str(err), err

    def sleeping():
        return [b for b in aq_cluster.primary.backends(user="pgrouter_auth")
                if b["state"] == "active" and "pg_sleep" in (b["query"] or "")]
    wait_until(lambda: not sleeping(), 5, what="the hung lookup to be cancelled")
    assert who_am_i(r, "app", "app-secret") == ("app", "app")


def test_unreachable_server_for_the_lookup_is_08006(aq_cluster, aq_routers):
    dead = {"name": APP_DB, "host": "127.0.0.1", "port": 1, "database_name": APP_DB,
            "role": "primary"}
    r = aq_routers.start(general=admin_general(connect_timeout_ms=500),
                         users=[app_user(), lookup_user_entry()], databases=[dead],
                         auth_query={"user": "pgrouter_auth", "query": LOOKUP_QUERY})
    err = login_error(r, "someone", "pw")
    assert sqlstate(err) == "08006", err
    assert "auth_query" in str(err)


# ------------------------------------------------------- connection caps --
def test_connection_caps_cover_auth_query_users(aq_cluster, aq_routers):
    """max_db_connections counts every pool's server connections, those
    made at login for auth_query users too (their pools were left out: such
    a user could open connections past the cap)."""
    r = start(aq_routers, max_db_connections=1, checkout_timeout_ms=800)
    name, pw = aq_cluster.make_role("scram")
    assert who_am_i(r, name, pw) == (name, name)  # lookup cached, its pool made
    holder = connect(r.dsn(), autocommit=False)
    try:
        holder.execute("SELECT 1")  # the database's only connection, in a transaction
        with connect(r.dsn(user=name, password=pw)) as c:
            with pytest.raises(psycopg.Error) as err:
                c.execute("SELECT 1")
        assert "timed out waiting for a server connection" in str(err.value), str(err.value)
        routed = [b for b in aq_cluster.primary.backends(db=APP_DB)
                  if b["user"] in ("app", "pgrouter_auth", name)]
        assert len(routed) <= 1, routed
    finally:
        holder.commit()
        holder.close()
    # With the connection idle again, the auth_query user gets it.
    assert who_am_i(r, name, pw) == (name, name)



# ------------------------------------------------------ unused pools go --
def user_series(router, name: str) -> list:
    """The metric samples labelled with user `name`."""
    return [s for s in scrape(router).samples if s.labels.get("user") == name]


def pool_is_bounded(router, name: str, pw: str, size: int) -> None:
    """`size` clients holding a server connection in a transaction each
    leave none for one more: it times out waiting, and PostgreSQL never saw
    more than `size` backends of the role."""
    holders = [connect(router.dsn(user=name, password=pw), autocommit=False)
               for _ in range(size)]
    try:
        for h in holders:
            h.execute("SELECT 1")
        assert pools(router, user=name), "listed in SHOW POOLS while used"
        assert user_series(router, name), "and in the metrics"
        with connect(router.dsn(user=name, password=pw)) as c:
            with pytest.raises(psycopg.Error) as err:
                c.execute("SELECT 1")
        assert "timed out waiting for a server connection" in str(err.value), str(err.value)
    finally:
        for h in holders:
            h.close()


def test_an_unused_users_pools_are_dropped_and_made_again_at_its_next_login(aq_cluster,
                                                                          aq_routers):
    """Once server_idle_timeout_ms has closed its last server connection
    and no client is on them, an auth_query user's pools leave SHOW POOLS
    and the metrics; its next login makes new ones, as bounded."""
    r = start(aq_routers, server_idle_timeout_ms=500, default_pool_size=2,
              checkout_timeout_ms=800)
    name, pw = aq_cluster.make_role("scram")
    other, other_pw = aq_cluster.make_role("scram")
    other_session = connect(r.dsn(user=other, password=other_pw))
    try:
        for _round in range(2):
            pool_is_bounded(r, name, pw, 2)
            wait_until(lambda: not pools(r, user=name), timeout=10,
                       what="the unused pools to be dropped")
            assert user_series(r, name) == []
            # A client on its pools keeps them, connection or not.
            assert pools(r, user=other)
            assert who_am_i(r, name, pw) == (name, name)
        assert other_session.execute("SELECT session_user::text").fetchone() == (other,)
    finally:
        other_session.close()
    assert "dropped the unused pools of a learnt user" in full_log(r)

# -------------------------------------------------------- password change --
def test_changed_password_works_after_the_ttl(aq_cluster, aq_routers):
    r = start(aq_routers, cache_ttl_s=1)
    name, old = aq_cluster.make_role("scram")
    assert who_am_i(r, name, old) == (name, name)
    new = old + "-new"
    aq_cluster.set_password(name, new)
    time.sleep(1.3)
    assert who_am_i(r, name, new) == (name, name)
    assert sqlstate(login_error(r, name, old)) == "28P01"
    assert lookups(r) >= 2


@pytest.mark.parametrize("kind", ["scram", "md5"])
def test_cache_ttl_0_looks_up_at_every_login(aq_cluster, aq_routers, kind):
    """SPEC: cache_ttl_s = 0 means "look up at every login": a changed
    password is the only one accepted at the very next login, and a dropped
    role can no longer log in."""
    r = start(aq_routers, cache_ttl_s=0)
    name, old = aq_cluster.make_role(kind)
    before = lookups(r)
    assert who_am_i(r, name, old) == (name, name)
    assert who_am_i(r, name, old) == (name, name)
    assert lookups(r) - before == 2
    new = old + "-new"
    aq_cluster.set_password(name, new, **({"kind": "md5"} if kind == "md5" else {}))
    assert sqlstate(login_error(r, name, old)) == "28P01"
    assert who_am_i(r, name, new) == (name, name)


def test_changed_password_works_before_the_ttl_once_the_cached_secret_fails(aq_cluster,
                                                                             aq_routers):
    r = start(aq_routers, cache_ttl_s=3600)
    # md5: the client's answer is checked again against the re-fetched hash,
    # so the very first login with the new password works.
    name, old = aq_cluster.make_role("md5")
    assert who_am_i(r, name, old) == (name, name)
    aq_cluster.set_password(name, "md5-new-password", kind="md5")
    time.sleep(1.1)  # re-fetches after a failure are at least 1 s apart
    assert who_am_i(r, name, "md5-new-password") == (name, name)
    # SCRAM: the failed exchange used the old salt and cannot be replayed, but
    # it re-fetched the secret, so the next attempt works (long before the TTL).
    name, old = aq_cluster.make_role("scram")
    assert who_am_i(r, name, old) == (name, name)
    aq_cluster.set_password(name, "scram-new-password")
    time.sleep(1.1)
    try:
        first = who_am_i(r, name, "scram-new-password")
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
        first = who_am_i(r, name, "scram-new-password")
    assert first == (name, name)


@pytest.mark.parametrize("kind", ["scram", "md5"])
def test_a_role_created_after_a_failed_login_logs_in_at_its_first_attempt(aq_cluster,
                                                                          aq_routers, kind):
    """"Not found" was cached for cache_ttl_s like a secret: a role created
    after someone tried its name was refused at its first login with the
    right password (PostgreSQL accepts it); only the next attempt worked."""
    r = start(aq_routers, cache_ttl_s=3600)
    name = f"late_{uuid.uuid4().hex[:8]}"
    assert sqlstate(login_error(r, name, "late-pw")) == "28P01"
    with aq_cluster.primary.connect("postgres") as conn:
        conn.execute(f"SET password_encryption = '{'md5' if kind == 'md5' else 'scram-sha-256'}'")
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'late-pw'")
        if kind == "md5":
            conn.execute(f"GRANT md5_users TO {name}")
    time.sleep(1.1)  # re-fetches are at least 1 s apart
    assert who_am_i(r, name, "late-pw") == (name, name)


# ------------------------------------------------------------- one lookup --
def test_a_burst_of_first_logins_runs_one_lookup(aq_cluster, aq_routers):
    r = start(aq_routers, max_clients=500)
    name, pw = aq_cluster.make_role("scram")
    before = lookups(r)

    async def burst():
        async def one():
            conn = await asyncpg.connect(**r.connect_kwargs(user=name, password=pw))
            try:
                return await conn.fetchval("SELECT session_user::text")
            finally:
                await conn.close()
        import asyncio
        return await asyncio.gather(*(one() for _ in range(100)))

    assert run_async(burst(), timeout=120) == [name] * 100
    assert lookups(r) - before == 1
    # The server never had more connections of the role than the pool allows.
    assert len(aq_cluster.primary.backends(user=name)) <= 10


def test_sessions_of_learnt_users_survive_a_reload(aq_cluster, aq_routers):
    from harness.ops import reload_marks, wait_reload
    r = start(aq_routers)
    name, pw = aq_cluster.make_role("scram")
    with connect(r.dsn(user=name, password=pw)) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
        marks = reload_marks(r)
        cfg = dict(r.config)
        cfg["general"] = dict(cfg["general"], checkout_timeout_ms=6000)
        r.write_files(config=cfg)
        r.reload()
        wait_reload(r, marks)
        for _ in range(3):
            assert c.execute("SELECT session_user::text").fetchone() == (name,)
    assert who_am_i(r, name, pw) == (name, name)


# ------------------------------------------------------------ config check --
def test_pgrouter_check_reports_both_sections(tmp_path):
    from harness.router import router_binary
    router = tmp_path / "router.toml"
    users = tmp_path / "users.toml"
    router.write_text(
        '[general]\nlisten = "127.0.0.1:0"\n\n'
        '[[databases]]\nname = "app"\nhost = "127.0.0.1"\n\n'
        '[auth_query]\nuser = "nobody"\nquery = "SELECT 1"\nttl = 5\n\n'
        '[jit]\napi_url = "ftp://x"\ntimeout_ms = 0\n')
    users.write_text('[[users]]\nname = "app"\ndatabase = "app"\npassword = "pw"\n')
    proc = subprocess.run([str(router_binary()), "check", "--config", str(router),
                           "--users", str(users)], capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    for expected in [
        f"{router}:9: auth_query.user: users.toml has no [[users]] entry named \"nobody\"",
        f"{router}:10: auth_query.query: must take the user name as the parameter $1",
        f"{router}:11: auth_query.ttl: unknown key \"ttl\"",
        f"{router}:14: jit.api_url: \"ftp://x\" is not an http:// or https:// URL",
        f"{router}:15: jit.timeout_ms: must be at least 1",
    ]:
        assert expected in out, f"{expected!r} not in:\n{out}"


# ----------------------------------------------------------- with [jwt] --
def start_with_jwt_auto_provision(aq_cluster, aq_routers):
    """A router with `[auth_query]` and `[jwt]` (auto_provision: passwords
    that are not tokens are checked in cleartext), and the token key."""
    from harness.jwt_setup import authenticator_user, ensure_roles, jwt_section
    from harness.jwt_tokens import SigningKey
    ensure_roles(aq_cluster)
    key = SigningKey("rsa")
    pem = aq_routers.base_dir / "jwt.pem"
    key.write_public_pem(pem)
    r = aq_routers.start(
        general=admin_general(), users=[app_user(), lookup_user_entry(), authenticator_user()],
        auth_query={"user": "pgrouter_auth", "query": LOOKUP_QUERY},
        jwt=jwt_section(public_key_file=str(pem)))
    return r, key


def test_with_jwt_auto_provision_passwords_go_to_auth_query_and_jwts_to_jwt(aq_cluster,
                                                                         aq_routers):
    from harness.jwt_tokens import claims
    r, key = start_with_jwt_auto_provision(aq_cluster, aq_routers)
    name, pw = aq_cluster.make_role("scram")
    with connect(r.dsn(user=name, password=pw)) as c:
        assert c.execute("SELECT session_user::text").fetchone() == (name,)
        auth = {x["user"]: x["auth"] for x in admin_rows(r, "SHOW CLIENTS")}
    assert auth[name] == "auth_query/password"
    assert sqlstate(login_error(r, name, "wrong")) == "28P01"
    jwt = key.sign(claims("jwt_person", role="web_user"))
    with connect(r.dsn(user="jwt_person", password=jwt)) as c:
        assert c.execute("SELECT current_user::text").fetchone() == ("web_user",)
    # A role that may not log in, its password checked in cleartext:
    # PostgreSQL's 28000 once the password is right, 28P01 otherwise.
    nologin, nologin_pw = aq_cluster.make_role("scram")
    aq_cluster.primary.sql(f"ALTER ROLE {nologin} NOLOGIN", db="postgres")
    err = login_error(r, nologin, nologin_pw)
    assert (sqlstate(err), str(err)) == ("28000", f'role "{nologin}" is not permitted to log in')
    assert sqlstate(login_error(r, nologin, "wrong")) == "28P01"


# ---------------------------------------------------------------- SASLprep --
def test_a_password_saslprep_rewrites(aq_cluster, aq_routers):
    """A role whose password SASLprep rewrites, known only to PostgreSQL:
    proved by SCRAM (the client prepared it), and sent in cleartext where
    [jwt] with auto_provision takes passwords so (the router hashes it with
    the stored secret's salt to check it, and logs in to the server with
    the keys it derives)."""
    name, pw = aq_cluster.make_role("scram", password=SASLPREP_PASSWORD)
    assert who_am_i(start(aq_routers), name, pw) == (name, name)
    r, _ = start_with_jwt_auto_provision(aq_cluster, aq_routers)
    for password in (pw, SASLPREP_PREPARED):
        with connect(r.dsn(user=name, password=password)) as c:
            assert c.execute("SELECT session_user::text").fetchone() == (name,)
            auth = {x["user"]: x["auth"] for x in admin_rows(r, "SHOW CLIENTS")}
        assert auth[name] == "auth_query/password"
    assert sqlstate(login_error(r, name, "pass\u00adword")) == "28P01"
