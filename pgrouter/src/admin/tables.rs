//! The result set of each SHOW command.

use crate::metrics::snapshot::{
    format_utc, ClientSnapshot, ConfigRow, DbStats, PoolSnapshot, ReloadStatus, ServerSnapshot,
};

use super::command::COMMANDS;
use super::wire::{Cell, ColumnType::*, ResultSet};

pub fn pools(mut pools: Vec<PoolSnapshot>) -> ResultSet {
    pools.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut set = ResultSet::new(&[
        ("database", Text),
        ("user", Text),
        ("shard", Int8),
        ("role", Text),
        ("host", Text),
        ("port", Int8),
        ("cl_active", Int8),
        ("cl_waiting", Int8),
        ("sv_active", Int8),
        ("sv_idle", Int8),
        ("sv_used", Int8),
        ("pool_size", Int8),
        ("maxwait_ms", Int8),
        ("pool_mode", Text),
        ("paused", Bool),
        ("banned", Bool),
    ]);
    for p in pools {
        let l = p.labels;
        set.push(vec![
            l.database.into(),
            l.user.into(),
            l.shard.into(),
            l.role.into(),
            l.host.into(),
            l.port.into(),
            p.cl_active.into(),
            p.cl_waiting.into(),
            p.sv_active.into(),
            p.sv_idle.into(),
            p.sv_used.into(),
            p.pool_size.into(),
            p.maxwait_ms.into(),
            p.pool_mode.into(),
            p.paused.into(),
            p.banned.into(),
        ]);
    }
    set
}

pub fn clients(mut clients: Vec<ClientSnapshot>) -> ResultSet {
    clients.sort_by_key(|c| c.id);
    let mut set = ResultSet::new(&[
        ("id", Int8),
        ("user", Text),
        ("database", Text),
        ("addr", Text),
        ("state", Text),
        ("auth", Text),
        ("connect_time", Text),
        ("read_only", Bool),
        ("role", Text),
        ("tls", Bool),
        ("application_name", Text),
        ("server", Text),
        ("worker", Int8),
        ("pinned", Text),
    ]);
    for c in clients {
        set.push(vec![
            c.id.into(),
            c.user.into(),
            c.database.into(),
            c.addr.into(),
            c.state.into(),
            c.auth.into(),
            format_utc(c.connect_time).into(),
            c.read_only.into(),
            c.role.into(),
            c.tls.into(),
            c.application_name.into(),
            c.server.into(),
            (c.worker as i64).into(),
            c.pinned.into(),
        ]);
    }
    set
}

pub fn servers(mut servers: Vec<ServerSnapshot>) -> ResultSet {
    servers.sort_by(|a, b| a.pool.cmp(&b.pool).then(a.backend_pid.cmp(&b.backend_pid)));
    let mut set = ResultSet::new(&[
        ("pool", Text),
        ("database", Text),
        ("user", Text),
        ("shard", Int8),
        ("role", Text),
        ("host", Text),
        ("port", Int8),
        ("backend_pid", Int8),
        ("state", Text),
        ("connect_time", Text),
        ("last_used", Text),
        ("client_id", Int8),
        ("tls", Bool),
    ]);
    for s in servers {
        set.push(vec![
            s.pool.pool_name().into(),
            s.pool.database.into(),
            s.pool.user.into(),
            s.pool.shard.into(),
            s.pool.role.into(),
            s.pool.host.into(),
            s.pool.port.into(),
            s.backend_pid.into(),
            s.state.into(),
            format_utc(s.connect_time).into(),
            s.last_used.map(format_utc).into(),
            s.client_id.into(),
            s.tls.into(),
        ]);
    }
    set
}

pub fn stats(mut stats: Vec<DbStats>) -> ResultSet {
    stats.sort_by(|a, b| a.database.cmp(&b.database));
    let mut set = ResultSet::new(&[
        ("database", Text),
        ("total_xact_count", Int8),
        ("total_query_count", Int8),
        ("total_received", Int8),
        ("total_sent", Int8),
        ("total_xact_time_us", Int8),
        ("total_query_time_us", Int8),
        ("total_wait_time_us", Int8),
        ("avg_xact_count", Int8),
        ("avg_query_count", Int8),
        ("avg_recv", Int8),
        ("avg_sent", Int8),
        ("avg_xact_time_us", Int8),
        ("avg_query_time_us", Int8),
        ("avg_wait_time_us", Int8),
        ("p50_query_time_us", Int8),
        ("p99_query_time_us", Int8),
    ]);
    for s in stats {
        // Counts and bytes per second since start; times per event.
        let secs = s.period.as_secs().max(1);
        let per = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
        set.push(vec![
            s.database.into(),
            s.total_xact_count.into(),
            s.total_query_count.into(),
            s.total_received.into(),
            s.total_sent.into(),
            s.total_xact_time_us.into(),
            s.total_query_time_us.into(),
            s.total_wait_time_us.into(),
            (s.total_xact_count / secs).into(),
            (s.total_query_count / secs).into(),
            (s.total_received / secs).into(),
            (s.total_sent / secs).into(),
            per(s.total_xact_time_us, s.total_xact_count).into(),
            per(s.total_query_time_us, s.total_query_count).into(),
            per(s.total_wait_time_us, s.total_wait_count).into(),
            s.query_time_p50_us.into(),
            s.query_time_p99_us.into(),
        ]);
    }
    set
}

/// Keys whose values never leave the router.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret")
}

pub fn config(rows: Vec<ConfigRow>, last_reload: Option<ReloadStatus>) -> ResultSet {
    let mut set = ResultSet::new(&[("key", Text), ("value", Text), ("source", Text)]);
    for r in rows {
        let value = if is_secret(&r.key) && !r.value.is_empty() {
            "********".to_string()
        } else {
            r.value
        };
        set.push(vec![r.key.into(), value.into(), r.source.into()]);
    }
    match last_reload {
        Some(r) => {
            set.push(vec![
                "last_reload".into(),
                (if r.ok { "ok" } else { "error" }).into(),
                "reload".into(),
            ]);
            set.push(vec![
                "last_reload_time".into(),
                format_utc(r.at).into(),
                "reload".into(),
            ]);
            set.push(vec![
                "last_reload_message".into(),
                r.message.into(),
                "reload".into(),
            ]);
        }
        None => set.push(vec!["last_reload".into(), "none".into(), "reload".into()]),
    }
    set
}

pub fn version() -> ResultSet {
    let mut set = ResultSet::new(&[("version", Text)]);
    set.push(vec![Cell::Text(format!(
        "pgrouter {}",
        env!("CARGO_PKG_VERSION")
    ))]);
    set
}

pub fn help() -> ResultSet {
    let mut set = ResultSet::new(&[("command", Text), ("description", Text)]);
    for (c, d) in COMMANDS {
        set.push(vec![(*c).into(), (*d).into()]);
    }
    set
}
