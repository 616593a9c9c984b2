"""Fault injection under load (issue 19 item 2).

Each test runs money transfers through the router (psycopg threads and
asyncpg tasks: UPDATE, UPDATE, INSERT into a log, COMMIT; harness/bank.py),
injects one fault, lets it end, and then proves:

- the books balance: the sum of balances is unchanged, every transfer whose
  COMMIT was acknowledged is in the log exactly once, and every balance is
  its initial value plus the log's incoming minus outgoing (no half-done
  transfer);
- no client hung: every attempt ended within a bound well below the fault's
  length and every client stopped when asked;
- the router recovered: the time from the fault's end to the first
  successful transaction (or read on the replica) is printed and bounded.

The servers are a primary + replica of this module's own (a crash must not
disturb other tests), with `synchronous_commit = on`: an acknowledged commit
must survive a crash of the server, which the suite's usual throw-away
setting does not promise. The partition test uses a primary of its own
inside a network namespace (harness/faults.py).
"""
from __future__ import annotations

import signal
import time
import uuid

import psycopg
import pytest

from harness.bank import Bank, Ledger, Workload
from harness.faults import NetFaults, NetnsPrimaryCluster, crash, restart, signal_server
from harness.netns import netns  # noqa: F401  (pytest fixture)
from harness.pg import PgCluster
from harness.router import RouterFactory
from harness.util import wait_until

# Fast detection, so that the tests are short: health checks every 250 ms,
# a failed replica left out for 1 s, 1 s to connect, 2 s for a statement.
FAULT_GENERAL = {
    "healthcheck_interval_ms": 250,
    "ban_time_ms": 1000,
    "connect_timeout_ms": 1000,
    "checkout_timeout_ms": 3000,
    "query_timeout_ms": 2000,
    "default_pool_size": 8,
}
# No single client attempt may take longer than this: the longest legitimate
# wait is a statement timing out (2 s) and the cancel not answered either (2 s
# more), plus a connect or a checkout. A client held for a whole fault (10 s
# frozen; 8 s cut off, plus TCP's retransmission back-off) exceeds it.
MAX_ATTEMPT_S = 8.0
# Clients must all stop within this after being asked.
STOP_DEADLINE_S = 15.0
# Recovery (fault end -> first success) must be under this.
MAX_RECOVERY_S = 10.0


@pytest.fixture(autouse=True)
def _stop_workloads():
    yield
    Workload.stop_all()


@pytest.fixture(scope="module")
def fault_cluster():
    with PgCluster(with_replica=True, prefix="pgrouter-faults-",
                   extra_conf={"synchronous_commit": "on"}) as c:
        yield c


@pytest.fixture
def servers(fault_cluster):
    """The module's cluster with both servers running (a failed test may
    have left one killed or frozen)."""
    for s in (fault_cluster.primary, fault_cluster.replica):
        pid = s.postmaster_pid()
        if pid:
            signal_server(s, signal.SIGCONT)
        if not s.is_running():
            s.start()
    fault_cluster.wait_streaming()
    return fault_cluster


def _factory(cluster, request):
    base = cluster.tmpdir / "routers" / f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"
    base.mkdir(parents=True)
    return RouterFactory(cluster, base)


@pytest.fixture
def fault_routers(fault_cluster, request):
    factory = _factory(fault_cluster, request)
    yield factory
    problems = factory.finish()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def databases(cluster, replica: bool = True) -> list[dict]:
    servers = [(cluster.primary, "primary")]
    if replica:
        servers.append((cluster.replica, "replica"))
    return [{"name": "app", "host": s.host, "port": s.port, "database_name": "app", "role": role}
            for s, role in servers]


def wait_successes(ledger: Ledger, n: int, since: float = 0.0, timeout: float = 30) -> None:
    wait_until(lambda: ledger.successes_after(since) >= n, timeout,
               what=f"{n} committed transfers")


def recovery_time(ledger: Ledger, fault_end: float, timeout: float = 30) -> float:
    """Seconds from `fault_end` to the first transfer committed after it."""
    first = wait_until(lambda: ledger.first_success_after(fault_end), timeout,
                       interval=0.02, what="a transfer to commit after the fault")
    return first - fault_end


def finish_and_check(load: Workload, bank: Bank, ledger: Ledger, what: str) -> dict:
    hung = load.finish(STOP_DEADLINE_S)
    assert not hung, f"clients still hanging {STOP_DEADLINE_S}s after being stopped: {hung}"
    longest, started, kind = ledger.longest
    assert longest < MAX_ATTEMPT_S, (f"a {kind} attempt took {longest:.1f}s "
                                     "(a client was held by the fault)")
    summary = bank.check(ledger)
    print(f"\n[{what}] {summary}, errors {dict(ledger.errors)}, longest attempt {longest:.2f}s")
    return summary


def read_port(ledger: Ledger, after: float, port: int):
    with ledger.lock:
        return next((t for t, p in ledger.reads_ok if t >= after and p == port), None)


# --------------------------------------------------------------- scenarios --
def test_primary_sigkilled_and_restarted_under_write_load(servers, fault_routers):
    c = servers
    bank = Bank.create(c.primary)
    router = fault_routers.start(general=FAULT_GENERAL, databases=databases(c))
    ledger = Ledger()
    load = Workload(router, bank, ledger).start()
    wait_successes(ledger, 30)

    crash(c.primary)
    time.sleep(1.0)
    restart(c.primary)   # crash recovery; returns once it accepts connections
    fault_end = time.monotonic()
    recovery = recovery_time(ledger, fault_end)
    wait_successes(ledger, 30, since=fault_end)

    summary = finish_and_check(load, bank, ledger, "primary SIGKILL")
    print(f"[primary SIGKILL] recovery {recovery:.2f}s after the restart")
    assert summary["unknown"] > 0, "the crash failed no transfer: it did not hit the load"
    assert recovery < MAX_RECOVERY_S
    # The replica reconnected and replays the same books.
    c.wait_streaming()
    c.wait_replayed()
    assert c.replica.scalar(f"SELECT sum(balance) FROM {bank.accounts}") == bank.total


def test_replica_sigkilled_and_restarted_under_read_load(servers, fault_routers):
    c = servers
    bank = Bank.create(c.primary)
    c.wait_replayed()
    router = fault_routers.start(general=FAULT_GENERAL, databases=databases(c))
    ledger = Ledger()
    readers = 4
    load = Workload(router, bank, ledger, psycopg_clients=2, asyncpg_clients=2,
                    readers=readers).start()
    wait_until(lambda: read_port(ledger, 0, c.replica.port), 20, what="reads on the replica")
    wait_successes(ledger, 10)

    killed_at = time.monotonic()
    crash(c.replica)
    time.sleep(2.0)
    outage_reads = sum(1 for t, _ in ledger.reads_ok if t > killed_at + 0.5)
    restart(c.replica)
    fault_end = time.monotonic()
    back = wait_until(lambda: read_port(ledger, fault_end, c.replica.port), 30, interval=0.02,
                      what="reads on the replica again")
    recovery = back - fault_end
    wait_successes(ledger, 10, since=fault_end)

    summary = finish_and_check(load, bank, ledger, "replica SIGKILL")
    errors = [e for t, e in ledger.read_errors if t >= killed_at]
    print(f"[replica SIGKILL] reads during the outage {outage_reads}, read errors {errors}, "
          f"replica serving reads again {recovery:.2f}s after its restart")
    assert not ledger.bad_reads, f"reads saw unbalanced books: {ledger.bad_reads[:5]}"
    assert outage_reads > 0, "no read succeeded while the replica was down"
    # At most the reads in flight on the replica when it died may fail.
    assert len(errors) <= readers, errors
    assert summary["unknown"] == 0, f"transfers failed though the primary was fine: {ledger.errors}"
    assert recovery < MAX_RECOVERY_S


@pytest.mark.parametrize("which", ["replica", "primary"])
def test_server_sigstopped_for_10s(servers, fault_routers, which):
    """A server that stops answering without closing anything: the router's
    timeouts free the clients it held, other clients carry on (reads move to
    the primary while a replica is frozen), and after SIGCONT all is well."""
    c = servers
    frozen = c.replica if which == "replica" else c.primary
    bank = Bank.create(c.primary)
    c.wait_replayed()
    router = fault_routers.start(general=FAULT_GENERAL, databases=databases(c))
    ledger = Ledger()
    load = Workload(router, bank, ledger, psycopg_clients=2, asyncpg_clients=2,
                    readers=3).start()
    wait_until(lambda: read_port(ledger, 0, c.replica.port), 20, what="reads on the replica")
    wait_successes(ledger, 10)

    stopped_at = time.monotonic()
    signal_server(frozen, signal.SIGSTOP)
    try:
        time.sleep(10)
    finally:
        cont_at = time.monotonic()
        signal_server(frozen, signal.SIGCONT)
    fault_end = time.monotonic()
    # Reads answered in the last 2 s of the freeze (those in flight when it
    # began have all ended by then, one way or another).
    during = [p for t, p in ledger.reads_ok if stopped_at + MAX_ATTEMPT_S < t < cont_at]
    slow = [round(took, 1) for t, took in ledger.slow_reads if stopped_at <= t < cont_at]
    if which == "replica":
        back = wait_until(lambda: read_port(ledger, fault_end, c.replica.port), 30,
                          interval=0.02, what="reads on the replica again")
    else:
        back = fault_end + recovery_time(ledger, fault_end)
    recovery = back - fault_end
    wait_successes(ledger, 10, since=fault_end)

    summary = finish_and_check(load, bank, ledger, f"{which} SIGSTOP")
    print(f"[{which} SIGSTOP 10s] reads served in its last 2 s {len(during)}, reads over 1 s "
          f"{slow}, recovery {recovery:.2f}s after SIGCONT")
    assert not ledger.bad_reads
    assert recovery < MAX_RECOVERY_S
    if which == "replica":
        # Reads went on, on the primary; writes never noticed.
        assert during and set(during) == {c.primary.port}, during
        assert summary["unknown"] == 0, ledger.errors
    else:
        # Transfers on the frozen primary failed (at most their timeout late).
        assert summary["unknown"] > 0


def test_router_sigkilled_and_restarted_under_load(servers, fault_routers):
    c = servers
    bank = Bank.create(c.primary)
    router = fault_routers.start(general=FAULT_GENERAL, databases=databases(c))
    ledger = Ledger()
    load = Workload(router, bank, ledger).start()
    wait_successes(ledger, 30)

    before = {b["pid"] for b in c.primary.backends(user="app")}
    router.signal(signal.SIGKILL)
    router.proc.wait(timeout=10)
    time.sleep(0.5)
    router.start()      # same port, same files
    fault_end = time.monotonic()
    recovery = recovery_time(ledger, fault_end)
    wait_successes(ledger, 30, since=fault_end)

    summary = finish_and_check(load, bank, ledger, "router SIGKILL")
    print(f"[router SIGKILL] recovery {recovery:.2f}s after the restart")
    assert summary["unknown"] > 0, "the kill failed no transfer: it did not hit the load"
    assert recovery < MAX_RECOVERY_S
    # Nothing half-done stays on the servers: the dead router's backends
    # are gone (their transactions rolled back), none of the new router's
    # is left inside a transaction, no prepared transaction lingers.
    wait_until(lambda: not before & {b["pid"] for b in c.primary.backends(user="app")}, 10,
               what="the killed router's server connections to end")
    wait_until(lambda: not [b for b in c.primary.backends(user="app")
                            if (b["state"] or "").startswith("idle in transaction")], 5,
               what="no backend idle in a transaction")
    assert c.primary.scalar("SELECT count(*) FROM pg_prepared_xacts", db="postgres") == 0


def test_partition_and_packet_loss_to_the_primary(netns, request):  # noqa: F811
    """The primary sits behind a veth pair: 20 % of packets each way lost for
    a while (transfers go on, slower), then every packet dropped for 8 s (no
    FIN, no RST) and the network back."""
    cluster = NetnsPrimaryCluster(netns, extra_conf={"synchronous_commit": "on"})
    request.addfinalizer(cluster.teardown)
    cluster.start()
    factory = _factory(cluster, request)
    try:
        run_partition_scenario(cluster, factory, NetFaults(netns))
    finally:
        problems = factory.finish()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def run_partition_scenario(cluster, factory, faults: NetFaults) -> None:
    bank = Bank.create(cluster.primary)
    router = factory.start(general=FAULT_GENERAL, databases=databases(cluster, replica=False))
    ledger = Ledger()
    load = Workload(router, bank, ledger).start()
    try:
        wait_successes(ledger, 30)

        faults.loss(20)
        loss_start = time.monotonic()
        time.sleep(5)
        faults.heal()
        during_loss = ledger.successes_after(loss_start)

        faults.partition()
        cut_at = time.monotonic()
        time.sleep(8)
        faults.heal()
        fault_end = time.monotonic()
        recovery = recovery_time(ledger, fault_end)
        wait_successes(ledger, 30, since=fault_end)
    finally:
        faults.heal()
    cut_ok = ledger.successes_after(cut_at) - ledger.successes_after(fault_end)
    summary = finish_and_check(load, bank, ledger, "loss + partition")
    print(f"[20% loss 5s] {during_loss} transfers committed meanwhile; "
          f"[partition 8s] {cut_ok} committed meanwhile, recovery {recovery:.2f}s after it healed")
    assert during_loss > 0, "no transfer got through a 20 % packet loss"
    assert summary["unknown"] > 0, "the partition failed no transfer"
    assert recovery < MAX_RECOVERY_S
    # The test's own view of the server is through the unix socket: check
    # that the router's view works too (psql-like client, fresh connection).
    with psycopg.connect(router.dsn(connect_timeout=3), autocommit=True) as conn:
        assert conn.execute(f"SELECT sum(balance) FROM {bank.accounts}").fetchone()[0] == bank.total
