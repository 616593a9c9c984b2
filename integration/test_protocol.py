"""The wire protocol at the byte level: special requests, malformed input,
oversize messages. A bad connection ends alone; the router never dies."""
from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import psycopg
import pytest

from harness import wire
from harness.clients import connect, sqlstate

SMALL_MAX = 1024 * 1024  # max_message_size for these tests


@pytest.fixture
def small_router(routers):
    # One server connection: a bystander always gets the very server
    # connection a misbehaving client used, so nothing can leak unseen.
    return routers.start(general={"max_message_size": SMALL_MAX, "default_pool_size": 1})


def assert_ended_with_08P01_or_closed(conn: wire.RawConn, timeout: float = 10):
    """The router answers a protocol violation with ErrorResponse 08P01 and
    closes, or just closes. Any other error code is wrong."""
    msgs = conn.read_until_eof(timeout)
    errors = wire.errors_in(msgs)
    for e in errors:
        assert e.get("C") == "08P01", f"expected SQLSTATE 08P01, got {e}"
    assert all(m.kind in (b"E", b"N") for m in msgs), [m.kind for m in msgs]
    return errors


def assert_others_fine(router, bystander: psycopg.Connection):
    assert bystander.execute("SELECT 'bystander ok'").fetchone() == ("bystander ok",)
    with connect(router.dsn()) as conn:
        assert conn.execute("SELECT 'new client ok'").fetchone() == ("new client ok",)
    assert router.alive()


def test_ssl_request_answered_n(router):
    conn = wire.RawConn.open(router.port)
    conn.send(wire.special_request(wire.SSL_REQUEST))
    assert conn.read_byte() == b"N"
    # Then a normal startup on the same socket.
    conn.startup("app", "app", "app-secret")
    assert conn.simple_query("SELECT 1")[0] == [["1"]]
    conn.close()


def test_gssenc_request_answered_n(router):
    conn = wire.RawConn.open(router.port)
    conn.send(wire.special_request(wire.GSSENC_REQUEST))
    assert conn.read_byte() == b"N"
    conn.startup("app", "app", "app-secret")
    assert conn.simple_query("SELECT 2")[0] == [["2"]]
    conn.close()


def test_libpq_sslmode_prefer_and_disable(router):
    for mode in ("prefer", "disable"):
        with psycopg.connect(router.dsn(sslmode=mode), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_garbage_before_startup(small_router, seed):
    router = small_router
    bystander = connect(router.dsn())
    try:
        rnd = random.Random(seed)
        junk = bytes(rnd.getrandbits(8) for _ in range(4096))
        conn = wire.RawConn.open(router.port)
        try:
            conn.send(junk)
        except OSError:
            pass  # the router may already have hung up
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        assert_ended_with_08P01_or_closed(conn)
        conn.close()
        assert_others_fine(router, bystander)
    finally:
        bystander.close()


@pytest.mark.parametrize("payload", [
    pytest.param(struct.pack("!i", 3) + b"\x00" * 16, id="length-below-minimum"),
    pytest.param(struct.pack("!ii", 8, 12345678), id="unknown-protocol-code"),
    pytest.param(struct.pack("!ii", 9, wire.PROTOCOL_V3) + b"\x00", id="startup-without-user"),
    pytest.param(struct.pack("!ii", 20, wire.PROTOCOL_V3) + b"user\x00app", id="unterminated-params"),
])
def test_malformed_startup(small_router, payload):
    conn = wire.RawConn.open(small_router.port)
    conn.send(payload)
    try:
        conn.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    msgs = conn.read_until_eof(10)
    errors = wire.errors_in(msgs)
    # A startup packet without a user may be refused as a protocol violation
    # or as an authorization problem, as PostgreSQL does (28000); an unknown
    # protocol version as PostgreSQL does (0A000).
    for e in errors:
        assert e.get("C") in ("08P01", "28000", "0A000"), e
    assert small_router.alive()


@pytest.mark.parametrize("kind", ["unknown-type", "bad-length", "random-after-login"])
def test_garbage_after_login(small_router, kind):
    router = small_router
    bystander = connect(router.dsn())
    try:
        conn = wire.connect(router.port, "app", "app", "app-secret")
        if kind == "unknown-type":
            conn.send(wire.message(b"\xfe", b"hello"))
        elif kind == "bad-length":
            conn.send(b"Q" + struct.pack("!i", 2) + b"SELECT 1\x00")
        else:
            rnd = random.Random(99)
            conn.send(bytes(rnd.getrandbits(8) for _ in range(2048)))
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        assert_ended_with_08P01_or_closed(conn)
        conn.close()
        assert_others_fine(router, bystander)
    finally:
        bystander.close()


def test_oversize_message_after_login(small_router):
    router = small_router
    bystander = connect(router.dsn())
    try:
        conn = wire.connect(router.port, "app", "app", "app-secret")
        sql = b"SELECT '" + b"x" * (2 * SMALL_MAX) + b"'\x00"
        data = b"Q" + struct.pack("!i", len(sql) + 4) + sql

        def send_all():
            try:
                conn.sock.sendall(data)
            except OSError:
                pass  # the router may hang up before reading all of it
        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        errors = assert_ended_with_08P01_or_closed(conn)
        sender.join(10)
        conn.close()
        assert errors, "expected an ErrorResponse with 08P01 before the close"
        assert_others_fine(router, bystander)
    finally:
        bystander.close()


def test_oversize_length_only(small_router):
    """A length field far above max_message_size is refused without waiting
    for (or allocating) the announced bytes."""
    router = small_router
    conn = wire.connect(router.port, "app", "app", "app-secret")
    start = time.monotonic()
    conn.send(b"Q" + struct.pack("!i", 0x7FFFFFF0) + b"SELECT 1")
    errors = assert_ended_with_08P01_or_closed(conn, timeout=10)
    assert time.monotonic() - start < 5
    assert errors and errors[0]["C"] == "08P01"
    conn.close()
    assert router.alive()


def test_oversize_message_behind_others_in_one_read(routers):
    """Drivers send Parse, Bind, Execute and Sync in one write: a Bind over
    max_message_size behind a small Parse still ends the client with 08P01
    (the router used to wait forever for the batch's Sync)."""
    router = routers.start(general={"max_message_size": 10_000})
    conn = wire.connect(router.port, "app", "app", "app-secret")
    start = time.monotonic()
    conn.send(wire.describe_message(b"S", "") + wire.query_message("SELECT '" + "x" * 20_000 + "'"))
    errors = assert_ended_with_08P01_or_closed(conn, timeout=10)
    assert time.monotonic() - start < 5
    assert errors and errors[0]["C"] == "08P01"
    conn.close()
    with pytest.raises(psycopg.Error) as err:
        with connect(router.dsn()) as c:
            c.execute("SELECT %s::text", ("z" * 20_000,))
    assert sqlstate(err.value) == "08P01"
    assert router.alive()


_H = struct.Struct("!h")
_I = struct.Struct("!i")


@pytest.mark.parametrize("msg", [
    pytest.param(wire.message(b"E", b"\0\0") + wire.sync_message(), id="execute-without-row-limit"),
    pytest.param(wire.message(b"E", b"\0" + _I.pack(0) + b"x") + wire.sync_message(), id="execute-trailing-bytes"),
    pytest.param(wire.message(b"Q", b"SELECT 1\0xx"), id="query-bytes-after-nul"),
    pytest.param(wire.message(b"Q", b"SELECT 1\0xx\0"), id="query-two-strings"),
    pytest.param(wire.message(b"B", b"\0\0" + _H.pack(-1) + _H.pack(0) + _H.pack(0) + _H.pack(0))
                 + wire.sync_message(), id="bind-65535-formats-none-sent"),
    pytest.param(wire.parse_message("SELECT $1::int")
                 + wire.message(b"B", b"\0\0" + _H.pack(0) + _H.pack(1) + _I.pack(10) + b"1" + _H.pack(0))
                 + wire.sync_message(), id="bind-value-longer-than-message"),
    pytest.param(wire.parse_message("SELECT $1::int")
                 + wire.message(b"B", b"\0\0" + _H.pack(0) + _H.pack(1) + _I.pack(-2) + _H.pack(0))
                 + wire.sync_message(), id="bind-negative-value-length"),
    pytest.param(wire.parse_message("SELECT 1")
                 + wire.message(b"B", b"\0\0" + _H.pack(0) + _H.pack(0) + _H.pack(0) + b"zz")
                 + wire.sync_message(), id="bind-trailing-bytes"),
    pytest.param(wire.parse_message("SELECT $1::int, $2::int")
                 + wire.message(b"B", b"\0\0" + _H.pack(2) + _H.pack(0) * 2 + _H.pack(1) + _I.pack(1) + b"1"
                                + _H.pack(0)) + wire.sync_message(), id="bind-formats-not-one-per-value"),
    pytest.param(wire.message(b"P", b"\0SELECT 1\0" + _H.pack(1)) + wire.sync_message(), id="parse-missing-type"),
    pytest.param(wire.message(b"P", b"\0SELECT 1\0" + _H.pack(0) + b"x") + wire.sync_message(), id="parse-trailing-bytes"),
    pytest.param(wire.message(b"P", b"s1\0SELECT 1\0" + _H.pack(0) + b"x") + wire.sync_message(), id="named-parse-trailing-bytes"),
    pytest.param(wire.message(b"D", b"Sx\0y") + wire.sync_message(), id="describe-trailing-bytes"),
    pytest.param(wire.message(b"C", b"P\0\0") + wire.sync_message(), id="close-trailing-bytes"),
    pytest.param(wire.message(b"S", b"x"), id="sync-with-body"),
    pytest.param(wire.message(b"H", b"x") + wire.sync_message(), id="flush-with-body"),
])
def test_malformed_message_ends_session_with_08P01(small_router, msg):
    """SPEC Errors: a malformed protocol message gets FATAL 08P01 from the
    router and the connection closes; it never reaches PostgreSQL (which
    answers such a message with a plain ERROR and keeps the connection)."""
    router = small_router
    bystander = connect(router.dsn())
    try:
        conn = wire.connect(router.port, "app", "app", "app-secret")
        conn.send(msg)
        msgs = conn.read_until_eof(10)
        errors = wire.errors_in(msgs)
        assert [(e.get("S"), e.get("C")) for e in errors] == [("FATAL", "08P01")], errors
        assert "F" not in errors[0], f"the error came from PostgreSQL: {errors[0]}"
        conn.close()
        assert_others_fine(router, bystander)
    finally:
        bystander.close()


@pytest.mark.parametrize("bad", [
    pytest.param(wire.message(b"c", b"x"), id="copy-done-with-body"),
    pytest.param(wire.message(b"f", b"no nul"), id="copy-fail-unterminated"),
])
def test_malformed_copy_message_ends_session_with_08P01(routers, table, bad):
    """CopyDone with a body and CopyFail without a terminated string are
    malformed too. (A router of its own: the abandoned COPY's server
    connection is not used again by this test.)"""
    router = routers.start()
    with connect(router.dsn()) as c:
        c.execute(f"CREATE TABLE {table} (x int)")
    conn = wire.connect(router.port, "app", "app", "app-secret")
    conn.send(wire.query_message(f"COPY {table} FROM STDIN"))
    assert conn.read_msg().kind == b"G"
    conn.send(wire.message(b"d", b"1\n") + bad)
    errors = wire.errors_in(conn.read_until_eof(10))
    assert [(e.get("S"), e.get("C")) for e in errors] == [("FATAL", "08P01")], errors
    conn.close()


def test_well_formed_extended_messages_still_work(small_router):
    """The strict checks accept what drivers send: NULL and binary
    parameters, one format code for all, named portals with a row limit."""
    conn = wire.connect(small_router.port, "app", "app", "app-secret")
    bind = wire.message(b"B", b"p1\0s1\0" + _H.pack(1) + _H.pack(0) + _H.pack(2)
                        + _I.pack(-1) + _I.pack(1) + b"5" + _H.pack(1) + _H.pack(0))
    conn.send(wire.parse_message("SELECT $1::int IS NULL, $2::int", name="s1") + bind
              + wire.describe_message(b"P", "p1") + wire.execute_message("p1", 2)
              + wire.close_message(b"P", "p1") + wire.close_message(b"S", "s1") + wire.sync_message())
    batches = conn.read_batches(1)
    kinds = [m.kind for m in batches[0]]
    assert kinds == [b"1", b"2", b"T", b"D", b"C", b"3", b"3", b"Z"], kinds
    assert conn.simple_query("SELECT 'still here'")[0] == [["still here"]]
    conn.close()


def test_message_below_limit_is_fine(small_router):
    with connect(small_router.dsn()) as conn:
        value = "y" * (SMALL_MAX // 2)
        assert conn.execute("SELECT length(%s::text)", (value,)).fetchone() == (len(value),)


def test_oversize_startup_packet(small_router):
    conn = wire.RawConn.open(small_router.port)
    params = {"user": "app", "database": "app", "application_name": "z" * (SMALL_MAX + 10)}
    try:
        conn.send(wire.startup_message(params))
    except OSError:
        pass
    try:
        conn.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    assert_ended_with_08P01_or_closed(conn)
    assert small_router.alive()


def test_many_bad_connections_router_survives(small_router):
    router = small_router
    for i in range(50):
        s = socket.create_connection(("127.0.0.1", router.port), timeout=5)
        s.sendall(os.urandom(64 + i))
        s.close()
    time.sleep(0.5)
    with connect(router.dsn()) as conn:
        assert conn.execute("SELECT 'survived'").fetchone() == ("survived",)
    assert router.alive()


def test_terminate_message_closes_cleanly(router, primary):
    conn = wire.connect(router.port, "app", "app", "app-secret")
    conn.simple_query("SELECT 1")
    conn.send(wire.terminate_message())
    assert conn.read_until_eof(5) == []
    conn.close()
    with connect(router.dsn()) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


# ------------------------------------------------ query text that is not UTF-8 --
# Texts whose bytes are not UTF-8 (a stray byte, a lead byte before ASCII, a
# UTF-16 surrogate, a character cut short), in a UTF8 session: PostgreSQL
# answers ERROR 22021 naming the bytes, and the connection goes on.
NOT_UTF8 = [b"SELECT 'a\xff'", b"SELECT 'a\xc3\x28b'", b"SELECT '\xed\xa0\x80'", b"SELECT 1 /* \xf0\x9f */"]


def _error(fn) -> tuple[str | None, str | None]:
    try:
        fn()
    except psycopg.Error as e:
        return sqlstate(e), e.diag.message_primary
    return None, None


def _not_utf8_answers(dsn: str) -> list:
    """What each text gets, simple and extended, with `SELECT 1` after
    each on the same connection; then in a transaction block."""
    seen = []
    with connect(dsn) as conn:
        for text in NOT_UTF8:
            seen.append(_error(lambda: conn.execute(text)))
            seen.append(conn.execute("SELECT 1").fetchone())
            seen.append(_error(lambda: conn.execute(text + b" WHERE %s::int = 1", (1,))))
            seen.append(conn.execute("SELECT 1").fetchone())
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        seen.append(_error(lambda: conn.execute(NOT_UTF8[0])))
        seen.append(_error(lambda: conn.execute("SELECT 1")))
        seen.append(conn.info.transaction_status.name)
        conn.execute("ROLLBACK")
        seen.append(conn.execute("SELECT 2").fetchone())
    return seen


def test_query_text_not_utf8_is_an_error_and_the_connection_goes_on(router, primary):
    """The router ended the session with 08P01 at such a text; PostgreSQL
    answers 22021 (the transaction fails, 25P02 until ROLLBACK), and so
    must the router."""
    direct = _not_utf8_answers(primary.dsn())
    assert direct[:2] == [("22021", 'invalid byte sequence for encoding "UTF8": 0xff'), (1,)], direct
    assert direct[-4:] == [("22021", 'invalid byte sequence for encoding "UTF8": 0xff'),
                           ("25P02", "current transaction is aborted, commands ignored until end of "
                                     "transaction block"), "INERROR", (2,)], direct
    assert _not_utf8_answers(router.dsn()) == direct


def _batch_with_bad_parse(bad_parse: bytes) -> bytes:
    """A good statement, then a Parse whose strings are not UTF-8 with its
    Bind and Execute, one Sync; then a good batch."""
    good = wire.extended_query("SELECT 1") + wire.message(b"P", bad_parse)
    good += wire.bind_message([], statement="") + wire.execute_message() + wire.sync_message()
    return good + wire.extended_query("SELECT 'after'") + wire.sync_message()


def _batch_answers(port: int, bad_parse: bytes):
    conn = wire.connect(port, "app", "app", "app-secret")
    try:
        conn.send(_batch_with_bad_parse(bad_parse))
        batches = conn.read_batches(2)
        # Message kinds, with the rows and transaction states.
        out = [[(m.kind, m.body if m.kind in (b"D", b"Z") else None) for m in b] for b in batches]
        errors = [{k: v for k, v in e.items() if k in "SVCM"} for b in batches for e in wire.errors_in(b)]
        return out, errors, conn.simple_query("SELECT 'still here'")[0]
    finally:
        conn.close()


@pytest.mark.parametrize("bad_parse", [
    pytest.param(b"\0SELECT 'a\xc3\x28b'\0" + _H.pack(0), id="text"),
    pytest.param(b"s\xfe\0SELECT 1\0" + _H.pack(0), id="statement-name"),
])
def test_parse_text_not_utf8_skips_the_batch_to_sync(router, primary, bad_parse):
    """The extended protocol: the batch fails at that Parse (its earlier
    statement ran, the rest is skipped up to the Sync) and the next batch
    runs, as with PostgreSQL."""
    direct = _batch_answers(primary.port, bad_parse)
    assert [e["C"] for e in direct[1]] == ["22021"], direct
    assert direct[2] == [["still here"]]
    assert _batch_answers(router.port, bad_parse) == direct


def test_text_beyond_ascii_in_sjis_is_refused_even_when_it_reads_as_utf8(router):
    """In SJIS (and BIG5, GBK, ...) a character's second byte may be an
    ASCII byte: `E3 81 81 5C` is two SJIS characters to the server, while
    read as UTF-8 it is "ぁ" and a backslash. The router would check a
    statement that is not the one the server runs (a quote it thinks is
    escaped ends the literal on the server), so such text is refused
    (0A000, never forwarded); ASCII text runs, and the session goes on."""
    with connect(router.dsn()) as conn:
        conn.execute("SET client_encoding = 'SJIS'")
        assert conn.execute("SELECT 'plain'").fetchone() == ("plain",)
        for text in (b"SELECT '\xe3\x81\x81\x5c'", b"SELECT '\x83\x5c'"):
            code, message = _error(lambda: conn.execute(text))
            assert code == "0A000" and "client_encoding SJIS" in message, (text, code, message)
            assert conn.execute("SELECT 1").fetchone() == (1,)
        code, _ = _error(lambda: conn.execute(b"SELECT '\xe3\x81\x81\x5c'", prepare=True))
        assert code == "0A000"
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_query_text_not_in_another_client_encoding_keeps_the_connection(router):
    """In client_encoding WIN1252 the byte 0x81 is no character: the router
    cannot read such text (LATIN1 and the other encodings it transcodes
    are read, see test_client_encoding.py), so it refuses it (0A000, never
    forwarded unchecked) and the session goes on; text that is also valid
    UTF-8 is read as WIN1252, as the server reads it."""
    with connect(router.dsn()) as conn:
        conn.execute("SET client_encoding = 'WIN1252'")
        assert conn.execute(b"SELECT 'caf\xc3\xa9'").fetchone() == ("cafÃ©",)
        code, message = _error(lambda: conn.execute(b"SELECT 'caf\x81'"))
        assert code == "0A000" and "client_encoding WIN1252" in message, (code, message)
        assert conn.execute("SELECT 1").fetchone() == (1,)


# Names that are not UTF-8: PostgreSQL reads a Bind's portal then its
# statement, the name after a Describe's or Close's kind, an Execute's
# portal, and answers each as it answers such text (22021, the batch
# skipped to its Sync, the connection kept).
BAD_NAMES = [
    pytest.param(wire.parse_message("SELECT 1") + wire.message(b"B", b"p\xfe\0\0" + _H.pack(0) * 3)
                 + wire.execute_message(), id="bind-portal"),
    pytest.param(wire.message(b"B", b"\0s\xc3\x28\0" + _H.pack(0) * 3) + wire.execute_message(),
                 id="bind-statement"),
    pytest.param(wire.message(b"D", b"Ss\xff\0"), id="describe-statement"),
    pytest.param(wire.message(b"D", b"Pp\xe2\x82\0"), id="describe-portal"),
    pytest.param(wire.message(b"C", b"Ss\xff\0"), id="close-statement"),
    pytest.param(wire.message(b"C", b"P\xed\xa0\x80\0"), id="close-portal"),
    pytest.param(wire.message(b"E", b"p\xff\0" + _I.pack(0)), id="execute"),
]


def _bad_name_answers(port: int, bad: bytes, in_tx: bool):
    """Kinds and errors (S, V, C, M) of: a good statement, the bad message,
    a Sync; a good batch after it; a simple query after that."""
    conn = wire.connect(port, "app", "app", "app-secret")
    try:
        if in_tx:
            conn.simple_query("BEGIN")
        conn.send(wire.extended_query("SELECT 1") + bad + wire.sync_message()
                  + wire.extended_query("SELECT 'after'") + wire.sync_message())
        batches = conn.read_batches(2)
        out = [[(m.kind, m.body if m.kind in (b"D", b"Z") else None) for m in b] for b in batches]
        errors = [{k: v for k, v in e.items() if k in "SVCM"} for b in batches for e in wire.errors_in(b)]
        if in_tx:
            conn.simple_query("ROLLBACK")
        return out, errors, conn.simple_query("SELECT 'still here'")[0]
    finally:
        conn.close()


@pytest.mark.parametrize("in_tx", [False, True], ids=["batch", "transaction"])
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_not_utf8_are_22021_and_the_connection_goes_on(router, primary, bad, in_tx):
    """The router ended the session with 08P01 at a Bind, Describe or Close
    whose name is not UTF-8; PostgreSQL answers 22021 naming the bytes
    (after the answers to the messages before it), skips to the Sync, and
    keeps the connection (in a transaction block, the transaction fails:
    the next batch gets 25P02). So must the router."""
    direct = _bad_name_answers(primary.port, bad, in_tx)
    assert direct[1][0]["C"] == "22021", direct
    assert direct[2] == [["still here"]]
    assert _bad_name_answers(router.port, bad, in_tx) == direct
