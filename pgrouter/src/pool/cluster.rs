use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgrouter_config::{Config, PoolMode, ServerRole, User};

use super::{Pool, PoolSettings};
use crate::server::ServerTarget;

/// The pools of one user on one logical database, shard by shard.
pub struct UserPools {
    pub mode: PoolMode,
    pub shards: Vec<ShardPools>,
}

/// One shard: its primary and its replicas.
pub struct ShardPools {
    pub primary: Option<Arc<Pool>>,
    pub replicas: Vec<Arc<Pool>>,
}

/// Every pool the router runs, keyed by (user, logical database).
#[derive(Default)]
pub struct Cluster {
    users: HashMap<(String, String), Arc<UserPools>>,
}

impl Cluster {
    /// One pool per (user, database, shard, server) for every users.toml
    /// entry; pools connect lazily (or up to `min_pool_size` in maintenance).
    pub fn build(config: &Config) -> Cluster {
        let mut users = HashMap::new();
        for user in &config.users {
            let pools = user_pools(config, user);
            users.insert((user.name.clone(), user.database.clone()), Arc::new(pools));
        }
        Cluster { users }
    }

    pub fn pools_for(&self, user: &str, database: &str) -> Option<&Arc<UserPools>> {
        self.users.get(&(user.to_string(), database.to_string()))
    }

    pub fn all_pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.users
            .values()
            .flat_map(|u| u.shards.iter())
            .flat_map(|s| s.primary.iter().chain(s.replicas.iter()))
    }
}

fn user_pools(config: &Config, user: &User) -> UserPools {
    let g = &config.general;
    let settings = PoolSettings {
        size: config.pool_size_for(user),
        min_size: g.min_pool_size,
        connect_timeout: Duration::from_millis(g.connect_timeout_ms),
        checkout_timeout: Duration::from_millis(g.checkout_timeout_ms),
        idle_timeout: Duration::from_millis(g.server_idle_timeout_ms),
        lifetime: Duration::from_millis(g.server_lifetime_ms),
    };
    let shard_count = config.shard_count(&user.database) as usize;
    let mut shards: Vec<ShardPools> = (0..shard_count).map(|_| ShardPools { primary: None, replicas: Vec::new() }).collect();
    for server in config.servers_of(&user.database) {
        let Some(shard) = shards.get_mut(server.shard as usize) else { continue };
        let target = ServerTarget {
            host: server.host.clone(),
            port: server.port,
            database: server.database_name.clone(),
            user: user.server_user.clone(),
            password: user.server_password.clone(),
        };
        let name = format!("{}@{}/{}/{}", user.name, user.database, server.shard, target.addr());
        let pool = Pool::new(name, target, settings.clone());
        match server.role {
            ServerRole::Primary | ServerRole::Auto if shard.primary.is_none() => shard.primary = Some(pool),
            _ => shard.replicas.push(pool),
        }
    }
    UserPools { mode: config.pool_mode_for(user), shards }
}
