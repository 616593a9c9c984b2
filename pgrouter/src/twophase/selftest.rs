//! `pgrouter test-2pc-commit`: a test hook, not a feature. It runs one
//! transaction over several shards through [`Coordinator::commit`] exactly
//! as a session would (legs from the pools, BEGIN, the statements, commit),
//! so integration tests can check the commit path and crash it at the test
//! hooks' pauses (see `hooks.rs`) before sessions drive multi-shard writes
//! themselves.
//!
//! Usage: `pgrouter test-2pc-commit --config F --users F <database> <user>
//! <shard>:<sql> ...`. Prints `COMMIT`, or `ERROR <sqlstate> <message>` and
//! exits with 3.

use std::sync::Arc;

use pgrouter_config::Config;

use super::{wire, CommitError, Coordinators};
use crate::metrics::Metrics;
use crate::pool::{Cluster, PooledConn, ReadLimits};
use crate::router::Role;
use crate::server::ServerConn;

/// Runs the transaction; `Err` carries what the client would get.
pub async fn run(
    config: Config,
    database: &str,
    user: &str,
    statements: &[(usize, String)],
) -> Result<(), CommitError> {
    let metrics = Arc::new(Metrics::new());
    let cluster = Cluster::build(&config, None, &metrics);
    let coordinators = Coordinators::build(&config, &cluster, &metrics, None);
    let coordinator = coordinators.coordinator(database)?;
    let pools = cluster.pools_for(user, database).ok_or_else(|| {
        CommitError::new(
            "28000",
            format!("no users.toml entry {user} for {database}"),
        )
    })?;
    let mut shards: Vec<usize> = statements.iter().map(|(s, _)| *s).collect();
    shards.sort_unstable();
    shards.dedup();
    let mut leases: Vec<(usize, PooledConn)> = Vec::new();
    for shard in shards {
        let slot = pools
            .shards
            .get(shard)
            .and_then(|s| s.pick(Role::Primary, pools.balancing, &[], ReadLimits::default()))
            .ok_or_else(|| CommitError::new("08006", format!("shard {shard} has no primary")))?;
        let mut lease = slot
            .pool
            .checkout()
            .await
            .map_err(|e| CommitError::new("08006", e.to_string()))?;
        statement(&mut lease, "BEGIN").await?;
        leases.push((shard, lease));
    }
    for (shard, sql) in statements {
        if let Some((_, lease)) = leases.iter_mut().find(|(s, _)| s == shard) {
            statement(lease, sql).await?;
        }
    }
    let mut legs: Vec<(usize, &mut ServerConn)> = leases
        .iter_mut()
        .map(|(s, lease)| (*s, &mut **lease))
        .collect();
    coordinator.commit(&mut legs, &pools.server_user).await
}

async fn statement(conn: &mut ServerConn, sql: &str) -> Result<(), CommitError> {
    let r = wire::run(conn, sql)
        .await
        .map_err(|e| CommitError::new("08006", e.to_string()))?;
    match r.error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
