//! `diff`: what hot reload must act on.

mod common;

use common::*;
use pgrouter_config::*;

const ROUTER: &str = r#"
[general]
default_pool_size = 10

[[databases]]
name = "app"
host = "a"

[[databases]]
name = "app"
host = "b"
role = "replica"

[[databases]]
name = "shop"
host = "s"
"#;

const USERS: &str = r#"
[[users]]
name = "app"
database = "app"
password = "p"

[[users]]
name = "app"
database = "shop"
password = "p"
"#;

fn key(name: &str, db: &str) -> UserKey {
    UserKey {
        name: name.into(),
        database: db.into(),
    }
}

#[test]
fn identical_and_comment_only_edits_are_empty() {
    let old = ok(ROUTER, USERS);
    assert!(diff(&old, &old).is_empty());
    // Lines move, nothing else changes.
    let new = ok(
        &format!("# comment\n\n{ROUTER}"),
        &format!("# comment\n{USERS}"),
    );
    let d = diff(&old, &new);
    assert!(d.is_empty(), "{d:?}");
    assert!(!d.only_pool_settings());
}

#[test]
fn pool_settings_only() {
    let old = ok(ROUTER, USERS);
    let new = ok(
        &ROUTER.replace(
            "default_pool_size = 10",
            "default_pool_size = 20\ncheckout_timeout_ms = 100",
        ),
        &format!("{USERS}pool_size = 3\n"),
    );
    let d = diff(&old, &new);
    assert_eq!(d.general, vec!["default_pool_size", "checkout_timeout_ms"]);
    assert_eq!(
        d.users_changed,
        vec![UserChange {
            user: key("app", "shop"),
            pool_size_only: true
        }]
    );
    assert!(d.only_pool_settings());
    assert!(d.needs_restart().is_empty());
}

#[test]
fn databases_and_users_added_removed_changed() {
    let old = ok(ROUTER, USERS);
    let router = ROUTER
        .replace("host = \"s\"", "host = \"s2\"")
        .replace("name = \"app\"", "name = \"web\"");
    let users = USERS.replace("database = \"app\"", "database = \"web\"")
        .replace("password = \"p\"\n\n[[users]]\nname = \"app\"\ndatabase = \"shop\"\npassword = \"p\"",
                 "password = \"p\"\n\n[[users]]\nname = \"app\"\ndatabase = \"shop\"\npassword = \"q\"\nread_only = true");
    let new = ok(&router, &users);
    let d = diff(&old, &new);
    assert_eq!(d.databases_added, vec!["web"]);
    assert_eq!(d.databases_removed, vec!["app"]);
    assert_eq!(d.databases_changed, vec!["shop"]);
    assert_eq!(d.users_added, vec![key("app", "web")]);
    assert_eq!(d.users_removed, vec![key("app", "app")]);
    assert_eq!(
        d.users_changed,
        vec![UserChange {
            user: key("app", "shop"),
            pool_size_only: false
        }]
    );
    assert!(!d.only_pool_settings());
}

#[test]
fn reordering_servers_is_not_a_change_but_roles_are() {
    let old = ok(ROUTER, USERS);
    let swapped = r#"
[general]
default_pool_size = 10

[[databases]]
name = "shop"
host = "s"

[[databases]]
name = "app"
host = "b"
role = "replica"

[[databases]]
name = "app"
host = "a"
"#;
    let d = diff(&old, &ok(swapped, USERS));
    assert!(d.is_empty(), "{d:?}");
    let promoted = swapped.replace("role = \"replica\"", "role = \"auto\"");
    assert_eq!(
        diff(&old, &ok(&promoted, USERS)).databases_changed,
        vec!["app"]
    );
}

#[test]
fn restart_keys_jwt_and_sharding() {
    let old = ok(ROUTER, USERS);
    let router = format!(
        "{}\n[[sharded_tables]]\ndatabase = \"app\"\ncolumn = \"id\"\n",
        ROUTER.replace(
            "default_pool_size = 10",
            "default_pool_size = 10\nlisten = \"0.0.0.0:1\"\nworkers = 2\nlog_format = \"json\""
        )
    );
    let d = diff(&old, &ok(&router, USERS));
    assert_eq!(d.general, vec!["listen", "workers", "log_format"]);
    assert_eq!(d.needs_restart(), vec!["listen", "workers", "log_format"]);
    assert_eq!(
        pgrouter_config::restart_pending(&old.general, &ok(&router, USERS).general),
        vec!["listen", "workers", "log_format"]
    );
    assert_eq!(
        d.describe(),
        "changed: [general] listen, workers, log_format; sharding (tables or [general] sharding keys)"
    );
    assert!(d.sharded_tables_changed);
    assert!(!d.jwt_changed);
    assert!(!d.only_pool_settings());

    let router = format!("{ROUTER}\n[jwt]\njwks_url = \"https://x/jwks\"\ndatabases = [\"shop\"]\nconnect_as = \"app\"\n");
    let d = diff(&old, &ok(&router, USERS));
    assert!(d.jwt_changed && d.general.is_empty());
}

#[test]
fn moving_the_jwt_section_is_no_change() {
    let jwt = "[jwt]\njwks_url = \"https://x/jwks\"\nconnect_as = \"app\"\n";
    let old = ok(&format!("{ROUTER}\n{jwt}"), USERS);
    let moved = ok(&format!("# a comment\n\n{jwt}{ROUTER}"), USERS);
    assert_ne!(
        old.jwt.as_ref().unwrap().lines,
        moved.jwt.as_ref().unwrap().lines
    );
    assert!(!diff(&old, &moved).jwt_changed);
    let edited = ok(&format!("{ROUTER}\n{jwt}leeway_s = 5\n"), USERS);
    assert!(diff(&old, &edited).jwt_changed);
}
