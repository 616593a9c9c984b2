//! The durable decision records, in `coordinator_database` on shard 0's
//! primary: `pgrouter_2pc_decisions` (one row per transaction id that has a
//! decision) and `pgrouter_2pc_meta` (this coordinator's id and the boot
//! counter; see `gid.rs`). Both are created when first needed.
//!
//! Connections log in as the sharded database's coordinator user (see
//! `Coordinator`) and are kept in small idle lists, one per worker thread
//! (and one for the accepting thread): a commit costs one round trip here,
//! not a login, and a connection stays with the event loop it was opened on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::decide::Record;
use super::wire;
use crate::client::params::{quote_ident, quote_literal};
use crate::pool::{ReadLimits, UserPools};
use crate::protocol::backend::ErrorFields;
use crate::router::Role;
use crate::server::{ServerConn, ServerError, ServerTarget};

/// Idle connections kept per thread for the next commit.
const IDLE_KEPT: usize = 2;

/// Created in one implicit transaction, under an advisory lock so that
/// routers starting together do not trip over each other's CREATE.
const SCHEMA: &str = "SELECT pg_catalog.pg_advisory_xact_lock(7450734578393);
CREATE TABLE IF NOT EXISTS public.pgrouter_2pc_meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    coordinator_id text NOT NULL,
    boots bigint NOT NULL DEFAULT 0);
INSERT INTO public.pgrouter_2pc_meta (coordinator_id)
    VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 12))
    ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS public.pgrouter_2pc_decisions (
    gid text PRIMARY KEY,
    outcome text NOT NULL CHECK (outcome IN ('commit', 'abort')),
    shards int[] NOT NULL DEFAULT '{}',
    owner text NOT NULL DEFAULT '',
    instance text NOT NULL DEFAULT '',
    database text NOT NULL DEFAULT '',
    created timestamptz NOT NULL DEFAULT now())";

/// Whether both tables exist (checked before creating: CREATE ... IF NOT
/// EXISTS needs the CREATE privilege even when the table is there).
const SCHEMA_PRESENT: &str = "SELECT (to_regclass('public.pgrouter_2pc_meta') IS NOT NULL \
     AND to_regclass('public.pgrouter_2pc_decisions') IS NOT NULL)::text";

/// Why a decision-table operation did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Nothing was written: the server could not be reached, the tables
    /// could not be made, or PostgreSQL refused the statement.
    #[error("{0}")]
    NotDone(String),
    /// The connection failed after the statement was sent: it may or may
    /// not have been carried out.
    #[error("{0}")]
    Unknown(String),
}

/// What happened to a committer's `commit` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The record is durable: the transaction is committed.
    Commit,
    /// Recovery had already written `abort` for this id.
    AbortedBefore,
}

/// One decision row as recovery reads it.
#[derive(Debug, Clone)]
pub struct DecisionRow {
    pub gid: String,
    pub record: Record,
    pub age: Duration,
    /// The logical database whose router wrote it: only that database's
    /// recovery, which sees all its shards, may decide it is finished.
    pub database: String,
}

pub struct DecisionStore {
    /// The coordinator user's pools: shard 0's current primary is found
    /// through them, so the store follows a failover.
    pools: Arc<UserPools>,
    /// The logical database whose coordinator this is (stored in records).
    logical: String,
    /// `coordinator_database`; "" = shard 0's own database.
    database: String,
    timeout: Duration,
    /// Per worker, then one for every other thread (see [`Self::idle`]).
    idle: Vec<parking_lot::Mutex<Vec<ServerConn>>>,
    schema_ready: AtomicBool,
}

impl DecisionStore {
    pub fn new(
        pools: Arc<UserPools>,
        logical: String,
        database: String,
        timeout: Duration,
    ) -> DecisionStore {
        DecisionStore {
            pools,
            logical,
            database,
            timeout,
            idle: (0..=crate::worker::count())
                .map(|_| parking_lot::Mutex::new(Vec::new()))
                .collect(),
            schema_ready: AtomicBool::new(false),
        }
    }

    /// Shard 0's primary, logged in as the coordinator user, in the
    /// coordinator database.
    fn target(&self) -> Result<ServerTarget, StoreError> {
        let shard0 = self.pools.shards.first();
        let slot = shard0.and_then(|s| {
            s.pick(
                Role::Primary,
                self.pools.balancing,
                &[],
                ReadLimits::default(),
            )
        });
        let mut target = slot
            .map(|s| s.pool.target.clone())
            .ok_or_else(|| StoreError::NotDone("shard 0 has no primary".into()))?;
        if !self.database.is_empty() {
            target.database = self.database.clone();
        }
        Ok(target)
    }

    /// Where the records are, for messages: `database on host:port`.
    pub fn describe(&self) -> String {
        match self.target() {
            Ok(t) => format!("database \"{}\" on {}", t.database, t.addr()),
            Err(_) => "shard 0's primary".into(),
        }
    }

    /// The current thread's idle list.
    fn idle(&self) -> Option<&parking_lot::Mutex<Vec<ServerConn>>> {
        let i = crate::worker::current().unwrap_or(self.idle.len() - 1);
        self.idle.get(i)
    }

    async fn take(&self) -> Result<ServerConn, StoreError> {
        if let Some(conn) = self.idle().and_then(|l| l.lock().pop()) {
            return Ok(conn);
        }
        let target = self.target()?;
        let mut conn = ServerConn::connect(&target, self.timeout)
            .await
            .map_err(|e| {
                StoreError::NotDone(format!(
                    "cannot reach the two-phase commit decision table in database \"{}\" on {}: {e}",
                    target.database,
                    target.addr()
                ))
            })?;
        // The records must be durable before any COMMIT PREPARED, whatever
        // the server's default.
        match wire::run(&mut conn, "SET synchronous_commit TO on").await {
            Ok(r) if r.error.is_none() => Ok(conn),
            Ok(r) => Err(StoreError::NotDone(error_text(r.error))),
            Err(e) => Err(StoreError::NotDone(e.to_string())),
        }
    }

    fn give_back(&self, conn: ServerConn) {
        if let Some(list) = self.idle() {
            let mut idle = list.lock();
            if wire::reusable(&conn) && idle.len() < IDLE_KEPT {
                idle.push(conn);
            }
        }
    }

    /// Makes the tables if they are missing.
    async fn ensure_schema(&self, conn: &mut ServerConn) -> Result<(), StoreError> {
        if self.schema_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let present = wire::rows(conn, SCHEMA_PRESENT)
            .await
            .map_err(|e| StoreError::NotDone(e.to_string()))?;
        if first(&present) != Some("true") {
            let r = wire::run(conn, SCHEMA)
                .await
                .map_err(|e| StoreError::NotDone(e.to_string()))?;
            if let Some(e) = r.error {
                return Err(StoreError::NotDone(self.cannot_create(&e.message)));
            }
            tracing::info!(at = %self.describe(), "created the two-phase commit decision tables");
        }
        self.schema_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Why the tables could not be made, naming who needs which privilege
    /// where: the operator fixes it with one GRANT (PostgreSQL 15 grants
    /// CREATE on schema public to no one but its owner).
    fn cannot_create(&self, cause: &str) -> String {
        let user = match self.target() {
            Ok(t) => quote_ident(&t.user),
            Err(_) => "the coordinator user".into(),
        };
        format!(
            "cannot create the two-phase commit tables pgrouter_2pc_meta and pgrouter_2pc_decisions \
             in {} as the coordinator user {user}: {cause} (GRANT CREATE ON SCHEMA public TO {user} \
             there, or create the tables beforehand as README \"Two-phase commit\" shows)",
            self.describe()
        )
    }

    /// A connection from the idle list (or a new one), with the tables in
    /// place when `create`; hand it back with [`Self::give_back`].
    async fn open(&self, create: bool) -> Result<ServerConn, StoreError> {
        let mut conn = self.take().await?;
        if create {
            if let Err(e) = self.ensure_schema(&mut conn).await {
                self.give_back(conn);
                return Err(e);
            }
        }
        Ok(conn)
    }

    /// Takes the next boot number: (coordinator id, boot).
    pub async fn boot(&self) -> Result<(String, u64), StoreError> {
        let mut conn = self.open(true).await?;
        let rows = wire::rows(
                &mut conn,
                "UPDATE public.pgrouter_2pc_meta SET boots = boots + 1 RETURNING coordinator_id, boots::text",
            )
            .await
            .map_err(not_done);
        self.give_back(conn);
        let rows = rows?;
        let row = rows.first();
        let id = row.and_then(|r| r.first().cloned().flatten());
        let boot = row
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|b| b.parse().ok());
        match (id, boot) {
            (Some(id), Some(boot)) if super::gid::is_coordinator_id(&id) => Ok((id, boot)),
            _ => Err(StoreError::NotDone(
                "pgrouter_2pc_meta has no usable row (coordinator_id must be 12 hex digits)".into(),
            )),
        }
    }

    /// The coordinator id, without creating anything: `None` when the
    /// tables do not exist (then no transaction of this coordinator can
    /// exist either).
    pub async fn coordinator_id(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.open(false).await?;
        let r = async {
            let present = wire::rows(&mut conn, SCHEMA_PRESENT)
                .await
                .map_err(not_done)?;
            if first(&present) != Some("true") {
                return Ok(None);
            }
            let rows = wire::rows(
                &mut conn,
                "SELECT coordinator_id FROM public.pgrouter_2pc_meta",
            )
            .await
            .map_err(not_done)?;
            Ok(first(&rows)
                .filter(|id| super::gid::is_coordinator_id(id))
                .map(str::to_string))
        }
        .await;
        self.give_back(conn);
        r
    }

    /// Writes the `commit` record of `gid`. Durable when this returns
    /// `Ok(Recorded::Commit)`.
    pub async fn record_commit(
        &self,
        gid: &str,
        shards: &[usize],
        owner: &str,
        instance: &str,
    ) -> Result<Recorded, StoreError> {
        let shard_list: Vec<String> = shards.iter().map(|s| s.to_string()).collect();
        let sql = format!(
            "INSERT INTO public.pgrouter_2pc_decisions (gid, outcome, shards, owner, instance, database) \
             VALUES ({}, 'commit', '{{{}}}', {}, {}, {})",
            quote_literal(gid),
            shard_list.join(","),
            quote_literal(owner),
            quote_literal(instance),
            quote_literal(&self.logical)
        );
        let mut conn = self.open(true).await?;
        let r = match wire::run(&mut conn, &sql).await {
            Ok(r) => match r.error {
                None => Ok(Recorded::Commit),
                Some(e) if e.code == "23505" => Ok(Recorded::AbortedBefore),
                Some(e) => Err(StoreError::NotDone(e.message)),
            },
            Err(e) => Err(StoreError::Unknown(e.to_string())),
        };
        self.give_back(conn);
        r
    }

    /// Writes `abort` for `gid` unless a record exists, then returns the
    /// record that is there (the arbiter's answer; see `decide.rs`).
    pub async fn claim_abort(&self, gid: &str) -> Result<Record, StoreError> {
        let insert = format!(
            "INSERT INTO public.pgrouter_2pc_decisions (gid, outcome, database) VALUES ({}, 'abort', {}) \
             ON CONFLICT (gid) DO NOTHING",
            quote_literal(gid),
            quote_literal(&self.logical)
        );
        let select = format!(
            "SELECT outcome FROM public.pgrouter_2pc_decisions WHERE gid = {}",
            quote_literal(gid)
        );
        let mut conn = self.open(true).await?;
        let r = async {
            let r = wire::run(&mut conn, &insert)
                .await
                .map_err(|e| StoreError::Unknown(e.to_string()))?;
            if let Some(e) = r.error {
                return Err(StoreError::NotDone(e.message));
            }
            let rows = wire::rows(&mut conn, &select)
                .await
                .map_err(|e| StoreError::Unknown(e.to_string()))?;
            Ok(first(&rows).map_or(Record::Missing, Record::from_outcome))
        }
        .await;
        self.give_back(conn);
        r
    }

    /// Every record (empty when the tables do not exist yet).
    pub async fn read_all(&self) -> Result<Vec<DecisionRow>, StoreError> {
        let mut conn = self.open(false).await?;
        let rows = async {
            let present = wire::rows(&mut conn, SCHEMA_PRESENT)
                .await
                .map_err(not_done)?;
            if first(&present) != Some("true") {
                return Ok(Vec::new());
            }
            wire::rows(
                &mut conn,
                "SELECT gid, outcome, (extract(epoch FROM now() - created) * 1000)::bigint::text, \
                 database FROM public.pgrouter_2pc_decisions",
            )
            .await
            .map_err(not_done)
        }
        .await;
        self.give_back(conn);
        Ok(rows?
            .into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                let gid = r.next().flatten()?;
                let record = Record::from_outcome(r.next().flatten()?.as_str());
                let ms: u64 = r.next().flatten()?.parse().unwrap_or(0);
                let database = r.next().flatten()?;
                Some(DecisionRow {
                    gid,
                    record,
                    age: Duration::from_millis(ms),
                    database,
                })
            })
            .collect())
    }

    /// Deletes the records of `gids` (their transactions are finished).
    pub async fn delete(&self, gids: &[String]) -> Result<(), StoreError> {
        if gids.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = gids.iter().map(|g| quote_literal(g)).collect();
        let sql = format!(
            "DELETE FROM public.pgrouter_2pc_decisions WHERE gid IN ({})",
            list.join(", ")
        );
        let mut conn = self.open(false).await?;
        let r = match wire::run(&mut conn, &sql).await {
            Ok(r) => match r.error {
                None => Ok(()),
                Some(e) => Err(StoreError::NotDone(e.message)),
            },
            Err(e) => Err(StoreError::Unknown(e.to_string())),
        };
        self.give_back(conn);
        r
    }
}

fn not_done(e: ServerError) -> StoreError {
    StoreError::NotDone(e.to_string())
}

fn error_text(e: Option<ErrorFields>) -> String {
    e.map(|e| e.message).unwrap_or_default()
}

/// The first column of the first row.
fn first(rows: &[Vec<Option<String>>]) -> Option<&str> {
    rows.first()?.first()?.as_deref()
}
