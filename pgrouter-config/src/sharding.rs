//! The sharding keys of `router.toml` (SPEC §3, §5 "Sharding"): each
//! `[[sharded_tables]]` entry with its `rules`, `[[reference_tables]]`, and
//! the `[general]` keys `cross_shard`, `two_phase_commit`,
//! `coordinator_database` and `instance_id`.
//!
//! Kept in a file of its own so the rest of the reader stays about pools and
//! logins. Checks that need the databases (a rule's shard must exist) are in
//! [`check`], run with the other cross-entry checks.

use crate::model::*;
use crate::reader::{entries, Section, Source};
use crate::router::required;

/// The `[[sharded_tables]]` keys.
pub(crate) const SHARDED_TABLES: &[&str] = &[
    "database",
    "name",
    "schema",
    "column",
    "data_type",
    "mapping",
    "default_shard",
    "rules",
];

/// The keys of one `[[sharded_tables.rules]]` entry.
const RULES: &[&str] = &["values", "from", "to", "shard"];

/// The `[[reference_tables]]` keys.
pub(crate) const REFERENCE_TABLES: &[&str] = &["database", "names"];

/// Lines of one sharded table's keys, for checks made once the databases are known.
#[derive(Default, Clone)]
pub(crate) struct ShardedLines {
    pub entry: usize,
    pub database: usize,
    pub default_shard: usize,
    /// One per rule: the line of its `shard`.
    pub rule_shards: Vec<usize>,
}

/// Reads the `[general]` sharding keys (their names are in `keys::GENERAL`).
pub(crate) fn general(src: &mut Source, sec: &Section) -> Sharding {
    let mut s = Sharding::default();
    if let Some(v) = sec.choice(src, "cross_shard", CrossShard::NAMES, CrossShard::from_name) {
        s.cross_shard = v;
    }
    if let Some(v) = sec.boolean(src, "two_phase_commit") {
        s.two_phase_commit = v;
    }
    if let Some(v) = sec.string(src, "coordinator_database") {
        s.coordinator_database = v;
    }
    if let Some(v) = sec.string(src, "instance_id") {
        match check_instance_id(&v) {
            Ok(()) => s.instance_id = v,
            Err(m) => sec.report(src, "instance_id", m),
        }
    }
    s
}

/// `instance_id` goes into `PREPARE TRANSACTION` ids: short, and only
/// characters that need no quoting and survive logs unchanged.
fn check_instance_id(v: &str) -> Result<(), String> {
    if v.chars().count() > INSTANCE_ID_MAX {
        return Err(format!(
            "\"{v}\" is longer than {INSTANCE_ID_MAX} characters"
        ));
    }
    if let Some(bad) = v.chars().find(|c| !instance_id_char(*c)) {
        return Err(format!(
            "\"{v}\" contains {bad:?}; use letters, digits, '.', '_', ':' and '-' (or \"\" for host name and listen port)"
        ));
    }
    Ok(())
}

/// One `[[sharded_tables]]` entry; `None` when `database` is unusable.
pub(crate) fn sharded_table(
    src: &mut Source,
    sec: &Section,
) -> Option<(ShardedTable, ShardedLines)> {
    sec.check_unknown(src, SHARDED_TABLES, "[[sharded_tables]]");
    let database = required(src, sec, "database");
    let name = sec.non_empty_string(src, "name");
    let schema = sec.string(src, "schema").filter(|s| !s.is_empty());
    let column = required(src, sec, "column");
    let data_type = sec
        .choice(
            src,
            "data_type",
            ShardKeyType::NAMES,
            ShardKeyType::from_name,
        )
        .unwrap_or(ShardKeyType::Bigint);
    let mapping = sec
        .choice(src, "mapping", ShardMapping::NAMES, ShardMapping::from_name)
        .unwrap_or(ShardMapping::Hash);
    let default_shard = match sec.integer(src, "default_shard", -1, i64::from(u32::MAX)) {
        Some(-1) | None => None,
        Some(n) => u32::try_from(n).ok(),
    };
    let mut lines = ShardedLines {
        entry: sec.line,
        database: sec.line_of(src, "database"),
        default_shard: sec.line_of(src, "default_shard"),
        rule_shards: Vec::new(),
    };
    if default_shard.is_some() && mapping == ShardMapping::Hash {
        sec.report(
            src,
            "default_shard",
            "only list and range mappings have a default shard (hash places every value)",
        );
    }
    if mapping == ShardMapping::Range && !data_type.is_integer() {
        sec.report(
            src,
            "mapping",
            format!("\"range\" needs an integer data_type (smallint, integer, bigint), not \"{data_type}\""),
        );
    }
    let mut rules = Vec::new();
    if let Some(item) = sec.table.get("rules") {
        if mapping == ShardMapping::Hash {
            sec.report(
                src,
                "rules",
                "rules are only for mapping = \"list\" or \"range\"",
            );
        } else {
            for rule_sec in entries(src, item, sec.line_of(src, "rules"), "sharded_tables.rules") {
                if let Some(r) = rule(src, &rule_sec, mapping, data_type) {
                    lines.rule_shards.push(rule_sec.line_of(src, "shard"));
                    rules.push(r);
                }
            }
        }
    } else if mapping != ShardMapping::Hash && default_shard.is_none() {
        sec.report(
            src,
            "mapping",
            format!("mapping = \"{mapping}\" needs [[sharded_tables.rules]] or a default_shard"),
        );
    }
    let table = ShardedTable {
        database: database?,
        name,
        schema,
        column: column.unwrap_or_default(),
        data_type,
        mapping,
        default_shard,
        rules,
    };
    Some((table, lines))
}

/// One `[[sharded_tables.rules]]` entry.
fn rule(
    src: &mut Source,
    sec: &Section,
    mapping: ShardMapping,
    data_type: ShardKeyType,
) -> Option<ShardRule> {
    sec.check_unknown(src, RULES, "[[sharded_tables.rules]]");
    let shard = match sec.table.get("shard") {
        None => {
            src.report(
                sec.line,
                sec.path("shard"),
                "missing required key \"shard\"",
            );
            None
        }
        Some(_) => sec.u32(src, "shard", 0),
    };
    let mut values = Vec::new();
    let (mut from, mut to) = (None, None);
    match mapping {
        ShardMapping::List => {
            for key in ["from", "to"] {
                if sec.table.get(key).is_some() {
                    sec.report(
                        src,
                        key,
                        "\"from\"/\"to\" are for mapping = \"range\"; a list rule has \"values\"",
                    );
                }
            }
            values = list_values(src, sec, data_type)?;
        }
        ShardMapping::Range => {
            if sec.table.get("values").is_some() {
                sec.report(
                    src,
                    "values",
                    "\"values\" is for mapping = \"list\"; a range rule has \"from\" and/or \"to\"",
                );
            }
            from = sec.integer(src, "from", i64::MIN, i64::MAX);
            to = sec.integer(src, "to", i64::MIN, i64::MAX);
            if sec.table.get("from").is_none() && sec.table.get("to").is_none() {
                src.report(
                    sec.line,
                    sec.path("from"),
                    "a range rule needs \"from\", \"to\" or both",
                );
            }
            if let (Some(f), Some(t)) = (from, to) {
                if f >= t {
                    sec.report(src, "to", format!("\"to\" ({t}) must be greater than \"from\" ({f}); from is inclusive, to exclusive"));
                }
            }
            for (key, v) in [("from", from), ("to", to)] {
                if let Some(v) = v {
                    if !data_type.fits(v) {
                        sec.report(
                            src,
                            key,
                            format!("{v} is out of range for type {data_type}"),
                        );
                    }
                }
            }
        }
        ShardMapping::Hash => {}
    }
    Some(ShardRule {
        values,
        from,
        to,
        shard: shard?,
    })
}

/// The `values` of a list rule as text, each checked against the data type.
fn list_values(src: &mut Source, sec: &Section, data_type: ShardKeyType) -> Option<Vec<String>> {
    let Some(item) = sec.table.get("values") else {
        src.report(
            sec.line,
            sec.path("values"),
            "missing required key \"values\" (a list rule names its values)",
        );
        return None;
    };
    let line = sec.line_of(src, "values");
    let Some(array) = item.as_array() else {
        sec.report(
            src,
            "values",
            "expected an array of values, e.g. [\"eu\", \"uk\"] or [1, 2]",
        );
        return None;
    };
    if array.is_empty() {
        sec.report(src, "values", "must list at least one value");
        return None;
    }
    let mut out = Vec::new();
    for (i, v) in array.iter().enumerate() {
        let text = match (v.as_str(), v.as_integer()) {
            (Some(s), _) => s.to_string(),
            (None, Some(n)) => n.to_string(),
            _ => {
                src.report(
                    line,
                    sec.path("values"),
                    format!("element {} should be a string or an integer", i + 1),
                );
                continue;
            }
        };
        if let Err(why) = data_type.check_text(&text) {
            src.report(
                line,
                sec.path("values"),
                format!("element {}: {why}", i + 1),
            );
            continue;
        }
        out.push(text);
    }
    Some(out)
}

/// One `[[reference_tables]]` entry; `None` when `database` is unusable.
pub(crate) fn reference_tables(
    src: &mut Source,
    sec: &Section,
) -> Option<(ReferenceTables, usize)> {
    sec.check_unknown(src, REFERENCE_TABLES, "[[reference_tables]]");
    let database = required(src, sec, "database");
    let names = match sec.table.get("names") {
        None => {
            src.report(
                sec.line,
                sec.path("names"),
                "missing required key \"names\"",
            );
            None
        }
        Some(_) => sec.strings(src, "names"),
    };
    Some((
        ReferenceTables {
            database: database?,
            names: names.unwrap_or_default(),
        },
        sec.line_of(src, "database"),
    ))
}

/// Checks that need the databases: the shards named exist, reference tables
/// are not also sharded.
pub(crate) fn check(
    src: &mut Source,
    databases: &[ServerEntry],
    tables: &[(ShardedTable, ShardedLines)],
    references: &[(ReferenceTables, usize)],
) {
    let shard_count = |db: &str| {
        databases
            .iter()
            .filter(|e| e.name == db)
            .map(|e| e.shard.saturating_add(1))
            .max()
            .unwrap_or(0)
    };
    for (t, at) in tables {
        let n = shard_count(&t.database);
        if n == 0 {
            continue; // unknown database: reported elsewhere
        }
        let bad = |shard: u32| {
            format!(
                "shard {shard} does not exist: \"{}\" has shards 0..{}",
                t.database,
                n - 1
            )
        };
        if let Some(d) = t.default_shard.filter(|&d| d >= n) {
            src.report(at.default_shard, "sharded_tables.default_shard", bad(d));
        }
        for (r, line) in t.rules.iter().zip(&at.rule_shards) {
            if r.shard >= n {
                src.report(*line, "sharded_tables.rules.shard", bad(r.shard));
            }
        }
    }
    for (r, line) in references {
        for name in &r.names {
            let sharded = tables
                .iter()
                .any(|(t, _)| t.database == r.database && t.name.as_deref() == Some(name));
            if sharded {
                src.report(
                    *line,
                    "reference_tables.names",
                    format!("\"{name}\" is also in [[sharded_tables]] of \"{}\"; a table is either sharded or copied whole", r.database),
                );
            }
        }
        if let Some(dup) = references
            .iter()
            .take_while(|(o, _)| !std::ptr::eq(o, r))
            .find(|(o, _)| o.database == r.database && o.names.iter().any(|n| r.names.contains(n)))
        {
            src.report(
                *line,
                "reference_tables.names",
                format!("a name is already listed on line {}", dup.1),
            );
        }
    }
}

/// A reload must not change the number of shards of a database that has
/// sharded tables: every row would then belong elsewhere, and resharding
/// does not exist. One problem per such database, at the new config's line
/// of its last shard's entry, key `databases.shard`.
pub fn shard_count_changes(old: &Config, new: &Config) -> Vec<crate::Problem> {
    let mut out = Vec::new();
    for db in new.logical_databases() {
        let sharded = |c: &Config| c.sharded_tables.iter().any(|t| t.database == db);
        if !sharded(old) && !sharded(new) {
            continue;
        }
        let (before, after) = (old.shard_count(db), new.shard_count(db));
        if before == 0 || before == after {
            continue;
        }
        let line = new
            .servers_of(db)
            .into_iter()
            .max_by_key(|e| (e.shard, e.line))
            .map_or(0, |e| e.line);
        out.push(crate::Problem {
            file: new.router_path.clone(),
            line,
            key: "databases.shard".into(),
            message: format!(
                "\"{db}\" has sharded tables: its number of shards cannot change from {before} to {after} \
                 on reload (rows would belong on other shards; resharding is not supported)"
            ),
        });
    }
    out
}
