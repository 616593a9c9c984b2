//! Counters the whole router updates, and the Prometheus endpoint that shows
//! them.
//!
//! One [`Metrics`] lives as long as the process (keep the same `Arc` across
//! reloads: stats survive them). Hot-path updates are relaxed atomics plus,
//! for latencies, a sharded hdrhistogram ([`histogram`]); a per-pool
//! [`PoolMetrics`] handle is looked up once and then costs no hashing.
//! Values the router already keeps elsewhere (pool occupancy, clients, parse
//! cache, JWKS fetches) are read at scrape time through [`MetricsSource`].
//!
//! Labels are bounded by the config: per pool at most (database, users.toml
//! user, shard, role, server), SQLSTATE class, role, and fixed result words.

pub mod histogram;
mod http;
pub mod login_checks;
mod render;
pub mod snapshot;
pub mod striped;
#[cfg(test)]
mod tests;
pub mod twophase;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

use self::histogram::{HistogramSnapshot, ShardedHistogram};
pub use self::http::{bind, serve, serve_listener};
pub use self::render::{render, MetricsSource, CONTENT_TYPE};
pub use self::snapshot::{
    ClientCounts, ClientSnapshot, ConfigRow, DbStats, PoolLabels, PoolSnapshot, ReloadStatus,
    ServerSnapshot,
};
use crate::router::Role;

/// `pgrouter_sharded_statements_total{shards}` counts 1..=15 and "16+".
const SHARD_SLOTS: usize = 16;

/// 36 × 36 SQLSTATE classes (`0-9A-Z` twice) plus one slot for malformed codes.
const ERROR_SLOTS: usize = 36 * 36 + 1;

/// Everything the router counts. `Send + Sync`; share it as `Arc<Metrics>`.
pub struct Metrics {
    started: SystemTime,
    pools: RwLock<HashMap<PoolLabels, Arc<PoolMetrics>>>,
    errors: Box<[AtomicU64]>,
    /// Units routed to a primary and to a replica (per thread: one add per
    /// transaction, see `striped.rs`).
    routed: striped::Striped<RoutedCounts>,
    /// Statements on sharded databases by how many shards they needed:
    /// index 0 = one shard, 1 = two, ..., the last = 16 or more.
    by_shards: [AtomicU64; SHARD_SLOTS],
    bans: Mutex<BTreeMap<String, u64>>,
    jwt_logins: ResultCounts,
    logins: ResultCounts,
    reloads: ResultCounts,
    last_reload: Mutex<Option<ReloadStatus>>,
    /// `[auth_query]` lookups and `[jit]` API calls.
    pub login_checks: login_checks::LoginCheckMetrics,
    /// Two-phase commits and recovery.
    pub twophase: twophase::TwoPhaseMetrics,
}

/// Counters of one pool. Get it once with [`Metrics::pool`] and keep the
/// `Arc` next to the pool: every method is a few relaxed atomic adds (and a
/// sharded histogram record for the latency ones).
pub struct PoolMetrics {
    pub(crate) labels: PoolLabels,
    /// Added to on every query: per thread (see `striped.rs`).
    counts: striped::Striped<PoolCounts>,
    query_time: ShardedHistogram,
    checkout_wait: ShardedHistogram,
}

#[derive(Default)]
struct RoutedCounts {
    primary: AtomicU64,
    replica: AtomicU64,
}

/// One thread's share of a pool's counters.
#[derive(Default)]
struct PoolCounts {
    queries: AtomicU64,
    transactions: AtomicU64,
    xact_time_us: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
}

/// Counts by a fixed result word (`&'static str` keeps the label set bounded).
#[derive(Default)]
struct ResultCounts(Mutex<BTreeMap<&'static str, u64>>);

impl ResultCounts {
    fn add(&self, result: &'static str) {
        *self.0.lock().entry(result).or_insert(0) += 1;
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().clone()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: SystemTime::now(),
            pools: RwLock::new(HashMap::new()),
            errors: (0..ERROR_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            routed: striped::Striped::for_this_machine(),
            by_shards: Default::default(),
            bans: Mutex::new(BTreeMap::new()),
            jwt_logins: ResultCounts::default(),
            logins: ResultCounts::default(),
            reloads: ResultCounts::default(),
            last_reload: Mutex::new(None),
            login_checks: Default::default(),
            twophase: Default::default(),
        }
    }

    /// When counting started (process start).
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// The counters of the pool named by `labels`, created on first use. The
    /// same labels always give the same counters, so a pool rebuilt by a
    /// reload keeps counting where the old one stopped.
    pub fn pool(&self, labels: &PoolLabels) -> Arc<PoolMetrics> {
        if let Some(p) = self.pools.read().get(labels) {
            return p.clone();
        }
        self.pools
            .write()
            .entry(labels.clone())
            .or_insert_with(|| {
                Arc::new(PoolMetrics {
                    labels: labels.clone(),
                    counts: striped::Striped::for_this_machine(),
                    query_time: ShardedHistogram::for_this_machine(),
                    checkout_wait: ShardedHistogram::for_this_machine(),
                })
            })
            .clone()
    }

    /// Forgets the counters of a pool that was dropped (a learnt user's, see
    /// `pool/learnt_sweep.rs`), so its series leave the metrics, unless a
    /// pool still counts with them. Checked under the write lock, where no
    /// [`Metrics::pool`] can hand them out meanwhile.
    pub fn forget_pool(&self, labels: &PoolLabels) {
        let mut pools = self.pools.write();
        if pools.get(labels).is_some_and(|p| Arc::strong_count(p) == 1) {
            pools.remove(labels);
        }
    }

    /// Convenience for callers without a [`PoolMetrics`] handle (one hash
    /// lookup more than [`PoolMetrics::record_query`]).
    pub fn record_query(&self, labels: &PoolLabels, duration: Duration) {
        self.pool(labels).record_query(duration);
    }

    /// An error sent to a client (by a server or by the router), counted by
    /// the SQLSTATE's class (its first two characters).
    pub fn record_error(&self, sqlstate: &str) {
        self.errors[error_slot(sqlstate)].fetch_add(1, Ordering::Relaxed);
    }

    /// A statement on a sharded database that needed `shards` shards.
    pub fn record_shards(&self, shards: usize) {
        let slot = shards.clamp(1, SHARD_SLOTS) - 1;
        self.by_shards[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// A statement (or transaction) routed to a server of `role`.
    pub fn record_routed(&self, role: Role) {
        let mine = self.routed.mine();
        match role {
            Role::Primary => &mine.primary,
            Role::Replica => &mine.replica,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A server was banned by the health checks. `server` is `host:port`
    /// ([`snapshot::server_label`]).
    pub fn record_ban(&self, server: &str) {
        let mut bans = self.bans.lock();
        match bans.get_mut(server) {
            Some(n) => *n += 1,
            None => {
                bans.insert(server.to_string(), 1);
            }
        }
    }

    /// A JWT login attempt: "ok", or the refusal's `JwtError::reason()`.
    pub fn record_jwt_login(&self, result: &'static str) {
        self.jwt_logins.add(result);
    }

    /// Any login attempt (JWT ones too): "ok", "bad_password",
    /// "unknown_user", "unknown_database", "bad_token", "too_many_clients",
    /// "refused", "error".
    pub fn record_login(&self, result: &'static str) {
        self.logins.add(result);
    }

    /// A reload attempt and its outcome; `message` says what changed or why
    /// the files were refused (shown by `SHOW CONFIG`).
    pub fn record_reload(&self, ok: bool, message: impl Into<String>) {
        self.reloads.add(if ok { "ok" } else { "error" });
        *self.last_reload.lock() = Some(ReloadStatus {
            ok,
            at: SystemTime::now(),
            message: message.into(),
        });
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last_reload.lock().clone()
    }

    /// Per logical database totals for `SHOW STATS`, sorted by database.
    pub fn db_stats(&self) -> Vec<DbStats> {
        let period = self.started.elapsed().unwrap_or_default();
        let mut by_db: BTreeMap<String, (DbStats, Vec<HistogramSnapshot>)> = BTreeMap::new();
        for p in self.pool_list() {
            let (s, hists) = by_db.entry(p.labels.database.clone()).or_insert_with(|| {
                (
                    DbStats {
                        database: p.labels.database.clone(),
                        period,
                        ..DbStats::default()
                    },
                    vec![],
                )
            });
            let q = p.query_time.snapshot();
            let w = p.checkout_wait.snapshot();
            s.total_query_count += p.counts.sum(|c| &c.queries);
            s.total_xact_count += p.counts.sum(|c| &c.transactions);
            s.total_xact_time_us += p.counts.sum(|c| &c.xact_time_us);
            s.total_received += p.counts.sum(|c| &c.bytes_received);
            s.total_sent += p.counts.sum(|c| &c.bytes_sent);
            s.total_query_time_us += q.sum_us;
            s.total_wait_time_us += w.sum_us;
            s.total_wait_count += w.count;
            hists.push(q);
        }
        by_db
            .into_values()
            .map(|(mut s, hists)| {
                let merged = HistogramSnapshot::merge(&hists);
                s.query_time_p50_us = merged.quantile_us(0.5);
                s.query_time_p99_us = merged.quantile_us(0.99);
                s
            })
            .collect()
    }

    /// Every pool's counters, sorted by labels.
    pub(crate) fn pool_list(&self) -> Vec<Arc<PoolMetrics>> {
        let mut pools: Vec<_> = self.pools.read().values().cloned().collect();
        pools.sort_by(|a, b| a.labels.cmp(&b.labels));
        pools
    }

    /// Non-zero error counts by class, sorted.
    fn error_counts(&self) -> Vec<(String, u64)> {
        self.errors
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| (slot_class(i), n))
            })
            .collect()
    }
}

impl PoolMetrics {
    pub fn labels(&self) -> &PoolLabels {
        &self.labels
    }

    /// One statement answered: call at its CommandComplete (or
    /// ErrorResponse / EmptyQueryResponse) with the time from sending it to
    /// the server to that answer. An extended-protocol Execute counts as one.
    pub fn record_query(&self, duration: Duration) {
        self.counts.mine().queries.fetch_add(1, Ordering::Relaxed);
        self.query_time.record(duration);
    }

    /// One transaction ended (ReadyForQuery 'I' after work on this pool);
    /// a statement outside a transaction is a transaction too.
    pub fn record_transaction(&self, duration: Duration) {
        let mine = self.counts.mine();
        mine.transactions.fetch_add(1, Ordering::Relaxed);
        mine.xact_time_us
            .fetch_add(micros(duration), Ordering::Relaxed);
    }

    /// One checkout from this pool and how long the client waited for it
    /// (zero when a connection was free). Record timeouts too.
    pub fn record_checkout_wait(&self, waited: Duration) {
        self.checkout_wait.record(waited);
    }

    /// Bytes received from the client and forwarded to this pool's server.
    /// Bytes the pool's servers were sent so far.
    #[cfg(test)]
    pub fn bytes_received(&self) -> u64 {
        self.counts.sum(|c| &c.bytes_received)
    }

    pub fn add_bytes_received(&self, n: u64) {
        self.counts
            .mine()
            .bytes_received
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes of this pool's server answers sent on to the client.
    pub fn add_bytes_sent(&self, n: u64) {
        self.counts
            .mine()
            .bytes_sent
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn queries(&self) -> u64 {
        self.counts.sum(|c| &c.queries)
    }

    pub fn transactions(&self) -> u64 {
        self.counts.sum(|c| &c.transactions)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn class_digit(c: u8) -> Option<usize> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as usize),
        b'A'..=b'Z' => Some((c - b'A') as usize + 10),
        b'a'..=b'z' => Some((c - b'a') as usize + 10),
        _ => None,
    }
}

fn error_slot(sqlstate: &str) -> usize {
    let b = sqlstate.as_bytes();
    match (
        b.first().copied().and_then(class_digit),
        b.get(1).copied().and_then(class_digit),
    ) {
        (Some(a), Some(c)) => a * 36 + c,
        _ => ERROR_SLOTS - 1,
    }
}

fn slot_class(slot: usize) -> String {
    if slot >= ERROR_SLOTS - 1 {
        return "unknown".to_string();
    }
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let (a, c) = (slot / 36, slot % 36);
    String::from_utf8(vec![DIGITS[a], DIGITS[c]]).unwrap_or_default()
}
