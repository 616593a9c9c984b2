"""Clients whose client_encoding is not UTF8 (README "Query text is
analysed as UTF-8"): the router reads LATIN1, WIN1252, EUC_JP and the
other encodings whose characters never contain ASCII bytes by transcoding
to UTF-8 for its own analysis, while the server reads exactly the client's
bytes and converts them itself. Checked against the stored UTF-8 read
straight from PostgreSQL, so a byte changed on the way would show."""
from __future__ import annotations

import os
import shutil
import subprocess

import psycopg
import pytest

from harness.clients import connect, sqlstate
from harness.pg import APP_DB, APP_PASSWORD, APP_USER

WORDS = ["café", "naïve", "Ærø ß ÿ"]


def stored(primary, table):
    """The table's texts as PostgreSQL stores them (its database is UTF8)."""
    with primary.connect(APP_DB) as conn:
        return [r[0] for r in conn.execute(f"SELECT v FROM {table} ORDER BY id").fetchall()]


def make_table(primary, table):
    with primary.connect(APP_DB) as conn:
        conn.execute(f"CREATE TABLE {table} (id serial, v text)")
        conn.execute(f"GRANT ALL ON {table}, {table}_id_seq TO app")


def client(router, protocol, **kwargs):
    if protocol == "simple":
        kwargs["cursor_factory"] = psycopg.ClientCursor
    if protocol == "prepared":
        kwargs["prepare_threshold"] = 0
    return connect(router.dsn(), **kwargs)


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_latin1_text_is_stored_and_read_back(routers, primary, table, mode, protocol):
    router = routers.start(general={"pool_mode": mode})
    make_table(primary, table)
    with client(router, protocol) as conn:
        conn.execute("SET client_encoding TO 'LATIN1'")
        assert conn.info.encoding == "iso8859-1"
        for word in WORDS:
            conn.execute(f"INSERT INTO {table} (v) VALUES (%s)", (word,))
            # The word in the statement's own text too (a literal).
            conn.execute(f"INSERT INTO {table} (v) VALUES ('{word}')")
        rows = conn.execute(f"SELECT v FROM {table} WHERE v = %s OR v LIKE 'na%%'",
                            ("café",)).fetchall()
        assert sorted(r[0] for r in rows) == ["café", "café", "naïve", "naïve"]
        # A statement the router reads to route: a write in a transaction.
        with conn.transaction():
            conn.execute(f"UPDATE {table} SET v = v || 'é' WHERE v = 'café'")
    assert stored(primary, table) == ["caféé", "caféé", "naïve", "naïve", "Ærø ß ÿ", "Ærø ß ÿ"]


def test_startup_client_encoding_win1252(router, primary, table):
    """client_encoding in the startup packet (libpq's client_encoding)."""
    make_table(primary, table)
    with connect(router.dsn(), client_encoding="WIN1252") as conn:
        assert conn.info.parameter_status("client_encoding") == "WIN1252"
        conn.execute(f"INSERT INTO {table} (v) VALUES ('€ café'), (%s)", ("„quoted“ naïve",))
        assert conn.execute(f"SELECT v FROM {table} WHERE v LIKE '€%%'").fetchone() == ("€ café",)
    assert stored(primary, table) == ["€ café", "„quoted“ naïve"]


def test_byte_the_encoding_lacks_is_refused_and_the_session_goes_on(router):
    """0x81 is no WIN1252 character (PostgreSQL refuses it too): the router
    cannot read such text and refuses it (0A000) without forwarding it."""
    with connect(router.dsn(), client_encoding="WIN1252") as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(b"SELECT 'caf\x81'")
        assert sqlstate(err.value) == "0A000" and "WIN1252" in str(err.value)
        assert conn.execute("SELECT 'ok é'").fetchone() == ("ok é",)


def test_euc_jp(router, primary, table):
    make_table(primary, table)
    with connect(router.dsn()) as conn:
        conn.execute("SET client_encoding TO 'EUC_JP'")
        conn.execute(f"INSERT INTO {table} (v) VALUES ('こんにちは'), (%s)", ("ｶﾀｶﾅ 漢字",))
        rows = conn.execute(f"SELECT v FROM {table} WHERE v <> %s ORDER BY id", ("x",)).fetchall()
        assert rows == [("こんにちは",), ("ｶﾀｶﾅ 漢字",)]
    assert stored(primary, table) == ["こんにちは", "ｶﾀｶﾅ 漢字"]


def test_names_and_settings_the_router_carries_to_other_connections(routers, primary, table):
    """In transaction mode the router itself writes SQL from the client's
    text: a SQL-level PREPARE re-created on another server connection, and
    the session's settings replayed there. That SQL reaches the server in
    the session's encoding (a UTF-8 'é' read as LATIN1 would be 'Ã©')."""
    router = routers.start(general={"pool_mode": "transaction", "default_pool_size": 4})
    make_table(primary, table)
    with connect(router.dsn()) as conn, connect(router.dsn()) as other:
        conn.execute("SET client_encoding TO 'LATIN1'")
        conn.execute("SET pgr_test.note TO 'café'")
        conn.execute(f"PREPARE \"insère\" AS INSERT INTO {table} (v) VALUES ($1 || ' à')")
        for i in range(6):
            # Another client in a transaction takes a server now and then,
            # so this session meets other connections.
            with other.transaction():
                other.execute("SELECT 1")
                conn.execute("EXECUTE \"insère\"('naïve')")
                assert conn.execute("SHOW pgr_test.note").fetchone() == ("café",)
        # A protocol-level statement with a name beyond ASCII.
        with conn.cursor() as cur:
            cur.execute("SELECT %s::text || 'ü'", ("é",), prepare=True)
            assert cur.fetchone() == ("éü",)
    assert stored(primary, table) == ["naïve à"] * 6


def test_psql_with_pgclientencoding_latin1(router, primary, table, tmp_path):
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    make_table(primary, table)
    script = tmp_path / "latin1.sql"
    script.write_bytes(f"INSERT INTO {table} (v) VALUES ('café');\n"
                       f"INSERT INTO {table} (v) VALUES ('naïve') RETURNING v;\n".encode("latin-1"))
    env = {**os.environ, "PGCLIENTENCODING": "LATIN1", "PGPASSWORD": APP_PASSWORD}
    out = subprocess.run([psql, "-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                          "-p", str(router.port), "-U", APP_USER, "-d", APP_DB, "-f", str(script)],
                         env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "naïve".encode("latin-1")
    assert stored(primary, table) == ["café", "naïve"]
