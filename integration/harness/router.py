"""pgrouter as a subprocess: config files from Python dicts, start, wait, stop.

`RouterFactory.start(...)` writes router.toml + users.toml into a fresh folder,
starts `target/release/pgrouter --config R --users U` with RUST_LOG=info and
its stderr/stdout in `pgrouter.log` beside them, and waits until the listen
port accepts connections. If the process exits first, the start fails with the
log. At the end of a test the factory stops every router it started and fails
the test if a router died on its own or logged a panic.
"""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from . import tomlw
from .pg import APP_DB, APP_PASSWORD, APP_USER, conninfo
from .util import REPO_ROOT, free_port, pid_alive, port_open, tail

_build_lock = threading.Lock()


def router_binary() -> Path:
    """The pgrouter binary: $PGROUTER_BIN, else <target>/release/pgrouter, built if missing."""
    env_bin = os.environ.get("PGROUTER_BIN")
    if env_bin:
        # Absolute: routers are started from their own working directories.
        path = Path(env_bin).resolve()
        if not path.exists():
            raise FileNotFoundError(f"PGROUTER_BIN={env_bin} does not exist")
        return path
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    path = target / "release" / "pgrouter"
    with _build_lock:
        if not path.exists():
            proc = subprocess.run(["cargo", "build", "--release", "-p", "pgrouter"], cwd=REPO_ROOT,
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0 or not path.exists():
                raise RuntimeError(f"cargo build --release failed:\n{proc.stderr[-20000:]}")
    return path


def default_general(port: int) -> dict:
    return {
        "listen": f"127.0.0.1:{port}",
        "pool_mode": "transaction",
        "default_pool_size": 10,
        "checkout_timeout_ms": 5000,
        "connect_timeout_ms": 3000,
        "shutdown_timeout_ms": 3000,
        "max_message_size": 268435456,
        "metrics_listen": "",
        "hot_reload": False,
        "log_format": "text",
    }


def app_user(**overrides) -> dict:
    user = {"name": APP_USER, "database": APP_DB, "password": APP_PASSWORD, "auth": "scram"}
    user.update(overrides)
    return user


class Router:
    def __init__(self, workdir: Path, port: int, config: dict, users: dict, binary: Path,
                 env: dict | None = None):
        self.workdir = workdir
        self.port = port
        self.config = config
        self.users = users
        self.binary = binary
        self.config_path = workdir / "router.toml"
        self.users_path = workdir / "users.toml"
        self.log_path = workdir / "pgrouter.log"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.stop_requested = False

    # ------------------------------------------------------------- files --
    def write_files(self, config: dict | None = None, users: dict | None = None) -> None:
        if config is not None:
            self.config = config
        if users is not None:
            self.users = users
        self.config_path.write_text(tomlw.dumps(self.config))
        self.users_path.write_text(tomlw.dumps(self.users))

    # --------------------------------------------------------- lifecycle --
    def start(self, timeout: float = 20.0) -> "Router":
        self.write_files()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        log = open(self.log_path, "ab")
        # A new session: signals aimed at the test runner's process group
        # (Ctrl-C, pytest-timeout) do not reach the router.
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config_path), "--users", str(self.users_path)],
            cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pgrouter exited with {self.proc.returncode} before listening on {self.port}\n"
                    f"--- {self.log_path} ---\n{self.log()}")
            if port_open(self.port):
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"pgrouter did not listen on {self.port} within {timeout}s\n"
                                   f"--- {self.log_path} ---\n{self.log()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def reload(self) -> None:
        """SIGHUP: re-read router.toml and users.toml."""
        self.signal(signal.SIGHUP)

    def terminate(self) -> None:
        """SIGTERM without waiting: graceful shutdown begins."""
        self.stop_requested = True
        self.signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """Wait for the process to exit; its exit code, or None if still running."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds. Returns the exit code."""
        if self.proc is None:
            return None
        self.stop_requested = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop_requested = True
            self.proc.kill()
            self.proc.wait(timeout=10)

    # ------------------------------------------------------------ access --
    def log(self) -> str:
        return tail(self.log_path)

    def dsn(self, user: str = APP_USER, password: str | None = APP_PASSWORD, db: str = APP_DB,
            **extra) -> str:
        """libpq conninfo for a client of this router."""
        params = {"connect_timeout": 10, **extra}
        return conninfo(host="127.0.0.1", port=self.port, dbname=db, user=user,
                        password=password, **params)

    def connect_kwargs(self, user: str = APP_USER, password: str | None = APP_PASSWORD,
                       db: str = APP_DB) -> dict:
        """Keyword arguments for asyncpg.connect()."""
        return {"host": "127.0.0.1", "port": self.port, "user": user, "password": password,
                "database": db, "ssl": False, "timeout": 10}

    def psql_env(self, user: str = APP_USER, password: str = APP_PASSWORD, db: str = APP_DB) -> dict:
        env = dict(os.environ)
        env.update({"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": user,
                    "PGPASSWORD": password, "PGDATABASE": db, "PGCONNECT_TIMEOUT": "10"})
        return env


class DirectTarget:
    """Stands in for a router when PGROUTER_DIRECT=1: clients talk to the
    primary itself. Only for checking what a test expects against PostgreSQL's
    own behaviour while writing tests; router-only checks fail in this mode."""

    def __init__(self, primary):
        self.primary = primary
        self.port = primary.port
        self.pid = -1
        self.stop_requested = False
        self.proc = None

    def alive(self) -> bool:
        return True

    def log(self) -> str:
        return ""

    dsn = Router.dsn
    connect_kwargs = Router.connect_kwargs
    psql_env = Router.psql_env

    def __getattr__(self, name):
        raise RuntimeError(f"PGROUTER_DIRECT=1: a direct connection has no {name!r}")


class RouterFactory:
    """Starts routers for one test and cleans them up afterwards."""

    def __init__(self, cluster, base_dir: Path):
        self.cluster = cluster
        self.base_dir = base_dir
        self.routers: list[Router] = []

    def databases(self, with_replica: bool = False) -> list[dict]:
        dbs = [{"name": APP_DB, "host": "127.0.0.1", "port": self.cluster.primary.port,
                "database_name": APP_DB, "role": "primary"}]
        if with_replica and self.cluster.replica is not None:
            dbs.append({"name": APP_DB, "host": "127.0.0.1", "port": self.cluster.replica.port,
                        "database_name": APP_DB, "role": "replica"})
        return dbs

    def config(self, general: dict | None = None, with_replica: bool = False,
               databases: list[dict] | None = None, port: int | None = None, **sections) -> dict:
        port = port or free_port()
        gen = default_general(port)
        gen.update(general or {})
        cfg = {"general": gen,
               "databases": databases if databases is not None else self.databases(with_replica)}
        cfg.update(sections)
        return cfg

    def start(self, general: dict | None = None, users: list[dict] | None = None,
              with_replica: bool = False, databases: list[dict] | None = None,
              env: dict | None = None, wait: bool = True, **sections) -> Router:
        """Start a router. `general` overrides keys of [general]; `users` replaces
        the default users list (just `app`, SCRAM, password app-secret)."""
        if os.environ.get("PGROUTER_DIRECT") == "1":
            return DirectTarget(self.cluster.primary)
        cfg = self.config(general, with_replica, databases, **sections)
        port = int(cfg["general"]["listen"].rsplit(":", 1)[1])
        users_doc = {"users": copy.deepcopy(users) if users is not None else [app_user()]}
        idx = len(self.routers)
        workdir = self.base_dir / f"router{idx}"
        workdir.mkdir(parents=True, exist_ok=True)
        router = Router(workdir, port, cfg, users_doc, router_binary(), env)
        self.routers.append(router)
        if wait:
            router.start()
        return router

    def finish(self) -> list[str]:
        """Stop every router; return problems found (died on its own, panicked)."""
        problems = []
        for r in self.routers:
            if r.proc is None:
                continue
            died = r.proc.poll() is not None and not r.stop_requested
            if died:
                problems.append(f"pgrouter (pid {r.pid}) exited on its own with code "
                                f"{r.proc.returncode}\n--- log ---\n{r.log()}")
            r.stop()
            log = r.log()
            if "panicked at" in log:
                problems.append(f"pgrouter (pid {r.pid}) panicked\n--- log ---\n{log}")
        return problems


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False
