//! What every client task shares: the config in force, the pools, the cancel
//! keys, the shutdown signal and the client count.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use pgrouter_config::Config;
use tokio::sync::watch;

use crate::client::cancel::CancelRegistry;
use crate::pool::Cluster;

pub struct State {
    pub config: Arc<Config>,
    pub cluster: Cluster,
    pub cancels: Arc<CancelRegistry>,
    /// Becomes true when the router starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Clients connected now (counted from accept to close).
    pub clients: AtomicUsize,
}

impl State {
    pub fn new(config: Config, shutdown: watch::Receiver<bool>) -> Arc<State> {
        let cluster = Cluster::build(&config);
        Arc::new(State {
            config: Arc::new(config),
            cluster,
            cancels: Arc::new(CancelRegistry::default()),
            shutdown,
            clients: AtomicUsize::new(0),
        })
    }
}
