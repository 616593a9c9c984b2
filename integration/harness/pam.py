"""PostgreSQL checking JIT tokens through PAM, for the tests.

`PamService(workdir, api_url).install()` writes
- a checker script (run by PostgreSQL's PAM stack as the `postgres` OS user
  through `pam_exec.so expose_authtok`): it reads the password (the token)
  on stdin, asks the same JIT API the router asks (header `X-Caller: pam`),
  records what it saw in `seen.jsonl`, and exits 0 only when the API grants
  the role;
- the PAM service `/etc/pam.d/<name>` (a unique name per run, so several
  test runs can share the machine), removed again by `remove()`.

pg_hba.conf then names it: `local all +jit_users pam pamservice=<name>`.
Writing /etc/pam.d needs root, as the whole harness does to run PostgreSQL
as `postgres`. pam_exec.so is in Debian's libpam-modules (Priority:
required; scripts/setup.sh installs it on machines that lack it).
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from .pg import chown_to_pg

PAM_DIR = Path("/etc/pam.d")

_CHECKER = r'''#!/usr/bin/python3
# pgrouter test harness: PAM (pam_exec expose_authtok) asks the JIT API.
import json, os, ssl, sys, urllib.request

API = {api!r}
SEEN = {seen!r}

raw = sys.stdin.buffer.read()
token = raw.split(b"\0", 1)[0].decode("utf-8", "replace").rstrip("\n")
user = os.environ.get("PAM_USER", "")
body = json.dumps({{"rhost": os.environ.get("PAM_RHOST", ""), "role": user}}).encode()
req = urllib.request.Request(API, data=body, method="POST", headers={{
    "Authorization": "Bearer " + token, "Content-Type": "application/json",
    "X-Caller": "pam"}})
ok = False
try:
    ctx = ssl._create_unverified_context()
    with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
        ok = resp.status == 200 and (json.load(resp).get("user_role") or {{}}).get("role") == user
except Exception:
    ok = False
with open(SEEN, "a") as f:
    f.write(json.dumps({{"user": user, "token": token, "ok": ok}}) + "\n")
sys.exit(0 if ok else 1)
'''


class PamService:
    def __init__(self, workdir: Path, api_url: str):
        self.name = f"pgrouter-jit-{uuid.uuid4().hex[:10]}"
        self.path = PAM_DIR / self.name
        self.dir = workdir / "pam"
        self.script = self.dir / "check_token.py"
        self.seen_path = self.dir / "seen.jsonl"
        self.api_url = api_url

    def install(self) -> "PamService":
        if os.geteuid() != 0:
            raise RuntimeError(f"writing {self.path} needs root (CI runs the suite as root)")
        if not (Path("/lib/x86_64-linux-gnu/security/pam_exec.so").exists()
                or Path("/usr/lib/x86_64-linux-gnu/security/pam_exec.so").exists()
                or list(Path("/").glob("usr/lib/*/security/pam_exec.so"))):
            raise RuntimeError("pam_exec.so not found: apt-get install libpam-modules "
                               "(scripts/setup.sh does)")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.script.write_text(_CHECKER.format(api=self.api_url, seen=str(self.seen_path)))
        os.chmod(self.script, 0o755)
        self.seen_path.write_text("")
        chown_to_pg(self.seen_path)
        # PostgreSQL calls pam_acct_mgmt too, hence the account line.
        self.path.write_text(
            "# pgrouter integration tests (removed at the end of the run)\n"
            f"auth     required  pam_exec.so expose_authtok quiet {self.script}\n"
            "account  required  pam_permit.so\n")
        return self

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def seen(self) -> list[dict]:
        """What PostgreSQL's PAM check saw, oldest first: {user, token, ok}."""
        return [json.loads(line) for line in self.seen_path.read_text().splitlines() if line]
