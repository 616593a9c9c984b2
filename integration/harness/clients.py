"""Helpers for driving drivers (psycopg 3, asyncpg) from synchronous tests."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import asyncpg
import psycopg


def run_async(coro, timeout: float = 60):
    """Run a coroutine to completion with an overall timeout."""
    async def guarded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


async def aconnect(router, **kwargs) -> asyncpg.Connection:
    params = router.connect_kwargs(user=kwargs.pop("user", "app"),
                                   password=kwargs.pop("password", "app-secret"),
                                   db=kwargs.pop("db", "app"))
    params.update(kwargs)
    return await asyncpg.connect(**params)


def connect(dsn: str, autocommit: bool = True, **kwargs) -> psycopg.Connection:
    """psycopg connection. Server-side prepared statements are off by default
    (`prepare_threshold=None`): named statements that outlive a transaction
    need the router's prepared-statement support, which tests opt into."""
    kwargs.setdefault("prepare_threshold", None)
    return psycopg.connect(dsn, autocommit=autocommit, **kwargs)


def sqlstate(exc: BaseException) -> str | None:
    """SQLSTATE of a psycopg or asyncpg error, if it carries one."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return state
    diag = getattr(exc, "diag", None)
    return getattr(diag, "sqlstate", None) if diag is not None else None


DIAG_FIELDS = ("severity", "severity_nonlocalized", "sqlstate", "message_primary", "message_detail",
               "message_hint", "statement_position", "internal_position", "internal_query", "context",
               "schema_name", "table_name", "column_name", "datatype_name", "constraint_name",
               "source_file", "source_line", "source_function")


def diag_fields(exc: psycopg.Error) -> dict[str, str | None]:
    """Every field of a psycopg error's ErrorResponse, by psycopg's names."""
    return {name: getattr(exc.diag, name) for name in DIAG_FIELDS}


def refusal_in_and_out_of_transaction(conn: psycopg.Connection, sql, params=None,
                                      binary: bool = False,
                                      first: str | None = "SELECT 1") -> tuple[dict, dict]:
    """The error fields of a refused statement (`binary` sends it with the
    extended protocol even without parameters): outside a transaction, then
    inside one, after `first` (None: right after BEGIN). The transaction
    must be failed by it (25P02 for the next statement) and ROLLBACK must
    end it."""
    def refused() -> dict:
        try:
            conn.execute(sql, params, binary=binary)
        except psycopg.Error as e:
            return diag_fields(e)
        raise AssertionError(f"{sql!r} was not refused")
    outside = refused()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    conn.execute("BEGIN")
    if first is not None:
        conn.execute(first)
    inside = refused()
    status = conn.info.transaction_status
    assert status == psycopg.pq.TransactionStatus.INERROR, f"the refusal left the transaction {status.name}"
    try:
        conn.execute("SELECT 1")
        raise AssertionError("the transaction went on after the refusal")
    except psycopg.errors.InFailedSqlTransaction:
        pass
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT 1").fetchone() == (1,)
    return outside, inside


class Timer:
    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.monotonic() - self.start

    @property
    def so_far(self) -> float:
        return time.monotonic() - self.start


def in_thread(fn, *args, **kwargs) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    t.start()
    return t


HOLD_LOCK_SCRIPT = r"""
import sys, time, psycopg
dsn, table = sys.argv[1], sys.argv[2]
conn = psycopg.connect(dsn)
conn.execute(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE").fetchall()
print("locked", flush=True)
time.sleep(120)
"""


def spawn_lock_holder(dsn: str, table: str) -> subprocess.Popen:
    """A child Python process that locks row id=1 of `table` inside an open
    transaction and then sleeps; returns once the lock is held."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK_SCRIPT, dsn, table],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(f"lock holder failed: {line!r} {err}")
    return proc


class BackendPeak:
    """Samples how many backends of `user` on `db` the server has, every
    `interval` seconds while the block runs; `peak` is the most seen."""

    def __init__(self, server, user: str, db: str, interval: float = 0.02):
        self.server, self.user, self.db, self.interval = server, user, db, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, len(self.server.backends(user=self.user, db=self.db)))
            time.sleep(self.interval)

    def __enter__(self) -> "BackendPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def run_clients(target, args_list) -> list[str]:
    """Runs `target(*args)` in one thread per entry of `args_list`, waits for
    all; returns the errors they raised, as text."""
    errors: list[str] = []

    def wrapped(*args):
        try:
            target(*args)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=wrapped, args=a, daemon=True) for a in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors
