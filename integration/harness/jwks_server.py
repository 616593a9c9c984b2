"""A tiny JWKS endpoint for the tests: Python's http.server in a thread on
127.0.0.1:<free port>, serving {"keys": [...]} at any path and counting the
requests it answers.

    srv = JwksServer([key.jwk()]).start()
    srv.url            # http://127.0.0.1:PORT/jwks.json
    srv.set_keys([...]) # rotate
    srv.fail = True    # answer 500 from now on
    srv.count          # requests served so far
    srv.stop()
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JwksServer:
    def __init__(self, keys: list[dict] | None = None, delay_s: float = 0.0):
        self._keys = list(keys or [])
        self._lock = threading.Lock()
        self.count = 0
        self.times: list[float] = []
        self.fail = False
        self.delay_s = delay_s
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- keys --
    def set_keys(self, keys: list[dict]) -> None:
        with self._lock:
            self._keys = list(keys)

    def keys(self) -> list[dict]:
        with self._lock:
            return list(self._keys)

    def _record(self) -> None:
        with self._lock:
            self.count += 1
            self.times.append(time.monotonic())

    # -------------------------------------------------------- lifecycle --
    def start(self) -> "JwksServer":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                outer._record()
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                if outer.fail:
                    body = b'{"error": "unavailable"}'
                    self.send_response(500)
                else:
                    body = json.dumps({"keys": outer.keys()}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "JwksServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
