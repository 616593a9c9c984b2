"""TLS on both sides of the router (SPEC §3 [general]: tls_certificate,
tls_private_key, client_tls, server_tls, server_tls_ca).

Client side: the router answers SSLRequest 'S' with a certificate from a CA
made here (harness/certs.py), psycopg and psql connect with sslmode=require and
verify-full, `client_tls = require` refuses plain clients with 28000,
`client_tls = disable` answers 'N', bytes smuggled after an SSLRequest are
refused (08P01), bad certificate files stop start-up, and the certificate is
re-read on reload.

Server side: a dedicated PostgreSQL cluster with `ssl = on` whose pg_hba only
accepts TCP logins over TLS (harness/tls.py); the router reaches it with
server_tls = require / verify-full / prefer, fails cleanly with a wrong CA, and
passes the server's refusal on with server_tls = disable.
"""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

from harness import wire
from harness.certs import CertAuthority
from harness.clients import connect
from harness.pg import APP_DB, APP_PASSWORD, APP_USER, conninfo, pg_tool
from harness.router import RouterFactory
from harness.tls import (SSL_REQUEST_BYTES, TlsPgCluster, peer_certificate, read_error_response,
                         ssl_request)
from harness.util import wait_until

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret"


# ------------------------------------------------------------------ fixtures --
@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertAuthority.create(tmp_path_factory.mktemp("ca"), "pgrouter test CA")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    """A CA that signed nothing the router or the TLS cluster present."""
    return CertAuthority.create(tmp_path_factory.mktemp("other-ca"), "some other CA")


@pytest.fixture
def certdir(routers):
    d = routers.base_dir / "certs"
    d.mkdir()
    return d


def router_cert(ca, certdir, cn="pgrouter A"):
    return ca.issue(certdir, cn, dns=["localhost"], ips=["127.0.0.1"], stem="router")


def tls_general(leaf, **extra) -> dict:
    gen = {"tls_certificate": str(leaf.cert_path), "tls_private_key": str(leaf.key_path),
           "admin_user": ADMIN_USER, "admin_password": ADMIN_PASSWORD}
    gen.update(extra)
    return gen


@pytest.fixture(scope="module")
def tls_cluster(ca):
    c = TlsPgCluster(ca).start()
    try:
        yield c
    finally:
        keep = os.environ.get("PGROUTER_KEEP_TMP") == "1"
        c.teardown(keep_dir=keep)
        if keep:
            print(f"\nkept TLS cluster directory {c.tmpdir}")


@pytest.fixture
def tls_routers(tls_cluster, request):
    """Routers whose `app` database is the TLS-only cluster."""
    safe = "".join(c if c.isalnum() else "_" for c in request.node.name)[:60]
    base = tls_cluster.tmpdir / "routers" / f"{safe}-{uuid.uuid4().hex[:6]}"
    base.mkdir(parents=True)
    factory = RouterFactory(tls_cluster, base)
    yield factory
    problems = factory.finish()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


# ------------------------------------------------------------------- helpers --
def ssl_in_use(conn: psycopg.Connection) -> bool:
    return bool(conn.pgconn.ssl_in_use)


def admin_rows(router, command: str, sslmode: str = "prefer") -> list[dict]:
    """Run an admin-console command through psql; rows as dicts keyed by column."""
    env = router.psql_env(user=ADMIN_USER, password=ADMIN_PASSWORD, db="pgrouter")
    env["PGSSLMODE"] = sslmode
    proc = subprocess.run([pg_tool("psql"), "-X", "-A", "-F", "\t", "-P", "footer=off",
                           "-v", "ON_ERROR_STOP=1", "-c", command],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"psql {command!r} failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line]
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def psql(router, sql: str, **env_extra) -> subprocess.CompletedProcess:
    env = router.psql_env()
    env.update(env_extra)
    return subprocess.run([pg_tool("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          env=env, capture_output=True, text=True, timeout=30)


def error_text(exc: BaseException) -> str:
    return str(exc)


# =========================================================== client side ====
def test_sslmode_require_and_verify_full(routers, ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf))
    with connect(router.dsn(sslmode="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert ssl_in_use(conn)
    for host in ("localhost", "127.0.0.1"):
        dsn = conninfo(host=host, port=router.port, dbname=APP_DB, user=APP_USER,
                       password=APP_PASSWORD, sslmode="verify-full", sslrootcert=str(ca.cert_path),
                       connect_timeout=10)
        with connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert ssl_in_use(conn)
            assert conn.info.parameter_status("server_version").startswith("15")
    # The default client_tls ("allow") still lets plain clients in.
    with connect(router.dsn(sslmode="disable")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not ssl_in_use(conn)
    with connect(router.dsn(sslmode="prefer")) as conn:
        assert ssl_in_use(conn)
    assert peer_certificate(router.port)[0] == "pgrouter A"


def test_verify_full_refuses_wrong_ca_and_wrong_name(routers, ca, other_ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf))
    dsn = conninfo(host="localhost", port=router.port, dbname=APP_DB, user=APP_USER,
                   password=APP_PASSWORD, sslmode="verify-full",
                   sslrootcert=str(other_ca.cert_path), connect_timeout=10)
    with pytest.raises(psycopg.OperationalError) as err:
        connect(dsn)
    assert "certificate verify failed" in error_text(err.value), error_text(err.value)
    # Right CA, but a host name the certificate does not carry.
    dsn = conninfo(host="db.example.com", hostaddr="127.0.0.1", port=router.port, dbname=APP_DB,
                   user=APP_USER, password=APP_PASSWORD, sslmode="verify-full",
                   sslrootcert=str(ca.cert_path), connect_timeout=10)
    with pytest.raises(psycopg.OperationalError) as err:
        connect(dsn)
    assert "db.example.com" in error_text(err.value), error_text(err.value)
    # The router is fine afterwards.
    assert router.alive()
    with connect(router.dsn(sslmode="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_admin_show_clients_tls_column(routers, ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf))
    with connect(router.dsn(sslmode="require", application_name="tls_client")) as tls_conn, \
            connect(router.dsn(sslmode="disable", application_name="plain_client")) as plain_conn:
        tls_conn.execute("SELECT 1")
        plain_conn.execute("SELECT 1")
        rows = admin_rows(router, "SHOW CLIENTS", sslmode="require")
        by_app = {r.get("application_name"): r for r in rows}
        assert "tls_client" in by_app and "plain_client" in by_app, rows
        assert by_app["tls_client"]["tls"] == "t", by_app["tls_client"]
        assert by_app["plain_client"]["tls"] == "f", by_app["plain_client"]


def test_psql_sslmode_require(routers, ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf))
    proc = psql(router, "SELECT 40 + 2", PGSSLMODE="require")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
    proc = psql(router, r"\conninfo", PGSSLMODE="verify-full", PGSSLROOTCERT=str(ca.cert_path),
                PGHOST="localhost")
    assert proc.returncode == 0, proc.stderr
    assert "SSL connection" in proc.stdout, proc.stdout


def test_client_tls_require_refuses_plain_clients(routers, ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf, client_tls="require"))
    with pytest.raises(psycopg.OperationalError) as err:
        connect(router.dsn(sslmode="disable"))
    text = error_text(err.value)
    assert "TLS" in text and "required" in text, text
    # The raw ErrorResponse: SQLSTATE 28000.
    raw = wire.RawConn.open(router.port)
    try:
        with pytest.raises(wire.ServerError) as serr:
            raw.startup(APP_USER, APP_DB, APP_PASSWORD)
        assert serr.value.sqlstate == "28000", serr.value.fields
        assert "TLS is required" in serr.value.message, serr.value.fields
        assert serr.value.fields.get("S") == "FATAL", serr.value.fields
    finally:
        raw.close()
    # psql too.
    proc = psql(router, "SELECT 1", PGSSLMODE="disable")
    assert proc.returncode != 0 and "TLS is required" in proc.stderr, proc.stderr
    # TLS clients are served, including sslmode=prefer (libpq tries TLS first).
    with connect(router.dsn(sslmode="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with connect(router.dsn(sslmode="prefer")) as conn:
        assert ssl_in_use(conn)
    # The admin console is reached over TLS as well.
    assert admin_rows(router, "SHOW VERSION", sslmode="require")


def test_client_tls_disable_answers_n(routers, ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf, client_tls="disable"))
    with pytest.raises(psycopg.OperationalError) as err:
        connect(router.dsn(sslmode="require"))
    assert "SSL" in error_text(err.value) or "TLS" in error_text(err.value), error_text(err.value)
    with connect(router.dsn(sslmode="prefer")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not ssl_in_use(conn)
    # On the wire: 'N', and the same connection then logs in in plain text.
    raw = wire.RawConn.open(router.port)
    try:
        raw.send(SSL_REQUEST_BYTES)
        assert raw.read_byte() == b"N"
        raw.startup(APP_USER, APP_DB, APP_PASSWORD)
        rows, _tags, _ = raw.simple_query("SELECT 7")
        assert rows == [["7"]]
    finally:
        raw.close()


def test_no_certificate_means_no_tls(routers):
    router = routers.start()
    sock, answer = ssl_request(router.port)
    sock.close()
    assert answer == b"N"
    with pytest.raises(psycopg.OperationalError):
        connect(router.dsn(sslmode="require"))


def test_unencrypted_bytes_after_ssl_request_are_refused(routers, ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf))
    startup = wire.startup_message({"user": APP_USER, "database": APP_DB})
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    try:
        # One write: the SSLRequest and, before any answer, a plain StartupMessage.
        sock.sendall(SSL_REQUEST_BYTES + startup)
        fields = read_error_response(sock)
        assert fields.get("C") == "08P01", fields
        # ... and the connection is closed.
        sock.settimeout(5)
        rest = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        assert rest == b"", rest
    finally:
        sock.close()
    assert router.alive()
    with connect(router.dsn(sslmode="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_second_ssl_request_inside_tls_is_refused(routers, ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf))
    sock, answer = ssl_request(router.port)
    assert answer == b"S"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca.cert_path))
    with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(SSL_REQUEST_BYTES)
        fields = read_error_response(tls)
        assert fields.get("C") == "08P01", fields


@pytest.mark.parametrize("case", ["missing_cert", "missing_key", "garbage_cert", "garbage_key",
                                  "mismatched_key"])
def test_bad_certificate_files_stop_startup(routers, ca, certdir, case):
    leaf = router_cert(ca, certdir)
    other = ca.issue(certdir, "other", dns=["localhost"], stem="other")
    cert, key = str(leaf.cert_path), str(leaf.key_path)
    named = None
    if case == "missing_cert":
        cert = named = str(certdir / "no-such-cert.pem")
    elif case == "missing_key":
        key = named = str(certdir / "no-such-key.pem")
    elif case == "garbage_cert":
        (certdir / "garbage.crt").write_text("this is not a certificate\n")
        cert = named = str(certdir / "garbage.crt")
    elif case == "garbage_key":
        (certdir / "garbage.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        key = named = str(certdir / "garbage.key")
    elif case == "mismatched_key":
        key = named = str(other.key_path)
    router = routers.start(general={"tls_certificate": cert, "tls_private_key": key}, wait=False)
    router.write_files()
    proc = subprocess.run([str(router.binary), "--config", str(router.config_path),
                           "--users", str(router.users_path)],
                          cwd=router.workdir, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "RUST_LOG": "info"}, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"pgrouter started with {case}:\n{out}"
    assert os.path.basename(named) in out, f"the log does not name {named}:\n{out}"


@pytest.mark.parametrize("case", ["missing_cert", "garbage_cert"])
def test_check_reports_bad_certificate_files(routers, ca, certdir, case):
    """`pgrouter check` (SPEC §2: validate both files, exit 1 on problems)
    should find what makes the router refuse to start."""
    leaf = router_cert(ca, certdir)
    cert = certdir / "no-such-cert.pem"
    if case == "garbage_cert":
        cert = certdir / "garbage.crt"
        cert.write_text("this is not a certificate\n")
    router = routers.start(general={"tls_certificate": str(cert),
                                    "tls_private_key": str(leaf.key_path)}, wait=False)
    router.write_files()
    check = subprocess.run([str(router.binary), "check", "--config", str(router.config_path),
                            "--users", str(router.users_path)],
                           cwd=router.workdir, capture_output=True, text=True, timeout=30)
    out = check.stdout + check.stderr
    assert check.returncode != 0, f"pgrouter check accepted {case}:\n{out}"
    assert cert.name in out, out


# ------------------------------------------------------------------ reload --
def test_certificate_reload_on_sighup(routers, ca, certdir):
    leaf_a = router_cert(ca, certdir, "pgrouter A")
    router = routers.start(general=tls_general(leaf_a))
    assert peer_certificate(router.port) == ("pgrouter A", leaf_a.serial)
    with connect(router.dsn(sslmode="require")) as old:
        assert old.execute("SELECT 1").fetchone() == (1,)
        # Renewal: new files under the same names, then SIGHUP.
        leaf_b = ca.issue(certdir, "pgrouter B", dns=["localhost"], ips=["127.0.0.1"], stem="router")
        assert leaf_b.serial != leaf_a.serial
        router.signal(signal.SIGHUP)
        wait_until(lambda: peer_certificate(router.port) == ("pgrouter B", leaf_b.serial), 10,
                   what="the router to present certificate B")
        # The connection opened before the reload keeps working, still over TLS.
        for i in range(5):
            assert old.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        assert ssl_in_use(old)
        dsn = conninfo(host="localhost", port=router.port, dbname=APP_DB, user=APP_USER,
                       password=APP_PASSWORD, sslmode="verify-full", sslrootcert=str(ca.cert_path),
                       connect_timeout=10)
        with connect(dsn) as new:
            assert new.execute("SELECT 1").fetchone() == (1,)
    assert router.alive()


def test_tls_enabled_and_switched_to_require_by_reload(routers, ca, certdir):
    router = routers.start()
    with pytest.raises(psycopg.OperationalError):
        connect(router.dsn(sslmode="require"))
    leaf = router_cert(ca, certdir)
    plain = connect(router.dsn(sslmode="disable"))
    try:
        cfg = dict(router.config)
        cfg["general"] = {**router.config["general"], **tls_general(leaf)}
        router.write_files(config=cfg)
        router.reload()

        def tls_works():
            with connect(router.dsn(sslmode="require")) as c:
                return ssl_in_use(c)
        wait_until(tls_works, 10, what="TLS to be offered after reload")
        # Now require TLS: new plain logins are refused, the open plain session lives on.
        cfg = dict(router.config)
        cfg["general"] = {**router.config["general"], "client_tls": "require"}
        router.write_files(config=cfg)
        router.reload()

        def plain_refused():
            try:
                connect(router.dsn(sslmode="disable")).close()
                return False
            except psycopg.OperationalError as exc:
                return "TLS is required" in str(exc)
        wait_until(plain_refused, 10, what="plain logins to be refused after reload")
        assert plain.execute("SELECT 1").fetchone() == (1,)
    finally:
        plain.close()


def test_reload_with_missing_certificate_keeps_the_old_one(routers, ca, certdir):
    leaf = router_cert(ca, certdir, "pgrouter A")
    router = routers.start(general=tls_general(leaf))
    missing = certdir / "renewed-but-not-there.crt"
    cfg = dict(router.config)
    cfg["general"] = {**router.config["general"], "tls_certificate": str(missing)}
    router.write_files(config=cfg)
    router.reload()
    wait_until(lambda: missing.name in router.log(), 10,
               what="the failed reload to be logged with the file name")
    assert router.alive()
    assert peer_certificate(router.port) == ("pgrouter A", leaf.serial)
    with connect(router.dsn(sslmode="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ------------------------------------------------------------------- load --
def test_tls_under_load(routers, ca, certdir):
    leaf = router_cert(ca, certdir)
    router = routers.start(general=tls_general(leaf, client_tls="require"))
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def worker(n: int):
        conn = None
        try:
            for i in range(100):
                if conn is None or i % 25 == 0:  # a fresh handshake now and then
                    if conn is not None:
                        conn.close()
                    conn = connect(router.dsn(sslmode="require", application_name=f"w{n}"))
                    assert ssl_in_use(conn)
                v = n * 1000 + i
                got = conn.execute("SELECT %s::int, repeat('x', 1000)", (v,)).fetchone()
                assert got == (v, "x" * 1000), got
                with lock:
                    done[0] += 1
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            with lock:
                errors.append(f"worker {n}: {exc!r}")
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(10)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "workers still running after 90s"
    assert not errors, "\n".join(errors)
    assert done[0] == 1000, done
    assert time.monotonic() - start < 90


# =========================================================== server side ====
def test_tls_cluster_refuses_plain_tcp(tls_cluster):
    """The fixture itself: plain TCP logins are refused, TLS logins work."""
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(tls_cluster.primary.dsn(sslmode="disable"))
    assert "no encryption" in str(err.value), str(err.value)
    with psycopg.connect(tls_cluster.primary.dsn(sslmode="require")) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def _server_ssl_rows(cluster):
    return cluster.primary.sql(
        "SELECT a.pid, s.ssl, s.version FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        "WHERE a.usename = 'app' AND a.backend_type = 'client backend'", db="postgres")


@pytest.mark.parametrize("mode", ["require", "prefer"])
def test_server_tls_require_and_prefer(tls_routers, tls_cluster, mode):
    router = tls_routers.start(general={"server_tls": mode})
    with connect(router.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row[0] is True, row
        conn.execute("BEGIN")
        conn.execute("SELECT 2")
        rows = _server_ssl_rows(tls_cluster)
        assert rows and all(r[1] for r in rows), rows
        conn.execute("COMMIT")


def test_server_tls_shown_by_admin(tls_routers):
    router = tls_routers.start(general={"server_tls": "require", "admin_user": ADMIN_USER,
                                        "admin_password": ADMIN_PASSWORD})
    with connect(router.dsn()) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        during = admin_rows(router, "SHOW SERVERS")
        conn.execute("COMMIT")
    after = admin_rows(router, "SHOW SERVERS")
    active = [(s["state"], s["backend_pid"], s["tls"]) for s in during
              if s.get("user") == APP_USER and s.get("state") == "active"]
    idle = [(s["state"], s["backend_pid"], s["tls"]) for s in after
            if s.get("user") == APP_USER and s.get("state") == "idle"]
    assert active and idle, (during, after)
    # Every one of them is a TLS connection (pg_stat_ssl says so, see above).
    assert all(t == "t" for _s, _p, t in active + idle), f"SHOW SERVERS tls column: {active + idle}"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_server_tls_verify_full(tls_routers, tls_cluster, ca, host):
    dbs = [{"name": APP_DB, "host": host, "port": tls_cluster.primary.port,
            "database_name": APP_DB, "role": "primary"}]
    router = tls_routers.start(general={"server_tls": "verify-full",
                                        "server_tls_ca": str(ca.cert_path)}, databases=dbs)
    with connect(router.dsn()) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_server_tls_verify_full_wrong_ca(tls_routers, other_ca):
    router = tls_routers.start(general={"server_tls": "verify-full",
                                        "server_tls_ca": str(other_ca.cert_path),
                                        "connect_timeout_ms": 3000, "checkout_timeout_ms": 5000})
    t0 = time.monotonic()
    with pytest.raises(psycopg.Error) as err:
        with connect(router.dsn()) as conn:
            conn.execute("SELECT 1")
    elapsed = time.monotonic() - t0
    text = error_text(err.value)
    assert any(w in text.lower() for w in ("certificate", "tls")), text
    assert elapsed < 15, f"the error took {elapsed:.1f}s"
    assert router.alive()
    # Still answering (and still refusing) afterwards.
    with pytest.raises(psycopg.Error):
        with connect(router.dsn()) as conn:
            conn.execute("SELECT 1")
    assert router.alive()


def test_server_tls_verify_full_wrong_ca_fixed_by_reload(tls_routers, ca, other_ca):
    router = tls_routers.start(general={"server_tls": "verify-full",
                                        "server_tls_ca": str(other_ca.cert_path)})
    with pytest.raises(psycopg.Error):
        with connect(router.dsn()) as conn:
            conn.execute("SELECT 1")
    cfg = dict(router.config)
    cfg["general"] = {**router.config["general"], "server_tls_ca": str(ca.cert_path)}
    router.write_files(config=cfg)
    router.reload()

    def works():
        with connect(router.dsn()) as c:
            return c.execute("SELECT 1").fetchone() == (1,)
    wait_until(works, 15, what="verify-full to work after fixing server_tls_ca")


def test_server_tls_disable_passes_the_refusal_on(tls_routers):
    router = tls_routers.start(general={"server_tls": "disable"})
    with pytest.raises(psycopg.Error) as err:
        with connect(router.dsn()) as conn:
            conn.execute("SELECT 1")
    text = error_text(err.value)
    assert "pg_hba.conf" in text or "no encryption" in text, text
    assert router.alive()


def test_server_tls_legs_stream_a_large_cross_shard_result(tls_routers, tls_cluster):
    """A fan-out over TLS server connections: while a large result streams,
    the legs' TCP sockets (under TLS) wake the router only for 64 KiB at a
    time (`net/low_water.rs`), with decrypted bytes possibly held in the TLS
    layer. The whole result arrives, and small statements after it (same
    transaction, next client on the same connections) are answered. Both
    "shards" are the one TLS cluster, so every row comes twice."""
    tls_cluster.primary.sql("CREATE TABLE tls_big (id bigint NOT NULL, note text)")
    tls_cluster.primary.sql("INSERT INTO tls_big SELECT k, repeat(md5(k::text), 3) "
                            "FROM generate_series(1, 60000) k")
    tls_cluster.primary.sql("GRANT SELECT ON tls_big TO app")
    port = tls_cluster.primary.port
    dbs = [{"name": "app", "host": "127.0.0.1", "port": port, "database_name": "app",
            "role": "primary", "shard": i} for i in range(2)]
    router = tls_routers.start(general={"server_tls": "require", "default_pool_size": 1}, databases=dbs,
                               sharded_tables=[{"database": "app", "name": "tls_big", "column": "id",
                                                "data_type": "bigint"}])
    try:
        with connect(router.dsn(), autocommit=False) as conn:
            rows = conn.execute("SELECT id, note FROM tls_big").fetchall()
            assert len(rows) == 120000 and len({r[0] for r in rows}) == 60000
            assert conn.execute("SELECT note FROM tls_big WHERE id = 7").fetchone()[0].startswith(
                "8f14e45f")
            assert conn.execute("SELECT count(*) FROM tls_big WHERE id <= 10").fetchone() == (20,)
            conn.commit()
        with connect(router.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM tls_big WHERE id <= 3").fetchone() == (6,)
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() \
                == (True,)
    finally:
        tls_cluster.primary.sql("DROP TABLE tls_big")
