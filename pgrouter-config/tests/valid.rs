//! Valid files: every key read correctly, defaults applied, helper methods.

mod common;

use common::*;
use pgrouter_config::*;

const FULL_ROUTER: &str = r#"
[general]
listen = "0.0.0.0:7432"
workers = 4
pool_mode = "session"
default_pool_size = 20
min_pool_size = 2
connect_timeout_ms = 1000
checkout_timeout_ms = 2000
server_idle_timeout_ms = 3000
server_lifetime_ms = 4000
client_idle_timeout_ms = 5000
shutdown_timeout_ms = 6000
max_clients = 700
max_message_size = 8000000
read_write_split = "include_primary"
load_balancing = "least_active"
healthcheck_interval_ms = 900
ban_time_ms = 1100
write_functions = ["my_write", "other_write"]
parse_cache_size = 123
admin_database = "console"
admin_user = "root"
admin_password = "pw"
metrics_listen = ""
hot_reload = false
tls_certificate = "cert.pem"
tls_private_key = "key.pem"
client_tls = "require"
server_tls = "verify-full"
server_tls_ca = "ca.pem"
log_format = "json"

[jwt]
public_key_file = ""
jwks_url = "https://idp.example/.well-known/jwks.json"
jwks_cache_ttl_s = 60
jwks_min_refresh_interval_s = 5
algorithms = ["ES256", "EdDSA"]
issuer = "https://idp.example/"
audience = "pgrouter"
leeway_s = 30
username_claim = "email"
role_claim = "pg_role"
read_only_claim = "read_only"
connect_as = "auth"
allowed_roles = ["reader", "writer"]
databases = ["app"]
auto_provision = false
auto_provision_read_only = false
allow_insecure_transport = true
disconnect_on_expiry = false

[[databases]]
name = "app"
host = "db1"
port = 5433
database_name = "app_real"
role = "primary"
shard = 0

[[databases]]
name = "app"
host = "db2"
role = "replica"
shard = 0

[[databases]]
name = "app"
host = "db3"
role = "auto"
shard = 1

[[databases]]
name = "other"
host = "db4"

[[sharded_tables]]
database = "app"
name = "orders"
column = "customer_id"
data_type = "integer"

[[sharded_tables]]
database = "app"
column = "tenant"
data_type = "uuid"
"#;

const FULL_USERS: &str = r#"
[[users]]
name = "app"
database = "app"
password = "secret"
auth = "md5"
server_user = "app_server"
server_password = "server-secret"
pool_size = 30
pool_mode = "transaction"
read_only = true
login = true

[[users]]
name = "auth"
database = "app"
server_password = "auth-secret"
login = false

[[users]]
name = "app"
database = "other"
password = "md5e8c6b9c1a3d1b5f0a2c4e6f8a0b2c4d6"
auth = "md5"

[[users]]
name = "jwtonly"
database = "app"
auth = "jwt"
"#;

#[test]
fn full_files_every_key() {
    let c = ok(FULL_ROUTER, FULL_USERS);
    let g = &c.general;
    assert_eq!(g.listen, "0.0.0.0:7432");
    assert_eq!(g.workers, 4);
    assert_eq!(g.pool_mode, PoolMode::Session);
    assert_eq!(g.default_pool_size, 20);
    assert_eq!(g.min_pool_size, 2);
    assert_eq!(g.connect_timeout_ms, 1000);
    assert_eq!(g.checkout_timeout_ms, 2000);
    assert_eq!(g.server_idle_timeout_ms, 3000);
    assert_eq!(g.server_lifetime_ms, 4000);
    assert_eq!(g.client_idle_timeout_ms, 5000);
    assert_eq!(g.shutdown_timeout_ms, 6000);
    assert_eq!(g.max_clients, 700);
    assert_eq!(g.max_message_size, 8_000_000);
    assert_eq!(g.read_write_split, ReadWriteSplit::IncludePrimary);
    assert_eq!(g.load_balancing, LoadBalancing::LeastActive);
    assert_eq!(g.healthcheck_interval_ms, 900);
    assert_eq!(g.ban_time_ms, 1100);
    assert_eq!(g.write_functions, vec!["my_write", "other_write"]);
    assert_eq!(g.parse_cache_size, 123);
    assert_eq!(g.admin_database, "console");
    assert_eq!(g.admin_user, "root");
    assert_eq!(g.admin_password, "pw");
    assert_eq!(g.metrics_listen, "");
    assert!(!g.hot_reload);
    assert_eq!(g.tls_certificate, "cert.pem");
    assert_eq!(g.tls_private_key, "key.pem");
    assert_eq!(g.client_tls, ClientTls::Require);
    assert_eq!(g.server_tls, ServerTls::VerifyFull);
    assert_eq!(g.server_tls_ca, "ca.pem");
    assert_eq!(g.log_format, LogFormat::Json);

    let j = c.jwt.as_ref().expect("jwt");
    assert_eq!(j.public_key_file, "");
    assert_eq!(j.jwks_url, "https://idp.example/.well-known/jwks.json");
    assert_eq!(j.jwks_cache_ttl_s, 60);
    assert_eq!(j.jwks_min_refresh_interval_s, 5);
    assert_eq!(j.algorithms, vec!["ES256", "EdDSA"]);
    assert_eq!(j.issuer, "https://idp.example/");
    assert_eq!(j.audience, "pgrouter");
    assert_eq!(j.leeway_s, 30);
    assert_eq!(j.username_claim, "email");
    assert_eq!(j.role_claim, "pg_role");
    assert_eq!(j.read_only_claim, "read_only");
    assert_eq!(j.connect_as, "auth");
    assert_eq!(j.allowed_roles, vec!["reader", "writer"]);
    assert_eq!(j.databases, vec!["app"]);
    assert!(!j.auto_provision && !j.auto_provision_read_only);
    assert!(j.allow_insecure_transport && !j.disconnect_on_expiry);
    assert!(j.applies_to("app") && !j.applies_to("other"));

    assert_eq!(c.databases.len(), 4);
    assert_eq!(
        c.databases[0],
        ServerEntry {
            name: "app".into(),
            host: "db1".into(),
            port: 5433,
            database_name: "app_real".into(),
            role: ServerRole::Primary,
            shard: 0,
            line: 54,
        }
    );
    assert_eq!(c.databases[1].port, 5432);
    assert_eq!(c.databases[1].database_name, "app");
    assert_eq!(c.databases[2].role, ServerRole::Auto);
    assert_eq!(c.databases[3].role, ServerRole::Primary);

    assert_eq!(
        c.sharded_tables,
        vec![
            ShardedTable {
                database: "app".into(),
                name: Some("orders".into()),
                schema: None,
                column: "customer_id".into(),
                data_type: ShardKeyType::Integer,
                mapping: ShardMapping::Hash,
                default_shard: None,
                rules: vec![],
            },
            ShardedTable {
                database: "app".into(),
                name: None,
                schema: None,
                column: "tenant".into(),
                data_type: ShardKeyType::Uuid,
                mapping: ShardMapping::Hash,
                default_shard: None,
                rules: vec![],
            },
        ]
    );

    assert_eq!(
        c.users[0],
        User {
            name: "app".into(),
            database: "app".into(),
            password: Some("secret".into()),
            auth: AuthMethod::Md5,
            server_user: "app_server".into(),
            server_password: Some("server-secret".into()),
            pool_size: Some(30),
            pool_mode: Some(PoolMode::Transaction),
            read_only: true,
            login: true,
            line: 2,
        }
    );
    let auth = c.user("auth", "app").expect("auth user");
    assert!(!auth.login);
    assert_eq!(auth.password, None);
    assert_eq!(auth.server_password.as_deref(), Some("auth-secret"));
    // A hashed password is not usable to log in to the server.
    let other = c.user("app", "other").expect("app@other");
    assert_eq!(other.server_password, None);
    assert_eq!(other.auth, AuthMethod::Md5);
    assert_eq!(
        c.user("jwtonly", "app").map(|u| u.auth),
        Some(AuthMethod::Jwt)
    );

    assert_eq!(c.logical_databases(), vec!["app", "other"]);
    assert_eq!(c.servers_of("app").len(), 3);
    assert_eq!(c.shard_count("app"), 2);
    assert_eq!(c.shard_count("other"), 1);
    assert_eq!(c.shard_count("nope"), 0);
    assert_eq!(c.pool_size_for(&c.users[0]), 30);
    assert_eq!(c.pool_size_for(auth), 20);
    assert_eq!(c.pool_mode_for(&c.users[0]), PoolMode::Transaction);
    assert_eq!(c.pool_mode_for(auth), PoolMode::Session);
    assert_eq!(c.router_path, std::path::Path::new("router.toml"));
}

#[test]
fn defaults() {
    let c = ok(MIN_ROUTER, MIN_USERS);
    assert_eq!(c.general, General::default());
    let g = &c.general;
    assert_eq!(g.listen, "127.0.0.1:6432");
    assert_eq!(g.workers, 0);
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(g.default_pool_size, 10);
    assert_eq!(g.min_pool_size, 0);
    assert_eq!(g.connect_timeout_ms, 3000);
    assert_eq!(g.checkout_timeout_ms, 5000);
    assert_eq!(g.server_idle_timeout_ms, 600_000);
    assert_eq!(g.server_lifetime_ms, 3_600_000);
    assert_eq!(g.client_idle_timeout_ms, 0);
    assert_eq!(g.shutdown_timeout_ms, 30_000);
    assert_eq!(g.max_clients, 10_000);
    assert_eq!(g.max_message_size, 268_435_456);
    assert_eq!(g.read_write_split, ReadWriteSplit::ExcludePrimary);
    assert_eq!(g.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(g.healthcheck_interval_ms, 5000);
    assert_eq!(g.ban_time_ms, 30_000);
    assert!(g.write_functions.is_empty());
    assert_eq!(g.parse_cache_size, 10_000);
    assert_eq!(g.admin_database, "pgrouter");
    assert_eq!(g.admin_user, "admin");
    assert_eq!(g.admin_password, "change-me");
    assert_eq!(g.metrics_listen, "127.0.0.1:9930");
    assert!(g.hot_reload);
    assert_eq!(g.tls_certificate, "");
    assert_eq!(g.tls_private_key, "");
    assert_eq!(g.client_tls, ClientTls::Allow);
    assert_eq!(g.server_tls, ServerTls::Prefer);
    assert_eq!(g.server_tls_ca, "");
    assert_eq!(g.log_format, LogFormat::Text);
    assert_eq!(c.jwt, None);

    let d = &c.databases[0];
    assert_eq!(
        (d.port, d.database_name.as_str(), d.role, d.shard),
        (5432, "app", ServerRole::Primary, 0)
    );
    assert_eq!(d.line, 2);

    let u = &c.users[0];
    assert_eq!(u.auth, AuthMethod::Scram);
    assert_eq!(u.server_user, "app");
    assert_eq!(u.server_password.as_deref(), Some("secret"));
    assert_eq!(
        (u.pool_size, u.pool_mode, u.read_only, u.login),
        (None, None, false, true)
    );
}

#[test]
fn jwt_defaults() {
    let router = format!("{MIN_ROUTER}\n[jwt]\npublic_key_file = \"jwt.pem\"\n");
    let users = format!(
        "{MIN_USERS}\n[[users]]\nname = \"authenticator\"\ndatabase = \"app\"\nlogin = false\n"
    );
    let c = ok(&router, &users);
    let j = c.jwt.expect("jwt");
    assert_eq!(
        Jwt {
            public_key_file: String::new(),
            lines: JwtLines::default(),
            ..j.clone()
        },
        Jwt::default()
    );
    assert_eq!(
        j.lines,
        JwtLines {
            section: 6,
            public_key_file: 7,
            jwks_url: 6,
            connect_as: 6,
            allowed_roles: 6,
        }
    );
    assert_eq!(j.jwks_cache_ttl_s, 300);
    assert_eq!(j.jwks_min_refresh_interval_s, 10);
    assert_eq!(j.algorithms, vec!["RS256", "ES256"]);
    assert_eq!(
        (j.username_claim.as_str(), j.role_claim.as_str()),
        ("sub", "role")
    );
    assert_eq!(j.connect_as, "authenticator");
    assert!(j.auto_provision && j.auto_provision_read_only && j.disconnect_on_expiry);
    assert!(!j.allow_insecure_transport);
    assert!(j.applies_to("anything"));
}

#[test]
fn inline_tables_and_empty_users_file() {
    let router = r#"
general = { listen = "[::1]:6432" }
databases = [ { name = "app", host = "h" } ]
"#;
    let c = ok(router, "");
    assert_eq!(c.general.listen, "[::1]:6432");
    assert_eq!(c.databases[0].line, 3);
    assert!(c.users.is_empty());
}

#[test]
fn password_kinds() {
    assert_eq!(password_kind("secret"), PasswordKind::Plain);
    assert_eq!(
        password_kind("md5e8c6b9c1a3d1b5f0a2c4e6f8a0b2c4d6"),
        PasswordKind::Md5
    );
    assert_eq!(password_kind("md5short"), PasswordKind::Plain);
    assert_eq!(
        password_kind("md5e8c6b9c1a3d1b5f0a2c4e6f8a0b2c4dZ"),
        PasswordKind::Plain
    );
    assert_eq!(
        password_kind("SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB"),
        PasswordKind::Scram
    );
}

#[test]
fn well_formed_scram_secret_accepted() {
    let users = r#"
[[users]]
name = "app"
database = "app"
password = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE="
"#;
    let c = ok(MIN_ROUTER, users);
    assert_eq!(c.users[0].server_password, None);
}

#[test]
fn scram_secret_with_keys_that_are_not_32_bytes_is_malformed() {
    // PostgreSQL's parse_scram_secret refuses these; every login with one
    // would fail with a bare 28P01.
    let users = r#"
[[users]]
name = "app"
database = "app"
password = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5:c2VydmVya2V5"
"#;
    let ps = problems(MIN_ROUTER, users);
    assert!(
        ps.iter()
            .any(|p| p.key == "users.password" && p.message.contains("malformed SCRAM secret")),
        "{ps:?}"
    );
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let dir = std::env::temp_dir().join(format!("pgrouter-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let router = dir.join("router.toml");
    let users = dir.join("users.toml");
    std::fs::write(&router, MIN_ROUTER).expect("write");
    std::fs::write(&users, MIN_USERS).expect("write");
    let c = load(&router, &users).expect("valid");
    assert_eq!(c.users_path, users);

    let missing = dir.join("missing.toml");
    let ps = load(&router, &missing).expect_err("missing users file");
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!((ps[0].file.as_path(), ps[0].line), (missing.as_path(), 0));
    assert!(ps[0].message.contains("cannot read"), "{}", ps[0]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn repo_example_files_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let c = match load(&root.join("example.router.toml"), &root.join("users.toml")) {
        Ok(c) => c,
        Err(ps) => panic!("{}", render(&ps)),
    };
    assert_eq!(c.logical_databases(), vec!["app", "shop"]);
    let ports: Vec<u16> = c.servers_of("app").iter().map(|s| s.port).collect();
    assert_eq!(ports, vec![15432, 15433]);
    // The quickstart's sharded database: shard 0 is the app primary (and its
    // replica), shards 1 and 2 are the two extra primaries.
    let shop: Vec<(u16, u32, ServerRole)> = c
        .servers_of("shop")
        .iter()
        .map(|s| (s.port, s.shard, s.role))
        .collect();
    assert_eq!(
        shop,
        vec![
            (15432, 0, ServerRole::Primary),
            (15433, 0, ServerRole::Replica),
            (15434, 1, ServerRole::Primary),
            (15435, 2, ServerRole::Primary),
        ]
    );
    assert_eq!(
        c.sharded_tables,
        vec![ShardedTable {
            database: "shop".into(),
            name: Some("orders".into()),
            schema: None,
            column: "customer_id".into(),
            data_type: ShardKeyType::Bigint,
            mapping: ShardMapping::Hash,
            default_shard: None,
            rules: vec![],
        }]
    );
    assert_eq!(
        c.reference_tables,
        vec![ReferenceTables {
            database: "shop".into(),
            names: vec!["countries".into()],
        }]
    );
    assert!(c.user("app", "shop").is_some());
    assert!(c.user("authenticator", "shop").is_some_and(|u| !u.login));
    let jwt = c.jwt.as_ref().expect("the demo enables JWT login");
    assert_eq!(jwt.connect_as, "authenticator");
    assert!(c.user("authenticator", "app").is_some_and(|u| !u.login));
    let app = c.user("app", "app").expect("user app");
    assert_eq!(
        (app.auth, app.password.as_deref()),
        (AuthMethod::Scram, Some("app-secret"))
    );
}

#[test]
fn jwt_problems_found_by_the_server_carry_file_line_and_key() {
    // The config crate reads no key files; the server reports what it finds
    // in them through `jwt_problem`, located like any other problem.
    let router =
        format!("{MIN_ROUTER}\n[jwt]\nleeway_s = 1\npublic_key_file = \"/nonexistent.pem\"\n");
    let users = format!(
        "{MIN_USERS}\n[[users]]\nname = \"authenticator\"\ndatabase = \"app\"\nlogin = false\n"
    );
    let c = ok(&router, &users);
    let p = c.jwt_problem("public_key_file", "cannot read \"/nonexistent.pem\"");
    assert_eq!(
        p.to_string(),
        "router.toml:8: jwt.public_key_file: cannot read \"/nonexistent.pem\""
    );
    // A key with no recorded line is reported at the [jwt] header.
    assert_eq!(c.jwt_problem("algorithms", "x").line, 6);
    assert_eq!(c.jwt_problem("", "x").key, "jwt");
}

#[test]
fn an_md5_secret_without_auth_is_checked_with_md5() {
    let router = "[[databases]]\nname = \"app\"\nhost = \"127.0.0.1\"\n";
    let users = "[[users]]\nname = \"hashed\"\ndatabase = \"app\"\npassword = \"md5e8c6b9c1a3d1b5f0a2c4e6f8a0b2c4d6\"\n\
                 \n[[users]]\nname = \"plain\"\ndatabase = \"app\"\npassword = \"secret\"\n";
    let c = ok(router, users);
    assert_eq!(c.users[0].auth, AuthMethod::Md5);
    assert_eq!(c.users[1].auth, AuthMethod::Scram);
}
