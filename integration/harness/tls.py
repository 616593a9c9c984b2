"""TLS pieces for the tests: a PostgreSQL cluster that only accepts TLS over
TCP, and raw-socket helpers that speak the PostgreSQL SSLRequest.

`TlsPgCluster` is a one-server `PgCluster` (same roles, same database `app`)
with `ssl = on`, a server certificate issued by a given CA (SAN DNS:localhost,
IP:127.0.0.1), and a pg_hba that accepts TCP logins over TLS only:

    local     all  all                 trust           (the harness superuser)
    hostssl   all  all  127.0.0.1/32   scram-sha-256
    hostnossl all  all  127.0.0.1/32   reject
"""
from __future__ import annotations

import socket
import ssl
import struct

from .certs import CertAuthority, Leaf, describe
from .pg import PgCluster, chown_to_pg

SSL_REQUEST_BYTES = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


class TlsPgCluster(PgCluster):
    def __init__(self, ca: CertAuthority, cn: str = "postgres test server", **kwargs):
        kwargs.setdefault("with_replica", False)
        kwargs.setdefault("prefix", "pgrouter-tls-")
        super().__init__(**kwargs)
        certdir = self.tmpdir / "pgcerts"
        certdir.mkdir()
        chown_to_pg(certdir)
        self.server_cert: Leaf = ca.issue(certdir, cn, dns=["localhost"], ips=["127.0.0.1"])
        # PostgreSQL insists that its key belongs to it and is not group/world readable.
        for path in (self.server_cert.cert_path, self.server_cert.key_path):
            chown_to_pg(path)
        self.extra_conf.update({
            "ssl": "on",
            "ssl_cert_file": str(self.server_cert.cert_path),
            "ssl_key_file": str(self.server_cert.key_path),
        })

    def _hba(self) -> str:
        return "\n".join([
            "# pgrouter TLS tests",
            "local      all   all                  trust",
            "hostssl    all   all   127.0.0.1/32   scram-sha-256",
            "hostnossl  all   all   127.0.0.1/32   reject",
        ]) + "\n"


def ssl_request(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """Open a TCP connection, send an SSLRequest and return (socket, one-byte answer)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(SSL_REQUEST_BYTES)
    answer = sock.recv(1)
    return sock, answer


def peer_certificate(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> tuple[str, int]:
    """(CN, serial) of the certificate a PostgreSQL-protocol TLS server presents.
    No verification: this only looks at what is offered."""
    sock, answer = ssl_request(port, host, timeout)
    try:
        if answer != b"S":
            raise AssertionError(f"SSLRequest answered {answer!r}, not b'S'")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            return describe(der)
    finally:
        sock.close()


def read_error_response(sock: socket.socket, timeout: float = 10.0) -> dict[str, str]:
    """Read one backend message from a plain socket; it must be an ErrorResponse.
    Returns its fields ('C' = SQLSTATE, 'M' = message)."""
    sock.settimeout(timeout)
    data = b""
    while len(data) < 5:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    kind = data[:1]
    (length,) = struct.unpack("!i", data[1:5])
    while len(data) < 1 + length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if kind != b"E":
        raise AssertionError(f"expected an ErrorResponse, got {data[:64]!r}")
    fields = {}
    for part in data[5:1 + length].split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields
