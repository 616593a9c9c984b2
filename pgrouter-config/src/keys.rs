//! The accepted keys of every table. One list per table drives both
//! unknown-key detection and the "did you mean" suggestions.

pub(crate) const ROUTER_TOP: &[&str] = &[
    "general",
    "jwt",
    "databases",
    "sharded_tables",
    "auth_query",
    "jit",
    "reference_tables",
];

pub(crate) const USERS_TOP: &[&str] = &["users"];

pub(crate) const GENERAL: &[&str] = &[
    "listen",
    "workers",
    "worker_spread_percent",
    "pool_mode",
    "default_pool_size",
    "min_pool_size",
    "connect_timeout_ms",
    "checkout_timeout_ms",
    "server_idle_timeout_ms",
    "server_lifetime_ms",
    "client_idle_timeout_ms",
    "shutdown_timeout_ms",
    "max_clients",
    "max_message_size",
    "read_write_split",
    "load_balancing",
    "healthcheck_interval_ms",
    "ban_time_ms",
    "write_functions",
    "parse_cache_size",
    "admin_database",
    "admin_user",
    "admin_password",
    "metrics_listen",
    "hot_reload",
    "tls_certificate",
    "tls_private_key",
    "client_tls",
    "server_tls",
    "server_tls_ca",
    "log_format",
    // Session state, limits and timeouts, replica lag (SPEC §3).
    "session_state",
    "client_login_timeout_ms",
    "idle_transaction_timeout_ms",
    "query_timeout_ms",
    "max_db_connections",
    "max_user_connections",
    "max_replica_lag_ms",
    "read_your_writes",
    // Sharding (read in sharding.rs).
    "cross_shard",
    "two_phase_commit",
    "coordinator_database",
    "instance_id",
];

pub(crate) const JWT: &[&str] = &[
    "public_key_file",
    "jwks_url",
    "jwks_cache_ttl_s",
    "jwks_min_refresh_interval_s",
    "algorithms",
    "issuer",
    "audience",
    "leeway_s",
    "username_claim",
    "role_claim",
    "read_only_claim",
    "connect_as",
    "allowed_roles",
    "databases",
    "auto_provision",
    "auto_provision_read_only",
    "allow_insecure_transport",
    "disconnect_on_expiry",
];

pub(crate) const DATABASES: &[&str] = &["name", "host", "port", "database_name", "role", "shard"];

pub(crate) const SHARDED_TABLES: &[&str] = crate::sharding::SHARDED_TABLES;

pub(crate) const USERS: &[&str] = &[
    "name",
    "database",
    "password",
    "auth",
    "server_user",
    "server_password",
    "pool_size",
    "pool_mode",
    "read_only",
    "login",
];
