//! What every client task shares: the config in force, the pools, the cancel
//! keys, the shutdown signal and the client count.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use pgrouter_config::Config;
use tokio::sync::watch;

use crate::auth::jwt::JwtVerifier;
use crate::client::cancel::CancelRegistry;
use crate::client::prepared::StatementRegistry;
use pgrouter_parser::AnalysisCache;
use crate::pool::Cluster;

pub struct State {
    pub config: Arc<Config>,
    pub cluster: Cluster,
    pub cancels: Arc<CancelRegistry>,
    /// Becomes true when the router starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Clients connected now (counted from accept to close).
    pub clients: AtomicUsize,
    /// Every statement's analysis, by text, shared by all clients.
    pub cache: AnalysisCache,
    /// Prepared statements de-duplicated across clients.
    pub statements: StatementRegistry,
    /// Verifies JWT logins; `None` without a `[jwt]` section.
    pub jwt: Option<Arc<JwtVerifier>>,
}

impl State {
    pub fn new(config: Config, jwt: Option<Arc<JwtVerifier>>, shutdown: watch::Receiver<bool>) -> Arc<State> {
        let cluster = Cluster::build(&config);
        let cache = AnalysisCache::new(config.general.parse_cache_size, config.general.write_functions.clone());
        Arc::new(State {
            cache,
            statements: StatementRegistry::default(),
            jwt,
            config: Arc::new(config),
            cluster,
            cancels: Arc::new(CancelRegistry::default()),
            shutdown,
            clients: AtomicUsize::new(0),
        })
    }
}

impl State {
    /// Counts a JWT login by result ("ok" or the refusal's cause word).
    pub fn metrics_jwt_login(&self, result: &'static str) {
        tracing::debug!(result, "jwt login");
    }
}
