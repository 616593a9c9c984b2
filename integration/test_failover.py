"""Failover with `role = "auto"` (SPEC §5 "Routing", issue 3 item 4), on a
primary + streaming replica of the test's own: the router learns each
server's role from `pg_is_in_recovery()`, and when the primary goes away and
the replica is promoted, writes follow the promotion without a reload — also
when the old primary comes back still believing it is the primary."""
from __future__ import annotations

import copy
import threading
import time

import psycopg
import pytest

from harness.clients import connect
from harness.pg import PgCluster, pg_tool, run_pg
from harness.util import wait_until

FAST_HEALTH = {"healthcheck_interval_ms": 200, "ban_time_ms": 500, "default_pool_size": 4}


@pytest.fixture
def own_cluster():
    with PgCluster(with_replica=True, prefix="pgrouter-failover-") as c:
        yield c


def server_port(router, sql: str):
    """The port of the server that ran `sql` (which must return it), or None
    when the statement failed."""
    try:
        with connect(router.dsn()) as conn:
            return conn.execute(sql).fetchone()[0]
    except psycopg.Error:
        return None


def test_role_auto_follows_a_promotion(routers, own_cluster):
    c = own_cluster
    # The primary is listed first: before the fix a write kept going to it
    # after the promotion, since it was the first server still marked primary.
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app",
            "role": "auto"} for s in (c.primary, c.replica)]
    router = routers.start(general=FAST_HEALTH, databases=dbs)
    read = "SELECT inet_server_port()"
    write = "INSERT INTO fo_t VALUES (1) RETURNING inet_server_port()"

    # Roles learned from the checks: reads to the replica, writes to the primary.
    wait_until(lambda: server_port(router, read) == c.replica.port, 20,
               what="reads on the replica once the checks ran")
    with connect(router.dsn()) as conn:
        conn.execute("CREATE TABLE fo_t (id int)")
    assert server_port(router, write) == c.primary.port

    # Failover: the primary stops, the replica is promoted.
    c.primary.stop(mode="fast", check=True)
    run_pg([pg_tool("pg_ctl"), "promote", "-w", "-D", str(c.replica.datadir)], cwd=c.tmpdir)
    wait_until(lambda: server_port(router, write) == c.replica.port, 20,
               what="writes on the promoted server")
    # No replica is left: reads go to the new primary too.
    assert server_port(router, read) == c.replica.port

    # The old primary comes back without being turned into a replica (two
    # servers now say they are the primary): writes stay with the promoted one.
    c.primary.start()
    assert c.primary.scalar("SELECT NOT pg_is_in_recovery()", db="postgres")
    for _ in range(10):  # over several health-check rounds
        assert server_port(router, write) == c.replica.port
        time.sleep(0.1)
    # Every write since the failover is on the promoted server (the row from
    # before it was replicated there).
    assert c.replica.scalar("SELECT count(*) FROM fo_t") == 1 + 1 + 10


def test_role_auto_known_before_the_first_client(routers, cluster):
    """The roles of `auto` servers are checked before the router accepts
    anyone: with the replica listed first and no periodic check due for a
    minute, the very first write still goes to the primary and the first
    read to the replica."""
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app",
            "role": "auto"} for s in (cluster.replica, cluster.primary)]
    router = routers.start(general={"healthcheck_interval_ms": 60_000}, databases=dbs)
    # txid_current() makes the statement a write.
    assert server_port(router, "SELECT inet_server_port() FROM (SELECT txid_current()) t") \
        == cluster.primary.port
    assert server_port(router, "SELECT inet_server_port()") == cluster.replica.port


def test_role_auto_servers_added_by_a_reload_are_checked_at_once(routers, cluster):
    """Servers a reload adds with `role = "auto"` get their roles checked
    before clients are routed with the new config (the periodic check is a
    minute away here)."""
    router = routers.start(general={"healthcheck_interval_ms": 60_000})
    cfg = copy.deepcopy(router.config)
    cfg["databases"] = [{"name": "app", "host": "127.0.0.1", "port": s.port,
                         "database_name": "app", "role": "auto"}
                        for s in (cluster.replica, cluster.primary)]
    router.write_files(config=cfg)
    router.reload()
    read = "SELECT inet_server_port()"
    write = "SELECT inet_server_port() FROM (SELECT txid_current()) t"
    # Before the reload there is no replica (reads on the primary); after it,
    # reads on the replica and writes on the primary.
    wait_until(lambda: server_port(router, read) == cluster.replica.port, 10,
               what="the reload applied")
    assert server_port(router, write) == cluster.primary.port


# ------------------------------------------- a replica shut down mid-read --
def _lock_on_replica(c, table: str) -> psycopg.Connection:
    """A primary session holding an ACCESS EXCLUSIVE lock on `table`, replayed
    on the replica: a read of `table` there waits, with nothing answered."""
    locker = c.primary.connect("app", autocommit=False)
    locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    locker.execute("SELECT pg_current_xact_id()")
    # Another commit flushes the WAL holding the lock record to the replica.
    c.primary.sql("INSERT INTO mid_read_flush VALUES (1)")
    wait_until(lambda: c.replica.scalar(
        "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass"
        " AND mode = 'AccessExclusiveLock'", (table,)) == 1,
        20, what="the lock replayed on the replica")
    return locker


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_read_replayed_when_the_replica_shuts_down_immediately(routers, own_cluster, protocol):
    """SPEC §5 "Routing": a read outside a transaction that fails on a
    replica before anything reached the client is replayed once on another
    server. `pg_ctl stop -m immediate` (like a crash of another backend) makes
    the server send a WARNING 57P01 before it closes the connection: that
    notice is not an answer, the read must still be replayed (before the fix
    the client got the WARNING and then 08006), and the client does not see
    the dead server's notice."""
    c = own_cluster
    c.primary.sql("CREATE TABLE mid_read (x int)")
    c.primary.sql("INSERT INTO mid_read VALUES (1)")
    c.primary.sql("CREATE TABLE mid_read_flush (x int)")
    c.primary.sql("GRANT SELECT ON mid_read TO app")
    c.wait_replayed()
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app",
            "role": role} for s, role in ((c.primary, "primary"), (c.replica, "replica"))]
    router = routers.start(general=FAST_HEALTH, databases=dbs)
    read_port = "SELECT inet_server_port()"
    wait_until(lambda: server_port(router, read_port) == c.replica.port, 20,
               what="reads on the replica")

    conn = connect(router.dsn())
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity, d.sqlstate, d.message_primary)))
    cur = psycopg.ClientCursor(conn) if protocol == "simple" else conn.cursor()
    locker = _lock_on_replica(c, "mid_read")
    got = {}

    def read():
        try:
            got["row"] = cur.execute(
                "SELECT count(*), inet_server_port() FROM mid_read WHERE x = %s", (1,)).fetchone()
        except psycopg.Error as exc:
            got["error"] = (exc.sqlstate, str(exc).strip())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        assert t.is_alive(), f"the read did not wait on the replica: {got}"
        c.replica.stop(mode="immediate", check=True)
        # The replay waits on the primary for the lock: released a moment later.
        time.sleep(0.5)
        locker.rollback()
        t.join(15)
        assert not t.is_alive(), "the read hung"
        assert got == {"row": (1, c.primary.port)}, got
        assert not notices, notices
        # The session goes on.
        assert cur.execute("SELECT 1").fetchone() == (1,)
    finally:
        locker.close()
        conn.close()


def test_a_shutdown_notice_the_server_survives_is_relayed(routers, cluster):
    """The other side of the replay rule: a 57P01 WARNING a replica sends
    without closing the connection (here raised by a function) is held only
    until the server goes on, then relayed to the client before the answer."""
    cluster.primary.sql(
        "CREATE OR REPLACE FUNCTION fo_warn_57p01() RETURNS int LANGUAGE plpgsql AS $$"
        " BEGIN RAISE WARNING USING ERRCODE = '57P01', MESSAGE = 'only a warning';"
        " RETURN inet_server_port(); END $$")
    wait_until(lambda: cluster.replica.scalar(
        "SELECT count(*) FROM pg_proc WHERE proname = 'fo_warn_57p01'") == 1,
        20, what="the function on the replica")
    router = routers.start(general=FAST_HEALTH, with_replica=True)
    with connect(router.dsn()) as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.sqlstate,
                                                          d.message_primary)))
        for cur in (psycopg.ClientCursor(conn), conn.cursor()):
            notices.clear()
            assert cur.execute("SELECT fo_warn_57p01()").fetchone() == (cluster.replica.port,)
            assert notices == [("WARNING", "57P01", "only a warning")], notices
