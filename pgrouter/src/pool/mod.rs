//! Server connection pools. A [`Pool`] serves one (user, database, shard,
//! server); a [`Cluster`] holds every pool of a logical database arranged as
//! shards × (primary + replicas), with each server's [`ServerHealth`]. Pools
//! know nothing of SQL.

mod cap;
mod cluster;
pub mod health;
mod learnt_sweep;
// The `Pool` type lives in its own file; `pool::Pool` reads as intended.
#[allow(clippy::module_inception)]
mod pool;
mod queue;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

pub use cap::{CapPermit, ConnectionCap};
pub use cluster::{Balancing, Cluster, ReadLimits, ServerSlot, ShardPools, UserPools};
pub use health::{check_auto_roles, ServerHealth};
pub use learnt_sweep::learnt_keep_for;
pub use pool::{Pool, PoolError, PoolSettings, PoolStats, PooledConn};
