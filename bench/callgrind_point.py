#!/usr/bin/env python3
"""The router's own instructions per transaction, counted by valgrind's
callgrind: repeatable on a noisy machine where CPU time is not (see
bench/README.md, "Instructions per transaction").

Each router runs under `valgrind --tool=callgrind`. For every config and
protocol mode: a short unrecorded pgbench run, then two counted runs of
`-c 10 -t 500` and `-c 10 -t 1500` (counters zeroed before and dumped after
each with `callgrind_control`); the difference of the two counts divided by
the 10,000 transactions between them is the user-space cost of one
transaction, without the logins and anything else fixed. Kernel time (most
of a proxy's CPU, see "What limits a proxy's tps") is not counted.

Comparisons:
- `sharding` (issue 17): the point-read (and with `--points read,write`
  the point-write) script of bench/sharding.py through
  the 2-shard router vs the unsharded one;
- `ryw` (issue 19): pgbench -S through two routers with primary + replica,
  read_your_writes off vs on;
- `baseline` (issue 15): pgbench -S and TPC-B through pgrouter (one worker,
  primary only) and through PgBouncer 1.25 (also under callgrind; same pool,
  SCRAM clients, both reaching PostgreSQL over its Unix-domain socket) — the
  user-space share of the per-transaction CPU bar. PgBouncer is counted
  whole from start to exit, a fresh process per count (see
  `per_transaction_restarting`).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from bench import (PgBouncer, PgRouter, app_user, parse_pgbench, pgbouncer_binary,  # noqa: E402
                   router_databases)
from harness.pg import APP_DB, APP_PASSWORD, APP_USER, PgCluster, as_pg_user, pg_tool  # noqa: E402
from harness.router import router_binary  # noqa: E402

import sharding  # noqa: E402

CLIENTS = 10
COUNTS = (500, 1500)


def callgrind_wrapper(outdir: Path, real: Path, name: str) -> Path:
    """A script that runs `real` under callgrind, dumping into `outdir`."""
    wrapper = outdir / name
    wrapper.write_text(f"#!/bin/sh\nexec valgrind --tool=callgrind "
                       f"--callgrind-out-file={outdir}/callgrind.%p.out {real} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def wrap_in_callgrind(outdir: Path) -> Path:
    """Makes every router this process starts run under callgrind; returns
    the binary it wraps."""
    real = router_binary()
    os.environ["PGROUTER_BIN"] = str(callgrind_wrapper(outdir, real, "pgrouter-under-callgrind"))
    return real


def wrap_pgbouncer_in_callgrind(outdir: Path) -> None:
    """Makes PgBouncer run under callgrind too (as the postgres OS user, so
    the dump directory is opened to it). Its `-d` fork stays under valgrind."""
    real = pgbouncer_binary()
    wrapper = outdir / "pgbouncer-under-callgrind"
    wrapper.write_text(f"#!/bin/sh\nexec valgrind --tool=callgrind "
                       f"--callgrind-out-file={outdir}/callgrind.%p.out {real} \"$@\"\n")
    wrapper.chmod(0o755)
    outdir.chmod(0o777)
    os.environ["PGBOUNCER_BIN"] = str(wrapper)


def dumped_total(outdir: Path, pid: int, label: str) -> int:
    """The instruction count of the dump named `label` of process `pid`."""
    for f in outdir.glob(f"callgrind.{pid}.out.*"):
        text = f.read_text(errors="replace")
        if f"Trigger: dump {label}\n" in text:
            return int(re.search(r"^summary: (\d+)", text, re.M).group(1))
    raise RuntimeError(f"no callgrind dump {label} of pid {pid} in {outdir}")


def run_pgbench(port: int, pgbench_args: list[str], n: int, label: str, check: bool = True) -> None:
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="disable")
    cmd = [pg_tool("pgbench"), "-n", "-t", str(n), "-c", str(CLIENTS), "-j", "2", *pgbench_args,
           "-h", "127.0.0.1", "-p", str(port), "-U", APP_USER, APP_DB]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if not check:
        return
    _, processed, failed = parse_pgbench(out.stdout + out.stderr)
    if out.returncode != 0 or failed or processed != n * CLIENTS:
        raise RuntimeError(f"pgbench failed ({label}):\n{out.stdout}{out.stderr}")


def per_transaction(router: PgRouter, pgbench_args: list[str], label: str, outdir: Path) -> float:
    run_pgbench(router.port, pgbench_args, 50, label, check=False)
    totals = []
    for n in COUNTS:
        subprocess.run(["callgrind_control", "-z", str(router.pid())], capture_output=True, check=True)
        run_pgbench(router.port, pgbench_args, n, label)
        subprocess.run(["callgrind_control", "-d", f"{label}-{n}", str(router.pid())],
                       capture_output=True, check=True)
        time.sleep(0.5)
        totals.append(dumped_total(outdir, router.pid(), f"{label}-{n}"))
    return (totals[1] - totals[0]) / ((COUNTS[1] - COUNTS[0]) * CLIENTS)


def per_transaction_restarting(start, pgbench_args: list[str], label: str, outdir: Path) -> float:
    """Like `per_transaction`, for a proxy `callgrind_control` cannot reach
    (PgBouncer, daemonized as another user, sleeps where vgdb cannot wake
    it): a fresh process per count, counted whole at its exit. Its start-up,
    logins and warm-up are the same in both and cancel out."""
    totals = []
    for n in COUNTS:
        proxy = start(f"{label}-{n}")
        try:
            run_pgbench(proxy.port, pgbench_args, 50, label, check=False)
            run_pgbench(proxy.port, pgbench_args, n, label)
            pid = proxy.pid()
        finally:
            proxy.stop()
        final = outdir / f"callgrind.{pid}.out"
        for _ in range(120):
            if final.exists() and re.search(r"^totals: \d+", final.read_text(errors="replace"), re.M):
                break
            time.sleep(0.5)
        totals.append(int(re.search(r"^totals: (\d+)", final.read_text(errors="replace"), re.M).group(1)))
    return (totals[1] - totals[0]) / ((COUNTS[1] - COUNTS[0]) * CLIENTS)


def compare_sharding(outdir: Path, modes: list[str], point_kinds: list[str]) -> list[str]:
    clusters = [PgCluster(with_replica=False, shared_buffers="256MB", max_connections=300,
                          prefix=f"pgrouter-cg{i}-") for i in range(2)]
    lines = []
    try:
        sharding.in_parallel(*[c.start for c in clusters])
        servers = [c.primary for c in clusters]
        sharding.load(servers, argparse.Namespace(skip_fanout=True, skip_rss=True, accounts=100_000,
                                                  rows_per_shard=0, rss_rows=0))
        workdir = clusters[0].tmpdir / "cg"
        workdir.mkdir()
        sharded, unsharded = sharding.routers(workdir, servers, 20, "cg")
        try:
            for kind, mode in ((k, m) for k in point_kinds for m in modes):
                script = workdir / f"point-{kind}.sql"
                script.write_text(sharding.POINT_SCRIPTS[kind].format(n=100_000))
                got = {name: per_transaction(r, ["-M", mode, "-f", str(script)],
                                             f"{name}-{kind}-{mode}", outdir)
                       for name, r in (("sharded", sharded), ("unsharded", unsharded))}
                lines.append(f"point-{kind:<5} -M {mode:<9} sharded {got['sharded']:8.0f}  unsharded "
                             f"{got['unsharded']:8.0f}  ratio {got['sharded'] / got['unsharded']:.2f}")
        finally:
            sharded.stop()
            unsharded.stop()
    finally:
        for c in clusters:
            c.teardown()
    return lines


def pgbench_cluster(with_replica: bool, prefix: str) -> PgCluster:
    """A started cluster with pgbench's tables (scale 1)."""
    cluster = PgCluster(with_replica=with_replica, shared_buffers="256MB", max_connections=300,
                        prefix=prefix).start()
    p = cluster.primary
    subprocess.run(as_pg_user([pg_tool("pgbench"), "-i", "-q", "-s", "1", "-h", str(p.sockdir),
                               "-p", str(p.port), "-U", APP_USER, APP_DB]),
                   capture_output=True, cwd=cluster.tmpdir, check=True, timeout=300)
    return cluster


def compare_baseline(outdir: Path, modes: list[str]) -> list[str]:
    cluster = pgbench_cluster(False, "pgrouter-cgbase-")
    lines = []
    try:
        p = cluster.primary
        workdir = cluster.tmpdir / "cg"
        workdir.mkdir()
        workdir.chmod(0o777)
        wrap_pgbouncer_in_callgrind(outdir)
        # Both reach PostgreSQL over its Unix-domain socket, where pg_hba
        # says trust: a SCRAM server login is a PBKDF2 of ~10 M instructions,
        # and a counted run that opened a few more server connections than
        # the other would count them as per-transaction work.
        sockdir = str(cluster.sockdir)
        router = PgRouter(workdir / "pgrouter", router_databases(cluster, False, sockdir),
                          [app_user("scram")], 20, general={"workers": 1})

        def bouncer(name: str) -> PgBouncer:
            b = PgBouncer(workdir / name, p.port, 20, "scram", backend_host=sockdir)
            b.start()
            return b

        try:
            router.start()
            time.sleep(2)
            for workload, args in (("-S", ["-S"]), ("TPC-B", [])):
                for mode in modes:
                    a = [*args, "-M", mode]
                    ours = per_transaction(router, a, f"base-pgrouter-{workload}-{mode}", outdir)
                    theirs = per_transaction_restarting(bouncer, a, f"base-pgbouncer-{workload}-{mode}", outdir)
                    lines.append(f"{workload:<5} -M {mode:<9} pgrouter {ours:8.0f}  pgbouncer "
                                 f"{theirs:8.0f}  ratio {ours / theirs:.2f}")
        finally:
            router.stop()
    finally:
        cluster.teardown()
    return lines


def kernel_counts(router: PgRouter, pgbench_args: list[str], label: str) -> dict[str, float]:
    """System calls, context switches and CPU time (task-clock, ms) of the
    router per transaction, counted by `perf stat` on its process (not under
    callgrind) around a `-t 1500` run: the kernel share that callgrind does
    not see. Counts, not timings: a syscall more per transaction shows."""
    run_pgbench(router.port, pgbench_args, 50, label, check=False)
    events = "raw_syscalls:sys_enter,context-switches,task-clock"
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(router.pid())],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    run_pgbench(router.port, pgbench_args, COUNTS[1], label)
    perf.send_signal(2)
    _, err = perf.communicate(timeout=30)
    counts = {}
    for line in err.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            counts[fields[2]] = float(fields[0]) / (COUNTS[1] * CLIENTS)
    return counts


def compare_binary(outdir: Path, modes: list[str], this_bin: Path, base_bin: Path, pool: int) -> list[str]:
    """Issue 16: this build against another (`--compare-bin`, e.g. the same
    source without a feature), TPC-B with 10 clients over a pool of `pool`
    (a connection changes clients on most transactions), one worker, primary
    only: user-space instructions (callgrind) and kernel counts (perf stat)
    per transaction, both routers of one run."""
    cluster = pgbench_cluster(False, "pgrouter-cgbin-")
    lines = []
    try:
        workdir = cluster.tmpdir / "cg"
        workdir.mkdir()
        sockdir = str(cluster.sockdir)
        real = {"this": this_bin, "base": base_bin.resolve()}
        bins = {name: callgrind_wrapper(outdir, b, f"{name}-under-callgrind") for name, b in real.items()}
        for mode in modes:
            got = {}
            for name in ("this", "base"):
                for kind, binary in (("callgrind", bins[name]), ("perf", real[name])):
                    r = PgRouter(workdir / f"{name}-{kind}-{mode}", router_databases(cluster, False, sockdir),
                                 [app_user("scram")], pool, general={"workers": 1}, binary=binary)
                    r.start()
                    try:
                        time.sleep(1)
                        label = f"bin-{name}-{mode}"
                        if kind == "callgrind":
                            got[name, "instr"] = per_transaction(r, ["-M", mode], label, outdir)
                        else:
                            got.update({(name, k): v for k, v in kernel_counts(r, ["-M", mode], label).items()})
                    finally:
                        r.stop()
            for key in ("instr", "raw_syscalls:sys_enter", "context-switches", "task-clock"):
                a, b = got.get(("this", key)), got.get(("base", key))
                if a is None or b is None:
                    continue
                lines.append(f"TPC-B -M {mode:<9} {key:<24} this {a:10.3f}  base {b:10.3f}  ratio {a / b:.3f}")
    finally:
        cluster.teardown()
    return lines


def compare_ryw(outdir: Path, modes: list[str]) -> list[str]:
    cluster = pgbench_cluster(True, "pgrouter-cgryw-")
    lines = []
    try:
        cluster.wait_replayed(60)
        workdir = cluster.tmpdir / "cg"
        workdir.mkdir()
        routers = {}
        try:
            for name, ryw in (("off", False), ("on", True)):
                r = PgRouter(workdir / name, router_databases(cluster, True), [app_user("scram")], 20,
                             general={"read_your_writes": ryw})
                r.start()
                routers[name] = r
            for mode in modes:
                got = {name: per_transaction(r, ["-S", "-M", mode], f"ryw-{name}-{mode}", outdir)
                       for name, r in routers.items()}
                lines.append(f"-S -M {mode:<9} read_your_writes off {got['off']:8.0f}  on "
                             f"{got['on']:8.0f}  ratio {got['on'] / got['off']:.2f}")
        finally:
            for r in routers.values():
                r.stop()
    finally:
        cluster.teardown()
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", default="sharding,ryw", help="comma list from sharding,ryw,baseline,binary")
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--compare-bin", type=Path, help="binary: the other pgrouter build")
    ap.add_argument("--pool", type=int, default=5, help="binary: pool size (10 clients)")
    ap.add_argument("--points", default="read", help="sharding: comma list from read,write "
                    "(bench/sharding.py's point scripts)")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    outdir = Path(tempfile.mkdtemp(prefix="pgrouter-callgrind-"))
    this_bin = wrap_in_callgrind(outdir)
    lines = [f"user-space instructions per transaction (callgrind, pgbench -c {CLIENTS}, "
             f"-t {COUNTS[1]} minus -t {COUNTS[0]}); dumps in {outdir}"]
    for what in args.compare.split(","):
        if what == "sharding":
            lines += compare_sharding(outdir, modes, [k for k in args.points.split(",") if k])
        elif what == "binary":
            lines += compare_binary(outdir, modes, this_bin, args.compare_bin, args.pool)
        else:
            lines += {"ryw": compare_ryw, "baseline": compare_baseline}[what](outdir, modes)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
