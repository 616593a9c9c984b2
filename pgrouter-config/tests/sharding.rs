//! The sharding keys (SPEC §3): accepted with their defaults, every mistake
//! reported with file, line and key, and the reload rule on shard counts.

mod common;

use common::*;
use pgrouter_config::*;

const R: &str = "router.toml";

const TWO_SHARDS: &str = r#"
[[databases]]
name = "app"
host = "h"
shard = 0

[[databases]]
name = "app"
host = "h2"
shard = 1
"#;

#[test]
fn every_key_accepted() {
    let router = format!(
        r#"[general]
cross_shard = "refuse"
two_phase_commit = false
coordinator_database = "coord"
instance_id = "router-a.eu:6432"
{TWO_SHARDS}
[[sharded_tables]]
database = "app"
name = "orders"
schema = "shop"
column = "customer_id"
data_type = "smallint"

[[sharded_tables]]
database = "app"
name = "regions"
column = "region"
data_type = "varchar"
mapping = "list"
default_shard = 1

[[sharded_tables.rules]]
values = ["eu", "uk"]
shard = 0

[[sharded_tables]]
database = "app"
name = "events"
column = "id"
mapping = "range"

[[sharded_tables.rules]]
to = 1000
shard = 0

[[sharded_tables.rules]]
from = 1000
shard = 1

[[reference_tables]]
database = "app"
names = ["countries", "public.currencies"]
"#
    );
    let c = ok(&router, MIN_USERS);
    assert_eq!(c.sharding.cross_shard, CrossShard::Refuse);
    assert!(!c.sharding.two_phase_commit);
    assert_eq!(c.sharding.coordinator_database, "coord");
    assert_eq!(c.sharding.instance_id, "router-a.eu:6432");
    let t = &c.sharded_tables;
    assert_eq!(t[0].schema.as_deref(), Some("shop"));
    assert_eq!(t[0].data_type, ShardKeyType::Smallint);
    assert_eq!(t[0].mapping, ShardMapping::Hash);
    assert_eq!(t[1].data_type, ShardKeyType::Varchar);
    assert_eq!(t[1].mapping, ShardMapping::List);
    assert_eq!(t[1].default_shard, Some(1));
    assert_eq!(
        t[1].rules,
        vec![ShardRule {
            values: vec!["eu".into(), "uk".into()],
            from: None,
            to: None,
            shard: 0
        }]
    );
    assert_eq!(t[2].data_type, ShardKeyType::Bigint);
    assert_eq!(t[2].default_shard, None);
    assert_eq!(t[2].rules[0].to, Some(1000));
    assert_eq!(t[2].rules[1].from, Some(1000));
    assert_eq!(
        c.reference_tables[0].names,
        vec!["countries", "public.currencies"]
    );
}

#[test]
fn defaults() {
    let c = ok(MIN_ROUTER, MIN_USERS);
    assert_eq!(c.sharding, Sharding::default());
    assert_eq!(c.sharding.cross_shard, CrossShard::Allow);
    assert!(c.sharding.two_phase_commit);
    assert_eq!(c.sharding.coordinator_database, "");
    assert_eq!(c.sharding.instance_id, "");
    assert!(c.reference_tables.is_empty());
}

#[test]
fn mistakes_reported_at_their_lines() {
    let router = format!(
        r#"[general]
cross_shard = "maybe"
{TWO_SHARDS}
[[sharded_tables]]
database = "app"
name = "a"
column = "id"
rules = [{{ values = ["1"], shard = 0 }}]

[[sharded_tables]]
database = "app"
name = "b"
column = "id"
mapping = "list"
default_shard = 7

[[sharded_tables.rules]]
from = 1
shard = 2

[[sharded_tables]]
database = "app"
name = "c"
column = "id"
data_type = "integer"
mapping = "list"

[[sharded_tables.rules]]
values = ["x", 3000000000]
shard = 0

[[sharded_tables]]
database = "app"
name = "d"
column = "k"
data_type = "text"
mapping = "range"
default_shard = 0

[[reference_tables]]
database = "shop"
names = ["d"]

[[reference_tables]]
database = "app"
names = ["a"]
"#
    );
    let ps = problems(&router, MIN_USERS);
    has(
        &ps,
        R,
        2,
        "general.cross_shard",
        "\"maybe\" is not one of \"allow\", \"refuse\"",
    );
    has(
        &ps,
        R,
        18,
        "sharded_tables.rules",
        "rules are only for mapping = \"list\" or \"range\"",
    );
    has(
        &ps,
        R,
        25,
        "sharded_tables.default_shard",
        "shard 7 does not exist: \"app\" has shards 0..1",
    );
    has(
        &ps,
        R,
        28,
        "sharded_tables.rules.from",
        "a list rule has \"values\"",
    );
    has(
        &ps,
        R,
        27,
        "sharded_tables.rules.values",
        "missing required key \"values\"",
    );
    has(
        &ps,
        R,
        39,
        "sharded_tables.rules.values",
        "element 1: invalid input syntax for type integer: \"x\"",
    );
    has(
        &ps,
        R,
        39,
        "sharded_tables.rules.values",
        "element 2: value \"3000000000\" is out of range for type integer",
    );
    has(
        &ps,
        R,
        47,
        "sharded_tables.mapping",
        "\"range\" needs an integer data_type",
    );
    has(
        &ps,
        R,
        51,
        "reference_tables.database",
        "unknown logical database \"shop\"",
    );
    has(
        &ps,
        R,
        55,
        "reference_tables.names",
        "\"a\" is also in [[sharded_tables]]",
    );
}

#[test]
fn range_rules_need_bounds_in_order() {
    let router = format!(
        r#"{TWO_SHARDS}
[[sharded_tables]]
database = "app"
name = "t"
column = "id"
data_type = "smallint"
mapping = "range"

[[sharded_tables.rules]]
from = 10
to = 5
shard = 0

[[sharded_tables.rules]]
shard = 1

[[sharded_tables.rules]]
from = 70000
values = [1]
"#
    );
    let ps = problems(&router, MIN_USERS);
    has(
        &ps,
        R,
        21,
        "sharded_tables.rules.to",
        "\"to\" (5) must be greater than \"from\" (10)",
    );
    has(
        &ps,
        R,
        24,
        "sharded_tables.rules.from",
        "a range rule needs \"from\", \"to\" or both",
    );
    has(
        &ps,
        R,
        27,
        "sharded_tables.rules.shard",
        "missing required key \"shard\"",
    );
    has(
        &ps,
        R,
        28,
        "sharded_tables.rules.from",
        "70000 is out of range for type smallint",
    );
    has(
        &ps,
        R,
        29,
        "sharded_tables.rules.values",
        "\"values\" is for mapping = \"list\"",
    );
}

#[test]
fn reload_cannot_change_the_shard_count_of_a_sharded_database() {
    let sharded = "\n[[sharded_tables]]\ndatabase = \"app\"\nname = \"t\"\ncolumn = \"id\"\n";
    let old = ok(&format!("{TWO_SHARDS}{sharded}"), MIN_USERS);
    let three =
        format!("{TWO_SHARDS}\n[[databases]]\nname = \"app\"\nhost = \"h3\"\nshard = 2\n{sharded}");
    let new = ok(&three, MIN_USERS);
    let ps = shard_count_changes(&old, &new);
    assert_eq!(ps.len(), 1, "{}", render(&ps));
    has(&ps, R, 12, "databases.shard", "cannot change from 2 to 3");
    assert!(shard_count_changes(&old, &old).is_empty());
    // Without sharded tables the shard count is free to change.
    let plain_old = ok(TWO_SHARDS, MIN_USERS);
    let plain_new = ok(&three.replace(sharded, ""), MIN_USERS);
    assert!(shard_count_changes(&plain_old, &plain_new).is_empty());
}

#[test]
fn instance_id_mistakes_reported() {
    let router = format!("[general]\ninstance_id = \"a b\"\n{TWO_SHARDS}");
    let ps = problems(&router, MIN_USERS);
    has(&ps, R, 2, "general.instance_id", "contains ' '");
    let long = "x".repeat(64);
    let router = format!("[general]\ninstance_id = \"{long}\"\n{TWO_SHARDS}");
    let ps = problems(&router, MIN_USERS);
    has(
        &ps,
        R,
        2,
        "general.instance_id",
        "longer than 63 characters",
    );
    let router = format!("[general]\ninstance_id = 7\n{TWO_SHARDS}");
    let ps = problems(&router, MIN_USERS);
    has(&ps, R, 2, "general.instance_id", "expected a string");
}
