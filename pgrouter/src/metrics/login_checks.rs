//! Counters of the logins checked against the database (`[auth_query]`) and
//! by the remote token API (`[jit]`). Labels are fixed result words, never
//! user names, so the series stay few however many users log in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::ShardedHistogram;
use super::ResultCounts;

pub struct LoginCheckMetrics {
    /// Lookups run on the server: "found", "not_found", "error".
    pub(super) lookups: ResultCounts,
    /// Logins answered from the secret cache (no query).
    pub(super) lookup_cache_hits: AtomicU64,
    pub(super) lookup_time: ShardedHistogram,
    /// API calls: "granted", "not_granted", "rejected", "unavailable".
    pub(super) jit_checks: ResultCounts,
    pub(super) jit_time: ShardedHistogram,
}

impl Default for LoginCheckMetrics {
    fn default() -> Self {
        LoginCheckMetrics {
            lookups: ResultCounts::default(),
            lookup_cache_hits: AtomicU64::new(0),
            lookup_time: ShardedHistogram::new(2),
            jit_checks: ResultCounts::default(),
            jit_time: ShardedHistogram::new(2),
        }
    }
}

impl LoginCheckMetrics {
    /// One auth_query lookup that ran on a server, and how long it took.
    pub fn record_lookup(&self, result: &'static str, took: Duration) {
        self.lookups.add(result);
        self.lookup_time.record(took);
    }

    /// A login whose secret came from the cache.
    pub fn record_lookup_cache_hit(&self) {
        self.lookup_cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// One call to the JIT API, and how long it took.
    pub fn record_jit_check(&self, result: &'static str, took: Duration) {
        self.jit_checks.add(result);
        self.jit_time.record(took);
    }
}
