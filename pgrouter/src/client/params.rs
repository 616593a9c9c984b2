//! A client's session parameters and how to bring a server in line with them.
//!
//! In transaction mode a client meets many server connections. Each checkout
//! compares what the client wants (its startup parameters, then every change
//! the server reported to it) with what that server has, and sets the
//! difference — one statement per parameter, pipelined ahead of the client's
//! own first message, so it costs no extra round trip; should the server
//! refuse one, the client gets that error (see `replay.rs`).

use std::collections::HashMap;

use super::tracking::SetChange;
use crate::server::ServerConn;

/// Parameters a client cannot set: reported by the server but read-only, or
/// legitimately different between servers (primary vs replica).
const NOT_SETTABLE: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "scram_iterations",
];

/// Startup packet keys that are not run-time parameters.
const NOT_PARAMETERS: &[&str] = &["user", "database", "options", "replication"];

#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    /// What the client believes its session has (what it was told by
    /// ParameterStatus, plus what it asked for at startup).
    pub values: HashMap<String, String>,
    /// The values at login: what RESET returns to.
    initial: HashMap<String, String>,
    /// Parameter names as the server spells them (reported ones).
    known_names: Vec<String>,
    /// Bumped on every change; lets callers cache what they derive.
    version: u64,
    /// Hash of the settable values, recomputed after a change (0 = stale).
    fingerprint: std::cell::Cell<u64>,
    /// The codec of `client_encoding` when the router transcodes it (None:
    /// UTF8, or an encoding it does not read), kept in step with `values`
    /// so that the relay path asks with one load (see `client_encoding.rs`).
    codec: Option<&'static crate::encoding::ClientCodec>,
}

impl ClientParams {
    /// The client's view at login: the server defaults overlaid with the
    /// startup packet's parameters (including `-c name=value` in `options`).
    pub fn from_startup(
        defaults: &[(String, String)],
        startup: &[(String, String)],
    ) -> ClientParams {
        let mut values: HashMap<String, String> = defaults.iter().cloned().collect();
        for (k, v) in startup {
            if k == "options" {
                for (name, value) in parse_options(v) {
                    values.insert(canonical_name(&name, defaults), value);
                }
            } else if !NOT_PARAMETERS.contains(&k.as_str()) && !k.starts_with("_pq_.") {
                values.insert(canonical_name(k, defaults), v.clone());
            }
        }
        let known_names = defaults.iter().map(|(k, _)| k.clone()).collect();
        let mut params = ClientParams {
            initial: values.clone(),
            values,
            known_names,
            version: 1,
            fingerprint: Default::default(),
            codec: None,
        };
        params.changed();
        params
    }

    /// The codec of the session's `client_encoding`, when the router
    /// transcodes it.
    #[inline]
    pub fn codec(&self) -> Option<&'static crate::encoding::ClientCodec> {
        self.codec
    }

    /// Applies a SET/RESET that took effect on the server.
    pub fn apply(&mut self, change: SetChange) {
        match change {
            SetChange::Set { name, value } => {
                let name = self.canonical(&name);
                self.values.insert(name, value);
            }
            SetChange::Reset { name } => {
                let name = self.canonical(&name);
                match self.initial.get(&name) {
                    Some(v) => {
                        self.values.insert(name, v.clone());
                    }
                    None => {
                        self.values.remove(&name);
                    }
                }
            }
            SetChange::ResetAll => self.values = self.initial.clone(),
        }
        self.changed();
    }

    /// The client has its own value to return to on `RESET name` (a startup
    /// parameter), other than the server's default.
    pub fn has_initial(&self, name: &str) -> bool {
        self.initial.contains_key(&self.canonical(name))
    }

    /// Fixes a parameter for the whole session (RESET returns to it too).
    pub fn pin(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_string(), value.to_string());
        self.initial.insert(name.to_string(), value.to_string());
        self.changed();
    }

    /// The value of a parameter as the client last set it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The server reports this parameter's changes (ParameterStatus).
    pub fn is_reported(&self, name: &str) -> bool {
        self.known_names.iter().any(|k| k == name)
    }

    /// Every parameter the server reports that a client may set.
    pub fn reported_names(&self) -> Vec<String> {
        self.known_names
            .iter()
            .filter(|k| !NOT_SETTABLE.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    pub fn canonical(&self, name: &str) -> String {
        self.known_names
            .iter()
            .find(|k| k.eq_ignore_ascii_case(name))
            .cloned()
            .unwrap_or_else(|| name.to_ascii_lowercase())
    }

    /// Records a change the server reported while this client held it.
    pub fn note(&mut self, name: &str, value: &str) {
        match self.values.get_mut(name) {
            Some(v) if v == value => return,
            Some(v) => *v = value.to_string(),
            None => {
                self.values.insert(name.to_string(), value.to_string());
            }
        }
        self.changed();
    }

    /// After every change of `values`.
    fn changed(&mut self) {
        self.version += 1;
        self.fingerprint.set(0);
        self.codec = self
            .values
            .get("client_encoding")
            .and_then(|name| crate::encoding::codec_named(name));
    }

    /// Changes whenever any value changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A hash of every settable value. A server whose own fingerprint equals
    /// it was last brought in line with exactly these values and has not
    /// changed since, so the diff can be skipped — the common case, since
    /// most clients of a pool share the same settings.
    pub fn fingerprint(&self) -> u64 {
        let cached = self.fingerprint.get();
        if cached != 0 {
            return cached;
        }
        use std::hash::{Hash, Hasher};
        let mut pairs: Vec<(&String, &String)> = self
            .values
            .iter()
            .filter(|(k, _)| !NOT_SETTABLE.contains(&k.as_str()))
            .collect();
        pairs.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pairs.hash(&mut h);
        let f = h.finish().max(1);
        self.fingerprint.set(f);
        f
    }

    /// The SQL that makes `server` match this client, or `None` when it does.
    /// Parameters the router set earlier for another client and this client
    /// did not ask for are RESET, so no client inherits another's settings.
    pub fn sync_sql(&self, server: &ServerConn) -> Option<String> {
        let steps = self.sync_steps(server)?;
        let mut resets = String::new();
        let mut sets = String::new();
        for step in &steps {
            match &step.value {
                None => {
                    resets.push_str("RESET ");
                    resets.push_str(&quote_ident(&step.name));
                    resets.push(';');
                }
                Some(value) => {
                    sets.push_str(if sets.is_empty() { "SELECT " } else { ", " });
                    push_set_config(&mut sets, &step.name, value);
                }
            }
        }
        Some(resets + &sets)
    }

    /// [`Self::sync_sql`] one parameter at a time, each step a statement of
    /// its own: when one fails the router knows which setting it could not
    /// carry (see `replay.rs`).
    pub fn sync_steps(&self, server: &ServerConn) -> Option<Vec<SyncStep>> {
        if server.params_fingerprint == self.fingerprint() {
            return None;
        }
        let mut steps = Vec::new();
        for name in server.router_set.keys() {
            if !self.values.contains_key(name) {
                steps.push(SyncStep {
                    name: name.clone(),
                    value: None,
                });
            }
        }
        for (name, value) in &self.values {
            if NOT_SETTABLE.contains(&name.as_str()) || server.params.get(name) == Some(value) {
                continue;
            }
            steps.push(SyncStep {
                name: name.clone(),
                value: Some(value.clone()),
            });
        }
        // The encoding first: each step after it is read in it, as the
        // router writes them (`ServerConn::text_codec`).
        steps.sort_by_key(|step| step.name != "client_encoding");
        (!steps.is_empty()).then_some(steps)
    }

    /// A setting the router could not carry to another server connection
    /// (the server refused it there, the client was told so): the session
    /// goes on with the value it had at login, or with the server's default
    /// when even that is refused now.
    pub fn drop_failed(&mut self, name: &str) {
        let initial = self.initial.get(name).cloned();
        match initial {
            Some(v) if self.values.get(name) != Some(&v) => {
                self.values.insert(name.to_string(), v);
            }
            _ => {
                self.values.remove(name);
                self.initial.remove(name);
            }
        }
        self.changed();
    }

    /// Records on `server` what [`sync_sql`] is about to set, for parameters
    /// the server does not report back by itself.
    pub fn mark_synced(&self, server: &mut ServerConn) {
        server.params_fingerprint = self.fingerprint();
        let reset: Vec<String> = server
            .router_set
            .keys()
            .filter(|name| !self.values.contains_key(*name))
            .cloned()
            .collect();
        for name in reset {
            server.router_set.remove(&name);
            server.params.remove(&name);
        }
        for (name, value) in &self.values {
            if NOT_SETTABLE.contains(&name.as_str()) {
                continue;
            }
            if server.params.get(name) != Some(value) {
                server.params.insert(name.clone(), value.clone());
                if !server.router_set.contains_key(name) {
                    server.router_set.insert(name.clone(), value.clone());
                }
            }
        }
    }
}

/// One parameter to bring in line: `Some(value)` to set, `None` to RESET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStep {
    pub name: String,
    pub value: Option<String>,
}

impl SyncStep {
    /// The statement that does it.
    pub fn sql(&self) -> String {
        match &self.value {
            None => format!("RESET {}", quote_ident(&self.name)),
            Some(value) => {
                let mut sql = String::from("SELECT ");
                push_set_config(&mut sql, &self.name, value);
                sql
            }
        }
    }
}

fn push_set_config(sql: &mut String, name: &str, value: &str) {
    sql.push_str("pg_catalog.set_config(");
    sql.push_str(&quote_literal(name));
    sql.push_str(", ");
    sql.push_str(&quote_literal(value));
    sql.push_str(", false)");
}

/// Parameter names are case-insensitive; use the server's spelling when it
/// reports the parameter (so "timezone" from a client matches "TimeZone").
fn canonical_name(name: &str, defaults: &[(String, String)]) -> String {
    defaults
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| name.to_ascii_lowercase())
}

/// `-c name=value` and `--name=value` settings from the `options` startup
/// parameter; backslash escapes a space, as libpq documents.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n)
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("-c").map(|rest| rest.to_string())
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_").to_ascii_lowercase(), v.to_string()));
        }
    }
    out
}

/// A SQL string literal, safe whatever `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A SQL identifier in double quotes with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB -c x=a\\ b"),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "1MB".into()),
                ("x".into(), "a b".into())
            ]
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_ident("we\"ird name"), "\"we\"\"ird name\"");
    }

    #[test]
    fn a_refused_setting_goes_back_to_its_login_value_then_away() {
        let defaults = vec![("TimeZone".to_string(), "UTC".to_string())];
        let mut p = ClientParams::from_startup(
            &defaults,
            &[("options".into(), "-c default_text_search_config=a".into())],
        );
        p.apply(SetChange::Set {
            name: "default_text_search_config".into(),
            value: "b".into(),
        });
        let before = p.fingerprint();
        p.drop_failed("default_text_search_config");
        assert_eq!(p.get("default_text_search_config"), Some("a"));
        assert_ne!(p.fingerprint(), before);
        p.drop_failed("default_text_search_config");
        assert_eq!(p.get("default_text_search_config"), None);
        assert!(!p.has_initial("default_text_search_config"));
    }

    #[test]
    fn startup_overlays_defaults() {
        let defaults = vec![
            ("TimeZone".to_string(), "UTC".to_string()),
            ("application_name".into(), "".into()),
        ];
        let p = ClientParams::from_startup(
            &defaults,
            &[
                ("user".into(), "u".into()),
                ("timezone".into(), "Europe/Paris".into()),
                ("options".into(), "-c search_path=s".into()),
            ],
        );
        assert_eq!(p.values["TimeZone"], "Europe/Paris");
        assert_eq!(p.values["search_path"], "s");
        let p = ClientParams::from_startup(
            &defaults,
            &[("options".into(), "-c TimeZone=Asia/Tokyo".into())],
        );
        assert_eq!(p.values["TimeZone"], "Asia/Tokyo");
        assert!(!p.values.contains_key("timezone"));
        assert_eq!(p.values["application_name"], "");
        assert!(!p.values.contains_key("user"));
    }
}
