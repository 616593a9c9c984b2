"""Helpers that prove where a statement ran: every probe returns
`inet_server_port()` and `pg_is_in_recovery()` from the server that ran it."""
from __future__ import annotations

import contextlib
import time

WHERE = "inet_server_port(), pg_is_in_recovery()"
WHERE_SQL = f"SELECT {WHERE}"


class Places:
    """Names for the two servers of the cluster: place(row) -> "primary" |
    "replica" | "unknown(...)", checked against pg_is_in_recovery() too."""

    def __init__(self, cluster):
        self.primary_port = cluster.primary.port
        self.replica_port = cluster.replica.port if cluster.replica else None

    def of(self, port, in_recovery) -> str:
        if port == self.primary_port and in_recovery is False:
            return "primary"
        if port == self.replica_port and in_recovery is True:
            return "replica"
        return f"unknown(port={port}, in_recovery={in_recovery})"

    def row(self, row) -> str:
        """`row` ends with (inet_server_port, pg_is_in_recovery)."""
        return self.of(row[-2], row[-1])


def where(conn, sql: str = WHERE_SQL, params=None) -> str:
    """Run `sql` (ending in inet_server_port, pg_is_in_recovery) on a psycopg
    connection and return the last result row."""
    cur = conn.execute(sql, params)
    return last_rows(cur)[-1]


def last_rows(cur) -> list:
    """All rows of the last result set that has rows (multi-statement strings)."""
    rows = None
    while True:
        if cur.description is not None:
            rows = cur.fetchall()
        if not cur.nextset():
            break
    assert rows is not None, "no result set with rows"
    return rows


@contextlib.contextmanager
def replica_stopped(cluster, mode: str = "immediate"):
    """Stop the replica for the block; always start it again and wait until it
    streams, so later tests find the cluster as they expect."""
    cluster.replica.stop(mode=mode)
    try:
        yield
    finally:
        restore_replica(cluster)


def restore_replica(cluster) -> None:
    if not cluster.replica.is_running():
        cluster.replica.start()
    cluster.wait_streaming()
    # Read queries must work there again (hot standby open for connections).
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.replica.scalar("SELECT 1", db="postgres")
            return
        except Exception:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_replayed(cluster, timeout: float = 30) -> None:
    """Wait until the replica has replayed everything the primary has
    *inserted* into its WAL so far. (With synchronous_commit = off the last
    commit record can still sit beyond pg_current_wal_lsn(), the write
    position, so waiting on that can return too early.)"""
    if cluster.replica is None:
        return
    lsn = cluster.primary.scalar("SELECT pg_current_wal_insert_lsn()::text", db="postgres")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cluster.replica.scalar("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,),
                                      db="postgres"):
                return
        except Exception:  # noqa: BLE001
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"replica did not replay {lsn} within {timeout}s")
        time.sleep(0.05)
