"""Self-test of the PostgreSQL harness: no router involved.

If these fail, every other test's result is meaningless.
"""
from __future__ import annotations

import os
import time

import psycopg
import pytest

from harness import wire
from harness.pg import PgCluster
from harness.util import pid_alive, wait_until


def test_primary_and_replica_roles(primary, replica):
    assert primary.in_recovery() is False
    assert replica.in_recovery() is True
    rows = primary.sql("SELECT application_name, state FROM pg_stat_replication", db="postgres")
    assert rows and all(state == "streaming" for _, state in rows), rows


def test_replica_receives_rows(cluster, primary, replica, table):
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int primary key, note text)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'from the primary')")
    def seen():
        with psycopg.connect(replica.dsn(), autocommit=True) as conn:
            return conn.execute(f"SELECT note FROM {table} WHERE id = 1").fetchone()
    row = wait_until(seen, 15, what="row on replica")
    assert row == ("from the primary",)
    cluster.wait_replayed()
    with psycopg.connect(replica.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(f"INSERT INTO {table} VALUES (2, 'x')")


def test_app_owns_database_and_uses_scram(primary):
    with psycopg.connect(primary.dsn()) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", "app")
    assert primary.scalar("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'",
                          db="postgres") == "app"
    stored = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert stored.startswith("SCRAM-SHA-256$")
    # pg_hba really asks for SCRAM: the raw client sees the SASL request and a
    # wrong password is refused with 28P01.
    with pytest.raises(wire.ServerError) as err:
        wire.connect(primary.port, "app", "app", "wrong")
    assert err.value.sqlstate == "28P01"


@pytest.mark.parametrize("role,password,stored_prefix", [
    ("md5user", "md5-secret", "md5"),
    ("plainuser", "plain-secret", "SCRAM-SHA-256$"),
    ("trustuser", None, None),
])
def test_server_auth_roles(primary, role, password, stored_prefix):
    stored = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    if stored_prefix is None:
        assert stored is None
    else:
        assert stored.startswith(stored_prefix)
    conn = wire.connect(primary.port, role, "app", password)
    rows, _, _ = conn.simple_query("SELECT current_user")
    assert rows == [[role]]
    conn.close()
    hba = primary.sql("SELECT auth_method FROM pg_hba_file_rules WHERE %s = ANY(user_name)",
                      (role,), db="postgres")
    expected = {"md5user": "md5", "plainuser": "password", "trustuser": "trust"}[role]
    assert hba == [(expected,)]


def test_scram_secret_matches_postgres_format(primary):
    import base64
    stored = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    iterations, salt = stored.split("$")[1].split(":")
    assert wire.scram_secret("app-secret", base64.b64decode(salt), int(iterations)) == stored
    assert wire.md5_secret("md5-secret", "md5user") == primary.scalar(
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'")


def test_kill_backend_helper(primary):
    conn = psycopg.connect(primary.dsn(), autocommit=True)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert any(b["pid"] == pid for b in primary.backends(user="app"))
    assert primary.kill_backend(pid)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()


def test_cluster_lifecycle_cleans_up():
    """A second, independent cluster starts, streams, and leaves nothing behind."""
    c = PgCluster(with_replica=True, shared_buffers="16MB", max_connections=20)
    with c:
        assert c.primary.port != c.replica.port
        pids = [c.primary.postmaster_pid(), c.replica.postmaster_pid()]
        assert all(pids) and all(pid_alive(p) for p in pids)
        assert c.replica.in_recovery()
        tmpdir = c.tmpdir
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)
    assert not os.path.exists(tmpdir)
