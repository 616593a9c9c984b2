//! What recovery does with one prepared transaction: a pure function of
//! what the decision table says, how long ago it was prepared, and whether
//! this process is committing it right now.
//!
//! The decision table is the only arbiter. A committer writes `commit` with
//! a plain INSERT after every shard prepared; recovery, finding a prepared
//! transaction with no record after the grace period, writes `abort` with
//! `ON CONFLICT DO NOTHING` and then obeys whatever row is there. Whichever
//! INSERT comes first wins, so a slow committer and a recovering instance can
//! never decide differently (the loser of the race sees the winner's row:
//! the committer's INSERT fails on the primary key and it rolls back). The
//! grace period only keeps recovery from aborting live commits needlessly;
//! correctness does not depend on clocks.

use std::time::Duration;

/// A prepared transaction younger than this, with no record, may belong to
/// a commit still preparing its other shards (on another instance): left
/// alone. With recovery every [`super::RECOVERY_INTERVAL`], an abandoned
/// transaction is rolled back within about grace + interval (< 30 s).
pub const GRACE: Duration = Duration::from_secs(10);

/// An `abort` record is kept this long after its transaction is gone, so a
/// committer still preparing other shards (impossible in practice: see
/// [`MAX_PREPARE_PHASE`]) cannot write `commit` for the same id afterwards.
pub const ABORT_RETENTION: Duration = Duration::from_secs(3600);

/// A committer whose prepare phase took longer than this gives up (rolls
/// back) instead of writing its record: together with [`ABORT_RETENTION`]
/// this guarantees an `abort` record outlives every committer that could
/// still try to write `commit` for its id.
pub const MAX_PREPARE_PHASE: Duration = Duration::from_secs(600);

/// What the decision table says about one transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Commit,
    Abort,
    Missing,
}

impl Record {
    /// The `outcome` column's value.
    pub fn from_outcome(s: &str) -> Record {
        match s {
            "commit" => Record::Commit,
            "abort" => Record::Abort,
            _ => Record::Missing,
        }
    }
}

/// What to do with a prepared transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CommitPrepared,
    RollbackPrepared,
    /// No record and old enough: write `abort` unless a record appeared
    /// meanwhile, then act on the row that is there.
    ClaimAbort,
    /// Leave it for now: this process is finishing it, or it is too young.
    Wait,
}

/// Recovery's rule for one prepared transaction (see the module doc).
pub fn decide(record: Record, age: Duration, in_flight_here: bool) -> Action {
    if in_flight_here {
        return Action::Wait;
    }
    match record {
        Record::Commit => Action::CommitPrepared,
        Record::Abort => Action::RollbackPrepared,
        Record::Missing if age >= GRACE => Action::ClaimAbort,
        Record::Missing => Action::Wait,
    }
}

/// Whether a record read *before* scanning the shards may be deleted: its
/// transaction is prepared on no shard any more. A `commit` record is only
/// written after every shard prepared, so "prepared nowhere" then means
/// "committed everywhere". An `abort` record is kept [`ABORT_RETENTION`].
pub fn record_done(record: Record, record_age: Duration, prepared_somewhere: bool) -> bool {
    if prepared_somewhere {
        return false;
    }
    match record {
        Record::Commit => true,
        Record::Abort => record_age >= ABORT_RETENTION,
        Record::Missing => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Duration = Duration::from_secs(60);
    const YOUNG: Duration = Duration::from_secs(1);

    #[test]
    fn the_record_decides() {
        assert_eq!(decide(Record::Commit, YOUNG, false), Action::CommitPrepared);
        assert_eq!(decide(Record::Commit, OLD, false), Action::CommitPrepared);
        assert_eq!(
            decide(Record::Abort, YOUNG, false),
            Action::RollbackPrepared
        );
        assert_eq!(decide(Record::Abort, OLD, false), Action::RollbackPrepared);
    }

    #[test]
    fn no_record_waits_out_the_grace_then_claims_abort() {
        assert_eq!(decide(Record::Missing, YOUNG, false), Action::Wait);
        assert_eq!(decide(Record::Missing, GRACE, false), Action::ClaimAbort);
        assert_eq!(decide(Record::Missing, OLD, false), Action::ClaimAbort);
    }

    #[test]
    fn a_commit_in_flight_here_is_never_touched() {
        for r in [Record::Commit, Record::Abort, Record::Missing] {
            for age in [YOUNG, OLD] {
                assert_eq!(decide(r, age, true), Action::Wait, "{r:?} {age:?}");
            }
        }
    }

    #[test]
    fn records_are_deleted_once_nothing_is_prepared() {
        assert!(record_done(Record::Commit, YOUNG, false));
        assert!(!record_done(Record::Commit, OLD, true));
        assert!(!record_done(Record::Abort, OLD, false));
        assert!(!record_done(Record::Abort, ABORT_RETENTION, true));
        assert!(record_done(Record::Abort, ABORT_RETENTION, false));
    }

    #[test]
    fn abort_records_outlive_any_committer() {
        assert!(MAX_PREPARE_PHASE * 2 <= ABORT_RETENTION);
        assert!(GRACE < Duration::from_secs(20), "must drain within 30 s");
    }

    #[test]
    fn outcome_spellings() {
        assert_eq!(Record::from_outcome("commit"), Record::Commit);
        assert_eq!(Record::from_outcome("abort"), Record::Abort);
        assert_eq!(Record::from_outcome("x"), Record::Missing);
    }
}
