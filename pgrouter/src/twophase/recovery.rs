//! Finishes the two-phase transactions a crash (of this or any other router
//! instance) left prepared: at start-up and every [`RECOVERY_INTERVAL`].
//!
//! One pass for one sharded database:
//! 1. read every decision record (before looking at the shards: a record
//!    seen here was written after all its PREPAREs, which matters in 4);
//! 2. on each shard primary, list this coordinator's prepared transactions
//!    in that shard's database (`pg_prepared_xacts`);
//! 3. act on each as [`decide`] says: COMMIT PREPARED, ROLLBACK PREPARED,
//!    claim an abort, or wait;
//! 4. when every shard was scanned, delete the records this database wrote
//!    whose transactions are prepared nowhere any more (and the ids commits
//!    finished here). Records of another logical database sharing the
//!    table are left to it: it alone sees all the shards they concern.
//!
//! COMMIT/ROLLBACK PREPARED must come from the role that prepared (or a
//! superuser): the pass runs as the coordinator user and does `SET ROLE
//! <owner>` when the owner is another role; if that is not allowed, it logs
//! in as the users.toml entry whose `server_user` is the owner.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pgrouter_config::Config;

use super::decide::{decide, record_done, Action, Record};
use super::gid::like_pattern;
use super::store::DecisionStore;
use super::{wire, Shared};
use crate::client::params::{quote_ident, quote_literal};
use crate::metrics::Metrics;
use crate::pool::{Cluster, ReadLimits, UserPools};
use crate::router::Role;
use crate::server::{ServerConn, ServerTarget};

/// How often every router looks for in-doubt transactions.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// One prepared transaction as `pg_prepared_xacts` shows it.
struct Prepared {
    gid: String,
    owner: String,
    age: Duration,
}

pub struct Recovery {
    database: String,
    store: Arc<DecisionStore>,
    /// The coordinator user's pools: each shard's current primary.
    pools: Arc<UserPools>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Per shard: the connection passes scan and finish with, and where it goes.
    conns: tokio::sync::Mutex<Vec<Option<(ServerTarget, ServerConn)>>>,
    /// The coordinator id, once read.
    coordinator: tokio::sync::OnceCell<String>,
    /// Ids committed everywhere by their committer: records to delete.
    finished: parking_lot::Mutex<Vec<String>>,
}

impl Recovery {
    pub(super) fn new(
        database: String,
        store: Arc<DecisionStore>,
        pools: Arc<UserPools>,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Recovery {
        let shards = pools.shards.len();
        Recovery {
            database,
            store,
            pools,
            shared,
            metrics,
            timeout,
            conns: tokio::sync::Mutex::new((0..shards).map(|_| None).collect()),
            coordinator: tokio::sync::OnceCell::new(),
            finished: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The coordinator user's pools (each shard's primary).
    pub fn pools(&self) -> &Arc<UserPools> {
        &self.pools
    }

    /// Notes a transaction its committer finished on every shard: its
    /// record is deleted by the next pass (lazily, in one statement).
    pub(super) fn finished(&self, gid: String) {
        self.finished.lock().push(gid);
    }

    /// [`Self::pass`], abandoned after `limit`: then every connection of the
    /// pass is dropped (one may be waiting for an answer).
    pub async fn pass_within(&self, config: &Config, cluster: &Cluster, limit: Duration) -> usize {
        match crate::timer::timeout(limit, self.pass(config, cluster)).await {
            Ok(n) => n,
            Err(_) => {
                tracing::warn!(database = %self.database, "2PC recovery: pass timed out; retrying with new connections");
                self.conns.lock().await.iter_mut().for_each(|c| *c = None);
                0
            }
        }
    }

    /// One pass (see the module doc). `config` and `cluster` are the
    /// runtime's, for the owners' own logins. Returns how many prepared
    /// transactions were finished.
    pub async fn pass(&self, config: &Config, cluster: &Cluster) -> usize {
        let db = self.database.as_str();
        let coordinator = match self.coordinator().await {
            Ok(Some(id)) => id,
            // No decision table yet: no router ever prepared here.
            Ok(None) => return 0,
            Err(e) => {
                tracing::warn!(database = db, error = %e, "2PC recovery: decision table unreachable; retrying");
                return 0;
            }
        };
        let done: Vec<String> = std::mem::take(&mut *self.finished.lock());
        if let Err(e) = self.store.delete(&done).await {
            tracing::debug!(database = db, error = %e, "2PC recovery: records of finished commits not deleted yet");
        }
        // (record, age, whether this database wrote it)
        let records: HashMap<String, (Record, Duration, bool)> = match self.store.read_all().await {
            Ok(rows) => rows
                .into_iter()
                .map(|r| {
                    let ours = r.database == self.database;
                    (r.gid, (r.record, r.age, ours))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(database = db, error = %e, "2PC recovery: cannot read the decision records");
                return 0;
            }
        };
        let mut conns = self.conns.lock().await;
        let mut still_prepared = HashSet::new();
        let mut all_scanned = true;
        let mut resolved = 0;
        for shard in 0..conns.len() {
            let Some(conn) = self.conn(shard, &mut conns[shard]).await else {
                all_scanned = false;
                continue;
            };
            let list = match scan(conn, &coordinator).await {
                Ok(list) => list,
                Err(e) => {
                    tracing::warn!(database = db, shard, error = %e, "2PC recovery: cannot list prepared transactions");
                    conns[shard] = None;
                    all_scanned = false;
                    continue;
                }
            };
            for p in list {
                let record = records.get(&p.gid).map_or(Record::Missing, |r| r.0);
                if self.settle(conn, config, cluster, shard, &p, record).await {
                    resolved += 1;
                } else {
                    still_prepared.insert(p.gid);
                }
            }
            if !wire::reusable(conn) {
                conns[shard] = None;
            }
        }
        drop(conns);
        if all_scanned {
            let gone: Vec<String> = records
                .iter()
                // Another logical database may share this decision table
                // but have other shards: only the writer's database has
                // looked at all the shards of its transactions.
                .filter(|(gid, (record, age, ours))| {
                    *ours
                        && record_done(*record, *age, still_prepared.contains(*gid))
                        && !self.shared.is_in_flight(gid)
                })
                .map(|(gid, _)| gid.clone())
                .collect();
            if let Err(e) = self.store.delete(&gone).await {
                tracing::warn!(database = db, error = %e, "2PC recovery: cannot delete finished records");
            }
        }
        resolved
    }

    async fn coordinator(&self) -> Result<Option<String>, super::store::StoreError> {
        if let Some(id) = self.coordinator.get() {
            return Ok(Some(id.clone()));
        }
        let id = self.store.coordinator_id().await?;
        if let Some(id) = &id {
            let _ = self.coordinator.set(id.clone());
        }
        Ok(id)
    }

    /// The shard's connection, (re)made when missing, broken, or its
    /// primary moved.
    async fn conn<'c>(
        &self,
        shard: usize,
        slot: &'c mut Option<(ServerTarget, ServerConn)>,
    ) -> Option<&'c mut ServerConn> {
        let target = self.primary(shard)?;
        if slot
            .as_ref()
            .is_none_or(|(t, c)| *t != target || !wire::reusable(c))
        {
            *slot = None;
            match ServerConn::connect(&target, self.timeout).await {
                Ok(c) => *slot = Some((target, c)),
                Err(e) => {
                    tracing::warn!(database = %self.database, shard, server = %target.addr(), error = %e, "2PC recovery: cannot connect");
                    return None;
                }
            }
        }
        slot.as_mut().map(|(_, c)| c)
    }

    /// Shard `shard`'s primary as the coordinator user.
    fn primary(&self, shard: usize) -> Option<ServerTarget> {
        let slot = self.pools.shards.get(shard)?.pick(
            Role::Primary,
            self.pools.balancing,
            &[],
            ReadLimits::default(),
        )?;
        Some(slot.pool.target.clone())
    }

    /// Acts on one prepared transaction; true when it is finished.
    async fn settle(
        &self,
        conn: &mut ServerConn,
        config: &Config,
        cluster: &Cluster,
        shard: usize,
        p: &Prepared,
        record: Record,
    ) -> bool {
        let db = self.database.as_str();
        let mut action = decide(record, p.age, self.shared.is_in_flight(&p.gid));
        if action == Action::ClaimAbort {
            match self.store.claim_abort(&p.gid).await {
                Ok(r) => action = decide(r, p.age, false),
                Err(e) => {
                    tracing::warn!(database = db, gid = %p.gid, error = %e, "2PC recovery: cannot record the abort");
                    return false;
                }
            }
        }
        let (verb, word) = match action {
            Action::CommitPrepared => ("COMMIT PREPARED", "committed"),
            Action::RollbackPrepared => ("ROLLBACK PREPARED", "rolled_back"),
            Action::ClaimAbort | Action::Wait => return false,
        };
        let sql = format!("{verb} {}", quote_literal(&p.gid));
        match finish(conn, &sql, &p.owner).await {
            Ok(Finished::Done) => {}
            Ok(Finished::Gone) => return true,
            Ok(Finished::NotAllowed(why)) => {
                match self
                    .finish_as_owner(config, cluster, shard, &sql, &p.owner)
                    .await
                {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(database = db, shard, gid = %p.gid, owner = %p.owner, error = %e, first = %why, "2PC recovery: cannot finish as the owner");
                        return false;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(database = db, shard, gid = %p.gid, error = %e, "2PC recovery: {verb} failed");
                return false;
            }
        }
        tracing::info!(database = db, shard, gid = %p.gid, owner = %p.owner, outcome = word, "2PC recovery: finished an in-doubt transaction");
        self.metrics.twophase.record_recovered(word);
        true
    }

    /// Logs in as the users.toml entry whose server role is `owner` and
    /// runs `sql` there.
    async fn finish_as_owner(
        &self,
        config: &Config,
        cluster: &Cluster,
        shard: usize,
        sql: &str,
        owner: &str,
    ) -> Result<(), String> {
        let entry = config
            .users
            .iter()
            .filter(|u| u.database == self.database && u.server_user == owner)
            // JWT-only entries have no server login (nor pools).
            .filter(|u| u.auth != pgrouter_config::AuthMethod::Jwt)
            .find(|u| u.server_password.is_some() || u.password.is_none())
            .ok_or_else(|| {
                format!(
                    "no users.toml entry for database \"{}\" logs in as role \"{owner}\"",
                    self.database
                )
            })?;
        let pools = cluster
            .pools_for(&entry.name, &self.database)
            .ok_or("no pools for the owner's entry")?;
        let target = pools
            .shards
            .get(shard)
            .and_then(|s| s.pick(Role::Primary, pools.balancing, &[], ReadLimits::default()))
            .map(|s| s.pool.target.clone())
            .ok_or("the shard has no primary")?;
        let mut conn = ServerConn::connect(&target, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let r = wire::run(&mut conn, sql).await.map_err(|e| e.to_string());
        conn.terminate().await;
        match r?.error {
            None => Ok(()),
            Some(e) if e.code == "42704" => Ok(()),
            Some(e) => Err(e.message),
        }
    }
}

/// What finishing one prepared transaction came to.
enum Finished {
    Done,
    /// Already finished by someone else (42704: no such prepared transaction).
    Gone,
    /// This login may not act for the owner (SET ROLE refused, or 42501).
    NotAllowed(String),
}

/// Runs `sql` (COMMIT/ROLLBACK PREPARED) as `owner` on `conn`.
async fn finish(conn: &mut ServerConn, sql: &str, owner: &str) -> Result<Finished, String> {
    // Both are reported by the server at login (ParameterStatus).
    let login = conn.params.get("session_authorization").map(String::as_str);
    let superuser = conn.params.get("is_superuser").map(String::as_str) == Some("on");
    let switch = !superuser && login != Some(owner);
    if switch {
        let set = format!("SET ROLE {}", quote_ident(owner));
        let r = wire::run(conn, &set).await.map_err(|e| e.to_string())?;
        if let Some(e) = r.error {
            return Ok(Finished::NotAllowed(e.message));
        }
    }
    let r = wire::run(conn, sql).await.map_err(|e| e.to_string());
    if switch {
        if let Ok(reset) = wire::run(conn, "RESET ROLE").await {
            if reset.error.is_some() {
                conn.tx_status = wire::BROKEN;
            }
        }
    }
    match r?.error {
        None => Ok(Finished::Done),
        Some(e) if e.code == "42704" => Ok(Finished::Gone),
        Some(e) if e.code == "42501" => Ok(Finished::NotAllowed(e.message)),
        Some(e) => Err(format!("{} ({})", e.message, e.code)),
    }
}

/// This coordinator's prepared transactions in the connection's database.
async fn scan(conn: &mut ServerConn, coordinator: &str) -> Result<Vec<Prepared>, String> {
    let sql = format!(
        "SELECT gid, owner, (extract(epoch FROM now() - prepared) * 1000)::bigint::text \
         FROM pg_catalog.pg_prepared_xacts \
         WHERE database = current_database() AND gid LIKE {}",
        quote_literal(&like_pattern(coordinator))
    );
    let rows = wire::rows(conn, &sql).await.map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let mut r = r.into_iter();
            let gid = r.next().flatten()?;
            let owner = r.next().flatten()?;
            let ms: u64 = r.next().flatten()?.parse().unwrap_or(0);
            Some(Prepared {
                gid,
                owner,
                age: Duration::from_millis(ms),
            })
        })
        .collect())
}
