//! What changed between two valid configs, so hot reload can keep every pool
//! whose settings did not change (SPEC §5 Operations: "pools whose settings
//! did not change keep their connections, changed ones drain").
//!
//! Line numbers are ignored: adding a comment to a file changes no pool.

use crate::model::*;

/// `[general]` keys a running router can apply without touching any
/// connection: pool limits and timeouts only.
pub const POOL_SETTING_KEYS: &[&str] = &[
    "default_pool_size",
    "min_pool_size",
    "connect_timeout_ms",
    "checkout_timeout_ms",
    "server_idle_timeout_ms",
    "server_lifetime_ms",
    "client_idle_timeout_ms",
    "shutdown_timeout_ms",
    "max_clients",
    "healthcheck_interval_ms",
    "ban_time_ms",
];

/// `[general]` keys that only take effect when the process restarts: the
/// listening sockets, the runtime's thread count, the log format and
/// whether the files are watched are all set up once, at start.
pub const RESTART_KEYS: &[&str] = &[
    "listen",
    "workers",
    "metrics_listen",
    "hot_reload",
    "log_format",
];

/// [`RESTART_KEYS`] whose value in `now` differs from the one the process
/// started with (`started`): the router still runs with the latter. Unlike
/// [`ConfigDiff::needs_restart`] this stays true across later reloads.
pub fn restart_pending(started: &General, now: &General) -> Vec<&'static str> {
    general_changes(started, now)
        .into_iter()
        .filter(|k| RESTART_KEYS.contains(k))
        .collect()
}

/// Identifies a users.toml entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey {
    pub name: String,
    pub database: String,
}

/// A users.toml entry present in both configs with different settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChange {
    pub user: UserKey,
    /// Only `pool_size` changed: its pools can be resized in place
    /// instead of drained.
    pub pool_size_only: bool,
}

/// The result of [`diff`]. Lists are in file order (of the new config for
/// added/changed entries, of the old one for removed entries).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigDiff {
    /// Names of `[general]` keys whose value changed.
    pub general: Vec<&'static str>,
    /// `[jwt]` added, removed or changed.
    pub jwt_changed: bool,
    /// Any `[[sharded_tables]]` or `[[reference_tables]]` entry, or a
    /// `[general]` sharding key, added, removed or changed.
    pub sharded_tables_changed: bool,
    /// `[auth_query]` or `[jit]` added, removed or changed.
    pub login_checks_changed: bool,
    /// Logical databases only in the new config.
    pub databases_added: Vec<String>,
    /// Logical databases only in the old config: their pools drain.
    pub databases_removed: Vec<String>,
    /// Logical databases whose set of servers (host, port, database_name,
    /// role, shard) changed: their pools drain and are rebuilt. Reordering
    /// entries is not a change.
    pub databases_changed: Vec<String>,
    pub users_added: Vec<UserKey>,
    pub users_removed: Vec<UserKey>,
    pub users_changed: Vec<UserChange>,
}

impl ConfigDiff {
    /// Nothing changed (a reload is a no-op).
    pub fn is_empty(&self) -> bool {
        self == &ConfigDiff::default()
    }

    /// Only pool sizes and timeouts changed ([`POOL_SETTING_KEYS`] and users'
    /// `pool_size`): every pool keeps its connections and picks up new limits.
    pub fn only_pool_settings(&self) -> bool {
        !self.is_empty()
            && self.general.iter().all(|k| POOL_SETTING_KEYS.contains(k))
            && !self.jwt_changed
            && !self.sharded_tables_changed
            && !self.login_checks_changed
            && self.databases_added.is_empty()
            && self.databases_removed.is_empty()
            && self.databases_changed.is_empty()
            && self.users_added.is_empty()
            && self.users_removed.is_empty()
            && self.users_changed.iter().all(|c| c.pool_size_only)
    }

    /// Changed `[general]` keys that a reload cannot apply (see [`RESTART_KEYS`]);
    /// the server should log them as needing a restart.
    pub fn needs_restart(&self) -> Vec<&'static str> {
        self.general
            .iter()
            .copied()
            .filter(|k| RESTART_KEYS.contains(k))
            .collect()
    }

    /// What changed, as a sentence for people (the admin RELOAD's NOTICE,
    /// the log, SHOW CONFIG's `last_reload_message`); "no changes" when
    /// nothing did. Keys a reload cannot apply are said by the caller,
    /// who knows what the process started with (see [`restart_pending`]).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.general.is_empty() {
            parts.push(format!("[general] {}", self.general.join(", ")));
        }
        if self.jwt_changed {
            parts.push("[jwt]".to_string());
        }
        if self.login_checks_changed {
            parts.push("[auth_query] or [jit]".to_string());
        }
        if self.sharded_tables_changed {
            parts.push("sharding (tables or [general] sharding keys)".to_string());
        }
        let users = |list: &mut dyn Iterator<Item = &UserKey>| {
            list.map(|u| format!("{} (database {})", u.name, u.database))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut listed = |what: &str, items: String| {
            if !items.is_empty() {
                parts.push(format!("{what} {items}"));
            }
        };
        listed("databases added:", self.databases_added.join(", "));
        listed("databases removed:", self.databases_removed.join(", "));
        listed(
            "servers changed of databases",
            self.databases_changed.join(", "),
        );
        listed("users added:", users(&mut self.users_added.iter()));
        listed("users removed:", users(&mut self.users_removed.iter()));
        listed(
            "users changed:",
            users(&mut self.users_changed.iter().map(|c| &c.user)),
        );
        if parts.is_empty() {
            return "no changes".to_string();
        }
        format!("changed: {}", parts.join("; "))
    }
}

/// Compares two configs; see [`ConfigDiff`].
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff {
        general: general_changes(&old.general, &new.general),
        jwt_changed: !same_jwt(old.jwt.as_ref(), new.jwt.as_ref()),
        sharded_tables_changed: old.sharded_tables != new.sharded_tables
            || old.reference_tables != new.reference_tables
            || old.sharding != new.sharding,
        login_checks_changed: old.auth_query != new.auth_query || old.jit != new.jit,
        ..ConfigDiff::default()
    };
    let old_dbs = old.logical_databases();
    let new_dbs = new.logical_databases();
    for db in &new_dbs {
        if !old_dbs.contains(db) {
            d.databases_added.push(db.to_string());
        } else if servers(old, db) != servers(new, db) {
            d.databases_changed.push(db.to_string());
        }
    }
    d.databases_removed = old_dbs
        .iter()
        .filter(|db| !new_dbs.contains(db))
        .map(|db| db.to_string())
        .collect();

    for u in &new.users {
        match old.user(&u.name, &u.database) {
            None => d.users_added.push(key(u)),
            Some(o) if !same_user(o, u) => {
                let pool_size_only = same_user(
                    o,
                    &User {
                        pool_size: o.pool_size,
                        ..u.clone()
                    },
                );
                d.users_changed.push(UserChange {
                    user: key(u),
                    pool_size_only,
                });
            }
            Some(_) => {}
        }
    }
    for u in &old.users {
        if new.user(&u.name, &u.database).is_none() {
            d.users_removed.push(key(u));
        }
    }
    d
}

/// `[jwt]` settings equal, wherever they are in the file (moving the
/// section is no reason to rebuild the verifier).
fn same_jwt(old: Option<&Jwt>, new: Option<&Jwt>) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => {
            *o == Jwt {
                lines: o.lines,
                ..n.clone()
            }
        }
        (None, None) => true,
        _ => false,
    }
}

fn key(u: &User) -> UserKey {
    UserKey {
        name: u.name.clone(),
        database: u.database.clone(),
    }
}

fn same_user(a: &User, b: &User) -> bool {
    a == &User {
        line: a.line,
        ..b.clone()
    }
}

/// The servers of `db` without line numbers, in a canonical order.
fn servers(c: &Config, db: &str) -> Vec<(u32, &'static str, String, u16, String)> {
    let mut v: Vec<_> = c
        .servers_of(db)
        .into_iter()
        .map(|e| {
            (
                e.shard,
                e.role.as_str(),
                e.host.clone(),
                e.port,
                e.database_name.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Names of the `[general]` keys whose values differ.
fn general_changes(a: &General, b: &General) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! cmp {
        ($($field:ident),+ $(,)?) => {
            // Destructuring makes adding a field to `General` without listing
            // it here a compile error.
            let General { $($field: _),+ } = a;
            $(if a.$field != b.$field { out.push(stringify!($field)); })+
        };
    }
    crate::general_fields::with_general_fields!(cmp);
    out
}
