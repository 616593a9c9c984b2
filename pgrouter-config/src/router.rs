//! Reading `router.toml`: every key of SPEC §3, its default, and the checks
//! that need only the key itself (type, range, spelling). Checks that relate
//! several entries or both files are in `validate.rs`.

use toml_edit::Document;

use crate::keys;
use crate::login_checks::{read_auth_query, read_jit, AuthQuery, Jit, LoginCheckLines};
use crate::model::*;
use crate::reader::{entries, set, table, Section, Source};

/// router.toml as read, plus the lines cross-file checks need to report at
/// (kept out of the public structs, which do not carry positions).
pub(crate) struct RouterFile {
    pub general: General,
    pub jwt: Option<Jwt>,
    pub databases: Vec<ServerEntry>,
    pub sharded_tables: Vec<ShardedTable>,
    pub reference_tables: Vec<ReferenceTables>,
    pub sharding: Sharding,
    pub at: RouterLines,
    pub auth_query: Option<AuthQuery>,
    pub jit: Option<Jit>,
    pub login_checks_at: LoginCheckLines,
    pub general_lines: GeneralLines,
}

#[derive(Default)]
pub(crate) struct RouterLines {
    /// The first `[[databases]]` header; 1 when there is none, so that "no
    /// [[databases]] entries" is reported against the file's first line.
    pub databases: usize,
    pub min_pool_size: usize,
    pub admin_database: usize,
    pub jwt: usize,
    pub jwt_connect_as: usize,
    pub jwt_databases: usize,
    /// Per `sharded_tables` entry (same index): (entry line, `database` line).
    pub sharded_tables: Vec<(usize, usize)>,
    /// Per `sharded_tables` entry: lines of its keys (see `sharding.rs`).
    pub sharded: Vec<crate::sharding::ShardedLines>,
    /// Per `reference_tables` entry: the line of its `database`.
    pub reference_tables: Vec<usize>,
}

/// Parses router.toml; `None` when it is not valid TOML (the syntax error is
/// reported), otherwise whatever could be read, with problems in `src`.
pub(crate) fn read(src: &mut Source, text: &str) -> Option<RouterFile> {
    let doc = parse_toml(src, text)?;
    let root = Section {
        table: doc.as_table(),
        prefix: "",
        line: 1,
    };
    root.check_unknown(src, keys::ROUTER_TOP, "router.toml");
    let mut at = RouterLines::default();

    let mut sharding = Sharding::default();
    let mut general_lines = GeneralLines::default();
    let general = match doc.get("general") {
        Some(item) => match table(src, item, root.line_of(src, "general"), "general") {
            Some(sec) => {
                general_lines = GeneralLines {
                    section: sec.line,
                    keys: sec
                        .table
                        .iter()
                        .map(|(k, _)| (k.to_string(), sec.line_of(src, k)))
                        .collect(),
                };
                sharding = crate::sharding::general(src, &sec);
                general(src, &sec, &mut at)
            }
            None => General::default(),
        },
        None => General::default(),
    };

    let jwt = doc.get("jwt").and_then(|item| {
        let sec = table(src, item, root.line_of(src, "jwt"), "jwt")?;
        Some(jwt(src, &sec, &mut at))
    });

    let mut databases = Vec::new();
    at.databases = root.line_of(src, "databases").max(1);
    if let Some(item) = doc.get("databases") {
        for sec in entries(src, item, root.line_of(src, "databases"), "databases") {
            if let Some(entry) = server(src, &sec) {
                databases.push(entry);
            }
        }
    }

    let mut sharded_tables = Vec::new();
    if let Some(item) = doc.get("sharded_tables") {
        for sec in entries(
            src,
            item,
            root.line_of(src, "sharded_tables"),
            "sharded_tables",
        ) {
            if let Some((t, lines)) = crate::sharding::sharded_table(src, &sec) {
                at.sharded_tables.push((lines.entry, lines.database));
                at.sharded.push(lines);
                sharded_tables.push(t);
            }
        }
    }

    let mut login_checks_at = LoginCheckLines::default();
    let auth_query = doc.get("auth_query").and_then(|item| {
        let sec = table(src, item, root.line_of(src, "auth_query"), "auth_query")?;
        Some(read_auth_query(src, &sec, &mut login_checks_at))
    });
    let jit = doc.get("jit").and_then(|item| {
        let sec = table(src, item, root.line_of(src, "jit"), "jit")?;
        Some(read_jit(src, &sec, &mut login_checks_at))
    });
    let mut reference_tables = Vec::new();
    if let Some(item) = doc.get("reference_tables") {
        let line = root.line_of(src, "reference_tables");
        for sec in entries(src, item, line, "reference_tables") {
            if let Some((r, line)) = crate::sharding::reference_tables(src, &sec) {
                at.reference_tables.push(line);
                reference_tables.push(r);
            }
        }
    }

    Some(RouterFile {
        general,
        jwt,
        databases,
        sharded_tables,
        reference_tables,
        sharding,
        at,
        auth_query,
        jit,
        login_checks_at,
        general_lines,
    })
}

/// Parses TOML keeping spans; a syntax error becomes a problem with its line.
pub(crate) fn parse_toml<'s>(src: &mut Source, text: &'s str) -> Option<Document<&'s str>> {
    match Document::parse(text) {
        Ok(doc) => Some(doc),
        Err(e) => {
            let span = e.span();
            let line = src.line(span.clone());
            let mut message = format!("TOML syntax error: {}", e.message());
            if let Some(span) = span {
                let start = src.line_start(span.start);
                let column = text.get(start..span.start).map_or(0, |s| s.chars().count()) + 1;
                message = format!("TOML syntax error at column {column}: {}", e.message());
            }
            src.report(line, "", message);
            None
        }
    }
}

fn general(src: &mut Source, sec: &Section, at: &mut RouterLines) -> General {
    sec.check_unknown(src, keys::GENERAL, "[general]");
    let mut g = General::default();
    if let Some(listen) = sec.string(src, "listen") {
        match check_listen(&listen) {
            Ok(()) => g.listen = listen,
            Err(m) => sec.report(src, "listen", m),
        }
    }
    set(&mut g.workers, sec.usize(src, "workers", 0));
    set(
        &mut g.worker_spread_percent,
        sec.integer(src, "worker_spread_percent", 0, 100)
            .and_then(|n| u32::try_from(n).ok()),
    );
    set(
        &mut g.pool_mode,
        sec.choice(src, "pool_mode", PoolMode::NAMES, PoolMode::from_name),
    );
    set(
        &mut g.default_pool_size,
        sec.u32(src, "default_pool_size", 1),
    );
    set(&mut g.min_pool_size, sec.u32(src, "min_pool_size", 0));
    at.min_pool_size = sec.line_of(src, "min_pool_size");
    if g.min_pool_size > g.default_pool_size {
        let msg = format!(
            "min_pool_size ({}) is larger than default_pool_size ({})",
            g.min_pool_size, g.default_pool_size
        );
        sec.report(src, "min_pool_size", msg);
    }
    set(
        &mut g.connect_timeout_ms,
        sec.u64(src, "connect_timeout_ms", 1),
    );
    set(
        &mut g.checkout_timeout_ms,
        sec.u64(src, "checkout_timeout_ms", 1),
    );
    set(
        &mut g.server_idle_timeout_ms,
        sec.u64(src, "server_idle_timeout_ms", 1),
    );
    set(
        &mut g.server_lifetime_ms,
        sec.u64(src, "server_lifetime_ms", 1),
    );
    set(
        &mut g.client_idle_timeout_ms,
        sec.u64(src, "client_idle_timeout_ms", 0),
    );
    set(
        &mut g.shutdown_timeout_ms,
        sec.u64(src, "shutdown_timeout_ms", 0),
    );
    set(&mut g.max_clients, sec.u32(src, "max_clients", 1));
    set(
        &mut g.max_message_size,
        sec.u32(src, "max_message_size", MIN_MESSAGE_SIZE),
    );
    let rw = sec.choice(
        src,
        "read_write_split",
        ReadWriteSplit::NAMES,
        ReadWriteSplit::from_name,
    );
    set(&mut g.read_write_split, rw);
    let lb = sec.choice(
        src,
        "load_balancing",
        LoadBalancing::NAMES,
        LoadBalancing::from_name,
    );
    set(&mut g.load_balancing, lb);
    set(
        &mut g.healthcheck_interval_ms,
        sec.u64(src, "healthcheck_interval_ms", 1),
    );
    set(&mut g.ban_time_ms, sec.u64(src, "ban_time_ms", 0));
    set(&mut g.write_functions, sec.strings(src, "write_functions"));
    set(
        &mut g.parse_cache_size,
        sec.usize(src, "parse_cache_size", 0),
    );
    set(
        &mut g.admin_database,
        sec.non_empty_string(src, "admin_database"),
    );
    at.admin_database = sec.line_of(src, "admin_database");
    set(&mut g.admin_user, sec.non_empty_string(src, "admin_user"));
    let admin_password = sec.string(src, "admin_password");
    if admin_password.as_deref() == Some("") {
        sec.report(
            src,
            "admin_password",
            "is empty: an empty password would let any client into the admin console (SHUTDOWN included); set one",
        );
    }
    set(&mut g.admin_password, admin_password);
    if let Some(metrics) = sec.string(src, "metrics_listen") {
        match check_listen(&metrics) {
            // Port 0 (any free port) on both is no clash.
            Ok(()) if metrics == g.listen && !metrics.ends_with(":0") => sec.report(
                src,
                "metrics_listen",
                "is the same address as listen: give the metrics endpoint a port of its own",
            ),
            Ok(()) => g.metrics_listen = metrics,
            Err(_) if metrics.is_empty() => g.metrics_listen = metrics,
            Err(m) => sec.report(
                src,
                "metrics_listen",
                format!("{m}, or \"\" to turn metrics off"),
            ),
        }
    }
    set(&mut g.hot_reload, sec.boolean(src, "hot_reload"));
    set(&mut g.tls_certificate, sec.string(src, "tls_certificate"));
    set(&mut g.tls_private_key, sec.string(src, "tls_private_key"));
    match (g.tls_certificate.is_empty(), g.tls_private_key.is_empty()) {
        (false, true) => sec.report(src, "tls_certificate", "tls_private_key must be set too"),
        (true, false) => sec.report(src, "tls_private_key", "tls_certificate must be set too"),
        _ => {}
    }
    set(
        &mut g.client_tls,
        sec.choice(src, "client_tls", ClientTls::NAMES, ClientTls::from_name),
    );
    if g.client_tls == ClientTls::Require && g.tls_certificate.is_empty() {
        let msg = "\"require\" needs tls_certificate and tls_private_key";
        sec.report(src, "client_tls", msg);
    }
    set(
        &mut g.server_tls,
        sec.choice(src, "server_tls", ServerTls::NAMES, ServerTls::from_name),
    );
    set(&mut g.server_tls_ca, sec.string(src, "server_tls_ca"));
    set(
        &mut g.log_format,
        sec.choice(src, "log_format", LogFormat::NAMES, LogFormat::from_name),
    );
    let session_state = sec.choice(
        src,
        "session_state",
        SessionStateMode::NAMES,
        SessionStateMode::from_name,
    );
    set(&mut g.session_state, session_state);
    set(
        &mut g.client_login_timeout_ms,
        sec.u64(src, "client_login_timeout_ms", 0),
    );
    set(
        &mut g.idle_transaction_timeout_ms,
        sec.u64(src, "idle_transaction_timeout_ms", 0),
    );
    set(&mut g.query_timeout_ms, sec.u64(src, "query_timeout_ms", 0));
    set(
        &mut g.max_db_connections,
        sec.u32(src, "max_db_connections", 0),
    );
    set(
        &mut g.max_user_connections,
        sec.u32(src, "max_user_connections", 0),
    );
    set(
        &mut g.max_replica_lag_ms,
        sec.u64(src, "max_replica_lag_ms", 0),
    );
    set(
        &mut g.read_your_writes,
        sec.boolean(src, "read_your_writes"),
    );
    g
}

/// `host:port`: a non-empty host (IPv6 in brackets) and a port in 0..=65535
/// (0 lets the OS pick, which tests use).
pub(crate) fn check_listen(s: &str) -> Result<(), String> {
    let bad = || format!("\"{s}\" is not host:port (e.g. \"127.0.0.1:6432\")");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "port \"{port}\" in \"{s}\" is not a number in 0..=65535"
        ));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return Err(format!(
                "\"{host}\" in \"{s}\" is not a bracketed IPv6 address"
            ));
        }
    } else if host.contains(':') {
        return Err(format!(
            "IPv6 addresses need brackets, e.g. \"[::1]:6432\" (got \"{s}\")"
        ));
    }
    Ok(())
}

/// JWT algorithms pgrouter can verify with a public key.
pub(crate) const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn jwt(src: &mut Source, sec: &Section, at: &mut RouterLines) -> Jwt {
    sec.check_unknown(src, keys::JWT, "[jwt]");
    at.jwt = sec.line;
    let mut j = Jwt::default();
    set(&mut j.public_key_file, sec.string(src, "public_key_file"));
    set(&mut j.jwks_url, sec.string(src, "jwks_url"));
    j.lines = JwtLines {
        section: sec.line,
        public_key_file: sec.line_of(src, "public_key_file"),
        jwks_url: sec.line_of(src, "jwks_url"),
        connect_as: sec.line_of(src, "connect_as"),
        allowed_roles: sec.line_of(src, "allowed_roles"),
    };
    match (j.public_key_file.is_empty(), j.jwks_url.is_empty()) {
        (true, true) => src.report(
            sec.line,
            "jwt",
            "set one of public_key_file or jwks_url: JWT login needs a key to verify tokens",
        ),
        (false, false) => sec.report(
            src,
            "jwks_url",
            "set only one of public_key_file and jwks_url, not both",
        ),
        _ => {}
    }
    let url = &j.jwks_url;
    if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
        sec.report(
            src,
            "jwks_url",
            format!("\"{}\" is not an http:// or https:// URL", j.jwks_url),
        );
    }
    set(&mut j.jwks_cache_ttl_s, sec.u64(src, "jwks_cache_ttl_s", 1));
    set(
        &mut j.jwks_min_refresh_interval_s,
        sec.u64(src, "jwks_min_refresh_interval_s", 0),
    );
    if let Some(algs) = sec.strings(src, "algorithms") {
        check_algorithms(src, sec, &algs);
        j.algorithms = algs;
    }
    set(&mut j.issuer, sec.string(src, "issuer"));
    set(&mut j.audience, sec.string(src, "audience"));
    set(&mut j.leeway_s, sec.u64(src, "leeway_s", 0));
    set(
        &mut j.username_claim,
        sec.non_empty_string(src, "username_claim"),
    );
    set(&mut j.role_claim, sec.non_empty_string(src, "role_claim"));
    set(&mut j.read_only_claim, sec.string(src, "read_only_claim"));
    set(&mut j.connect_as, sec.non_empty_string(src, "connect_as"));
    at.jwt_connect_as = sec.line_of(src, "connect_as");
    set(&mut j.allowed_roles, sec.strings(src, "allowed_roles"));
    set(&mut j.databases, sec.strings(src, "databases"));
    at.jwt_databases = sec.line_of(src, "databases");
    set(&mut j.auto_provision, sec.boolean(src, "auto_provision"));
    set(
        &mut j.auto_provision_read_only,
        sec.boolean(src, "auto_provision_read_only"),
    );
    set(
        &mut j.allow_insecure_transport,
        sec.boolean(src, "allow_insecure_transport"),
    );
    set(
        &mut j.disconnect_on_expiry,
        sec.boolean(src, "disconnect_on_expiry"),
    );
    j
}

fn check_algorithms(src: &mut Source, sec: &Section, algs: &[String]) {
    if algs.is_empty() {
        sec.report(src, "algorithms", "must list at least one algorithm");
    }
    for alg in algs {
        if alg.eq_ignore_ascii_case("none") || alg.to_ascii_uppercase().starts_with("HS") {
            let msg = format!("\"{alg}\" is always refused (no signature or a shared secret)");
            sec.report(src, "algorithms", msg);
        } else if !JWT_ALGORITHMS.contains(&alg.as_str()) {
            let msg = format!(
                "unknown algorithm \"{alg}\"; use one of {}",
                JWT_ALGORITHMS.join(", ")
            );
            sec.report(src, "algorithms", msg);
        }
    }
}

/// One `[[databases]]` entry; `None` only when it has no usable `name`
/// (it could not be grouped into a logical database).
fn server(src: &mut Source, sec: &Section) -> Option<ServerEntry> {
    sec.check_unknown(src, keys::DATABASES, "[[databases]]");
    let name = required(src, sec, "name");
    let host = required(src, sec, "host");
    let port = sec
        .integer(src, "port", 1, 65535)
        .and_then(|p| u16::try_from(p).ok());
    let database_name = sec.non_empty_string(src, "database_name");
    let role = sec.choice(src, "role", ServerRole::NAMES, ServerRole::from_name);
    let shard = sec.u32(src, "shard", 0);
    let name = name?;
    Some(ServerEntry {
        database_name: database_name.unwrap_or_else(|| name.clone()),
        name,
        host: host.unwrap_or_default(),
        port: port.unwrap_or(5432),
        role: role.unwrap_or(ServerRole::Primary),
        shard: shard.unwrap_or(0),
        line: sec.line,
    })
}

/// A required non-empty string; a missing key is reported at the entry's header.
pub(crate) fn required(src: &mut Source, sec: &Section, key: &str) -> Option<String> {
    if sec.table.get(key).is_none() {
        src.report(
            sec.line,
            sec.path(key),
            format!("missing required key \"{key}\""),
        );
        return None;
    }
    sec.non_empty_string(src, key)
}
