"""The Prometheus endpoint (SPEC §5 "Operations", issue 5 item 3;
docs/operations.md): scraped and parsed with prometheus_client's parser,
counters checked against the traffic sent."""
from __future__ import annotations

import copy
import threading
import time
import uuid

import psycopg
import pytest

from harness import tomlw, wire
from harness.clients import connect, in_thread
from harness.jwt_setup import AUTHENTICATOR, jwt_db, keys, start_jwt_router  # noqa: F401
from harness.jwt_tokens import claims
from harness.ops import (admin_general, http_get, metrics_port, reload_marks, scrape, wait_reload,
                         write_in_place)
from harness.pg import APP_DB, APP_USER
from harness.router import app_user
from harness.util import wait_until

REQUIRED = {
    # family name (without _total for counters): type
    "pgrouter_queries": "counter",
    "pgrouter_transactions": "counter",
    "pgrouter_clients": "gauge",
    "pgrouter_servers": "gauge",
    "pgrouter_errors": "counter",
    "pgrouter_query_duration_seconds": "histogram",
    "pgrouter_checkout_wait_seconds": "histogram",
    "pgrouter_parse_cache_hits": "counter",
    "pgrouter_parse_cache_misses": "counter",
    "pgrouter_routed": "counter",
    "pgrouter_bans": "counter",
    "pgrouter_jwt_logins": "counter",
    "pgrouter_jwks_fetches": "counter",
    "pgrouter_reloads": "counter",
    "pgrouter_logins": "counter",
    "pgrouter_bytes_received": "counter",
    "pgrouter_bytes_sent": "counter",
    "pgrouter_pool_clients": "gauge",
    "pgrouter_pool_size": "gauge",
}
BUCKETS = ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
           "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "+Inf"]
POOL = {"database": APP_DB, "user": APP_USER, "role": "primary"}


@pytest.fixture
def mrouter(routers):
    """Primary only: every statement of user app lands in one pool."""
    return routers.start(general=admin_general(metrics=True))


def delta(after, before, name, **labels) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


# ------------------------------------------------------------------ format --
def test_scrape_parses_with_every_family_and_histogram_buckets(mrouter):
    with connect(mrouter.dsn()) as c:
        for i in range(3):
            c.execute("SELECT %s::int", (i,))
    status, headers, body = http_get(metrics_port(mrouter))
    assert status == 200
    ctype = {k.lower(): v for k, v in headers.items()}["content-type"]
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
    m = scrape(mrouter)
    for name, kind in REQUIRED.items():
        assert name in m.families, f"{name} missing; families: {sorted(m.families)}"
        assert m.families[name].type == kind, (name, m.families[name].type)
    for s in m.samples:
        assert s.name.startswith("pgrouter_"), s
    for hname in ("pgrouter_query_duration_seconds", "pgrouter_checkout_wait_seconds"):
        fam = m.families[hname]
        series = {}
        for s in fam.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, {"buckets": [], "sum": None, "count": None})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((s.labels["le"], s.value))
            elif s.name.endswith("_sum"):
                series[key]["sum"] = s.value
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
        assert series, hname
        for key, h in series.items():
            les = [le for le, _ in h["buckets"]]
            assert [float(x) for x in les] == [float(x) for x in BUCKETS], (hname, key, les)
            counts = [v for _, v in h["buckets"]]
            assert counts == sorted(counts), (hname, key, counts)  # cumulative
            assert h["count"] == counts[-1], (hname, key, h)
            assert h["sum"] is not None and h["sum"] >= 0
    qd = m.find("pgrouter_query_duration_seconds_count", **POOL)
    assert qd and qd[0].value >= 3
    assert m.one("pgrouter_build_info") == 1
    assert abs(m.one("pgrouter_start_time_seconds") - time.time()) < 300


def test_http_details(mrouter):
    port = metrics_port(mrouter)
    status, _h, body = http_get(port, method="HEAD")
    assert status == 200 and body == ""
    assert http_get(port, "/nope")[0] == 404
    assert http_get(port, "/metrics", method="POST")[0] == 405


# ------------------------------------------------------------------ traffic --
def test_counters_match_the_traffic(mrouter):
    n_single, n_tx = 25, 10
    with connect(mrouter.dsn()) as c:
        c.execute("SELECT 1")
        before = scrape(mrouter)
        for i in range(n_single):
            assert c.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        for i in range(n_tx):
            c.execute("BEGIN")
            c.execute("SELECT %s::int", (i,))
            c.execute("SELECT 'x'")
            c.execute("COMMIT")
        after = scrape(mrouter)
    tx = delta(after, before, "pgrouter_transactions_total", **POOL)
    q = delta(after, before, "pgrouter_queries_total", **POOL)
    assert tx == n_single + n_tx, tx
    assert q == n_single + 4 * n_tx, q
    assert delta(after, before, "pgrouter_query_duration_seconds_count", **POOL) == q
    assert delta(after, before, "pgrouter_query_duration_seconds_sum", **POOL) > 0
    assert delta(after, before, "pgrouter_checkout_wait_seconds_count", **POOL) >= n_single + n_tx
    assert delta(after, before, "pgrouter_bytes_received_total", **POOL) > (n_single + n_tx) * 10
    assert delta(after, before, "pgrouter_bytes_sent_total", **POOL) > (n_single + n_tx) * 10
    # Pool series carry the documented labels.
    s = after.find("pgrouter_queries_total", **POOL)[0]
    assert set(s.labels) == {"database", "user", "shard", "role", "server"}, s.labels
    assert s.labels["shard"] == "0"


def test_routed_counts_the_role_that_served_without_replica(mrouter):
    """No replica configured: every statement and transaction runs on the
    primary, so pgrouter_routed_total{role="replica"} must not move."""
    with connect(mrouter.dsn()) as c:
        c.execute("SELECT 1")
        before = scrape(mrouter)
        for i in range(8):
            c.execute("SELECT %s::int", (i,))
        for i in range(4):
            with c.transaction():
                c.execute("SELECT 1")
        after = scrape(mrouter)
    assert delta(after, before, "pgrouter_queries_total", **POOL) == 8 + 4 * 3
    assert delta(after, before, "pgrouter_routed_total", role="primary") >= 12, \
        (delta(after, before, "pgrouter_routed_total", role="primary"),
         delta(after, before, "pgrouter_routed_total", role="replica"))
    assert delta(after, before, "pgrouter_routed_total", role="replica") == 0


def test_reads_routed_to_the_replica_are_counted(routers, replica, cluster):
    r = routers.start(general=admin_general(metrics=True), with_replica=True)
    with connect(r.dsn()) as c:
        c.execute("SELECT 1")
        before = scrape(r)
        for i in range(6):
            assert c.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        after = scrape(r)
    assert delta(after, before, "pgrouter_routed_total", role="replica") >= 6
    assert delta(after, before, "pgrouter_queries_total", database=APP_DB, role="replica") == 6
    assert delta(after, before, "pgrouter_transactions_total", database=APP_DB, role="primary") == 0


def test_errors_by_sqlstate_class(mrouter):
    with connect(mrouter.dsn()) as c:
        before = scrape(mrouter)
        for _ in range(2):
            with pytest.raises(psycopg.errors.SyntaxError):
                c.execute("SELEC 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT 1/0")
        after = scrape(mrouter)
    assert delta(after, before, "pgrouter_errors_total", sqlstate_class="42") == 2
    assert delta(after, before, "pgrouter_errors_total", sqlstate_class="22") == 1
    assert delta(after, before, "pgrouter_errors_total") == 3
    # Failed statements are statements answered, too.
    assert delta(after, before, "pgrouter_queries_total", **POOL) == 3


def test_parse_cache_hits_and_misses(mrouter):
    """Two new statement texts, alternating: the first of each is a miss,
    every later one a hit."""
    a = f"SELECT '{uuid.uuid4().hex}' AS a, 1 + 1"
    b = f"SELECT '{uuid.uuid4().hex}' AS b, 2 + 2"
    with connect(mrouter.dsn()) as c:
        c.execute("SELECT 1")
        before = scrape(mrouter)
        c.execute(a)
        c.execute(b)
        mid = scrape(mrouter)
        for _ in range(5):
            c.execute(a)
            c.execute(b)
        after = scrape(mrouter)
    assert delta(mid, before, "pgrouter_parse_cache_misses_total") == 2
    assert delta(after, mid, "pgrouter_parse_cache_hits_total") == 10
    assert delta(after, mid, "pgrouter_parse_cache_misses_total") == 0


def test_parse_cache_hits_count_a_repeated_statement(mrouter):
    """The same text ten times in a row: ten analyses that did not parse
    (docs: hits = "statement analyses answered from the parse cache")."""
    text = f"SELECT '{uuid.uuid4().hex}' AS tag, 3 + 3"
    with connect(mrouter.dsn()) as c:
        c.execute("SELECT 1")
        c.execute(text)
        before = scrape(mrouter)
        for _ in range(10):
            c.execute(text)
        after = scrape(mrouter)
    assert delta(after, before, "pgrouter_parse_cache_misses_total") == 0
    assert delta(after, before, "pgrouter_parse_cache_hits_total") >= 10, \
        "repeating one statement does not count as parse cache hits"


def test_login_results(routers):
    r = routers.start(general=admin_general(metrics=True))
    before = scrape(r)
    for user, db, pw in [(APP_USER, APP_DB, "wrong"), (APP_USER, APP_DB, "wrong2"),
                         ("nobody", APP_DB, "x"), (APP_USER, "nodb", "app-secret")]:
        with pytest.raises(wire.ServerError):
            wire.connect(r.port, user, db, pw)
    with connect(r.dsn()) as c:
        c.execute("SELECT 1")
    after = scrape(r)
    assert delta(after, before, "pgrouter_logins_total", result="bad_password") == 2
    assert delta(after, before, "pgrouter_logins_total", result="unknown_user") == 1
    assert delta(after, before, "pgrouter_logins_total", result="unknown_database") == 1
    assert delta(after, before, "pgrouter_logins_total", result="ok") == 1


def test_router_errors_are_counted_by_class(routers, primary, table):
    """docs: pgrouter_errors_total counts errors sent to clients "from
    servers or from the router": a refused login (28), a write from a
    read-only session (25006), a checkout timeout (57014)."""
    primary.sql(f"CREATE TABLE {table} (id int)")
    primary.sql(f"ALTER TABLE {table} OWNER TO app")
    r = routers.start(general=admin_general(metrics=True, checkout_timeout_ms=300),
                      users=[app_user(pool_size=1),
                             {"name": "md5user", "database": APP_DB, "password": "md5-secret",
                              "auth": "scram", "read_only": True}])
    before = scrape(r)
    with pytest.raises(wire.ServerError) as err:
        wire.connect(r.port, APP_USER, APP_DB, "wrong")
    assert err.value.sqlstate == "28P01"
    with connect(r.dsn(user="md5user", password="md5-secret")) as ro:
        with pytest.raises(psycopg.Error) as err:
            ro.execute(f"INSERT INTO {table} VALUES (1)")
        assert err.value.sqlstate == "25006"
    holder = connect(r.dsn(), autocommit=False)
    try:
        holder.execute("SELECT 1")
        with connect(r.dsn()) as w:
            with pytest.raises(psycopg.Error) as err:
                w.execute("SELECT 1")
            assert err.value.sqlstate == "57014"
    finally:
        holder.close()
    after = scrape(r)
    got = {cls: delta(after, before, "pgrouter_errors_total", sqlstate_class=cls)
           for cls in ("28", "25", "57")}
    assert got == {"28": 1, "25": 1, "57": 1}, got


def test_client_and_server_gauges(routers):
    r = routers.start(general=admin_general(metrics=True, checkout_timeout_ms=10000),
                      users=[app_user(pool_size=2)])
    a = connect(r.dsn(), autocommit=False)
    b = connect(r.dsn(), autocommit=False)
    idle = connect(r.dsn())
    waiting_done = threading.Event()
    try:
        idle.execute("SELECT 1")
        a.execute("SELECT 1")
        b.execute("SELECT 1")

        def waiter():
            with connect(r.dsn()) as w:
                w.execute("SELECT 1")
            waiting_done.set()
        th = in_thread(waiter)
        wait_until(lambda: scrape(r).value("pgrouter_pool_clients", state="waiting", **POOL) == 1, 5,
                   what="a waiting client in the metrics")
        time.sleep(0.3)
        m = scrape(r)
        assert m.one("pgrouter_clients", state="active") == 2
        assert m.one("pgrouter_clients", state="waiting") == 1
        assert m.one("pgrouter_clients", state="idle") == 1
        assert m.value("pgrouter_pool_clients", state="active", **POOL) == 2
        assert m.value("pgrouter_servers", state="active", **POOL) == 2
        assert m.value("pgrouter_servers", state="idle", **POOL) == 0
        assert m.value("pgrouter_pool_size", **POOL) == 2
        assert m.value("pgrouter_pool_maxwait_seconds", **POOL) >= 0.2
        assert m.value("pgrouter_pool_paused", **POOL) == 0
        assert m.value("pgrouter_server_banned", **POOL) == 0
    finally:
        a.rollback()
        b.rollback()
        th.join(10)
        a.close()
        b.close()
        idle.close()
    assert waiting_done.is_set()
    wait_until(lambda: scrape(r).value("pgrouter_clients") == 0, 5, what="no clients left")
    m = scrape(r)
    assert m.value("pgrouter_servers", state="idle", **POOL) == 2
    assert m.value("pgrouter_servers", state="active", **POOL) == 0


def test_checkout_wait_histogram(routers):
    r = routers.start(general=admin_general(metrics=True, checkout_timeout_ms=10000),
                      users=[app_user(pool_size=1)])
    holder = connect(r.dsn(), autocommit=False)
    holder.execute("SELECT 1")
    before = scrape(r)
    t = threading.Timer(0.6, holder.rollback)
    t.start()
    try:
        with connect(r.dsn()) as w:
            w.execute("SELECT 1")
    finally:
        t.join()
        holder.close()
    after = scrape(r)
    assert delta(after, before, "pgrouter_checkout_wait_seconds_count", **POOL) == 1
    waited = delta(after, before, "pgrouter_checkout_wait_seconds_sum", **POOL)
    assert 0.5 <= waited < 5, waited
    # Not in the buckets up to 0.25 s, in the ones from 1 s.
    assert delta(after, before, "pgrouter_checkout_wait_seconds_bucket", le="0.25", **POOL) == 0
    assert delta(after, before, "pgrouter_checkout_wait_seconds_bucket", le="1.0", **POOL) == 1


def test_query_duration_histogram(mrouter):
    with connect(mrouter.dsn()) as c:
        c.execute("SELECT 1")
        before = scrape(mrouter)
        c.execute("SELECT pg_sleep(0.3)")
        after = scrape(mrouter)
    assert delta(after, before, "pgrouter_query_duration_seconds_count", **POOL) == 1
    d = delta(after, before, "pgrouter_query_duration_seconds_sum", **POOL)
    assert 0.3 <= d < 3, d
    assert delta(after, before, "pgrouter_query_duration_seconds_bucket", le="0.25", **POOL) == 0
    assert delta(after, before, "pgrouter_query_duration_seconds_bucket", le="0.5", **POOL) == 1


# ------------------------------------------------------------------ reloads --
def test_reload_counters_and_stats_survive_reload(mrouter):
    r = mrouter
    with connect(r.dsn()) as c:
        for i in range(5):
            c.execute("SELECT 1")
        m0 = scrape(r)
        assert m0.value("pgrouter_reloads_total", result="ok") == 0
        assert m0.value("pgrouter_reloads_total", result="error") == 0
        assert m0.one("pgrouter_last_reload_successful") == 1
        assert m0.one("pgrouter_last_reload_timestamp_seconds") == 0
        q0 = m0.value("pgrouter_queries_total", **POOL)
        assert q0 >= 5

        cfg = copy.deepcopy(r.config)
        cfg["general"]["default_pool_size"] = 3
        r.write_files(config=cfg)
        before = reload_marks(r)
        r.reload()
        assert wait_reload(r, before) == "ok"
        m1 = scrape(r)
        assert m1.value("pgrouter_reloads_total", result="ok") == 1
        assert m1.value("pgrouter_queries_total", **POOL) == q0  # not reset
        assert m1.value("pgrouter_pool_size", **POOL) == 3
        assert abs(m1.one("pgrouter_last_reload_timestamp_seconds") - time.time()) < 60

        write_in_place(r.config_path, tomlw.dumps(cfg).replace("[general]\n", "[general]\nnope = 1\n"))
        before = reload_marks(r)
        r.reload()
        assert wait_reload(r, before) == "error"
        c.execute("SELECT 1")
        m2 = scrape(r)
        assert m2.value("pgrouter_reloads_total", result="error") == 1
        assert m2.value("pgrouter_reloads_total", result="ok") == 1
        assert m2.one("pgrouter_last_reload_successful") == 0
        assert m2.value("pgrouter_queries_total", **POOL) == q0 + 1


def test_removed_pool_keeps_counters_and_loses_gauges(routers, primary):
    app2 = {"name": "app2", "host": "127.0.0.1", "port": primary.port, "database_name": APP_DB,
            "role": "primary"}
    r = routers.start(general=admin_general(metrics=True), users=[app_user(), app_user(database="app2")],
                      databases=routers.databases() + [app2])
    with connect(r.dsn(db="app2")) as c:
        for _ in range(4):
            c.execute("SELECT 1")
    m = scrape(r)
    assert m.value("pgrouter_queries_total", database="app2") == 4
    assert m.find("pgrouter_pool_size", database="app2")
    r.write_files(config={**r.config, "databases": routers.databases()}, users={"users": [app_user()]})
    before = reload_marks(r)
    r.reload()
    assert wait_reload(r, before) == "ok"
    m = scrape(r)
    assert m.value("pgrouter_queries_total", database="app2") == 4
    assert not m.find("pgrouter_pool_size", database="app2")
    assert not m.find("pgrouter_servers", database="app2")


# ---------------------------------------------------------------------- JWT --
def test_no_jwt_usernames_in_labels(routers, jwt_db, keys):
    key = keys["rsa"]
    r = start_jwt_router(routers, key, general=admin_general(metrics=True))
    user = f"jwtlabel_{uuid.uuid4().hex[:8]}"
    before = scrape(r)
    with connect(r.dsn(user=user, password=key.sign(claims(user, "web_user")))) as c:
        assert c.execute("SELECT current_user").fetchone() == ("web_user",)
        for i in range(3):
            c.execute("SELECT %s::int", (i,))
    expired = key.sign(claims(user, "web_user", exp=int(time.time()) - 3600))
    with pytest.raises(wire.ServerError) as err:
        wire.connect(r.port, user, APP_DB, expired)
    assert err.value.sqlstate == "28P01"
    other = f"jwtlabel_{uuid.uuid4().hex[:8]}"
    with pytest.raises(wire.ServerError):
        wire.connect(r.port, other, APP_DB, key.sign(claims(other, "web_user", aud="wrong")))
    after = scrape(r)
    for s in after.samples:
        for k, v in s.labels.items():
            assert "jwtlabel_" not in v, f"JWT username in a label: {s.name}{s.labels}"
    assert "jwtlabel_" not in after.text
    assert delta(after, before, "pgrouter_jwt_logins_total", result="ok") == 1
    assert delta(after, before, "pgrouter_jwt_logins_total", result="expired") == 1
    assert delta(after, before, "pgrouter_jwt_logins_total", result="audience") == 1
    assert delta(after, before, "pgrouter_logins_total", result="ok") == 1
    assert delta(after, before, "pgrouter_logins_total", result="bad_token") == 2
    # The JWT session's statements count under the connect_as user's pool.
    assert delta(after, before, "pgrouter_queries_total", user=AUTHENTICATOR) >= 4
    users = {s.labels.get("user") for s in after.samples if "user" in s.labels}
    assert users <= {APP_USER, AUTHENTICATOR}, users
