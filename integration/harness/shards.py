"""Three PostgreSQL primaries for the sharding tests: the session's own
primary as shard 0 and two clusters of their own, each given the same
tables, and the `[[databases]]` entries naming them as shards."""
from __future__ import annotations

from contextlib import contextmanager

from harness.pg import APP_DB, PgCluster


@contextmanager
def three_shards(cluster, prefix: str, setup_sql: str, teardown_sql: str):
    """Shard 0 is `cluster`'s primary; shards 1 and 2 are new clusters
    (prefix `pgrouter-<prefix>1-`, `-2-`), dropped afterwards. `setup_sql`
    runs on each; `teardown_sql` on shard 0, which outlives the module."""
    with PgCluster(with_replica=False, prefix=f"pgrouter-{prefix}1-") as s1, \
            PgCluster(with_replica=False, prefix=f"pgrouter-{prefix}2-") as s2:
        servers = [cluster.primary, s1.primary, s2.primary]
        for s in servers:
            with s.connect(APP_DB) as conn:
                conn.execute(setup_sql)
        yield servers
        with cluster.primary.connect(APP_DB) as conn:
            conn.execute(teardown_sql)


def shard_databases(servers) -> list[dict]:
    """`[[databases]]` entries: database "app", server i is shard i's primary."""
    return [{"name": "app", "host": "127.0.0.1", "port": s.port, "database_name": "app",
             "role": "primary", "shard": i} for i, s in enumerate(servers)]
