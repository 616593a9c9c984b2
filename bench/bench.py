#!/usr/bin/env python3
"""Compare pgrouter with a direct connection and with PgBouncer using pgbench.

Starts its own PostgreSQL 15 primary + streaming replica (the integration
harness) and initialises pgbench data, then runs one or more *scenarios*
(`--scenario`), each with its own proxies:

- `baseline` (the default): PgBouncer and pgrouter both in front of the
  primary, compared with a direct connection to the primary.
- `routing` (issue 3): pgrouter with primary + replica (routing on, every
  statement analysed), PgBouncer pointed at the replica, "direct" = the replica
  for `-S` workloads and the primary for TPC-B.
- `jwt` (issue 4): one pgrouter with `[jwt]`; the same workload as a JWT user
  (token as password, SET ROLE pipelined into every transaction) and as a
  password user.
- `reload` (issue 5): one pgrouter; the same workload with a SIGHUP every
  second (router.toml really changed each time) and without.
- `tls` (issue 5): pgrouter and PgBouncer, both requiring client TLS, with
  `sslmode=require` clients.
- `ryw` (issue 19): two pgrouters with primary + replica, alike but for
  `read_your_writes` (false / true), on read-only workloads.

Every scenario runs every workload against every target, interleaved and in
rotating order, for several rounds. Before each run, directly on the primary:
CHECKPOINT, VACUUM of pgbench_branches / pgbench_tellers, TRUNCATE
pgbench_history (then wait until the replica replayed it). Each run is a few
seconds of unrecorded warm-up, then the measured pgbench run, wrapped in
`timeout` so a stalled pooler shows up as ~0 tps instead of a hang. The CPU
time (utime + stime from /proc/PID/stat) each proxy used during the measured
run, divided by the transactions pgbench reports, is the CPU per transaction.

See bench/README.md for how to read the output.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration"))

from harness import tomlw  # noqa: E402
from harness.pg import PgCluster, as_pg_user, chown_to_pg, pg_tool  # noqa: E402
from harness.router import router_binary  # noqa: E402
from harness.util import free_port, port_open, tail, wait_until  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")

APP_USER, APP_PASSWORD, APP_DB = "app", "app-secret", "app"

WORKLOADS = {
    # name: (pgbench arguments, protocol mode)
    "select-simple": (["-S"], "simple"),
    "select-extended": (["-S"], "extended"),
    "select-prepared": (["-S"], "prepared"),
    "select-connect": (["-S", "-C"], "extended"),   # a new connection (login) per transaction
    "tpcb-simple": ([], "simple"),
    "tpcb-extended": ([], "extended"),
    "tpcb-prepared": ([], "prepared"),
}

SCENARIOS = ("baseline", "routing", "jwt", "reload", "tls", "ryw")
# `--scenario all`: the issue 3/4/5 scenarios (ryw is run on its own).
ALL_SCENARIOS = ("routing", "jwt", "reload", "tls")
SCENARIO_WORKLOADS = {
    "baseline": "select-simple,select-extended,select-prepared,tpcb-simple",
    "routing": "select-simple,select-extended,select-prepared,tpcb-prepared",
    "jwt": "select-extended,select-prepared,select-connect",
    "reload": "select-extended",
    "tls": "select-extended",
    "ryw": "select-simple,select-extended,select-prepared",
}


def is_read_only(workload: str) -> bool:
    return workload.startswith("select-")


@dataclass
class Run:
    scenario: str
    workload: str
    target: str
    round: int
    server: str = ""
    tps: float = 0.0
    processed: int = 0
    failed: int = 0
    cpu_s: float | None = None
    cpu_us_per_txn: float | None = None
    user_us_per_txn: float | None = None  # the user-space part of cpu_us_per_txn
    server_logins: int | None = None   # sessions PostgreSQL saw start during the measured run
    timed_out: bool = False
    exit_code: int = 0
    note: str = ""
    extra: str = ""
    cmd: str = ""


@dataclass
class Target:
    name: str
    port_fn: Callable[[str], int]             # workload -> port
    server_fn: Callable[[str], str]           # workload -> what it talks to (for the tables)
    pid_fn: Callable[[], int] | None = None   # the proxy's pid; None for direct
    skip: Callable[[str], str] | None = None  # workload -> reason to skip, or ""
    user: str = APP_USER
    password: str = APP_PASSWORD
    password_label: str = APP_PASSWORD        # what the command line shows for PGPASSWORD
    sslmode: str = "disable"
    # A context manager wrapped around the measured run; what it yields is a
    # callable returning a note for the run (e.g. how many reloads happened).
    during: Callable[[], contextlib.AbstractContextManager] | None = None


@dataclass
class Scenario:
    name: str
    title: str
    workloads: list[str]
    targets: dict[str, Target]
    comparisons: list[tuple[str, str]]        # (subject, baseline) target pairs
    stop: list[Callable[[], None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unavailable: str = ""                     # set when the scenario cannot run


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """utime and stime of a process (all its threads), in seconds: user
    space (the proxy's own code) and the kernel (sockets, wake-ups)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_checked(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def sslrequest_answer(port: int) -> bytes:
    """Send an SSLRequest; return the server's one-byte answer (b'S', b'N' or b'')."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack("!ii", 8, 80877103))
        try:
            return s.recv(1)
        except OSError:
            return b""


def tls_session_info(port: int, user: str, password: str) -> str:
    """What psql's \\conninfo says about TLS for a `sslmode=require` client."""
    env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="require", PGCONNECT_TIMEOUT="10")
    out = subprocess.run([pg_tool("psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", user,
                          "-d", APP_DB, "-c", "\\conninfo"], env=env, capture_output=True,
                         text=True, timeout=30)
    m = re.search(r"SSL connection \(([^)]*)\)", out.stdout)
    return m.group(1) if m else f"no TLS reported: {(out.stdout + out.stderr).strip()[:200]}"


def session_identity(port: int, user: str, password: str) -> str:
    """current_user / session_user of one session (checks a JWT login's role)."""
    env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    out = subprocess.run([pg_tool("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U",
                          user, "-d", APP_DB, "-c",
                          "SELECT current_user || ' / ' || session_user"],
                         env=env, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr.strip()[:200]


# ----------------------------------------------------------------- proxies --
def pgbouncer_binary() -> str:
    """$PGBOUNCER_BIN, else PgBouncer 1.25 built by bench/build_pgbouncer.sh,
    else the system's (Debian 12: 1.18)."""
    built = "/opt/pgbouncer-1.25/bin/pgbouncer"
    return (os.environ.get("PGBOUNCER_BIN") or (built if os.path.exists(built) else None)
            or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")


def pgbouncer_version() -> tuple[int, int]:
    """(major, minor) of pgbouncer_binary(), (0, 0) if unknown."""
    try:
        out = subprocess.run([pgbouncer_binary(), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
        m = re.search(r"PgBouncer (\d+)\.(\d+)", out)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    except (OSError, subprocess.SubprocessError):
        return (0, 0)


def pgbouncer_keeps_prepared() -> bool:
    """PgBouncer 1.21+ keeps protocol-level prepared statements in
    transaction mode (max_prepared_statements)."""
    return pgbouncer_version() >= (1, 21)


class PgBouncer:
    def __init__(self, workdir: Path, backend_port: int, pool_size: int, auth: str,
                 tls: tuple[Path, Path] | None = None, backend_host: str = "127.0.0.1"):
        workdir.mkdir(parents=True, exist_ok=True)
        chown_to_pg(workdir)
        self.workdir = workdir
        self.port = free_port()
        self.ini = workdir / "pgbouncer.ini"
        self.pidfile = workdir / "pgbouncer.pid"
        self.logfile = workdir / "pgbouncer.log"
        auth_type = {"scram": "scram-sha-256", "md5": "md5"}[auth]
        (workdir / "userlist.txt").write_text(f'"{APP_USER}" "{APP_PASSWORD}"\n')
        tls_lines = ""
        if tls:
            cert, key = tls
            tls_lines = (f"client_tls_sslmode = require\nclient_tls_cert_file = {cert}\n"
                         f"client_tls_key_file = {key}\n")
        self.ini.write_text(f"""\
[databases]
{APP_DB} = host={backend_host} port={backend_port} dbname={APP_DB}

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
{"max_prepared_statements = 200" if pgbouncer_keeps_prepared() else ""}
{tls_lines}""")
        for p in (self.ini, workdir / "userlist.txt"):
            chown_to_pg(p)

    def start(self) -> None:
        binary = pgbouncer_binary()
        # PgBouncer refuses to run as root; -d daemonizes it (its own session).
        subprocess.run(as_pg_user([binary, "-d", str(self.ini)]), check=True, cwd=self.workdir,
                       timeout=30)
        wait_until(lambda: port_open(self.port), 15, what="pgbouncer to listen")

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def stop(self) -> None:
        try:
            os.kill(self.pid(), signal.SIGTERM)
        except (OSError, ValueError):
            pass


class TcpRelay:
    """HAProxy in TCP mode, one thread, one server connection per client: a
    proxy hop with no protocol logic and no pooling. What it costs against a
    direct connection is the floor for any proxy on this machine (two more
    socket hops and wake-ups per request), whatever it does with the bytes."""

    def __init__(self, workdir: Path, backend_port: int, backend_host: str = "127.0.0.1"):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.cfg = workdir / "haproxy.cfg"
        self.pidfile = workdir / "haproxy.pid"
        backend = (f"{backend_host}/.s.PGSQL.{backend_port}" if backend_host.startswith("/")
                   else f"{backend_host}:{backend_port}")
        self.cfg.write_text(f"""\
global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h
listen relay
    bind 127.0.0.1:{self.port}
    server backend {backend}
""")

    def start(self) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        subprocess.run([binary, "-D", "-f", str(self.cfg), "-p", str(self.pidfile)], check=True,
                       cwd=self.workdir, timeout=30)
        wait_until(lambda: port_open(self.port), 15, what="haproxy to listen")

    def pid(self) -> int:
        return int(self.pidfile.read_text().split()[0])

    def stop(self) -> None:
        try:
            os.kill(self.pid(), signal.SIGTERM)
        except (OSError, ValueError):
            pass


class PgRouter:
    # `workers` of every pgrouter the run starts (--router-workers; 0 = the
    # config default, one per core).
    workers = 0

    def __init__(self, workdir: Path, databases: list[dict], users: list[dict], pool_size: int,
                 general: dict | None = None, jwt: dict | None = None, binary: Path | None = None,
                 sections: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.binary = binary
        self.port = free_port()
        self.logfile = workdir / "pgrouter.log"
        self.config = workdir / "router.toml"
        self.users = workdir / "users.toml"
        self.general = {"listen": f"127.0.0.1:{self.port}", "pool_mode": "transaction",
                        "default_pool_size": pool_size, "max_clients": 2000,
                        "metrics_listen": "", "hot_reload": False, "server_tls": "disable",
                        "workers": PgRouter.workers}
        self.general.update(general or {})
        self.databases = databases
        self.jwt = jwt
        # Other top-level tables, e.g. {"sharded_tables": [...]}.
        self.sections = sections or {}
        self.write_config()
        self.users.write_text(tomlw.dumps({"users": users}))
        self.proc: subprocess.Popen | None = None

    def write_config(self, **general_overrides) -> None:
        """(Re)write router.toml atomically (write + rename)."""
        doc = {"general": {**self.general, **general_overrides}}
        if self.jwt:
            doc["jwt"] = self.jwt
        doc["databases"] = self.databases
        doc.update(self.sections)
        tmp = self.config.with_suffix(".toml.tmp")
        tmp.write_text(tomlw.dumps(doc))
        os.replace(tmp, self.config)

    def start(self) -> None:
        env = dict(os.environ)
        # The balancer's changes of how many workers take clients are
        # counted at the end (see `stop`).
        env.setdefault("RUST_LOG", "warn,pgrouter::worker_balance=info")
        log_f = open(self.logfile, "ab")
        # setsid: its own session, hence its own CPU autogroup, like a daemon
        # (see shared BENCHMARKING notes: a plain child measures ~13 % slower).
        self.proc = subprocess.Popen(
            ["setsid", str(self.binary or router_binary()), "--config", str(self.config), "--users", str(self.users)],
            stdin=subprocess.DEVNULL, stdout=log_f, stderr=log_f, env=env, cwd=self.workdir)
        log_f.close()
        try:
            wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, 20,
                       what="pgrouter to listen")
        except TimeoutError:
            self.stop()
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
            changes = [line for line in tail(self.logfile, 1 << 20).splitlines()
                       if "workers taking clients changed" in line]
            log(f"{self.workdir.name}: the workers taking clients changed {len(changes)} time(s)"
                + "".join(f"\n    {line[-160:]}" for line in changes[-5:]))

    def log_tail(self, n: int = 4000) -> str:
        return tail(self.logfile, n)


def binary_info() -> str:
    """Path, modification time and sha256 prefix of the pgrouter binary (the
    lead may rebuild it while a benchmark runs: each scenario records which
    build its pgrouter was started from)."""
    import hashlib
    path = router_binary()
    st = path.stat()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return (f"{path} built {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))}, "
            f"sha256 {digest}")


def metric(port: int, name: str, labels: str = "") -> float | None:
    """One sample from pgrouter's Prometheus endpoint, e.g.
    metric(p, 'pgrouter_reloads_total', 'result="ok"')."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            rest = line[len(name):]
            if rest[:1] in ("{", " "):
                try:
                    return float(line.rsplit(" ", 1)[1])
                except ValueError:
                    return None
    return None


# ------------------------------------------------------------------ pgbench --
def prepare(cluster) -> None:
    with cluster.primary.connect(APP_DB) as conn:
        conn.execute("CHECKPOINT")
        conn.execute("VACUUM pgbench_branches")
        conn.execute("VACUUM pgbench_tellers")
        conn.execute("TRUNCATE pgbench_history")
    cluster.wait_replayed(60)


def server_sessions(cluster) -> int:
    """Sessions established to database app so far, primary + replica
    (pg_stat_database.sessions; a backend reports its login with its next
    stats flush, so this lags by up to a second or so)."""
    total = 0
    for server in (cluster.primary, cluster.replica):
        total += int(server.scalar("SELECT coalesce(sum(sessions), 0) FROM pg_stat_database "
                                   "WHERE datname = %s", (APP_DB,), db="postgres"))
    return total


def pgbench(target: Target, workload: str, duration: int, clients: int,
            jobs: int) -> tuple[int, str, bool, str]:
    args, mode = WORKLOADS[workload]
    port = target.port_fn(workload)
    bench_cmd = [pg_tool("pgbench"), "-n", "-c", str(clients), "-j", str(jobs), "-T", str(duration),
                 "-M", mode, *args, "-h", "127.0.0.1", "-p", str(port), "-U", target.user, APP_DB]
    cmd = ["timeout", "-k", "5", str(duration + 30), *bench_cmd]
    env = dict(os.environ, PGPASSWORD=target.password, PGCONNECT_TIMEOUT="10",
               PGSSLMODE=target.sslmode)
    shown = (f"PGPASSWORD={target.password_label} PGSSLMODE={target.sslmode} "
             + " ".join(shlex.quote(c) for c in ["pgbench", *bench_cmd[1:]]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, proc.returncode == 124, shown


def parse_pgbench(text: str) -> tuple[float, int, int]:
    tps = re.search(r"tps = ([0-9.]+) \((?:without|excluding) initial connection time\)", text)
    if not tps:  # pgbench -C reports only tps including connection time
        tps = re.search(r"tps = ([0-9.]+)", text)
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    return (float(tps.group(1)) if tps else 0.0,
            int(processed.group(1)) if processed else 0,
            int(failed.group(1)) if failed else 0)


def one_run(cluster, scenario: str, target: Target, workload: str, rnd: int, args) -> Run:
    run = Run(scenario, workload, target.name, rnd, server=target.server_fn(workload))
    reason = target.skip(workload) if target.skip else ""
    if reason:
        run.note = "skipped: " + reason
        return run
    prepare(cluster)
    if args.warmup > 0:
        pgbench(target, workload, args.warmup, args.clients, args.jobs)
    pid = target.pid_fn() if target.pid_fn else None
    during = target.during() if target.during else contextlib.nullcontext(None)
    sessions0 = server_sessions(cluster)
    with during as note_fn:
        cpu0 = proc_cpu_split(pid) if pid else None
        code, text, timed_out, run.cmd = pgbench(target, workload, args.duration, args.clients,
                                                 args.jobs)
        cpu1 = proc_cpu_split(pid) if pid else None
    time.sleep(1.0)  # let backends flush their session counts
    run.server_logins = server_sessions(cluster) - sessions0
    if note_fn:
        run.extra = note_fn()
    run.tps, run.processed, run.failed = parse_pgbench(text)
    run.exit_code, run.timed_out = code, timed_out
    if pid:
        run.cpu_s = sum(cpu1) - sum(cpu0)
        if run.processed:
            run.cpu_us_per_txn = run.cpu_s / run.processed * 1e6
            run.user_us_per_txn = (cpu1[0] - cpu0[0]) / run.processed * 1e6
    if code != 0:
        lines = [ln for ln in text.splitlines() if "error" in ln.lower() or "abort" in ln.lower()
                 or "fatal" in ln.lower()]
        run.note = ("TIMEOUT " if timed_out else f"exit {code} ") + (lines[0][:120] if lines else "")
    return run


# ----------------------------------------------------------------- reloads --
class Reloader:
    """While active: every `interval` s, rewrite router.toml with
    default_pool_size alternating between `size + 1` and `size`, then SIGHUP.
    Counts the signals sent and (when the metrics endpoint is on) the
    successful and failed reloads pgrouter reports."""

    def __init__(self, router: PgRouter, size: int, interval: float, metrics_port: int | None):
        self.router, self.size, self.interval, self.metrics_port = router, size, interval, metrics_port

    @contextlib.contextmanager
    def active(self):
        stop = threading.Event()
        sent = [0]
        state = {"size": self.size}

        def loop():
            while not stop.wait(self.interval):
                state["size"] = self.size + 1 if state["size"] == self.size else self.size
                self.router.write_config(default_pool_size=state["size"])
                os.kill(self.router.pid(), signal.SIGHUP)
                sent[0] += 1

        def counts():
            if not self.metrics_port:
                return None, None
            return (metric(self.metrics_port, "pgrouter_reloads_total", 'result="ok"'),
                    metric(self.metrics_port, "pgrouter_reloads_total", 'result="error"'))

        ok0, err0 = counts()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        result = {}
        try:
            yield lambda: result.get("note", "")
        finally:
            stop.set()
            thread.join()
            if state["size"] != self.size:  # leave the router on the original size
                self.router.write_config(default_pool_size=self.size)
                os.kill(self.router.pid(), signal.SIGHUP)
                sent[0] += 1
            time.sleep(0.5)
            ok1, err1 = counts()
            note = f"SIGHUPs {sent[0]}"
            if ok0 is not None and ok1 is not None:
                note += f", reloads ok {ok1 - ok0:.0f}"
            if err0 is not None and err1 is not None:
                note += f", failed {err1 - err0:.0f}"
            result["note"] = note


# --------------------------------------------------------------- scenarios --
def server_host(cluster, args) -> str:
    """How both proxies reach PostgreSQL (`--server-socket`): TCP over
    loopback, or the servers' Unix-domain socket directory."""
    return str(cluster.sockdir) if args.server_socket == "unix" else "127.0.0.1"


def router_databases(cluster, with_replica: bool, host: str = "127.0.0.1") -> list[dict]:
    dbs = [{"name": APP_DB, "host": host, "port": cluster.primary.port,
            "database_name": APP_DB, "role": "primary"}]
    if with_replica:
        dbs.append({"name": APP_DB, "host": host, "port": cluster.replica.port,
                    "database_name": APP_DB, "role": "replica"})
    return dbs


def app_user(auth: str) -> dict:
    return {"name": APP_USER, "database": APP_DB, "password": APP_PASSWORD, "auth": auth}


def const(v):
    return lambda _w: v


def scenario_baseline(cluster, workdir: Path, args) -> Scenario:
    p = cluster.primary
    names = [t for t in (args.targets or "direct,pgbouncer,pgrouter").split(",") if t]
    scn = Scenario("baseline", "pgrouter and PgBouncer in front of the primary"
                   + (" (pgrouter also has the replica)" if args.router_with_replica else ""),
                   [], {}, [("pgrouter", "direct"), ("pgrouter", "pgbouncer")])
    for name in names:
        if name == "direct":
            scn.targets["direct"] = Target("direct", const(p.port), const(f"primary:{p.port}"))
        elif name == "pgbouncer":
            b = PgBouncer(workdir / "pgbouncer", p.port, args.pool_size, args.auth,
                          backend_host=server_host(cluster, args))
            b.start()
            scn.stop.append(b.stop)
            scn.notes.append("PgBouncer: %s (%d.%d)" % (pgbouncer_binary(), *pgbouncer_version()))
            # PgBouncer before 1.21 has no protocol-level prepared statements.
            keeps = pgbouncer_keeps_prepared()
            scn.targets["pgbouncer"] = Target(
                "pgbouncer", const(b.port), const(f"primary:{p.port}"), b.pid,
                lambda w: "" if keeps or WORKLOADS[w][1] != "prepared"
                else "PgBouncer < 1.21: no prepared statements")
        elif name == "pgrouter":
            dbs = router_databases(cluster, args.router_with_replica, server_host(cluster, args))
            r = PgRouter(workdir / "pgrouter", dbs,
                         [app_user(args.auth)], args.pool_size)
            r.start()
            scn.stop.append(r.stop)
            where = "primary+replica" if args.router_with_replica else f"primary:{p.port}"
            scn.targets["pgrouter"] = Target("pgrouter", const(r.port), const(where), r.pid)
            if args.compare_bin or args.compare_workers or args.compare_spread is not None:
                # Another build of pgrouter (e.g. an older commit), or the
                # same build with another `workers`: did a change cost anything?
                base = PgRouter(workdir / "pgrouter-base", dbs, [app_user(args.auth)],
                                args.pool_size,
                                general=compare_general(args),
                                binary=Path(args.compare_bin) if args.compare_bin else None)
                base.start()
                scn.stop.append(base.stop)
                scn.targets["pgrouter-base"] = Target("pgrouter-base", const(base.port), const(where),
                                                      base.pid)
                scn.comparisons.append(("pgrouter", "pgrouter-base"))
    return scn


def compare_general(args) -> dict | None:
    """The [general] keys that set pgrouter-base apart (--compare-workers,
    --compare-spread); None when it differs only by its binary."""
    general = {}
    if args.compare_workers:
        general["workers"] = args.compare_workers
    if args.compare_spread is not None:
        general["worker_spread_percent"] = args.compare_spread
    return general or None


def scenario_routing(cluster, workdir: Path, args) -> Scenario:
    p, rep = cluster.primary, cluster.replica
    scn = Scenario(
        "routing", "routing on: pgrouter with primary + replica; PgBouncer -> replica; "
        "relay (HAProxy TCP, no pooling) -> replica; direct -> replica for -S, primary for TPC-B",
        [], {},
        [("pgrouter", "pgbouncer"), ("pgrouter", "direct"), ("relay", "direct"),
         ("pgrouter", "relay")])

    def direct_port(w):
        return rep.port if is_read_only(w) else p.port

    def direct_label(w):
        return f"replica:{rep.port}" if is_read_only(w) else f"primary:{p.port}"

    scn.targets["direct"] = Target("direct", direct_port, direct_label)
    b = PgBouncer(workdir / "pgbouncer", rep.port, args.pool_size, args.auth,
                  backend_host=server_host(cluster, args))
    b.start()
    scn.stop.append(b.stop)

    def bouncer_skip(w):
        if WORKLOADS[w][1] == "prepared" and not pgbouncer_keeps_prepared():
            return "PgBouncer < 1.21: no prepared statements"
        if not is_read_only(w):
            return "PgBouncer points at the replica (read-only)"
        return ""

    scn.targets["pgbouncer"] = Target("pgbouncer", const(b.port), const(f"replica:{rep.port}"),
                                      b.pid, bouncer_skip)
    relay = TcpRelay(workdir / "relay", rep.port, server_host(cluster, args))
    relay.start()
    scn.stop.append(relay.stop)

    def relay_skip(w):
        return "" if is_read_only(w) else "the relay points at the replica (read-only)"

    scn.targets["relay"] = Target("relay", const(relay.port), const(f"replica:{rep.port}"),
                                  relay.pid, relay_skip)
    dbs = router_databases(cluster, True, server_host(cluster, args))
    r = PgRouter(workdir / "pgrouter", dbs, [app_user(args.auth)],
                 args.pool_size)
    r.start()
    scn.stop.append(r.stop)
    scn.targets["pgrouter"] = Target("pgrouter", const(r.port), const("primary+replica"), r.pid)
    return scn


JWT_ROLE = "bench_reader"
JWT_USER = "bench_jwt"
AUTHENTICATOR = "authenticator"
AUTHENTICATOR_PASSWORD = "authenticator-secret"
JWT_ISSUER = "https://issuer.bench.pgrouter"
JWT_AUDIENCE = "pgrouter-bench"


def jwt_setup(cluster, workdir: Path) -> tuple[Path, str]:
    """Roles on the primary (as superuser), an RSA key pair from openssl and a
    token from PyJWT. Returns (public key PEM path, token)."""
    def qlit(s):
        return "'" + s.replace("'", "''") + "'"

    with cluster.primary.connect("postgres") as conn:
        for name, opts in ((AUTHENTICATOR, f"LOGIN NOINHERIT PASSWORD {qlit(AUTHENTICATOR_PASSWORD)}"),
                           (JWT_ROLE, "NOLOGIN")):
            conn.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                         f"{qlit(name)}) THEN CREATE ROLE {name} {opts}; END IF; END $$")
        conn.execute(f"GRANT {JWT_ROLE} TO {AUTHENTICATOR}")
        conn.execute(f"GRANT CONNECT ON DATABASE {APP_DB} TO {AUTHENTICATOR}")
    with cluster.primary.connect(APP_DB) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {JWT_ROLE}")
        conn.execute("GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, "
                     f"pgbench_history TO {JWT_ROLE}")
    cluster.wait_replayed(60)

    priv, pub = workdir / "jwt_private.pem", workdir / "jwt_public.pem"
    run_checked(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", str(priv)])
    run_checked(["openssl", "pkey", "-in", str(priv), "-pubout", "-out", str(pub)])
    import jwt  # PyJWT, from the venv (scripts/setup.sh installs it)
    now = int(time.time())
    token = jwt.encode({"sub": JWT_USER, "role": JWT_ROLE, "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
                        "iat": now, "nbf": now - 60, "exp": now + 86400},
                       priv.read_bytes(), algorithm="RS256")
    return pub, token


def scenario_jwt(cluster, workdir: Path, args) -> Scenario:
    workdir.mkdir(parents=True, exist_ok=True)
    pub, token = jwt_setup(cluster, workdir)
    users = [app_user(args.auth),
             {"name": AUTHENTICATOR, "database": APP_DB, "server_password": AUTHENTICATOR_PASSWORD,
              "login": False},
             {"name": JWT_USER, "database": APP_DB, "auth": "jwt"}]
    jwt_section = {"public_key_file": str(pub), "algorithms": ["RS256"], "issuer": JWT_ISSUER,
                   "audience": JWT_AUDIENCE, "username_claim": "sub", "role_claim": "role",
                   "connect_as": AUTHENTICATOR, "allowed_roles": [JWT_ROLE],
                   "auto_provision": False}
    dbs = router_databases(cluster, True, server_host(cluster, args))
    r = PgRouter(workdir / "pgrouter", dbs, users, args.pool_size,
                 jwt=jwt_section)
    r.start()
    scn = Scenario(
        "jwt", f"one pgrouter (primary + replica) with [jwt]: JWT user {JWT_USER!r} (RS256 token as "
        f"password, role {JWT_ROLE!r} via connect_as {AUTHENTICATOR!r}) vs password user "
        f"{APP_USER!r} ({args.auth})", [], {}, [("pgrouter-jwt", "pgrouter-password")], [r.stop])
    scn.targets["pgrouter-password"] = Target("pgrouter-password", const(r.port),
                                              const(f"as {APP_USER}"), r.pid)
    scn.targets["pgrouter-jwt"] = Target("pgrouter-jwt", const(r.port), const(f"as {JWT_ROLE}"),
                                         r.pid, user=JWT_USER, password=token,
                                         password_label="<RS256 JWT>")
    scn.notes.append(f"check: a JWT session runs as (current_user / session_user) "
                     f"{session_identity(r.port, JWT_USER, token)}; a password session as "
                     f"{session_identity(r.port, APP_USER, APP_PASSWORD)}")
    scn.notes.append(f"JWT token ({len(token)} bytes) claims: sub={JWT_USER} role={JWT_ROLE} "
                     f"iss={JWT_ISSUER} aud={JWT_AUDIENCE}, exp = now + 1 day; sent over "
                     "plain TCP from loopback")
    return scn


def scenario_reload(cluster, workdir: Path, args) -> Scenario:
    metrics_port = free_port()
    dbs = router_databases(cluster, True, server_host(cluster, args))
    r = PgRouter(workdir / "pgrouter", dbs, [app_user(args.auth)],
                 args.pool_size, general={"metrics_listen": f"127.0.0.1:{metrics_port}"})
    r.start()
    reloader = Reloader(r, args.pool_size, args.reload_interval, metrics_port)
    scn = Scenario(
        "reload", f"one pgrouter (primary + replica); pgrouter-reload: every "
        f"{args.reload_interval:g} s router.toml rewritten with default_pool_size alternating "
        f"{args.pool_size + 1}/{args.pool_size}, then SIGHUP", [], {},
        [("pgrouter-reload", "pgrouter")], [r.stop])
    scn.targets["pgrouter"] = Target("pgrouter", const(r.port), const("primary+replica"), r.pid)
    scn.targets["pgrouter-reload"] = Target("pgrouter-reload", const(r.port),
                                            const("primary+replica"), r.pid,
                                            during=reloader.active)
    return scn


def xact_counts(cluster) -> tuple[int, int]:
    """Transactions committed so far in database app: (primary, replica)."""
    return tuple(int(s.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                              (APP_DB,), db="postgres"))
                 for s in (cluster.primary, cluster.replica))


@contextlib.contextmanager
def replica_share(cluster):
    """While active: counts the transactions each server committed; the note
    says which share ran on the replica (reads with and without
    read_your_writes must go to the same place for a like-for-like ratio)."""
    p0, r0 = xact_counts(cluster)
    result = {}
    try:
        yield lambda: result.get("note", "")
    finally:
        time.sleep(0.6)  # backends flush their statistics about every 0.5 s
        p1, r1 = xact_counts(cluster)
        total = (p1 - p0) + (r1 - r0)
        result["note"] = f"replica {100 * (r1 - r0) / total:.0f} %" if total else "no transactions"


def scenario_ryw(cluster, workdir: Path, args) -> Scenario:
    """Issue 19: what `read_your_writes = true` costs on a read-only load:
    two pgrouters with primary + replica, alike but for that key."""
    dbs = router_databases(cluster, True, server_host(cluster, args))
    scn = Scenario("ryw", "two pgrouters (primary + replica), read_your_writes = false "
                   "(pgrouter) and true (pgrouter-ryw); reads go to the replica in both",
                   [], {}, [("pgrouter-ryw", "pgrouter")])
    for name, ryw in (("pgrouter", False), ("pgrouter-ryw", True)):
        r = PgRouter(workdir / name, dbs, [app_user(args.auth)], args.pool_size,
                     general={"read_your_writes": ryw})
        r.start()
        scn.stop.append(r.stop)
        scn.targets[name] = Target(name, const(r.port), const("primary+replica"), r.pid,
                                   during=lambda: replica_share(cluster))
    return scn


def scenario_tls(cluster, workdir: Path, args) -> Scenario:
    rep = cluster.replica
    scn = Scenario("tls", "client TLS required by both proxies, pgbench sslmode=require; "
                   "pgrouter with primary + replica, PgBouncer -> replica", [], {},
                   [("pgrouter-tls", "pgbouncer-tls")])
    example = (ROOT / "example.router.toml").read_text()
    if "tls_certificate" not in example:
        scn.unavailable = "example.router.toml has no tls_certificate: TLS not implemented yet"
        return scn
    certdir = workdir / "certs"
    certdir.mkdir(parents=True, exist_ok=True)
    chown_to_pg(workdir)
    chown_to_pg(certdir)
    cert, key = certdir / "server.crt", certdir / "server.key"
    run_checked(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                 "-out", str(cert), "-days", "3", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    for f in (cert, key):
        chown_to_pg(f)
        os.chmod(f, 0o600)
    dbs = router_databases(cluster, True, server_host(cluster, args))
    r = PgRouter(workdir / "pgrouter", dbs, [app_user(args.auth)],
                 args.pool_size, general={"tls_certificate": str(cert), "tls_private_key": str(key),
                                          "client_tls": "require"})
    try:
        r.start()
    except RuntimeError as exc:
        scn.unavailable = f"pgrouter did not start with tls_certificate/tls_private_key: {exc}"
        return scn
    scn.stop.append(r.stop)
    answer = sslrequest_answer(r.port)
    if answer != b"S":
        scn.unavailable = f"pgrouter answers SSLRequest with {answer!r}, not b'S': TLS not there yet"
        return scn
    b = PgBouncer(workdir / "pgbouncer", rep.port, args.pool_size, args.auth, tls=(cert, key),
                  backend_host=server_host(cluster, args))
    b.start()
    scn.stop.append(b.stop)
    scn.targets["pgbouncer-tls"] = Target("pgbouncer-tls", const(b.port), const(f"replica:{rep.port}"),
                                          b.pid, sslmode="require")
    scn.targets["pgrouter-tls"] = Target("pgrouter-tls", const(r.port), const("primary+replica"),
                                         r.pid, sslmode="require")
    for name, port in (("pgbouncer-tls", b.port), ("pgrouter-tls", r.port)):
        try:
            scn.notes.append(f"{name}: sslmode=require negotiates {tls_session_info(port, APP_USER, APP_PASSWORD)}")
        except Exception as exc:  # noqa: BLE001 - informative only
            scn.notes.append(f"{name}: could not read the TLS session ({exc})")
    scn.notes.append("certificate: self-signed RSA 2048 from openssl req -x509, same for both")
    return scn


BUILDERS = {"baseline": scenario_baseline, "routing": scenario_routing, "jwt": scenario_jwt,
            "reload": scenario_reload, "tls": scenario_tls, "ryw": scenario_ryw}


# ------------------------------------------------------------------ report --
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec=".0f", none="-"):
    return none if v is None else format(v, spec)


def report(scn: Scenario, runs: list[Run], rounds: int) -> str:
    out = [f"", f"=== scenario {scn.name}: {scn.title}"]
    out += [f"    {n}" for n in scn.notes]
    by = {(r.workload, r.target, r.round): r for r in runs}
    targets = list(scn.targets)
    out.append("")
    out.append(f"Medians over {rounds} rounds (tps = pgbench tps without connection time; "
               "cpu = proxy utime+stime per transaction, user = its utime part; failed = sum over rounds; srv logins = "
               "sessions PostgreSQL saw start during the run, median)")
    header = (f"{'workload':<16} {'target':<18} {'server':<16} {'tps':>8} {'cpu µs/txn':>11} "
              f"{'user':>6} {'failed':>7} {'srv logins':>10}")
    out.append(header)
    out.append("-" * len(header))
    for w in scn.workloads:
        for t in targets:
            rs = [by.get((w, t, i)) for i in range(rounds)]
            rs = [r for r in rs if r is not None]
            if not rs:
                continue
            if all(r.note.startswith("skipped") for r in rs):
                out.append(f"{w:<16} {t:<18} {rs[0].server:<16} {'n/a':>8}  ({rs[0].note})")
                continue
            failed = sum(r.failed for r in rs)
            line = (f"{w:<16} {t:<18} {rs[0].server:<16} {fmt(med([r.tps for r in rs])):>8} "
                    f"{fmt(med([r.cpu_us_per_txn for r in rs]), '.1f'):>11} "
                    f"{fmt(med([r.user_us_per_txn for r in rs]), '.1f'):>6} {failed:>7} "
                    f"{fmt(med([r.server_logins for r in rs])):>10}")
            if any(r.note for r in rs):
                line += "  ! " + "; ".join(sorted({r.note for r in rs if r.note}))[:110]
            out.append(line)
            extras = [f"r{r.round + 1}: {r.extra}" for r in rs if r.extra]
            if extras:
                out.append(f"{'':<16} {'':<18}   " + "   ".join(extras))
    out.append("")
    out.append("Ratios of A to B (median of per-round ratios, then each round): "
               "tps A÷B, cpu µs/txn A÷B and A−B, and its user-space part A÷B")
    header = (f"{'workload':<16} {'A ÷ B':<38} {'tps':>5}  {'per round':<20} {'cpu':>5} "
              f"{'cpu A−B':>8}  {'per round (cpu A−B µs)':<24} {'user':>5}")
    out.append(header)
    out.append("-" * len(header))
    for w in scn.workloads:
        for a, b in scn.comparisons:
            tr, cr, cd, ur = [], [], [], []
            for i in range(rounds):
                ra, rb = by.get((w, a, i)), by.get((w, b, i))
                if not ra or not rb or ra.note.startswith("skipped") or rb.note.startswith("skipped"):
                    continue
                tr.append(ra.tps / rb.tps if rb.tps else None)
                if ra.cpu_us_per_txn is not None and rb.cpu_us_per_txn:
                    cr.append(ra.cpu_us_per_txn / rb.cpu_us_per_txn)
                    cd.append(ra.cpu_us_per_txn - rb.cpu_us_per_txn)
                if ra.user_us_per_txn is not None and rb.user_us_per_txn:
                    ur.append(ra.user_us_per_txn / rb.user_us_per_txn)
            if not tr:
                continue
            per_round = " ".join(fmt(x, ".2f") for x in tr)
            per_cpu = " ".join(fmt(x, "+.1f") for x in cd) if cd else ""
            out.append(f"{w:<16} {a + ' ÷ ' + b:<38} {fmt(med(tr), '.2f'):>5}  {per_round:<20} "
                       f"{fmt(med(cr), '.2f'):>5} {fmt(med(cd), '+.1f'):>8}  {per_cpu:<24} "
                       f"{fmt(med(ur), '.2f'):>5}")
    out.append("")
    out.append("Command lines (as run; -T is the measured duration, the warm-up uses -T --warmup)")
    seen = set()
    for r in runs:
        if r.cmd and (r.workload, r.target) not in seen:
            seen.add((r.workload, r.target))
            out.append(f"  [{r.workload} / {r.target}] {r.cmd}")
    return "\n".join(out)


# -------------------------------------------------------------------- main --
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="baseline",
                    help=f"comma list from {','.join(SCENARIOS)}, or 'all' "
                         f"({','.join(ALL_SCENARIOS)})")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 15)),
                    help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("BENCH_WARMUP", 3)),
                    help="seconds of unrecorded warm-up before each run")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--router-workers", type=int, default=0,
                    help="pgrouter's `workers` (0 = its default, one per core; 1 = a single "
                         "thread, like PgBouncer)")
    ap.add_argument("--server-socket", choices=["tcp", "unix"], default="tcp",
                    help="how both proxies connect to PostgreSQL: TCP over loopback (default) "
                         "or the Unix-domain socket; clients and direct runs always use TCP")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
    ap.add_argument("--auth", choices=["scram", "md5"], default="scram",
                    help="client auth method for both proxies (password users)")
    ap.add_argument("--workloads", default=None,
                    help=f"comma list from {','.join(WORKLOADS)}; overrides every scenario's "
                         "default workloads")
    ap.add_argument("--targets", default=None,
                    help="baseline: which of direct,pgbouncer,pgrouter (default all); other "
                         "scenarios: keep only these of the scenario's targets")
    ap.add_argument("--router-with-replica", action="store_true",
                    help="baseline only: also give pgrouter the replica (reads may then go there)")
    ap.add_argument("--reload-interval", type=float, default=1.0,
                    help="reload scenario: seconds between SIGHUPs")
    ap.add_argument("--compare-workers", type=int, default=0,
                    help="also run a second pgrouter (this build, or --compare-bin) with this many "
                         "workers, reported as pgrouter-base")
    ap.add_argument("--compare-spread", type=int, default=None,
                    help="also run a second pgrouter (this build, or --compare-bin) with this "
                         "worker_spread_percent (0: clients over every worker at once), "
                         "reported as pgrouter-base")
    ap.add_argument("--compare-bin", default=None,
                    help="baseline: also run this pgrouter binary (e.g. a build of an older commit) "
                         "as target pgrouter-base, with the same configuration, and report "
                         "pgrouter / pgrouter-base")
    ap.add_argument("--json", help="also write every run as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the cluster directory")
    args = ap.parse_args()
    PgRouter.workers = args.router_workers

    scenarios = [s for s in args.scenario.split(",") if s]
    if scenarios == ["all"]:
        scenarios = list(ALL_SCENARIOS)
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    if args.workloads:
        for w in args.workloads.split(","):
            if w and w not in WORKLOADS:
                ap.error(f"unknown workload {w}")

    log(f"starting PostgreSQL primary + replica (shared_buffers 512MB), scale {args.scale}")
    cluster = PgCluster(with_replica=True, shared_buffers="512MB", max_connections=300,
                        prefix="pgrouter-bench-")
    cluster.start()
    all_runs: list[Run] = []
    reports: list[str] = []
    try:
        p = cluster.primary
        out = subprocess.run(as_pg_user([pg_tool("pgbench"), "-i", "-q", "-s", str(args.scale),
                                         "-h", str(p.sockdir), "-p", str(p.port), "-U", APP_USER,
                                         APP_DB]),
                             capture_output=True, text=True, timeout=1200, cwd=cluster.tmpdir)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        cluster.wait_replayed(120)

        for sname in scenarios:
            workdir = cluster.tmpdir / f"scenario-{sname}"
            workdir.mkdir()
            chown_to_pg(workdir)
            scn = None
            try:
                scn = BUILDERS[sname](cluster, workdir, args)
                if any(t.startswith("pgrouter") for t in scn.targets):
                    scn.notes.append("pgrouter binary: " + binary_info())
                scn.notes.append(f"pgrouter workers = {args.router_workers} (0 = one per core)")
                scn.notes.append(f"proxies reach PostgreSQL over {args.server_socket} "
                                 f"({server_host(cluster, args)}); clients and direct use TCP")
                scn.workloads = [w for w in (args.workloads or SCENARIO_WORKLOADS[sname]).split(",") if w]
                if args.targets and sname != "baseline":
                    keep = set(args.targets.split(","))
                    scn.targets = {k: v for k, v in scn.targets.items() if k in keep}
                if scn.unavailable:
                    log(f"scenario {sname}: NOT RUN: {scn.unavailable}")
                    reports.append(f"\n=== scenario {sname}: NOT RUN: {scn.unavailable}")
                    continue
                runs = run_scenario(cluster, scn, args)
                all_runs += runs
                text = report(scn, runs, args.rounds)
                print(text, flush=True)
                reports.append(text)
            finally:
                if scn:
                    for stop in scn.stop:
                        stop()

        if len(reports) > 1:
            print("\n\n########## all scenarios ##########")
            print("\n".join(reports))
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in all_runs], indent=1))
            log(f"wrote {args.json}")
    finally:
        cluster.teardown(keep_dir=args.keep)
        if args.keep:
            log(f"kept {cluster.tmpdir}")
    return 0


def run_scenario(cluster, scn: Scenario, args) -> list[Run]:
    order = list(scn.targets)
    per_run = args.warmup + args.duration + 2
    n_runs = sum(1 for w in scn.workloads for t in scn.targets.values()
                 if not (t.skip and t.skip(w)))
    log(f"scenario {scn.name}: targets {order}; workloads {scn.workloads}; {args.rounds} rounds × "
        f"{args.duration}s (+{args.warmup}s warm-up); about {per_run * n_runs * args.rounds // 60 + 1} min")
    runs: list[Run] = []
    for rnd in range(args.rounds):
        for wi, w in enumerate(scn.workloads):
            shift = (rnd + wi) % len(order)
            for t in order[shift:] + order[:shift]:
                run = one_run(cluster, scn.name, scn.targets[t], w, rnd, args)
                runs.append(run)
                if run.note.startswith("skipped"):
                    continue
                log(f"{scn.name} round {rnd + 1} {w:<16} {t:<18} tps {run.tps:9.0f}  "
                    f"cpu/txn {fmt(run.cpu_us_per_txn, '.1f'):>6} µs  failed {run.failed}  "
                    f"srv logins {run.server_logins}"
                    + (f"  [{run.extra}]" if run.extra else "")
                    + (f"  ! {run.note}" if run.note else ""))
    return runs


if __name__ == "__main__":
    sys.exit(main())
