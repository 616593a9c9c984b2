"""Two-phase commit recovery (SPEC §5 "Sharding", Atomicity; issue 17 item 5)
against real PostgreSQL primaries: the session cluster's primary is shard 0,
a server of this module's own is shard 1.

In-doubt transactions are made by hand, exactly as a router that crashed
would leave them: `PREPARE TRANSACTION 'pgrouter_<coordinator>_<boot>_<n>_...'`
on both shards, with a `commit` decision record for some and none for
others. Any router instance that starts must then, within 30 s, commit the
decided ones on every shard, roll back the undecided ones once they are older
than the grace period (10 s), delete the records of finished transactions,
and leave other coordinators' and other programs' prepared transactions
alone."""
from __future__ import annotations

import time

import pytest

from harness.ops import scrape
from harness.pg import PgCluster
from harness.twophase import (GRACE_S, clean, coordinator_id, drop_all, make_tables, notes, prepare,
                              prepared, records, start)
from harness.util import wait_until


@pytest.fixture(scope="module")
def shards(cluster):
    with PgCluster(with_replica=False, prefix="pgrouter-2pc-shard1-") as s1:
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


def test_recovery_finishes_in_doubt_transactions_by_the_record(routers, fresh):
    shards = fresh
    first = start(routers, shards)
    cid = coordinator_id(shards[0])
    first.stop()

    # As a router that crashed would leave them: a made-up boot no live
    # router has, so only recovery can own these ids.
    decided = [f"pgrouter_{cid}_999999_{n}_crashed:6432" for n in (1, 2)]
    undecided = f"pgrouter_{cid}_999999_3_crashed:6432"
    as_plain = f"pgrouter_{cid}_999999_4_crashed:6432"  # decided, owned by another login role
    as_role = f"pgrouter_{cid}_999999_5_crashed:6432"  # decided, owned by a role granted to app
    foreign = "pgrouter_0123456789ab_1_1_other-coordinator"
    not_ours = "someone_else_42"
    for gid in decided + [undecided]:
        for s in shards:
            prepare(s, gid, gid)
    for s in shards:
        prepare(s, as_plain, as_plain, user="plainuser", password="plain-secret")
        prepare(s, as_role, as_role, role="tp_role")
    prepare(shards[1], foreign, foreign)
    prepare(shards[1], not_ours, not_ours)
    prepared_at = time.monotonic()
    shards[0].sql("INSERT INTO pgrouter_2pc_decisions (gid, outcome, database) VALUES "
                  "(%s, 'commit', 'app'), (%s, 'commit', 'app'), (%s, 'commit', 'app'), "
                  "(%s, 'commit', 'app')", (decided[0], decided[1], as_plain, as_role))
    # A record of another logical database sharing the table (its shards are
    # elsewhere): this database's recovery cannot know it is finished.
    stranger = f"pgrouter_{cid}_999998_1_elsewhere"
    shards[0].sql("INSERT INTO pgrouter_2pc_decisions (gid, outcome, database) "
                  "VALUES (%s, 'commit', 'other_db')", (stranger,))

    # Two instances at once: any instance recovers, and racing each other is harmless.
    a = start(routers, shards, metrics=True)
    b = start(routers, shards, metrics=True)
    ours = f"pgrouter\\_{cid}\\_%"

    def decided_done():
        left = set().union(*(prepared(s, ours) for s in shards))
        return not (left & set(decided + [as_plain, as_role])) and left
    left = wait_until(decided_done, 20, what="decided transactions committed")
    if time.monotonic() - prepared_at < GRACE_S - 2:
        assert left == {undecided}, "an undecided transaction younger than the grace period is left alone"

    wait_until(lambda: not any(prepared(s, ours) for s in shards), 30,
               what="pg_prepared_xacts drained of this coordinator's transactions")
    assert time.monotonic() - prepared_at < 30 + 5
    for s in shards:
        assert notes(s) == set(decided + [as_plain, as_role]), f"shard on port {s.port}: all-or-nothing"
        assert prepared(s, "%") >= ({foreign, not_ours} if s is shards[1] else set())
    assert prepared(shards[1], "%") == {foreign, not_ours}, "other coordinators' ids are not touched"

    # Finished commits' records are deleted; the abort claimed for the
    # undecided one stays (so a late committer could never commit it).
    wait_until(lambda: records(shards[0]) == {undecided: "abort", stranger: "commit"}, 15,
               what="records of finished transactions deleted")

    logs = a.log() + b.log()
    assert "2PC recovery: finished an in-doubt transaction" in logs
    assert 'outcome="committed"' in logs and 'outcome="rolled_back"' in logs
    committed = sum(scrape(r).value("pgrouter_2pc_recovered_total", result="committed") for r in (a, b))
    rolled = sum(scrape(r).value("pgrouter_2pc_recovered_total", result="rolled_back") for r in (a, b))
    assert committed == 8, "4 decided transactions x 2 shards, each finished by exactly one instance"
    assert rolled == 2


def test_each_start_takes_a_new_boot_number(routers, fresh):
    shards = fresh
    r = start(routers, shards)
    coordinator_id(shards[0])
    r.stop()
    before = shards[0].sql("SELECT boots FROM pgrouter_2pc_meta")[0][0]
    r2 = start(routers, shards)
    wait_until(lambda: shards[0].sql("SELECT boots FROM pgrouter_2pc_meta")[0][0] > before, 20,
               what="boot counter incremented by the next start")
    r2.stop()


def test_shard_without_prepared_transactions_is_reported(routers, cluster):
    """max_prepared_transactions = 0 on a shard primary: a start-up warning naming it."""
    with PgCluster(with_replica=False, prefix="pgrouter-2pc-noprep-",
                   extra_conf={"max_prepared_transactions": 0}) as s1:
        r = start(routers, [cluster.primary, s1.primary])
        log = r.log()
        assert "max_prepared_transactions = 0" in log, log
        line = next(l for l in log.splitlines() if "max_prepared_transactions = 0" in l)
        assert f"shard 1 of database \"app\" (127.0.0.1:{s1.primary.port})" in line
        assert f":{cluster.primary.port})" not in line
        r.stop()
