"""JWT sessions on a sharded database (SPEC §5 "Sharding", issue 17 item 8):
a statement on several shards runs under the token's role on every shard it
reaches, for reads and for writes, also when the session has parameters of
its own to bring along (application_name: the router sends them ahead of the
role on each shard's connection)."""
from __future__ import annotations

import types

import pytest

from harness.clients import connect
from harness.jwt_setup import ensure_roles, jwt_db, keys, start_jwt_router  # noqa: F401
from harness.jwt_tokens import claims
from harness.pg import APP_DB, PgCluster

TABLE = "jw_orders"
SHARDED = [{"database": "app", "name": TABLE, "column": "customer_id", "data_type": "bigint"}]


@pytest.fixture(scope="module")
def shards(jwt_db):
    """Three primaries: the test cluster's and two more, each with the JWT
    roles (authenticator, web_user, ...) and the table, web_user allowed to
    read and write it."""
    with PgCluster(with_replica=False, prefix="pgrouter-jw1-") as s1, \
            PgCluster(with_replica=False, prefix="pgrouter-jw2-") as s2:
        for extra in (s1, s2):
            ensure_roles(types.SimpleNamespace(primary=extra.primary, replica=None))
        servers = [jwt_db.primary, s1.primary, s2.primary]
        for s in servers:
            with s.connect(APP_DB) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
                conn.execute(f"CREATE TABLE {TABLE} (customer_id bigint, id int, note text, "
                             "PRIMARY KEY (customer_id, id))")
                conn.execute(f"ALTER TABLE {TABLE} OWNER TO app")
                conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE} TO web_user")
        yield servers
        with jwt_db.primary.connect(APP_DB) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


@pytest.fixture
def jrouter(routers, shards, keys):  # noqa: F811
    from harness.twophase import fresh_decision_tables
    dbs = [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app", "role": "primary",
            "shard": i} for i, s in enumerate(shards)]
    # Writes on several shards commit with 2PC as the connect_as user.
    fresh_decision_tables(shards[0], "authenticator")
    r = start_jwt_router(routers, keys["rsa"], databases=dbs, sharded_tables=SHARDED)
    yield r
    r.stop()
    fresh_decision_tables(shards[0])


def per_shard(servers, sql: str) -> list:
    out = []
    for s in servers:
        with s.connect(APP_DB) as conn:
            out.append(conn.execute(sql).fetchall())
    return out


def test_jwt_statements_on_several_shards_run_as_the_token_role(jrouter, shards, keys):  # noqa: F811
    with connect(jrouter.dsn()) as conn:
        for k in range(1, 31):
            conn.execute(f"INSERT INTO {TABLE} (customer_id, id, note) VALUES ({k}, 1, 'app')")
    counts = [rows[0][0] for rows in per_shard(shards, f"SELECT count(*) FROM {TABLE}")]
    assert all(n > 0 for n in counts) and sum(counts) == 30, counts

    token = keys["rsa"].sign(claims("jw_alice", "web_user"))
    dsn = jrouter.dsn(user="jw_alice", password=token)
    with connect(dsn, application_name="jwt-fanout") as conn:
        # A keyless read: every shard, each as web_user.
        rows = conn.execute(f"SELECT current_user, customer_id FROM {TABLE}").fetchall()
        assert sorted(r[1] for r in rows) == list(range(1, 31))
        assert {r[0] for r in rows} == {"web_user"}
        # Keys on several shards.
        rows = conn.execute(f"SELECT current_user, customer_id FROM {TABLE} WHERE customer_id IN (1, 2, 3, 4, 5)")
        assert sorted(r[1] for r in rows.fetchall()) == [1, 2, 3, 4, 5]
        # A keyless write: every shard, as web_user (note records who wrote).
        cur = conn.execute(f"UPDATE {TABLE} SET note = current_user")
        assert cur.rowcount == 30
    notes = per_shard(shards, f"SELECT DISTINCT note FROM {TABLE}")
    assert notes == [[("web_user",)]] * 3
