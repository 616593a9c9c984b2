//! Checks that relate several entries or both files: shard topology of each
//! logical database, duplicates, names that must exist in the other file.
//! They run only on files that parsed, and report every finding.

use std::collections::BTreeMap;

use crate::model::*;
use crate::reader::Source;
use crate::router::RouterFile;
use crate::suggest;
use crate::users::UsersFile;

/// Checks within router.toml.
pub(crate) fn router(src: &mut Source, r: &RouterFile) {
    if r.databases.is_empty() {
        src.report(
            r.at.databases,
            "databases",
            "no [[databases]] entries: at least one server is needed",
        );
    }
    let names = logical_names(&r.databases);
    for name in &names {
        topology(src, name, &r.databases);
    }
    duplicate_servers(src, &r.databases);
    for entry in &r.databases {
        if entry.name == r.general.admin_database {
            let msg = format!(
                "\"{}\" is also [general] admin_database (the admin console); rename one of them",
                entry.name
            );
            src.report(entry.line, "databases.name", msg);
        }
    }
    for (i, t) in r.sharded_tables.iter().enumerate() {
        let (entry_line, db_line) = r.at.sharded_tables.get(i).copied().unwrap_or_default();
        if !names.contains(&t.database.as_str()) {
            src.report(
                db_line,
                "sharded_tables.database",
                unknown_database(&t.database, &names),
            );
        }
        let same = r.sharded_tables[..i].iter().position(|o| {
            o.database == t.database
                && o.name == t.name
                && o.schema == t.schema
                && (t.name.is_some() || o.column == t.column)
        });
        if let Some(j) = same {
            let first = r.at.sharded_tables.get(j).map_or(0, |l| l.0);
            let what = t
                .name
                .as_deref()
                .map_or(format!("column \"{}\"", t.column), |n| {
                    format!("table \"{n}\"")
                });
            let msg = format!(
                "{what} of \"{}\" is already sharded on line {first}",
                t.database
            );
            src.report(entry_line, "sharded_tables.name", msg);
        }
    }
    for (i, refs) in r.reference_tables.iter().enumerate() {
        if !names.contains(&refs.database.as_str()) {
            let line = r.at.reference_tables.get(i).copied().unwrap_or_default();
            src.report(
                line,
                "reference_tables.database",
                unknown_database(&refs.database, &names),
            );
        }
    }
    let tables: Vec<_> = r
        .sharded_tables
        .iter()
        .cloned()
        .zip(r.at.sharded.iter().cloned())
        .collect();
    let refs: Vec<_> = r
        .reference_tables
        .iter()
        .cloned()
        .zip(r.at.reference_tables.iter().copied())
        .collect();
    crate::sharding::check(src, &r.databases, &tables, &refs);
    if let Some(jwt) = &r.jwt {
        for db in &jwt.databases {
            if !names.contains(&db.as_str()) {
                src.report(
                    r.at.jwt_databases,
                    "jwt.databases",
                    unknown_database(db, &names),
                );
            }
        }
    }
}

/// Per shard: at least one server that can be primary ("primary" or "auto"),
/// at most one declared "primary"; shards numbered 0..n-1 without gaps.
fn topology(src: &mut Source, name: &str, all: &[ServerEntry]) {
    let mut shards: BTreeMap<u32, Vec<&ServerEntry>> = BTreeMap::new();
    for e in all.iter().filter(|e| e.name == name) {
        shards.entry(e.shard).or_default().push(e);
    }
    for (shard, servers) in &shards {
        let primaries: Vec<&&ServerEntry> = servers
            .iter()
            .filter(|e| e.role == ServerRole::Primary)
            .collect();
        let autos = servers
            .iter()
            .filter(|e| e.role == ServerRole::Auto)
            .count();
        if primaries.is_empty() && autos == 0 {
            let lines = servers
                .iter()
                .map(|e| e.line.to_string())
                .collect::<Vec<_>>();
            let msg = format!(
                "\"{name}\" shard {shard} has no primary: set role = \"primary\" (or \"auto\") \
                 on one of its servers (line {})",
                lines.join(", ")
            );
            src.report(servers[0].line, "databases.role", msg);
        }
        for extra in primaries.iter().skip(1) {
            let msg = format!(
                "second primary for \"{name}\" shard {shard} (the first is on line {}); \
                 a shard has one primary, the others are \"replica\"",
                primaries[0].line
            );
            src.report(extra.line, "databases.role", msg);
        }
    }
    let missing: Vec<u32> = match shards.keys().next_back() {
        Some(&last) => (0..last)
            .filter(|s| !shards.contains_key(s))
            .take(11)
            .collect(),
        None => Vec::new(),
    };
    if let Some(&first_missing) = missing.first() {
        let next = shards
            .range(first_missing..)
            .next()
            .map_or(0, |(_, s)| s[0].line);
        let mut list = missing
            .iter()
            .take(10)
            .map(u32::to_string)
            .collect::<Vec<_>>();
        if missing.len() > 10 {
            list.push("...".into());
        }
        let msg = format!(
            "\"{name}\" has no server for shard{} {}: shards are numbered 0, 1, 2, ... without gaps",
            if missing.len() > 1 { "s" } else { "" },
            list.join(", ")
        );
        src.report(next, "databases.shard", msg);
    }
}

fn duplicate_servers(src: &mut Source, all: &[ServerEntry]) {
    for (i, e) in all.iter().enumerate() {
        let first = all[..i].iter().find(|o| {
            o.name == e.name
                && o.shard == e.shard
                && o.host == e.host
                && o.port == e.port
                && o.database_name == e.database_name
        });
        if let Some(first) = first {
            let msg = format!(
                "same server as line {} (name, host, port, database_name and shard)",
                first.line
            );
            src.report(e.line, "databases.host", msg);
        }
    }
}

/// Checks within users.toml.
pub(crate) fn users(src: &mut Source, u: &UsersFile) {
    for (i, user) in u.users.iter().enumerate() {
        let first = u.users[..i]
            .iter()
            .find(|o| o.name == user.name && o.database == user.database);
        if let Some(first) = first {
            let msg = format!(
                "duplicate user \"{}\" for database \"{}\"; first defined on line {}",
                user.name, user.database, first.line
            );
            src.report(user.line, "users.name", msg);
        }
    }
}

/// Checks that need both files. Each problem goes to the file where the fix is.
pub(crate) fn cross(rsrc: &mut Source, usrc: &mut Source, r: &RouterFile, u: &UsersFile) {
    let names = logical_names(&r.databases);
    for (user, at) in u.users.iter().zip(&u.at) {
        if !names.contains(&user.database.as_str()) && !r.databases.is_empty() {
            usrc.report(
                at.database,
                "users.database",
                unknown_database(&user.database, &names),
            );
        }
        if matches!(user.auth, AuthMethod::Jwt | AuthMethod::PasswordOrJwt) {
            match &r.jwt {
                None => {
                    let msg = format!(
                        "auth = \"{}\" needs a [jwt] section in router.toml",
                        user.auth
                    );
                    usrc.report(at.auth, "users.auth", msg);
                }
                Some(jwt) if !jwt.applies_to(&user.database) => {
                    let msg = format!(
                        "auth = \"{}\" but [jwt] databases does not include \"{}\"",
                        user.auth, user.database
                    );
                    usrc.report(at.auth, "users.auth", msg);
                }
                Some(_) => {}
            }
        }
        if let Some(size) = user.pool_size {
            if size < r.general.min_pool_size {
                let msg = format!(
                    "pool_size ({size}) is smaller than [general] min_pool_size ({})",
                    r.general.min_pool_size
                );
                usrc.report(at.pool_size, "users.pool_size", msg);
            }
        }
    }
    if let Some(jwt) = &r.jwt {
        for db in names.iter().filter(|db| jwt.applies_to(db)) {
            if !u
                .users
                .iter()
                .any(|x| x.name == jwt.connect_as && x.database == *db)
            {
                let msg = format!(
                    "users.toml has no [[users]] entry named \"{}\" for database \"{db}\" \
                     (JWT sessions on \"{db}\" use its server connections)",
                    jwt.connect_as
                );
                rsrc.report(r.at.jwt_connect_as, "jwt.connect_as", msg);
            }
        }
    }
}

fn logical_names(all: &[ServerEntry]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for e in all {
        if !names.contains(&e.name.as_str()) {
            names.push(&e.name);
        }
    }
    names
}

fn unknown_database(db: &str, names: &[&str]) -> String {
    let mut msg = format!("unknown logical database \"{db}\"");
    if let Some(best) = suggest::closest(db, names) {
        msg.push_str(&format!("; did you mean \"{best}\"?"));
    } else if names.is_empty() {
        msg.push_str("; router.toml has no [[databases]]");
    } else {
        let list = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>();
        msg.push_str(&format!("; router.toml defines {}", list.join(", ")));
    }
    msg
}
