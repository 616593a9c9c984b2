"""Login cost of `[auth_query]` and `[jit]` (issue 18's benchmark bar).

    .venv/bin/python bench/login_checks.py [--rounds 3] [--duration 10] [--clients 8]

1. Starts a PostgreSQL 15 primary (the integration harness's
   LoginChecksCluster, with the README's lookup function) and runs
   `pgbench -i -s 1` on it; a role `bench_aq` exists only in PostgreSQL.
2. Starts pgrouter ($PGROUTER_BIN, else target/release/pgrouter) with
   `[auth_query]` and `[jit]` (a mock API on loopback), server connections
   over TCP with SCRAM.
3. Login rate: `pgbench -n -C -S -c N -j 2 -T D` (a new connection, i.e. a
   login, per transaction) as `app` (users.toml, SCRAM) and as `bench_aq`
   (auth_query, SCRAM pass-through), alternating, `--rounds` times; prints
   logins/s of each and the ratio auth_query ÷ users.toml.
4. JIT: median time of a whole login (psycopg connect + SELECT 1) with a
   token vs. with a password on the same router (cleartext for both, since
   `[jit]` asks for it), and the API's own latency from the router's
   `pgrouter_jit_check_duration_seconds`.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import psycopg  # noqa: E402

from harness.jit_api import JitApi  # noqa: E402
from harness.login_checks import LOOKUP_QUERY, LoginChecksCluster, lookup_user_entry  # noqa: E402
from harness.ops import admin_general, scrape  # noqa: E402
from harness.pg import APP_DB, pg_tool  # noqa: E402
from harness.router import RouterFactory, app_user  # noqa: E402

AQ_USER, AQ_PASSWORD = "bench_aq", "bench-aq-secret"


def pgbench(router, user: str, password: str, clients: int, duration: int) -> float:
    env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="disable")
    cmd = [pg_tool("pgbench"), "-n", "-C", "-S", "-c", str(clients), "-j", "2",
           "-T", str(duration), "-h", "127.0.0.1", "-p", str(router.port), "-U", user, APP_DB]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"tps = ([0-9.]+)", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    return float(m.group(1))


def login_ms(router, user: str, password: str, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with psycopg.connect(router.dsn(user=user, password=password, sslmode="disable")) as c:
            c.execute("SELECT 1")
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jit-logins", type=int, default=200)
    args = ap.parse_args()

    cluster = LoginChecksCluster(base_dir=tempfile.gettempdir(), prefix="pgrouter-bench-login-")
    api = JitApi().start()
    factory = None
    try:
        cluster.start()
        p = cluster.primary
        subprocess.run([pg_tool("pgbench"), "-i", "-s", "1", "-q", "-h", str(cluster.sockdir),
                        "-p", str(p.port), "-U", "app", APP_DB], check=True, capture_output=True,
                       env=dict(os.environ, PGPASSWORD="app-secret"))
        with p.connect("postgres") as c:
            c.execute(f"CREATE ROLE {AQ_USER} LOGIN PASSWORD '{AQ_PASSWORD}'")
        with p.connect(APP_DB) as c:
            c.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {AQ_USER}")
        base = cluster.tmpdir / "routers"
        base.mkdir()
        factory = RouterFactory(cluster, base)
        router = factory.start(
            general=admin_general(metrics=True, default_pool_size=20, server_tls="disable"),
            users=[app_user(), lookup_user_entry()],
            auth_query={"user": "pgrouter_auth", "query": LOOKUP_QUERY, "cache_ttl_s": 60})
        print(f"pgrouter: {router.binary}")
        print(f"login rate: pgbench -n -C -S -c {args.clients} -j 2 -T {args.duration}, "
              f"{args.rounds} rounds, logins/s")
        rates = {"users.toml": [], "auth_query": []}
        for rnd in range(args.rounds):
            order = [("users.toml", "app", "app-secret"), ("auth_query", AQ_USER, AQ_PASSWORD)]
            if rnd % 2:
                order.reverse()
            for label, user, pw in order:
                pgbench(router, user, pw, args.clients, 2)  # warm-up
                rates[label].append(pgbench(router, user, pw, args.clients, args.duration))
        for label, vals in rates.items():
            print(f"  {label:<11} median {statistics.median(vals):8.1f}   runs {vals}")
        ratio = statistics.median(rates["auth_query"]) / statistics.median(rates["users.toml"])
        print(f"  auth_query / users.toml = {ratio:.3f}")
        factory.finish()

        # JIT: token login vs password login on one router with [jit].
        factory = RouterFactory(cluster, base)
        jit_router = factory.start(
            general=admin_general(metrics=True, default_pool_size=20, server_tls="disable"),
            users=[app_user(), lookup_user_entry()],
            auth_query={"user": "pgrouter_auth", "query": LOOKUP_QUERY},
            jit={"api_url": api.url, "timeout_ms": 2000})
        token = f"sbp_{uuid.uuid4().hex}"
        api.grant(token, AQ_USER)
        # The server checks this role with SCRAM: make the token its password.
        with p.connect("postgres") as c:
            c.execute(f"ALTER ROLE {AQ_USER} PASSWORD '{token}'")
        login_ms(jit_router, AQ_USER, token, 10)
        login_ms(jit_router, "app", "app-secret", 10)
        tok = login_ms(jit_router, AQ_USER, token, args.jit_logins)
        pw = login_ms(jit_router, "app", "app-secret", args.jit_logins)
        m = scrape(jit_router)
        n = m.value("pgrouter_jit_check_duration_seconds_count")
        api_ms = m.value("pgrouter_jit_check_duration_seconds_sum") / n * 1000 if n else 0.0
        print(f"JIT ({args.jit_logins} logins each, psycopg connect + SELECT 1, median ms):")
        print(f"  password login {pw:.2f} ms, token login {tok:.2f} ms, "
              f"added {tok - pw:.2f} ms; API call mean {api_ms:.2f} ms over {int(n)} calls")
    finally:
        if factory is not None:
            factory.finish()
        api.stop()
        cluster.teardown()


if __name__ == "__main__":
    main()
