//! Counters of two-phase commit: commits by result, and in-doubt
//! transactions finished by recovery. Fixed result words only.

use super::ResultCounts;

#[derive(Default)]
pub struct TwoPhaseMetrics {
    /// "committed", "rolled_back", "in_doubt".
    pub(super) commits: ResultCounts,
    /// "committed", "rolled_back".
    pub(super) recovered: ResultCounts,
}

impl TwoPhaseMetrics {
    /// One multi-shard commit's result.
    pub fn record_commit(&self, result: &'static str) {
        self.commits.add(result);
    }

    /// One prepared transaction finished by recovery.
    pub fn record_recovered(&self, result: &'static str) {
        self.recovered.add(result);
    }
}
