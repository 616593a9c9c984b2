"""A pin lasts exactly as long as the session state behind it (issue 16:
"pin only while the state exists"). Transaction mode, a pool of one: for
each reason, the client stays pinned while some of that state is left (two
temp tables and one dropped, a lock taken twice and released once, ...) and
goes back to transaction pooling once the last of it is gone. SHOW CLIENTS
and the metric `pgrouter_pinned_clients{reason}` follow; once unpinned,
another client can use the one server connection."""
from __future__ import annotations

import psycopg
import pytest

from harness.clients import connect
from harness.ops import admin_general, admin_rows, scrape
from harness.pg import APP_USER
from harness.router import app_user

SU, SU_PASSWORD = "pin_end_su", "su-secret"


@pytest.fixture(scope="module")
def roles(cluster):
    with cluster.primary.connect("postgres") as conn:
        conn.execute(f"DROP ROLE IF EXISTS {SU}")
        conn.execute(f"CREATE ROLE {SU} SUPERUSER LOGIN PASSWORD '{SU_PASSWORD}'")
        conn.execute("DROP ROLE IF EXISTS pin_end_target")
        conn.execute("CREATE ROLE pin_end_target NOLOGIN")


@pytest.fixture
def router(routers, roles):
    general = admin_general(metrics=True, default_pool_size=1, checkout_timeout_ms=3000)
    return routers.start(general=general,
                         users=[app_user(), app_user(name=SU, password=SU_PASSWORD)])


def pinned(router, user=APP_USER):
    """The pin reason of the (one) client of `user`, None when not pinned."""
    rows = [r["pinned"] for r in admin_rows(router, "SHOW CLIENTS") if r["user"] == user]
    assert len(rows) == 1, rows
    return rows[0]


def pinned_metric(router, reason: str) -> float:
    return scrape(router).one("pgrouter_pinned_clients", reason=reason)


def others_can_run(router) -> bool:
    """Another client gets the pool's one connection (it waits, then times
    out, while the client under test is pinned to it)."""
    try:
        with connect(router.dsn()) as other:
            return other.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def test_temp_tables_pin_until_the_last_is_dropped(router):
    with connect(router.dsn()) as a:
        a.execute("CREATE TEMP TABLE pin_t1 (a int)")
        a.execute("CREATE TEMP TABLE pin_t2 (a int)")
        assert pinned(router) == "temp"
        assert pinned_metric(router, "temp") == 1
        a.execute("DROP TABLE pin_t1")
        assert pinned(router) == "temp", "pin_t2 is still there"
        assert a.execute("SELECT count(*) FROM pin_t2").fetchone() == (0,)
        # A DROP that rolls back drops nothing.
        a.execute("BEGIN")
        a.execute("DROP TABLE pin_t2")
        a.execute("ROLLBACK")
        assert pinned(router) == "temp"
        a.execute("BEGIN")
        a.execute("DROP TABLE pin_t2")
        assert pinned(router) == "temp", "not gone before the commit"
        a.execute("COMMIT")
        assert pinned(router) is None
        assert pinned_metric(router, "temp") == 0
        assert others_can_run(router)
        assert a.execute("SELECT 1").fetchone() == (1,)


def test_temp_view_and_sequence(router):
    with connect(router.dsn()) as a:
        a.execute("CREATE TEMP SEQUENCE pin_seq")
        a.execute("CREATE TEMP VIEW pin_v AS SELECT 1 AS one")
        a.execute("DROP VIEW pin_v")
        assert pinned(router) == "temp"
        a.execute("DROP SEQUENCE pin_seq")
        assert pinned(router) is None
        assert others_can_run(router)


def test_temp_state_that_never_outlived_its_transaction(router):
    with connect(router.dsn()) as a:
        a.execute("BEGIN")
        a.execute("CREATE TEMP TABLE pin_gone (a int) ON COMMIT DROP")
        a.execute("COMMIT")
        assert pinned(router) is None
        a.execute("BEGIN")
        a.execute("CREATE TEMP TABLE pin_rolled_back (a int)")
        a.execute("ROLLBACK")
        assert pinned(router) is None
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.execute("CREATE TEMP TABLE pin_failed AS SELECT 1/0 AS x")
        assert pinned(router) is None
        assert others_can_run(router)


def test_listen_pins_until_the_last_channel_is_unlistened(router):
    with connect(router.dsn()) as a:
        a.execute("LISTEN pin_ch1")
        a.execute("LISTEN pin_ch2")
        a.execute("UNLISTEN pin_ch1")
        assert pinned(router) == "listen"
        assert pinned_metric(router, "listen") == 1
        a.execute("UNLISTEN pin_ch2")
        assert pinned(router) is None
        assert pinned_metric(router, "listen") == 0
        assert others_can_run(router)


def test_advisory_locks_pin_until_every_hold_is_released(router):
    with connect(router.dsn()) as a:
        # Re-entrant: a lock taken twice needs two unlocks.
        a.execute("SELECT pg_advisory_lock(6161)")
        a.execute("SELECT pg_advisory_lock(6161)")
        a.execute("SELECT pg_advisory_lock_shared(6162)")
        a.execute("SELECT pg_advisory_unlock(6161)")
        assert pinned(router) == "advisory_lock"
        a.execute("SELECT pg_advisory_unlock(6161)")
        assert pinned(router) == "advisory_lock", "6162 is still held"
        assert pinned_metric(router, "advisory_lock") == 1
        a.execute("SELECT pg_advisory_unlock_shared(6162)")
        assert pinned(router) is None
        assert pinned_metric(router, "advisory_lock") == 0
        assert others_can_run(router)
        a.execute("SELECT pg_advisory_lock(6163), pg_advisory_lock(6164)")
        assert pinned(router) == "advisory_lock"
        a.execute("SELECT pg_advisory_unlock_all()")
        assert pinned(router) is None


def test_hold_cursors_pin_until_the_last_is_closed(router):
    with connect(router.dsn()) as a:
        a.execute("DECLARE pin_c1 CURSOR WITH HOLD FOR SELECT 1")
        a.execute("DECLARE pin_c2 CURSOR WITH HOLD FOR SELECT 2")
        a.execute("CLOSE pin_c1")
        assert pinned(router) == "hold_cursor"
        assert a.execute("FETCH 1 FROM pin_c2").fetchone() == (2,)
        a.execute("CLOSE pin_c2")
        assert pinned(router) is None
        assert others_can_run(router)


def test_session_authorization_pins_until_reset(router):
    with connect(router.dsn(user=SU, password=SU_PASSWORD)) as a:
        a.execute("SET SESSION AUTHORIZATION pin_end_target")
        assert pinned(router, SU) == "session_authorization"
        a.execute("RESET SESSION AUTHORIZATION")
        assert pinned(router, SU) is None
        assert a.execute("SELECT session_user").fetchone() == (SU,)
        assert others_can_run(router)


def test_session_authorization_back_to_the_login_user_ends_the_pin(router):
    """`SET SESSION AUTHORIZATION <own login user>` leaves nothing to carry:
    the server is asked, at the transaction's end, whose session it is."""
    with connect(router.dsn(user=SU, password=SU_PASSWORD)) as a:
        a.execute("SET SESSION AUTHORIZATION pin_end_target")
        assert pinned(router, SU) == "session_authorization"
        a.execute(f"SET SESSION AUTHORIZATION {SU}")
        assert pinned(router, SU) is None
        assert a.execute("SELECT session_user, current_user").fetchone() == (SU, SU)
        assert others_can_run(router)
    # A client that is not a superuser may name itself, and only itself.
    with connect(router.dsn()) as b:
        b.execute(f"SET SESSION AUTHORIZATION {APP_USER}")
        assert pinned(router) is None
        assert others_can_run(router)
        # Rolled back: the pin taken by the SET ends with the check too.
        b.execute("BEGIN")
        b.execute(f"SET SESSION AUTHORIZATION {APP_USER}")
        b.execute("ROLLBACK")
        assert pinned(router) is None


def test_session_authorization_resets_the_role_it_replaces(router):
    """PostgreSQL: SET SESSION AUTHORIZATION logically resets SET ROLE to
    NONE. The router's record of the client's role follows, so the client's
    next connection does not get the old role back."""
    with connect(router.dsn(user=SU, password=SU_PASSWORD)) as a:
        a.execute("SET ROLE pin_end_target")
        a.execute(f"SET SESSION AUTHORIZATION {SU}")
        assert a.execute("SELECT current_user").fetchone() == (SU,)
        assert pinned(router, SU) is None
        assert others_can_run(router)  # the one connection changed hands
        assert a.execute("SELECT current_user, session_user").fetchone() == (SU, SU)


def test_do_block_pins_until_discard_all(router):
    with connect(router.dsn()) as a:
        a.execute("DO $$BEGIN PERFORM 1; END$$")
        assert pinned(router) == "do"
        a.execute("SELECT 1")
        assert pinned(router) == "do", "what a DO block did is unknown"
        a.execute("DISCARD ALL")
        assert pinned(router) is None
        assert others_can_run(router)


def test_several_reasons_end_one_by_one(router):
    with connect(router.dsn()) as a:
        a.execute("CREATE TEMP TABLE pin_mix (a int)")
        a.execute("LISTEN pin_mix_ch")
        a.execute("SELECT pg_advisory_lock(6170)")
        assert pinned(router) == "temp, listen, advisory_lock"
        a.execute("DROP TABLE pin_mix")
        assert pinned(router) == "listen, advisory_lock"
        a.execute("UNLISTEN pin_mix_ch")
        assert pinned(router) == "advisory_lock"
        a.execute("SELECT pg_advisory_unlock(6170)")
        assert pinned(router) is None
        assert others_can_run(router)


def test_the_connection_is_cleaned_when_the_pin_ends(router, primary):
    """Once a client's pinned state is gone its connection goes back to the
    pool, cleaned as if the client had left: state the router cannot see
    (lastval after an INSERT that took a serial default) must not reach the
    next client. The client's own settings and prepared statements go on."""
    with primary.connect("app") as direct:
        direct.execute("DROP TABLE IF EXISTS pin_serial")
        direct.execute("SET ROLE app")
        direct.execute("CREATE TABLE pin_serial (id serial, v int)")
    with connect(router.dsn()) as a:
        a.execute("SET work_mem = '99kB'")
        a.execute("PREPARE pin_ps AS SELECT 41 + 1")
        a.execute("CREATE TEMP TABLE pin_clean (a int)")
        a.execute("INSERT INTO pin_serial (v) VALUES (1)")  # nextval unseen by the router
        assert a.execute("SELECT lastval()").fetchone() == (1,), "pinned: same connection"
        a.execute("DROP TABLE pin_clean")
        assert pinned(router) is None
        with connect(router.dsn()) as b:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                b.execute("SELECT lastval()")
        assert a.execute("SHOW work_mem").fetchone() == ("99kB",)
        assert a.execute("EXECUTE pin_ps").fetchone() == (42,)
