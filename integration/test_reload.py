"""Hot reload (SPEC §5 "Operations", issue 5 item 1): SIGHUP, admin RELOAD
and file watching (in-place writes, rename-over, Kubernetes ConfigMap
`..data` symlink swaps) all reload; a good edit is applied under load
without client errors, a bad edit changes nothing and is reported; pools
whose settings did not change keep their server connections."""
from __future__ import annotations

import copy
import json
import threading
import time
import uuid

import psycopg
import pytest

from harness import tomlw, wire
from harness.clients import Timer, connect, in_thread, sqlstate
from harness.ops import (ConfigMapDir, admin_general, admin_rows, config_map, full_log, line_of,
                         pools, psql_admin, reload_error_text, reload_marks, scrape,
                         set_router_docs, use_config_map, wait_reload, write_by_rename,
                         write_in_place)
from harness.jwt_setup import jwt_db, keys, start_jwt_router  # noqa: F401  (fixtures)
from harness.jwt_tokens import claims
from harness.pg import APP_DB, APP_PASSWORD, APP_USER
from harness.router import app_user
from harness.util import free_port, wait_until

REMOVED_MSG = "was removed from the configuration"


def md5user(**kw) -> dict:
    u = {"name": "md5user", "database": APP_DB, "password": "md5-secret", "auth": "scram"}
    u.update(kw)
    return u


def plainuser(**kw) -> dict:
    u = {"name": "plainuser", "database": APP_DB, "password": "plain-secret", "auth": "scram"}
    u.update(kw)
    return u


def edit(router, config: dict | None = None, users: dict | None = None) -> None:
    """Rewrite both files (in place) from new dicts, without reloading."""
    router.write_files(config=config, users=users)


def reload_and_wait(router, how: str = "sighup", timeout: float = 10) -> str:
    before = reload_marks(router)
    if how == "sighup":
        router.reload()
    elif how == "admin":
        psql_admin(router, "RELOAD")
    else:
        raise ValueError(how)
    return wait_reload(router, before, timeout)


def login_error(router, user: str = APP_USER, password: str = APP_PASSWORD,
                db: str = APP_DB) -> wire.ServerError:
    """Log in over the raw protocol (SCRAM); the ErrorResponse that refused it."""
    try:
        conn = wire.connect(router.port, user, db, password)
    except wire.ServerError as exc:
        return exc
    conn.close()
    raise AssertionError(f"login as {user}/{db} was accepted")


def pool_size(router, database=APP_DB, user=APP_USER, role="primary") -> int:
    rows = pools(router, database=database, user=user, role=role)
    assert len(rows) == 1, rows
    return int(rows[0]["pool_size"])


# -------------------------------------------------------------- the load --
class Load:
    """`n` clients doing short transactions (and single statements) in a
    loop; every error is recorded with the client's number."""

    def __init__(self, router, table: str, n: int = 20):
        self.router = router
        self.table = table
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = 0
        self.errors: list[str] = []
        self.ready = threading.Barrier(n + 1, timeout=30)
        self.threads = [in_thread(self._run, i) for i in range(n)]
        self.ready.wait()

    def _run(self, i: int) -> None:
        try:
            conn = connect(self.router.dsn(application_name=f"load{i}"))
        except Exception as exc:  # noqa: BLE001
            with self.lock:
                self.errors.append(f"client {i} connect: {exc!r}")
            self.ready.wait()
            return
        self.ready.wait()
        n = 0
        try:
            while not self.stop.is_set():
                try:
                    if n % 2 == 0:
                        with conn.transaction():
                            conn.execute(f"INSERT INTO {self.table} (client, n) VALUES (%s, %s)", (i, n))
                            assert conn.execute("SELECT %s::int", (n,)).fetchone() == (n,)
                    else:
                        assert conn.execute("SELECT %s::int + 1", (n,)).fetchone() == (n + 1,)
                except Exception as exc:  # noqa: BLE001
                    with self.lock:
                        self.errors.append(f"client {i} iteration {n}: {sqlstate(exc)} {exc!r}")
                    if conn.closed:
                        return
                n += 1
                with self.lock:
                    self.done += 1
                time.sleep(0.003)
        finally:
            conn.close()

    def progress(self, at_least: int = 40, timeout: float = 15) -> None:
        """Wait until the clients have completed `at_least` more iterations."""
        start = self.done
        wait_until(lambda: self.done >= start + at_least, timeout,
                   what=f"{at_least} more iterations of the load (errors so far: {self.errors[:5]})")

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)
        assert not any(t.is_alive() for t in self.threads), "a load client hangs"


def test_reload_under_load(routers, primary, replica, table):
    primary.sql(f"CREATE TABLE {table} (id serial PRIMARY KEY, client int, n int)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    dbs = routers.databases()
    app2 = {"name": "app2", "host": "127.0.0.1", "port": primary.port, "database_name": APP_DB,
            "role": "primary"}
    users = [app_user(), app_user(database="app2")]
    router = routers.start(general=admin_general(metrics=True, default_pool_size=5,
                                                 checkout_timeout_ms=10000),
                           users=users, databases=dbs + [app2])
    stats_before = scrape(router)
    cfg = copy.deepcopy(router.config)
    users_doc = copy.deepcopy(router.users)

    # Clients of the database that will be removed: one idle, one inside a transaction.
    app2_idle = connect(router.dsn(db="app2"))
    app2_tx = connect(router.dsn(db="app2"), autocommit=False)
    assert app2_idle.execute("SELECT current_database()").fetchone() == (APP_DB,)
    old_password_session = connect(router.dsn())
    load = Load(router, table)
    try:
        load.progress()

        # 1. pool size 5 -> 8, applied in place.
        cfg["general"]["default_pool_size"] = 8
        edit(router, config=cfg)
        assert reload_and_wait(router) == "ok"
        assert pool_size(router) == 8
        assert pool_size(router, database="app2") == 8
        load.progress()

        # 2. a replica joins database app: reads go there at once.
        cfg["databases"] = routers.databases(with_replica=True) + [app2]
        edit(router, config=cfg)
        assert reload_and_wait(router) == "ok"
        assert len(pools(router, database=APP_DB, role="replica")) == 1
        with connect(router.dsn()) as c:
            assert c.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone() == \
                (replica.port, True)
        load.progress()

        # 3. a new user can log in at once.
        assert sqlstate(login_error(router, user="md5user", password="md5-secret")) == "28000"
        users_doc["users"].append(md5user())
        edit(router, users=users_doc)
        assert reload_and_wait(router) == "ok"
        with connect(router.dsn(user="md5user", password="md5-secret")) as c:
            assert c.execute("SELECT current_user").fetchone() == ("md5user",)
        load.progress()

        # 4. app's password changes: new logins need the new one; open sessions go on.
        users_doc["users"][0] = app_user(password="app-secret-NEW", server_password=APP_PASSWORD)
        edit(router, users=users_doc)
        assert reload_and_wait(router) == "ok"
        assert sqlstate(login_error(router)) == "28P01"
        with connect(router.dsn(password="app-secret-NEW")) as c:
            assert c.execute("SELECT current_user").fetchone() == (APP_USER,)
        assert old_password_session.execute("SELECT 'still here'").fetchone() == ("still here",)
        load.progress()

        # 5. database app2 (and its user entry) removed: its clients end at
        #    their next transaction boundary with a FATAL; nobody else notices.
        app2_tx.execute("SELECT 1")  # BEGIN ... (transaction open across the reload)
        cfg["databases"] = routers.databases(with_replica=True)
        users_doc["users"] = [u for u in users_doc["users"] if u["database"] != "app2"]
        edit(router, config=cfg, users=users_doc)
        assert reload_and_wait(router) == "ok"
        # The open transaction finishes normally.
        assert app2_tx.execute("SELECT 2").fetchone() == (2,)
        app2_tx.commit()
        for client in (app2_tx, app2_idle):
            with pytest.raises(psycopg.OperationalError) as err:
                client.execute("SELECT 3")
            assert sqlstate(err.value) == "08006", repr(err.value)
            assert REMOVED_MSG in str(err.value), str(err.value)
            assert "app2" in str(err.value)
        assert pools(router, database="app2") == []
        assert sqlstate(login_error(router, db="app2", password="app-secret-NEW")) == "3D000"
        load.progress()
    finally:
        load.finish()
        for c in (app2_idle, app2_tx, old_password_session):
            c.close()

    assert load.errors == [], "\n".join(load.errors[:20])
    assert load.done > 200
    assert primary.scalar(f"SELECT count(*) FROM {table}") >= load.done // 2

    # Stats survived the five reloads.
    stats_after = scrape(router)
    assert stats_after.value("pgrouter_reloads_total", result="ok") == 5
    assert stats_after.value("pgrouter_reloads_total", result="error") == 0
    before_tx = stats_before.value("pgrouter_transactions_total", database=APP_DB, role="primary")
    after_tx = stats_after.value("pgrouter_transactions_total", database=APP_DB, role="primary")
    assert after_tx >= before_tx + load.done // 2, (before_tx, after_tx, load.done)
    stats = {r["database"]: r for r in admin_rows(router, "SHOW STATS")}
    assert int(stats[APP_DB]["total_xact_count"]) >= load.done, (stats[APP_DB], load.done)
    assert router.alive()


def test_removed_user_ends_its_clients_at_next_transaction(routers):
    router = routers.start(general=admin_general(), users=[app_user(), md5user()])
    gone = connect(router.dsn(user="md5user", password="md5-secret"))
    stays = connect(router.dsn())
    try:
        assert gone.execute("SELECT current_user").fetchone() == ("md5user",)
        edit(router, users={"users": [app_user()]})
        assert reload_and_wait(router) == "ok"
        with pytest.raises(psycopg.OperationalError) as err:
            gone.execute("SELECT 1")
        assert sqlstate(err.value) == "08006", repr(err.value)
        assert REMOVED_MSG in str(err.value) and "md5user" in str(err.value)
        assert stays.execute("SELECT 1").fetchone() == (1,)
        assert sqlstate(login_error(router, user="md5user", password="md5-secret")) == "28000"
    finally:
        gone.close()
        stays.close()


def test_read_only_change_ends_open_sessions_at_next_transaction(routers, primary, table):
    """A session pins its read-only policy at login (default_transaction_read_only,
    routing to replicas): a reload that changes its user's `read_only`, either
    way, ends it at its next transaction boundary with 08006, as a removed
    user's; the transaction in progress finishes. Session mode included (its
    server connection is never released)."""
    primary.sql(f"CREATE TABLE {table} (x text)")
    primary.sql(f"GRANT ALL ON {table} TO PUBLIC")
    router = routers.start(general=admin_general(),
                           users=[app_user(), md5user(), plainuser(read_only=True, pool_mode="session")])
    tx = connect(router.dsn(user="md5user", password="md5-secret"))
    session = connect(router.dsn(user="plainuser", password="plain-secret"))
    stays = connect(router.dsn())
    try:
        assert session.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        tx.execute("BEGIN")
        tx.execute(f"INSERT INTO {table} VALUES ('before')")
        edit(router, users={"users": [app_user(), md5user(read_only=True),
                                      plainuser(read_only=False, pool_mode="session")]})
        assert reload_and_wait(router) == "ok"
        # The transaction in progress is not cut short.
        tx.execute(f"INSERT INTO {table} VALUES ('in the open transaction')")
        tx.execute("COMMIT")
        for conn, user in ((tx, "md5user"), (session, "plainuser")):
            with pytest.raises(psycopg.OperationalError) as err:
                conn.execute(f"INSERT INTO {table} VALUES ('after')")
            assert sqlstate(err.value) == "08006", repr(err.value)
            assert "read_only" in str(err.value) and user in str(err.value), str(err.value)
        assert stays.execute("SELECT 1").fetchone() == (1,)
        assert sorted(primary.sql(f"SELECT x FROM {table}")) == [("before",), ("in the open transaction",)]
        with connect(router.dsn(user="md5user", password="md5-secret")) as again:
            with pytest.raises(psycopg.Error) as err:
                again.execute(f"INSERT INTO {table} VALUES ('new session')")
            assert sqlstate(err.value) == "25006", repr(err.value)
        with connect(router.dsn(user="plainuser", password="plain-secret")) as again:
            assert again.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
    finally:
        tx.close()
        session.close()
        stays.close()


def test_pool_size_change_applies_in_place(routers, primary):
    """A waiting client of a pool that grows is served by the new capacity,
    without anyone releasing a connection; a shrunk pool closes its surplus."""
    router = routers.start(general=admin_general(checkout_timeout_ms=15000),
                           users=[app_user(pool_size=2)])
    holders = [connect(router.dsn(), autocommit=False) for _ in range(2)]
    try:
        for h in holders:
            h.execute("SELECT 1")
        assert len(primary.pool_backends(user=APP_USER, db=APP_DB)) == 2
        result = {}

        def waiter():
            with connect(router.dsn()) as c, Timer() as t:
                result["row"] = c.execute("SELECT 'served'").fetchone()
            result["t"] = t.elapsed
        th = in_thread(waiter)
        wait_until(lambda: int(pools(router)[0]["cl_waiting"]) == 1, 5, what="a waiting client")
        edit(router, users={"users": [app_user(pool_size=3)]})
        assert reload_and_wait(router) == "ok"
        th.join(5)
        assert result.get("row") == ("served",), \
            f"the waiting client was not served after the pool grew to 3 ({result})"
        assert pool_size(router) == 3
    finally:
        for h in holders:
            h.rollback()
            h.close()
    # Shrink to 1: the idle surplus goes away, the pool keeps working.
    with connect(router.dsn()) as c:
        edit(router, users={"users": [app_user(pool_size=1)]})
        assert reload_and_wait(router) == "ok"
        assert pool_size(router) == 1
        for i in range(5):
            assert c.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        wait_until(lambda: len(primary.pool_backends(user=APP_USER, db=APP_DB)) <= 1, 10,
                   what="the shrunk pool to close its surplus server connections")


def test_unchanged_pools_keep_their_server_connections(routers, primary):
    router = routers.start(general=admin_general(),
                           users=[app_user(pool_size=2), md5user(pool_size=2)])

    def open_both():
        """Two concurrent transactions, so the pool has two server connections;
        returns their backend pids."""
        cs = [connect(router.dsn(), autocommit=False) for _ in range(2)]
        try:
            return {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in cs}
        finally:
            for c in cs:
                c.rollback()
                c.close()

    pids = open_both()
    assert len(pids) == 2
    with connect(router.dsn(user="md5user", password="md5-secret")) as m:
        m.execute("SELECT 1")
    on_server = {b["pid"] for b in primary.pool_backends(user=APP_USER, db=APP_DB)}
    assert on_server == pids
    servers_before = {int(r["backend_pid"]) for r in admin_rows(router, "SHOW SERVERS")
                      if r["user"] == APP_USER}
    assert servers_before == pids

    # Only md5user changes; plainuser is added.
    edit(router, users={"users": [app_user(pool_size=2), md5user(pool_size=4), plainuser()]})
    assert reload_and_wait(router) == "ok"
    assert pool_size(router, user="md5user") == 4
    with connect(router.dsn(user="plainuser", password="plain-secret")) as p:
        assert p.execute("SELECT current_user").fetchone() == ("plainuser",)
    assert open_both() == pids, "app's pool did not keep its server connections"
    assert {b["pid"] for b in primary.pool_backends(user=APP_USER, db=APP_DB)} == pids
    # A reload with no change at all keeps them too.
    assert reload_and_wait(router, "admin") == "ok"
    assert open_both() == pids



@pytest.mark.parametrize("key,value", [("checkout_timeout_ms", 1000), ("connect_timeout_ms", 4000),
                                       ("server_idle_timeout_ms", 500000),
                                       ("server_lifetime_ms", 3000000), ("ban_time_ms", 20000),
                                       ("min_pool_size", 1)])
def test_pool_timeout_change_keeps_server_connections_and_applies(routers, primary, key, value):
    """A reload that changed only a pool timeout (or `min_pool_size`)
    replaced every pool: all server connections were closed and opened
    again, and clients queued for the old pool stayed there. Like a size
    change, it applies in place: the pools keep their connections and use
    the new value."""
    router = routers.start(general=admin_general(checkout_timeout_ms=15000, ban_time_ms=10000),
                           users=[app_user(pool_size=2)])
    cs = [connect(router.dsn(), autocommit=False) for _ in range(2)]
    pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in cs}
    for c in cs:
        c.rollback()
    cfg = copy.deepcopy(router.config)
    cfg["general"][key] = value
    edit(router, config=cfg)
    assert reload_and_wait(router) == "ok"
    assert config_map(router)[key][0] == str(value)
    try:
        assert {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in cs} == pids, \
            f"changing {key} replaced the pool's server connections"
        if key == "checkout_timeout_ms":
            # The pool (both connections held) uses the new timeout.
            with connect(router.dsn()) as waiter, Timer() as t:
                with pytest.raises(psycopg.errors.QueryCanceled):
                    waiter.execute("SELECT 1")
            assert t.elapsed < 5, f"the old checkout_timeout_ms still applies ({t.elapsed:.1f}s)"
    finally:
        for c in cs:
            c.rollback()
            c.close()
    assert {b["pid"] for b in primary.pool_backends(user=APP_USER, db=APP_DB)} >= pids

def test_unreachable_server_does_not_block_reload(routers):
    router = routers.start(general=admin_general(connect_timeout_ms=8000))
    cfg = copy.deepcopy(router.config)
    cfg["databases"] = routers.databases() + [
        {"name": APP_DB, "host": "127.0.0.1", "port": free_port(), "database_name": APP_DB,
         "role": "replica"},
        {"name": APP_DB, "host": "192.0.2.1", "port": 5432, "database_name": APP_DB,
         "role": "replica"},
    ]
    with connect(router.dsn()) as c:
        edit(router, config=cfg, users={"users": [app_user(), md5user()]})
        with Timer() as t:
            assert reload_and_wait(router, timeout=20) == "ok"
        assert t.elapsed < 3, f"the reload took {t.elapsed:.1f}s"
        with connect(router.dsn(user="md5user", password="md5-secret")) as m:
            assert m.execute("SELECT current_user").fetchone() == ("md5user",)
        with c.transaction():
            assert c.execute("SELECT 1").fetchone() == (1,)
    assert len(pools(router, user=APP_USER, role="replica")) == 2


# ----------------------------------------------------------------- bad edits --
BAD_EDITS = {
    # name: (file, how to break the text, the line's marker, key expected in the message)
    "broken_toml": ("router.toml", lambda t: t.replace('pool_mode = "transaction"',
                                                       'pool_mode = "transaction\nmin_pool_size = 0'),
                    'pool_mode = "transaction', None),
    "unknown_key": ("router.toml", lambda t: t.replace("[general]\n", "[general]\npool_sizee = 3\n"),
                    "pool_sizee", "pool_sizee"),
    "bad_value": ("router.toml", lambda t: t.replace('pool_mode = "transaction"', 'pool_mode = "sometimes"'),
                  "sometimes", "pool_mode"),
    "wrong_type": ("router.toml", lambda t: t.replace("default_pool_size = 9", 'default_pool_size = "nine"'),
                   '"nine"', "default_pool_size"),
    # Accepted once, this would end every client with 08P01 at its next query.
    "tiny_max_message_size": ("router.toml",
                              lambda t: t.replace("max_message_size = 268435456", "max_message_size = 1"),
                              "max_message_size = 1", "max_message_size"),
    # A CA file that does not load: refused with file, line and key, as
    # `pgrouter check` and start-up refuse it (test_config_check.py).
    "server_tls_ca_missing": ("router.toml",
                              lambda t: t.replace("[general]\n", '[general]\nserver_tls = "verify-full"\n'
                                                  'server_tls_ca = "/nonexistent/ca.pem"\n'),
                              "server_tls_ca =", "general.server_tls_ca"),
    # [jit] api_ca is read by the router, not by the config loader: a
    # reload it breaks used to be logged as "[jit]: api_ca ..." with no
    # file, line or key.
    "jit_api_ca_missing": ("router.toml",
                           lambda t: t + '\n[jit]\napi_url = "https://127.0.0.1:9/check"\n'
                                         'api_ca = "/nonexistent/jit-ca.pem"\n',
                           "api_ca =", "jit.api_ca"),
    "users_bad_value": ("users.toml", lambda t: t.replace('auth = "scram"', 'auth = "kerberos"'),
                        "kerberos", "auth"),
    "users_unknown_key": ("users.toml", lambda t: t.replace('auth = "scram"', 'auth = "scram"\npasword = "x"'),
                          "pasword", "pasword"),
}


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_bad_edit_keeps_running_config_and_is_reported(routers, case):
    fname, breaker, marker, key = BAD_EDITS[case]
    router = routers.start(general=admin_general(metrics=True, default_pool_size=4))
    cfg = copy.deepcopy(router.config)
    cfg["general"]["default_pool_size"] = 9  # a valid change riding along: must not apply
    users_doc = {"users": [app_user(), md5user()]}  # likewise
    router_text, users_text = tomlw.dumps(cfg), tomlw.dumps(users_doc)
    if fname == "router.toml":
        router_text = breaker(router_text)
        bad_text = router_text
    else:
        users_text = breaker(users_text)
        bad_text = users_text
    assert marker in bad_text
    line = line_of(bad_text, marker)
    write_in_place(router.config_path, router_text)
    write_in_place(router.users_path, users_text)

    with connect(router.dsn()) as client:
        before = reload_marks(router)
        router.reload()
        assert wait_reload(router, before) == "error"
        # Nothing changed and nothing broke.
        assert client.execute("SELECT 1").fetchone() == (1,)
        assert pool_size(router) == 4
        assert sqlstate(login_error(router, user="md5user", password="md5-secret")) == "28000"
        with connect(router.dsn()) as new:
            assert new.execute("SELECT 2").fetchone() == (2,)

        # Reported: the log (at ERROR, with file:line and key) ...
        logged = reload_error_text(router, before[1])
        assert "ERROR" in logged.split("\n", 1)[0], logged
        assert f"{fname}:{line}" in logged, f"expected {fname}:{line} in:\n{logged}"
        if key:
            assert key in logged, logged
        # ... the metrics ...
        m = scrape(router)
        assert m.value("pgrouter_reloads_total", result="error") == 1
        assert m.value("pgrouter_reloads_total", result="ok") == 0
        assert m.value("pgrouter_last_reload_successful") == 0
        assert m.value("pgrouter_last_reload_timestamp_seconds") > time.time() - 60
        # ... and SHOW CONFIG.
        conf = config_map(router)
        assert conf["last_reload"][0] == "error", conf["last_reload"]
        assert f"{fname}:{line}" in conf["last_reload_message"][0], conf["last_reload_message"]
        assert conf["default_pool_size"][0] == "4"

        # Fixing the file makes the next reload succeed.
        write_in_place(router.config_path, tomlw.dumps(cfg))
        write_in_place(router.users_path, tomlw.dumps(users_doc))
        assert reload_and_wait(router) == "ok"
        assert pool_size(router) == 9
        assert client.execute("SELECT 3").fetchone() == (3,)
        with connect(router.dsn(user="md5user", password="md5-secret")) as m5:
            assert m5.execute("SELECT 1").fetchone() == (1,)
        m = scrape(router)
        assert m.value("pgrouter_reloads_total", result="ok") == 1
        assert m.value("pgrouter_last_reload_successful") == 1
        assert config_map(router)["last_reload"][0] == "ok"


BAD_KEY_FILES = {
    # name: (file contents, or None for no file; words expected in the message)
    "missing": (None, "cannot read"),
    "not_pem": ("this is not a key\n", "PEM"),
    "unusable": (None, "Ed25519"),  # an Ed25519 key with algorithms = ["RS256"]
}


@pytest.mark.parametrize("case", list(BAD_KEY_FILES))
def test_bad_jwt_key_file_is_reported_with_file_line_and_key(routers, jwt_db, keys, case):
    """[jwt] public_key_file is read by the router, not by the config
    loader, but a reload it breaks is reported like any bad edit:
    `router.toml:<line>: jwt.public_key_file: ...`, and nothing changes."""
    router = start_jwt_router(routers, keys["rsa"])
    contents, word = BAD_KEY_FILES[case]
    bad = routers.base_dir / f"bad-{case}.pem"
    if case == "unusable":
        keys["ed25519"].write_public_pem(bad)
    elif contents is not None:
        bad.write_text(contents)
    cfg = copy.deepcopy(router.config)
    cfg["jwt"]["public_key_file"] = str(bad)
    if case == "unusable":
        cfg["jwt"]["algorithms"] = ["RS256"]
    cfg["jwt"]["leeway_s"] = 7  # a valid change riding along: must not apply
    router.write_files(config=cfg)
    text = router.config_path.read_text()
    line = line_of(text, "public_key_file")
    before = reload_marks(router)
    router.reload()
    assert wait_reload(router, before) == "error"
    logged = reload_error_text(router, before[1])
    assert f"router.toml:{line}: jwt.public_key_file: " in logged, logged
    assert str(bad) in logged and word in logged, logged
    # The running verifier stays: tokens still log in.
    user = "keyfile_user"
    tok = keys["rsa"].sign(claims(user, "web_user"))
    with connect(router.dsn(user=user, password=tok)) as c:
        assert c.execute("SELECT current_user").fetchone() == ("web_user",)


def test_bad_jwt_preflight_edit_is_reported_with_file_line_and_key(routers, jwt_db, keys):
    """The preflight the servers answer (SPEC: each role in `allowed_roles`
    must exist and be granted to `connect_as`) refuses a reload like any bad
    edit: logged at `router.toml:<line>: jwt.allowed_roles: ...` naming the
    role, nothing applied, the running config keeps logging tokens in."""
    from harness.jwt_setup import UNGRANTED_ROLE
    router = start_jwt_router(routers, keys["rsa"], jwt={"allowed_roles": ["web_user"]},
                              general=admin_general(metrics=True))
    missing = "no_such_role_" + uuid.uuid4().hex[:6]
    cfg = copy.deepcopy(router.config)
    cfg["jwt"]["allowed_roles"] = ["web_user", missing, UNGRANTED_ROLE]
    cfg["jwt"]["leeway_s"] = 7  # a valid change riding along: must not apply
    router.write_files(config=cfg)
    line = line_of(router.config_path.read_text(), "allowed_roles")
    before = reload_marks(router)
    router.reload()
    assert wait_reload(router, before) == "error"
    logged = reload_error_text(router, before[1])
    assert f"router.toml:{line}: jwt.allowed_roles: " in logged and missing in logged, logged
    assert UNGRANTED_ROLE in logged, logged
    assert scrape(router).value("pgrouter_reloads_total", result="error") == 1
    user = "preflight_user"
    with connect(router.dsn(user=user, password=keys["rsa"].sign(claims(user, "web_user")))) as c:
        assert c.execute("SELECT current_user").fetchone() == ("web_user",)


# ------------------------------------------------------------------ triggers --
def test_sighup_reloads_and_file_edits_alone_do_not_without_hot_reload(routers):
    router = routers.start(general=admin_general(default_pool_size=3, hot_reload=False))
    cfg = copy.deepcopy(router.config)
    cfg["general"]["default_pool_size"] = 7
    write_by_rename(router.config_path, tomlw.dumps(cfg))
    time.sleep(1.5)
    assert reload_marks(router) == (0, 0)
    assert pool_size(router) == 3
    assert reload_and_wait(router, "sighup") == "ok"
    assert pool_size(router) == 7


def test_admin_reload_command_reloads(routers):
    router = routers.start(general=admin_general(default_pool_size=3))
    cfg = copy.deepcopy(router.config)
    cfg["general"]["default_pool_size"] = 6
    edit(router, config=cfg)
    assert reload_and_wait(router, "admin") == "ok"
    assert pool_size(router) == 6


def wait_pool_size(router, size: int, timeout: float = 5) -> None:
    wait_until(lambda: pool_size(router) == size, timeout,
               what=f"pool_size {size} (log:\n{router.log()[-3000:]})")


def assert_one_reload(router, before, timeout: float = 5) -> None:
    """Exactly one more successful reload is logged (debounced), none failed."""
    assert wait_reload(router, before, timeout) == "ok"
    time.sleep(1.0)
    now = reload_marks(router)
    assert now == (before[0] + 1, before[1]), f"reloads before {before}, now {now}"


@pytest.mark.parametrize("how", ["in_place", "rename"])
def test_file_watch_reloads(routers, how):
    write = write_in_place if how == "in_place" else write_by_rename
    router = routers.start(general=admin_general(default_pool_size=3, hot_reload=True))
    time.sleep(0.5)  # let the watcher start
    cfg = copy.deepcopy(router.config)
    # router.toml
    cfg["general"]["default_pool_size"] = 7
    before = reload_marks(router)
    write(router.config_path, tomlw.dumps(cfg))
    assert_one_reload(router, before)
    wait_pool_size(router, 7)
    # users.toml
    before = reload_marks(router)
    write(router.users_path, tomlw.dumps({"users": [app_user(), md5user()]}))
    assert_one_reload(router, before)
    with connect(router.dsn(user="md5user", password="md5-secret")) as c:
        assert c.execute("SELECT current_user").fetchone() == ("md5user",)
    # A bad edit seen by the watcher is refused like any other.
    before = reload_marks(router)
    write(router.config_path, tomlw.dumps(cfg).replace("[general]\n", "[general]\nbogus_key = 1\n"))
    assert wait_reload(router, before) == "error"
    assert pool_size(router) == 7
    # ... and fixing it is picked up again.
    cfg["general"]["default_pool_size"] = 5
    before = reload_marks(router)
    write(router.config_path, tomlw.dumps(cfg))
    assert wait_reload(router, before) == "ok"
    wait_pool_size(router, 5)


@pytest.mark.parametrize("how", ["sighup", "admin"])
def test_watcher_does_not_hide_the_message_of_a_reload_that_applied_the_edit(routers, how):
    """Edit, then SIGHUP (or RELOAD) with hot_reload on: the signal applies
    the edit, then the watcher sees the same edit. Its follow-up reload used
    to find "no changes" and overwrite last_reload_message; the watcher now
    skips a reload when nothing it would read changed since the last one."""
    router = routers.start(general=admin_general(default_pool_size=3, hot_reload=True))
    time.sleep(0.5)  # let the watcher start
    cfg = copy.deepcopy(router.config)
    cfg["general"]["default_pool_size"] = 6
    before = reload_marks(router)
    edit(router, config=cfg)
    if how == "sighup":
        router.reload()
    else:
        psql_admin(router, "RELOAD")
    assert_one_reload(router, before, timeout=5)
    time.sleep(1.0)  # the watcher's debounce is 300 ms
    assert reload_marks(router) == (before[0] + 1, before[1]), full_log(router)[-3000:]
    conf = config_map(router)
    assert conf["last_reload"][0] == "ok"
    assert "default_pool_size" in conf["last_reload_message"][0], conf["last_reload_message"]
    assert pool_size(router) == 6
    # The watcher still reloads an edit nobody signalled.
    cfg["general"]["default_pool_size"] = 4
    before = reload_marks(router)
    write_in_place(router.config_path, tomlw.dumps(cfg))
    assert_one_reload(router, before)
    wait_pool_size(router, 4)


def test_file_watch_configmap_symlink_swap(routers):
    router = routers.start(general=admin_general(default_pool_size=3, hot_reload=True), wait=False)
    cm = ConfigMapDir(router.workdir / "configmap")
    use_config_map(router, cm)
    router.start()
    time.sleep(0.5)
    assert (cm.dir / "..data").is_symlink() and (cm.dir / "router.toml").is_symlink()
    with connect(router.dsn()) as client:
        for size in (7, 4):
            cfg = copy.deepcopy(router.config)
            cfg["general"]["default_pool_size"] = size
            users = {"users": [app_user()] + ([md5user()] if size == 7 else [])}
            router_text, users_text = set_router_docs(router, cfg, users)
            before = reload_marks(router)
            cm.publish(router_text, users_text)
            assert_one_reload(router, before)
            wait_pool_size(router, size)
            assert client.execute("SELECT %s::int", (size,)).fetchone() == (size,)
            if size == 7:
                with connect(router.dsn(user="md5user", password="md5-secret")) as c:
                    assert c.execute("SELECT 1").fetchone() == (1,)
            else:
                assert sqlstate(login_error(router, user="md5user", password="md5-secret")) == "28000"


# ---------------------------------------------------------------------- logs --
def test_json_logs_for_logins_and_reloads(routers):
    router = routers.start(general=admin_general(log_format="json"))
    with connect(router.dsn(application_name="jsonlog")) as c:
        c.execute("SELECT 1")
    login_error(router, password="wrong")
    cfg = copy.deepcopy(router.config)
    cfg["general"]["default_pool_size"] = 6
    bad = tomlw.dumps(cfg).replace("[general]\n", "[general]\nno_such_key = 1\n")
    write_in_place(router.config_path, bad)
    assert reload_and_wait(router) == "error"
    edit(router, config=cfg)
    assert reload_and_wait(router) == "ok"

    lines = [ln for ln in full_log(router).splitlines() if ln.strip()]
    records = []
    for ln in lines:
        try:
            records.append(json.loads(ln))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {ln!r}")
    text_of = [json.dumps(r) for r in records]
    logins = [r for r, t in zip(records, text_of) if "client logged in" in t]
    assert logins, text_of[:20]
    assert '"app"' in json.dumps(logins[0]) and "scram" in json.dumps(logins[0]).lower(), logins[0]
    failed = [t for t in text_of if "authentication failed" in t]
    assert failed and "app" in failed[0], text_of
    errs = [(r, t) for r, t in zip(records, text_of) if "NOT reloaded" in t]
    assert len(errs) == 1
    rec, t = errs[0]
    assert "ERROR" in t, rec
    assert f"router.toml:{line_of(bad, 'no_such_key')}" in t and "no_such_key" in t, rec
    assert any("configuration reloaded" in t for t in text_of)
