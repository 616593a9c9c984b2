//! Commits a transaction that wrote on several shards (SPEC §5 "Sharding",
//! Atomicity): PREPARE TRANSACTION on every leg, a durable `commit` record,
//! COMMIT PREPARED on every leg. See `decide.rs` for why the record table is
//! the one arbiter and `recovery.rs` for who finishes what a crash leaves.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::decide::{Record, MAX_PREPARE_PHASE};
use super::gid::Gid;
use super::hooks::TestHooks;
use super::recovery::Recovery;
use super::store::{DecisionStore, Recorded, StoreError};
use super::{wire, Shared};
use crate::client::params::quote_literal;
use crate::metrics::Metrics;
use crate::protocol::backend::ErrorFields;
use crate::server::ServerConn;

/// Why a two-phase commit did not commit: what the client should get.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommitError {
    pub sqlstate: String,
    pub message: String,
}

impl CommitError {
    pub fn new(sqlstate: &str, message: impl Into<String>) -> CommitError {
        CommitError {
            sqlstate: sqlstate.to_string(),
            message: message.into(),
        }
    }
}

impl From<ErrorFields> for CommitError {
    /// A shard's own error (a deferred constraint's 23505, a serialization
    /// failure's 40001, ...), passed on as the shard said it.
    fn from(e: ErrorFields) -> CommitError {
        CommitError {
            sqlstate: e.code,
            message: e.message,
        }
    }
}

/// One per sharded logical database, built with the runtime (see
/// [`super::Coordinators`]).
pub struct Coordinator {
    database: String,
    store: Arc<DecisionStore>,
    /// `[general] instance_id` or its default.
    instance: String,
    /// (coordinator id, boot): taken from the decision table at the first
    /// commit (or at start-up by recovery) and kept for this runtime.
    boot: tokio::sync::OnceCell<(String, u64)>,
    shared: Arc<Shared>,
    hooks: TestHooks,
    metrics: Arc<Metrics>,
    recovery: Recovery,
}

/// Which legs got how far, for undoing a failed commit.
struct Progress {
    /// Per leg (in leg order): whether it is prepared. Missing = not.
    prepared: Vec<bool>,
}

impl Coordinator {
    pub(super) fn new(
        database: String,
        store: Arc<DecisionStore>,
        instance: String,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
        recovery: Recovery,
    ) -> Coordinator {
        Coordinator {
            database,
            store,
            instance,
            boot: tokio::sync::OnceCell::new(),
            shared,
            hooks: TestHooks::from_env(),
            metrics,
            recovery,
        }
    }

    /// The logical database this coordinator serves.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Finds and finishes in-doubt transactions (see `recovery.rs`).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Takes the boot number now (start-up), so the first commit does not
    /// wait for it; a failure is retried by the first commit.
    pub async fn start(&self) -> Result<(), CommitError> {
        self.ids().await.map(|_| ())
    }

    async fn ids(&self) -> Result<&(String, u64), CommitError> {
        self.boot
            .get_or_try_init(|| self.store.boot())
            .await
            .map_err(|e| {
                CommitError::new(
                    "58000",
                    format!(
                        "two-phase commit is unavailable for database \"{}\": {e}",
                        self.database
                    ),
                )
            })
    }

    /// Commits a transaction that wrote on several shards.
    ///
    /// Every leg is `(shard, connection)`: a server connection to that
    /// shard's primary inside an open transaction block (`tx_status` 'T').
    /// `owner` is the role the transaction ran as (kept in the record for
    /// people; recovery reads the owner from `pg_prepared_xacts`).
    ///
    /// Legs are sorted by shard. One leg: a plain COMMIT, nothing else
    /// (single-shard transactions pay nothing for 2PC). Several: PREPARE
    /// TRANSACTION on every leg at once (one fails: ROLLBACK PREPARED on
    /// the prepared ones, and the error of the first failing shard in shard
    /// order is returned as that shard gave it); the `commit` record,
    /// durable before anything commits (cannot be written: everything is
    /// rolled back, 58000); COMMIT PREPARED on every leg at once. Once the
    /// record is durable the transaction is committed: a COMMIT PREPARED
    /// that fails (a connection died) is logged and left to recovery, and
    /// this returns Ok.
    ///
    /// If the future is dropped half-way, the legs' connections are in an
    /// unknown state (close them); recovery settles the transaction.
    ///
    /// Afterwards every leg is outside any transaction (`tx_status` 'I'),
    /// or its connection failed and it has `tx_status` [`wire::BROKEN`]
    /// (the pool closes it at check-in). When the record's fate cannot be
    /// learnt (the coordinator's connection died mid-INSERT and cannot be
    /// reached again) the error is 08007 and recovery settles the
    /// transaction all-or-nothing.
    pub async fn commit(
        &self,
        legs: &mut [(usize, &mut ServerConn)],
        owner: &str,
    ) -> Result<(), CommitError> {
        legs.sort_by_key(|(shard, _)| *shard);
        if let [(_, conn)] = legs {
            // One shard written: the plain one-phase commit, nothing extra.
            return match wire::run(conn, "COMMIT").await {
                Ok(r) => r.error.map_or(Ok(()), |e| Err(e.into())),
                Err(e) => Err(CommitError::new(
                    "08006",
                    format!("connection lost during COMMIT ({e}); whether it committed is unknown"),
                )),
            };
        }
        if legs.is_empty() {
            return Ok(());
        }
        if let Some((shard, conn)) = legs.iter().find(|(_, c)| c.tx_status != b'T') {
            let state = conn.tx_status as char;
            let shard = *shard;
            rollback_open(legs).await;
            return Err(CommitError::new(
                "25000",
                format!("cannot commit on several shards: shard {shard} is not inside a healthy transaction block (status '{state}')"),
            ));
        }
        let (coordinator, boot) = match self.ids().await {
            Ok(ids) => ids.clone(),
            Err(mut e) => {
                rollback_open(legs).await;
                e.message
                    .push_str("; the transaction was rolled back on every shard");
                return Err(e);
            }
        };
        let gid = Gid {
            coordinator,
            boot,
            n: self.shared.next.fetch_add(1, Ordering::Relaxed) + 1,
            instance: self.instance.clone(),
        }
        .to_string();
        let _in_flight = self.shared.enter(&gid);
        let started = Instant::now();
        let result = self.run(legs, owner, &gid, started).await;
        let word = match &result {
            Ok(()) => "committed",
            Err(e) if e.sqlstate == "08007" => "in_doubt",
            Err(_) => "rolled_back",
        };
        self.metrics.twophase.record_commit(word);
        result
    }

    async fn run(
        &self,
        legs: &mut [(usize, &mut ServerConn)],
        owner: &str,
        gid: &str,
        started: Instant,
    ) -> Result<(), CommitError> {
        let prepare = format!("PREPARE TRANSACTION {}", quote_literal(gid));
        let futures = legs
            .iter_mut()
            .map(|(_, conn)| Box::pin(wire::run(conn, &prepare)) as wire::LegFuture<'_>)
            .collect();
        let results = wire::on_every_leg(futures).await;
        let mut progress = Progress {
            prepared: Vec::with_capacity(legs.len()),
        };
        let mut failure = None;
        for ((shard, _), result) in legs.iter().zip(results) {
            let error = match result {
                Ok(r) if r.error.is_none() && r.tag == "PREPARE TRANSACTION" => None,
                Ok(r) => Some(match r.error {
                    Some(e) => CommitError::from(e),
                    None => CommitError::new(
                        "25P02",
                        format!("the transaction on shard {shard} had failed and was rolled back"),
                    ),
                }),
                Err(e) => Some(CommitError::new(
                    "08006",
                    format!("connection to shard {shard} failed during PREPARE TRANSACTION ({e}); the transaction was rolled back"),
                )),
            };
            progress.prepared.push(error.is_none());
            // The first shard's error in shard order is the one reported.
            failure = failure.or(error);
        }
        if let Some(err) = failure {
            undo(legs, &progress, gid, owner).await;
            return Err(err);
        }
        self.hooks.pause_before_record().await;
        if started.elapsed() > MAX_PREPARE_PHASE {
            undo(legs, &progress, gid, owner).await;
            return Err(CommitError::new(
                "57014",
                format!("two-phase commit gave up: preparing took longer than {} s; the transaction was rolled back", MAX_PREPARE_PHASE.as_secs()),
            ));
        }
        let shards: Vec<usize> = legs.iter().map(|(s, _)| *s).collect();
        let committed = match self
            .store
            .record_commit(gid, &shards, owner, &self.instance)
            .await
        {
            Ok(Recorded::Commit) => true,
            Ok(Recorded::AbortedBefore) => false,
            Err(StoreError::NotDone(m)) => {
                undo(legs, &progress, gid, owner).await;
                return Err(CommitError::new(
                    "58000",
                    format!("two-phase commit could not write its decision record in {} ({m}); the transaction was rolled back on every shard", self.store.describe()),
                ));
            }
            Err(StoreError::Unknown(m)) => {
                self.settle_unknown(legs, &progress, gid, owner, &m).await?
            }
        };
        if !committed {
            undo(legs, &progress, gid, owner).await;
            return Err(CommitError::new(
                "40001",
                format!("two-phase commit {gid} was rolled back by recovery (it took longer than the grace period between PREPARE and its decision record); retry the transaction"),
            ));
        }
        self.hooks.pause_before_commit_prepared().await;
        let commit = format!("COMMIT PREPARED {}", quote_literal(gid));
        let futures = legs
            .iter_mut()
            .map(|(_, conn)| {
                Box::pin(wire::finish_on_leg(conn, &commit, owner)) as wire::LegFuture<'_>
            })
            .collect();
        let results = wire::on_every_leg(futures).await;
        let mut all_done = true;
        for ((shard, _), result) in legs.iter().zip(results) {
            match result {
                Ok(r) => match r.error {
                    None => {}
                    // Another instance's recovery finished it (the record says commit).
                    Some(e) if e.code == "42704" => {}
                    Some(e) => {
                        all_done = false;
                        tracing::warn!(gid, shard, error = %e.message, "COMMIT PREPARED failed; recovery will finish it");
                    }
                },
                Err(e) => {
                    all_done = false;
                    tracing::warn!(gid, shard, error = %e, "COMMIT PREPARED failed (connection lost); the transaction is committed and recovery will finish it");
                }
            }
        }
        if all_done {
            self.recovery.finished(gid.to_string());
        }
        Ok(())
    }

    /// The `commit` INSERT's connection died after sending: whether the
    /// record is there is unknown. Writing `abort` unless a record exists
    /// settles it (the same arbiter recovery uses). Ok(true): the commit
    /// record is there; Ok(false): aborted. Unreachable: left in doubt
    /// for recovery, 08007.
    async fn settle_unknown(
        &self,
        legs: &mut [(usize, &mut ServerConn)],
        progress: &Progress,
        gid: &str,
        owner: &str,
        why: &str,
    ) -> Result<bool, CommitError> {
        match self.store.claim_abort(gid).await {
            Ok(Record::Commit) => Ok(true),
            Ok(_) => {
                undo(legs, progress, gid, owner).await;
                Err(CommitError::new(
                    "58000",
                    format!("two-phase commit lost its connection to the decision record ({why}); the transaction was rolled back on every shard"),
                ))
            }
            Err(e) => Err(CommitError::new(
                "08007",
                format!("transaction resolution unknown: the decision record of {gid} could not be confirmed ({why}; then {e}); recovery will commit or roll it back on every shard alike"),
            )),
        }
    }
}

/// Rolls back every leg still in a transaction block, healthy or failed
/// (before anything was prepared; no leg has failed under us yet).
async fn rollback_open(legs: &mut [(usize, &mut ServerConn)]) {
    for (shard, conn) in legs.iter_mut() {
        if matches!(conn.tx_status, b'T' | b'E') {
            if let Err(e) = wire::run(conn, "ROLLBACK").await {
                tracing::warn!(shard = *shard, error = %e, "ROLLBACK failed (connection lost)");
            }
        }
    }
}

/// Undoes a commit that will not happen: ROLLBACK PREPARED on the prepared
/// legs, ROLLBACK on the others still in a transaction. A failure is only
/// logged: a prepared transaction with no record is rolled back by
/// recovery after the grace period.
async fn undo(legs: &mut [(usize, &mut ServerConn)], progress: &Progress, gid: &str, owner: &str) {
    let rollback_prepared = format!("ROLLBACK PREPARED {}", quote_literal(gid));
    for (i, (shard, conn)) in legs.iter_mut().enumerate() {
        let sql = if progress.prepared.get(i).copied().unwrap_or(false) {
            rollback_prepared.as_str()
        } else if conn.tx_status == b'T' {
            "ROLLBACK"
        } else {
            continue;
        };
        match wire::finish_on_leg(conn, sql, owner).await {
            Ok(r) => {
                // 42704: recovery rolled it back already (its abort won).
                if let Some(e) = r.error.filter(|e| e.code != "42704") {
                    tracing::warn!(gid, shard = *shard, error = %e.message, "{sql} failed; recovery will roll back");
                }
            }
            Err(e) => {
                tracing::warn!(gid, shard = *shard, error = %e, "{sql} failed (connection lost); recovery will roll back")
            }
        }
    }
}
