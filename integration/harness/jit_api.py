"""A mock just-in-time access API (Supavisor's contract) for the tests:
Python's http.server in a thread on 127.0.0.1:<free port>, over http or https.

POST with `Authorization: Bearer <token>` and a JSON body
`{"rhost": ..., "role": ...}`. A token in `grants` answers 200 with
`{"user_role": {"role": <granted role>}}`; an unknown (or revoked) token 401.
Every call is recorded (token, body, time), so tests can count them and see
what the router sent.

    api = JitApi().start()                  # or JitApi(tls=(cert, key)).start()
    api.grant("sbp_abc", "alice")
    api.revoke("sbp_abc")                   # 401 from now on
    api.mode = "down"                       # 500 | "slow" (sleep delay_s) | "garbage"
    api.calls                               # [Call(token, body, at), ...]
    api.stop()

The PAM side of the tests asks the same API (see harness/pam.py), so the
API is what decides for both the router and PostgreSQL.
"""
from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _DeepBacklogServer(ThreadingHTTPServer):
    """socketserver listens with a backlog of 5: a burst of 200 logins (each
    one API call) overflows it, the kernel drops SYNs, and the retransmit
    (1 s, then 3 s) outlasts the router's `timeout_ms` on a loaded machine.
    A real API sits behind a load balancer with a deep queue."""
    request_queue_size = 1024


@dataclass
class Call:
    token: str
    body: dict
    at: float
    # Who asked: "router" unless the caller says (the PAM script sends a header).
    caller: str


class JitApi:
    def __init__(self, tls: tuple[Path, Path] | None = None, delay_s: float = 0.0):
        self.tls = tls
        self.delay_s = delay_s
        self.mode = "ok"
        self._grants: dict[str, str] = {}
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ grants --
    def grant(self, token: str, role: str) -> None:
        with self._lock:
            self._grants[token] = role

    def revoke(self, token: str) -> None:
        with self._lock:
            self._grants.pop(token, None)

    def calls_from(self, caller: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.caller == caller]

    def _answer(self, token: str) -> tuple[int, bytes]:
        with self._lock:
            role = self._grants.get(token)
        if self.mode == "down":
            return 500, b'{"error": "down"}'
        if self.mode == "garbage":
            return 200, b"<html>not json</html>"
        if role is None:
            return 401, b'{"error": "unauthorized"}'
        return 200, json.dumps({"user_role": {"role": role}}).encode()

    # --------------------------------------------------------- lifecycle --
    def start(self) -> "JitApi":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Headers and body are separate writes: without this, Nagle
                # and the client's delayed ACK add ~40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"unparsable": raw.decode(errors="replace")}
                body["_content_type"] = self.headers.get("Content-Type", "")
                caller = self.headers.get("X-Caller", "router")
                with outer._lock:
                    outer.calls.append(Call(token, body, time.monotonic(), caller))
                if outer.mode == "slow" or outer.delay_s:
                    time.sleep(outer.delay_s or 5.0)
                status, payload = outer._answer(token)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:
                    pass  # the caller gave up (timeout)

            def log_message(self, *args):  # quiet
                pass

        self._httpd = _DeepBacklogServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/jit/check"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
