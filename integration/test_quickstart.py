"""The quickstart (README's first command, scripts/quickstart.sh) on a fresh
machine: the sharded demo's writes on several shards commit with two-phase
commit, which needs the coordinator user (`authenticator`, the [jwt]
connect_as user) to be able to make the decision tables on shard 0 — with
PostgreSQL 15 not granting CREATE on schema public to everyone, every such
write failed 58000 until the script granted it.

The script runs in a copy of the files it needs, with every port it uses
(servers, router, metrics) rewritten to free ones, so it never meets the
suite's servers or a quickstart someone runs from the repository."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.router import REPO_ROOT, router_binary
from harness.util import free_port

PSQL = "/usr/lib/postgresql/15/bin/psql"
# The ports the quickstart and example.router.toml use, by role.
DEMO_PORTS = ("15432", "15433", "15434", "15435", "6432", "9930")


def _copy_demo(dest: Path, ports: dict[str, int]) -> None:
    """The files scripts/quickstart.sh reads, ports rewritten."""
    def rewrite(text: str) -> str:
        return re.sub(r"\b(" + "|".join(DEMO_PORTS) + r")\b",
                      lambda m: str(ports[m.group(1)]), text)

    (dest / "scripts").mkdir()
    (dest / "integration").mkdir()
    for name in ("scripts/quickstart.sh", "example.router.toml", "users.toml"):
        (dest / name).write_text(rewrite((REPO_ROOT / name).read_text()))
    # Run as is: setup.sh checks the packages and the venv (no build here).
    shutil.copy(REPO_ROOT / "scripts/setup.sh", dest / "scripts/setup.sh")
    shutil.copy(REPO_ROOT / "integration/requirements.txt", dest / "integration/requirements.txt")
    (dest / ".venv").symlink_to((REPO_ROOT / ".venv").resolve())


@pytest.mark.timeout(240)
@pytest.mark.skipif(os.geteuid() != 0, reason="the quickstart runs PostgreSQL as postgres via runuser")
def test_quickstart_sharded_demo_writes():
    ports = {p: free_port() for p in DEMO_PORTS}
    root = Path(tempfile.mkdtemp(prefix="pgrouter-qs-"))
    root.chmod(0o755)  # the postgres user keeps its data under demo/
    env = {**os.environ, "PGROUTER_NO_BUILD": "1", "PGROUTER_NO_FUZZ": "1",
           "PGROUTER_BIN": str(router_binary())}
    env.pop("CARGO_TARGET_DIR", None)
    script = ["bash", str(root / "scripts/quickstart.sh")]
    try:
        _copy_demo(root, ports)
        started = subprocess.run(script, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        shop = (f"host=127.0.0.1 port={ports['6432']} dbname=shop user=app "
                "password=app-secret connect_timeout=10")

        def psql(*sql: str) -> str:
            args = [PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", shop]
            for s in sql:
                args += ["-c", s]
            done = subprocess.run(args, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{sql}: {done.stderr}"
            return done.stdout

        # The README's sharded-demo statements, as printed by the quickstart.
        assert psql("INSERT INTO orders (customer_id, id, amount, note) VALUES "
                    "(1, 1, 10.00, 'first'), (2, 1, 20.00, NULL), (3, 1, 30.00, NULL)") \
            == "INSERT 0 3\n"
        assert sorted(psql("SELECT customer_id, amount FROM orders").split()) \
            == ["1|10.00", "2|20.00", "3|30.00"]
        assert psql("INSERT INTO countries VALUES ('it', 'Italy') ON CONFLICT DO NOTHING",
                    "SELECT count(*) FROM countries") == "INSERT 0 1\n5\n"
        # Each row on its shard (customer 1 on shard 2, 2 on shard 0, 3 on
        # shard 1); the reference row on every shard.
        for shard, port in enumerate(("15432", "15434", "15435")):
            direct = (f"host=127.0.0.1 port={ports[port]} dbname=shop user=app "
                      "password=app-secret connect_timeout=10")
            out = subprocess.run(
                [PSQL, "-X", "-At", direct, "-c", "SELECT array_agg(customer_id) FROM orders",
                 "-c", "SELECT count(*) FROM countries WHERE code = 'it'"],
                capture_output=True, text=True, timeout=30, check=True).stdout
            assert out == {0: "{2}\n1\n", 1: "{3}\n1\n", 2: "{1}\n1\n"}[shard], (shard, out)
    finally:
        subprocess.run(script + ["clean"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
