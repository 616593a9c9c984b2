#!/usr/bin/env python3
"""Compare pgrouter with a direct connection and with PgBouncer using pgbench.

Starts its own PostgreSQL 15 primary + streaming replica (the integration
harness), initialises pgbench data, starts PgBouncer (transaction pooling,
`-d`) and pgrouter (transaction pooling, started with `setsid`), both with a
pool of 20 and the same client auth method, then runs every workload against
every target, interleaved and in rotating order, for several rounds.

Before each run, directly on the primary: CHECKPOINT, VACUUM of
pgbench_branches / pgbench_tellers, TRUNCATE pgbench_history. Each run is a
few seconds of unrecorded warm-up, then the measured pgbench run, wrapped in
`timeout` so a stalled pooler shows up as ~0 tps instead of a hang. The CPU
time (utime + stime from /proc/PID/stat) each proxy used during the measured
run, divided by the transactions pgbench reports, is the CPU per transaction.

See bench/README.md for how to read the output.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration"))

from harness import tomlw  # noqa: E402
from harness.pg import IS_ROOT, PgCluster, as_pg_user, chown_to_pg, pg_tool  # noqa: E402
from harness.router import router_binary  # noqa: E402
from harness.util import free_port, port_open, tail, wait_until  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")

WORKLOADS = {
    # name: (pgbench arguments, protocol mode)
    "select-simple": (["-S"], "simple"),
    "select-extended": (["-S"], "extended"),
    "select-prepared": (["-S"], "prepared"),
    "tpcb-simple": ([], "simple"),
    "tpcb-extended": ([], "extended"),
}
DEFAULT_WORKLOADS = "select-simple,select-extended,select-prepared,tpcb-simple"


@dataclass
class Run:
    workload: str
    target: str
    round: int
    tps: float = 0.0
    processed: int = 0
    failed: int = 0
    cpu_s: float | None = None
    cpu_us_per_txn: float | None = None
    timed_out: bool = False
    exit_code: int = 0
    note: str = ""


@dataclass
class Target:
    name: str
    port: int
    pid_fn: object = None  # () -> pid of the proxy process, or None for direct
    skip_modes: set = field(default_factory=set)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------- proxies --
class PgBouncer:
    def __init__(self, workdir: Path, primary_port: int, pool_size: int, auth: str):
        self.workdir = workdir
        self.port = free_port()
        self.ini = workdir / "pgbouncer.ini"
        self.pidfile = workdir / "pgbouncer.pid"
        self.logfile = workdir / "pgbouncer.log"
        auth_type = {"scram": "scram-sha-256", "md5": "md5"}[auth]
        (workdir / "userlist.txt").write_text('"app" "app-secret"\n')
        self.ini.write_text(f"""\
[databases]
app = host=127.0.0.1 port={primary_port} dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = {auth_type}
auth_file = {workdir / 'userlist.txt'}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
logfile = {self.logfile}
pidfile = {self.pidfile}
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
""")
        for p in (workdir, self.ini, workdir / "userlist.txt"):
            chown_to_pg(p)

    def start(self) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        # PgBouncer refuses to run as root; -d daemonizes it (its own session).
        subprocess.run(as_pg_user([binary, "-d", str(self.ini)]), check=True, cwd=self.workdir,
                       timeout=30)
        wait_until(lambda: port_open(self.port), 15, what="pgbouncer to listen")

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def stop(self) -> None:
        try:
            os.kill(self.pid(), 15)
        except (OSError, ValueError):
            pass


class PgRouter:
    def __init__(self, workdir: Path, primary_port: int, replica_port: int | None, pool_size: int,
                 auth: str, with_replica: bool):
        self.workdir = workdir
        self.port = free_port()
        self.logfile = workdir / "pgrouter.log"
        dbs = [{"name": "app", "host": "127.0.0.1", "port": primary_port, "database_name": "app",
                "role": "primary"}]
        if with_replica and replica_port:
            dbs.append({"name": "app", "host": "127.0.0.1", "port": replica_port,
                        "database_name": "app", "role": "replica"})
        self.config = workdir / "router.toml"
        self.users = workdir / "users.toml"
        self.config.write_text(tomlw.dumps({
            "general": {"listen": f"127.0.0.1:{self.port}", "pool_mode": "transaction",
                        "default_pool_size": pool_size, "max_clients": 2000,
                        "metrics_listen": "", "hot_reload": False},
            "databases": dbs}))
        self.users.write_text(tomlw.dumps({"users": [
            {"name": "app", "database": "app", "password": "app-secret", "auth": auth}]}))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        log_f = open(self.logfile, "ab")
        # setsid: its own session, hence its own CPU autogroup, like a daemon
        # (see shared BENCHMARKING notes: a plain child measures ~13 % slower).
        self.proc = subprocess.Popen(
            ["setsid", str(router_binary()), "--config", str(self.config), "--users", str(self.users)],
            stdin=subprocess.DEVNULL, stdout=log_f, stderr=log_f, env=env, cwd=self.workdir)
        log_f.close()
        try:
            wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, 20,
                       what="pgrouter to listen")
        except TimeoutError:
            raise RuntimeError(f"pgrouter did not start:\n{tail(self.logfile)}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"pgrouter exited:\n{tail(self.logfile)}")

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ------------------------------------------------------------------ pgbench --
def prepare_primary(cluster: PgCluster) -> None:
    with cluster.primary.connect("app") as conn:
        conn.execute("CHECKPOINT")
        conn.execute("VACUUM pgbench_branches")
        conn.execute("VACUUM pgbench_tellers")
        conn.execute("TRUNCATE pgbench_history")


def pgbench(port: int, workload: str, duration: int, clients: int, jobs: int) -> tuple[int, str, bool]:
    args, mode = WORKLOADS[workload]
    cmd = ["timeout", "-k", "5", str(duration + 30), pg_tool("pgbench"), "-n",
           "-c", str(clients), "-j", str(jobs), "-T", str(duration), "-M", mode, *args,
           "-h", "127.0.0.1", "-p", str(port), "-U", "app", "app"]
    env = dict(os.environ, PGPASSWORD="app-secret", PGCONNECT_TIMEOUT="10")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, proc.returncode == 124


def parse_pgbench(text: str) -> tuple[float, int, int]:
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    return (float(tps.group(1)) if tps else 0.0,
            int(processed.group(1)) if processed else 0,
            int(failed.group(1)) if failed else 0)


def one_run(cluster, target: Target, workload: str, rnd: int, args) -> Run:
    run = Run(workload, target.name, rnd)
    _, mode = WORKLOADS[workload]
    if mode in target.skip_modes:
        run.note = "skipped"
        return run
    prepare_primary(cluster)
    if args.warmup > 0:
        pgbench(target.port, workload, args.warmup, args.clients, args.jobs)
    pid = target.pid_fn() if target.pid_fn else None
    cpu0 = proc_cpu_seconds(pid) if pid else None
    code, text, timed_out = pgbench(target.port, workload, args.duration, args.clients, args.jobs)
    cpu1 = proc_cpu_seconds(pid) if pid else None
    run.tps, run.processed, run.failed = parse_pgbench(text)
    run.exit_code, run.timed_out = code, timed_out
    if pid:
        run.cpu_s = cpu1 - cpu0
        if run.processed:
            run.cpu_us_per_txn = run.cpu_s / run.processed * 1e6
    if code != 0:
        lines = [ln for ln in text.splitlines() if "error" in ln.lower() or "abort" in ln.lower()]
        run.note = ("TIMEOUT " if timed_out else f"exit {code} ") + (lines[0][:120] if lines else "")
    return run


# ------------------------------------------------------------------ report --
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec=".0f", none="-"):
    return none if v is None else format(v, spec)


def report(runs: list[Run], targets: list[str], workloads: list[str], rounds: int) -> str:
    out = []
    by = {(r.workload, r.target, r.round): r for r in runs}
    out.append("")
    out.append("Medians over rounds (tps = pgbench tps without connection time; "
               "cpu = proxy utime+stime per transaction)")
    header = f"{'workload':<17} {'target':<10} {'tps':>9} {'cpu µs/txn':>11} {'failed':>7}  "
    header += f"{'vs direct':>9} {'vs pgbouncer':>12}"
    out.append(header)
    out.append("-" * len(header))
    for w in workloads:
        for t in targets:
            rs = [by.get((w, t, i)) for i in range(rounds)]
            rs = [r for r in rs if r is not None and r.note != "skipped"]
            if not rs:
                out.append(f"{w:<17} {t:<10} {'n/a':>9}")
                continue
            ratios_d, ratios_b = [], []
            for i in range(rounds):
                r, d, b = by.get((w, t, i)), by.get((w, "direct", i)), by.get((w, "pgbouncer", i))
                if r and d and d.tps and d.note != "skipped":
                    ratios_d.append(r.tps / d.tps)
                if r and b and b.tps and b.note != "skipped":
                    ratios_b.append(r.tps / b.tps)
            failed = sum(r.failed for r in rs)
            notes = {r.note for r in rs if r.note}
            line = (f"{w:<17} {t:<10} {fmt(med([r.tps for r in rs])):>9} "
                    f"{fmt(med([r.cpu_us_per_txn for r in rs]), '.1f'):>11} {failed:>7}  "
                    f"{fmt(med(ratios_d), '.2f') if t != 'direct' else '':>9} "
                    f"{fmt(med(ratios_b), '.2f') if t not in ('pgbouncer', 'direct') else '':>12}")
            if notes:
                line += "  ! " + "; ".join(sorted(notes))[:100]
            out.append(line)
    out.append("")
    out.append("Per-round tps ratios of pgrouter (round: vs direct / vs pgbouncer)")
    for w in workloads:
        parts = []
        for i in range(rounds):
            r, d, b = by.get((w, "pgrouter", i)), by.get((w, "direct", i)), by.get((w, "pgbouncer", i))
            if not r or r.note == "skipped":
                continue
            vd = r.tps / d.tps if d and d.tps else None
            vb = r.tps / b.tps if b and b.tps and b.note != "skipped" else None
            parts.append(f"r{i + 1}: {fmt(vd, '.2f')} / {fmt(vb, '.2f')}")
        if parts:
            out.append(f"  {w:<17} " + "   ".join(parts))
    return "\n".join(out)


# -------------------------------------------------------------------- main --
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 15)),
                    help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("BENCH_WARMUP", 3)),
                    help="seconds of unrecorded warm-up before each run")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
    ap.add_argument("--auth", choices=["scram", "md5"], default="scram",
                    help="client auth method for both proxies")
    ap.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                    help=f"comma list from {','.join(WORKLOADS)}")
    ap.add_argument("--targets", default="direct,pgbouncer,pgrouter")
    ap.add_argument("--router-with-replica", action="store_true",
                    help="also give pgrouter the replica (reads may then go there)")
    ap.add_argument("--json", help="also write every run as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the cluster directory")
    args = ap.parse_args()

    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    target_names = [t for t in args.targets.split(",") if t]

    log(f"starting PostgreSQL primary + replica (shared_buffers 512MB), scale {args.scale}")
    cluster = PgCluster(with_replica=True, shared_buffers="512MB", max_connections=300,
                        prefix="pgrouter-bench-")
    cluster.start()
    bouncer = router = None
    runs: list[Run] = []
    try:
        p = cluster.primary
        out = subprocess.run(as_pg_user([pg_tool("pgbench"), "-i", "-q", "-s", str(args.scale),
                                         "-h", str(p.sockdir), "-p", str(p.port), "-U", "app", "app"]),
                             capture_output=True, text=True, timeout=1200, cwd=cluster.tmpdir)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        cluster.wait_replayed(120)

        workdir = cluster.tmpdir / "proxies"
        workdir.mkdir()
        chown_to_pg(workdir)
        targets: dict[str, Target] = {"direct": Target("direct", p.port)}
        if "pgbouncer" in target_names:
            bouncer = PgBouncer(workdir, p.port, args.pool_size, args.auth)
            bouncer.start()
            # PgBouncer 1.18 has no protocol-level prepared statements.
            targets["pgbouncer"] = Target("pgbouncer", bouncer.port, bouncer.pid, {"prepared"})
        if "pgrouter" in target_names:
            rdir = cluster.tmpdir / "router"
            rdir.mkdir()
            router = PgRouter(rdir, p.port, cluster.replica.port if cluster.replica else None,
                              args.pool_size, args.auth, args.router_with_replica)
            router.start()
            targets["pgrouter"] = Target("pgrouter", router.port, router.pid)
        order = [t for t in target_names if t in targets]
        per_run = args.warmup + args.duration + 2
        total = per_run * len(order) * len(workloads) * args.rounds
        log(f"targets {order}; workloads {workloads}; {args.rounds} rounds × {args.duration}s "
            f"(+{args.warmup}s warm-up); about {total // 60} min")

        for rnd in range(args.rounds):
            for w in workloads:
                shift = (rnd + workloads.index(w)) % len(order)
                rotated = order[shift:] + order[:shift]
                for t in rotated:
                    run = one_run(cluster, targets[t], w, rnd, args)
                    runs.append(run)
                    if run.note == "skipped":
                        continue
                    log(f"round {rnd + 1} {w:<16} {t:<10} tps {run.tps:9.0f}  "
                        f"cpu/txn {fmt(run.cpu_us_per_txn, '.1f'):>6} µs  failed {run.failed}"
                        + (f"  ! {run.note}" if run.note else ""))
        print(report(runs, order, workloads, args.rounds))
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=1))
            log(f"wrote {args.json}")
    finally:
        if router:
            router.stop()
        if bouncer:
            bouncer.stop()
        cluster.teardown(keep_dir=args.keep)
        if args.keep:
            log(f"kept {cluster.tmpdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
