"""Query routing with a primary and a streaming replica (SPEC §5 "Routing"):
reads to the replica, writes to the primary, transactions, hints,
`SET pgrouter.role`, write functions, syntax errors, replica health and bans.

Every route is proven by the server itself: probes return
`inet_server_port()` and `pg_is_in_recovery()`.
"""
from __future__ import annotations

import copy
import threading
import time
import uuid

import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, run_async
from harness.ops import reload_marks, wait_reload
from harness.pg import APP_DB, APP_PASSWORD, APP_USER
from harness.router import app_user
from harness.routes import WHERE, Places, last_rows, replica_stopped, wait_replayed, where
from harness.util import wait_until

FAST_HEALTH = {"healthcheck_interval_ms": 200, "ban_time_ms": 1500}


@pytest.fixture(scope="module")
def objects(cluster):
    """Objects owned by app on the primary, replayed on the replica."""
    p = cluster.primary
    with p.connect("app") as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE IF NOT EXISTS rt_t (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO rt_t VALUES (1, 10), (2, 20) ON CONFLICT DO NOTHING")
        conn.execute("CREATE SEQUENCE IF NOT EXISTS rt_seq")
        conn.execute("CREATE OR REPLACE FUNCTION rt_writer() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        conn.execute("CREATE OR REPLACE FUNCTION rt_reader() RETURNS int LANGUAGE sql AS 'SELECT 2'")
        conn.execute("CREATE OR REPLACE PROCEDURE rt_proc(p int) LANGUAGE sql "
                     "AS 'INSERT INTO rt_t VALUES (p, 0) ON CONFLICT (id) DO UPDATE SET v = rt_t.v + 1'")
    wait_replayed(cluster)
    return cluster


@pytest.fixture
def places(cluster):
    return Places(cluster)


def split_router(routers, **general):
    return routers.start(general={**FAST_HEALTH, "write_functions": ["rt_writer"], **general},
                         with_replica=True)


# ------------------------------------------------------------------ reads --
def test_reads_go_to_replica(routers, objects, places):
    router = split_router(routers)
    with connect(router.dsn()) as conn:
        for _ in range(5):
            assert places.row(where(conn)) == "replica"
        # A table read, extended protocol with a parameter, a read-only function.
        assert places.row(where(conn, f"SELECT v, {WHERE} FROM rt_t WHERE id = %s", (1,))) == "replica"
        assert places.row(where(conn, f"SELECT rt_reader(), {WHERE}")) == "replica"
        assert places.row(where(conn, f"SELECT 1; SELECT {WHERE}")) == "replica"
        # A read-only CTE is a read.
        assert places.row(where(conn, f"WITH x AS (SELECT v FROM rt_t) SELECT count(*), {WHERE} FROM x")) \
            == "replica"


def test_asyncpg_reads_and_writes(routers, objects, places):
    router = split_router(routers)

    async def main():
        conn = await aconnect(router)  # default statement cache: named statements
        try:
            for i in range(5):
                row = await conn.fetchrow(f"SELECT $1::int AS i, {WHERE}", i)
                assert row["i"] == i and places.row(tuple(row)) == "replica", row
            row = await conn.fetchrow(
                f"UPDATE rt_t SET v = v WHERE id = $1 RETURNING id, {WHERE}", 1)
            assert places.row(tuple(row)) == "primary", row
        finally:
            await conn.close()
    run_async(main())


def test_asyncpg_simple_query_after_prepare_goes_to_the_primary(routers, objects, places, cluster):
    """asyncpg's `prepare()` sends Parse, Describe and Flush, no Sync; a
    read prepared so runs its batch on a replica. A simple Query next (what
    `execute()` without arguments and the COPY of `copy_records_to_table`
    send) ends that batch on PostgreSQL, and a write must reach the primary,
    not the replica the batch was on."""
    router = split_router(routers)

    async def main():
        conn = await aconnect(router)
        try:
            stmt = await conn.prepare(f"SELECT v, {WHERE} FROM rt_t WHERE id = $1")
            assert await conn.execute("UPDATE rt_t SET v = v + 0 WHERE id = 2") == "UPDATE 1"
            await conn.prepare("SELECT v FROM rt_t")
            tag = await conn.execute(
                "INSERT INTO rt_t VALUES (7001, 1), (7002, 2) ON CONFLICT (id) DO NOTHING")
            assert tag.startswith("INSERT 0"), tag
            await conn.prepare("SELECT v FROM rt_t")
            await conn.copy_records_to_table("rt_t", records=[(7003, 3)], columns=["id", "v"])
            # The prepared read still runs (on a replica).
            assert places.row(tuple(await stmt.fetchrow(1))[1:]) == "replica"
        finally:
            await conn.close()
    run_async(main())
    assert cluster.primary.sql("SELECT count(*) FROM rt_t WHERE id IN (7001, 7002, 7003)")[0][0] == 3
    cluster.primary.sql("DELETE FROM rt_t WHERE id > 7000")


# ----------------------------------------------------------------- writes --
def test_write_statements_go_to_primary(routers, objects, places, cluster):
    router = split_router(routers)
    tag = uuid.uuid4().hex[:8]
    sel_into = f"rt_into_{tag}"
    cases = [
        ("insert", f"INSERT INTO rt_t VALUES (1000 + (random()*100000)::int, 1) "
                   f"ON CONFLICT DO NOTHING RETURNING {WHERE}"),
        ("update", f"UPDATE rt_t SET v = v WHERE id = 1 RETURNING {WHERE}"),
        ("delete", f"DELETE FROM rt_t WHERE id = -1 RETURNING {WHERE}; SELECT {WHERE}"),
        ("for update", f"SELECT id, {WHERE} FROM rt_t WHERE id = 1 FOR UPDATE"),
        ("for share", f"SELECT id, {WHERE} FROM rt_t WHERE id = 1 FOR SHARE"),
        ("for no key update", f"SELECT id, {WHERE} FROM rt_t WHERE id = 1 FOR NO KEY UPDATE"),
        ("for key share", f"SELECT id, {WHERE} FROM rt_t WHERE id = 1 FOR KEY SHARE"),
        ("cte with dml", f"WITH u AS (UPDATE rt_t SET v = v WHERE id = 2 RETURNING id) "
                         f"SELECT count(*), {WHERE} FROM u"),
        ("nextval", f"SELECT nextval('rt_seq'), {WHERE}"),
        ("pg_catalog.nextval", f"SELECT pg_catalog.nextval('rt_seq'), {WHERE}"),
        ("setval", f"SELECT setval('rt_seq', 5000), {WHERE}"),
        ("advisory lock", f"SELECT pg_try_advisory_lock(4711), pg_advisory_unlock(4711), {WHERE}"),
        ("advisory xact lock", f"SELECT pg_advisory_xact_lock(4712), {WHERE}"),
        ("txid_current", f"SELECT txid_current(), {WHERE}"),
        ("pg_current_xact_id", f"SELECT pg_current_xact_id(), {WHERE}"),
        ("lo_*", f"SELECT lo_unlink(lo_create(0)), {WHERE}"),
        ("write_functions", f"SELECT rt_writer(), {WHERE}"),
        ("write function in where", f"SELECT id, {WHERE} FROM rt_t WHERE id = rt_writer()"),
        ("select into", f"SELECT {WHERE} INTO {sel_into}"),
    ]
    wrong = []
    with connect(router.dsn()) as conn:
        for name, sql in cases:
            try:
                cur = conn.execute(sql)
                rows = None if name == "select into" else last_rows(cur)
            except psycopg.Error as exc:
                wrong.append(f"{name}: {type(exc).__name__} {exc.sqlstate}: {exc}")
                continue
            if rows is None:
                continue
            got = places.row(rows[-1]) if rows else "no rows"
            if got != "primary":
                wrong.append(f"{name}: ran on {got}")
    try:
        # SELECT INTO created its table on the primary, with the primary's port in it.
        assert cluster.primary.sql(f"SELECT * FROM {sel_into}") == [(places.primary_port, False)]
    finally:
        cluster.primary.sql(f"DROP TABLE IF EXISTS {sel_into}")
    assert wrong == [], "\n".join(wrong)


def test_reloaded_write_functions_apply_to_open_sessions(routers, objects, places):
    """Each session remembers the statements it analysed (the last text, and
    templates of statements that differ only in literals, as pgbench -M
    simple sends them). A reload that names a new write function drops
    those memories: the very statements sent again on the same connection
    now go to the primary. Simple protocol, so the literals are in the text."""
    router = split_router(routers)
    conn = wire.RawConn.open(router.port)
    conn.startup(APP_USER, APP_DB, APP_PASSWORD)

    def place(sql: str) -> str:
        rows, _, _ = conn.simple_query(sql)
        port, in_recovery = rows[-1][-2:]
        return places.of(int(port), in_recovery == "t")

    try:
        reads = [f"SELECT rt_reader() + {n}, {WHERE}" for n in (1, 2, 3)]
        assert [place(sql) for sql in reads] == ["replica"] * 3
        cfg = copy.deepcopy(router.config)
        cfg["general"]["write_functions"] = ["rt_writer", "rt_reader"]
        before = reload_marks(router)
        router.write_files(config=cfg)
        router.reload()
        assert wait_reload(router, before) == "ok"
        # The last text again, then new literals in the same statement.
        again = [reads[-1], f"SELECT rt_reader() + 4, {WHERE}", f"SELECT rt_reader() + 5, {WHERE}"]
        assert [place(sql) for sql in again] == ["primary"] * 3
    finally:
        conn.close()


def test_utility_writes_go_to_primary(routers, objects, cluster):
    """Statements that fail on a hot standby succeed: they went to the primary."""
    router = split_router(routers)
    tag = uuid.uuid4().hex[:8]
    statements = [
        f"CREATE TABLE rt_ddl_{tag} (x int)",
        f"ALTER TABLE rt_ddl_{tag} ADD COLUMN y int",
        f"COMMENT ON TABLE rt_ddl_{tag} IS 'x'",
        "CALL rt_proc(7)",
        "DO $$ BEGIN PERFORM nextval('rt_seq'); END $$",
        "VACUUM rt_t",
        "ANALYZE rt_t",
        f"DROP TABLE rt_ddl_{tag}",
    ]
    errors = []
    with connect(router.dsn()) as conn:
        for sql in statements:
            try:
                conn.execute(sql)
            except psycopg.Error as exc:
                errors.append(f"{sql}: {exc.sqlstate}: {exc}")
        # COPY FROM: a write.
        with conn.cursor() as cur:
            try:
                with cur.copy("COPY rt_t (id, v) FROM STDIN") as copy:
                    copy.write_row((90000 + int(time.time() * 1000) % 10000, 1))
            except psycopg.Error as exc:
                errors.append(f"COPY FROM: {exc.sqlstate}: {exc}")
        # LOCK inside a transaction.
        with conn.transaction():
            try:
                conn.execute("LOCK TABLE rt_t IN SHARE ROW EXCLUSIVE MODE")
            except psycopg.Error as exc:
                errors.append(f"LOCK: {exc.sqlstate}: {exc}")
    assert errors == [], "\n".join(errors)


def test_multi_statement_with_a_write_goes_to_primary(routers, objects, places, cluster):
    router = split_router(routers)
    key = 500000 + int(uuid.uuid4().int % 100000)
    with connect(router.dsn()) as conn:
        rows = last_rows(conn.execute(
            f"SELECT 1; INSERT INTO rt_t VALUES ({key}, 1); SELECT {WHERE}"))
        assert places.row(rows[-1]) == "primary"
        # A write last: the leading read ran on the primary too.
        rows = last_rows(conn.execute(
            f"SELECT {WHERE}; UPDATE rt_t SET v = 2 WHERE id = {key}"))
        assert places.row(rows[-1]) == "primary"
        # Reads only: the replica.
        rows = last_rows(conn.execute(f"SELECT 1; SELECT {WHERE}"))
        assert places.row(rows[-1]) == "replica"
    assert cluster.primary.scalar(f"SELECT v FROM rt_t WHERE id = {key}") == 2


# ----------------------------------------------------------- transactions --
def test_begin_runs_whole_transaction_on_primary(routers, objects, places, cluster):
    router = split_router(routers)
    key = 600000 + int(uuid.uuid4().int % 100000)
    with connect(router.dsn(), autocommit=False) as conn:
        # psycopg sends BEGIN before the first statement: a read first ...
        assert places.row(where(conn)) == "primary"
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        # ... then a write in the same transaction: still the primary, same backend.
        conn.execute(f"INSERT INTO rt_t VALUES ({key}, 1)")
        assert places.row(where(conn, f"SELECT v, {WHERE} FROM rt_t WHERE id = {key}")) == "primary"
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        conn.commit()
        # Explicit BEGIN / START TRANSACTION in autocommit mode.
    with connect(router.dsn()) as conn:
        for begin in ("BEGIN", "START TRANSACTION", "BEGIN ISOLATION LEVEL REPEATABLE READ",
                      "BEGIN READ WRITE"):
            conn.execute(begin)
            assert places.row(where(conn)) == "primary", begin
            assert places.row(where(conn)) == "primary", begin
            conn.execute("COMMIT")
        # After the transaction a read goes back to the replica.
        assert places.row(where(conn)) == "replica"
    assert cluster.primary.scalar(f"SELECT v FROM rt_t WHERE id = {key}") == 1


def test_begin_read_only_goes_to_replica(routers, objects, places):
    router = split_router(routers)
    with connect(router.dsn()) as conn:
        for begin in ("BEGIN READ ONLY", "START TRANSACTION READ ONLY",
                      "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"):
            conn.execute(begin)
            assert places.row(where(conn)) == "replica", begin
            assert places.row(where(conn, f"SELECT v, {WHERE} FROM rt_t WHERE id = 1")) == "replica"
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
            conn.execute("COMMIT")
    # psycopg's read_only attribute sends BEGIN READ ONLY.
    with connect(router.dsn(), autocommit=False) as conn:
        conn.read_only = True
        assert places.row(where(conn)) == "replica"
        conn.commit()


def test_default_transaction_read_only_session(routers, objects, places):
    router = split_router(routers)
    with connect(router.dsn()) as conn:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("BEGIN")
        assert places.row(where(conn)) == "replica"
        conn.execute("COMMIT")
        # Startup option form too (new client).
        conn.execute("RESET default_transaction_read_only")
        conn.execute("BEGIN")
        assert places.row(where(conn)) == "primary"
        conn.execute("COMMIT")
    with connect(router.dsn(options="-c default_transaction_read_only=on")) as conn:
        conn.execute("BEGIN")
        assert places.row(where(conn)) == "replica"
        conn.execute("COMMIT")


def test_serializable_transactions_go_to_the_primary(routers, objects, places):
    """A hot standby refuses serializable transactions ("cannot use
    serializable mode in a hot standby"), so they run on the primary, as
    they would with one server: BEGIN ISOLATION LEVEL SERIALIZABLE (READ ONLY
    too) and every statement of a session whose default isolation is
    serializable, however it was set. Other levels keep using the replica."""
    router = split_router(routers)
    with connect(router.dsn()) as conn:
        for begin in ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
                      "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE"):
            conn.execute(begin)
            assert places.row(where(conn)) == "primary", begin
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
            conn.execute("COMMIT")
        for setting in ("SET default_transaction_isolation = 'serializable'",
                        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                        "SELECT set_config('default_transaction_isolation', 'serializable', false)"):
            conn.execute(setting)
            for _ in range(3):
                assert places.row(where(conn, f"SELECT v, {WHERE} FROM rt_t WHERE id = 1")) == "primary"
                conn.execute("BEGIN READ ONLY")
                assert places.row(where(conn)) == "primary", setting
                conn.execute("COMMIT")
            conn.execute("RESET default_transaction_isolation")
            assert places.row(where(conn)) == "replica"
    with connect(router.dsn(options="-c default_transaction_isolation=serializable")) as conn:
        assert places.row(where(conn)) == "primary"
    # Session mode picks the server at the first statement: a read-only
    # session goes to a replica, unless it is serializable too.
    session = split_router(routers, pool_mode="session")
    read_only = "-c default_transaction_read_only=on"
    with connect(session.dsn(options=read_only)) as conn:
        assert places.row(where(conn)) == "replica"
    with connect(session.dsn(options=f"{read_only} -c default_transaction_isolation=serializable")) as conn:
        assert places.row(where(conn)) == "primary"
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("serializable",)


def test_a_replica_connection_left_serializable_serves_the_next_client(routers, objects, places):
    """A client's SET that makes its session SERIALIZABLE runs where its
    session is (here a replica, by `pgrouter.role`), and the connection goes
    back to the pool with that default. The next client there, with settings
    of its own to carry (its application_name), must get a working
    connection: the router's statements that reset the default and set the
    client's values run READ COMMITTED, since a hot standby refuses the
    snapshot a SERIALIZABLE transaction would take."""
    router = routers.start(general={**FAST_HEALTH, "workers": 1}, with_replica=True,
                           users=[app_user(pool_size=1)])
    with connect(router.dsn(application_name="first")) as first:
        first.execute("SET pgrouter.role = 'replica'")
        assert places.row(where(first)) == "replica"
        first.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    for name in ("second", "third"):
        with connect(router.dsn(application_name=name)) as nxt:
            row = nxt.execute("SELECT current_setting('transaction_isolation'), "
                              f"current_setting('application_name'), {WHERE}").fetchone()
            assert row[:2] == ("read committed", name)
            assert places.row(row) == "replica"


# ------------------------------------------------------------------ hints --
def test_comment_hints(routers, objects, places):
    router = split_router(routers)
    with connect(router.dsn()) as conn:
        assert places.row(where(conn, f"/* pgrouter: role=primary */ SELECT {WHERE}")) == "primary"
        assert places.row(where(conn, f"SELECT {WHERE} /* pgrouter: role=primary */")) == "primary"
        assert places.row(where(conn, f"/* pgrouter: role=replica */ SELECT {WHERE}")) == "replica"
        # Extended protocol with a parameter.
        assert places.row(where(conn, f"/* pgrouter: role=primary */ SELECT %s::int, {WHERE}",
                                (1,))) == "primary"
        # A hint applies to its own statement only.
        assert places.row(where(conn)) == "replica"


def test_set_pgrouter_role_lasts_for_session(routers, objects, places):
    router = split_router(routers)
    with connect(router.dsn()) as conn:
        conn.execute("SET pgrouter.role = 'primary'")
        for _ in range(3):
            assert places.row(where(conn)) == "primary"
        assert places.row(where(conn, f"SELECT %s::int, {WHERE}", (5,))) == "primary"
        conn.execute("RESET pgrouter.role")
        assert places.row(where(conn)) == "replica"
        conn.execute("SET pgrouter.role = 'primary'")
        assert places.row(where(conn)) == "primary"
        conn.execute("SET pgrouter.role = 'replica'")
        assert places.row(where(conn)) == "replica"
    # A different client is not affected.
    with connect(router.dsn()) as a, connect(router.dsn()) as b:
        a.execute("SET pgrouter.role = 'primary'")
        assert places.row(where(a)) == "primary"
        assert places.row(where(b)) == "replica"


# ---------------------------------------------------------------- errors --
def test_syntax_error_passes_through(routers, objects, cluster):
    router = split_router(routers)
    marker = f"rt_marker_{uuid.uuid4().hex[:8]}"
    with connect(router.dsn()) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as err:
            conn.execute(f"SELEC '{marker}'")
        assert err.value.sqlstate == "42601"
        assert 'syntax error at or near "SELEC"' in str(err.value)
        # Extended protocol too.
        with pytest.raises(psycopg.errors.SyntaxError) as err:
            conn.execute("SELECT FROM WHERE %s", (1,))
        assert err.value.sqlstate == "42601"
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)
    # A statement pg_query cannot parse goes to the primary unchanged.
    wait_until(lambda: marker in cluster.primary.logfile.read_text(errors="replace"), 5,
               what="syntax error in the primary's log")
    assert marker not in cluster.replica.logfile.read_text(errors="replace")


# --------------------------------------------------------- load balancing --
def test_include_primary_uses_both(routers, objects, places):
    router = split_router(routers, read_write_split="include_primary",
                          load_balancing="round_robin")
    seen = set()
    with connect(router.dsn()) as conn:
        for _ in range(20):
            seen.add(places.row(where(conn)))
    assert seen == {"primary", "replica"}


# ---------------------------------------------------------------- health --
def test_replica_down_reads_move_to_primary_and_back(routers, objects, places, cluster):
    router = split_router(routers)
    stop = threading.Event()
    results: list[tuple[float, str]] = []   # (time, place or "error: ...")
    lock = threading.Lock()

    def reader():
        conn = None
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(router.dsn())
                got = places.row(where(conn))
            except psycopg.Error as exc:
                got = f"error: {exc.sqlstate}: {str(exc).strip()[:120]}"
                if conn is not None and conn.broken:
                    conn = None
            with lock:
                results.append((time.monotonic(), got))
            time.sleep(0.01)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # Every reader has read on the replica (logins take a while on a
        # loaded machine: a fixed wait here once ended with no read at all).
        wait_until(lambda: sum(p == "replica" for _, p in list(results)) >= 2 * len(threads), 15,
                   what="reads on the replica before it stops")
        stopping_at = time.monotonic()
        with replica_stopped(cluster):
            stopped_at = time.monotonic()
            time.sleep(2.5)
            # A router started while the replica is down serves reads from the primary.
            fresh = split_router(routers)
            with connect(fresh.dsn()) as conn:
                assert places.row(where(conn)) == "primary"
        restarted_at = time.monotonic()
        # Back: used again once the ban has expired.
        wait_until(lambda: any(t > restarted_at and p == "replica" for t, p in list(results)),
                   15, what="reads on the replica again")
        back_at = time.monotonic()
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    before = [p for t, p in results if t < stopping_at]
    during = [p for t, p in results if stopped_at + 1.0 < t < restarted_at]
    errors = [p for t, p in results if p.startswith("error")]
    after = [p for t, p in results if t > back_at]
    assert before and set(before) == {"replica"}, set(before)
    # While the replica is down the reads run on the primary.
    assert during and set(during) == {"primary"}, sorted(set(during))
    # Only in-flight queries may fail: at most one per reader.
    assert len(errors) <= len(threads), errors
    assert "replica" in after
    print(f"reads: {len(results)}, errors: {errors}, stop took {stopped_at - stopping_at:.2f}s")


def test_pipeline_with_a_write_goes_to_primary(routers, objects, places):
    """An extended-protocol pipeline (no Sync between statements: one implicit
    transaction) that starts with a read and contains a write must run where
    the write can run."""
    router = split_router(routers)
    key = 700000 + int(uuid.uuid4().int % 100000)
    with connect(router.dsn()) as conn:
        wrong = []
        for reads in (1, 2, 5, 20):
            try:
                with conn.pipeline():
                    firsts = [conn.execute(f"SELECT %s::int, {WHERE}", (j,)) for j in range(reads)]
                    ins = conn.execute(f"INSERT INTO rt_t VALUES (%s, 1) RETURNING {WHERE}",
                                       (key + reads,))
            except psycopg.Error as exc:
                wrong.append(f"{reads} reads, then INSERT: {exc.sqlstate}: {exc}")
                continue
            got = (places.row(ins.fetchone()), {places.row(c.fetchone()) for c in firsts})
            if got != ("primary", {"primary"}):
                wrong.append(f"{reads} reads, then INSERT: ran on {got}")
        assert wrong == [], "\n".join(wrong)


# ------------------------------------------- one user's login refused --
def test_one_users_refused_login_on_the_replica_bans_nothing(routers, cluster):
    """The replica's pg_hba.conf rejects one role (as for a role it has not
    replayed yet): that user's reads go to the primary, with no error, and
    only its own pool backs off; the replica stays in for every other user,
    whose reads still go there (SHOW POOLS: nothing banned)."""
    from harness.ops import admin_general, pools

    replica = cluster.replica
    hba = replica.datadir / "pg_hba.conf"
    original = hba.read_text()
    router = routers.start(
        general=admin_general(ban_time_ms=60000, healthcheck_interval_ms=60000),
        users=[{"name": APP_USER, "database": APP_DB, "password": APP_PASSWORD, "auth": "scram"},
               {"name": "md5user", "database": APP_DB, "password": "md5-secret", "auth": "scram"}],
        with_replica=True)
    try:
        hba.write_text("host all md5user 127.0.0.1/32 reject\n" + original)
        replica.sql("SELECT pg_reload_conf()", db="postgres")
        time.sleep(0.5)
        with connect(router.dsn(user="md5user", password="md5-secret")) as refused:
            # Twice: the second read meets the pool's back-off, not the server.
            for _ in range(2):
                assert refused.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        with connect(router.dsn()) as app:
            for _ in range(4):
                assert app.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        rows = pools(router, database=APP_DB)
        assert rows, rows
        assert all(r["banned"] == "f" for r in rows), rows
        # A new client of another user still reads from the replica.
        with connect(router.dsn()) as app2:
            assert app2.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    finally:
        hba.write_text(original)
        replica.sql("SELECT pg_reload_conf()", db="postgres")
