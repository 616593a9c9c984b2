"""Choosing a shard by hint and by `SET pgrouter.shard` (SPEC §5 "Routing",
issue 3 items 1 and 3), against two shards: the session cluster (primary +
replica) is shard 0, a PostgreSQL of this module's own is shard 1. Routing by
shard key is not built yet (README "Not yet"); without a hint or setting a
statement goes to shard 0."""
from __future__ import annotations

import psycopg
import pytest

from harness.clients import connect, sqlstate
from harness.pg import PgCluster

PORT = "SELECT inet_server_port()"


@pytest.fixture(scope="module")
def shard1():
    with PgCluster(with_replica=False, prefix="pgrouter-shard1-") as c:
        yield c


@pytest.fixture
def sharded_router(routers, cluster, shard1):
    def server(s, role, shard):
        return {"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app",
                "role": role, "shard": shard}
    return routers.start(databases=[server(cluster.primary, "primary", 0),
                                    server(cluster.replica, "replica", 0),
                                    server(shard1.primary, "primary", 1)])


def test_hints_pick_the_shard(sharded_router, cluster, shard1):
    with connect(sharded_router.dsn()) as conn:
        def port(sql):
            return conn.execute(sql).fetchone()[0]
        assert port(PORT) == cluster.replica.port                  # shard 0, a read
        assert port(f"/* pgrouter: shard=1 */ {PORT}") == shard1.primary.port  # no replica there
        assert port(f"{PORT} -- pgrouter: shard=1 role=primary") == shard1.primary.port
        assert port(f"/* pgrouter: shard=0 role=primary */ {PORT}") == cluster.primary.port
        assert port(f"/* pgrouter: role=replica shard=0 */ {PORT}") == cluster.replica.port


def test_session_setting_and_transactions(sharded_router, cluster, shard1):
    with connect(sharded_router.dsn()) as conn:
        def port(sql):
            return conn.execute(sql).fetchone()[0]
        conn.execute("SET pgrouter.shard = 1")
        assert port(PORT) == shard1.primary.port
        assert port(f"/* pgrouter: shard=0 */ {PORT}") == cluster.replica.port  # comment wins
        # A transaction stays on its shard's primary from BEGIN to COMMIT.
        conn.execute("BEGIN")
        first = port(f"SELECT inet_server_port() FROM (SELECT txid_current()) t")
        assert first == shard1.primary.port
        assert port(PORT) == shard1.primary.port
        conn.execute("COMMIT")
        conn.execute("RESET pgrouter.shard")
        assert port(PORT) == cluster.replica.port
        # Kept only if its transaction commits, like any SET.
        conn.execute("BEGIN")
        conn.execute("SET pgrouter.shard = 1")
        conn.execute("ROLLBACK")
        assert port(PORT) == cluster.replica.port


def test_a_shard_that_does_not_exist(sharded_router, cluster, shard1):
    """22023 naming the shard and how many there are; the session goes on."""
    with connect(sharded_router.dsn()) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(f"/* pgrouter: shard=5 */ {PORT}")
        assert sqlstate(err.value) == "22023"
        assert "shard 5 does not exist" in str(err.value)
        assert "2 shard" in str(err.value)
        assert conn.execute(PORT).fetchone()[0] == cluster.replica.port
        conn.execute("SET pgrouter.shard = 7")
        with pytest.raises(psycopg.Error) as err:
            conn.execute(PORT)
        assert sqlstate(err.value) == "22023"
        conn.execute("RESET pgrouter.shard")
        assert conn.execute(PORT).fetchone()[0] == cluster.replica.port
        # A value that is not a shard number names no shard either: the
        # statement is refused, never run on another shard.
        for bad in ("-1", "two", "99999999999999999999", "1.5"):
            with pytest.raises(psycopg.Error) as err:
                conn.execute(f"/* pgrouter: shard={bad} */ {PORT}")
            assert sqlstate(err.value) == "22023", bad
            assert "not a shard number" in str(err.value)
            conn.execute(f"SET pgrouter.shard = '{bad}'")
            with pytest.raises(psycopg.Error) as err:
                conn.execute(PORT)
            assert sqlstate(err.value) == "22023", bad
            conn.execute("RESET pgrouter.shard")
        # Blanks around `=` are allowed.
        assert conn.execute(f"/* pgrouter: shard = 1 */ {PORT}").fetchone()[0] == shard1.primary.port
