use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::router::Role;

/// A fixed source for tests.
struct FakeSource {
    pools: Vec<PoolSnapshot>,
}

impl MetricsSource for FakeSource {
    fn pools(&self) -> Vec<PoolSnapshot> {
        self.pools.clone()
    }
    fn clients(&self) -> ClientCounts {
        ClientCounts {
            active: 2,
            waiting: 1,
            idle: 7,
            pinned: vec![("temp", 1), ("listen", 0)],
        }
    }
    fn parse_cache(&self) -> (u64, u64) {
        (40, 2)
    }
    fn jwks_fetches(&self) -> (u64, u64) {
        (3, 1)
    }
}

fn labels(database: &str, role: &str, port: u16) -> PoolLabels {
    PoolLabels {
        database: database.into(),
        user: "app".into(),
        shard: 0,
        role: role.into(),
        host: "127.0.0.1".into(),
        port,
    }
}

fn fake_source() -> FakeSource {
    FakeSource {
        pools: vec![
            PoolSnapshot {
                labels: labels("app", "primary", 5432),
                pool_mode: "transaction".into(),
                cl_active: 2,
                cl_waiting: 1,
                sv_active: 2,
                sv_idle: 3,
                sv_used: 0,
                pool_size: 10,
                maxwait_ms: 1500,
                paused: false,
                banned: false,
            },
            PoolSnapshot {
                labels: PoolLabels {
                    host: "::1".into(),
                    ..labels("we\"ird\\db\n", "replica", 5433)
                },
                pool_mode: "session".into(),
                banned: true,
                ..PoolSnapshot::default()
            },
        ],
    }
}

/// One parsed sample: family name, full sample name, labels, value.
#[derive(Debug)]
struct Sample {
    family: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the text format: every sample belongs to a family
/// declared (HELP and TYPE) before it, families are contiguous and declared
/// once, no series repeats, histograms are cumulative with `+Inf` = `_count`.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen_series = HashSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(err("empty line"));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            if !valid_name(name) {
                return Err(err("bad family name"));
            }
            if current.as_deref() != Some(name) {
                if done.contains(name) {
                    return Err(err("family declared twice"));
                }
                if let Some(c) = current.take() {
                    done.insert(c);
                }
                current = Some(name.to_string());
            }
            match kw {
                "HELP" => {
                    if arg.is_empty() || !helps.insert(name.to_string()) {
                        return Err(err("empty or repeated HELP"));
                    }
                }
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(err("bad TYPE"));
                    }
                    if types.insert(name.to_string(), arg.to_string()).is_some() {
                        return Err(err("repeated TYPE"));
                    }
                }
                _ => return Err(err("unknown comment")),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line).map_err(|m| err(&m))?;
        let family = current
            .clone()
            .ok_or_else(|| err("sample before any family"))?;
        let kind = types
            .get(&family)
            .ok_or_else(|| err("sample before TYPE"))?;
        if !helps.contains(&family) {
            return Err(err("family without HELP"));
        }
        let ok_name = match kind.as_str() {
            "histogram" => [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name),
            _ => name == family,
        };
        if !ok_name {
            return Err(err("sample name does not match its family"));
        }
        if !seen_series.insert(format!("{name}{labels:?}")) {
            return Err(err("duplicate series"));
        }
        if kind == "counter" && (value < 0.0 || !name.ends_with("_total")) {
            return Err(err("counter negative or not _total"));
        }
        samples.push(Sample {
            family,
            name,
            labels,
            value,
        });
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            if body[start..].starts_with('}') {
                end = start + 1;
                break;
            }
            let eq = body[start..].find("=\"").ok_or("label without =\"")? + start;
            let key = &body[start..eq];
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i < eq + 2) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")? {
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '"') => break,
                    (_, '\n') => return Err("raw newline in label".into()),
                    (_, c) => value.push(c),
                }
            }
            if labels.insert(key.to_string(), value).is_some() {
                return Err("repeated label".into());
            }
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => return Err("expected , or } after label".into()),
            }
        }
        rest = &body[end..];
    }
    let value = rest.strip_prefix(' ').ok_or("no space before value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok((name.to_string(), labels, value))
}

fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), String> {
    // (family, labels without le) -> (buckets in order, sum, count)
    type Key = (String, BTreeMap<String, String>);
    type Group = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for s in samples.iter().filter(|s| types[&s.family] == "histogram") {
        let mut labels = s.labels.clone();
        let le = labels.remove("le");
        let g = groups.entry((s.family.clone(), labels)).or_default();
        if s.name.ends_with("_bucket") {
            let le = le.ok_or("bucket without le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().map_err(|_| "bad le")?
            };
            g.0.push((bound, s.value));
        } else if s.name.ends_with("_sum") {
            g.1 = Some(s.value);
        } else {
            g.2 = Some(s.value);
        }
    }
    for ((family, labels), (buckets, sum, count)) in groups {
        let what = format!("{family}{labels:?}");
        let (sum, count) = (
            sum.ok_or(format!("{what}: no _sum"))?,
            count.ok_or(format!("{what}: no _count"))?,
        );
        if buckets
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
        {
            return Err(format!("{what}: buckets not increasing and cumulative"));
        }
        match buckets.last() {
            Some(&(b, n)) if b.is_infinite() && n == count => {}
            _ => return Err(format!("{what}: last bucket must be +Inf equal to _count")),
        }
        if sum < 0.0 || (count == 0.0 && sum != 0.0) {
            return Err(format!("{what}: _sum inconsistent with _count"));
        }
    }
    Ok(())
}

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn recorded_metrics() -> Metrics {
    let m = Metrics::new();
    let primary = m.pool(&labels("app", "primary", 5432));
    let replica = m.pool(&labels("app", "replica", 5433));
    for i in 0..10u64 {
        primary.record_query(Duration::from_micros(200 + i * 100));
        primary.record_checkout_wait(Duration::ZERO);
    }
    primary.record_transaction(Duration::from_millis(3));
    primary.record_transaction(Duration::from_millis(5));
    replica.record_query(Duration::from_secs(90));
    replica.record_checkout_wait(Duration::from_millis(20));
    replica.record_transaction(Duration::from_secs(90));
    primary.add_bytes_received(100);
    primary.add_bytes_sent(1000);
    m.record_query(&labels("other", "primary", 5432), Duration::from_millis(1));
    m.record_error("23505");
    m.record_error("23503");
    m.record_error("42P01");
    m.record_error("x");
    m.record_routed(Role::Primary);
    m.record_routed(Role::Replica);
    m.record_routed(Role::Replica);
    m.record_ban("127.0.0.1:5433");
    m.record_jwt_login("ok");
    m.record_jwt_login("expired");
    m.record_login("ok");
    m.record_login("bad_password");
    m.record_reload(false, "router.toml:3: unknown key `poolsize`");
    m
}

#[test]
fn render_parses_and_counts_match() {
    let m = recorded_metrics();
    let text = render(&m, &fake_source());
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let pool = [
        ("database", "app"),
        ("user", "app"),
        ("shard", "0"),
        ("role", "primary"),
        ("server", "127.0.0.1:5432"),
    ];
    assert_eq!(value(&samples, "pgrouter_queries_total", &pool), Some(10.0));
    assert_eq!(
        value(&samples, "pgrouter_queries_total", &[("database", "other")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_transactions_total", &pool),
        Some(2.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_bytes_received_total", &pool),
        Some(100.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_bytes_sent_total", &pool),
        Some(1000.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_query_duration_seconds_count", &pool),
        Some(10.0)
    );
    let sum = value(&samples, "pgrouter_query_duration_seconds_sum", &pool).unwrap();
    assert!((sum - 0.0065).abs() < 1e-9, "{sum}");
    let mut le = pool.to_vec();
    le.push(("le", "0.0005"));
    assert_eq!(
        value(&samples, "pgrouter_query_duration_seconds_bucket", &le),
        Some(4.0)
    ); // 200..=500 µs
    assert_eq!(
        value(&samples, "pgrouter_checkout_wait_seconds_count", &pool),
        Some(10.0)
    );
    let replica_le = [("role", "replica"), ("le", "60")];
    assert_eq!(
        value(
            &samples,
            "pgrouter_query_duration_seconds_bucket",
            &replica_le
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_query_duration_seconds_bucket",
            &[("role", "replica"), ("le", "+Inf")]
        ),
        Some(1.0)
    );

    assert_eq!(
        value(&samples, "pgrouter_clients", &[("state", "active")]),
        Some(2.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_clients", &[("state", "waiting")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_clients", &[("state", "idle")]),
        Some(7.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_pinned_clients", &[("reason", "temp")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_pinned_clients", &[("reason", "listen")]),
        Some(0.0)
    );
    let mut idle = pool.to_vec();
    idle.push(("state", "idle"));
    assert_eq!(value(&samples, "pgrouter_servers", &idle), Some(3.0));
    assert_eq!(
        value(&samples, "pgrouter_pool_maxwait_seconds", &pool),
        Some(1.5)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_server_banned",
            &[("database", "we\"ird\\db\n"), ("server", "[::1]:5433")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_errors_total",
            &[("sqlstate_class", "23")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_errors_total",
            &[("sqlstate_class", "42")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_errors_total",
            &[("sqlstate_class", "unknown")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_parse_cache_hits_total", &[]),
        Some(40.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_parse_cache_misses_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_routed_total", &[("role", "replica")]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_bans_total",
            &[("server", "127.0.0.1:5433")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_jwt_logins_total",
            &[("result", "expired")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_jwks_fetches_total",
            &[("result", "error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_reloads_total", &[("result", "error")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_reloads_total", &[("result", "ok")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "pgrouter_logins_total",
            &[("result", "bad_password")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "pgrouter_last_reload_successful", &[]),
        Some(0.0)
    );
    assert!(value(&samples, "pgrouter_last_reload_timestamp_seconds", &[]).unwrap() > 1e9);

    // Every metric the spec names is declared.
    for name in [
        "pgrouter_queries_total",
        "pgrouter_transactions_total",
        "pgrouter_bytes_received_total",
        "pgrouter_bytes_sent_total",
        "pgrouter_clients",
        "pgrouter_pinned_clients",
        "pgrouter_servers",
        "pgrouter_errors_total",
        "pgrouter_query_duration_seconds",
        "pgrouter_checkout_wait_seconds",
        "pgrouter_parse_cache_hits_total",
        "pgrouter_parse_cache_misses_total",
        "pgrouter_routed_total",
        "pgrouter_bans_total",
        "pgrouter_jwt_logins_total",
        "pgrouter_jwks_fetches_total",
        "pgrouter_reloads_total",
        "pgrouter_logins_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
    }
}

#[test]
fn empty_metrics_render_and_parse() {
    let m = Metrics::new();
    let text = render(&m, &FakeSource { pools: vec![] });
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(text.contains("pgrouter_last_reload_successful 1\n"));
}

#[test]
fn the_checker_rejects_bad_expositions() {
    assert!(parse_exposition("x 1\n").is_err()); // no HELP/TYPE
    assert!(
        parse_exposition("# HELP a_total h\n# TYPE a_total counter\na_total{x=\"1} 2\n").is_err()
    );
    assert!(parse_exposition(
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"
    )
    .is_err());
    assert!(parse_exposition(
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n"
    )
    .is_err());
    assert!(parse_exposition(
        "# HELP a h\n# TYPE a gauge\na 1\n# HELP b h\n# TYPE b gauge\nb 1\n# HELP a h\n"
    )
    .is_err());
    assert!(parse_exposition("# HELP a h\n# TYPE a gauge\na{x=\"\\q\"} 1\n").is_err());
}

#[test]
fn stats_survive_pool_rebuilds_and_sum_per_database() {
    let m = recorded_metrics();
    // A reload that rebuilds the pool asks for the same labels again.
    let again = m.pool(&labels("app", "primary", 5432));
    assert_eq!(again.queries(), 10);
    again.record_query(Duration::from_millis(1));
    let stats = m.db_stats();
    assert_eq!(
        stats
            .iter()
            .map(|s| s.database.as_str())
            .collect::<Vec<_>>(),
        ["app", "other"]
    );
    let app = &stats[0];
    assert_eq!(app.total_query_count, 12);
    assert_eq!(app.total_xact_count, 3);
    assert_eq!(app.total_xact_time_us, 3_000 + 5_000 + 90_000_000);
    assert_eq!(app.total_query_time_us, 6_500 + 1_000 + 90_000_000);
    assert_eq!(app.total_wait_count, 11);
    assert_eq!(app.total_wait_time_us, 20_000);
    assert_eq!((app.total_received, app.total_sent), (100, 1000));
    assert!(
        (600..=710).contains(&app.query_time_p50_us),
        "{}",
        app.query_time_p50_us
    );
    assert!(app.query_time_p99_us >= 1_000);
}

#[test]
fn last_reload_is_kept() {
    let m = Metrics::new();
    assert!(m.last_reload().is_none());
    m.record_reload(true, "pool size of app changed");
    let r = m.last_reload().unwrap();
    assert!(r.ok);
    assert_eq!(r.message, "pool size of app changed");
}

#[test]
fn hot_path_is_cheap() {
    let m = Metrics::new();
    let pool = m.pool(&labels("app", "primary", 5432));
    let n = 200_000u32;
    let start = Instant::now();
    for i in 0..n {
        pool.record_query(Duration::from_micros(u64::from(i % 10_000)));
    }
    let handle_ns = start.elapsed().as_nanos() / u128::from(n);
    let l = labels("app", "primary", 5432);
    let start = Instant::now();
    for i in 0..n {
        m.record_query(&l, Duration::from_micros(u64::from(i % 10_000)));
    }
    let lookup_ns = start.elapsed().as_nanos() / u128::from(n);
    eprintln!("record_query: {handle_ns} ns with a handle, {lookup_ns} ns by labels");
    // Generous for unoptimised test builds on a busy machine; release is ~20-60 ns.
    assert!(handle_ns < 5_000, "{handle_ns} ns");
    assert!(lookup_ns < 10_000, "{lookup_ns} ns");
    assert_eq!(pool.queries(), 2 * u64::from(n));
}

async fn http_get(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn http_endpoint_serves_metrics() {
    let metrics = Arc::new(recorded_metrics());
    let source: Arc<dyn MetricsSource + Send + Sync> = Arc::new(fake_source());
    let listener = bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve_listener(listener, metrics.clone(), source, rx));

    let resp = http_get(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    )
    .await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    let samples = parse_exposition(body).unwrap();
    assert_eq!(
        value(
            &samples,
            "pgrouter_queries_total",
            &[("database", "app"), ("role", "primary")]
        ),
        Some(10.0)
    );

    // Query strings are fine; HEAD has no body.
    assert!(http_get(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 200"));
    let head_only = http_get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        head_only.starts_with("HTTP/1.1 200") && head_only.ends_with("\r\n\r\n"),
        "{head_only}"
    );
    // Anything else.
    assert!(http_get(addr, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 404"));
    assert!(http_get(addr, b"GET /metricsx HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 404"));
    assert!(
        http_get(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405")
    );
    assert!(http_get(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"
    )
    .await
    .starts_with("HTTP/1.1 400"));
    assert!(http_get(addr, b"GET /metrics SPDY/3 extra\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400"));
    let huge = vec![b'A'; 64 * 1024];
    let resp = {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&huge).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 431"),
        "{resp}"
    );
    // A client that connects and leaves does not stop the server.
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert!(http_get(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 200"));

    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
