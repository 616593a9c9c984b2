"""A money-transfer workload and the invariant it must keep, for the
fault-injection tests (test_faults.py).

`Bank.create(server)` makes two fresh tables on a primary: accounts (every
balance starts at `initial`) and a transfers log whose `client_tx` is chosen
by the client. A transfer is one transaction through the router: UPDATE both
balances, INSERT the log row, COMMIT. Clients (psycopg threads, asyncpg
tasks) loop doing transfers and note in a `Ledger` which ones were
acknowledged (COMMIT answered) and which failed or have an unknown outcome.

`Bank.check(server, ledger)` then proves nothing was lost or half-done,
whatever the faults were: the sum of balances is unchanged, every
acknowledged transfer is in the log exactly once with its amounts, the log
holds nothing no client attempted, and each balance equals its initial value
plus what the log says came in minus what went out (so a log row exists if
and only if its balance changes happened).

Clients also note how long each attempt took: a client that the router left
hanging shows up as a long attempt, or as a thread that does not finish.
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import psycopg

from .pg import APP_USER


def _error_name(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    return state or type(exc).__name__


@dataclass
class Ledger:
    """What the clients saw. Shared by every client of one test."""

    acked: dict = field(default_factory=dict)       # client_tx -> (src, dst, amount)
    unknown: set = field(default_factory=set)       # failed: maybe committed, maybe not
    success_times: list = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    reads_ok: list = field(default_factory=list)    # (time, server port)
    bad_reads: list = field(default_factory=list)   # sums that were not the total
    read_errors: list = field(default_factory=list)  # (time, error name)
    slow_reads: list = field(default_factory=list)  # (started, seconds) of reads over 1 s
    longest: tuple = (0.0, 0.0, "")                 # (seconds, started at, what)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt_took(self, started: float, what: str) -> None:
        took = time.monotonic() - started
        with self.lock:
            if took > self.longest[0]:
                self.longest = (took, started, what)

    def committed(self, tx: uuid.UUID, move: tuple) -> None:
        with self.lock:
            self.acked[tx] = move
            self.success_times.append(time.monotonic())

    def failed(self, tx: uuid.UUID, exc: BaseException) -> None:
        with self.lock:
            self.unknown.add(tx)
            self.errors[_error_name(exc)] += 1

    def first_success_after(self, t: float) -> float | None:
        with self.lock:
            later = [s for s in self.success_times if s >= t]
        return min(later) if later else None

    def successes_after(self, t: float) -> int:
        with self.lock:
            return sum(1 for s in self.success_times if s >= t)


@dataclass
class Bank:
    server: object      # the primary the tables live on (harness.pg.PgServer)
    accounts: str
    transfers: str
    n_accounts: int
    initial: int

    @classmethod
    def create(cls, server, n_accounts: int = 20, initial: int = 1000) -> "Bank":
        tag = uuid.uuid4().hex[:8]
        bank = cls(server, f"accounts_{tag}", f"transfers_{tag}", n_accounts, initial)
        with server.connect("app") as conn:
            conn.execute(f"CREATE TABLE {bank.accounts} (id int PRIMARY KEY, balance bigint NOT NULL)")
            conn.execute(f"INSERT INTO {bank.accounts} SELECT g, %s FROM generate_series(1, %s) g",
                         (initial, n_accounts))
            conn.execute(f"CREATE TABLE {bank.transfers} (id bigserial PRIMARY KEY, "
                         "src int NOT NULL, dst int NOT NULL, amount bigint NOT NULL, "
                         "client_tx uuid NOT NULL UNIQUE)")
            for t in (bank.accounts, bank.transfers):
                conn.execute(f"ALTER TABLE {t} OWNER TO {APP_USER}")
        return bank

    @property
    def total(self) -> int:
        return self.n_accounts * self.initial

    def new_move(self, rng: random.Random) -> tuple[uuid.UUID, tuple[int, int, int]]:
        src, dst = rng.sample(range(1, self.n_accounts + 1), 2)
        return uuid.uuid4(), (src, dst, rng.randint(1, 50))

    def statements(self, tx: uuid.UUID, move: tuple) -> list[tuple[str, tuple]]:
        """The transfer's statements, rows locked in id order (no deadlocks
        between clients: a deadlock would be a failure the faults did not cause)."""
        src, dst, amount = move
        updates = sorted([(src, -amount), (dst, amount)])
        upd = f"UPDATE {self.accounts} SET balance = balance + $1 WHERE id = $2"
        ins = f"INSERT INTO {self.transfers} (src, dst, amount, client_tx) VALUES ($1, $2, $3, $4)"
        return [(upd, (delta, acc)) for acc, delta in updates] + [(ins, (src, dst, amount, tx))]

    def read_sql(self) -> str:
        return f"SELECT sum(balance), inet_server_port() FROM {self.accounts}"

    # ---------------------------------------------------------------- check --
    def check(self, ledger: Ledger) -> dict:
        """Asserts the invariant on the primary; returns a summary."""
        with self.server.connect("app") as conn:
            balances = dict(conn.execute(f"SELECT id, balance FROM {self.accounts}").fetchall())
            log = conn.execute(
                f"SELECT client_tx, src, dst, amount FROM {self.transfers}").fetchall()
        assert sum(balances.values()) == self.total, \
            f"sum of balances {sum(balances.values())} != {self.total}"
        logged: dict = {}
        for tx, src, dst, amount in log:
            assert tx not in logged, f"transfer {tx} logged twice"
            logged[tx] = (src, dst, amount)
        with ledger.lock:
            acked, unknown = dict(ledger.acked), set(ledger.unknown)
        missing = [tx for tx in acked if tx not in logged]
        assert not missing, f"{len(missing)} acknowledged transfers are not in the log: {missing[:5]}"
        wrong = [tx for tx, move in acked.items() if logged[tx] != move]
        assert not wrong, f"logged amounts differ from what the client sent: {wrong[:5]}"
        invented = [tx for tx in logged if tx not in acked and tx not in unknown]
        assert not invented, f"log rows no client attempted: {invented[:5]}"
        expected = {i: self.initial for i in range(1, self.n_accounts + 1)}
        for src, dst, amount in logged.values():
            expected[src] -= amount
            expected[dst] += amount
        assert balances == expected, "balances do not match the log: " + ", ".join(
            f"account {i}: {balances.get(i)} != {v}" for i, v in expected.items()
            if balances.get(i) != v)
        return {"acked": len(acked), "unknown": len(unknown),
                "unknown_committed": sum(1 for tx in unknown if tx in logged),
                "logged": len(logged)}


# ------------------------------------------------------------------ clients --
def _psycopg_sql(sql: str) -> str:
    """$1.. placeholders as psycopg's %s."""
    for i in range(9, 0, -1):
        sql = sql.replace(f"${i}", "%s")
    return sql


class Workload:
    """Transfer clients (psycopg threads and asyncpg tasks in one thread of
    their own) and optional reader threads, all against one router port,
    until `stop()`. `finish(deadline)` joins them; clients still running then
    were left hanging."""

    def __init__(self, router, bank: Bank, ledger: Ledger, psycopg_clients: int = 3,
                 asyncpg_clients: int = 3, readers: int = 0, pause: float = 0.0):
        self.router, self.bank, self.ledger = router, bank, ledger
        self.pause = pause
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []
        for i in range(psycopg_clients):
            self.threads.append(threading.Thread(target=self._psycopg_client, args=(i,),
                                                 name=f"psycopg-transfer-{i}", daemon=True))
        if asyncpg_clients:
            self.threads.append(threading.Thread(
                target=lambda: asyncio.run(self._asyncpg_clients(asyncpg_clients)),
                name="asyncpg-transfers", daemon=True))
        for i in range(readers):
            self.threads.append(threading.Thread(target=self._reader, args=(i,),
                                                 name=f"reader-{i}", daemon=True))

    # Started workloads not yet stopped (see `stop_all`).
    _running: set = set()

    def start(self) -> "Workload":
        Workload._running.add(self)
        for t in self.threads:
            t.start()
        return self

    @classmethod
    def stop_all(cls) -> None:
        """Stops every workload still running: a test that failed half-way
        must not leave clients hammering the next test's servers."""
        for load in list(cls._running):
            load.stop()

    def stop(self) -> None:
        self._stop.set()
        Workload._running.discard(self)

    def finish(self, deadline: float = 20.0) -> list[str]:
        """Stops the clients; the names of those still running after `deadline` s."""
        self.stop()
        end = time.monotonic() + deadline
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]

    def _dsn(self) -> str:
        return self.router.dsn(connect_timeout=3)

    # psycopg: one connection, kept until it fails.
    def _psycopg_client(self, seed: int) -> None:
        rng = random.Random(seed)
        conn = None
        while not self._stop.is_set():
            tx, move = self.bank.new_move(rng)
            started = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg.connect(self._dsn(), autocommit=True, prepare_threshold=None)
                with conn.transaction():
                    for sql, args in self.bank.statements(tx, move):
                        conn.execute(_psycopg_sql(sql), args)
                self.ledger.committed(tx, move)
            except psycopg.Error as exc:
                self.ledger.failed(tx, exc)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            finally:
                self.ledger.attempt_took(started, "psycopg transfer")
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()

    async def _asyncpg_clients(self, n: int) -> None:
        await asyncio.gather(*(self._asyncpg_client(100 + i) for i in range(n)))

    async def _asyncpg_client(self, seed: int) -> None:
        rng = random.Random(seed)
        conn = None
        kwargs = self.router.connect_kwargs()
        kwargs["timeout"] = 3
        while not self._stop.is_set():
            tx, move = self.bank.new_move(rng)
            started = time.monotonic()
            try:
                if conn is None:
                    conn = await asyncpg.connect(**kwargs)
                async with conn.transaction():
                    for sql, args in self.bank.statements(tx, move):
                        await conn.execute(sql, *args)
                self.ledger.committed(tx, move)
            except Exception as exc:  # noqa: BLE001 - any failure: outcome unknown
                # (asyncpg also raises InternalClientError when a FATAL that
                # PostgreSQL, or the router, sends to an idle connection
                # races with its next query.)
                self.ledger.failed(tx, exc)
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.05)
            finally:
                self.ledger.attempt_took(started, "asyncpg transfer")
            if self.pause:
                await asyncio.sleep(self.pause)
        if conn is not None:
            conn.terminate()

    # Readers: single statements outside a transaction (they go to replicas).
    def _reader(self, _seed: int) -> None:
        conn = None
        sql = self.bank.read_sql()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg.connect(self._dsn(), autocommit=True, prepare_threshold=None)
                total, port = conn.execute(sql).fetchone()
                with self.ledger.lock:
                    self.ledger.reads_ok.append((time.monotonic(), port))
                    if total != self.bank.total:
                        self.ledger.bad_reads.append(total)
            except psycopg.Error as exc:
                with self.ledger.lock:
                    self.ledger.read_errors.append((time.monotonic(), _error_name(exc)))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            finally:
                self.ledger.attempt_took(started, "read")
                took = time.monotonic() - started
                if took > 1.0:
                    with self.ledger.lock:
                        self.ledger.slow_reads.append((started, took))
            time.sleep(0.01)
        if conn is not None:
            conn.close()
