//! The Prometheus text exposition format (0.0.4): every family gets HELP and
//! TYPE lines, then its samples, families never interleave.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::atomic::Ordering;

use super::histogram::{HistogramSnapshot, BUCKETS};
use super::snapshot::{unix_seconds, ClientCounts, PoolLabels, PoolSnapshot};
use super::Metrics;

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the router reports at scrape time from state it keeps anyway.
pub trait MetricsSource: Send + Sync {
    /// Every pool in force now (one per user, database, shard and server).
    fn pools(&self) -> Vec<PoolSnapshot>;
    /// Connected clients by state.
    fn clients(&self) -> ClientCounts;
    /// Statement-analysis cache (hits, misses) since start.
    fn parse_cache(&self) -> (u64, u64);
    /// JWKS fetches (successful, failed) since start; (0, 0) without JWKS.
    fn jwks_fetches(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// Renders every metric. Never panics; cost grows with the number of pools.
pub fn render(metrics: &Metrics, source: &dyn MetricsSource) -> String {
    let mut out = Exposition::default();
    let pools = metrics.pool_list();
    let mut snaps = source.pools();
    snaps.sort_by(|a, b| a.labels.cmp(&b.labels));

    out.family(
        "pgrouter_build_info",
        "gauge",
        "pgrouter version, always 1.",
    );
    out.sample(
        "pgrouter_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    out.family(
        "pgrouter_start_time_seconds",
        "gauge",
        "When the router started, in seconds since the Unix epoch.",
    );
    out.sample(
        "pgrouter_start_time_seconds",
        &[],
        unix_seconds(metrics.started),
    );

    // Per-pool counters, from the pools that ever counted anything.
    type Counter = (&'static str, &'static str, fn(&super::PoolMetrics) -> u64);
    let counters: [Counter; 4] = [
        (
            "pgrouter_queries_total",
            "Statements answered, per pool.",
            |p| p.counts.sum(|c| &c.queries),
        ),
        (
            "pgrouter_transactions_total",
            "Transactions completed (a statement outside a transaction counts as one), per pool.",
            |p| p.counts.sum(|c| &c.transactions),
        ),
        (
            "pgrouter_bytes_received_total",
            "Bytes received from clients and forwarded to the pool's server.",
            |p| p.counts.sum(|c| &c.bytes_received),
        ),
        (
            "pgrouter_bytes_sent_total",
            "Bytes of the pool's server answers sent to clients.",
            |p| p.counts.sum(|c| &c.bytes_sent),
        ),
    ];
    for (name, help, get) in counters {
        out.family(name, "counter", help);
        for p in &pools {
            out.pool_sample(name, &p.labels, &[], get(p));
        }
    }

    out.family(
        "pgrouter_query_duration_seconds",
        "histogram",
        "Statement latency from sending it to the server to its completion, per pool.",
    );
    for p in &pools {
        out.histogram(
            "pgrouter_query_duration_seconds",
            &p.labels,
            &p.query_time.snapshot(),
        );
    }
    out.family(
        "pgrouter_checkout_wait_seconds",
        "histogram",
        "Time clients waited for a server connection from the pool.",
    );
    for p in &pools {
        out.histogram(
            "pgrouter_checkout_wait_seconds",
            &p.labels,
            &p.checkout_wait.snapshot(),
        );
    }

    // Gauges from the pools in force now.
    let clients = source.clients();
    out.family("pgrouter_clients", "gauge", "Connected clients by state.");
    out.sample("pgrouter_clients", &[("state", "active")], clients.active);
    out.sample("pgrouter_clients", &[("state", "waiting")], clients.waiting);
    out.sample("pgrouter_clients", &[("state", "idle")], clients.idle);
    out.family(
        "pgrouter_pinned_clients",
        "gauge",
        "Clients pinned to their server connection by session state, per reason.",
    );
    for (reason, n) in &clients.pinned {
        out.sample("pgrouter_pinned_clients", &[("reason", reason)], *n);
    }

    out.family(
        "pgrouter_workers",
        "gauge",
        "Worker threads (1 without worker threads).",
    );
    out.sample("pgrouter_workers", &[], crate::worker::count());
    out.family(
        "pgrouter_workers_active",
        "gauge",
        "Worker threads taking clients now (see worker_spread_percent).",
    );
    out.sample("pgrouter_workers_active", &[], crate::worker::active());
    let per_worker = crate::worker::snapshot();
    out.family(
        "pgrouter_worker_clients",
        "gauge",
        "Clients on each worker thread (those logging in and admin sessions included).",
    );
    for (i, (clients, _)) in per_worker.iter().enumerate() {
        out.sample(
            "pgrouter_worker_clients",
            &[("worker", &i.to_string())],
            clients,
        );
    }
    out.family(
        "pgrouter_worker_busy_ratio",
        "gauge",
        "Share of one core each worker thread used over the last 250 ms sample.",
    );
    for (i, (_, busy)) in per_worker.iter().enumerate() {
        out.sample(
            "pgrouter_worker_busy_ratio",
            &[("worker", &i.to_string())],
            busy,
        );
    }
    out.family(
        "pgrouter_client_moves_total",
        "counter",
        "Clients moved from one worker thread to another between their transactions.",
    );
    out.sample("pgrouter_client_moves_total", &[], crate::worker::moves());

    out.family(
        "pgrouter_pool_clients",
        "gauge",
        "Clients served by (active) or waiting for (waiting) a pool.",
    );
    for s in &snaps {
        out.pool_sample(
            "pgrouter_pool_clients",
            &s.labels,
            &[("state", "active")],
            s.cl_active,
        );
        out.pool_sample(
            "pgrouter_pool_clients",
            &s.labels,
            &[("state", "waiting")],
            s.cl_waiting,
        );
    }
    out.family(
        "pgrouter_servers",
        "gauge",
        "Server connections by state, per pool.",
    );
    for s in &snaps {
        out.pool_sample(
            "pgrouter_servers",
            &s.labels,
            &[("state", "active")],
            s.sv_active,
        );
        out.pool_sample(
            "pgrouter_servers",
            &s.labels,
            &[("state", "idle")],
            s.sv_idle,
        );
        out.pool_sample(
            "pgrouter_servers",
            &s.labels,
            &[("state", "used")],
            s.sv_used,
        );
    }
    out.family(
        "pgrouter_pool_size",
        "gauge",
        "Configured maximum server connections, per pool.",
    );
    for s in &snaps {
        out.pool_sample("pgrouter_pool_size", &s.labels, &[], s.pool_size);
    }
    out.family(
        "pgrouter_pool_maxwait_seconds",
        "gauge",
        "How long the oldest waiting client has waited, per pool.",
    );
    for s in &snaps {
        out.pool_sample(
            "pgrouter_pool_maxwait_seconds",
            &s.labels,
            &[],
            s.maxwait_ms as f64 / 1000.0,
        );
    }
    out.family(
        "pgrouter_pool_paused",
        "gauge",
        "1 while the pool is paused by the admin PAUSE command.",
    );
    for s in &snaps {
        out.pool_sample("pgrouter_pool_paused", &s.labels, &[], u8::from(s.paused));
    }
    out.family(
        "pgrouter_server_banned",
        "gauge",
        "1 while the pool's server is banned by health checks.",
    );
    for s in &snaps {
        out.pool_sample("pgrouter_server_banned", &s.labels, &[], u8::from(s.banned));
    }

    out.family(
        "pgrouter_errors_total",
        "counter",
        "Errors sent to clients, by SQLSTATE class (first two characters).",
    );
    for (class, n) in metrics.error_counts() {
        out.sample("pgrouter_errors_total", &[("sqlstate_class", &class)], n);
    }

    let (hits, misses) = source.parse_cache();
    out.family(
        "pgrouter_parse_cache_hits_total",
        "counter",
        "Statement analyses answered from the parse cache.",
    );
    out.sample("pgrouter_parse_cache_hits_total", &[], hits);
    out.family(
        "pgrouter_parse_cache_misses_total",
        "counter",
        "Statements that had to be parsed.",
    );
    out.sample("pgrouter_parse_cache_misses_total", &[], misses);

    out.family(
        "pgrouter_routed_total",
        "counter",
        "Statements and transactions routed, by server role.",
    );
    out.sample(
        "pgrouter_routed_total",
        &[("role", "primary")],
        metrics.routed.sum(|r| &r.primary),
    );
    out.sample(
        "pgrouter_routed_total",
        &[("role", "replica")],
        metrics.routed.sum(|r| &r.replica),
    );

    out.family(
        "pgrouter_sharded_statements_total",
        "counter",
        "Statements on sharded databases, by how many shards they needed (16 = 16 or more).",
    );
    for (i, n) in metrics.by_shards.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        if n > 0 {
            let shards = (i + 1).to_string();
            out.sample(
                "pgrouter_sharded_statements_total",
                &[("shards", &shards)],
                n,
            );
        }
    }

    out.family(
        "pgrouter_bans_total",
        "counter",
        "Times a server was banned by health checks.",
    );
    for (server, n) in metrics.bans.lock().clone() {
        out.sample("pgrouter_bans_total", &[("server", &server)], n);
    }

    out.family(
        "pgrouter_jwt_logins_total",
        "counter",
        "JWT login attempts by result (ok or the refusal's cause).",
    );
    out.results(
        "pgrouter_jwt_logins_total",
        metrics.jwt_logins.snapshot(),
        &[],
    );

    let (fetch_ok, fetch_err) = source.jwks_fetches();
    out.family(
        "pgrouter_jwks_fetches_total",
        "counter",
        "JWKS fetches by result.",
    );
    out.sample("pgrouter_jwks_fetches_total", &[("result", "ok")], fetch_ok);
    out.sample(
        "pgrouter_jwks_fetches_total",
        &[("result", "error")],
        fetch_err,
    );

    out.family(
        "pgrouter_reloads_total",
        "counter",
        "Configuration reload attempts by result.",
    );
    out.results(
        "pgrouter_reloads_total",
        metrics.reloads.snapshot(),
        &["ok", "error"],
    );

    out.family(
        "pgrouter_logins_total",
        "counter",
        "Client login attempts by result.",
    );
    out.results("pgrouter_logins_total", metrics.logins.snapshot(), &["ok"]);

    render_login_checks(&mut out, &metrics.login_checks);

    out.family(
        "pgrouter_2pc_commits_total",
        "counter",
        "Two-phase commits of transactions writing on several shards, by result (committed, rolled_back, in_doubt).",
    );
    out.results(
        "pgrouter_2pc_commits_total",
        metrics.twophase.commits.snapshot(),
        &["committed", "rolled_back"],
    );
    out.family(
        "pgrouter_2pc_recovered_total",
        "counter",
        "In-doubt prepared transactions finished by recovery, by result (committed, rolled_back).",
    );
    out.results(
        "pgrouter_2pc_recovered_total",
        metrics.twophase.recovered.snapshot(),
        &["committed", "rolled_back"],
    );

    let last = metrics.last_reload();
    out.family(
        "pgrouter_last_reload_successful",
        "gauge",
        "1 if the last reload attempt succeeded (or none was made), else 0.",
    );
    out.sample(
        "pgrouter_last_reload_successful",
        &[],
        u8::from(last.as_ref().is_none_or(|r| r.ok)),
    );
    out.family(
        "pgrouter_last_reload_timestamp_seconds",
        "gauge",
        "When the last reload was attempted (0 = never).",
    );
    out.sample(
        "pgrouter_last_reload_timestamp_seconds",
        &[],
        last.as_ref().map_or(0.0, |r| unix_seconds(r.at)),
    );

    out.text
}

fn render_login_checks(out: &mut Exposition, m: &super::login_checks::LoginCheckMetrics) {
    out.family(
        "pgrouter_auth_query_lookups_total",
        "counter",
        "[auth_query] lookups run on the server, by result (found, not_found, error).",
    );
    out.results(
        "pgrouter_auth_query_lookups_total",
        m.lookups.snapshot(),
        &["found", "not_found", "error"],
    );
    out.family(
        "pgrouter_auth_query_cache_hits_total",
        "counter",
        "[auth_query] logins answered from the secret cache without a lookup.",
    );
    out.sample(
        "pgrouter_auth_query_cache_hits_total",
        &[],
        m.lookup_cache_hits.load(Ordering::Relaxed),
    );
    out.family(
        "pgrouter_auth_query_lookup_duration_seconds",
        "histogram",
        "Time an [auth_query] lookup took (checkout of the lookup connection included).",
    );
    out.plain_histogram(
        "pgrouter_auth_query_lookup_duration_seconds",
        &m.lookup_time.snapshot(),
    );
    out.family(
        "pgrouter_jit_checks_total",
        "counter",
        "[jit] API calls by result (granted, not_granted, rejected, unavailable).",
    );
    out.results(
        "pgrouter_jit_checks_total",
        m.jit_checks.snapshot(),
        &["granted", "not_granted", "rejected", "unavailable"],
    );
    out.family(
        "pgrouter_jit_check_duration_seconds",
        "histogram",
        "Time a [jit] API call took, until its answer or the timeout.",
    );
    out.plain_histogram(
        "pgrouter_jit_check_duration_seconds",
        &m.jit_time.snapshot(),
    );
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                escape_label_into(&mut self.text, v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn pool_sample(
        &mut self,
        name: &str,
        pool: &PoolLabels,
        extra: &[(&str, &str)],
        value: impl Display,
    ) {
        let shard = pool.shard.to_string();
        let server = pool.server();
        let mut labels: Vec<(&str, &str)> = vec![
            ("database", &pool.database),
            ("user", &pool.user),
            ("shard", &shard),
            ("role", &pool.role),
            ("server", &server),
        ];
        labels.extend_from_slice(extra);
        self.sample(name, &labels, value);
    }

    fn histogram(&mut self, name: &str, pool: &PoolLabels, h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for ((le, _), n) in BUCKETS.iter().zip(&h.buckets) {
            self.pool_sample(&bucket, pool, &[("le", le)], n);
        }
        self.pool_sample(&bucket, pool, &[("le", "+Inf")], h.count);
        self.pool_sample(&format!("{name}_sum"), pool, &[], h.sum_us as f64 / 1e6);
        self.pool_sample(&format!("{name}_count"), pool, &[], h.count);
    }

    /// A histogram with no labels besides `le`.
    fn plain_histogram(&mut self, name: &str, h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for ((le, _), n) in BUCKETS.iter().zip(&h.buckets) {
            self.sample(&bucket, &[("le", le)], n);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], h.count);
    }

    /// Counts by result word, with `always` shown even at zero.
    fn results(
        &mut self,
        name: &str,
        mut counts: BTreeMap<&'static str, u64>,
        always: &[&'static str],
    ) {
        for r in always {
            counts.entry(r).or_insert(0);
        }
        for (result, n) in counts {
            self.sample(name, &[("result", result)], n);
        }
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
