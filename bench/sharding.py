#!/usr/bin/env python3
"""Issue 17's sharding bar, measured in one run (see bench/README.md).

Starts two PostgreSQL 15 primaries (the shards; the integration harness),
loads them directly, starts pgrouter over them and measures:

(a) point reads and writes by key (pgbench custom scripts) through a 2-shard
    config vs the same workload through an unsharded config (one server
    with the whole table), interleaved rounds: the router's CPU per
    transaction (utime+stime / transactions) and tps. Bar: sharded ÷
    unsharded CPU per transaction ≤ 1.1.
(b) keyless statements over 2 shards of `--rows-per-shard` rows each
    (`SELECT count(*)`, `ORDER BY ... LIMIT 100`, the whole table, half of
    it), through the router vs each shard's part run directly on the two
    shards at once (wall time until both finish), interleaved rounds.
    Bar: router ÷ direct ≤ 1.1.
(c) the router's RSS (VmRSS sampled, VmHWM) while one client streams a
    `--rss-rows`-row cross-shard `ORDER BY` without LIMIT, and, for
    comparison, the same on an unsharded config (one server holding all
    the rows). Bar: < 64 MiB.

Clients for (b) and (c) are libpq connections in processes of their own
(`--worker`), reading results in libpq's chunked-rows mode (10,000 rows a
chunk, nothing kept): per row they cost what libpq's parsing costs, on both
sides alike, and the direct side's two clients run in parallel as the two
shards do. Their CPU time is reported beside the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from bench import PgRouter, binary_info, fmt, log, med, parse_pgbench, proc_cpu_seconds  # noqa: E402
from harness.pg import APP_DB, APP_PASSWORD, APP_USER, PgCluster, conninfo, pg_tool  # noqa: E402

SHARDED_TABLES = [
    {"database": APP_DB, "name": "bench_accounts", "column": "aid", "data_type": "integer"},
    {"database": APP_DB, "name": "bench_big", "column": "id", "data_type": "bigint"},
    {"database": APP_DB, "name": "bench_big5", "column": "id", "data_type": "bigint"},
]
WHOLE_DB = "whole"   # the unsharded copy, on shard 0's server
MIB = 1024 * 1024

# (a): pgbench scripts. `\gset` fails the transaction when no row comes
# back, so a statement sent to the wrong shard shows up as failed.
POINT_SCRIPTS = {
    "read": "\\set aid random(1, {n})\n"
            "SELECT abalance FROM bench_accounts WHERE aid = :aid \\gset\n",
    "write": "\\set aid random(1, {n})\n\\set delta random(-5000, 5000)\n"
             "UPDATE bench_accounts SET abalance = abalance + :delta WHERE aid = :aid "
             "RETURNING abalance \\gset\n",
}
POINT_WORKLOADS = {f"{kind}-{mode}": (kind, mode) for kind in POINT_SCRIPTS
                   for mode in ("simple", "extended", "prepared")}

# (b): name -> (statement through the router, each shard's part run directly).
FANOUT_QUERIES = {
    "count": ("SELECT count(*) FROM bench_big", "SELECT count(*) FROM bench_big"),
    "order-limit": ("SELECT id, v, note FROM bench_big ORDER BY v, id LIMIT 100",
                    "SELECT id, v, note FROM bench_big ORDER BY v, id LIMIT 100"),
    "all-rows": ("SELECT id, v, note FROM bench_big", "SELECT id, v, note FROM bench_big"),
    "half-rows": ("SELECT id, v, note FROM bench_big WHERE id % 2 = 0",
                  "SELECT id, v, note FROM bench_big WHERE id % 2 = 0"),
}


# ------------------------------------------------------------------ worker --
def worker_main(dsn: str) -> int:
    """One client connection. Reads statements (JSON lines) on stdin, runs
    each in chunked-rows mode and answers a JSON line: monotonic start and
    end, rows, the first value, CPU seconds this process spent, error."""
    import psycopg
    from psycopg import pq

    conn = pq.PGconn.connect(dsn.encode())
    if conn.status != pq.ConnStatus.OK:
        print(json.dumps({"error": conn.error_message.decode(errors="replace")}), flush=True)
        return 1
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        sql = json.loads(line)["sql"]
        cpu0 = time.process_time()
        t0 = time.monotonic()
        conn.send_query(sql.encode())
        try:
            conn.set_chunked_rows_mode(10000)
        except (AttributeError, psycopg.NotSupportedError):  # libpq < 17
            conn.set_single_row_mode()
        rows, first, error = 0, None, None
        while (res := conn.get_result()) is not None:
            if res.status in (pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.TUPLES_OK,
                              pq.ExecStatus.SINGLE_TUPLE):
                if first is None and res.ntuples:
                    v = res.get_value(0, 0)
                    first = v.decode() if v is not None else None
                rows += res.ntuples
            elif res.status == pq.ExecStatus.FATAL_ERROR:
                error = res.error_message.decode(errors="replace").strip()
        t1 = time.monotonic()
        print(json.dumps({"t0": t0, "t1": t1, "rows": rows, "first": first,
                          "cpu": time.process_time() - cpu0, "error": error}), flush=True)
    return 0


class Client:
    """A worker process holding one connection."""

    def __init__(self, dsn: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", dsn],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline() or '{"error": "worker exited"}')
        if "error" in ready:
            raise RuntimeError(f"client could not connect: {ready['error']}")

    def send(self, sql: str) -> None:
        self.proc.stdin.write(json.dumps({"sql": sql}) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict:
        out = json.loads(self.proc.stdout.readline())
        if out.get("error"):
            raise RuntimeError(f"statement failed: {out['error']}")
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


# --------------------------------------------------------------- set-up --
def tcp_dsn(port: int, db: str = APP_DB) -> str:
    return conninfo(host="127.0.0.1", port=port, dbname=db, user=APP_USER, password=APP_PASSWORD,
                    sslmode="disable", connect_timeout=10)


def in_parallel(*fns) -> None:
    errors = []

    def run(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(f,)) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def shard_rows(server, shard: int, shards: int, table: str, key_type: str, total: int,
               columns: str, db: str = APP_DB) -> None:
    """Fills `table` on one server, directly, with the keys 1..total that
    PostgreSQL's hash partitioning (what the router places by) puts on
    `shard` of `shards` (all of them when shards = 1)."""
    with server.connect(db) as conn:
        where = ""
        if shards > 1:
            conn.execute(f"CREATE TEMP TABLE placement (k {key_type}) PARTITION BY HASH (k)")
            where = (f"WHERE satisfies_hash_partition('placement'::regclass, {shards}, {shard}, "
                     f"k::{key_type})")
        conn.execute(f"INSERT INTO {table} SELECT {columns} FROM generate_series(1::{key_type}, {total}) k {where}")
        conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute(f"GRANT ALL ON {table} TO {APP_USER}")


ACCOUNT_COLS = "k, 0, ''"
BIG_COLS = "k, ((k::bigint * 7919) % 1000003)::int, substr(md5(k::text), 1, 12)"
CREATE = {
    "bench_accounts": "CREATE TABLE bench_accounts (aid int PRIMARY KEY, abalance int NOT NULL, "
                      "filler char(84))",
    "bench_big": "CREATE TABLE bench_big (id bigint NOT NULL, v int NOT NULL, note text)",
    "bench_big5": "CREATE TABLE bench_big5 (id bigint NOT NULL, v int NOT NULL, note text)",
}


def load(servers, args) -> dict:
    """Loads every table directly (much faster than through any router).
    Returns the rows per shard of the big tables."""
    s0 = servers[0]
    with s0.connect("postgres") as conn:
        conn.execute(f"CREATE DATABASE {WHOLE_DB} OWNER {APP_USER}")
    for s in servers:
        with s.connect(APP_DB) as conn:
            for name in ("bench_accounts", "bench_big", "bench_big5"):
                conn.execute(CREATE[name])
    with s0.connect(WHOLE_DB) as conn:
        conn.execute(CREATE["bench_accounts"])
        conn.execute(CREATE["bench_big5"])
    n = len(servers)
    jobs = []
    for i, s in enumerate(servers):
        jobs.append(lambda i=i, s=s: (
            shard_rows(s, i, n, "bench_accounts", "int", args.accounts, ACCOUNT_COLS),
            not args.skip_fanout and shard_rows(s, i, n, "bench_big", "bigint",
                                                args.rows_per_shard * n, BIG_COLS),
            not args.skip_rss and shard_rows(s, i, n, "bench_big5", "bigint", args.rss_rows,
                                             BIG_COLS)))
    jobs.append(lambda: (
        shard_rows(s0, 0, 1, "bench_accounts", "int", args.accounts, ACCOUNT_COLS, WHOLE_DB),
        not args.skip_rss and shard_rows(s0, 0, 1, "bench_big5", "bigint", args.rss_rows,
                                         BIG_COLS, WHOLE_DB)))
    in_parallel(*jobs)
    counts = {}
    for table in ("bench_accounts", "bench_big", "bench_big5"):
        counts[table] = [int(s.scalar(f"SELECT count(*) FROM {table}")) for s in servers]
    for s in servers:
        with s.connect("postgres") as conn:
            conn.execute("CHECKPOINT")
    return counts


def routers(workdir: Path, servers, pool_size: int, name: str,
            sharded_pool_size: int | None = None) -> tuple[PgRouter, PgRouter]:
    """The 2-shard router and the unsharded one (shard 0's server, the
    whole copy), configured alike otherwise (`sharded_pool_size`: another
    pool size per shard for the sharded one)."""
    users = [{"name": APP_USER, "database": APP_DB, "password": APP_PASSWORD, "auth": "scram"}]
    sharded = PgRouter(workdir / f"{name}-sharded",
                       [{"name": APP_DB, "host": "127.0.0.1", "port": s.port,
                         "database_name": APP_DB, "role": "primary", "shard": i}
                        for i, s in enumerate(servers)],
                       users, sharded_pool_size or pool_size,
                       sections={"sharded_tables": SHARDED_TABLES})
    unsharded = PgRouter(workdir / f"{name}-unsharded",
                         [{"name": APP_DB, "host": "127.0.0.1", "port": servers[0].port,
                           "database_name": WHOLE_DB, "role": "primary"}],
                         users, pool_size)
    sharded.start()
    unsharded.start()
    return sharded, unsharded


# --------------------------------------------------------------- (a) --
def pgbench_point(router: PgRouter, script: Path, mode: str, seconds: int, args) -> tuple[str, str]:
    cmd = [pg_tool("pgbench"), "-n", "-c", str(args.clients), "-j", str(args.jobs), "-T",
           str(seconds), "-M", mode, "-f", str(script), "-h", "127.0.0.1", "-p", str(router.port),
           "-U", APP_USER, APP_DB]
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    proc = subprocess.run(["timeout", "-k", "5", str(seconds + 30), *cmd], env=env,
                          capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        text += f"\n! pgbench exit {proc.returncode}"
    return text, "pgbench " + " ".join(shlex.quote(c) for c in cmd[1:])


def point_benchmark(servers, targets: dict, workdir: Path, args) -> list[dict]:
    scripts = {}
    for kind, text in POINT_SCRIPTS.items():
        scripts[kind] = workdir / f"point-{kind}.sql"
        scripts[kind].write_text(text.format(n=args.accounts))
    workloads = [w for w in args.point_workloads.split(",") if w]
    order = list(targets)
    runs = []
    for rnd in range(args.rounds):
        for wi, w in enumerate(workloads):
            kind, mode = POINT_WORKLOADS[w]
            shift = (rnd + wi) % len(order)
            for t in order[shift:] + order[:shift]:
                router = targets[t]
                for s in servers:
                    with s.connect(APP_DB) as conn:
                        conn.execute("CHECKPOINT")
                if args.warmup:
                    pgbench_point(router, scripts[kind], mode, args.warmup, args)
                cpu0 = proc_cpu_seconds(router.pid())
                text, cmd = pgbench_point(router, scripts[kind], mode, args.duration, args)
                cpu1 = proc_cpu_seconds(router.pid())
                tps, processed, failed = parse_pgbench(text)
                note = ""
                if "! pgbench exit" in text:
                    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
                    note = text.rsplit("! ", 1)[1] + (" " + lines[0][:120] if lines else "")
                run = {"part": "a", "workload": w, "target": t, "round": rnd, "tps": tps,
                       "processed": processed, "failed": failed,
                       "cpu_us": (cpu1 - cpu0) / processed * 1e6 if processed else None,
                       "note": note, "cmd": cmd}
                runs.append(run)
                log(f"(a) round {rnd + 1} {w:<15} {t:<10} tps {tps:8.0f}  cpu/txn "
                    f"{fmt(run['cpu_us'], '.1f'):>6} µs  failed {failed}" + (f"  ! {note}" if note else ""))
    return runs


def point_report(runs: list[dict], args) -> list[str]:
    out = ["", "(a) point reads/writes by key: 2-shard config vs unsharded config "
           f"(pgbench -c {args.clients} -j {args.jobs}, pool per server: unsharded "
           f"{args.pool_size}, sharded {args.sharded_pool_size or args.pool_size}, "
           f"{args.rounds} rounds × {args.duration} s, medians)",
           f"{'workload':<15} {'target':<10} {'tps':>8} {'cpu µs/txn':>11} {'failed':>7}"]
    workloads = [w for w in args.point_workloads.split(",") if w]
    for w in workloads:
        for t in ("sharded", "unsharded"):
            rs = [r for r in runs if r["workload"] == w and r["target"] == t]
            notes = "; ".join(sorted({r["note"] for r in rs if r["note"]}))
            out.append(f"{w:<15} {t:<10} {fmt(med([r['tps'] for r in rs])):>8} "
                       f"{fmt(med([r['cpu_us'] for r in rs]), '.1f'):>11} "
                       f"{sum(r['failed'] for r in rs):>7}" + (f"  ! {notes[:100]}" if notes else ""))
    out.append("")
    out.append(f"{'workload':<15} {'sharded ÷ unsharded':<20} {'cpu/txn':>7}  {'per round':<22} "
               f"{'tps':>5}  {'per round':<22} bar cpu ≤ 1.10")
    for w in workloads:
        cr, tr = [], []
        for rnd in range(args.rounds):
            a = next((r for r in runs if r["workload"] == w and r["target"] == "sharded"
                      and r["round"] == rnd), None)
            b = next((r for r in runs if r["workload"] == w and r["target"] == "unsharded"
                      and r["round"] == rnd), None)
            if a and b and a["cpu_us"] and b["cpu_us"]:
                cr.append(a["cpu_us"] / b["cpu_us"])
            if a and b and b["tps"]:
                tr.append(a["tps"] / b["tps"])
        m = med(cr)
        out.append(f"{w:<15} {'':<20} {fmt(m, '.2f'):>7}  {' '.join(fmt(x, '.2f') for x in cr):<22} "
                   f"{fmt(med(tr), '.2f'):>5}  {' '.join(fmt(x, '.2f') for x in tr):<22} "
                   + ("pass" if m is not None and m <= 1.10 else "FAIL"))
    seen = set()
    for r in runs:
        if (r["workload"], r["target"]) not in seen:
            seen.add((r["workload"], r["target"]))
            out.append(f"  [{r['workload']} / {r['target']}] PGPASSWORD={APP_PASSWORD} {r['cmd']}")
    return out


# --------------------------------------------------------------- (b) --
def fanout_benchmark(servers, sharded: PgRouter, args) -> list[dict]:
    via = Client(tcp_dsn(sharded.port))
    direct = [Client(tcp_dsn(s.port)) for s in servers]
    queries = [q for q in args.fanout_queries.split(",") if q]
    runs = []

    def through_router(sql):
        cpu0 = proc_cpu_seconds(sharded.pid())
        via.send(sql)
        a = via.answer()
        return {"wall": a["t1"] - a["t0"], "rows": a["rows"], "first": a["first"],
                "client_cpu": a["cpu"], "router_cpu": proc_cpu_seconds(sharded.pid()) - cpu0}

    def directly(sql):
        for c in direct:
            c.send(sql)
        answers = [c.answer() for c in direct]
        return {"wall": max(a["t1"] for a in answers) - min(a["t0"] for a in answers),
                "rows": sum(a["rows"] for a in answers),
                "first": [a["first"] for a in answers],
                "client_cpu": sum(a["cpu"] for a in answers)}

    try:
        for q in queries:  # warm-up: caches and plans, both sides
            through_router(FANOUT_QUERIES[q][0])
            directly(FANOUT_QUERIES[q][1])
        for rnd in range(args.fanout_rounds):
            for qi, q in enumerate(queries):
                via_sql, part_sql = FANOUT_QUERIES[q]
                sides = [("router", lambda: through_router(via_sql)),
                         ("direct", lambda: directly(part_sql))]
                if (rnd + qi) % 2:
                    sides.reverse()
                got = {}
                for side, fn in sides:
                    got[side] = fn()
                    runs.append({"part": "b", "query": q, "side": side, "round": rnd, **got[side]})
                r, d = got["router"], got["direct"]
                if q == "count":
                    ok = int(r["first"]) == sum(int(x) for x in d["first"])
                elif q == "order-limit":
                    ok = r["rows"] == 100
                else:
                    ok = r["rows"] == d["rows"]
                if not ok:
                    raise RuntimeError(f"{q}: the router's answer differs from the shards' "
                                       f"({r['rows']} rows, first {r['first']} vs {d['rows']}, {d['first']})")
                log(f"(b) round {rnd + 1} {q:<12} router {r['wall'] * 1000:8.1f} ms  direct "
                    f"{d['wall'] * 1000:8.1f} ms  ratio {r['wall'] / d['wall']:.2f}  rows {r['rows']}")
    finally:
        via.close()
        for c in direct:
            c.close()
    return runs


def fanout_report(runs: list[dict], counts: dict, args) -> list[str]:
    out = ["", f"(b) keyless statements over 2 shards ({' + '.join(map(str, counts['bench_big']))} "
           f"rows): through the router vs each shard's part directly, both shards at once "
           f"({args.fanout_rounds} rounds, medians; cpu = seconds of CPU)",
           f"{'query':<12} {'rows out':>9} {'router ms':>10} {'direct ms':>10} {'ratio':>6}  "
           f"{'per round':<32} {'router cpu':>10} {'client cpu r/d':>15}  bar ≤ 1.10"]
    for q in [q for q in args.fanout_queries.split(",") if q]:
        rr = {r["round"]: r for r in runs if r["query"] == q and r["side"] == "router"}
        dd = {r["round"]: r for r in runs if r["query"] == q and r["side"] == "direct"}
        ratios = [rr[i]["wall"] / dd[i]["wall"] for i in sorted(rr) if i in dd]
        m = med(ratios)
        out.append(f"{q:<12} {next(iter(rr.values()))['rows']:>9} "
                   f"{med([r['wall'] for r in rr.values()]) * 1000:>10.1f} "
                   f"{med([r['wall'] for r in dd.values()]) * 1000:>10.1f} {fmt(m, '.2f'):>6}  "
                   f"{' '.join(fmt(x, '.2f') for x in ratios):<32} "
                   f"{med([r['router_cpu'] for r in rr.values()]):>10.3f} "
                   f"{med([r['client_cpu'] for r in rr.values()]):>7.2f}/"
                   f"{med([r['client_cpu'] for r in dd.values()]):<7.2f}  "
                   + ("pass" if m is not None and m <= 1.10 else "FAIL"))
    out.append("  statements: " + "; ".join(f"{q}: {FANOUT_QUERIES[q][0]}" for q in FANOUT_QUERIES))
    return out


# --------------------------------------------------------------- (c) --
def vm_status(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def rss_while_streaming(router: PgRouter, sql: str) -> dict:
    client = Client(tcp_dsn(router.port))
    try:
        client.send("SELECT 1")
        client.answer()
        before, _ = vm_status(router.pid())
        peak = [before]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.02):
                peak[0] = max(peak[0], vm_status(router.pid())[0])
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        client.send(sql)
        a = client.answer()
        stop.set()
        sampler.join()
        after, hwm = vm_status(router.pid())
    finally:
        client.close()
    return {"rows": a["rows"], "seconds": a["t1"] - a["t0"], "rss_before": before,
            "rss_peak_sampled": peak[0], "rss_after": after, "vm_hwm": hwm}


def rss_benchmark(servers, workdir: Path, args) -> list[dict]:
    # Fresh routers: VmHWM is the peak since the process started.
    sharded, unsharded = routers(workdir, servers, args.pool_size, "rss")
    sql = "SELECT id, v, note FROM bench_big5 ORDER BY v"
    try:
        out = []
        for name, router in (("sharded", sharded), ("unsharded", unsharded)):
            r = rss_while_streaming(router, sql)
            r.update({"part": "c", "target": name, "sql": sql})
            out.append(r)
            log(f"(c) {name:<9} {r['rows']} rows in {r['seconds']:.1f} s: RSS before "
                f"{r['rss_before'] / MIB:.1f} MiB, peak sampled {r['rss_peak_sampled'] / MIB:.1f} MiB, "
                f"VmHWM {r['vm_hwm'] / MIB:.1f} MiB")
        return out
    finally:
        sharded.stop()
        unsharded.stop()


def rss_report(runs: list[dict], counts: dict) -> list[str]:
    out = ["", f"(c) router memory while one client streams `{runs[0]['sql']}` "
           f"(sharded: {' + '.join(map(str, counts['bench_big5']))} rows on 2 shards; unsharded: "
           f"the same rows on one server), a fresh router each",
           f"{'config':<10} {'rows':>9} {'seconds':>8} {'RSS before':>11} {'peak RSS':>9} "
           f"{'VmHWM':>9}  bar < 64 MiB"]
    for r in runs:
        out.append(f"{r['target']:<10} {r['rows']:>9} {r['seconds']:>8.1f} "
                   f"{r['rss_before'] / MIB:>8.1f} MiB {r['rss_peak_sampled'] / MIB:>5.1f} MiB "
                   f"{r['vm_hwm'] / MIB:>5.1f} MiB  "
                   + ("pass" if r["vm_hwm"] < 64 * MIB else "FAIL"))
    return out


# -------------------------------------------------------------------- main --
def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="(a) interleaved rounds")
    ap.add_argument("--duration", type=int, default=10, help="(a) seconds per measured pgbench run")
    ap.add_argument("--warmup", type=int, default=2, help="(a) seconds of unrecorded warm-up per run")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--pool-size", type=int, default=20, help="pool size per server")
    ap.add_argument("--sharded-pool-size", type=int, default=None,
                    help="(a, b) the sharded router's pool size per shard (default --pool-size; "
                         "half of it gives both routers the same number of server connections)")
    ap.add_argument("--accounts", type=int, default=100_000, help="(a) rows of bench_accounts")
    ap.add_argument("--point-workloads", default="read-simple,read-extended,read-prepared,write-extended",
                    help=f"(a) comma list from {','.join(POINT_WORKLOADS)}")
    ap.add_argument("--rows-per-shard", type=int, default=1_000_000, help="(b) rows of bench_big per shard")
    ap.add_argument("--fanout-rounds", type=int, default=5, help="(b) interleaved rounds")
    ap.add_argument("--fanout-queries", default=",".join(FANOUT_QUERIES),
                    help=f"(b) comma list from {','.join(FANOUT_QUERIES)}")
    ap.add_argument("--rss-rows", type=int, default=5_000_000, help="(c) rows streamed")
    ap.add_argument("--skip-point", action="store_true")
    ap.add_argument("--skip-fanout", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--shared-buffers", default="512MB")
    ap.add_argument("--json", help="also write every measurement as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the clusters' directories")
    args = ap.parse_args()
    for w in args.point_workloads.split(","):
        if w and w not in POINT_WORKLOADS:
            ap.error(f"unknown workload {w}")
    for q in args.fanout_queries.split(","):
        if q and q not in FANOUT_QUERIES:
            ap.error(f"unknown query {q}")

    log("starting 2 PostgreSQL primaries (the shards)")
    clusters = [PgCluster(with_replica=False, shared_buffers=args.shared_buffers,
                          max_connections=300, prefix=f"pgrouter-shbench{i}-") for i in range(2)]
    report = [f"pgrouter binary: {binary_info()}"]
    results: list[dict] = []
    try:
        in_parallel(*[c.start for c in clusters])
        servers = [c.primary for c in clusters]
        started = time.monotonic()
        counts = load(servers, args)
        log(f"loaded in {time.monotonic() - started:.0f} s: rows per shard {counts}")
        workdir = clusters[0].tmpdir / "bench"
        workdir.mkdir()
        if not args.skip_point or not args.skip_fanout:
            sharded, unsharded = routers(workdir, servers, args.pool_size, "main",
                                         args.sharded_pool_size)
            try:
                if not args.skip_point:
                    runs = point_benchmark(servers, {"sharded": sharded, "unsharded": unsharded},
                                           workdir, args)
                    results += runs
                    report += point_report(runs, args)
                if not args.skip_fanout:
                    runs = fanout_benchmark(servers, sharded, args)
                    results += runs
                    report += fanout_report(runs, counts, args)
            finally:
                sharded.stop()
                unsharded.stop()
        if not args.skip_rss:
            runs = rss_benchmark(servers, workdir, args)
            results += runs
            report += rss_report(runs, counts)
        print("\n".join(report), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
            log(f"wrote {args.json}")
    finally:
        for c in clusters:
            c.teardown(keep_dir=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
