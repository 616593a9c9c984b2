//! Every validation rule: the right file, line, key and message, and all
//! problems reported together.

mod common;

use common::*;

const R: &str = "router.toml";
const U: &str = "users.toml";

#[test]
fn syntax_error_has_line_and_other_file_still_checked() {
    let router = "[general]\nlisten = \"x:1\"\npool_mode = \n";
    let users = "[[users]]\nname = \"a\"\n";
    let ps = problems(router, users);
    assert_eq!(ps.len(), 3, "{}", render(&ps));
    assert_eq!(
        (ps[0].file.to_str(), ps[0].line, ps[0].key.as_str()),
        (Some(R), 3, "")
    );
    assert!(
        ps[0].message.starts_with("TOML syntax error at column"),
        "{}",
        ps[0]
    );
    assert!(
        ps[0]
            .to_string()
            .starts_with("router.toml:3: TOML syntax error"),
        "{}",
        ps[0]
    );
    // users.toml is still checked on its own; cross-file checks are skipped.
    has(
        &ps,
        U,
        1,
        "users.database",
        "missing required key \"database\"",
    );
    has(&ps, U, 1, "users.password", "no password");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let ps = problems("[general]\nworkers = 1\nworkers = 2\n", MIN_USERS);
    one(&ps, R, 3, "", "duplicate key");
}

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let router = r#"
genral = 1
[general]
pool_sise = 3
pool_size = 4
[jwt]
public_key_file = "k.pem"
conect_as = "x"
[[databases]]
name = "app"
host = "h"
hots = "h"
[[sharded_tables]]
database = "app"
column = "c"
colum = "c"
"#;
    let users = r#"
[[users]]
name = "app"
database = "app"
password = "p"
pool_sise = 5
[[authenticator]]
"#;
    let ps = problems(
        router,
        &format!(
            "{users}\n[[users]]\nname = \"authenticator\"\ndatabase = \"app\"\nlogin = false\n"
        ),
    );
    has(&ps, R, 2, "genral", "did you mean \"general\"?");
    has(&ps, R, 4, "general.pool_sise", "unknown key \"pool_sise\"");
    has(
        &ps,
        R,
        5,
        "general.pool_size",
        "\"pool_size\" belongs in [[users]] in users.toml",
    );
    has(&ps, R, 8, "jwt.conect_as", "did you mean \"connect_as\"?");
    has(&ps, R, 12, "databases.hots", "did you mean \"host\"?");
    has(
        &ps,
        R,
        16,
        "sharded_tables.colum",
        "did you mean \"column\"?",
    );
    has(
        &ps,
        U,
        6,
        "users.pool_sise",
        "unknown key \"pool_sise\"; did you mean \"pool_size\"?",
    );
    has(&ps, U, 7, "authenticator", "users.toml accepts: users");
    assert_eq!(ps.len(), 8, "{}", render(&ps));
}

#[test]
fn wrong_types() {
    let router = r#"
[general]
listen = 6432
workers = "4"
hot_reload = "yes"
write_functions = "f"
default_pool_size = 1.5
[[databases]]
name = "app"
host = "h"
port = "5432"
"#;
    let ps = problems(router, MIN_USERS);
    has(
        &ps,
        R,
        3,
        "general.listen",
        "expected a string, found an integer",
    );
    has(
        &ps,
        R,
        4,
        "general.workers",
        "expected an integer, found a string",
    );
    has(
        &ps,
        R,
        5,
        "general.hot_reload",
        "expected true or false, found a string",
    );
    has(
        &ps,
        R,
        6,
        "general.write_functions",
        "expected an array of strings, found a string",
    );
    has(
        &ps,
        R,
        7,
        "general.default_pool_size",
        "expected an integer, found a float",
    );
    has(
        &ps,
        R,
        11,
        "databases.port",
        "expected an integer, found a string",
    );
    assert_eq!(ps.len(), 6, "{}", render(&ps));
}

#[test]
fn array_elements_checked_at_their_own_line() {
    let router = "[general]\nwrite_functions = [\n  \"a\",\n  1,\n  \"\",\n]\n";
    let ps = problems(&format!("{router}{MIN_ROUTER}"), MIN_USERS);
    has(
        &ps,
        R,
        4,
        "general.write_functions",
        "element 2 should be a string, found an integer",
    );
    has(
        &ps,
        R,
        5,
        "general.write_functions",
        "element 3 must not be empty",
    );
    assert_eq!(ps.len(), 2, "{}", render(&ps));
}

#[test]
fn tables_of_the_wrong_shape() {
    let ps = problems(
        "general = 3\n[databases]\nname = \"app\"\n",
        "[users]\nname = \"a\"\n",
    );
    has(
        &ps,
        R,
        1,
        "general",
        "expected a table ([general]), found an integer",
    );
    has(
        &ps,
        R,
        2,
        "databases",
        "expected an array of tables ([[databases]]), found a table",
    );
    has(
        &ps,
        U,
        1,
        "users",
        "expected an array of tables ([[users]]), found a table",
    );
}

#[test]
fn bad_enum_values_list_the_choices() {
    let router = r#"
[general]
pool_mode = "statement"
server_tls = "verify_full"
[[databases]]
name = "app"
host = "h"
role = "master"
[[sharded_tables]]
database = "app"
column = "c"
data_type = "int8"
"#;
    let users = format!("{MIN_USERS}auth = \"password\"\npool_mode = \"Session\"\n");
    let ps = problems(router, &users);
    has(
        &ps,
        R,
        3,
        "general.pool_mode",
        "\"statement\" is not one of \"transaction\", \"session\"",
    );
    has(
        &ps,
        R,
        4,
        "general.server_tls",
        "\"disable\", \"prefer\", \"require\", \"verify-full\"",
    );
    has(
        &ps,
        R,
        8,
        "databases.role",
        "\"master\" is not one of \"primary\", \"replica\", \"auto\"",
    );
    has(
        &ps,
        R,
        12,
        "sharded_tables.data_type",
        "\"smallint\", \"integer\", \"bigint\", \"text\", \"varchar\", \"uuid\"",
    );
    has(
        &ps,
        U,
        6,
        "users.auth",
        "\"scram\", \"md5\", \"plain\", \"jwt\", \"password_or_jwt\"",
    );
    has(&ps, U, 7, "users.pool_mode", "\"Session\" is not one of");
    assert_eq!(ps.len(), 6, "{}", render(&ps));
}

#[test]
fn numeric_ranges() {
    let router = r#"
[general]
workers = -1
default_pool_size = 0
max_clients = 0
checkout_timeout_ms = 0
max_message_size = 5000000000
[[databases]]
name = "app"
host = "h"
port = 0
[[databases]]
name = "app"
host = "h2"
port = 70000
role = "replica"
shard = -2
"#;
    let users = format!("{MIN_USERS}pool_size = 0\n");
    let ps = problems(router, &users);
    has(
        &ps,
        R,
        3,
        "general.workers",
        "must not be negative (got -1)",
    );
    has(
        &ps,
        R,
        4,
        "general.default_pool_size",
        "must be at least 1 (got 0)",
    );
    has(
        &ps,
        R,
        5,
        "general.max_clients",
        "must be at least 1 (got 0)",
    );
    has(
        &ps,
        R,
        6,
        "general.checkout_timeout_ms",
        "must be at least 1 (got 0)",
    );
    has(
        &ps,
        R,
        7,
        "general.max_message_size",
        "must be at most 4294967295 (got 5000000000)",
    );
    has(&ps, R, 11, "databases.port", "must be at least 1 (got 0)");
    has(
        &ps,
        R,
        15,
        "databases.port",
        "must be at most 65535 (got 70000)",
    );
    has(
        &ps,
        R,
        17,
        "databases.shard",
        "must not be negative (got -2)",
    );
    has(&ps, U, 6, "users.pool_size", "must be at least 1 (got 0)");
    assert_eq!(ps.len(), 9, "{}", render(&ps));
}

#[test]
fn max_message_size_too_small_to_use() {
    // Anything below 4096 bytes would end clients with 08P01 for ordinary
    // statements: refused like other unusable values.
    for bad in [0, 1, 13, 4095] {
        let router = format!("[general]\nworkers = 1\nmax_message_size = {bad}\n{MIN_ROUTER}");
        one(
            &problems(&router, MIN_USERS),
            R,
            3,
            "general.max_message_size",
            &format!("must be at least 4096 (got {bad})"),
        );
    }
    let router = format!("[general]\nmax_message_size = 4096\n{MIN_ROUTER}");
    let cfg = ok(&router, MIN_USERS);
    assert_eq!(cfg.general.max_message_size, 4096);
}

#[test]
fn no_databases_is_reported_on_a_real_line() {
    // No [[databases]] at all: the file's first line, never line 0.
    for router in ["", "\n", "[general]\nworkers = 1\n"] {
        let ps = problems(router, MIN_USERS);
        let p = has(&ps, R, 1, "databases", "no [[databases]] entries");
        assert!(
            p.to_string()
                .starts_with("router.toml:1: databases: no [[databases]]"),
            "{p}"
        );
        assert!(ps.iter().all(|p| p.line != 0), "{}", render(&ps));
    }
    // Entries that are all unusable: the first [[databases]] header.
    let router = "[general]\nworkers = 1\n\n[[databases]]\nport = 5432\n";
    let ps = problems(router, MIN_USERS);
    has(&ps, R, 4, "databases.name", "missing required key \"name\"");
    has(&ps, R, 4, "databases", "no [[databases]] entries");
}

#[test]
fn min_pool_size_above_default_and_above_user_pool_size() {
    let router = format!("[general]\ndefault_pool_size = 5\nmin_pool_size = 6\n{MIN_ROUTER}");
    let ps = problems(&router, MIN_USERS);
    one(
        &ps,
        R,
        3,
        "general.min_pool_size",
        "min_pool_size (6) is larger than default_pool_size (5)",
    );

    let router = format!("[general]\nmin_pool_size = 4\n{MIN_ROUTER}");
    let ps = problems(&router, &format!("{MIN_USERS}pool_size = 3\n"));
    one(
        &ps,
        U,
        6,
        "users.pool_size",
        "pool_size (3) is smaller than [general] min_pool_size (4)",
    );
}

#[test]
fn listen_addresses() {
    for (bad, needle) in [
        ("6432", "is not host:port"),
        (":6432", "is not host:port"),
        ("localhost:http", "is not a number in 0..=65535"),
        ("host:70000", "is not a number in 0..=65535"),
        ("::1:6432", "IPv6 addresses need brackets"),
        ("[zz]:6432", "is not a bracketed IPv6 address"),
    ] {
        let router = format!("[general]\nlisten = \"{bad}\"\n{MIN_ROUTER}");
        let ps = problems(&router, MIN_USERS);
        one(&ps, R, 2, "general.listen", needle);
    }
    for good in ["localhost:6432", "0.0.0.0:0", "[::]:6432"] {
        let router = format!(
            "[general]\nlisten = \"{good}\"\nmetrics_listen = \"127.0.0.1:0\"\n{MIN_ROUTER}"
        );
        assert_eq!(ok(&router, MIN_USERS).general.listen, good);
    }
    let router = format!("[general]\nmetrics_listen = \"9930\"\n{MIN_ROUTER}");
    let ps = problems(&router, MIN_USERS);
    one(
        &ps,
        R,
        2,
        "general.metrics_listen",
        "or \"\" to turn metrics off",
    );
}

#[test]
fn tls_settings_that_cannot_work() {
    let router = format!("[general]\ntls_certificate = \"c.pem\"\n{MIN_ROUTER}");
    one(
        &problems(&router, MIN_USERS),
        R,
        2,
        "general.tls_certificate",
        "tls_private_key must be set too",
    );
    let router = format!("[general]\nclient_tls = \"require\"\n{MIN_ROUTER}");
    one(
        &problems(&router, MIN_USERS),
        R,
        2,
        "general.client_tls",
        "needs tls_certificate",
    );
}

#[test]
fn required_keys() {
    let router = "[[databases]]\nport = 5432\n\n[[databases]]\nname = \"\"\nhost = \"h\"\n[[sharded_tables]]\nname = \"t\"\n";
    let users = "\n[[users]]\npassword = \"p\"\n";
    let ps = problems(router, users);
    has(&ps, R, 1, "databases.name", "missing required key \"name\"");
    has(&ps, R, 1, "databases.host", "missing required key \"host\"");
    has(&ps, R, 5, "databases.name", "must not be empty");
    has(
        &ps,
        R,
        7,
        "sharded_tables.database",
        "missing required key \"database\"",
    );
    has(
        &ps,
        R,
        7,
        "sharded_tables.column",
        "missing required key \"column\"",
    );
    has(&ps, U, 2, "users.name", "missing required key \"name\"");
    has(
        &ps,
        U,
        2,
        "users.database",
        "missing required key \"database\"",
    );
    // No entry had a usable name, so there is no logical database at all.
    has(&ps, R, 1, "databases", "no [[databases]] entries");
    assert_eq!(ps.len(), 8, "{}", render(&ps));
}

#[test]
fn duplicate_user_names_first_line() {
    let users =
        format!("{MIN_USERS}\n[[users]]\nname = \"app\"\ndatabase = \"app\"\npassword = \"x\"\n");
    let ps = problems(MIN_ROUTER, &users);
    let p = one(
        &ps,
        U,
        7,
        "users.name",
        "duplicate user \"app\" for database \"app\"",
    );
    assert!(p.message.contains("first defined on line 2"), "{p}");
    // Same name for another database is fine.
    let router = format!("{MIN_ROUTER}[[databases]]\nname = \"b\"\nhost = \"h\"\n");
    ok(
        &router,
        &users.replace(
            "database = \"app\"\npassword = \"x\"",
            "database = \"b\"\npassword = \"x\"",
        ),
    );
}

#[test]
fn shard_topology() {
    let router = r#"
[[databases]]
name = "app"
host = "a"
role = "replica"

[[databases]]
name = "app"
host = "b"
role = "replica"

[[databases]]
name = "app"
host = "c"
shard = 1

[[databases]]
name = "app"
host = "d"
shard = 1

[[databases]]
name = "app"
host = "e"
shard = 3
role = "auto"
"#;
    let ps = problems(router, MIN_USERS);
    let p = has(
        &ps,
        R,
        2,
        "databases.role",
        "\"app\" shard 0 has no primary",
    );
    assert!(p.message.contains("line 2, 7"), "{p}");
    has(
        &ps,
        R,
        17,
        "databases.role",
        "second primary for \"app\" shard 1 (the first is on line 12)",
    );
    has(
        &ps,
        R,
        22,
        "databases.shard",
        "\"app\" has no server for shard 2",
    );
    assert_eq!(ps.len(), 3, "{}", render(&ps));
}

#[test]
fn auto_counts_as_a_primary_and_duplicates_are_found() {
    let router = r#"
[[databases]]
name = "app"
host = "a"
role = "auto"
[[databases]]
name = "app"
host = "a"
role = "auto"
"#;
    let ps = problems(router, MIN_USERS);
    one(&ps, R, 6, "databases.host", "same server as line 2");
}

#[test]
fn admin_database_cannot_be_a_logical_database() {
    let router = "[[databases]]\nname = \"pgrouter\"\nhost = \"h\"\n";
    let users = "[[users]]\nname = \"app\"\ndatabase = \"pgrouter\"\npassword = \"p\"\n";
    one(
        &problems(router, users),
        R,
        1,
        "databases.name",
        "admin_database",
    );
}

#[test]
fn jwt_key_source_and_connect_as() {
    let two_dbs = format!("{MIN_ROUTER}[[databases]]\nname = \"shop\"\nhost = \"h\"\n");
    let users = format!(
        "{MIN_USERS}[[users]]\nname = \"authenticator\"\ndatabase = \"app\"\nlogin = false\n"
    );

    // Neither key source.
    let router = format!("{two_dbs}\n[jwt]\ndatabases = [\"app\"]\n");
    one(
        &problems(&router, &users),
        R,
        9,
        "jwt",
        "set one of public_key_file or jwks_url",
    );

    // Both key sources, and a bad URL.
    let router = format!("{two_dbs}\n[jwt]\ndatabases = [\"app\"]\npublic_key_file = \"k\"\njwks_url = \"ftp://x\"\n");
    let ps = problems(&router, &users);
    has(
        &ps,
        R,
        12,
        "jwt.jwks_url",
        "set only one of public_key_file and jwks_url",
    );
    has(
        &ps,
        R,
        12,
        "jwt.jwks_url",
        "is not an http:// or https:// URL",
    );
    assert_eq!(ps.len(), 2, "{}", render(&ps));

    // databases = [] means all: "shop" has no authenticator entry.
    let router =
        format!("{two_dbs}\n[jwt]\npublic_key_file = \"k\"\nconnect_as = \"authenticator\"\n");
    let p = one(
        &problems(&router, &users),
        R,
        11,
        "jwt.connect_as",
        "no [[users]] entry named \"authenticator\"",
    );
    assert!(p.message.contains("database \"shop\""), "{p}");

    // Default connect_as with no entry at all: reported at the [jwt] header.
    let router = format!("{MIN_ROUTER}\n[jwt]\npublic_key_file = \"k\"\n");
    one(
        &problems(&router, MIN_USERS),
        R,
        6,
        "jwt.connect_as",
        "for database \"app\"",
    );

    // Unknown database in jwt.databases.
    let router = format!("{MIN_ROUTER}\n[jwt]\npublic_key_file = \"k\"\ndatabases = [\"ap\"]\n");
    one(
        &problems(&router, &users),
        R,
        8,
        "jwt.databases",
        "unknown logical database \"ap\"; did you mean \"app\"?",
    );
}

#[test]
fn jwt_algorithms() {
    let users = format!(
        "{MIN_USERS}[[users]]\nname = \"authenticator\"\ndatabase = \"app\"\nlogin = false\n"
    );
    let router = format!("{MIN_ROUTER}[jwt]\npublic_key_file = \"k\"\nalgorithms = [\"none\", \"HS256\", \"RS999\"]\n");
    let ps = problems(&router, &users);
    has(&ps, R, 7, "jwt.algorithms", "\"none\" is always refused");
    has(&ps, R, 7, "jwt.algorithms", "\"HS256\" is always refused");
    has(&ps, R, 7, "jwt.algorithms", "unknown algorithm \"RS999\"");
    assert_eq!(ps.len(), 3, "{}", render(&ps));
    let router = format!("{MIN_ROUTER}[jwt]\npublic_key_file = \"k\"\nalgorithms = []\n");
    one(
        &problems(&router, &users),
        R,
        7,
        "jwt.algorithms",
        "at least one",
    );
}

#[test]
fn unknown_databases_in_users_and_sharded_tables() {
    let router = format!("{MIN_ROUTER}[[sharded_tables]]\ndatabase = \"shop\"\ncolumn = \"c\"\n");
    let users = "[[users]]\nname = \"u\"\ndatabase = \"ap\"\npassword = \"p\"\n";
    let ps = problems(&router, users);
    has(
        &ps,
        R,
        6,
        "sharded_tables.database",
        "unknown logical database \"shop\"; router.toml defines \"app\"",
    );
    has(&ps, U, 3, "users.database", "did you mean \"app\"?");
    assert_eq!(ps.len(), 2, "{}", render(&ps));
}

#[test]
fn duplicate_sharded_tables() {
    let router = format!(
        "{MIN_ROUTER}[[sharded_tables]]\ndatabase = \"app\"\nname = \"t\"\ncolumn = \"a\"\n\
         [[sharded_tables]]\ndatabase = \"app\"\nname = \"t\"\ncolumn = \"b\"\n"
    );
    one(
        &problems(&router, MIN_USERS),
        R,
        9,
        "sharded_tables.name",
        "table \"t\" of \"app\" is already sharded on line 5",
    );
}

#[test]
fn passwords_and_auth() {
    let router = format!("{MIN_ROUTER}[jwt]\npublic_key_file = \"k\"\nconnect_as = \"svc\"\n");
    let users = r#"
[[users]]
name = "nopw"
database = "app"

[[users]]
name = "svc"
database = "app"
login = false

[[users]]
name = "hashed"
database = "app"
password = "md5e8c6b9c1a3d1b5f0a2c4e6f8a0b2c4d6"
auth = "scram"

[[users]]
name = "scrammed"
database = "app"
auth = "md5"
password = "SCRAM-SHA-256$4096:c2FsdA==$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE="

[[users]]
name = "broken"
database = "app"
auth = "plain"
password = "SCRAM-SHA-256$nope"
server_password = "SCRAM-SHA-256$4096:c2FsdA==$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE="

[[users]]
name = "token"
database = "app"
auth = "jwt"
"#;
    let ps = problems(&router, users);
    has(
        &ps,
        U,
        2,
        "users.password",
        "no password: auth = \"scram\" needs one",
    );
    has(
        &ps,
        U,
        14,
        "users.password",
        "an md5 secret cannot be checked with auth = \"scram\"",
    );
    has(
        &ps,
        U,
        21,
        "users.password",
        "a SCRAM secret cannot be checked with auth = \"md5\"",
    );
    has(&ps, U, 27, "users.password", "malformed SCRAM secret");
    has(
        &ps,
        U,
        28,
        "users.server_password",
        "must be the plain password",
    );
    assert_eq!(ps.len(), 5, "{}", render(&ps));
}

#[test]
fn jwt_auth_needs_jwt_section_for_that_database() {
    let users = format!("{MIN_USERS}auth = \"password_or_jwt\"\n");
    one(
        &problems(MIN_ROUTER, &users),
        U,
        6,
        "users.auth",
        "needs a [jwt] section in router.toml",
    );

    let router = format!("{MIN_ROUTER}[[databases]]\nname = \"b\"\nhost = \"h\"\n[jwt]\npublic_key_file = \"k\"\ndatabases = [\"b\"]\n");
    let users = format!(
        "{MIN_USERS}auth = \"jwt\"\n[[users]]\nname = \"authenticator\"\ndatabase = \"b\"\nlogin = false\n"
    );
    one(
        &problems(&router, &users),
        U,
        6,
        "users.auth",
        "[jwt] databases does not include \"app\"",
    );
}

#[test]
fn many_problems_together_sorted_by_file_then_line() {
    let router = r#"
[[databases]]
name = "app"
host = "h"
port = 99999

[general]
pool_mode = "x"
lisen = "a:1"
"#;
    let users = r#"
[[users]]
name = "app"
database = "nope"
password = "p"
pool_sise = 3
"#;
    let ps = problems(router, users);
    let got: Vec<(String, usize, &str)> = ps
        .iter()
        .map(|p| (p.file.display().to_string(), p.line, p.key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (R.to_string(), 5, "databases.port"),
            (R.to_string(), 8, "general.pool_mode"),
            (R.to_string(), 9, "general.lisen"),
            (U.to_string(), 4, "users.database"),
            (U.to_string(), 6, "users.pool_sise"),
        ],
        "{}",
        render(&ps)
    );
    assert_eq!(
        ps[4].to_string(),
        "users.toml:6: users.pool_sise: unknown key \"pool_sise\"; did you mean \"pool_size\"?"
    );
}

#[test]
fn empty_passwords_are_refused() {
    let users = "[[users]]\nname = \"a\"\ndatabase = \"app\"\npassword = \"\"\n";
    let ps = problems("[general]\nadmin_password = \"\"\n", users);
    has(&ps, R, 2, "general.admin_password", "is empty");
    has(&ps, U, 4, "users.password", "is empty");
}

#[test]
fn metrics_on_the_clients_address_is_refused() {
    let ps = problems(
        "[general]\nlisten = \"127.0.0.1:7000\"\nmetrics_listen = \"127.0.0.1:7000\"\n",
        MIN_USERS,
    );
    has(
        &ps,
        R,
        3,
        "general.metrics_listen",
        "same address as listen",
    );
}
