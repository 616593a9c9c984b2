"""Read-only sessions (SPEC §5 "JWT login", issue 4 item 5): users.toml
`read_only`, `auto_provision_read_only`, and a true `read_only_claim`.
Every statement goes to a replica; writes are refused with 25006 before any
server sees them; read-only state cannot be switched off; with no healthy
replica the primary serves them inside read-only transactions."""
from __future__ import annotations

import uuid

import asyncpg
import psycopg
import pytest

from harness.clients import connect, refusal_in_and_out_of_transaction, run_async
from harness.jwt_setup import (SEQ, TABLE, authenticator_user, jwt_db, jwt_section,  # noqa: F401
                               keys, module_routers, password_user)
from harness.jwt_tokens import claims
from harness.routes import WHERE, Places, replica_stopped, wait_replayed, where

KINDS = ["password", "jwt_auto", "jwt_claim"]
FAST_HEALTH = {"healthcheck_interval_ms": 200, "ban_time_ms": 1500}

READ_ONLY_USERS = [
    {"name": "ro_claim", "database": "app", "auth": "jwt"},    # read-only only through its claim
    {"name": "rw_jwt", "database": "app", "auth": "jwt"},      # control: a writable JWT user
]


@pytest.fixture(scope="module")
def ro_router(module_routers, jwt_db, keys):
    return start_ro_router(module_routers, keys)


def start_ro_router(factory, keys, general=None):
    """app: password user with read_only = true; auto-provisioned JWT users
    read-only; read_only_claim = "read_only"; a replica; fast health checks."""
    users = READ_ONLY_USERS
    pem = factory.base_dir / "ro-rsa.pem"
    keys["rsa"].write_public_pem(pem)
    return factory.start(
        general={**FAST_HEALTH, **(general or {})}, with_replica=True,
        users=[password_user(read_only=True), authenticator_user(pool_size=3)] + users,
        jwt=jwt_section(public_key_file=str(pem), auto_provision=True,
                        auto_provision_read_only=True, read_only_claim="read_only"))


def dsn_for(router, keys, kind: str) -> str:
    rsa = keys["rsa"]
    if kind == "password":
        return router.dsn()
    if kind == "jwt_auto":
        u = f"ro_{uuid.uuid4().hex[:6]}"
        return router.dsn(user=u, password=rsa.sign(claims(u, "web_user")))
    if kind == "jwt_claim":
        return router.dsn(user="ro_claim", password=rsa.sign(claims("ro_claim", "web_user", read_only=True)))
    if kind == "rw_jwt":
        return router.dsn(user="rw_jwt", password=rsa.sign(claims("rw_jwt", "web_user")))
    raise ValueError(kind)


@pytest.fixture
def places(cluster):
    return Places(cluster)


# ------------------------------------------------------------------ reads --
@pytest.mark.parametrize("kind", KINDS)
def test_everything_goes_to_replica(ro_router, keys, places, kind):
    with connect(dsn_for(ro_router, keys, kind)) as conn:
        assert places.row(where(conn)) == "replica"
        assert places.row(where(conn, f"SELECT count(*), {WHERE} FROM {TABLE}")) == "replica"
        assert places.row(where(conn, f"SELECT %s::int, {WHERE}", (1,))) == "replica"
        conn.execute("BEGIN")
        assert places.row(where(conn)) == "replica"
        conn.execute("COMMIT")
        conn.execute("BEGIN READ ONLY")
        assert places.row(where(conn)) == "replica"
        conn.execute("COMMIT")
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)


def test_control_user_writes(ro_router, keys, places, primary):
    """A JWT user without the claim is not read-only: the claim is what counts."""
    note = f"rw_{uuid.uuid4().hex[:8]}"
    with connect(dsn_for(ro_router, keys, "rw_jwt")) as conn:
        row = where(conn, f"INSERT INTO {TABLE} (note) VALUES (%s) RETURNING who, {WHERE}", (note,))
        assert row[0] == "web_user" and places.row(row) == "primary"
    assert primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (note,)) == 1


@pytest.mark.parametrize("kind", KINDS + ["rw_jwt"])
def test_write_with_text_not_utf8_gets_22021_and_never_runs(ro_router, keys, primary, kind):
    """A statement whose text is not UTF-8 cannot be analysed, so it must
    not reach a server: PostgreSQL's 22021, as a direct connection gets,
    nothing written, and the session goes on (it ended with 08P01)."""
    note = f"nu_{uuid.uuid4().hex[:8]}"
    sql = f"INSERT INTO {TABLE} (note) VALUES ('{note}') --".encode() + b" \xff"
    with connect(dsn_for(ro_router, keys, kind)) as conn:
        with pytest.raises(psycopg.errors.CharacterNotInRepertoire):
            conn.execute(sql)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (note,)) == 0


# Claim values: fails closed. Only an absent/null claim, JSON false, 0 and the
# strings PostgreSQL reads as false give a writable session.
READ_ONLY_CLAIMS = [True, "true", 1, "1", "on", "yes", "t", "", "maybe", [True], {"x": 1}]
WRITABLE_CLAIMS = [None, False, 0, "false", "f", "off", "No", "n", "0"]


@pytest.mark.parametrize("value", READ_ONLY_CLAIMS, ids=repr)
def test_read_only_claim_fails_closed(ro_router, keys, primary, value):
    """Any claim value that is not clearly false makes the session read-only
    (1, "on", "yes" and "t" are true to PostgreSQL, and garbage must not
    grant writes)."""
    note = f"roc_{uuid.uuid4().hex[:8]}"
    tok = keys["rsa"].sign(claims("ro_claim", "web_user", read_only=value))
    with connect(ro_router.dsn(user="ro_claim", password=tok)) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (note,))
    assert primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (note,)) == 0


@pytest.mark.parametrize("value", WRITABLE_CLAIMS, ids=repr)
def test_read_only_claim_false_values_write(ro_router, keys, primary, value):
    note = f"rwc_{uuid.uuid4().hex[:8]}"
    extra = {} if value is None else {"read_only": value}
    tok = keys["rsa"].sign(claims("rw_jwt", "web_user", **extra))
    with connect(ro_router.dsn(user="rw_jwt", password=tok)) as conn:
        conn.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (note,))
    assert primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (note,)) == 1


# ----------------------------------------------------------------- writes --
def write_attempts(marker: str) -> list[tuple[str, object]]:
    """(sql, params) pairs, each carrying `marker` so that server logs and
    the primary's table can be searched for it."""
    return [
        (f"INSERT INTO {TABLE} (note) VALUES ('{marker}')", None),
        (f"INSERT INTO {TABLE} (note) VALUES (%s)", (marker,)),
        (f"UPDATE {TABLE} SET note = '{marker}' WHERE id = -1", None),
        (f"DELETE FROM {TABLE} WHERE note = '{marker}'", None),
        (f"WITH w AS (INSERT INTO {TABLE} (note) VALUES ('{marker}') RETURNING id) SELECT * FROM w", None),
        (f"SELECT nextval('{SEQ}'), '{marker}'", None),
        (f"SELECT setval('{SEQ}', 1), '{marker}'", None),
        (f"SELECT id, '{marker}' FROM {TABLE} FOR UPDATE", None),
        (f"CREATE TABLE ro_{marker} (x int)", None),
        (f"SELECT 1; INSERT INTO {TABLE} (note) VALUES ('{marker}')", None),
        (f"BEGIN READ WRITE; INSERT INTO {TABLE} (note) VALUES ('{marker}'); COMMIT", None),
        (f"START TRANSACTION READ WRITE; INSERT INTO {TABLE} (note) VALUES ('{marker}'); COMMIT", None),
        (f"SELECT pg_advisory_xact_lock(1), '{marker}'", None),
    ]


def logs_mention(cluster, marker: str) -> list[str]:
    found = []
    for server in (cluster.primary, cluster.replica):
        if marker in server.logfile.read_text(errors="replace"):
            found.append(server.name)
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_writes_refused_before_any_server(ro_router, keys, cluster, kind):
    marker = f"mk{uuid.uuid4().hex[:10]}"
    wrong = []
    with connect(dsn_for(ro_router, keys, kind)) as conn:
        seq_before = cluster.primary.scalar(f"SELECT last_value FROM {SEQ}")
        for sql, params in write_attempts(marker):
            try:
                conn.execute(sql, params)
                wrong.append(f"{sql!r}: accepted")
            except psycopg.Error as exc:
                if exc.sqlstate != "25006":
                    wrong.append(f"{sql!r}: {exc.sqlstate} {exc}")
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        # BEGIN READ WRITE on its own.
        for begin in ("BEGIN READ WRITE", "START TRANSACTION READ WRITE",
                      "BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE"):
            try:
                conn.execute(begin)
                wrong.append(f"{begin!r}: accepted")
            except psycopg.Error as exc:
                if exc.sqlstate != "25006":
                    wrong.append(f"{begin!r}: {exc.sqlstate} {exc}")
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        # COPY FROM.
        try:
            with conn.cursor().copy(f"COPY {TABLE} (note) FROM STDIN") as copy:
                copy.write_row((marker,))
            wrong.append("COPY FROM: accepted")
        except psycopg.Error as exc:
            if exc.sqlstate != "25006":
                wrong.append(f"COPY FROM: {exc.sqlstate} {exc}")
        # Still usable, still on the replica.
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
    assert cluster.primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (marker,)) == 0
    assert cluster.primary.scalar(f"SELECT last_value FROM {SEQ}") == seq_before
    # No server ever saw the statements (PostgreSQL logs every statement that
    # fails, and the replica would have failed them).
    seen_by = logs_mention(cluster, marker)
    assert wrong == [] and seen_by == [], "\n".join(wrong + [f"statements seen by: {seen_by}"])


@pytest.mark.parametrize("kind", ["password", "jwt_claim"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_write_refused_in_a_transaction_gets_the_same_error(ro_router, keys, kind, protocol):
    """Inside a transaction the refusal is raised through the server so
    that the transaction fails (25P02 until ROLLBACK); the client still gets
    the router's error exactly as outside one: no PL/pgSQL CONTEXT line nor
    source fields of the raise."""
    sql, params = f"INSERT INTO {TABLE} (note) VALUES ('ro_tx')", None
    if protocol == "extended":
        sql, params = f"INSERT INTO {TABLE} (note) VALUES (%s)", ("ro_tx",)
    with connect(dsn_for(ro_router, keys, kind)) as conn:
        outside, inside = refusal_in_and_out_of_transaction(conn, sql, params, binary=protocol == "extended")
    assert outside["sqlstate"] == "25006" and outside["context"] is None, outside
    assert inside == outside


@pytest.mark.parametrize("kind", ["password", "jwt_claim"])
def test_writes_refused_asyncpg(ro_router, keys, cluster, kind):
    rsa = keys["rsa"]
    if kind == "password":
        kw = ro_router.connect_kwargs()
    else:
        kw = ro_router.connect_kwargs(user="ro_claim",
                                      password=rsa.sign(claims("ro_claim", "web_user", read_only=True)))
    marker = f"ak{uuid.uuid4().hex[:10]}"

    async def main():
        conn = await asyncpg.connect(**kw)
        wrong = []
        try:
            for how, sql, args in [
                ("execute", f"INSERT INTO {TABLE} (note) VALUES ($1)", (marker,)),
                ("fetch", f"INSERT INTO {TABLE} (note) VALUES ($1) RETURNING id", (marker,)),
                ("fetchval", f"SELECT nextval('{SEQ}')", ()),
                ("prepare", f"UPDATE {TABLE} SET note = '{marker}' WHERE id = -1", ()),
            ]:
                try:
                    if how == "prepare":
                        await (await conn.prepare(sql)).fetch()
                    else:
                        await getattr(conn, how)(sql, *args)
                    wrong.append(f"{how} {sql!r}: accepted")
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate != "25006":
                        wrong.append(f"{how} {sql!r}: {exc.sqlstate} {exc}")
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        return wrong
    assert run_async(main()) == []
    assert cluster.primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (marker,)) == 0


# ------------------------------------------------- switching read-only off --
SWITCHES = [
    "SET default_transaction_read_only = off",
    "SET default_transaction_read_only TO false",
    "SET SESSION default_transaction_read_only = off",
    "SET transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET pgrouter.role = 'primary'",
    "SET pgrouter.role TO 'primary'",
    "RESET default_transaction_read_only",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('transaction_read_only', 'off', false)",
    f"/* pgrouter: role=primary */ SELECT {WHERE}",
    f"SELECT {WHERE} /* pgrouter: role=primary */",
]


@pytest.mark.parametrize("kind", KINDS)
def test_read_only_cannot_be_switched_off(ro_router, keys, places, kind):
    wrong = []
    switches = SWITCHES
    if kind == "password":
        # SPEC lists set_config() refusals for JWT sessions only.
        switches = [s for s in SWITCHES if "set_config" not in s]
    with connect(dsn_for(ro_router, keys, kind)) as conn:
        for sql in switches:
            try:
                cur = conn.execute(sql)
                if cur.description is not None and "pgrouter:" in sql:
                    # A hint that is not refused must at least not reach the primary.
                    got = places.row(cur.fetchone())
                    if got != "replica":
                        wrong.append(f"{sql!r}: ran on {got}")
                    else:
                        wrong.append(f"{sql!r}: accepted (ran on the replica)")
                else:
                    wrong.append(f"{sql!r}: accepted")
            except psycopg.Error as exc:
                if exc.sqlstate not in ("42501", "25006"):
                    wrong.append(f"{sql!r}: {exc.sqlstate} {exc}")
            # Whatever happened, the session is still read-only and on the replica.
            if places.row(where(conn)) != "replica":
                wrong.append(f"after {sql!r}: reads left the replica")
            try:
                conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('switch')")
                wrong.append(f"after {sql!r}: INSERT accepted")
            except psycopg.Error as exc:
                if exc.sqlstate != "25006":
                    wrong.append(f"after {sql!r}: INSERT gave {exc.sqlstate}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("kind", KINDS)
def test_set_config_of_router_settings_does_not_steer(ro_router, keys, places, kind):
    """`set_config('pgrouter.role', 'primary', false)` is not refused like
    `SET pgrouter.role = 'primary'` (it only sets a custom setting on the
    server), and the session stays read-only on the replica."""
    with connect(dsn_for(ro_router, keys, kind)) as conn:
        conn.execute("SELECT set_config('pgrouter.role', 'primary', false)")
        for _ in range(3):
            assert places.row(where(conn)) == "replica"
            with pytest.raises(psycopg.Error) as err:
                conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('set_config')")
            assert err.value.sqlstate == "25006"


@pytest.mark.parametrize("kind", KINDS)
def test_reset_all_and_discard_all_keep_read_only(ro_router, keys, places, kind):
    with connect(dsn_for(ro_router, keys, kind)) as conn:
        for sql, tag in (("RESET ALL", "RESET"), ("DISCARD ALL", "DISCARD ALL")):
            assert conn.execute(sql).statusmessage == tag
            assert places.row(where(conn)) == "replica"
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
            with pytest.raises(psycopg.Error) as err:
                conn.execute(f"INSERT INTO {TABLE} (note) VALUES ('after reset')")
            assert err.value.sqlstate == "25006"


# ------------------------------------------------------- no replica left --
@pytest.mark.parametrize("kind", ["password", "jwt_auto"])
def test_replica_down_reads_on_primary_read_only(routers, jwt_db, keys, cluster, places, kind):
    router = start_ro_router(routers, keys)
    marker = f"rd{uuid.uuid4().hex[:10]}"
    with connect(dsn_for(router, keys, kind)) as conn:
        assert places.row(where(conn)) == "replica"
        with replica_stopped(cluster):
            # Reads continue (from the primary), inside read-only transactions.
            got = None
            for _ in range(30):
                try:
                    got = where(conn, f"SELECT current_setting('transaction_read_only'), {WHERE}")
                    if places.row(got) == "primary":
                        break
                except psycopg.Error:
                    pass   # the request in flight when the replica went away
            assert got is not None and places.row(got) == "primary", got
            assert got[0] == "on"
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
            assert conn.execute(f"SELECT count(*) >= 0 FROM {TABLE}").fetchone() == (True,)
            conn.execute("BEGIN")
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
            conn.execute("COMMIT")
            # Writes: refused by the router, as before.
            for sql in (f"INSERT INTO {TABLE} (note) VALUES ('{marker}')",
                        f"BEGIN READ WRITE; INSERT INTO {TABLE} (note) VALUES ('{marker}'); COMMIT",
                        "SET transaction_read_only = off",
                        "SET default_transaction_read_only = off"):
                with pytest.raises(psycopg.Error) as err:
                    conn.execute(sql)
                assert err.value.sqlstate in ("25006", "42501"), (sql, err.value)
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
            # A write the router cannot see (inside a function) meets the
            # read-only transaction on the primary.
            with pytest.raises(psycopg.Error) as err:
                conn.execute(f"SELECT jwt_ro_hidden_write('{marker}')")
            assert err.value.sqlstate == "25006", err.value
    assert cluster.primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (marker,)) == 0


@pytest.fixture(scope="module", autouse=True)
def hidden_write_function(jwt_db):
    """A function whose body writes: the router sees only a SELECT."""
    with jwt_db.primary.connect("app") as conn:
        conn.execute("SET ROLE app")
        conn.execute(f"CREATE OR REPLACE FUNCTION jwt_ro_hidden_write(n text) RETURNS int "
                     f"LANGUAGE plpgsql AS $$ BEGIN INSERT INTO {TABLE} (note) VALUES (n); RETURN 1; END $$")
    wait_replayed(jwt_db)


# ------------------------------------------ restricting is not escaping --
def test_jwt_session_may_turn_read_only_on_and_choose_its_isolation(routers, jwt_db, keys, places, primary):
    """SPEC refuses JWT sessions turning the read-only settings *off*.
    Turning them on, and choosing an isolation level (pgjdbc's
    setTransactionIsolation sends SET SESSION CHARACTERISTICS AS TRANSACTION
    ISOLATION LEVEL ...), give nothing the token did not: they run, and last
    across transactions. Turning read-only off again is refused (42501);
    RESET ALL goes back to the session's own start."""
    ro_router = start_ro_router(routers, keys)
    note = f"ron_{uuid.uuid4().hex[:8]}"
    with connect(dsn_for(ro_router, keys, "rw_jwt")) as conn:
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        for _ in range(2):
            assert conn.execute("SHOW default_transaction_isolation").fetchone() == ("serializable",)
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        for _ in range(2):
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.Error) as err:
            conn.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (note,))
        assert err.value.sqlstate == "25006", err.value
        for sql in ("SET default_transaction_read_only = off",
                    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"):
            with pytest.raises(psycopg.Error) as err:
                conn.execute(sql)
            assert err.value.sqlstate == "42501", (sql, err.value)
        assert conn.execute("RESET ALL").statusmessage == "RESET"
        row = where(conn, f"INSERT INTO {TABLE} (note) VALUES (%s) RETURNING who, {WHERE}", (note,))
        assert row[0] == "web_user" and places.row(row) == "primary"
    assert primary.scalar(f"SELECT count(*) FROM {TABLE} WHERE note = %s", (note,)) == 1
    # A read-only session may say so itself; it stays read-only.
    with connect(dsn_for(ro_router, keys, "jwt_claim")) as conn:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        assert places.row(where(conn)) == "replica"
        with pytest.raises(psycopg.Error) as err:
            conn.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (note,))
        assert err.value.sqlstate == "25006"


@pytest.mark.parametrize("kind", KINDS)
def test_copy_to_stdout_runs_on_the_replica(routers, jwt_db, keys, places, kind):
    """COPY ... TO STDOUT is a read: a read-only session runs it on the replica."""
    router = start_ro_router(routers, keys)
    with connect(dsn_for(router, keys, kind)) as conn:
        with conn.cursor().copy(f"COPY (SELECT {WHERE}) TO STDOUT") as copy:
            rows = list(copy.rows())
        port, in_recovery = rows[0]
        assert places.of(int(port), in_recovery == "t") == "replica", rows
