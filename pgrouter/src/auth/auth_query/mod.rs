//! `[auth_query]`: the password PostgreSQL stores for a user with no
//! users.toml entry, looked up through the pools of the `user` entry on the
//! primary of shard 0, and kept for `cache_ttl_s`.
//!
//! A burst of logins of the same user runs one lookup: each (database,
//! user) has an async lock, the first login in fetches while holding it and
//! those queued behind it take its answer, even with `cache_ttl_s = 0` (an
//! answer fetched after a login started waiting is fresh enough for it).
//! Failures are answered the same way, so a server that is down costs one
//! connect timeout per burst, not one per login.

mod check;
mod lookup;

pub use check::check_offline;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrouter_config::AuthQuery;

use super::StoredPassword;
use crate::metrics::Metrics;
use crate::router::Role;
use crate::state::Runtime;
use lookup::{fetch_secret, FetchError};

/// A cached secret is fetched again after a failed login only when it is at
/// least this old: a user who just changed the password logs in at the next
/// attempt, while a client guessing passwords costs at most one lookup a second.
const REFETCH_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Above this many cached users, expired entries are dropped.
const MAX_ENTRIES: usize = 10_000;

/// Why there is no answer. The message always names auth_query, so that a
/// client (and the log) can tell it from a wrong password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error(
        "auth_query: users.toml has no entry \"{user}\" for database \"{database}\" to run the lookup with"
    )]
    NoLookupUser { user: String, database: String },
    #[error("auth_query: the database has no primary server for the lookup")]
    NoPrimary,
    #[error("auth_query: could not reach the server for the lookup: {0}")]
    Unreachable(String),
    #[error("auth_query: the lookup failed: {0}")]
    Query(String),
    #[error(
        "auth_query: the lookup did not answer within {0} ms (three quarters of \
         client_login_timeout_ms); it was cancelled"
    )]
    TimedOut(u64),
}

impl LookupError {
    /// 08006 when the server could not be reached, 28000 when the set-up is
    /// wrong (no lookup user, the query fails).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            LookupError::NoPrimary | LookupError::Unreachable(_) | LookupError::TimedOut(_) => {
                "08006"
            }
            LookupError::NoLookupUser { .. } | LookupError::Query(_) => "28000",
        }
    }
}

/// A lookup's answer: what it found, or `None` for a user that does not
/// exist (or that the query leaves out) or has no password.
pub type Answer = Result<Option<Found>, LookupError>;

/// A user the lookup found.
#[derive(Debug, Clone)]
pub struct Found {
    /// The secret PostgreSQL stores for it.
    pub password: StoredPassword,
    /// False when the query's `rolcanlogin` column says the role may not
    /// log in: refused as PostgreSQL refuses it (28000), and only once the
    /// client proved the password, so that nobody without it learns that
    /// the role exists.
    pub can_login: bool,
}

struct Cached {
    answer: Answer,
    fetched: Instant,
    /// The query that produced it: a reload that changes the query makes
    /// every entry stale.
    query: String,
}

type Entry = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Secrets found by auth_query, per (logical database, user). Lives as long
/// as the process, across reloads.
#[derive(Default)]
pub struct SecretCache {
    entries: parking_lot::Mutex<HashMap<(String, String), Entry>>,
}

/// How fresh an answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Within `cache_ttl_s`.
    Cached,
    /// The cached secret just failed a login: fetch again unless it is
    /// younger than [`REFETCH_AFTER_FAILURE`].
    AfterFailure,
}

impl SecretCache {
    /// The secret of `user` on logical database `database`, from the cache
    /// or from the server.
    pub async fn secret(
        &self,
        rt: &Runtime,
        cfg: &AuthQuery,
        metrics: &Metrics,
        database: &str,
        user: &str,
        need: Need,
    ) -> Answer {
        let started = Instant::now();
        let entry = self.entry(database, user);
        let mut slot = entry.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.query == cfg.query) {
            let age = c.fetched.elapsed();
            // A failure is only shared with the logins that waited for it.
            let fresh = c.fetched >= started
                || match (&c.answer, need) {
                    (Err(_), _) => false,
                    (Ok(_), Need::Cached) => age < Duration::from_secs(cfg.cache_ttl_s),
                    (Ok(_), Need::AfterFailure) => age < REFETCH_AFTER_FAILURE,
                };
            if fresh {
                metrics.login_checks.record_lookup_cache_hit();
                return c.answer.clone();
            }
        }
        let answer = run_lookup(rt, cfg, metrics, database, user).await;
        *slot = Some(Cached {
            answer: answer.clone(),
            fetched: Instant::now(),
            query: cfg.query.clone(),
        });
        answer
    }

    fn entry(&self, database: &str, user: &str) -> Entry {
        let mut entries = self.entries.lock();
        let key = (database.to_string(), user.to_string());
        if let Some(e) = entries.get(&key) {
            return e.clone();
        }
        if entries.len() >= MAX_ENTRIES {
            // Drop what nobody is using and is not known to be fresh; an
            // entry being fetched is locked and stays.
            entries.retain(|_, e| {
                Arc::strong_count(e) > 1
                    || e.try_lock().map_or(true, |c| {
                        c.as_ref()
                            .is_some_and(|c| c.fetched.elapsed() < REFETCH_AFTER_FAILURE)
                    })
            });
        }
        entries.entry(key).or_default().clone()
    }
}

/// One lookup on the primary of shard 0, with a connection of the lookup
/// user's pool there.
async fn run_lookup(
    rt: &Runtime,
    cfg: &AuthQuery,
    metrics: &Metrics,
    database: &str,
    user: &str,
) -> Answer {
    let started = Instant::now();
    let answer = lookup_on_primary(rt, cfg, database, user).await;
    let result = match &answer {
        Ok(Some(_)) => "found",
        Ok(None) => "not_found",
        Err(_) => "error",
    };
    metrics
        .login_checks
        .record_lookup(result, started.elapsed());
    match &answer {
        Ok(_) => tracing::debug!(database, user, result, "auth_query lookup"),
        Err(e) => tracing::error!(database, user, error = %e, "auth_query lookup failed"),
    }
    answer
}

async fn lookup_on_primary(rt: &Runtime, cfg: &AuthQuery, database: &str, user: &str) -> Answer {
    let pools =
        rt.cluster
            .pools_for(&cfg.user, database)
            .ok_or_else(|| LookupError::NoLookupUser {
                user: cfg.user.clone(),
                database: database.to_string(),
            })?;
    let slot = pools
        .shards
        .first()
        .and_then(|s| s.pick(Role::Primary, pools.balancing, &[], Default::default()))
        .ok_or(LookupError::NoPrimary)?;
    let budget = lookup_budget(rt.config.general.client_login_timeout_ms);
    let deadline = std::time::Instant::now() + budget;
    let timed_out = || LookupError::TimedOut(budget.as_millis() as u64);
    let mut conn = crate::timer::timeout_at(deadline, slot.pool.checkout())
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| LookupError::Unreachable(e.to_string()))?;
    let cancel = conn.cancel_target();
    let fetched =
        crate::timer::timeout_at(deadline, fetch_secret(&mut conn, &cfg.query, user)).await;
    match fetched {
        Ok(Ok(row)) => {
            crate::pool::Pool::checkin(conn);
            Ok(row.map(|r| Found {
                password: StoredPassword::parse(&r.secret),
                can_login: r.can_login,
            }))
        }
        Ok(Err(FetchError::Query(e))) => {
            crate::pool::Pool::checkin(conn);
            Err(LookupError::Query(e))
        }
        // Dropping the connection closes it.
        Ok(Err(FetchError::Broken(e))) => Err(LookupError::Unreachable(e.to_string())),
        Err(_) => {
            // Closing the connection does not stop the query: PostgreSQL
            // would run it to its end. Cancel it, so that a hung lookup
            // does not pile up busy backends, one per login.
            drop(conn);
            tokio::spawn(async move {
                let _ = crate::client::cancel::send_cancel(&cancel).await;
            });
            Err(timed_out())
        }
    }
}

/// How long a lookup (a connection, then the query) may take: three
/// quarters of `client_login_timeout_ms`, so that the client is still there
/// to be told it was the lookup (08006 naming auth_query) rather than just
/// "login timed out"; a year when that timeout is 0 (never).
fn lookup_budget(client_login_timeout_ms: u64) -> Duration {
    match client_login_timeout_ms {
        0 => Duration::from_secs(365 * 24 * 3600),
        ms => Duration::from_millis(ms / 4 * 3),
    }
}
