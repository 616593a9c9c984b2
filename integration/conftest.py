"""Fixtures for the pgrouter integration suite.

- `cluster` (session): a real PostgreSQL 15 primary + streaming replica in a
  temporary directory (see harness/pg.py for roles and pg_hba).
- `primary`, `replica`: its two servers.
- `routers` (per test): a RouterFactory; `routers.start(general={...}, users=[...])`
  starts a pgrouter and the fixture stops it after the test.
- `router` (per test): one router with the default config (transaction mode,
  pool 10, user app/app-secret with SCRAM, the primary only).
- `table` (per test): a fresh table name, dropped afterwards.

Environment:
  PGROUTER_BIN          use this binary instead of <target>/release/pgrouter
  PGROUTER_KEEP_TMP=1   keep the temporary directory (data dirs, logs)
  PGROUTER_SUITE_BUDGET_S  after this many seconds the remaining tests fail at
                        once instead of running (default 900), so a hung
                        router cannot stretch a CI run for hours
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.pg import PgCluster  # noqa: E402
from harness.router import RouterFactory  # noqa: E402

_SUITE_START = time.monotonic()
_BUDGET = float(os.environ.get("PGROUTER_SUITE_BUDGET_S", "1200"))


@pytest.fixture(autouse=True)
def _suite_budget():
    elapsed = time.monotonic() - _SUITE_START
    if elapsed > _BUDGET:
        pytest.fail(f"suite time budget of {_BUDGET:.0f}s exhausted ({elapsed:.0f}s elapsed); "
                    "not running this test", pytrace=False)
    yield


@pytest.fixture(scope="session")
def cluster():
    c = PgCluster(with_replica=True).start()
    try:
        yield c
    finally:
        keep = os.environ.get("PGROUTER_KEEP_TMP") == "1"
        c.teardown(keep_dir=keep)
        if keep:
            print(f"\nkept test directory {c.tmpdir}")


@pytest.fixture(scope="session")
def primary(cluster):
    return cluster.primary


@pytest.fixture(scope="session")
def replica(cluster):
    return cluster.replica


@pytest.fixture
def routers(cluster, request):
    safe = "".join(c if c.isalnum() else "_" for c in request.node.name)[:60]
    base = cluster.tmpdir / "routers" / f"{safe}-{uuid.uuid4().hex[:6]}"
    base.mkdir(parents=True)
    factory = RouterFactory(cluster, base)
    yield factory
    problems = factory.finish()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def router(routers):
    return routers.start()


@pytest.fixture
def table(primary):
    """A unique table name in database app; dropped (if it exists) after the test."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    try:
        primary.sql(f"DROP TABLE IF EXISTS {name}")
    except Exception:  # noqa: BLE001 - cleanup must not mask the test's result
        pass


def pytest_report_header(config):
    return [f"pgrouter suite budget: {_BUDGET:.0f}s"]
