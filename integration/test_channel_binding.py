"""SCRAM-SHA-256-PLUS: channel binding (RFC 5929 tls-server-end-point) for
clients logging in to the router over TLS.

Over TLS the router offers SCRAM-SHA-256-PLUS before SCRAM-SHA-256, as
PostgreSQL does, so that libpq's `channel_binding=require` logs in; the
binding data is the hash of the router's own certificate. Checked with libpq
(psycopg, psql), asyncpg, and a hand-made SCRAM client that also runs every
negotiation case against a real PostgreSQL with `ssl = on`, so that the
router's answers are compared with PostgreSQL's own.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import signal
import ssl
import struct
import subprocess

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from harness import wire
from harness.certs import CertAuthority
from harness.clients import aconnect, connect, run_async
from harness.pg import APP_DB, APP_PASSWORD, APP_USER, pg_tool
from harness.router import app_user
from harness.tls import TlsPgCluster, peer_certificate, ssl_request
from harness.util import wait_until

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"
PLUS = "SCRAM-SHA-256-PLUS"
PLAIN = "SCRAM-SHA-256"
PLUS_GS2 = "p=tls-server-end-point,,"


# ------------------------------------------------------------------ fixtures --
@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertAuthority.create(tmp_path_factory.mktemp("cb-ca"), "pgrouter channel binding CA")


@pytest.fixture
def certdir(routers):
    d = routers.base_dir / "certs"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def tls_postgres(ca):
    """A real PostgreSQL with ssl = on (scram-sha-256 over TLS only): what the
    router's answers are compared with."""
    c = TlsPgCluster(ca, prefix="pgrouter-cb-").start()
    try:
        yield c
    finally:
        c.teardown(keep_dir=os.environ.get("PGROUTER_KEEP_TMP") == "1")


def tls_general(cert_path, key_path, **extra) -> dict:
    gen = {"tls_certificate": str(cert_path), "tls_private_key": str(key_path),
           "admin_user": ADMIN_USER, "admin_password": ADMIN_PASSWORD}
    gen.update(extra)
    return gen


def start_tls_router(routers, ca, certdir, **kwargs):
    leaf = ca.issue(certdir, "pgrouter", dns=["localhost"], ips=["127.0.0.1"], stem="router")
    general = tls_general(leaf.cert_path, leaf.key_path, **kwargs.pop("general", {}))
    return routers.start(general=general, **kwargs), leaf


def self_signed(certdir, stem: str, key, digest) -> tuple:
    """A self-signed certificate for `key`, signed with `digest` (None for
    Ed25519); returns (cert path, key path)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pgrouter {stem}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, digest))
    cert_path, key_path = certdir / f"{stem}.crt", certdir / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


# ------------------------------------------------- a SCRAM client of our own --
def end_point_hash(der: bytes) -> bytes:
    """RFC 5929 section 4.1, computed here with `cryptography`: the
    certificate's signature hash, SHA-256 instead of MD5 or SHA-1."""
    algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der)
    return digest.finalize()


def open_tls(port: int) -> tuple[wire.RawConn, bytes]:
    """A raw protocol connection over TLS (no verification), and the DER of
    the certificate the server presented."""
    sock, answer = ssl_request(port)
    assert answer == b"S", answer
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    return wire.RawConn(tls), tls.getpeercert(binary_form=True)


def sasl_login(conn: wire.RawConn, mechanism: str, gs2: str, cbind_data: bytes = b"",
               password: str = APP_PASSWORD) -> tuple[list[str], dict | str]:
    """Logs in as app with `mechanism`, gs2 header `gs2` and, in c=, that
    header followed by `cbind_data`. Returns the mechanisms the server
    offered and "ok" or the ErrorResponse's fields."""
    conn.send(wire.startup_message({"user": APP_USER, "database": APP_DB}))
    m = conn.read_msg()
    assert m.kind == b"R" and struct.unpack("!i", m.body[:4])[0] == 10, m
    offered = [x.decode() for x in m.body[4:].split(b"\0") if x]
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = (gs2 + first_bare).encode()
    conn.send(wire.message(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(first)) + first))
    while True:
        m = conn.read_msg()
        if m.kind == b"E":
            return offered, wire.parse_error_fields(m.body)
        assert m.kind == b"R", m
        code = struct.unpack("!i", m.body[:4])[0]
        if code == 0:
            return offered, "ok"
        if code == 12:
            continue
        assert code == 11, code
        server_first = m.body[4:].decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        c = base64.b64encode(gs2.encode() + cbind_data).decode()
        without_proof = f"c={c},r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        conn.send(wire.message(b"p", f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))


def negotiate(port: int, mechanism: str, gs2: str, bind: str = "none",
              password: str = APP_PASSWORD) -> tuple[list[str], dict | str]:
    """[`sasl_login`] on a fresh TLS connection; `bind` is "right" (the
    hash of the certificate presented), "wrong" (another hash) or "none"."""
    conn, der = open_tls(port)
    try:
        data = {"none": b"", "right": end_point_hash(der),
                "wrong": hashlib.sha256(b"someone else's certificate").digest()}[bind]
        return sasl_login(conn, mechanism, gs2, data, password)
    finally:
        conn.close()


# =================================================================== libpq ====
def test_libpq_channel_binding_require_over_tls(routers, ca, certdir):
    router, _ = start_tls_router(routers, ca, certdir)
    with connect(router.dsn(sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use
    # prefer (libpq's default) and disable log in too, over TLS.
    for mode in ("prefer", "disable"):
        with connect(router.dsn(sslmode="require", channel_binding=mode)) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
    # The admin console is a SCRAM login of its own.
    env = router.psql_env(user=ADMIN_USER, password=ADMIN_PASSWORD, db="pgrouter")
    env.update({"PGSSLMODE": "require", "PGCHANNELBINDING": "require"})
    proc = subprocess.run([pg_tool("psql"), "-X", "-A", "-t", "-c", "SHOW VERSION"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_plain_tcp_offers_no_channel_binding(routers, ca, certdir):
    router, _ = start_tls_router(routers, ca, certdir)
    with pytest.raises(psycopg.OperationalError) as err:
        connect(router.dsn(sslmode="disable", channel_binding="require"))
    # libpq refuses by itself, before any password is sent.
    assert "channel binding required, but SSL not in use" in str(err.value), err.value
    with connect(router.dsn(sslmode="disable")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    conn = wire.RawConn.open(router.port)
    try:
        conn.send(wire.startup_message({"user": APP_USER, "database": APP_DB}))
        m = conn.read_msg()
        assert m.kind == b"R" and m.body == struct.pack("!i", 10) + PLAIN.encode() + b"\0\0", m
    finally:
        conn.close()


def test_wrong_password_with_channel_binding_is_refused(routers, ca, certdir):
    """libpq does not expose a failed login's SQLSTATE; the hand-made client
    below checks it is 28P01 (test_a_wrong_password_with_binding_...)."""
    router, _ = start_tls_router(routers, ca, certdir)
    with pytest.raises(psycopg.OperationalError) as err:
        connect(router.dsn(password="wrong", sslmode="require", channel_binding="require"))
    assert 'FATAL:  password authentication failed for user "app"' in str(err.value), err.value


def test_asyncpg_over_tls(routers, ca, certdir):
    """asyncpg has no channel binding (it answers SCRAM-SHA-256 with gs2
    flag `n`): it must still log in over TLS."""
    router, _ = start_tls_router(routers, ca, certdir)

    async def main():
        # An SSLContext makes TLS required, and this one verifies the router.
        ctx = ssl.create_default_context(cafile=str(ca.cert_path))
        conn = await aconnect(router, ssl=ctx, statement_cache_size=0)
        try:
            return await conn.fetchval("SELECT 7")
        finally:
            await conn.close()
    seven = run_async(main())
    assert seven == 7


def test_stored_secret_keys_recovered_from_a_bound_proof(routers, ca, certdir, primary):
    """users.toml holds pg_authid's secret and no server_password: the router
    logs in to PostgreSQL with the keys recovered from the client's proof,
    which SCRAM-SHA-256-PLUS binds but does not change."""
    secret = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    router, _ = start_tls_router(routers, ca, certdir, users=[app_user(password=secret)])
    with connect(router.dsn(sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    with pytest.raises(psycopg.OperationalError) as err:
        connect(router.dsn(password="wrong", sslmode="require", channel_binding="require"))
    assert 'FATAL:  password authentication failed for user "app"' in str(err.value), err.value


@pytest.mark.parametrize("kind", ["rsa-sha1", "rsa-sha384", "rsa-sha512", "ecdsa-sha384"])
def test_the_certificate_hash_follows_its_signature(routers, certdir, kind):
    """libpq computes the binding data from the certificate it received (its
    signature's hash, SHA-256 for SHA-1); the router's must be the same."""
    key_kind, digest = kind.split("-")
    if digest == "sha1":
        # `cryptography` no longer signs with SHA-1; the openssl tool does.
        cert, key_path = certdir / "sha1.crt", certdir / "sha1.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha1",
                        "-keyout", str(key_path), "-out", str(cert), "-days", "30",
                        "-subj", "/CN=pgrouter sha1"], check=True, capture_output=True, timeout=60)
        assert isinstance(x509.load_pem_x509_certificate(cert.read_bytes()).signature_hash_algorithm,
                          hashes.SHA1)
    else:
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if key_kind == "rsa"
               else ec.generate_private_key(ec.SECP384R1()))
        cert, key_path = self_signed(certdir, kind, key, getattr(hashes, digest.upper())())
    router = routers.start(general=tls_general(cert, key_path))
    with connect(router.dsn(sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_certificate_without_a_signature_hash_offers_no_plus(routers, certdir):
    """Ed25519 names no hash, so tls-server-end-point is undefined (RFC
    5929): the router offers SCRAM-SHA-256 only (and says so in its log);
    channel_binding=require is refused by libpq, prefer logs in."""
    cert, key_path = self_signed(certdir, "ed25519", ed25519.Ed25519PrivateKey.generate(), None)
    router = routers.start(general=tls_general(cert, key_path))
    assert "SCRAM-SHA-256-PLUS is not offered" in router.log()
    with connect(router.dsn(sslmode="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError) as err:
        connect(router.dsn(sslmode="require", channel_binding="require"))
    assert "channel binding" in str(err.value), err.value
    offered, outcome = negotiate(router.port, PLAIN, "y,,")
    assert (offered, outcome) == ([PLAIN], "ok")


def test_a_reloaded_certificate_is_the_one_bound_to(routers, ca, certdir):
    router, _ = start_tls_router(routers, ca, certdir)
    with connect(router.dsn(sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # Renewal under the same file names with another hash (SHA-384), then SIGHUP.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    self_signed(certdir, "router", key, hashes.SHA384())
    router.signal(signal.SIGHUP)
    wait_until(lambda: peer_certificate(router.port)[0] == "pgrouter router", 10,
               what="the router to present the new certificate")
    with connect(router.dsn(sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    _, der = open_tls(router.port)
    assert len(end_point_hash(der)) == 48


# ======================================== the negotiation, against PostgreSQL ===
NEGOTIATION = [
    # (what, mechanism, gs2 header, binding data sent)
    ("bound", PLUS, PLUS_GS2, "right"),
    ("not bound, client cannot bind", PLAIN, "n,,", "none"),
    ("downgrade: client could bind but was told it cannot", PLAIN, "y,,", "none"),
    ("binding data with the plain mechanism", PLAIN, PLUS_GS2, "right"),
    ("PLUS without binding data", PLUS, "n,,", "none"),
    ("PLUS with flag y", PLUS, "y,,", "none"),
    ("an unknown channel binding type", PLUS, "p=tls-unique,,", "right"),
    ("bound to another certificate", PLUS, PLUS_GS2, "wrong"),
]


@pytest.mark.parametrize("what,mechanism,gs2,bind", NEGOTIATION, ids=[n[0] for n in NEGOTIATION])
def test_negotiation_as_postgres_answers_it(routers, ca, certdir, tls_postgres,
                                            what, mechanism, gs2, bind):
    router, _ = start_tls_router(routers, ca, certdir)
    pg_offered, pg_outcome = negotiate(tls_postgres.primary.port, mechanism, gs2, bind)
    offered, outcome = negotiate(router.port, mechanism, gs2, bind)
    assert offered == pg_offered == [PLUS, PLAIN]
    if pg_outcome == "ok":
        assert outcome == "ok", outcome
        return
    assert isinstance(outcome, dict), f"{what}: PostgreSQL refused ({pg_outcome}), the router did not"
    assert outcome["S"] == "FATAL", outcome
    if bind == "wrong":
        assert pg_outcome["C"] == "28000", pg_outcome
    assert outcome["C"] == pg_outcome["C"], (pg_outcome, outcome)
    if pg_outcome["M"] == "malformed SCRAM message":
        # PostgreSQL's detail is the router's message.
        detail = pg_outcome["D"].rstrip(".")
        assert outcome["M"].lower().endswith(detail.lower()), (pg_outcome, outcome)
    else:
        assert outcome["M"] == pg_outcome["M"], (pg_outcome, outcome)


def test_a_wrong_password_with_binding_as_postgres_answers_it(routers, ca, certdir, tls_postgres):
    router, _ = start_tls_router(routers, ca, certdir)
    _, pg_outcome = negotiate(tls_postgres.primary.port, PLUS, PLUS_GS2, "right", "wrong")
    _, outcome = negotiate(router.port, PLUS, PLUS_GS2, "right", "wrong")
    assert outcome["C"] == pg_outcome["C"] == "28P01", (pg_outcome, outcome)
    assert outcome["M"] == pg_outcome["M"] == 'password authentication failed for user "app"'
