//! The routing table: statement (+ session state) -> route.

use super::*;
use pgrouter_parser::analyze;

fn role_of(sql: &str, session: SessionRouting) -> Role {
    route(&analyze(sql, &["my_write_fn".to_string()]), &session).role
}

#[test]
fn reads_and_writes() {
    use Role::*;
    let s = SessionRouting::default();
    let table: &[(&str, Role)] = &[
        ("SELECT 1", Replica),
        ("select * from t where id = 5", Replica),
        ("SHOW search_path", Replica),
        ("INSERT INTO t VALUES (1)", Primary),
        ("UPDATE t SET a = 1", Primary),
        ("DELETE FROM t", Primary),
        ("CREATE TABLE x (a int)", Primary),
        ("SELECT * FROM t FOR UPDATE", Primary),
        ("SELECT * FROM t FOR SHARE", Primary),
        (
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            Primary,
        ),
        ("SELECT nextval('s')", Primary),
        ("SELECT pg_advisory_lock(1)", Primary),
        ("SELECT my_write_fn(1)", Primary),
        ("SELECT 1; INSERT INTO t VALUES (1)", Primary),
        ("COPY t FROM STDIN", Primary),
        ("COPY t TO STDOUT", Replica),
        ("SELEC 1", Primary),
        ("BEGIN", Primary),
        ("BEGIN READ ONLY", Replica),
        ("START TRANSACTION READ ONLY", Replica),
        ("BEGIN READ WRITE", Primary),
        ("BEGIN READ ONLY; INSERT INTO t VALUES (1); COMMIT", Primary),
        ("/* pgrouter: role=primary */ SELECT 1", Primary),
        ("SELECT 1 /* pgrouter: role=primary */", Primary),
        (
            "/* pgrouter: role=replica */ INSERT INTO t VALUES (1)",
            Replica,
        ),
        ("COMMIT PREPARED 'x'", Primary),
    ];
    for (sql, want) in table {
        assert_eq!(role_of(sql, s), *want, "{sql}");
    }
}

#[test]
fn session_settings_steer() {
    let ro = SessionRouting {
        default_read_only: true,
        ..Default::default()
    };
    assert_eq!(role_of("BEGIN", ro), Role::Replica);
    assert_eq!(role_of("BEGIN READ WRITE", ro), Role::Primary);
    let primary = SessionRouting {
        role_override: Some(RoleHint::Primary),
        ..Default::default()
    };
    assert_eq!(role_of("SELECT 1", primary), Role::Primary);
    assert_eq!(
        role_of("/* pgrouter: role=replica */ SELECT 1", primary),
        Role::Replica
    );
    let shard = SessionRouting {
        shard_override: Some(2),
        ..Default::default()
    };
    assert_eq!(route(&analyze("SELECT 1", &[]), &shard).shard, 2);
    assert_eq!(
        route(&analyze("/* pgrouter: shard=1 */ SELECT 1", &[]), &shard).shard,
        1
    );
    // The router's own settings can always be changed back (shard 0).
    for sql in [
        "RESET pgrouter.shard",
        "SET pgrouter.shard = 0",
        "SET pgrouter.role = 'primary'; RESET pgrouter.shard",
        "RESET ALL",
    ] {
        assert_eq!(route(&analyze(sql, &[]), &shard).shard, 0, "{sql}");
    }
    assert_eq!(
        route(&analyze("SET search_path = public", &[]), &shard).shard,
        2
    );
}

#[test]
fn session_routing_from_params() {
    let get = |k: &str| match k {
        "pgrouter.role" => Some("Primary".to_string()),
        "pgrouter.shard" => Some("3".to_string()),
        "default_transaction_read_only" => Some("on".to_string()),
        "default_transaction_isolation" => Some("Serializable".to_string()),
        _ => None,
    };
    let s = SessionRouting::from_params(get);
    assert_eq!(
        s,
        SessionRouting {
            role_override: Some(RoleHint::Primary),
            shard_override: Some(3),
            default_read_only: true,
            default_serializable: true,
            has_sharding_key: false,
            has_shard_setting: true,
            foreign_encoding: false,
        }
    );
}

#[test]
fn transaction_effects() {
    assert_eq!(transaction_effect(&analyze("BEGIN", &[])), Some(true));
    assert_eq!(transaction_effect(&analyze("COMMIT", &[])), Some(false));
    assert_eq!(
        transaction_effect(&analyze("BEGIN; SELECT 1; COMMIT", &[])),
        Some(false)
    );
    assert_eq!(transaction_effect(&analyze("SELECT 1", &[])), None);
}

/// What the router must not pipeline its own statements ahead of (SET ROLE
/// of a JWT session, DISCARD SEQUENCES at a change of client).
#[test]
fn statements_refused_in_a_pipeline() {
    let outside = |sql: &str| {
        let analysis = analyze(sql, &[]);
        let outside = runs_outside_transactions(&analysis, sql);
        assert!(!outside || may_run_outside_transactions(&analysis), "{sql}");
        outside
    };
    for sql in [
        "VACUUM t",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        "CREATE DATABASE d",
        "ALTER SYSTEM SET work_mem = '1MB'",
        "REINDEX SCHEMA public",
        "DISCARD ALL",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "CLUSTER",
        "cluster verbose;",
    ] {
        assert!(outside(sql), "{sql}");
    }
    for sql in [
        "SELECT 1",
        "BEGIN",
        "INSERT INTO t VALUES (1)",
        "CLUSTER t USING i",
        "DISCARD SEQUENCES",
        "PREPARE TRANSACTION 'x'",
        "CREATE INDEX i ON t (a)",
    ] {
        assert!(!outside(sql), "{sql}");
    }
}

#[test]
fn serializable_transactions_go_to_the_primary() {
    let plain = SessionRouting::default();
    let serializable = SessionRouting {
        default_serializable: true,
        ..SessionRouting::default()
    };
    let role = |sql: &str, s: &SessionRouting| route(&analyze(sql, &[]), s).role;
    assert_eq!(role("SELECT 1", &plain), Role::Replica);
    assert_eq!(role("SELECT 1", &serializable), Role::Primary);
    assert_eq!(role("BEGIN READ ONLY", &serializable), Role::Primary);
    assert_eq!(
        role(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            &serializable
        ),
        Role::Replica
    );
    assert_eq!(
        role("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", &plain),
        Role::Primary
    );
    assert_eq!(role("BEGIN READ ONLY", &plain), Role::Replica);
}
