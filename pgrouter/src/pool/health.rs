//! Server health: periodic checks, bans, and which server is the primary.
//!
//! One [`ServerHealth`] per server of a logical database, shared by every
//! user's pool of that server. A replica that fails a check or a connect is
//! banned for `ban_time_ms`; reads then go to the other servers. With
//! `role = "auto"`, each check asks `pg_is_in_recovery()`, so a promotion is
//! followed without a reload.
//!
//! After a failover two servers can both claim to be the primary for a while:
//! the old one, unreachable (its last role is all the router knows) or back up
//! without having been turned into a replica, and the promoted one. Writes go
//! to a reachable one first, and among those to the one promoted last (see
//! [`ServerHealth::primary_rank`]), so they follow the promotion instead of
//! staying with the server listed first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pgrouter_config::ServerRole;

use super::Pool;
use crate::server::{ServerConn, ServerTarget};

/// The longest startup or a reload waits for the first checks of `auto`
/// servers; an unreachable one must not hold either up for long.
const FIRST_CHECK_WAIT: Duration = Duration::from_secs(2);

/// Asks the `role = "auto"` servers among `servers` for their role now:
/// until a check says otherwise they count as primaries, and writes would go
/// to the first one listed, replica or not. Waits at most
/// [`FIRST_CHECK_WAIT`]; checks still running then finish in the background.
pub async fn check_auto_roles<'a>(
    servers: impl Iterator<Item = &'a Arc<ServerHealth>>,
    timeout: Duration,
) {
    let checks: Vec<_> = servers
        .filter(|h| h.configured == ServerRole::Auto)
        .map(|h| tokio::spawn(h.clone().check_once(timeout)))
        .collect();
    let _ = crate::timer::timeout(FIRST_CHECK_WAIT, async {
        for check in checks {
            let _ = check.await;
        }
    })
    .await;
}

/// Router-wide count of servers seen becoming primary (orders promotions).
static PROMOTIONS: AtomicU64 = AtomicU64::new(0);

pub struct ServerHealth {
    /// "host:port/database", for logs.
    pub name: String,
    pub configured: ServerRole,
    /// Credentials the health check logs in with.
    pub check_target: Option<ServerTarget>,
    is_primary: AtomicBool,
    /// When it last became primary: a [`PROMOTIONS`] number; 0 = primary
    /// (or assumed so) since the router started.
    primary_since: AtomicU64,
    /// The last health check succeeded (true until one fails).
    reachable: AtomicBool,
    banned_until: Mutex<Option<Instant>>,
    pub ban_time: Duration,
    pub bans: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
    /// The health check's own connection, kept between checks, used only
    /// when no pool of `check_target` exists (see `check_pool`).
    conn: tokio::sync::Mutex<Option<ServerConn>>,
    /// The pool of `check_target` on this server: checks borrow one of its
    /// connections, so they count against its `pool_size` (PostgreSQL never
    /// sees more connections of that user than the pool allows). Set by
    /// every cluster build, since a reload may replace the pool.
    check_pool: Mutex<std::sync::Weak<Pool>>,
    /// The last check's WAL position: the replay LSN of a replica, the
    /// current LSN of a primary (0 = not known yet).
    lsn: AtomicU64,
    /// When the check that measured `lsn` started (read-your-writes: a
    /// primary LSN measured after a commit is at least that commit's).
    lsn_at: Mutex<Option<Instant>>,
    /// A replica's replay lag in ms by the last check (0 for a primary).
    lag_ms: AtomicU64,
}

/// What a health check learns about a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckResult {
    pub in_recovery: bool,
    /// Replay LSN (replica) or current WAL LSN (primary).
    pub lsn: Option<u64>,
    /// Replay lag in ms (replica); 0 when it has replayed all it received.
    pub lag_ms: u64,
}

/// The health check: role, WAL position and replay lag in one round trip.
/// A replica that has replayed everything it received counts as not lagging
/// (an idle primary writes nothing, so the last replay time grows old without
/// any lag); otherwise its lag is the age of the last transaction it replayed.
pub const CHECK_SQL: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
     CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
     ELSE pg_catalog.pg_current_wal_lsn() END::text, \
     CASE WHEN NOT pg_catalog.pg_is_in_recovery() \
       OR pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn() THEN 0 \
     ELSE COALESCE(floor(extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()) * 1000), 0) END::int8";

/// Parses PostgreSQL's `pg_lsn` text form `X/Y` (two hex numbers).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

/// Reads a [`CHECK_SQL`] answer.
fn read_check(rows: &[Vec<Option<String>>]) -> Option<CheckResult> {
    let row = rows.first()?;
    let in_recovery = matches!(row.first()?.as_deref(), Some("t" | "true"));
    let lsn = row.get(1)?.as_deref().and_then(parse_lsn);
    let lag_ms = row
        .get(2)?
        .as_deref()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        .max(0) as u64;
    Some(CheckResult {
        in_recovery,
        lsn,
        lag_ms,
    })
}

/// Runs the check on `conn`.
async fn run_check(conn: &mut ServerConn) -> Result<CheckResult, String> {
    let rows = conn
        .query_rows(CHECK_SQL)
        .await
        .map_err(|e| e.to_string())?;
    read_check(&rows).ok_or_else(|| "unexpected health check answer".to_string())
}

impl ServerHealth {
    pub fn new(
        name: String,
        configured: ServerRole,
        check_target: Option<ServerTarget>,
        ban_time: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        ServerHealth {
            name,
            // "auto" servers count as primary until a check says otherwise, so
            // writes have somewhere to go from the first second.
            is_primary: AtomicBool::new(configured != ServerRole::Replica),
            primary_since: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            configured,
            check_target,
            banned_until: Mutex::new(None),
            ban_time,
            bans: AtomicU64::new(0),
            metrics,
            conn: tokio::sync::Mutex::new(None),
            check_pool: Mutex::new(std::sync::Weak::new()),
            lsn: AtomicU64::new(0),
            lsn_at: Mutex::new(None),
            lag_ms: AtomicU64::new(0),
        }
    }

    /// The pool health checks borrow their connection from.
    pub fn set_check_pool(&self, pool: &Arc<Pool>) {
        *self.check_pool.lock() = Arc::downgrade(pool);
    }

    /// Replay lag in ms by the last check (0 when unknown or a primary).
    pub fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Relaxed)
    }

    /// The WAL position by the last check, if one measured it.
    pub fn lsn(&self) -> Option<u64> {
        match self.lsn.load(Ordering::Relaxed) {
            0 => None,
            lsn => Some(lsn),
        }
    }

    /// The WAL position measured by a check that started after `since`:
    /// for a primary, at least the LSN of every commit made before `since`.
    pub fn lsn_measured_after(&self, since: Instant) -> Option<u64> {
        let at = (*self.lsn_at.lock())?;
        (at > since).then(|| self.lsn()).flatten()
    }

    pub fn is_primary(&self) -> bool {
        self.is_primary.load(Ordering::Relaxed)
    }

    pub fn is_banned(&self) -> bool {
        let mut banned = self.banned_until.lock();
        match *banned {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *banned = None;
                tracing::info!(server = %self.name, "ban expired; server is used again");
                false
            }
            None => false,
        }
    }

    /// Leaves a replica out for `ban_time`. Primaries are never banned:
    /// writes have nowhere else to go, so their clients see the errors.
    pub fn ban(&self, reason: &str) {
        if self.is_primary() || self.ban_time.is_zero() {
            return;
        }
        let mut banned = self.banned_until.lock();
        if banned.is_none() {
            self.bans.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = &self.check_target {
                self.metrics
                    .record_ban(&crate::metrics::snapshot::server_label(&t.host, t.port));
            }
            tracing::warn!(server = %self.name, reason, ban_ms = self.ban_time.as_millis() as u64, "banning server");
        }
        *banned = Some(Instant::now() + self.ban_time);
    }

    /// How strongly this server is the primary when several say they are:
    /// reachable ones first, then the one promoted last. Compare only among
    /// servers for which [`is_primary`](Self::is_primary) holds.
    pub fn primary_rank(&self) -> (bool, u64) {
        (
            self.reachable.load(Ordering::Relaxed),
            self.primary_since.load(Ordering::Relaxed),
        )
    }

    fn set_primary(&self, primary: bool) {
        if self.is_primary.swap(primary, Ordering::Relaxed) != primary {
            if primary {
                let n = PROMOTIONS.fetch_add(1, Ordering::Relaxed) + 1;
                self.primary_since.store(n, Ordering::Relaxed);
            }
            tracing::warn!(server = %self.name, primary, "server role changed");
        }
    }

    /// One health check. A check still running from the last round is not
    /// doubled up.
    pub async fn check_once(self: Arc<Self>, timeout: Duration) {
        let Some(target) = self.check_target.clone() else {
            return;
        };
        let Ok(mut conn) = self.conn.try_lock() else {
            return;
        };
        let pool = self.check_pool.lock().upgrade();
        if let Some(pool) = pool {
            *conn = None;
            // Every lease taken means clients are using the server: no
            // check this round (it would have to wait, or exceed the size).
            let Some(lease) = pool.try_checkout().await else {
                return;
            };
            let started = Instant::now();
            let check = async {
                let mut lease = lease.map_err(|e| e.to_string())?;
                let r = run_check(&mut lease).await?;
                Pool::checkin(lease);
                Ok::<CheckResult, String>(r)
            };
            let result = crate::timer::timeout(timeout * 2, check).await;
            self.record_check(result, started);
            return;
        }
        let started = Instant::now();
        let check = async {
            if conn.is_none() {
                *conn = Some(
                    ServerConn::connect(&target, timeout)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let c = conn.as_mut().ok_or("no connection")?;
            run_check(c).await
        };
        let result = crate::timer::timeout(timeout * 2, check).await;
        if !matches!(result, Ok(Ok(_))) {
            *conn = None;
        }
        self.record_check(result, started);
    }

    /// Acts on a check's outcome: role of an `auto` server, WAL position and
    /// lag, ban on failure.
    fn record_check(
        &self,
        result: Result<Result<CheckResult, String>, crate::timer::Elapsed>,
        started: Instant,
    ) {
        self.reachable
            .store(matches!(result, Ok(Ok(_))), Ordering::Relaxed);
        match result {
            Ok(Ok(check)) => {
                if self.configured == ServerRole::Auto {
                    self.set_primary(!check.in_recovery);
                }
                if let Some(lsn) = check.lsn {
                    self.lsn.store(lsn, Ordering::Relaxed);
                    *self.lsn_at.lock() = Some(started);
                }
                let lag = if check.in_recovery { check.lag_ms } else { 0 };
                self.lag_ms.store(lag, Ordering::Relaxed);
            }
            Ok(Err(e)) => self.ban(&format!("health check failed: {e}")),
            Err(_) => self.ban("health check timed out"),
        }
    }
}
