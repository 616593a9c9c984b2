"""`workers = N`: N threads, each with its own event loop, each new client
dealt to the one with the fewest clients, and every pool split into one part
per worker.

Splitting must not change what a pool of size N means. A client whose
part is full borrows at once from a part with more than its own clients
need (room never opened, or a connection idle for 10 ms); from any part
with room after 50 ms. That includes a connection given back in another
part.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path


from harness.clients import Timer, connect, in_thread
from harness.ops import admin_general, admin_rows, pools
from harness.pg import APP_DB, APP_USER
from harness.router import app_user
from harness.util import wait_until

# worker_spread_percent = 0: every new client goes to the worker with the
# fewest (test_worker_balance.py covers the default, which keeps clients
# on one worker while load is light).
TWO_WORKERS = {"workers": 2, "checkout_timeout_ms": 4000, "worker_spread_percent": 0}


@contextmanager
def three_clients(router):
    """Three clients in transactions of their own. Each new client goes to
    the worker with fewer clients, in turn on a tie: c1 and c3 share a
    worker, c2 has the other."""
    clients = [connect(router.dsn(), autocommit=False) for _ in range(3)]
    try:
        yield clients
    finally:
        for c in clients:
            c.rollback()
            c.close()


def thread_names(pid: int) -> list[str]:
    return sorted((p / "comm").read_text().strip() for p in Path(f"/proc/{pid}/task").iterdir())


def test_two_workers_start_two_event_loop_threads(routers):
    router = routers.start(general=TWO_WORKERS)
    names = thread_names(router.pid)
    assert names.count("pgrouter-worker") == 2, names  # comm is cut at 15 bytes
    assert "tokio-rt-worker" not in names, names
    with connect(router.dsn()) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_split_pool_lends_and_hands_over_between_workers(routers, primary):
    """Pool 2 over 2 workers: one lease per worker. Each client goes to the
    worker with fewer clients, in turn on a tie, so c1 and c3 share a worker
    and c2 has the other one."""
    router = routers.start(general=admin_general(**TWO_WORKERS), users=[app_user(pool_size=2)])
    with three_clients(router) as (c1, c2, c3):
        c1.execute("SELECT 1")  # holds its worker's lease
        # c3's part is full: it borrows the other part's unopened lease
        # (without lending it would wait and time out after 4 s).
        with Timer() as t:
            assert c3.execute("SELECT 3").fetchone() == (3,)
        assert t.elapsed < 2.0, t.elapsed
        assert len(primary.pool_backends(user=APP_USER, db=APP_DB)) == 2
        # Both leases are out: c2 waits in its own part...
        result = {}

        def c2_query():
            with Timer() as t2:
                result["row"] = c2.execute("SELECT 2").fetchone()
            result["t"] = t2.elapsed
        th = in_thread(c2_query)
        wait_until(lambda: int(pools(router)[0]["cl_waiting"]) == 1, 5, what="c2 to wait")
        # ...and borrows the lease c1 gives back in the other part, while c3
        # still holds its own.
        c1.rollback()
        th.join(3)
        assert result.get("row") == (2,), f"c2 was not served from the other part ({result})"
        assert len(primary.pool_backends(user=APP_USER, db=APP_DB)) == 2


def test_many_clients_over_a_small_split_pool(routers, primary):
    """Transactions of 20 clients over a pool of 3 on 2 workers all complete,
    and never with more than 3 server connections."""
    router = routers.start(general=TWO_WORKERS, users=[app_user(pool_size=3)])
    errors = []
    peak = []

    def client(i):
        try:
            with connect(router.dsn(), autocommit=False) as c:
                for k in range(20):
                    assert c.execute("SELECT %s::int", (i * 100 + k,)).fetchone() == (i * 100 + k,)
                    c.commit()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
    threads = [in_thread(client, i) for i in range(20)]
    while any(t.is_alive() for t in threads):
        peak.append(len(primary.pool_backends(user=APP_USER, db=APP_DB)))
        for t in threads:
            t.join(0.05)
    assert errors == []
    assert max(peak, default=0) <= 3, peak


def test_a_waiter_borrows_room_that_turns_spare_while_it_waits(routers, primary):
    """Pool 2 over 2 workers. c1 and c3 share a worker, c2 has the other.
    c1 holds its part's lease; c2 has just given its connection back, so
    the other part has room, but a connection used a moment ago is not
    spare yet. c3 must still be served once it is (10 ms idle) or once it
    has waited 50 ms: nothing else happens in the pool that could wake its
    wait, so without a timed look it would wait out its 4 s and fail."""
    router = routers.start(general=admin_general(**TWO_WORKERS), users=[app_user(pool_size=2)])
    with three_clients(router) as (c1, c2, c3):
        c1.execute("SELECT 1")  # holds its worker's lease
        for attempt in range(5):
            assert c2.execute("SELECT 2").fetchone() == (2,)
            c2.commit()
            with Timer() as t:
                assert c3.execute("SELECT 3").fetchone() == (3,)
            c3.rollback()
            assert t.elapsed < 1.0, (attempt, t.elapsed)
        assert len(primary.pool_backends(user=APP_USER, db=APP_DB)) == 2


def test_a_waiter_is_woken_by_room_made_in_another_part(routers, primary):
    """Pool 2 over 2 workers: c1 and c3 share a worker, c2 has the other.
    Both leases are held when c3 starts waiting, so no rule of time can
    serve it; c2's commit makes room in the other part, and that must wake
    c3's wait at once rather than leave it to its 4 s timeout."""
    router = routers.start(general=admin_general(**TWO_WORKERS), users=[app_user(pool_size=2)])
    with three_clients(router) as (c1, c2, c3):
        c1.execute("SELECT 1")
        c2.execute("SELECT 2")
        result = {}

        def c3_query():
            result["row"] = c3.execute("SELECT 3").fetchone()
            result["at"] = time.monotonic()
        th = in_thread(c3_query)
        wait_until(lambda: int(pools(router)[0]["cl_waiting"]) == 1, 5, what="c3 to wait")
        time.sleep(0.2)  # past the 50 ms after which any room is lent
        assert "row" not in result
        made_room = time.monotonic()
        c2.commit()
        th.join(3)
        assert result.get("row") == (3,), result
        assert result["at"] - made_room < 1.0, result["at"] - made_room


# Shorter than the 50 ms after which any room is lent: only lending at once
# can serve a client in time.
IMPATIENT = {"workers": 2, "checkout_timeout_ms": 25, "worker_spread_percent": 0}


def test_spare_room_is_lent_at_once(routers, primary):
    """Pool 2 over 2 workers, a 25 ms checkout timeout. c1 and c3 share a
    worker, c2 has the other. The other part's lease is spare when it was
    never opened, and when its connection has been idle for 10 ms: c3
    borrows it at once both times, instead of timing out."""
    router = routers.start(general=admin_general(**IMPATIENT), users=[app_user(pool_size=2)])
    with three_clients(router) as (c1, c2, c3):
        c1.execute("SELECT 1")  # holds its worker's lease
        # The other part never opened its room.
        assert c3.execute("SELECT inet_server_port()").fetchone()[0] is not None
        c3.rollback()  # the borrowed connection goes back to the other part
        assert len(primary.pool_backends(user=APP_USER, db=APP_DB)) == 2
        # Now the other part has an idle connection; once it has been idle
        # for 10 ms it is spare again.
        time.sleep(0.1)
        assert c3.execute("SELECT 3").fetchone() == (3,)
        c3.rollback()
        # The lent lease went back to its own part: c2 still gets it.
        assert c2.execute("SELECT 2").fetchone() == (2,)
        assert len(primary.pool_backends(user=APP_USER, db=APP_DB)) == 2



def workers_of_clients(router) -> dict[str, int]:
    """application_name -> worker, for the clients of these tests."""
    return {r["application_name"]: int(r["worker"]) for r in admin_rows(router, "SHOW CLIENTS")
            if r["application_name"].startswith("c")}


def test_new_clients_go_to_the_worker_with_fewest(routers):
    """Six clients are dealt out three and three. After the three of one
    worker leave, the next two both go to that worker (turns alone would put
    one of them on the busier worker). The admin sessions that look this up
    are clients too, hence the margin of three."""
    router = routers.start(general=admin_general(**TWO_WORKERS))
    first = {f"c{i}": connect(router.dsn(), application_name=f"c{i}") for i in range(6)}
    later = []
    try:
        on = workers_of_clients(router)
        assert sorted(on.values()) == [0, 0, 0, 1, 1, 1], on
        emptied = on["c0"]
        for name, worker in on.items():
            if worker == emptied:
                first.pop(name).close()
        wait_until(lambda: len(workers_of_clients(router)) == 3, 5, what="three clients to leave")
        later = [connect(router.dsn(), application_name=f"c{i}") for i in (6, 7)]
        on = workers_of_clients(router)
        assert on["c6"] == emptied and on["c7"] == emptied, on
        for c in later:
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        for c in [*first.values(), *later]:
            c.close()
