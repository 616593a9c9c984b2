//! Server connection pools. A [`Pool`] serves one (user, database, shard,
//! server); a [`Cluster`] holds every pool of a logical database arranged as
//! shards × (primary + replicas). Pools know nothing of SQL.

mod cluster;
mod pool;

pub use cluster::{Cluster, ShardPools, UserPools};
pub use pool::{Pool, PoolError, PoolSettings, PooledConn};
