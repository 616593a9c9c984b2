"""Helpers for the operations tests (reload, admin console, metrics).

- `admin_general()`: `[general]` keys enabling the admin console (and,
  optionally, a metrics port).
- `psql_admin()` / `admin_rows()`: run one admin command through the real
  `psql` binary; `admin_rows()` parses `psql --csv` output into dicts.
- `scrape()`: GET /metrics, parsed with prometheus_client's parser into a
  `Scrape` you can query by metric name and labels.
- Reload bookkeeping from the router's log: `reload_marks()`,
  `wait_reload()`.
- Rewriting the files a `Router` wrote, in place (`write_in_place`), by
  write-to-temp-then-rename (`write_by_rename`), or in a Kubernetes
  ConfigMap-style directory (`ConfigMapDir`, a `..data` symlink swap).
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from . import tomlw
from .pg import pg_tool
from .util import free_port

ADMIN_USER = "admin"
ADMIN_DB = "pgrouter"
ADMIN_PASSWORD = "admin-secret-42"


def admin_general(metrics: bool = False, **extra) -> dict:
    gen = {"admin_password": ADMIN_PASSWORD, "admin_user": ADMIN_USER, "admin_database": ADMIN_DB}
    if metrics:
        gen["metrics_listen"] = f"127.0.0.1:{free_port()}"
    gen.update(extra)
    return gen


def metrics_port(router) -> int:
    return int(router.config["general"]["metrics_listen"].rsplit(":", 1)[1])


# -------------------------------------------------------------- admin/psql --
def psql_admin(router, command: str | None, *args: str, password: str = ADMIN_PASSWORD,
               user: str = ADMIN_USER, db: str = ADMIN_DB, stdin: str | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess:
    """`psql -X -v VERBOSITY=verbose [args] -c command` against the router's
    admin console (or `-f -` with `stdin` when command is None)."""
    env = router.psql_env(user=user, password=password, db=db)
    cmd = [pg_tool("psql"), "-X", "-v", "VERBOSITY=verbose", *args]
    if command is not None:
        cmd += ["-c", command]
    else:
        cmd += ["-f", "-"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def admin_rows(router, command: str, **kw) -> list[dict]:
    """The result set of one admin command as a list of {column: text} (NULL
    becomes None)."""
    out = psql_admin(router, command, "--csv", "-P", "null=<NULL>", **kw)
    if out.returncode != 0:
        raise AssertionError(f"psql {command!r} failed ({out.returncode}):\n{out.stderr}\n{out.stdout}")
    reader = csv.DictReader(io.StringIO(out.stdout))
    return [{k: (None if v == "<NULL>" else v) for k, v in row.items()} for row in reader]


def admin_columns(router, command: str, **kw) -> list[str]:
    out = psql_admin(router, command, "--csv", **kw)
    assert out.returncode == 0, out.stderr
    return next(csv.reader(io.StringIO(out.stdout)))


def pools(router, database: str | None = None, user: str | None = None,
          role: str | None = None) -> list[dict]:
    rows = admin_rows(router, "SHOW POOLS")
    return [r for r in rows if (database is None or r["database"] == database)
            and (user is None or r["user"] == user) and (role is None or r["role"] == role)]


def config_map(router) -> dict:
    """SHOW CONFIG as {key: (value, source)}."""
    return {r["key"]: (r["value"], r["source"]) for r in admin_rows(router, "SHOW CONFIG")}


# ----------------------------------------------------------------- metrics --
class Scrape:
    def __init__(self, text: str):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def find(self, name: str, **labels) -> list:
        """Samples called `name` whose labels include `labels` (`le` is
        compared as a number: le="1" matches le="1.0")."""
        def match(s, k, v):
            got = s.labels.get(k)
            if k == "le" and got is not None:
                return float(got) == float(v)
            return got == str(v)
        return [s for s in self.samples if s.name == name
                and all(match(s, k, v) for k, v in labels.items())]

    def value(self, name: str, **labels) -> float:
        """Sum of the samples called `name` whose labels include `labels`
        (0 when there are none)."""
        return sum(s.value for s in self.find(name, **labels))

    def one(self, name: str, **labels) -> float:
        found = self.find(name, **labels)
        assert len(found) == 1, f"expected one {name}{labels}, got {found}"
        return found[0].value


def http_get(port: int, path: str = "/metrics", method: str = "GET", timeout: float = 10):
    """(status, headers, body text)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode(errors="replace")


def scrape(router_or_port) -> Scrape:
    port = router_or_port if isinstance(router_or_port, int) else metrics_port(router_or_port)
    status, _headers, body = http_get(port)
    assert status == 200, f"/metrics answered {status}: {body[:500]}"
    return Scrape(body)


# ------------------------------------------------------------------ reload --
RELOAD_OK = "configuration reloaded"
RELOAD_ERR = "configuration NOT reloaded"


def full_log(router) -> str:
    try:
        return Path(router.log_path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def reload_marks(router) -> tuple[int, int]:
    """(successful, failed) reloads the router has logged so far."""
    text = full_log(router)
    return text.count(RELOAD_OK), text.count(RELOAD_ERR)


def wait_reload(router, before: tuple[int, int], timeout: float = 10) -> str:
    """Wait until the router logs one more reload than `before`; "ok" or "error"."""
    deadline = time.monotonic() + timeout
    while True:
        ok, err = reload_marks(router)
        if ok > before[0]:
            return "ok"
        if err > before[1]:
            return "error"
        if time.monotonic() > deadline:
            raise AssertionError(f"no reload logged within {timeout}s (before={before}, now={(ok, err)})\n"
                                 f"--- log ---\n{router.log()}")
        time.sleep(0.05)


def reload_error_text(router, before_errors: int) -> str:
    """The log text from the (before_errors+1)-th failed reload on (its message
    spans several lines)."""
    text = full_log(router)
    idx = -1
    for _ in range(before_errors + 1):
        idx = text.find(RELOAD_ERR, idx + 1)
        assert idx >= 0, "reload error not in log"
    start = text.rfind("\n", 0, idx) + 1
    return text[start:start + 4000]


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of `text` containing `needle`."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


# ------------------------------------------------------------- file edits --
def write_in_place(path: Path, text: str) -> None:
    """Overwrite the file's contents (same inode), as `echo > file` does."""
    with open(path, "r+") as f:
        f.seek(0)
        f.write(text)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def write_by_rename(path: Path, text: str) -> None:
    """Write a temporary file beside `path` and rename it over `path` (what
    vim, many editors and config management tools do)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def set_router_docs(router, config: dict | None = None, users: dict | None = None) -> tuple[str, str]:
    """Update the Router object's dicts and return the TOML texts (without
    writing anything)."""
    if config is not None:
        router.config = config
    if users is not None:
        router.users = users
    return tomlw.dumps(router.config), tomlw.dumps(router.users)


class ConfigMapDir:
    """The layout a Kubernetes ConfigMap volume has:

        dir/..2026_01_01_00_00_00.000000001/router.toml
        dir/..2026_01_01_00_00_00.000000001/users.toml
        dir/..data -> ..2026_01_01_00_00_00.000000001
        dir/router.toml -> ..data/router.toml
        dir/users.toml -> ..data/users.toml

    An update writes a new timestamped directory, points a temporary symlink
    at it and renames that over `..data` (atomic), then deletes the old
    directory. The visible file names never change.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.generation = 0
        self.current: Path | None = None

    @property
    def router_path(self) -> Path:
        return self.dir / "router.toml"

    @property
    def users_path(self) -> Path:
        return self.dir / "users.toml"

    def _new_dir(self, files: dict[str, str]) -> Path:
        self.generation += 1
        d = self.dir / f"..2026_01_01_00_00_{self.generation:02d}.{os.getpid()}"
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text)
        return d

    def publish(self, router_text: str, users_text: str) -> None:
        new = self._new_dir({"router.toml": router_text, "users.toml": users_text})
        tmp_link = self.dir / "..data_tmp"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(new.name, tmp_link)
        os.replace(tmp_link, self.dir / "..data")
        for name in ("router.toml", "users.toml"):
            link = self.dir / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        old, self.current = self.current, new
        if old is not None:
            for child in old.iterdir():
                child.unlink()
            old.rmdir()


def use_config_map(router, cm: ConfigMapDir) -> None:
    """Make a not-yet-started Router read its files from a ConfigMap-style
    directory (Router.start() writes through the symlinks)."""
    cm.publish(tomlw.dumps(router.config), tomlw.dumps(router.users))
    router.config_path = cm.router_path
    router.users_path = cm.users_path
