"""Server connections over Unix-domain sockets: a `[[databases]] host` that is
an absolute path is the directory of the server's socket (`<host>/.s.PGSQL.<port>`),
as in libpq and PgBouncer.

Proof that the router really used the socket comes from the server:
`inet_client_addr()` is NULL for a Unix-socket connection, and
`current_setting('port')` / `pg_is_in_recovery()` say which server answered
(`inet_server_port()` is NULL over a Unix socket too).
"""
from __future__ import annotations

import threading
import time

import psycopg
import pytest

from harness import wire
from harness.clients import aconnect, connect, run_async
from harness.ops import admin_general, admin_rows
from harness.pg import APP_DB, APP_PASSWORD, APP_USER

PROBE = "SELECT inet_client_addr() IS NULL, current_setting('port')::int, pg_is_in_recovery()"


def unix_databases(cluster, with_replica: bool) -> list[dict]:
    sock = str(cluster.sockdir)
    dbs = [{"name": "app", "host": sock, "port": cluster.primary.port,
            "database_name": "app", "role": "primary"}]
    if with_replica:
        dbs.append({"name": "app", "host": sock + "/", "port": cluster.replica.port,
                    "database_name": "app", "role": "replica"})
    return dbs


def test_reads_and_writes_over_unix_sockets(routers, cluster, table):
    router = routers.start(databases=unix_databases(cluster, True),
                           general=admin_general(healthcheck_interval_ms=200))
    p, r = cluster.primary.port, cluster.replica.port
    with connect(router.dsn()) as conn:
        # A read: the replica, over its socket.
        assert conn.execute(PROBE).fetchone() == (True, r, True)
        # A write: the primary, over its socket.
        # (Not a temp table: that would pin the client to the primary.)
        conn.execute(f"CREATE TABLE {table} (v int)")
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (2)")
            assert conn.execute(PROBE).fetchone() == (True, p, False)
        # Extended protocol with a parameter.
        assert conn.execute(PROBE + " WHERE %s = 1", (1,)).fetchone() == (True, r, True)
    servers = admin_rows(router, "SHOW SERVERS")
    assert servers, servers
    assert {s["host"] for s in servers} <= {str(cluster.sockdir), str(cluster.sockdir) + "/"}


def test_prepared_statements_and_pool_sharing_over_unix_socket(routers, cluster):
    """asyncpg's prepared statements, 20 clients over a pool of 2."""
    router = routers.start(databases=unix_databases(cluster, False),
                           general={"default_pool_size": 2})

    async def client(i):
        conn = await aconnect(router)
        try:
            stmt = await conn.prepare("SELECT $1::int + 1, inet_client_addr() IS NULL")
            for k in range(20):
                assert tuple(await stmt.fetchrow(i * 100 + k)) == (i * 100 + k + 1, True)
        finally:
            await conn.close()

    async def main():
        import asyncio
        await asyncio.gather(*(client(i) for i in range(20)))

    run_async(main())


def test_cancel_over_unix_socket(routers, cluster):
    """The CancelRequest reaches a backend connected over a Unix socket."""
    router = routers.start(databases=unix_databases(cluster, False))
    with connect(router.dsn()) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as err:
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert err.value.sqlstate == "57014"
        assert time.monotonic() - started < 10
        # The session goes on.
        assert conn.execute("SELECT inet_client_addr() IS NULL").fetchone() == (True,)


def test_missing_socket_is_a_connection_error(routers, cluster, tmp_path):
    """A directory without the server's socket: the client gets 08006 naming
    the socket file; the router stays up."""
    dbs = [{"name": "app", "host": str(tmp_path), "port": cluster.primary.port,
            "database_name": "app", "role": "primary"}]
    router = routers.start(databases=dbs)
    conn = wire.RawConn.open(router.port)
    try:
        with pytest.raises(wire.ServerError) as err:
            conn.startup(APP_USER, APP_DB, APP_PASSWORD)
    finally:
        conn.close()
    assert err.value.fields["C"] == "08006", err.value.fields
    assert f"{tmp_path}/.s.PGSQL.{cluster.primary.port}" in err.value.fields["M"]
    assert router.proc.poll() is None
