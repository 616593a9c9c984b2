"""The two-phase commit path (SPEC §5 "Sharding", Atomicity; issue 17 item 5)
against two real PostgreSQL primaries, driven by the `pgrouter
test-2pc-commit` test hook: legs from the router's pools, BEGIN, statements
on each shard, then the router's `Coordinator::commit`.

All-or-nothing is checked on every shard: a commit shows its rows on both, a
failure at PREPARE (a deferred unique constraint) or an unwritable decision
record shows none, and a router killed between PREPARE and COMMIT PREPARED —
before or after the decision record — is finished by another router instance
within 30 s according to the record."""
from __future__ import annotations

import re
import signal
import time

import pytest

from harness.pg import PgCluster
from harness.router import app_user
from harness.twophase import (GRACE_S, PLAIN, clean, commit_tool, coordinator_id, databases, drop_all,
                              fresh_decision_tables, make_tables, notes, prepared, records, start,
                              wait_drained, TABLE)
from harness.util import wait_until


@pytest.fixture(scope="module")
def shards(cluster):
    with PgCluster(with_replica=False, prefix="pgrouter-2pc-commit-") as s1:
        servers = [cluster.primary, s1.primary]
        make_tables(servers)
        yield servers
        clean(servers)
        drop_all(cluster.primary)


@pytest.fixture
def fresh(shards):
    clean(shards)
    yield shards
    clean(shards)


def insert(note):
    return f"INSERT INTO {TABLE} (note) VALUES ('{note}')"


def test_commit_writes_on_every_shard_and_leaves_nothing_prepared(routers, fresh):
    shards = fresh
    r = start(routers, shards)
    code, out = commit_tool(r, [(0, insert("a0")), (1, insert("a1")), (0, insert("b0"))])
    assert code == 0 and out.strip().endswith("COMMIT"), out
    assert notes(shards[0]) == {"a0", "b0"}
    assert notes(shards[1]) == {"a1"}
    assert not any(prepared(s) for s in shards)
    # The committer exited before deleting its record; the running router's
    # recovery removes records whose transaction is prepared nowhere.
    wait_until(lambda: not records(shards[0]), 15, what="the finished commit's record deleted")


def test_one_shard_commits_in_one_phase(routers, fresh):
    shards = fresh
    r = start(routers, shards)
    coordinator_id(shards[0])
    time.sleep(0.5)  # the router's own start-up boot is taken
    boots = shards[0].sql("SELECT boots FROM pgrouter_2pc_meta")[0][0]
    code, out = commit_tool(r, [(1, insert("one"))])
    assert code == 0 and out.strip().endswith("COMMIT"), out
    assert notes(shards[1]) == {"one"} and notes(shards[0]) == set()
    assert not records(shards[0]), "no decision record for a single-shard transaction"
    after = shards[0].sql("SELECT boots FROM pgrouter_2pc_meta")[0][0]
    assert after == boots, "the one-phase path never asked the coordinator for a boot number"


def test_a_shard_refusing_prepare_rolls_back_every_shard(routers, fresh):
    shards = fresh
    shards[1].sql("ALTER TABLE tp_items ADD CONSTRAINT tp_unique UNIQUE (note) DEFERRABLE INITIALLY DEFERRED")
    try:
        shards[1].sql(insert("dup"))
        r = start(routers, shards)
        code, out = commit_tool(r, [(0, insert("x0")), (1, insert("dup"))])
        assert code == 3, out
        assert "ERROR 23505" in out and "tp_unique" in out, out
        assert notes(shards[0]) == set(), "nothing committed on the shard that prepared fine"
        assert notes(shards[1]) == {"dup"}
        assert not any(prepared(s) for s in shards), "the prepared shard was rolled back at once"
        assert not records(shards[0])
    finally:
        shards[1].sql("ALTER TABLE tp_items DROP CONSTRAINT tp_unique")


def test_unwritable_decision_record_fails_cleanly(routers, fresh):
    shards = fresh
    r = start(routers, shards, coordinator_database="no_such_database")
    code, out = commit_tool(r, [(0, insert("y0")), (1, insert("y1"))])
    assert code == 3, out
    assert "ERROR 58000" in out and "no_such_database" in out and "rolled back" in out, out
    assert notes(shards[0]) == set() and notes(shards[1]) == set()
    assert not any(prepared(s) for s in shards)


def test_coordinator_without_create_is_told_what_to_grant(routers, fresh):
    """The decision tables are missing and the coordinator user (here the
    first users.toml entry, plainuser) may not create in schema public — the
    PostgreSQL 15 default, which broke the quickstart's sharded demo: the
    error names the user, where, and the GRANT that fixes it."""
    shards = fresh
    fresh_decision_tables(shards[0])
    shards[0].sql("REVOKE CREATE ON SCHEMA public FROM plainuser")
    try:
        r = routers.start(databases=databases(shards), users=[PLAIN, app_user()])
        code, out = commit_tool(r, [(0, insert("g0")), (1, insert("g1"))])
        assert code == 3, out
        assert "ERROR 58000" in out and "rolled back on every shard" in out, out
        assert 'as the coordinator user "plainuser"' in out, out
        assert f'database "app" on 127.0.0.1:{shards[0].port}' in out, out
        assert 'GRANT CREATE ON SCHEMA public TO "plainuser"' in out, out
        assert notes(shards[0]) == set() and notes(shards[1]) == set()
        # The GRANT named is enough.
        shards[0].sql('GRANT CREATE ON SCHEMA public TO "plainuser"')
        code, out = commit_tool(r, [(0, insert("h0")), (1, insert("h1"))])
        assert code == 0 and out.strip().endswith("COMMIT"), out
        assert notes(shards[0]) == {"h0"} and notes(shards[1]) == {"h1"}
    finally:
        shards[0].sql("GRANT CREATE ON SCHEMA public TO plainuser")
        # Made by plainuser: later tests' coordinator (app) makes its own.
        fresh_decision_tables(shards[0])


def test_decision_record_refused_after_prepare_rolls_back_every_shard(routers, fresh):
    shards = fresh
    r = start(routers, shards)
    coordinator_id(shards[0])
    shards[0].sql("REVOKE INSERT ON pgrouter_2pc_decisions FROM app")
    try:
        code, out = commit_tool(r, [(0, insert("z0")), (1, insert("z1"))])
    finally:
        shards[0].sql("GRANT INSERT ON pgrouter_2pc_decisions TO app")
    assert code == 3, out
    assert "ERROR 58000" in out and "permission denied" in out and "rolled back on every shard" in out, out
    assert notes(shards[0]) == set() and notes(shards[1]) == set()
    assert not any(prepared(s) for s in shards), "prepared shards rolled back at once"


def crash_at(hook, router, shards, statements):
    """Starts a commit that pauses at `hook`, waits until every shard shows
    it prepared, and SIGKILLs it there. Returns the transaction id."""
    proc = commit_tool(router, statements, env={hook: "30000"}, wait=False)
    try:
        gids = wait_until(lambda: set.intersection(*(prepared(s) for s in shards)), 20,
                          what="PREPARE TRANSACTION visible on every shard")
        if hook == "PGROUTER_TEST_2PC_PAUSE_MS":
            wait_until(lambda: records(shards[0]).get(next(iter(gids))) == "commit", 10,
                       what="the commit record")
        time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert len(gids) == 1
    return gids.pop()


def test_crash_after_the_record_is_committed_by_another_instance(routers, fresh):
    shards = fresh
    # The first router prepares nothing itself: it only owns the config.
    first = start(routers, shards)
    gid = crash_at("PGROUTER_TEST_2PC_PAUSE_MS", first, shards, [(0, insert("c0")), (1, insert("c1"))])
    assert notes(shards[0]) == set(), "not committed before COMMIT PREPARED"
    first.stop()
    killed_at = time.monotonic()
    start(routers, shards)
    wait_drained(shards, timeout=30)
    assert time.monotonic() - killed_at < 30
    assert notes(shards[0]) == {"c0"} and notes(shards[1]) == {"c1"}, "committed on every shard"
    wait_until(lambda: gid not in records(shards[0]), 15, what="record deleted once finished")


def test_crash_before_the_record_is_rolled_back_by_another_instance(routers, fresh):
    shards = fresh
    first = start(routers, shards)
    gid = crash_at("PGROUTER_TEST_2PC_PAUSE_BEFORE_RECORD_MS", first, shards,
                   [(0, insert("d0")), (1, insert("d1"))])
    assert gid not in records(shards[0])
    first.stop()
    killed_at = time.monotonic()
    start(routers, shards)
    took = wait_drained(shards, timeout=30)
    assert time.monotonic() - killed_at < 30
    assert took >= GRACE_S - 3, "a transaction with no record waits out the grace period"
    assert notes(shards[0]) == set() and notes(shards[1]) == set(), "rolled back on every shard"
    assert records(shards[0]).get(gid) == "abort", "the abort is recorded, so no late commit can win"


def test_a_committer_slower_than_the_grace_period_loses_to_recovery(routers, fresh):
    """The decision table is the one arbiter: a router's recovery claims the
    abort of a transaction prepared > 10 s ago with no record; the slow
    committer's INSERT of `commit` then fails, it rolls back every shard,
    and its client gets 40001. Never half committed."""
    shards = fresh
    r = start(routers, shards)
    proc = commit_tool(r, [(0, insert("s0")), (1, insert("s1"))],
                       env={"PGROUTER_TEST_2PC_PAUSE_BEFORE_RECORD_MS": "16000"}, wait=False)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    assert "ERROR 40001" in out and "rolled back by recovery" in out, out
    assert notes(shards[0]) == set() and notes(shards[1]) == set()
    assert not any(prepared(s) for s in shards)
    gid = re.search(r"ERROR 40001 two-phase commit (pgrouter_\S+) was", out).group(1)
    assert records(shards[0]).get(gid) == "abort"
    assert "outcome=\"rolled_back\"" in r.log()
