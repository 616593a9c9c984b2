//! What every client task shares.
//!
//! The parts a reload replaces (config, pools, JWT verifier, analysis cache)
//! form one [`Runtime`], swapped atomically with arc-swap: a session keeps
//! the runtime it has until its next transaction boundary, then picks up the
//! new one. Everything that must outlive a reload (cancel keys, statistics,
//! the prepared-statement registry, the client count) lives in [`State`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pgrouter_config::Config;
use pgrouter_parser::AnalysisCache;
use tokio::sync::watch;

use crate::auth::jwt::JwtVerifier;
use crate::client::cancel::CancelRegistry;
use crate::client::prepared::StatementRegistry;
use crate::metrics::Metrics;
use crate::pool::Cluster;

/// The configuration in force and everything built from it.
pub struct Runtime {
    pub config: Arc<Config>,
    pub cluster: Cluster,
    /// Verifies JWT logins; `None` without a `[jwt]` section.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Asks the JIT API about tokens; `None` without a `[jit]` section.
    pub jit: Option<Arc<crate::auth::jit::JitClient>>,
    /// Every statement's analysis, by text, shared by all clients.
    pub cache: Arc<AnalysisCache>,
    /// Statements a shard accepted at their Parse (sharded databases);
    /// a reload starts an empty memo.
    pub parse_verdicts: crate::parse_verdicts::ParseVerdicts,
    /// Increases with every successful reload.
    pub generation: u64,
    /// Each sharded logical database's tables and placements.
    pub shard_maps: crate::router::ShardMaps,
    /// Two-phase commit coordinators of the databases with several shards.
    pub twophase: crate::twophase::Coordinators,
}

pub struct State {
    pub runtime: ArcSwap<Runtime>,
    pub cancels: Arc<CancelRegistry>,
    /// Becomes true when the router starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// The same news for client sessions, each with a channel of its own.
    pub session_shutdown: Arc<crate::client::shutdown::ShutdownFanout>,
    /// Asks the router to shut down (admin SHUTDOWN).
    pub shutdown_request: tokio::sync::Notify,
    /// Clients connected now (counted from accept to close).
    pub clients: AtomicUsize,
    /// Prepared statements de-duplicated across clients.
    pub statements: StatementRegistry,
    pub metrics: Arc<Metrics>,
    /// One reload at a time.
    pub reload_lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    pub router_path: PathBuf,
    pub users_path: PathBuf,
    /// Logical databases paused by the admin console.
    pub paused: crate::paused::PausedDatabases,
    pub resumed: tokio::sync::Notify,
    /// Admin PAUSE began: clients queued for a connection stop waiting for
    /// it and wait for RESUME instead (see `client/outbound.rs`).
    pub pausing: tokio::sync::Notify,
    /// Client TLS (certificate and mode); replaced by a reload.
    pub tls: Arc<crate::net::tls::ClientTlsHandle>,
    /// Connected clients, for SHOW CLIENTS and the metrics.
    pub registry: Arc<crate::client::registry::ClientRegistry>,
    /// Secrets found by `[auth_query]` (kept across reloads).
    pub secrets: crate::auth::auth_query::SecretCache,
    /// `[general]` as the process started: what is in effect for the keys
    /// a reload cannot apply (`pgrouter_config::RESTART_KEYS`).
    pub started: pgrouter_config::General,
    /// Which `[general]` keys router.toml set at start (SHOW CONFIG's
    /// source for a key whose restart is pending).
    pub started_lines: pgrouter_config::GeneralLines,
    /// Which `[general]` keys router.toml sets now, for SHOW CONFIG's
    /// source column. Kept here, not only in the runtime's config: a
    /// reload that changes no setting (a key written out at its default
    /// value, or deleted) keeps the running config but updates this.
    pub general_lines: parking_lot::Mutex<pgrouter_config::GeneralLines>,
    /// What the last reload read (see `reload/fingerprint.rs`); `None`
    /// before the first, so the watcher's first event always reloads.
    pub last_reload_files: parking_lot::Mutex<Option<u64>>,
}

impl State {
    pub fn new(
        config: Config,
        jwt: Option<Arc<JwtVerifier>>,
        metrics: Arc<Metrics>,
        tls: Arc<crate::net::tls::ClientTlsHandle>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<State> {
        let cluster = Cluster::build(&config, None, &metrics);
        let cache = Arc::new(AnalysisCache::new(
            config.general.parse_cache_size,
            config.general.write_functions.clone(),
        ));
        let jit = jit_client(&config);
        let router_path = config.router_path.clone();
        let users_path = config.users_path.clone();
        let started = config.general.clone();
        let started_lines = config.general_lines.clone();
        let shard_maps = crate::router::ShardMaps::build(&config);
        let twophase = crate::twophase::Coordinators::build(&config, &cluster, &metrics, None);
        let runtime = Runtime {
            shard_maps,
            twophase,
            config: Arc::new(config),
            cluster,
            jit,
            jwt,
            cache,
            parse_verdicts: Default::default(),
            generation: 1,
        };
        Arc::new(State {
            runtime: ArcSwap::from_pointee(runtime),
            cancels: Arc::new(CancelRegistry::default()),
            shutdown,
            session_shutdown: Default::default(),
            shutdown_request: tokio::sync::Notify::new(),
            clients: AtomicUsize::new(0),
            statements: StatementRegistry::default(),
            metrics,
            reload_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(1),
            router_path,
            users_path,
            paused: Default::default(),
            resumed: tokio::sync::Notify::new(),
            pausing: tokio::sync::Notify::new(),
            registry: Default::default(),
            secrets: Default::default(),
            tls,
            started,
            general_lines: parking_lot::Mutex::new(started_lines.clone()),
            started_lines,
            last_reload_files: Default::default(),
        })
    }

    /// The runtime in force now.
    pub fn rt(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Cheap check whether a session's runtime is still current.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts a new runtime in force.
    pub fn install(&self, mut runtime: Runtime) {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        runtime.generation = generation;
        self.runtime.store(Arc::new(runtime));
        self.generation.store(generation, Ordering::Release);
    }

    /// Counts a JWT login by result ("ok" or the refusal's cause word).
    pub fn metrics_jwt_login(&self, result: &'static str) {
        self.metrics.record_jwt_login(result);
    }

    pub fn is_paused(&self, database: &str) -> bool {
        self.paused.is_paused(database)
    }
}

/// The JIT API client for `config`'s `[jit]`. Start-up checks the section
/// first (`run.rs`), so an error here is only logged.
fn jit_client(config: &Config) -> Option<Arc<crate::auth::jit::JitClient>> {
    let jit = config.jit.as_ref()?;
    match crate::auth::jit::JitClient::new(jit) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::error!("[jit]: {e}");
            None
        }
    }
}
