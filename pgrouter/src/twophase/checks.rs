//! Start-up check: every shard primary of a sharded database must accept
//! PREPARE TRANSACTION (`max_prepared_transactions > 0`), or multi-shard
//! writes there cannot commit. Reported as warnings: a server that is down
//! or misconfigured must not keep the router from serving the rest.

use std::time::Duration;

use crate::pool::ReadLimits;
use crate::router::Role;
use crate::server::ServerConn;
use crate::state::Runtime;

/// Warnings for `rt`: shard primaries with `max_prepared_transactions = 0`,
/// and sharded databases two-phase commit cannot serve.
pub async fn prepared_transactions_findings(rt: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    if !rt.config.sharding.two_phase_commit {
        return out;
    }
    out.extend(rt.twophase.problems().cloned());
    let timeout = Duration::from_millis(rt.config.general.connect_timeout_ms);
    for c in rt.twophase.all() {
        let pools = c.recovery().pools();
        for (shard, sp) in pools.shards.iter().enumerate() {
            let Some(slot) = sp.pick(Role::Primary, pools.balancing, &[], ReadLimits::default())
            else {
                continue;
            };
            let target = &slot.pool.target;
            let value = match ServerConn::connect(target, timeout).await {
                Ok(mut conn) => {
                    let r = conn.query_rows("SHOW max_prepared_transactions").await;
                    conn.terminate().await;
                    r.ok()
                        .and_then(|rows| rows.into_iter().next())
                        .and_then(|row| row.into_iter().next().flatten())
                }
                // Unreachable servers are reported by the health checks.
                Err(_) => None,
            };
            if value.as_deref() == Some("0") {
                out.push(format!(
                    "shard {shard} of database \"{}\" ({}) has max_prepared_transactions = 0: \
                     transactions writing on several shards will fail to commit there; \
                     set it above 0 (e.g. to max_connections) and restart that server",
                    c.database(),
                    target.addr()
                ));
            }
        }
    }
    out
}
