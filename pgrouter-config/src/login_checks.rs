//! `[auth_query]` and `[jit]` (SPEC §3, §5 "Logins checked against the
//! database and remote token checks"): their model, defaults, reading and
//! the checks that involve users.toml.
//!
//! Kept apart from `router.rs` because these two sections have nothing to do
//! with the pools and routing keys there, and so that they can grow without
//! touching the rest of the reader.

use crate::reader::{set, Section, Source};
use crate::users::UsersFile;

/// PostgreSQL's own table, readable by superusers only; the README shows a
/// `SECURITY DEFINER` function for a lookup user that is not one. The text
/// is SPEC.md's: roles that may not log in are left out, so they are
/// answered as unknown users (28P01). A query returning a `rolcanlogin`
/// column instead gets PostgreSQL's own answer for them (28000 once the
/// password is proved).
pub const DEFAULT_AUTH_QUERY: &str =
    "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin";

/// `[auth_query]`: present = a user with no users.toml entry logs in with the
/// password PostgreSQL stores for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthQuery {
    /// users.toml entry (of the database being logged in to) whose server
    /// credentials run the lookup.
    pub user: String,
    /// Takes the user name as `$1`, returns one row: name and `rolpassword`,
    /// and optionally a column named `rolcanlogin`.
    pub query: String,
    /// Secrets found are kept this long; 0 = look up at every login.
    pub cache_ttl_s: u64,
}

impl Default for AuthQuery {
    fn default() -> Self {
        AuthQuery {
            user: "pgrouter_auth".into(),
            query: DEFAULT_AUTH_QUERY.into(),
            cache_ttl_s: 60,
        }
    }
}

/// `[jit]`: present = just-in-time access, tokens checked by a remote API at
/// every login (Supavisor's contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jit {
    /// http(s) URL the router POSTs each token to (required).
    pub api_url: String,
    /// The whole API call (connect, TLS, answer) must finish within this.
    pub timeout_ms: u64,
    /// Passwords starting with one of these (or shaped like a JWT) are tokens.
    pub token_prefixes: Vec<String>,
    /// PEM CA bundle for an https `api_url`; "" = the system's roots.
    pub api_ca: String,
    /// Logical databases where JIT applies; empty = all. See [`Jit::applies_to`].
    pub databases: Vec<String>,
}

impl Default for Jit {
    fn default() -> Self {
        Jit {
            api_url: String::new(),
            timeout_ms: 2000,
            token_prefixes: vec!["sbp_".into()],
            api_ca: String::new(),
            databases: Vec::new(),
        }
    }
}

impl Jit {
    /// Whether JIT applies to logical database `db` (`databases = []` means all).
    pub fn applies_to(&self, db: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d == db)
    }

    /// Whether `password` starts with one of `token_prefixes` (JWT shape is
    /// checked by the server, which knows what a JWT looks like).
    pub fn has_token_prefix(&self, password: &str) -> bool {
        self.token_prefixes.iter().any(|p| password.starts_with(p))
    }
}

/// Lines for checks made after both files are read.
#[derive(Default)]
pub(crate) struct LoginCheckLines {
    pub auth_query_user: usize,
    /// `[auth_query] query` (its section's line when left out).
    pub auth_query_query: usize,
    pub jit_databases: usize,
    pub jit: JitLines,
}

/// Where `[jit]` and the keys naming what the server reads (the URL, the
/// CA file) are in router.toml, so that a problem only the server finds
/// (a CA file that does not load) is reported at `file:line: jit.key`,
/// as every other problem is (see [`crate::Config::jit_problem`]).
/// 0 = unknown (no `[jit]`, or a key left out: its section's line is used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitLines {
    pub section: usize,
    pub api_url: usize,
    pub api_ca: usize,
}

pub(crate) const AUTH_QUERY_KEYS: &[&str] = &["user", "query", "cache_ttl_s"];
pub(crate) const JIT_KEYS: &[&str] = &[
    "api_url",
    "timeout_ms",
    "token_prefixes",
    "api_ca",
    "databases",
];

pub(crate) fn read_auth_query(
    src: &mut Source,
    sec: &Section,
    at: &mut LoginCheckLines,
) -> AuthQuery {
    sec.check_unknown(src, AUTH_QUERY_KEYS, "[auth_query]");
    let mut a = AuthQuery::default();
    set(&mut a.user, sec.non_empty_string(src, "user"));
    at.auth_query_user = sec.line_of(src, "user");
    at.auth_query_query = sec.line_of(src, "query");
    if let Some(query) = sec.non_empty_string(src, "query") {
        if query.contains("$1") {
            a.query = query;
        } else {
            sec.report(
                src,
                "query",
                "must take the user name as the parameter $1 (e.g. \"... WHERE rolname = $1\")",
            );
        }
    }
    set(&mut a.cache_ttl_s, sec.u64(src, "cache_ttl_s", 0));
    a
}

pub(crate) fn read_jit(src: &mut Source, sec: &Section, at: &mut LoginCheckLines) -> Jit {
    sec.check_unknown(src, JIT_KEYS, "[jit]");
    at.jit = JitLines {
        section: sec.line,
        api_url: sec.line_of(src, "api_url"),
        api_ca: sec.line_of(src, "api_ca"),
    };
    let mut j = Jit::default();
    match sec.non_empty_string(src, "api_url") {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
            if url
                .split_once("://")
                .is_some_and(|(_, rest)| rest.split(['/', '?']).next().unwrap_or("").is_empty())
            {
                sec.report(src, "api_url", format!("\"{url}\" has no host"));
            }
            j.api_url = url;
        }
        Some(url) => sec.report(
            src,
            "api_url",
            format!("\"{url}\" is not an http:// or https:// URL"),
        ),
        None if sec.table.get("api_url").is_none() => src.report(
            sec.line,
            sec.path("api_url"),
            "missing required key \"api_url\": the URL of the API that checks tokens",
        ),
        None => {}
    }
    set(&mut j.timeout_ms, sec.u64(src, "timeout_ms", 1));
    set(&mut j.token_prefixes, sec.strings(src, "token_prefixes"));
    set(&mut j.api_ca, sec.string(src, "api_ca"));
    if !j.api_ca.is_empty() && j.api_url.starts_with("http://") {
        sec.report(
            src,
            "api_ca",
            "api_ca is only used with an https:// api_url; remove it or use https",
        );
    }
    set(&mut j.databases, sec.strings(src, "databases"));
    at.jit_databases = sec.line_of(src, "databases");
    j
}

/// Checks that need users.toml or the list of logical databases.
pub(crate) fn cross(
    rsrc: &mut Source,
    auth_query: Option<&AuthQuery>,
    jit: Option<&Jit>,
    at: &LoginCheckLines,
    databases: &[&str],
    u: &UsersFile,
) {
    if let Some(aq) = auth_query {
        let entries: Vec<_> = u.users.iter().filter(|x| x.name == aq.user).collect();
        if entries.is_empty() {
            let msg = format!(
                "users.toml has no [[users]] entry named \"{}\" (the lookup runs with its server credentials)",
                aq.user
            );
            rsrc.report(at.auth_query_user, "auth_query.user", msg);
        }
    }
    if let Some(jit) = jit {
        for db in &jit.databases {
            if !databases.contains(&db.as_str()) {
                rsrc.report(
                    at.jit_databases,
                    "jit.databases",
                    format!("unknown logical database \"{db}\""),
                );
            }
        }
    }
}
