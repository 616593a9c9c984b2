//! Two-phase transaction ids (the `gid` of `PREPARE TRANSACTION`).
//!
//! Format: `pgrouter_<coordinator>_<boot>_<n>_<instance>`.
//!
//! - `coordinator`: 12 hex digits chosen at random when the decision table
//!   was created, stored with it (`pgrouter_2pc_meta`). It says which
//!   decision table rules the transaction, so recovery of one sharded
//!   database never touches the transactions of another database whose
//!   shards share a PostgreSQL server (ids are unique per server, not per
//!   database), and it does not change when `host` is spelled differently.
//! - `boot`: a counter in that same table, incremented (one `UPDATE ...
//!   RETURNING`, serialised by the row lock) by every router process the
//!   first time it uses the coordinator. Two processes — two instances, or
//!   one instance before and after a restart — never get the same boot.
//! - `n`: counts this process's transactions from 1.
//! - `instance`: `[general] instance_id` (default host name and listen
//!   port), for people reading `pg_prepared_xacts`; uniqueness does not rest
//!   on it, so two instances configured alike are still safe.
//!
//! So (coordinator, boot, n) never repeats, across instances and restarts.
//! Unlike a random per-process id, nothing is lost on a restart: any router
//! reading the same decision table can finish the transaction.

use std::fmt;

/// Every id the router prepares starts with this.
pub const PREFIX: &str = "pgrouter_";

/// Length of a coordinator id (hex digits).
pub const COORDINATOR_ID_LEN: usize = 12;

/// A parsed transaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gid {
    pub coordinator: String,
    pub boot: u64,
    pub n: u64,
    pub instance: String,
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}_{}_{}_{}",
            self.coordinator, self.boot, self.n, self.instance
        )
    }
}

impl Gid {
    /// Reads an id in the format above; `None` for anything else (another
    /// program's prepared transactions are none of the router's business).
    pub fn parse(s: &str) -> Option<Gid> {
        let rest = s.strip_prefix(PREFIX)?;
        let mut parts = rest.splitn(4, '_');
        let coordinator = parts.next()?;
        let boot = parts.next()?.parse().ok()?;
        let n = parts.next()?.parse().ok()?;
        let instance = parts.next()?;
        if !is_coordinator_id(coordinator) {
            return None;
        }
        Some(Gid {
            coordinator: coordinator.to_string(),
            boot,
            n,
            instance: instance.to_string(),
        })
    }
}

/// Whether `s` looks like a coordinator id (12 lower-case hex digits).
pub fn is_coordinator_id(s: &str) -> bool {
    s.len() == COORDINATOR_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A `LIKE` pattern matching the ids of one coordinator (`_` escaped: in
/// LIKE it matches any character).
pub fn like_pattern(coordinator: &str) -> String {
    format!("pgrouter\\_{coordinator}\\_%")
}

/// The instance part: `configured` if set (validated by the config), else
/// `host:port` from this machine's host name and the listen address,
/// reduced to the characters an instance id may hold.
pub fn instance_name(configured: &str, host: &str, listen: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    let port = listen.rsplit_once(':').map_or("", |(_, p)| p);
    let raw = format!("{host}:{port}");
    raw.chars()
        .map(|c| {
            if pgrouter_config::instance_id_char(c) {
                c
            } else {
                '-'
            }
        })
        .take(pgrouter_config::INSTANCE_ID_MAX)
        .collect()
}

/// This machine's host name (Linux), or "localhost" when it cannot be read.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gid() -> Gid {
        Gid {
            coordinator: "0a1b2c3d4e5f".into(),
            boot: 7,
            n: 42,
            instance: "db-router_1:6432".into(),
        }
    }

    #[test]
    fn formats_and_parses_back() {
        let g = gid();
        let s = g.to_string();
        assert_eq!(s, "pgrouter_0a1b2c3d4e5f_7_42_db-router_1:6432");
        assert_eq!(Gid::parse(&s), Some(g));
    }

    #[test]
    fn longest_id_fits_postgresql_limit() {
        let g = Gid {
            boot: u64::MAX,
            n: u64::MAX,
            instance: "x".repeat(pgrouter_config::INSTANCE_ID_MAX),
            ..gid()
        };
        assert!(g.to_string().len() < 200, "GIDSIZE is 200 bytes");
    }

    #[test]
    fn foreign_ids_are_not_parsed() {
        for s in [
            "",
            "pgrouter_",
            "other_0a1b2c3d4e5f_1_2_x",
            "pgrouter_0A1B2C3D4E5F_1_2_x",
            "pgrouter_0a1b2c3d4e5_1_2_x",
            "pgrouter_0a1b2c3d4e5f_x_2_x",
            "pgrouter_0a1b2c3d4e5f_1_-2_x",
            "pgrouter_0a1b2c3d4e5f_1_2",
            "pgrouter_x_1_1",
        ] {
            assert_eq!(Gid::parse(s), None, "{s}");
        }
    }

    #[test]
    fn empty_instance_is_allowed() {
        let g = Gid::parse("pgrouter_0a1b2c3d4e5f_1_2_").expect("parses");
        assert_eq!(g.instance, "");
    }

    #[test]
    fn like_pattern_escapes_underscores() {
        assert_eq!(like_pattern("0a1b2c3d4e5f"), "pgrouter\\_0a1b2c3d4e5f\\_%");
    }

    #[test]
    fn instance_defaults_to_host_and_port() {
        assert_eq!(instance_name("", "web 1", "0.0.0.0:6432"), "web-1:6432");
        assert_eq!(instance_name("mine", "h", "0.0.0.0:6432"), "mine");
        let long = "h".repeat(100);
        assert_eq!(instance_name("", &long, "x:1").len(), 63);
    }
}
