"""A minimal PostgreSQL v3 wire-protocol client over a raw socket.

Drivers hide exactly what some tests need to see or to break: the bytes of an
ErrorResponse before a connection closes, a message with a lying length, an
SSLRequest answer. This client logs in (SCRAM-SHA-256, MD5 or cleartext),
sends simple queries, and exposes the socket for everything else.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass, field

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


class ProtocolError(Exception):
    pass


class ServerError(Exception):
    """An ErrorResponse from the other side; `fields` maps field codes ('C', 'M', ...) to text."""

    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        super().__init__(f"{fields.get('S', '?')} {fields.get('C', '?')}: {fields.get('M', '')}")

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


# ----------------------------------------------------------- message building --
def startup_message(params: dict[str, str], version: int = PROTOCOL_V3) -> bytes:
    body = struct.pack("!i", version)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def special_request(code: int) -> bytes:
    return struct.pack("!ii", 8, code)


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST, pid, key)


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def terminate_message() -> bytes:
    return message(b"X")


# Extended query protocol (text formats only).
def parse_message(sql: str, name: str = "", param_types: tuple[int, ...] = ()) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", len(param_types))
    body += b"".join(struct.pack("!i", oid) for oid in param_types)
    return message(b"P", body)


def bind_message(params: list[str | None] = (), portal: str = "", statement: str = "") -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!h", 0)
    body += struct.pack("!h", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            data = p.encode()
            body += struct.pack("!i", len(data)) + data
    body += struct.pack("!h", 0)
    return message(b"B", body)


def describe_message(kind: bytes = b"P", name: str = "") -> bytes:
    return message(b"D", kind + name.encode() + b"\0")


def execute_message(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", portal.encode() + b"\0" + struct.pack("!i", max_rows))


def close_message(kind: bytes = b"S", name: str = "") -> bytes:
    return message(b"C", kind + name.encode() + b"\0")


def sync_message() -> bytes:
    return message(b"S")


def flush_message() -> bytes:
    return message(b"H")


def extended_query(sql: str, params: list[str | None] = ()) -> bytes:
    """Parse/Bind/Describe/Execute of an unnamed statement, without Sync."""
    return (parse_message(sql) + bind_message(list(params)) + describe_message()
            + execute_message())


def data_row_values(body: bytes) -> list[str | None]:
    (n,) = struct.unpack("!h", body[:2])
    pos = 2
    row: list[str | None] = []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(body[pos:pos + ln].decode())
            pos += ln
    return row


def parse_error_fields(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    i = 0
    while i < len(body) and body[i] != 0:
        code = chr(body[i])
        end = body.index(b"\0", i + 1)
        fields[code] = body[i + 1:end].decode("utf-8", "replace")
        i = end + 1
    return fields


# ------------------------------------------------------------------- SCRAM --
def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def scram_secret(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """A stored SCRAM-SHA-256 secret in PostgreSQL's format (as in pg_authid.rolpassword):
    SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, all base64."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    server_key = _hmac(salted, b"Server Key")
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def md5_secret(password: str, user: str) -> str:
    """A stored MD5 password in PostgreSQL's format: 'md5' + md5(password || user)."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


# ------------------------------------------------------------------ client --
@dataclass
class Msg:
    kind: bytes
    body: bytes


@dataclass
class RawConn:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    params: dict[str, str] = field(default_factory=dict)
    backend_pid: int | None = None
    backend_key: int | None = None

    # -- plumbing
    @classmethod
    def open(cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> "RawConn":
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by peer")
            self.buf += chunk

    def read_byte(self) -> bytes:
        self._fill(1)
        b = bytes(self.buf[:1])
        del self.buf[:1]
        return b

    def read_msg(self) -> Msg:
        self._fill(5)
        kind = bytes(self.buf[:1])
        (length,) = struct.unpack("!i", self.buf[1:5])
        if length < 4 or length > 1 << 30:
            raise ProtocolError(f"bad length {length} for message {kind!r}")
        self._fill(1 + length)
        body = bytes(self.buf[5:1 + length])
        del self.buf[:1 + length]
        return Msg(kind, body)

    def read_until_eof(self, timeout: float = 10.0) -> list[Msg]:
        """Read messages until the peer closes; raise TimeoutError if it does not
        close within `timeout` seconds. Returns the complete messages seen."""
        self.sock.settimeout(timeout)
        msgs: list[Msg] = []
        try:
            while True:
                try:
                    msgs.append(self.read_msg())
                except EOFError:
                    return msgs
                except ConnectionResetError:
                    return msgs
        except socket.timeout:
            raise TimeoutError(f"peer did not close within {timeout}s; got {[m.kind for m in msgs]}") from None

    def close(self, reset: bool = False) -> None:
        """Close the socket; with reset=True send a TCP RST instead of a FIN."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    # -- login
    def startup(self, user: str, database: str, password: str | None = None,
                extra: dict[str, str] | None = None) -> None:
        """Send a StartupMessage and authenticate; returns at the first ReadyForQuery.
        Raises ServerError for an ErrorResponse."""
        params = {"user": user, "database": database, **(extra or {})}
        self.send(startup_message(params))
        scram = None
        while True:
            m = self.read_msg()
            if m.kind == b"E":
                raise ServerError(parse_error_fields(m.body))
            if m.kind == b"R":
                (code,) = struct.unpack("!i", m.body[:4])
                if code == 0:
                    continue
                if password is None:
                    raise ProtocolError(f"server asked for a password (auth code {code})")
                if code == 3:  # cleartext
                    self.send(message(b"p", password.encode() + b"\0"))
                elif code == 5:  # md5
                    salt = m.body[4:8]
                    inner = hashlib.md5((password + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
                elif code == 10:  # SASL
                    mechs = [x.decode() for x in m.body[4:].split(b"\0") if x]
                    if "SCRAM-SHA-256" not in mechs:
                        raise ProtocolError(f"no SCRAM-SHA-256 in {mechs}")
                    scram = _ScramClient(password)
                    first = scram.client_first()
                    body = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
                    self.send(message(b"p", body))
                elif code == 11:  # SASL continue
                    assert scram is not None
                    self.send(message(b"p", scram.client_final(m.body[4:])))
                elif code == 12:  # SASL final
                    assert scram is not None
                    scram.verify_server(m.body[4:])
                else:
                    raise ProtocolError(f"unsupported auth request {code}")
            elif m.kind == b"S":
                k, v, _ = m.body.split(b"\0", 2)
                self.params[k.decode()] = v.decode()
            elif m.kind == b"K":
                self.backend_pid, self.backend_key = struct.unpack("!ii", m.body[:8])
            elif m.kind == b"Z":
                return
            elif m.kind == b"N":
                continue
            else:
                raise ProtocolError(f"unexpected message {m.kind!r} during startup")

    # -- queries
    def simple_query(self, sql: str) -> tuple[list[list[str | None]], list[str], list[Msg]]:
        """Run a simple query; return (rows, command tags, all messages). Rows are text.
        Raises ServerError on an ErrorResponse (after reading up to ReadyForQuery)."""
        self.send(query_message(sql))
        return self.read_results()

    def read_batches(self, n: int, timeout: float = 30.0) -> list[list[Msg]]:
        """Read the responses to `n` Syncs: one list of messages per
        ReadyForQuery (the ReadyForQuery included)."""
        self.sock.settimeout(timeout)
        batches: list[list[Msg]] = []
        current: list[Msg] = []
        while len(batches) < n:
            m = self.read_msg()
            current.append(m)
            if m.kind == b"Z":
                batches.append(current)
                current = []
        return batches

    def read_results(self):
        rows: list[list[str | None]] = []
        tags: list[str] = []
        msgs: list[Msg] = []
        error: dict[str, str] | None = None
        while True:
            m = self.read_msg()
            msgs.append(m)
            if m.kind == b"D":
                rows.append(data_row_values(m.body))
            elif m.kind == b"C":
                tags.append(m.body.rstrip(b"\0").decode())
            elif m.kind == b"E":
                error = parse_error_fields(m.body)
            elif m.kind == b"Z":
                if error is not None:
                    raise ServerError(error)
                return rows, tags, msgs


class _ScramClient:
    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature: bytes | None = None

    def client_first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        sf = server_first.decode()
        attrs = dict(part.split("=", 1) for part in sf.split(","))
        nonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise ProtocolError("server nonce does not extend the client nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{sf},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server(self, server_final: bytes) -> None:
        attrs = dict(part.split("=", 1) for part in server_final.decode().split(","))
        if "e" in attrs:
            raise ProtocolError(f"SCRAM error from server: {attrs['e']}")
        if base64.b64decode(attrs["v"]) != self.server_signature:
            raise ProtocolError("server SCRAM signature does not verify")


def connect(port: int, user: str, database: str, password: str | None,
            extra: dict[str, str] | None = None, timeout: float = 10.0) -> RawConn:
    conn = RawConn.open(port, timeout=timeout)
    try:
        conn.startup(user, database, password, extra)
    except BaseException:
        conn.close()
        raise
    return conn


def errors_in(msgs: list[Msg]) -> list[dict[str, str]]:
    return [parse_error_fields(m.body) for m in msgs if m.kind == b"E"]
