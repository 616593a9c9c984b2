//! Read-your-writes (`read_your_writes = true`): after a session commits a
//! write on a shard's primary, its reads on that shard go only to replicas
//! that have replayed that commit, else to the primary.
//!
//! The commit's WAL position is learned without a round trip of its own:
//! the primary's position measured by the first health check that started
//! after the commit is at least the commit's. Until such a check has run,
//! no replica qualifies and reads go to the primary (at most about two
//! `healthcheck_interval_ms`); from then on a replica qualifies as soon as
//! its own check shows it has replayed that far.

use std::time::Instant;

use crate::pool::{ReadLimits, ShardPools};

/// Per shard: what the session last wrote there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Written {
    #[default]
    Never,
    /// Committed at this time; its WAL position is not known yet.
    At(Instant),
    /// Committed at or before this WAL position.
    Lsn(u64),
}

#[derive(Debug, Default)]
pub struct ReadYourWrites {
    shards: Vec<Written>,
}

impl ReadYourWrites {
    /// A unit of work that wrote on `shard`'s primary has ended.
    pub fn wrote(&mut self, shard: usize, at: Instant) {
        if self.shards.len() <= shard {
            self.shards.resize(shard + 1, Written::Never);
        }
        self.shards[shard] = Written::At(at);
    }

    /// The WAL position a replica of `shard` must have replayed to take the
    /// session's next read (`u64::MAX`: none may yet). `primary_lsn_after`
    /// gives the shard's primary position measured by a check started after
    /// a given time, if there is one.
    pub fn min_lsn(
        &mut self,
        shard: usize,
        primary_lsn_after: impl FnOnce(Instant) -> Option<u64>,
    ) -> Option<u64> {
        let written = self.shards.get_mut(shard)?;
        match *written {
            Written::Never => None,
            Written::Lsn(lsn) => Some(lsn),
            Written::At(at) => match primary_lsn_after(at) {
                Some(lsn) => {
                    *written = Written::Lsn(lsn);
                    Some(lsn)
                }
                None => Some(u64::MAX),
            },
        }
    }
}

/// The limits on replicas for a read of the session on `shard`.
pub fn read_limits(
    max_lag_ms: u64,
    ryw: Option<&mut ReadYourWrites>,
    shard: usize,
    servers: &ShardPools,
) -> ReadLimits {
    let primary_lsn_after = |at: Instant| {
        let primary = servers.servers.iter().find(|s| s.health.is_primary())?;
        primary.health.lsn_measured_after(at)
    };
    ReadLimits {
        max_lag_ms,
        min_lsn: ryw.and_then(|r| r.min_lsn(shard, primary_lsn_after)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nothing_written_means_no_limit() {
        let mut r = ReadYourWrites::default();
        assert_eq!(r.min_lsn(0, |_| Some(5)), None);
        r.wrote(2, Instant::now());
        assert_eq!(
            r.min_lsn(0, |_| Some(5)),
            None,
            "other shards are not limited"
        );
    }

    #[test]
    fn until_the_primary_is_measured_after_the_write_no_replica_qualifies() {
        let mut r = ReadYourWrites::default();
        let t = Instant::now();
        r.wrote(1, t);
        assert_eq!(r.min_lsn(1, |_| None), Some(u64::MAX));
        assert_eq!(r.min_lsn(1, |since| (since == t).then_some(700)), Some(700));
        // Kept: later reads compare with the same position, no lookup.
        assert_eq!(r.min_lsn(1, |_| panic!("not asked again")), Some(700));
        r.wrote(1, t + Duration::from_millis(5));
        assert_eq!(
            r.min_lsn(1, |_| None),
            Some(u64::MAX),
            "a new write starts over"
        );
    }
}
