#!/usr/bin/env python3
"""The training run of a profile-guided build (scripts/build_pgo.sh): an
instrumented pgrouter in front of a primary and a streaming replica, driven
by pgbench in every protocol mode (read-only `-S` and TPC-B; simple,
extended, prepared), then a 2-shard one driven by bench/sharding.py's point
reads and writes by key; each stopped cleanly so that it writes its profile
(`-Cprofile-generate` writes at exit).

The profile tells the compiler which code runs per transaction, so it lays
that code out together and keeps the rest out of its way: fewer
instruction-cache misses (see bench/README.md, "Profile-guided build").
Code the run never reaches is optimized as cold, so the run covers the
paths of every client of a pooled database and of statements routed by
shard key; fan-outs, JWT logins and COPY are not trained.

Usage: pgo_train.py PATH-TO-INSTRUMENTED-PGROUTER
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

import callgrind_point as cp  # noqa: E402
import sharding  # noqa: E402
from bench import PgRouter, app_user, router_databases  # noqa: E402
from harness.pg import PgCluster  # noqa: E402

MODES = ("simple", "extended", "prepared")
TRANSACTIONS = 1500  # per client and run


def stop_cleanly(router: PgRouter) -> None:
    """SIGTERM (a graceful shutdown): the exit writes the profile."""
    router.proc.terminate()
    if router.proc.wait(60) != 0:
        raise RuntimeError(f"the instrumented router exited with {router.proc.returncode}")


def train_pooled() -> None:
    cluster = cp.pgbench_cluster(True, "pgrouter-pgo-")
    try:
        cluster.wait_replayed(60)
        workdir = cluster.tmpdir / "pgo"
        workdir.mkdir()
        router = PgRouter(workdir / "pgrouter", router_databases(cluster, True),
                          [app_user("scram")], 20)
        router.start()
        time.sleep(1)
        for workload in (["-S"], []):
            for mode in MODES:
                cp.run_pgbench(router.port, [*workload, "-M", mode], TRANSACTIONS, f"pgo {workload} {mode}")
                print(f"[pgo] trained pgbench {' '.join(workload)} -M {mode}", flush=True)
        stop_cleanly(router)
    finally:
        cluster.teardown()


def train_sharded() -> None:
    clusters = [PgCluster(with_replica=False, shared_buffers="256MB", max_connections=300,
                          prefix=f"pgrouter-pgo{i}-") for i in range(2)]
    try:
        sharding.in_parallel(*[c.start for c in clusters])
        servers = [c.primary for c in clusters]
        accounts = 100_000
        sharding.load(servers, argparse.Namespace(skip_fanout=True, skip_rss=True, accounts=accounts,
                                                  rows_per_shard=0, rss_rows=0))
        workdir = clusters[0].tmpdir / "pgo"
        workdir.mkdir()
        routers = sharding.routers(workdir, servers, 20, "pgo")
        try:
            for kind in ("read", "write"):
                script = workdir / f"point-{kind}.sql"
                script.write_text(sharding.POINT_SCRIPTS[kind].format(n=accounts))
                for mode in MODES:
                    cp.run_pgbench(routers[0].port, ["-M", mode, "-f", str(script)], TRANSACTIONS // 3,
                                   f"pgo sharded {kind} {mode}")
                    print(f"[pgo] trained sharded point {kind} -M {mode}", flush=True)
            for router in routers:
                stop_cleanly(router)
        finally:
            for router in routers:
                router.stop()
    finally:
        for c in clusters:
            c.teardown()


def main() -> int:
    # Every router started here runs the instrumented binary.
    os.environ["PGROUTER_BIN"] = str(Path(sys.argv[1]).resolve())
    train_pooled()
    train_sharded()
    return 0


if __name__ == "__main__":
    sys.exit(main())
