"""Real PostgreSQL 15 servers for the tests: a primary and a streaming replica.

The servers run as the `postgres` OS user when the tests run as root (PostgreSQL
refuses to run as root), directly otherwise. Everything lives in one temporary
directory: data directories, unix sockets, logs.

Roles created on the primary (and so on the replica):

| role       | password      | server auth (pg_hba, host 127.0.0.1) | stored as |
|------------|---------------|--------------------------------------|-----------|
| app        | app-secret    | scram-sha-256                        | SCRAM     |
| md5user    | md5-secret    | md5                                  | md5       |
| plainuser  | plain-secret  | password (cleartext)                 | SCRAM     |
| trustuser  | (none)        | trust                                | -         |

`app` owns database `app`; the other roles may connect to it and use schema
`public`. The superuser `postgres` connects through the unix socket (trust).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from .util import free_port, tail, wait_until

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
IS_ROOT = os.geteuid() == 0
PG_OS_USER = "postgres"

APP_USER = "app"
APP_PASSWORD = "app-secret"
APP_DB = "app"

ROLES = {
    # name: (password, pg_hba method, password_encryption)
    "md5user": ("md5-secret", "md5", "md5"),
    "plainuser": ("plain-secret", "password", "scram-sha-256"),
    "trustuser": (None, "trust", "scram-sha-256"),
}


def pg_tool(name: str) -> str:
    path = PGBIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            raise FileNotFoundError(f"PostgreSQL tool {name} not found in {PGBIN} or PATH")
        return found
    return str(path)


def as_pg_user(cmd: list[str]) -> list[str]:
    """Prefix a command so that it runs as the postgres OS user when we are root."""
    if IS_ROOT:
        return ["runuser", "-u", PG_OS_USER, "--", *cmd]
    return cmd


def chown_to_pg(path: Path) -> None:
    if IS_ROOT:
        pw = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def run_pg(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 120,
           env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("PGPASSWORD", None)
    full_env.update({"LC_ALL": "C", "LANG": "C"})
    if env:
        full_env.update(env)
    proc = subprocess.run(as_pg_user(cmd), cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def conninfo(**params) -> str:
    """libpq conninfo string from keyword arguments (values quoted as needed)."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        s = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{s}'")
    return " ".join(parts)


@dataclass
class PgServer:
    """One PostgreSQL server (data directory + postmaster)."""

    name: str
    datadir: Path
    port: int
    sockdir: Path
    logfile: Path
    host: str = "127.0.0.1"
    extra_conf: dict = field(default_factory=dict)

    # ------------------------------------------------------------ lifecycle --
    def start(self, timeout: int = 60) -> None:
        # `setsid -w` puts the postmaster in its own session: signals sent to the
        # test runner's process group (Ctrl-C, timeouts) do not reach it, and it
        # does not share the runner's CPU autogroup.
        run_pg(["setsid", "-w", pg_tool("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                "-w", "-t", str(timeout), "start"], cwd=self.datadir.parent, timeout=timeout + 30)

    def stop(self, mode: str = "fast", check: bool = False) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        run_pg([pg_tool("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"],
               cwd=self.datadir.parent, check=check, timeout=90)

    def is_running(self) -> bool:
        proc = run_pg([pg_tool("pg_ctl"), "-D", str(self.datadir), "status"],
                      cwd=self.datadir.parent, check=False, timeout=30)
        return proc.returncode == 0

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        return tail(self.logfile)

    # ---------------------------------------------------------- connecting --
    def dsn(self, user: str = APP_USER, password: str | None = APP_PASSWORD, db: str = APP_DB,
            **extra) -> str:
        """A TCP conninfo for this server (goes through pg_hba host rules)."""
        params = {"connect_timeout": 10, **extra}
        return conninfo(host=self.host, port=self.port, dbname=db, user=user,
                        password=password, **params)

    def superuser_dsn(self, db: str = "postgres") -> str:
        return conninfo(host=str(self.sockdir), port=self.port, dbname=db, user="postgres",
                        connect_timeout=10)

    def connect(self, db: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        """A superuser connection through the unix socket."""
        return psycopg.connect(self.superuser_dsn(db), autocommit=autocommit)

    def sql(self, query: str, params=None, db: str = APP_DB):
        """Run one statement as superuser; return all rows (or None if it returns none)."""
        with self.connect(db) as conn:
            cur = conn.execute(query, params)
            if cur.description is None:
                return None
            return cur.fetchall()

    def scalar(self, query: str, params=None, db: str = APP_DB):
        rows = self.sql(query, params, db=db)
        assert rows, f"no rows from {query!r}"
        return rows[0][0]

    def kill_backend(self, pid: int) -> bool:
        """pg_terminate_backend(pid); True if a backend was signalled."""
        return bool(self.scalar("SELECT pg_terminate_backend(%s)", (pid,), db="postgres"))

    def backends(self, user: str | None = None, db: str | None = None) -> list[dict]:
        """Client backends (pid, user, db, state, query, application_name)."""
        rows = self.sql(
            "SELECT pid, usename, datname, state, query, application_name "
            "FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() "
            "AND (%(u)s::text IS NULL OR usename = %(u)s) AND (%(d)s::text IS NULL OR datname = %(d)s)",
            {"u": user, "d": db}, db="postgres")
        keys = ("pid", "user", "db", "state", "query", "application_name")
        return [dict(zip(keys, r)) for r in rows]

    def pool_backends(self, user: str | None = None, db: str | None = None) -> list[dict]:
        """Client backends except a router's health-check connection (a
        connection whose last statement was the `pg_is_in_recovery()` probe,
        or whose application_name says healthcheck): the server connections
        that pools hand to clients."""
        def is_probe(b):
            return ("pg_is_in_recovery()" in (b["query"] or "") and b["state"] == "idle") or \
                "health" in (b["application_name"] or "").lower()
        return [b for b in self.backends(user, db) if not is_probe(b)]

    def in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()", db="postgres"))

    def psql_env(self, user: str = APP_USER, password: str = APP_PASSWORD) -> dict:
        env = dict(os.environ)
        env.update({"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": user,
                    "PGPASSWORD": password, "PGDATABASE": APP_DB, "PGCONNECT_TIMEOUT": "10"})
        return env


class PgCluster:
    """A primary and (optionally) one streaming replica in a fresh temporary directory."""

    def __init__(self, with_replica: bool = True, shared_buffers: str = "64MB",
                 max_connections: int = 200, extra_conf: dict | None = None,
                 base_dir: str | None = None, prefix: str = "pgrouter-it-"):
        self.with_replica = with_replica
        self.shared_buffers = shared_buffers
        self.max_connections = max_connections
        self.extra_conf = dict(extra_conf or {})
        self.tmpdir = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
        os.chmod(self.tmpdir, 0o755)
        chown_to_pg(self.tmpdir)
        self.sockdir = self.tmpdir / "sock"
        self.sockdir.mkdir()
        chown_to_pg(self.sockdir)
        self.primary = PgServer("primary", self.tmpdir / "primary", free_port(), self.sockdir,
                                self.tmpdir / "primary.log")
        self.replica: PgServer | None = None
        if with_replica:
            self.replica = PgServer("replica", self.tmpdir / "replica", free_port(), self.sockdir,
                                    self.tmpdir / "replica.log")
        self.started = False

    # -------------------------------------------------------------- set-up --
    def _conf(self, port: int) -> str:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.sockdir}'",
            "max_connections": str(self.max_connections),
            "shared_buffers": f"'{self.shared_buffers}'",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "wal_keep_size": "'256MB'",
            "hot_standby": "on",
            "max_prepared_transactions": "20",
            # Throw-away clusters: durability buys nothing here.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "password_encryption": "'scram-sha-256'",
            "logging_collector": "off",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "log_min_messages": "warning",
            "lc_messages": "'C'",
        }
        for k, v in self.extra_conf.items():
            settings[k] = v if isinstance(v, (int, float)) else (
                v if str(v).startswith("'") else f"'{v}'")
        lines = ["", "# --- pgrouter test harness ---"]
        lines += [f"{k} = {v}" for k, v in settings.items()]
        return "\n".join(lines) + "\n"

    def _hba(self) -> str:
        lines = [
            "# pgrouter test harness",
            "local   all          all                     trust",
            "local   replication  all                     trust",
            "host    replication  all      127.0.0.1/32   trust",
        ]
        for role, (_pw, method, _enc) in ROLES.items():
            lines.append(f"host    all          {role:<9}  127.0.0.1/32   {method}")
        lines.append("host    all          all      127.0.0.1/32   scram-sha-256")
        return "\n".join(lines) + "\n"

    def _write_as_pg(self, path: Path, text: str, append: bool = False) -> None:
        mode = "a" if append else "w"
        with open(path, mode) as f:
            f.write(text)
        chown_to_pg(path)

    def start(self) -> "PgCluster":
        try:
            self._start()
        except BaseException:
            self.teardown()
            raise
        return self

    def _start(self) -> None:
        p = self.primary
        run_pg([pg_tool("initdb"), "-D", str(p.datadir), "-U", "postgres", "-E", "UTF8",
                "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256"],
               cwd=self.tmpdir, timeout=180)
        self._write_as_pg(p.datadir / "postgresql.conf", self._conf(p.port), append=True)
        self._write_as_pg(p.datadir / "pg_hba.conf", self._hba())
        p.start()
        self.started = True
        self._create_roles()
        if self.replica is not None:
            r = self.replica
            run_pg([pg_tool("pg_basebackup"), "-D", str(r.datadir), "-R", "-X", "stream",
                    "-c", "fast", "-h", str(self.sockdir), "-p", str(p.port), "-U", "postgres",
                    "--no-sync"], cwd=self.tmpdir, timeout=300)
            # The base backup copied the primary's postgresql.conf; the last `port`
            # line wins.
            self._write_as_pg(r.datadir / "postgresql.conf",
                              f"\n# replica\nport = {r.port}\n", append=True)
            r.start()
            self.wait_streaming()

    def _create_roles(self) -> None:
        p = self.primary
        with p.connect("postgres") as conn:
            conn.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'")
            conn.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")
            for role, (pw, _method, enc) in ROLES.items():
                conn.execute(f"SET password_encryption = '{enc}'")
                if pw is None:
                    conn.execute(f"CREATE ROLE {role} LOGIN")
                else:
                    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{pw}'")
            conn.execute("RESET password_encryption")
        with p.connect(APP_DB) as conn:
            roles = ", ".join(ROLES)
            conn.execute(f"GRANT ALL ON SCHEMA public TO {roles}")
            conn.execute(f"ALTER SCHEMA public OWNER TO {APP_USER}")

    def wait_streaming(self, timeout: float = 60) -> None:
        def streaming():
            return self.primary.scalar(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                db="postgres") >= 1
        try:
            wait_until(streaming, timeout, what="replica streaming")
        except TimeoutError as exc:
            log = self.replica.log() if self.replica else ""
            raise RuntimeError(f"{exc}\nreplica log:\n{log}") from None

    def wait_replayed(self, timeout: float = 30) -> None:
        """Wait until the replica has replayed everything the primary wrote so far."""
        if self.replica is None:
            return
        lsn = self.primary.scalar("SELECT pg_current_wal_lsn()::text", db="postgres")
        wait_until(lambda: self.replica.scalar(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,), db="postgres"),
            timeout, what=f"replica replay of {lsn}")

    # ------------------------------------------------------------ teardown --
    def teardown(self, keep_dir: bool = False) -> None:
        for server in (self.replica, self.primary):
            if server is None:
                continue
            try:
                server.stop(mode="immediate")
            except Exception:  # noqa: BLE001 - make sure nothing keeps running
                pass
            pid = server.postmaster_pid()
            if pid:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        if not keep_dir:
            # The postmaster may take a moment to release files after SIGQUIT.
            for _ in range(20):
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                if not self.tmpdir.exists():
                    break
                time.sleep(0.1)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.teardown()
