"""Small helpers shared by the harness modules."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# A password SASLprep (RFC 4013) rewrites: the soft hyphen is removed, the
# no-break space becomes a space and the ligature "fi" two letters, so
# PostgreSQL and libpq hash "password fix". Logins with it through the
# router work only if the router prepares passwords as they do.
SASLPREP_PASSWORD = "pass\u00adword\u00a0\ufb01x"
SASLPREP_PREPARED = "password fix"

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Ports already handed out in this process are never handed out again, so two
    servers started by one test run cannot be given the same port.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free port")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `pred` until it returns a truthy value; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if we time out
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def tail(path: Path | str, max_bytes: int = 20000) -> str:
    """The last `max_bytes` of a text file, or a note that it does not exist."""
    p = Path(path)
    if not p.exists():
        return f"<{p} does not exist>"
    data = p.read_bytes()
    if len(data) > max_bytes:
        data = b"...\n" + data[-max_bytes:]
    return data.decode("utf-8", "replace")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False
