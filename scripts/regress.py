#!/usr/bin/env python3
"""PostgreSQL's own regression suite, run directly and through pgrouter.

The transparency check (SPEC §5): `parallel_schedule` of the PostgreSQL
source matching the installed major version, run against a fresh cluster
directly, then through pgrouter in session mode and in transaction mode;
prints every test whose result differs from the direct run and exits 1 when
a difference is not in the list of known, documented ones (README
"Transparency").

    .venv/bin/python scripts/regress.py [--modes session,transaction] [--keep]

Needs the PostgreSQL source (fetched with `apt-get source` into
$PGROUTER_CACHE, default ~/.cache/pgrouter) and the server headers
(postgresql-server-dev-15) to build regress.so, refint.so and autoinc.so.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "integration"))

from harness.pg import PgCluster  # noqa: E402
from harness.router import RouterFactory  # noqa: E402

PG_MAJOR = "15"
PGBIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
PG_REGRESS = Path(f"/usr/lib/postgresql/{PG_MAJOR}/lib/pgxs/src/test/regress/pg_regress")
SU, SU_PASSWORD = "postgres", "regress-su"

# Tests whose result through the router differs from a direct run by the
# nature of pooling, each with its reason (also in README "Transparency").
REUSED_BACKEND = "a pooled server connection is a reused backend"
KNOWN = {
    "session": {
        "stats": f"{REUSED_BACKEND}: its statistics counters include earlier clients' work",
        "guc": f"{REUSED_BACKEND}: plpgsql is already loaded, so the test's custom "
               "plpgsql.* setting is refused at once instead of removed by LOAD",
        "temp": f"{REUSED_BACKEND}: its temporary schema already exists, so "
                "current_schema() creates none and PREPARE TRANSACTION is allowed",
    },
    "transaction": {
        "stats": f"{REUSED_BACKEND}: its statistics counters include earlier clients' work",
        "guc": f"{REUSED_BACKEND}: plpgsql already loaded (see session mode)",
        "temp": f"{REUSED_BACKEND}: temporary schema already exists (see session mode)",
        "prepare": "SQL PREPAREd statements are prepared on each server connection "
                   "when first EXECUTEd there, so pg_prepared_statements shows those "
                   "of the connection serving the query",
        "partition_prune": "a SQL PREPAREd statement EXECUTEd from inside a PL/pgSQL "
                           "function (dynamic SQL) is invisible to the router, which prepares "
                           "such statements on a connection when it sees their EXECUTE",
    },
}


def log(msg: str) -> None:
    print(f"[regress] {msg}", file=sys.stderr, flush=True)


DEB_SRC = Path("/etc/apt/sources.list.d/pgrouter-deb-src.sources")


def enable_deb_src() -> None:
    """Debian's source packages: the same mirrors as the binary ones, with
    Types: deb-src (a fresh Debian 12 machine has none configured)."""
    if DEB_SRC.exists():
        return
    binary = Path("/etc/apt/sources.list.d/debian.sources")
    text = binary.read_text() if binary.exists() else (
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    DEB_SRC.write_text(re.sub(r"^Types:\s*deb\s*$", "Types: deb-src", text, flags=re.M))
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)


def source_dir(cache: Path) -> Path:
    """The PostgreSQL source tree of the version whose source Debian has."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"postgresql-{PG_MAJOR}.*/src/test/regress/parallel_schedule"))
    if found:
        return found[-1].parents[3]
    versions = subprocess.run(["apt-cache", "showsrc", f"postgresql-{PG_MAJOR}"], capture_output=True,
                              text=True).stdout
    if "Version:" not in versions:
        enable_deb_src()
        versions = subprocess.run(["apt-cache", "showsrc", f"postgresql-{PG_MAJOR}"],
                                  capture_output=True, text=True).stdout
    for version in sorted(set(re.findall(r"^Version: (\S+)", versions, re.M)), reverse=True):
        r = subprocess.run(["apt-get", "source", "-q", "--download-only",
                            f"postgresql-{PG_MAJOR}={version}"], cwd=cache, capture_output=True, text=True)
        if r.returncode == 0:
            break
        log(f"source {version} not available: {r.stderr.strip().splitlines()[-1:]}")
    tarballs = sorted(cache.glob(f"postgresql-{PG_MAJOR}_*.orig.tar.*"))
    if not tarballs:
        raise SystemExit("regress: no PostgreSQL source (is a deb-src line configured?)")
    subprocess.run(["tar", "xf", str(tarballs[-1])], cwd=cache, check=True)
    return source_dir(cache)


def build_libs(src: Path, out: Path) -> None:
    """regress.so and contrib/spi's refint.so and autoinc.so, built against
    the installed server's headers."""
    out.mkdir(parents=True, exist_ok=True)
    inc = subprocess.run(["pg_config", "--includedir-server"], capture_output=True, text=True,
                         check=True).stdout.strip()
    for c in ["src/test/regress/regress.c", "contrib/spi/refint.c", "contrib/spi/autoinc.c"]:
        so = out / (Path(c).stem + ".so")
        if not so.exists():
            subprocess.run(["gcc", "-O1", "-fPIC", "-shared", f"-I{inc}", "-o", str(so), str(src / c)],
                           check=True)
    os.chmod(out, 0o755)


def stage(src: Path, libs: Path, work: Path) -> tuple[Path, Path]:
    """Copies the suite and the libraries where the `postgres` OS user, which
    runs pg_regress (server-side COPY writes files it must own), can read
    them. Returns (suite dir, library dir)."""
    suite, lib = work / "suite", work / "lib"
    shutil.copytree(src / "src/test/regress", suite, dirs_exist_ok=True)
    shutil.copytree(libs, lib, dirs_exist_ok=True)
    subprocess.run(["chown", "-R", "postgres:postgres", str(work)], check=True)
    return suite, lib


def clean_server(cluster) -> None:
    """What a run may leave behind that blocks the next one's DROP DATABASE:
    prepared transactions (a test through the router may prepare one)."""
    for (gid, db) in cluster.primary.sql("SELECT gid, database FROM pg_prepared_xacts", db="postgres"):
        cluster.primary.sql(f"ROLLBACK PREPARED '{gid}'", db=db)


def run_suite(regress: Path, libs: Path, port: int, outdir: Path, env: dict) -> dict[str, str]:
    """Runs parallel_schedule against host:port; returns {test: "ok" | "FAILED" | ...}."""
    outdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "postgres:postgres", str(outdir)], check=True)
    cmd = ["runuser", "-u", "postgres", "--", "env", f"PGPASSWORD={env['PGPASSWORD']}",
           f"PGTZ={env['PGTZ']}", f"PGDATESTYLE={env['PGDATESTYLE']}", str(PG_REGRESS), f"--inputdir={regress}", f"--outputdir={outdir}", f"--bindir={PGBIN}",
           f"--dlpath={libs}", f"--schedule={regress / 'parallel_schedule'}", "--host=127.0.0.1",
           f"--port={port}", f"--user={SU}", "--max-concurrent-tests=20"]
    r = subprocess.run(cmd, cwd=outdir, capture_output=True, text=True, timeout=1800)
    (outdir / "pg_regress.out").write_text(r.stdout + r.stderr)
    results = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*(?:test\s+)?([\w.]+)\s+\.\.\.\s+(ok|FAILED|failed \(ignored\))", line)
        if m:
            results[m.group(1)] = m.group(2)
    return results


def diff_of(diffs: Path, test: str, max_lines: int = 60) -> str:
    """The start of one test's part of pg_regress's regression.diffs."""
    try:
        text = diffs.read_text(errors="replace")
    except OSError:
        return "(no regression.diffs)"
    parts = re.split(r"(?m)^(?=diff )", text)
    mine = [p for p in parts if p.startswith("diff ") and f"/{test}.out" in p.splitlines()[0]]
    lines = "".join(mine).splitlines()[:max_lines]
    return "\n".join("    " + line for line in lines)


def run_mode(factory, cluster, suite, lib, work, env, mode, direct, suffix) -> set[str]:
    """One run through a router in `mode`; prints every difference from the
    direct run and returns the tests whose difference is not known."""
    dbs = [{"name": db, "host": "127.0.0.1", "port": cluster.primary.port,
            "database_name": db, "role": "primary"} for db in ("regression", "postgres")]
    users = [{"name": SU, "database": db, "password": SU_PASSWORD, "auth": "scram"}
             for db in ("regression", "postgres")]
    router = factory.start(general={"pool_mode": mode, "default_pool_size": 25,
                                    "checkout_timeout_ms": 60000},
                           users=users, databases=dbs)
    log(f"{mode} mode through pgrouter on port {router.port}")
    clean_server(cluster)
    outdir = work / f"{mode}{suffix}"
    got = run_suite(suite, lib, router.port, outdir, env)
    router.stop()
    differ = sorted(t for t in direct if got.get(t) != direct[t])
    ok = sum(1 for v in got.values() if v == "ok")
    log(f"{mode}: {ok}/{len(got)} ok; {len(differ)} differ from the direct run")
    unknown = set()
    for t in differ:
        known = KNOWN.get(mode, {}).get(t)
        note = f"known: {known}" if known else "NOT KNOWN"
        print(f"{mode}: {t}: {direct[t]} directly, {got.get(t)} through pgrouter ({note})")
        if known is None:
            unknown.add(t)
            print(diff_of(outdir / "regression.diffs", t))
    return unknown


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="session,transaction")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    cache = Path(os.environ.get("PGROUTER_CACHE", Path.home() / ".cache/pgrouter"))
    src = source_dir(cache / "postgresql-source")
    libs = cache / f"regress-lib-{src.name}"
    build_libs(src, libs)
    work = Path(tempfile.mkdtemp(prefix="pgrouter-regress-"))
    os.chmod(work, 0o755)
    suite, lib = stage(src, libs, work)
    env = dict(os.environ, PGPASSWORD=SU_PASSWORD, PGTZ="PST8PDT", PGDATESTYLE="Postgres, MDY")
    env.pop("PGDATABASE", None)
    failures = 0
    cluster = PgCluster(with_replica=False, max_connections=100, prefix="pgrouter-regress-pg-",
                        extra_conf={"max_prepared_transactions": 20})
    with cluster:
        cluster.primary.sql(f"ALTER ROLE {SU} PASSWORD '{SU_PASSWORD}'", db="postgres")
        log(f"direct run against port {cluster.primary.port}")
        direct = run_suite(suite, lib, cluster.primary.port, work / "direct", env)
        passed = sum(1 for v in direct.values() if v == "ok")
        log(f"direct: {passed}/{len(direct)} ok")
        factory = RouterFactory(cluster, work / "routers")
        try:
            for mode in args.modes.split(","):
                unknown = run_mode(factory, cluster, suite, lib, work, env, mode, direct, "")
                if unknown:
                    # Tests of one parallel group share the pool: a difference
                    # that does not come back in a second run is reported as
                    # flaky; one that does fails the run.
                    log(f"{mode}: {sorted(unknown)} differ; running the {mode} mode again")
                    again = run_mode(factory, cluster, suite, lib, work, env, mode, direct, "-again")
                    for t in sorted(unknown - again):
                        print(f"{mode}: {t}: differed in one run of two (flaky; see the diff above)")
                    failures += len(unknown & again)
        finally:
            factory.finish()
    if args.keep:
        log(f"outputs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
