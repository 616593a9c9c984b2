"""Helpers for the two-phase commit tests: two shard primaries (the session
cluster's primary and one of the module's own), a table on each, in-doubt
transactions made by hand, and the `pgrouter test-2pc-commit` test hook that
runs one multi-shard transaction through the router's commit path."""
from __future__ import annotations

import subprocess
import time

import psycopg

from .pg import APP_DB, APP_PASSWORD, APP_USER
from .router import app_user, router_binary
from .util import free_port, wait_until

TABLE = "tp_items"
GRACE_S = 10
PLAIN = {"name": "plainuser", "database": APP_DB, "password": "plain-secret", "auth": "scram"}


def make_tables(servers):
    for s in servers:
        # A role granted to app that cannot log in: what a JWT session's role is.
        s.sql("DO $$ BEGIN CREATE ROLE tp_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
              "GRANT tp_role TO app")
        s.sql(f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (note text);"
              f"GRANT ALL ON {TABLE} TO app, plainuser, tp_role")


def clean(servers):
    """Rolls back every prepared transaction (they hold locks) and empties the table."""
    for s in servers:
        for (gid,) in s.sql("SELECT gid FROM pg_prepared_xacts WHERE database = 'app'") or []:
            s.sql(f"ROLLBACK PREPARED '{gid}'")
        s.sql(f"TRUNCATE {TABLE}")


def drop_all(shard0):
    shard0.sql(f"DROP TABLE IF EXISTS {TABLE}, pgrouter_2pc_decisions, pgrouter_2pc_meta")


def fresh_decision_tables(shard0, coordinator_user=None):
    """Drops the 2PC decision tables so that the next router's coordinator
    user makes its own (they belong to whoever made them: a JWT router
    commits as `[jwt] connect_as`, others as `app`); lets
    `coordinator_user` create them in schema public."""
    shard0.sql("DROP TABLE IF EXISTS pgrouter_2pc_decisions, pgrouter_2pc_meta")
    if coordinator_user:
        shard0.sql(f'GRANT CREATE ON SCHEMA public TO "{coordinator_user}"')


def databases(shards):
    return [{"name": APP_DB, "host": "127.0.0.1", "port": s.port, "database_name": APP_DB,
             "role": "primary", "shard": i} for i, s in enumerate(shards)]


def start(routers, shards, metrics=False, env=None, **general):
    gen = dict(general)
    if metrics:
        gen["metrics_listen"] = f"127.0.0.1:{free_port()}"
    return routers.start(databases=databases(shards), general=gen, users=[app_user(), PLAIN], env=env)


def coordinator_id(shard0) -> str:
    """Waits for a router to have made the decision tables on shard 0;
    returns the coordinator id they hold."""
    def read():
        rows = shard0.sql("SELECT to_regclass('public.pgrouter_2pc_meta') IS NOT NULL")
        if not rows[0][0]:
            return None
        row = shard0.sql("SELECT coordinator_id, boots FROM pgrouter_2pc_meta")[0]
        return row if row[1] >= 1 else None
    cid, boots = wait_until(read, 20, what="pgrouter_2pc_meta made at start-up")
    assert len(cid) == 12 and int(cid, 16) >= 0
    assert boots >= 1
    return cid


def prepare(server, gid, note, user=APP_USER, password=APP_PASSWORD, role=None):
    """One shard's half of a multi-shard transaction, left prepared (as
    `role` when given: the prepared transaction's owner)."""
    with psycopg.connect(server.dsn(user=user, password=password), autocommit=True) as conn:
        if role:
            conn.execute(f"SET ROLE {role}")
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {TABLE} (note) VALUES (%s)", (note,))
        conn.execute(f"PREPARE TRANSACTION '{gid}'")


def prepared(server, like="pgrouter%"):
    rows = server.sql("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s", (like,)) or []
    return {r[0] for r in rows}


def notes(server):
    return {r[0] for r in server.sql(f"SELECT note FROM {TABLE}") or []}


def records(shard0):
    if not shard0.sql("SELECT to_regclass('public.pgrouter_2pc_decisions') IS NOT NULL")[0][0]:
        return {}
    return dict(shard0.sql("SELECT gid, outcome FROM pgrouter_2pc_decisions") or [])


def commit_tool(router, statements, env=None, wait=True):
    """Runs `pgrouter test-2pc-commit` with `router`'s config files:
    `statements` = [(shard, sql), ...] in one transaction. With wait, returns
    (exit code, output); else the running process."""
    cmd = [str(router_binary()), "test-2pc-commit", "--config", str(router.config_path),
           "--users", str(router.users_path), APP_DB, APP_USER]
    cmd += [f"{shard}:{sql}" for shard, sql in statements]
    full_env = {"RUST_LOG": "info", "PATH": "/usr/bin:/bin", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, start_new_session=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def wait_drained(shards, timeout=30):
    """Until no shard has a pgrouter prepared transaction; returns the seconds it took."""
    t0 = time.monotonic()
    wait_until(lambda: not any(prepared(s) for s in shards), timeout,
               what="pg_prepared_xacts drained")
    return time.monotonic() - t0
