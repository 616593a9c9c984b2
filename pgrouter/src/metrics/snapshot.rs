//! Plain-data views of the router's state, taken when an operator asks: by a
//! Prometheus scrape ([`super::render`]) or an admin console command
//! ([`crate::admin`]). The router fills them in; nothing here holds a lock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The labels that name one pool: one (user, logical database, shard,
/// server). `user` is the users.toml user that owns the server connections
/// (the `connect_as` user for JWT sessions), never a JWT username, so the
/// number of label sets is bounded by the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PoolLabels {
    pub database: String,
    pub user: String,
    pub shard: u32,
    /// The server's configured role: "primary", "replica" or "auto".
    pub role: String,
    pub host: String,
    pub port: u16,
}

impl PoolLabels {
    /// `host:port` (`[v6addr]:port` for IPv6 literals), the `server` label.
    pub fn server(&self) -> String {
        server_label(&self.host, self.port)
    }

    /// `user@database/shard`, how the admin console names a pool.
    pub fn pool_name(&self) -> String {
        format!("{}@{}/{}", self.user, self.database, self.shard)
    }
}

/// `host:port`, bracketing IPv6 literals.
pub fn server_label(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One pool as it is now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub labels: PoolLabels,
    /// "transaction" or "session".
    pub pool_mode: String,
    /// Clients currently served by a server connection of this pool.
    pub cl_active: u64,
    /// Clients waiting for a server connection of this pool.
    pub cl_waiting: u64,
    /// Server connections checked out (serving a client).
    pub sv_active: u64,
    /// Server connections idle in the pool, ready for reuse.
    pub sv_idle: u64,
    /// Server connections open but neither active nor reusable yet (being
    /// reset, or draining after a reload changed the pool).
    pub sv_used: u64,
    /// The pool's size limit.
    pub pool_size: u64,
    /// How long the oldest waiting client has waited, in milliseconds.
    pub maxwait_ms: u64,
    /// Paused by the admin `PAUSE` command.
    pub paused: bool,
    /// The server is banned by health checks.
    pub banned: bool,
}

/// Clients by state, router-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCounts {
    /// In a transaction (holding or using a server connection).
    pub active: u64,
    /// Waiting for a server connection.
    pub waiting: u64,
    /// Logged in, between transactions.
    pub idle: u64,
    /// Clients pinned to their server connection, per reason (a client
    /// pinned for two reasons counts under both).
    pub pinned: Vec<(&'static str, u64)>,
}

/// One connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    pub id: u64,
    /// The startup user (for JWT sessions, the token's user: shown in the
    /// console, never used as a metrics label).
    pub user: String,
    pub database: String,
    /// Peer address, `ip:port`.
    pub addr: String,
    /// "active", "waiting", "idle" or "login".
    pub state: String,
    /// How it logged in: "scram", "md5", "plain", "jwt", "admin", ...
    pub auth: String,
    pub connect_time: SystemTime,
    pub read_only: bool,
    /// The PostgreSQL role its statements run as.
    pub role: String,
    pub tls: bool,
    pub application_name: String,
    /// The server it holds now (`host:port`), if any.
    pub server: Option<String>,
    /// The worker thread its session runs on.
    pub worker: usize,
    /// Why it is pinned to its server connection (`temp, listen`), if it is.
    pub pinned: Option<String>,
}

/// One open server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSnapshot {
    pub pool: PoolLabels,
    pub backend_pid: i32,
    /// "active", "idle" or "used" (see [`PoolSnapshot`]).
    pub state: String,
    pub connect_time: SystemTime,
    pub last_used: Option<SystemTime>,
    /// The client it serves now, if any.
    pub client_id: Option<u64>,
    pub tls: bool,
}

/// Totals for one logical database since the router started (they survive
/// reloads). [`super::Metrics::db_stats`] computes these.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbStats {
    pub database: String,
    pub total_xact_count: u64,
    pub total_query_count: u64,
    /// Bytes received from clients.
    pub total_received: u64,
    /// Bytes sent to clients.
    pub total_sent: u64,
    pub total_xact_time_us: u64,
    pub total_query_time_us: u64,
    /// Time clients spent waiting for a server connection.
    pub total_wait_time_us: u64,
    /// Checkouts the wait time is spread over.
    pub total_wait_count: u64,
    /// Query latency percentiles (from the hdrhistogram), 0 without queries.
    pub query_time_p50_us: u64,
    pub query_time_p99_us: u64,
    /// How long these totals have been counted, for per-second averages.
    pub period: Duration,
}

/// One effective setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRow {
    pub key: String,
    pub value: String,
    /// Where the value came from: "default", "router.toml", "users.toml", ...
    pub source: String,
}

/// The outcome of the last reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    pub ok: bool,
    pub at: SystemTime,
    /// What changed, or why the new files were refused.
    pub message: String,
}

/// `YYYY-MM-DD HH:MM:SS UTC`, for the admin console.
pub fn format_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the Unix epoch as a float (Prometheus timestamps).
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(951_825_600 + 3661); // 2000-02-29 12:00:00 + 1h1m1s
        assert_eq!(format_utc(t), "2000-02-29 13:01:01 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // last second of 2024
        assert_eq!(format_utc(t), "2024-12-31 23:59:59 UTC");
    }

    #[test]
    fn server_labels_bracket_ipv6() {
        assert_eq!(server_label("::1", 5432), "[::1]:5432");
        assert_eq!(server_label("db.local", 5433), "db.local:5433");
    }
}
