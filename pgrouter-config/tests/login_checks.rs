//! `[auth_query]` and `[jit]`: defaults, accepted values and every problem
//! reported with its line and key.

mod common;

use common::*;
use pgrouter_config::{AuthQuery, Jit, DEFAULT_AUTH_QUERY};

const LOOKUP_USER: &str = r#"
[[users]]
name = "pgrouter_auth"
database = "app"
password = "lookup"
"#;

fn users_with_lookup() -> String {
    format!("{MIN_USERS}{LOOKUP_USER}")
}

#[test]
fn absent_sections_are_none() {
    let c = ok(MIN_ROUTER, MIN_USERS);
    assert!(c.auth_query.is_none());
    assert!(c.jit.is_none());
}

#[test]
fn empty_sections_take_the_defaults() {
    let router =
        format!("{MIN_ROUTER}[auth_query]\n[jit]\napi_url = \"http://127.0.0.1:9/check\"\n");
    let c = ok(&router, &users_with_lookup());
    assert_eq!(c.auth_query, Some(AuthQuery::default()));
    let aq = c.auth_query.unwrap();
    assert_eq!(aq.user, "pgrouter_auth");
    assert_eq!(aq.query, DEFAULT_AUTH_QUERY);
    assert_eq!(aq.cache_ttl_s, 60);
    let jit = c.jit.unwrap();
    assert_eq!(
        jit,
        Jit {
            api_url: "http://127.0.0.1:9/check".into(),
            ..Jit::default()
        }
    );
    assert_eq!(jit.timeout_ms, 2000);
    assert_eq!(jit.token_prefixes, vec!["sbp_".to_string()]);
    assert!(jit.applies_to("anything"));
    assert!(jit.has_token_prefix("sbp_abc"));
    assert!(!jit.has_token_prefix("secret"));
}

#[test]
fn every_key_is_read() {
    let router = format!(
        r#"{MIN_ROUTER}
[auth_query]
user = "app"
query = "SELECT * FROM pgrouter.lookup($1)"
cache_ttl_s = 0

[jit]
api_url = "https://auth.internal/jit/check"
timeout_ms = 150
token_prefixes = ["sbp_", "pat_"]
api_ca = "ca.pem"
databases = ["app"]
"#
    );
    let c = ok(&router, MIN_USERS);
    let aq = c.auth_query.unwrap();
    assert_eq!(aq.user, "app");
    assert_eq!(aq.query, "SELECT * FROM pgrouter.lookup($1)");
    assert_eq!(aq.cache_ttl_s, 0);
    let jit = c.jit.unwrap();
    assert_eq!(jit.timeout_ms, 150);
    assert_eq!(jit.token_prefixes, vec!["sbp_", "pat_"]);
    assert_eq!(jit.api_ca, "ca.pem");
    assert!(jit.applies_to("app"));
    assert!(!jit.applies_to("other"));
    assert!(jit.has_token_prefix("pat_1"));
}

#[test]
fn unknown_keys_are_refused_with_suggestions() {
    let router = format!(
        "{MIN_ROUTER}[auth_query]\ncache_ttl = 5\n[jit]\napi_url = \"http://h/x\"\ntimeout = 5\n"
    );
    let ps = problems(&router, &users_with_lookup());
    assert_eq!(ps.len(), 2, "{}", render(&ps));
    has(&ps, "router.toml", 6, "auth_query.cache_ttl", "cache_ttl_s");
    has(&ps, "router.toml", 9, "jit.timeout", "timeout_ms");
}

#[test]
fn bad_values_name_line_and_key() {
    let router = format!(
        r#"{MIN_ROUTER}
[auth_query]
user = ""
query = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = 'x'"
cache_ttl_s = -1

[jit]
api_url = "ftp://auth"
timeout_ms = 0
token_prefixes = ["sbp_", ""]
databases = ["nope"]
"#
    );
    let ps = problems(&router, &users_with_lookup());
    has(
        &ps,
        "router.toml",
        7,
        "auth_query.user",
        "must not be empty",
    );
    has(&ps, "router.toml", 8, "auth_query.query", "$1");
    has(&ps, "router.toml", 9, "auth_query.cache_ttl_s", "negative");
    has(
        &ps,
        "router.toml",
        12,
        "jit.api_url",
        "not an http:// or https:// URL",
    );
    has(&ps, "router.toml", 13, "jit.timeout_ms", "at least 1");
    has(&ps, "router.toml", 14, "jit.token_prefixes", "element 2");
    has(
        &ps,
        "router.toml",
        15,
        "jit.databases",
        "unknown logical database \"nope\"",
    );
    assert_eq!(ps.len(), 7, "{}", render(&ps));
}

#[test]
fn jit_needs_an_api_url() {
    let router = format!("{MIN_ROUTER}\n[jit]\ntimeout_ms = 100\n");
    let ps = problems(&router, MIN_USERS);
    one(&ps, "router.toml", 6, "jit.api_url", "missing required key");
    let router = format!("{MIN_ROUTER}\n[jit]\napi_url = \"https:///check\"\n");
    let ps = problems(&router, MIN_USERS);
    one(&ps, "router.toml", 7, "jit.api_url", "no host");
}

#[test]
fn api_ca_with_http_is_a_mistake() {
    let router = format!("{MIN_ROUTER}\n[jit]\napi_url = \"http://h/c\"\napi_ca = \"ca.pem\"\n");
    let ps = problems(&router, MIN_USERS);
    one(&ps, "router.toml", 8, "jit.api_ca", "https");
}

#[test]
fn auth_query_user_must_be_in_users_toml() {
    let router = format!("{MIN_ROUTER}\n[auth_query]\nuser = \"lookup\"\n");
    let ps = problems(&router, MIN_USERS);
    one(
        &ps,
        "router.toml",
        7,
        "auth_query.user",
        "no [[users]] entry named \"lookup\"",
    );
}

#[test]
fn changing_either_section_is_a_change() {
    let base = ok(MIN_ROUTER, &users_with_lookup());
    let with = ok(&format!("{MIN_ROUTER}[auth_query]\n"), &users_with_lookup());
    let d = pgrouter_config::diff(&base, &with);
    assert!(d.login_checks_changed);
    assert!(!d.is_empty());
    assert!(!d.only_pool_settings());
    let jit = ok(
        &format!("{MIN_ROUTER}[jit]\napi_url = \"http://h/c\"\n"),
        &users_with_lookup(),
    );
    assert!(pgrouter_config::diff(&base, &jit).login_checks_changed);
    assert!(pgrouter_config::diff(&jit, &jit).is_empty());
}
