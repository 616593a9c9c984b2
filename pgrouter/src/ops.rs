//! What the admin console and the metrics endpoint see of the running
//! router: snapshots of pools, clients and servers, the effective config,
//! and the RELOAD / PAUSE / RESUME / SHUTDOWN actions.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::{AdminContext, BoxFuture};
use crate::client::registry::ClientState;
use crate::metrics::snapshot::{
    ClientCounts, ClientSnapshot, ConfigRow, DbStats, PoolSnapshot, ReloadStatus, ServerSnapshot,
};
use crate::metrics::MetricsSource;
use crate::state::State;

pub struct Ops {
    pub state: Arc<State>,
}

impl Ops {
    /// PAUSE and RESUME name a logical database of the running configuration.
    fn known_database(&self, db: &str) -> Result<(), String> {
        if self.state.rt().config.logical_databases().contains(&db) {
            Ok(())
        } else {
            Err(format!("no such database \"{db}\""))
        }
    }

    fn pool_snapshots(&self) -> Vec<PoolSnapshot> {
        let rt = self.state.rt();
        let clients = self.state.registry.all();
        let mut out = Vec::new();
        for ((user, database), pools) in &rt.cluster.entries() {
            let held = held_by_pause(&clients, user, database);
            let counts_held = first_primary(pools);
            for shard in &pools.shards {
                for slot in &shard.servers {
                    let held = match counts_held {
                        Some(p) if std::ptr::eq(p, slot) => held,
                        _ => (0, Duration::ZERO),
                    };
                    let pool = &slot.pool;
                    let stats = pool.stats();
                    let active = pool.checked_out() as u64;
                    let addr = pool.target.addr();
                    let shard_no = pool.labels.shard as usize;
                    let on_pool = |c: &&Arc<crate::client::registry::ClientInfo>| {
                        c.server_of_pool(user, database, shard_no, &addr).is_some()
                    };
                    out.push(PoolSnapshot {
                        labels: pool.labels.clone(),
                        pool_mode: pools.mode.as_str().to_string(),
                        cl_active: clients.iter().filter(on_pool).count() as u64,
                        cl_waiting: stats.waiting as u64 + held.0,
                        sv_active: active,
                        sv_idle: stats.idle as u64,
                        sv_used: (stats.active as u64).saturating_sub(active),
                        pool_size: pool.size() as u64,
                        maxwait_ms: pool.max_wait().max(held.1).as_millis() as u64,
                        paused: self.state.is_paused(database),
                        banned: slot.health.is_banned(),
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            (
                &a.labels.database,
                &a.labels.user,
                a.labels.shard,
                &a.labels.host,
                a.labels.port,
            )
                .cmp(&(
                    &b.labels.database,
                    &b.labels.user,
                    b.labels.shard,
                    &b.labels.host,
                    b.labels.port,
                ))
        });
        out
    }
}

/// SHOW CONFIG's `[general]` rows: every key with the value in effect and
/// where it came from: the file when it sets the key (even to the default
/// value: it is the file a DBA has to edit), else `default`. A key only read at start
/// (`RESTART_KEYS`) that a reload changed shows the value the router still
/// runs with, its source saying what the file has now: showing the file's
/// value would claim, say, a `listen` address nobody listens on.
fn general_rows(
    now: &pgrouter_config::General,
    now_set: &pgrouter_config::GeneralLines,
    sharding: &pgrouter_config::Sharding,
    started: &pgrouter_config::General,
    started_set: &pgrouter_config::GeneralLines,
    file: &str,
) -> Vec<ConfigRow> {
    let at_start = pgrouter_config::general_values(started, sharding);
    let pending = pgrouter_config::restart_pending(started, now);
    let source = |set: &pgrouter_config::GeneralLines, key: &str| {
        if set.is_set(key) {
            file.to_string()
        } else {
            "default".to_string()
        }
    };
    pgrouter_config::general_values(now, sharding)
        .into_iter()
        .zip(at_start)
        .map(|((key, value), (_, started))| {
            if pending.contains(&key) {
                ConfigRow {
                    key: key.to_string(),
                    source: format!(
                        "{} (restart pending: {file} now has {value:?})",
                        source(started_set, key)
                    ),
                    value: started,
                }
            } else {
                ConfigRow {
                    key: key.to_string(),
                    source: source(now_set, key),
                    value,
                }
            }
        })
        .collect()
}

/// Clients of `user` on `database` held by admin PAUSE: how many, and the
/// longest wait. They have not chosen a pool yet (their statement is not
/// routed until RESUME), so they are shown on the database's first primary.
fn held_by_pause(
    clients: &[Arc<crate::client::registry::ClientInfo>],
    user: &str,
    database: &str,
) -> (u64, Duration) {
    clients
        .iter()
        .filter(|c| c.pools_user == user && c.database == database)
        .filter_map(|c| c.paused_for())
        .fold((0, Duration::ZERO), |(n, longest), waited| {
            (n + 1, longest.max(waited))
        })
}

/// The pool that shows PAUSE-held clients: the first shard's primary.
fn first_primary(pools: &crate::pool::UserPools) -> Option<&crate::pool::ServerSlot> {
    let first = pools.shards.first()?;
    first
        .servers
        .iter()
        .find(|s| s.health.is_primary())
        .or(first.servers.first())
}

impl MetricsSource for Ops {
    fn pools(&self) -> Vec<PoolSnapshot> {
        self.pool_snapshots()
    }

    fn clients(&self) -> ClientCounts {
        let mut counts = ClientCounts {
            pinned: pgrouter_parser::SessionState::kinds()
                .map(|(_, name)| (name, 0))
                .collect(),
            ..ClientCounts::default()
        };
        for c in self.state.registry.all() {
            let held = c.pinned();
            for (i, (kind, _)) in pgrouter_parser::SessionState::kinds().enumerate() {
                if held.intersects(kind) {
                    counts.pinned[i].1 += 1;
                }
            }
            match c.state() {
                ClientState::Active => counts.active += 1,
                ClientState::Waiting => counts.waiting += 1,
                ClientState::Idle => counts.idle += 1,
            }
        }
        counts
    }

    fn parse_cache(&self) -> (u64, u64) {
        let rt = self.state.rt();
        (rt.cache.hits(), rt.cache.misses())
    }

    fn jwks_fetches(&self) -> (u64, u64) {
        self.state
            .rt()
            .jwt
            .as_ref()
            .map(|j| j.jwks_fetches())
            .unwrap_or((0, 0))
    }
}

impl AdminContext for Ops {
    fn pools(&self) -> Vec<PoolSnapshot> {
        self.pool_snapshots()
    }

    fn clients(&self) -> Vec<ClientSnapshot> {
        self.state
            .registry
            .all()
            .into_iter()
            .map(|c| ClientSnapshot {
                id: c.id,
                user: c.user.clone(),
                database: c.database.clone(),
                addr: c.addr.clone(),
                state: match c.state() {
                    ClientState::Active => "active",
                    ClientState::Waiting => "waiting",
                    ClientState::Idle => "idle",
                }
                .to_string(),
                auth: c.auth.to_string(),
                connect_time: c.connect_time,
                read_only: c.read_only,
                role: c.role.clone().unwrap_or_default(),
                tls: c.tls,
                application_name: c.application_name.clone(),
                server: c.server().map(|(addr, pid)| format!("{addr} pid {pid}")),
                worker: c.worker.load(std::sync::atomic::Ordering::Relaxed),
                pinned: {
                    let held = c.pinned();
                    (!held.is_empty()).then(|| held.names().collect::<Vec<_>>().join(", "))
                },
            })
            .collect()
    }

    fn servers(&self) -> Vec<ServerSnapshot> {
        let rt = self.state.rt();
        let clients = self.state.registry.all();
        let mut out = Vec::new();
        for ((user, database), pools) in &rt.cluster.entries() {
            for slot in pools.shards.iter().flat_map(|s| s.servers.iter()) {
                let addr = slot.pool.target.addr();
                let shard = slot.pool.labels.shard as usize;
                for info in slot.pool.idle_snapshot() {
                    out.push(ServerSnapshot {
                        pool: slot.pool.labels.clone(),
                        backend_pid: info.0,
                        state: "idle".into(),
                        connect_time: info.1,
                        last_used: Some(info.2),
                        client_id: None,
                        tls: info.3,
                    });
                }
                for c in &clients {
                    if let Some(pid) = c.server_of_pool(user, database, shard, &addr) {
                        out.push(ServerSnapshot {
                            pool: slot.pool.labels.clone(),
                            backend_pid: pid,
                            state: "active".into(),
                            connect_time: c.connect_time,
                            last_used: None,
                            client_id: Some(c.id),
                            tls: c.server_tls(),
                        });
                    }
                }
            }
        }
        out
    }

    fn stats(&self) -> Vec<DbStats> {
        self.state.metrics.db_stats()
    }

    fn config(&self) -> Vec<ConfigRow> {
        let rt = self.state.rt();
        let file = rt.config.router_path.display().to_string();
        let mut rows = general_rows(
            &rt.config.general,
            &self.state.general_lines.lock().clone(),
            &rt.config.sharding,
            &self.state.started,
            &self.state.started_lines,
            &file,
        );
        // [jwt], [auth_query], [jit] when present: `jwt.leeway_s`, ...
        rows.extend(
            pgrouter_config::login_section_values(&rt.config)
                .into_iter()
                .map(|(key, value)| ConfigRow {
                    key,
                    value,
                    source: file.clone(),
                }),
        );
        rows.push(ConfigRow {
            key: "databases".into(),
            value: rt.config.logical_databases().join(","),
            source: file.clone(),
        });
        rows.push(ConfigRow {
            key: "users".into(),
            value: rt.config.users.len().to_string(),
            source: rt.config.users_path.display().to_string(),
        });
        rows
    }

    fn last_reload(&self) -> Option<ReloadStatus> {
        self.state.metrics.last_reload()
    }

    fn reload(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { crate::reload::reload(&self.state, "admin RELOAD").await })
    }

    fn pause<'a>(&'a self, database: Option<&'a str>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let key = database.unwrap_or("*").to_string();
            if let Some(db) = database {
                self.known_database(db)?;
            }
            self.state.paused.insert(key.clone());
            self.state.pausing.notify_waiters();
            // Wait for transactions in progress to finish.
            let deadline = std::time::Instant::now()
                + Duration::from_millis(self.state.rt().config.general.shutdown_timeout_ms);
            loop {
                // A RESUME meanwhile undid this PAUSE: answering PAUSE would
                // tell a script that goes on to maintenance that the
                // database is paused when it is not.
                if !self.state.paused.contains(&key) {
                    return Err(
                        "PAUSE was undone by a RESUME before open transactions finished".into(),
                    );
                }
                let busy = self.state.registry.all().iter().any(|c| {
                    c.state() == ClientState::Active && database.is_none_or(|db| c.database == db)
                });
                if !busy {
                    return Ok(());
                }
                if std::time::Instant::now() >= deadline {
                    return Err(
                        "timed out waiting for transactions to finish; new ones stay paused".into(),
                    );
                }
                crate::timer::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn resume(&self, database: Option<&str>) -> Result<(), String> {
        let paused = &self.state.paused;
        match database {
            // A database paused and then removed by a reload can still be
            // resumed; any other unknown name is a typo, refused as by PAUSE
            // (answering RESUME would hide that nothing was resumed).
            Some(db) => {
                if !paused.remove(db) {
                    self.known_database(db)?;
                }
            }
            None => paused.clear(),
        }
        self.state.resumed.notify_waiters();
        Ok(())
    }

    fn shutdown(&self) {
        self.state.shutdown_request.notify_one();
    }
}
