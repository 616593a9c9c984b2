#!/usr/bin/env python3
"""The training run of a profile-guided build (scripts/build_pgo.sh): an
instrumented pgrouter in front of a primary and a streaming replica, driven
by pgbench in every protocol mode (read-only `-S` and TPC-B; simple,
extended, prepared), then stopped cleanly so that it writes its profile
(`-Cprofile-generate` writes at exit).

The profile tells the compiler which code runs per transaction, so it lays
that code out together and keeps the rest out of its way: fewer
instruction-cache misses (see bench/README.md, "Profile-guided build").
Code the run never reaches is optimized as cold, so the run covers the
paths of every client of a pooled database; sharded paths are not trained.

Usage: pgo_train.py PATH-TO-INSTRUMENTED-PGROUTER
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

import callgrind_point as cp  # noqa: E402
from bench import PgRouter, app_user, router_databases  # noqa: E402

MODES = ("simple", "extended", "prepared")
TRANSACTIONS = 1500  # per client and run


def main() -> int:
    binary = Path(sys.argv[1]).resolve()
    cluster = cp.pgbench_cluster(True, "pgrouter-pgo-")
    try:
        cluster.wait_replayed(60)
        workdir = cluster.tmpdir / "pgo"
        workdir.mkdir()
        router = PgRouter(workdir / "pgrouter", router_databases(cluster, True),
                          [app_user("scram")], 20, binary=binary)
        router.start()
        time.sleep(1)
        for workload in (["-S"], []):
            for mode in MODES:
                cp.run_pgbench(router.port, [*workload, "-M", mode], TRANSACTIONS, f"pgo {workload} {mode}")
                print(f"[pgo] trained pgbench {' '.join(workload)} -M {mode}", flush=True)
        # A clean exit (SIGTERM: graceful shutdown) writes the profile.
        router.proc.terminate()
        if router.proc.wait(60) != 0:
            raise RuntimeError(f"the instrumented router exited with {router.proc.returncode}")
    finally:
        cluster.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
