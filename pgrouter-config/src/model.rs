//! The validated configuration model: what the server codes against.
//!
//! Every struct here holds *resolved* values: defaults are already applied and
//! every check in [`crate::parse`] has passed, so the server never has to ask
//! "was this key set?" or re-validate anything.

use std::path::PathBuf;

/// Defines a string-valued enum: the variants, the exact spelling each has in
/// the files, and lookups both ways. One table per enum keeps the accepted
/// spellings, the error message that lists them, and `Display` in step.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every accepted spelling, in the order the docs list them.
            pub const NAMES: &'static [&'static str] = &[$($text,)+];

            /// The spelling used in the config files.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }

            /// Exact (case-sensitive) lookup of a spelling from the files.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// When a server connection goes back to the pool.
    PoolMode {
        /// At the end of each transaction (ReadyForQuery 'I').
        Transaction = "transaction",
        /// When the client disconnects (after `DISCARD ALL`).
        Session = "session",
    }
);

string_enum!(
    /// What transaction mode does with session state it cannot carry
    /// between server connections (temp tables, LISTEN, advisory locks, ...).
    SessionStateMode {
        /// The client keeps its server connection while the state exists.
        Pin = "pin",
        /// Statements creating such state are refused with 0A000.
        Refuse = "refuse",
    }
);

string_enum!(
    /// Where reads go when a logical database has replicas.
    ReadWriteSplit {
        /// Replicas only; the primary only when no replica is healthy.
        ExcludePrimary = "exclude_primary",
        /// The primary takes reads like any replica.
        IncludePrimary = "include_primary",
    }
);

string_enum!(
    /// How a read picks among the eligible servers.
    LoadBalancing {
        RoundRobin = "round_robin",
        Random = "random",
        LeastActive = "least_active",
    }
);

string_enum!(
    /// TLS between clients and the router.
    ClientTls {
        /// Answer 'N' to SSLRequest.
        Disable = "disable",
        /// TLS if the client asks and a certificate is configured.
        Allow = "allow",
        /// Refuse clients that do not use TLS.
        Require = "require",
    }
);

string_enum!(
    /// TLS between the router and PostgreSQL servers.
    ServerTls {
        Disable = "disable",
        /// TLS when the server offers it, plain otherwise.
        Prefer = "prefer",
        /// TLS or fail, certificate not checked.
        Require = "require",
        /// TLS with the certificate checked against `server_tls_ca` and the host name.
        VerifyFull = "verify-full",
    }
);

string_enum!(
    /// Log output format on stderr.
    LogFormat {
        Text = "text",
        Json = "json",
    }
);

string_enum!(
    /// What a `[[databases]]` entry is within its shard.
    ServerRole {
        Primary = "primary",
        Replica = "replica",
        /// Ask the server (`pg_is_in_recovery()`); follows promotions.
        Auto = "auto",
    }
);

string_enum!(
    /// How a `[[users]]` entry logs in.
    AuthMethod {
        /// SCRAM-SHA-256 against `password` (plain or a SCRAM secret).
        Scram = "scram",
        /// MD5 against `password` (plain or an md5 secret).
        Md5 = "md5",
        /// Cleartext password message (checked against any kind of secret).
        Plain = "plain",
        /// The password is a JWT; `[jwt]` must be present.
        Jwt = "jwt",
        /// A JWT or the password, whichever the client sends.
        PasswordOrJwt = "password_or_jwt",
    }
);

string_enum!(
    /// PostgreSQL type of a shard key column; decides the hash function.
    ShardKeyType {
        Smallint = "smallint",
        Integer = "integer",
        Bigint = "bigint",
        Text = "text",
        Varchar = "varchar",
        Uuid = "uuid",
    }
);

string_enum!(
    /// How a sharded table's key value picks its shard.
    ShardMapping {
        /// PostgreSQL's `PARTITION BY HASH` with modulus = number of shards.
        Hash = "hash",
        /// `[[sharded_tables.rules]]` with `values`.
        List = "list",
        /// `[[sharded_tables.rules]]` with `from` (inclusive) / `to` (exclusive).
        Range = "range",
    }
);

string_enum!(
    /// `[general] cross_shard`: what a statement needing several shards gets.
    CrossShard {
        /// Run it on every shard needed (where the router can answer exactly).
        Allow = "allow",
        /// Refuse it with 0A000.
        Refuse = "refuse",
    }
);

impl ShardKeyType {
    /// smallint, integer or bigint.
    pub fn is_integer(self) -> bool {
        matches!(self, Self::Smallint | Self::Integer | Self::Bigint)
    }

    /// Whether an integer is a value of this (integer) type; true for the others.
    pub fn fits(self, v: i64) -> bool {
        match self {
            Self::Smallint => i16::try_from(v).is_ok(),
            Self::Integer => i32::try_from(v).is_ok(),
            _ => true,
        }
    }

    /// A light check of a configured key value (list rules): integers for the
    /// integer types, 32 hex digits for uuid. The router reads values with
    /// PostgreSQL's exact input rules; this catches typos at load time.
    pub fn check_text(self, text: &str) -> Result<(), String> {
        if self.is_integer() {
            let v: i64 = text
                .trim()
                .parse()
                .map_err(|_| format!("invalid input syntax for type {self}: \"{text}\""))?;
            if !self.fits(v) {
                return Err(format!("value \"{text}\" is out of range for type {self}"));
            }
        } else if self == Self::Uuid {
            let t = text.trim_start_matches('{').trim_end_matches('}');
            let hex: String = t.chars().filter(|c| *c != '-').collect();
            if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("invalid input syntax for type uuid: \"{text}\""));
            }
        }
        Ok(())
    }
}

/// The whole configuration: `router.toml` + `users.toml`, defaults applied, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub general: General,
    /// `Some` when `[jwt]` is present: JWT login enabled.
    pub jwt: Option<Jwt>,
    /// One entry per server, in file order. Entries sharing `name` form a logical database.
    pub databases: Vec<ServerEntry>,
    pub sharded_tables: Vec<ShardedTable>,
    /// `[[reference_tables]]`: tables copied whole on every shard.
    pub reference_tables: Vec<ReferenceTables>,
    /// The `[general]` sharding keys.
    pub sharding: Sharding,
    pub users: Vec<User>,
    /// `Some` when `[auth_query]` is present.
    pub auth_query: Option<crate::AuthQuery>,
    /// `Some` when `[jit]` is present.
    pub jit: Option<crate::Jit>,
    /// Where the config came from, so reload can read the same files again.
    pub router_path: PathBuf,
    pub users_path: PathBuf,
    /// Where `[general]` and its keys are in router.toml.
    pub general_lines: GeneralLines,
    /// Where `[jit]` and its file-naming keys are in router.toml.
    pub jit_lines: crate::JitLines,
    /// The line of `[auth_query] query` in router.toml (0: no `[auth_query]`).
    pub auth_query_line: usize,
}

/// Where `[general]` and each key written in it are in router.toml. Two
/// uses after loading: problems found later (a TLS file that does not load)
/// are reported at `file:line: general.key`, like every other problem; and
/// SHOW CONFIG says a key comes from router.toml whenever the file sets it,
/// even to its default value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeneralLines {
    /// The `[general]` header; 0 when the file has none.
    pub section: usize,
    /// Each key the section sets, with the line of its value.
    pub keys: std::collections::BTreeMap<String, usize>,
}

impl GeneralLines {
    /// Whether router.toml sets `key` in `[general]`.
    pub fn is_set(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// The line to report `key` at: its own, else the section's, else the
    /// file's first.
    pub fn line_of(&self, key: &str) -> usize {
        self.keys.get(key).copied().unwrap_or(self.section).max(1)
    }
}

/// The smallest `max_message_size` accepted (bytes). Below this, ordinary
/// statements (a short query, a Parse/Bind of a few parameters) would end
/// the client with 08P01, so a smaller value is a mistake (bytes taken for
/// kilobytes, say), refused by `pgrouter check` and RELOAD.
pub const MIN_MESSAGE_SIZE: u32 = 4096;

/// `[general]`. Field docs give the meaning; defaults are in [`General::default`]
/// and follow SPEC §3.
#[derive(Debug, Clone, PartialEq)]
pub struct General {
    /// `host:port` clients connect to. Port 0 is accepted (any free port; tests).
    pub listen: String,
    /// Worker threads, each with its own event loop and its part of every
    /// pool; 0 = one per core (the server resolves it).
    pub workers: usize,
    /// How busy a worker gets, in percent of one core, before clients are
    /// spread over one more worker (see the server's `worker_balance.rs`).
    /// 0 spreads them over every worker at once; 100 never spreads them.
    pub worker_spread_percent: u32,
    pub pool_mode: PoolMode,
    /// Server connections per pool; at least 1.
    pub default_pool_size: u32,
    /// Connections each pool keeps open even when idle; at most `default_pool_size`.
    pub min_pool_size: u32,
    /// At least 1.
    pub connect_timeout_ms: u64,
    /// A client waiting longer than this for a server connection gets an error. At least 1.
    pub checkout_timeout_ms: u64,
    /// An idle server connection is closed after this. At least 1.
    pub server_idle_timeout_ms: u64,
    /// A server connection is closed (when idle) after this age. At least 1.
    pub server_lifetime_ms: u64,
    /// An idle client is disconnected after this; 0 = never.
    pub client_idle_timeout_ms: u64,
    /// Graceful shutdown waits this long for open transactions; 0 = close at once.
    pub shutdown_timeout_ms: u64,
    /// More clients get SQLSTATE 53300. At least 1.
    pub max_clients: u32,
    /// Bytes; a larger protocol message ends that client with 08P01. At least
    /// [`MIN_MESSAGE_SIZE`].
    pub max_message_size: u32,
    pub read_write_split: ReadWriteSplit,
    pub load_balancing: LoadBalancing,
    /// At least 1.
    pub healthcheck_interval_ms: u64,
    /// A failing replica is left out this long; 0 = retried at the next check.
    pub ban_time_ms: u64,
    /// Extra function names that make a SELECT a write (built-ins are in the parser).
    pub write_functions: Vec<String>,
    /// Distinct statement texts kept analysed; 0 = no cache.
    pub parse_cache_size: usize,
    /// The admin console's database name; must not be a logical database name.
    pub admin_database: String,
    pub admin_user: String,
    pub admin_password: String,
    /// `host:port` of Prometheus `/metrics`; "" = off.
    pub metrics_listen: String,
    /// Watch both files and reload on change.
    pub hot_reload: bool,
    /// PEM file; set together with `tls_private_key` (both or neither).
    pub tls_certificate: String,
    pub tls_private_key: String,
    /// `require` needs a certificate.
    pub client_tls: ClientTls,
    pub server_tls: ServerTls,
    /// PEM CA bundle for `verify-full`; "" = system roots.
    pub server_tls_ca: String,
    pub log_format: LogFormat,
    /// Transaction mode: pin or refuse session state (see [`SessionStateMode`]).
    pub session_state: SessionStateMode,
    /// A client that has not finished logging in by then is closed; 0 = never.
    pub client_login_timeout_ms: u64,
    /// A client idle inside a transaction this long is closed (25P03); 0 = never.
    pub idle_transaction_timeout_ms: u64,
    /// A statement running longer is cancelled (57014); 0 = never.
    pub query_timeout_ms: u64,
    /// Server connections per (database, server) across all pools; 0 = no cap.
    pub max_db_connections: u32,
    /// Server connections per (user, server) across all pools; 0 = no cap.
    pub max_user_connections: u32,
    /// Replicas further behind take no reads; 0 = no limit.
    pub max_replica_lag_ms: u64,
    /// After a session commits a write, its reads go only where that commit is visible.
    pub read_your_writes: bool,
}

impl Default for General {
    /// SPEC §3 defaults.
    fn default() -> Self {
        General {
            listen: "127.0.0.1:6432".into(),
            workers: 0,
            worker_spread_percent: 70,
            pool_mode: PoolMode::Transaction,
            default_pool_size: 10,
            min_pool_size: 0,
            connect_timeout_ms: 3000,
            checkout_timeout_ms: 5000,
            server_idle_timeout_ms: 600_000,
            server_lifetime_ms: 3_600_000,
            client_idle_timeout_ms: 0,
            shutdown_timeout_ms: 30_000,
            max_clients: 10_000,
            max_message_size: 268_435_456,
            read_write_split: ReadWriteSplit::ExcludePrimary,
            load_balancing: LoadBalancing::RoundRobin,
            healthcheck_interval_ms: 5000,
            ban_time_ms: 30_000,
            write_functions: Vec::new(),
            parse_cache_size: 10_000,
            admin_database: "pgrouter".into(),
            admin_user: "admin".into(),
            admin_password: "change-me".into(),
            metrics_listen: "127.0.0.1:9930".into(),
            hot_reload: true,
            tls_certificate: String::new(),
            tls_private_key: String::new(),
            client_tls: ClientTls::Allow,
            server_tls: ServerTls::Prefer,
            server_tls_ca: String::new(),
            log_format: LogFormat::Text,
            session_state: SessionStateMode::Pin,
            client_login_timeout_ms: 60_000,
            idle_transaction_timeout_ms: 0,
            query_timeout_ms: 0,
            max_db_connections: 0,
            max_user_connections: 0,
            max_replica_lag_ms: 0,
            read_your_writes: false,
        }
    }
}

/// `[jwt]`: present = JWT login enabled. Exactly one of `public_key_file` /
/// `jwks_url` is non-empty (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    /// PEM public key (RSA, EC or Ed25519); "" when `jwks_url` is used.
    pub public_key_file: String,
    /// http(s) URL of a JWKS; "" when `public_key_file` is used.
    pub jwks_url: String,
    pub jwks_cache_ttl_s: u64,
    /// An unknown `kid` triggers at most one JWKS refresh per interval.
    pub jwks_min_refresh_interval_s: u64,
    /// Allow-list; never empty, never "none" or HS* (validated).
    pub algorithms: Vec<String>,
    /// Required `iss` when non-empty.
    pub issuer: String,
    /// Required `aud` when non-empty.
    pub audience: String,
    /// Clock skew allowed on exp/nbf.
    pub leeway_s: u64,
    pub username_claim: String,
    pub role_claim: String,
    /// "" = no claim makes sessions read-only.
    pub read_only_claim: String,
    /// users.toml entry (for each database JWT applies to) that owns JWT sessions' server connections.
    pub connect_as: String,
    /// Empty = any role.
    pub allowed_roles: Vec<String>,
    /// Logical databases JWT sessions may use; empty = all. See [`Jwt::applies_to`].
    pub databases: Vec<String>,
    pub auto_provision: bool,
    pub auto_provision_read_only: bool,
    pub allow_insecure_transport: bool,
    pub disconnect_on_expiry: bool,
    /// Where the section and its key-source keys are in router.toml, for
    /// problems only the server can find (see [`Config::jwt_problem`]);
    /// ignored by [`crate::diff`].
    pub lines: JwtLines,
}

/// Lines of `[jwt]` in router.toml (0 = unknown, e.g. a hand-built config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwtLines {
    /// The `[jwt]` header.
    pub section: usize,
    pub public_key_file: usize,
    pub jwks_url: usize,
    /// `connect_as` and `allowed_roles`: the start-up and reload preflight
    /// reports what the servers say about them at these lines.
    pub connect_as: usize,
    pub allowed_roles: usize,
}

impl Default for Jwt {
    /// SPEC §3 defaults, except `public_key_file`, which defaults to "" so that
    /// exactly one of it and `jwks_url` can be required.
    fn default() -> Self {
        Jwt {
            public_key_file: String::new(),
            jwks_url: String::new(),
            jwks_cache_ttl_s: 300,
            jwks_min_refresh_interval_s: 10,
            algorithms: vec!["RS256".into(), "ES256".into()],
            issuer: String::new(),
            audience: String::new(),
            leeway_s: 0,
            username_claim: "sub".into(),
            role_claim: "role".into(),
            read_only_claim: String::new(),
            connect_as: "authenticator".into(),
            allowed_roles: Vec::new(),
            databases: Vec::new(),
            auto_provision: true,
            auto_provision_read_only: true,
            allow_insecure_transport: false,
            disconnect_on_expiry: true,
            lines: JwtLines::default(),
        }
    }
}

impl Jwt {
    /// Whether JWT sessions may use logical database `db` (`databases = []` means all).
    pub fn applies_to(&self, db: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d == db)
    }
}

/// One `[[databases]]` entry: one PostgreSQL server of a logical database.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEntry {
    /// Logical database name (what clients put in `dbname`).
    pub name: String,
    pub host: String,
    /// Defaults to 5432.
    pub port: u16,
    /// The real database on the server; defaults to `name`.
    pub database_name: String,
    /// Defaults to `primary`.
    pub role: ServerRole,
    /// Defaults to 0.
    pub shard: u32,
    /// Line of the `[[databases]]` header in router.toml (for messages; ignored by [`crate::diff`]).
    pub line: usize,
}

/// One `[[sharded_tables]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedTable {
    /// Logical database (validated to exist).
    pub database: String,
    /// Table name; `None` = any table that has `column`.
    pub name: Option<String>,
    /// Schema; `None` (`""` in the file) = the table in any schema.
    pub schema: Option<String>,
    pub column: String,
    /// Defaults to `bigint`.
    pub data_type: ShardKeyType,
    /// Defaults to `hash`.
    pub mapping: ShardMapping,
    /// list/range: the shard of a value no rule covers; `None` (-1) = refuse (22023).
    pub default_shard: Option<u32>,
    /// list/range rules, in order (the first match wins); empty for hash.
    pub rules: Vec<ShardRule>,
}

/// One `[[sharded_tables.rules]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRule {
    /// list: the key values (as text) that live on `shard`.
    pub values: Vec<String>,
    /// range: inclusive lower bound; `None` = unbounded.
    pub from: Option<i64>,
    /// range: exclusive upper bound; `None` = unbounded.
    pub to: Option<i64>,
    pub shard: u32,
}

/// One `[[reference_tables]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceTables {
    pub database: String,
    /// Table names, optionally `schema.table`.
    pub names: Vec<String>,
}

/// The `[general]` sharding keys (kept apart from [`General`], which is
/// about pools and logins).
#[derive(Debug, Clone, PartialEq)]
pub struct Sharding {
    pub cross_shard: CrossShard,
    pub two_phase_commit: bool,
    /// Database on shard 0's primary for the 2PC decision table; "" = that shard's `database_name`.
    pub coordinator_database: String,
    /// Names this router in the ids of its two-phase transactions (shown in
    /// `pg_prepared_xacts`); "" = host name and listen port (the server
    /// resolves it). Validated: at most [`INSTANCE_ID_MAX`] characters of
    /// `A-Z a-z 0-9 . _ : -`.
    pub instance_id: String,
}

/// Longest `[general] instance_id`: keeps a transaction id well inside
/// PostgreSQL's 200-byte limit for `PREPARE TRANSACTION` ids.
pub const INSTANCE_ID_MAX: usize = 63;

/// Whether `c` may appear in an instance id: characters that need no quoting
/// in a transaction id and read well in logs.
pub fn instance_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl Default for Sharding {
    /// SPEC §3 defaults.
    fn default() -> Self {
        Sharding {
            cross_shard: CrossShard::Allow,
            two_phase_commit: true,
            coordinator_database: String::new(),
            instance_id: String::new(),
        }
    }
}

/// One `[[users]]` entry of users.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// The startup `user`.
    pub name: String,
    /// Logical database this entry is for (validated to exist).
    pub database: String,
    /// Plain, "md5..." or "SCRAM-SHA-256$..." secret; see [`password_kind`].
    pub password: Option<String>,
    /// Defaults to `scram`.
    pub auth: AuthMethod,
    /// Role used on server connections; defaults to `name`.
    pub server_user: String,
    /// Defaults to `password` when that is plain text.
    pub server_password: Option<String>,
    /// Overrides `[general] default_pool_size`.
    pub pool_size: Option<u32>,
    /// Overrides `[general] pool_mode`.
    pub pool_mode: Option<PoolMode>,
    /// Every statement to replicas; writes refused.
    pub read_only: bool,
    /// `false`: cannot log in directly (e.g. a `connect_as` user). Defaults to true.
    pub login: bool,
    /// Line of the `[[users]]` header in users.toml (for messages; ignored by [`crate::diff`]).
    pub line: usize,
}

/// What kind of secret a `password` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasswordKind {
    Plain,
    /// `md5` + 32 hex digits: md5(password || username), as PostgreSQL stores it.
    Md5,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    Scram,
}

/// Classifies a password the way PostgreSQL classifies `rolpassword`:
/// "md5" followed by exactly 32 hex digits is an md5 secret, a "SCRAM-SHA-256$"
/// prefix is a SCRAM secret, anything else is plain text. (Whether a SCRAM
/// secret is well formed is checked by validation, not here.)
pub fn password_kind(s: &str) -> PasswordKind {
    if let Some(hex) = s.strip_prefix("md5") {
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return PasswordKind::Md5;
        }
    }
    if s.starts_with("SCRAM-SHA-256$") {
        return PasswordKind::Scram;
    }
    PasswordKind::Plain
}

impl Config {
    /// Distinct logical database names, in file order.
    pub fn logical_databases(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for entry in &self.databases {
            if !names.contains(&entry.name.as_str()) {
                names.push(&entry.name);
            }
        }
        names
    }

    /// All server entries of logical database `db`, in file order.
    pub fn servers_of(&self, db: &str) -> Vec<&ServerEntry> {
        self.databases.iter().filter(|e| e.name == db).collect()
    }

    /// Number of shards of `db` (shards are validated to be 0..n-1); 0 if unknown.
    pub fn shard_count(&self, db: &str) -> u32 {
        self.databases
            .iter()
            .filter(|e| e.name == db)
            .map(|e| e.shard.saturating_add(1))
            .max()
            .unwrap_or(0)
    }

    /// The users.toml entry for (`name`, `db`).
    pub fn user(&self, name: &str, db: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.name == name && u.database == db)
    }

    /// `user.pool_size`, else `[general] default_pool_size`.
    pub fn pool_size_for(&self, user: &User) -> u32 {
        user.pool_size.unwrap_or(self.general.default_pool_size)
    }

    /// `user.pool_mode`, else `[general] pool_mode`.
    pub fn pool_mode_for(&self, user: &User) -> PoolMode {
        user.pool_mode.unwrap_or(self.general.pool_mode)
    }

    /// A problem with `[general]`'s `key` found after loading (a file it
    /// names does not load), located as [`load`] locates its own:
    /// `router.toml:12: general.server_tls_ca: ...`.
    ///
    /// [`load`]: crate::load
    pub fn general_problem(&self, key: &str, message: impl Into<String>) -> crate::Problem {
        self.router_problem("general", key, self.general_lines.line_of(key), message)
    }

    /// A problem with `[jit]`'s `key` ("api_url" or "api_ca") that only the
    /// server finds (the CA file does not load), located as [`load`]
    /// locates its own: `router.toml:40: jit.api_ca: ...`.
    ///
    /// [`load`]: crate::load
    pub fn jit_problem(&self, key: &str, message: impl Into<String>) -> crate::Problem {
        let lines = self.jit_lines;
        let line = match key {
            "api_url" if lines.api_url != 0 => lines.api_url,
            "api_ca" if lines.api_ca != 0 => lines.api_ca,
            _ => lines.section,
        };
        self.router_problem("jit", key, line, message)
    }

    /// A problem with `[auth_query] query` that only the router finds (its
    /// SQL is checked with the router's parser), located as [`load`]
    /// locates its own: `router.toml:52: auth_query.query: ...`.
    ///
    /// [`load`]: crate::load
    pub fn auth_query_problem(&self, message: impl Into<String>) -> crate::Problem {
        self.router_problem("auth_query", "query", self.auth_query_line, message)
    }

    /// A problem with `[jwt]` key `key` (e.g. "public_key_file") that only
    /// the server can find — this crate reads no other files, a PEM key is
    /// parsed by the verifier, and the preflight asks the servers about
    /// `connect_as` and `allowed_roles` — located like the problems
    /// [`load`] reports, so a DBA sees `router.toml:31:
    /// jwt.public_key_file: ...` at start-up, in `pgrouter check` and in
    /// the log of a refused reload. Keys without a recorded line are
    /// reported at the `[jwt]` header; an empty `key` names the section.
    ///
    /// [`load`]: crate::load
    pub fn jwt_problem(&self, key: &str, message: impl Into<String>) -> crate::Problem {
        let lines = self.jwt.as_ref().map(|j| j.lines).unwrap_or_default();
        let line = match key {
            "public_key_file" if lines.public_key_file != 0 => lines.public_key_file,
            "jwks_url" if lines.jwks_url != 0 => lines.jwks_url,
            "connect_as" if lines.connect_as != 0 => lines.connect_as,
            "allowed_roles" if lines.allowed_roles != 0 => lines.allowed_roles,
            _ => lines.section,
        };
        self.router_problem("jwt", key, line, message)
    }

    /// A problem at `line` of router.toml with `section`'s `key`, named
    /// `section.key` (the section alone for an empty key).
    fn router_problem(
        &self,
        section: &str,
        key: &str,
        line: usize,
        message: impl Into<String>,
    ) -> crate::Problem {
        crate::Problem {
            file: self.router_path.clone(),
            line,
            key: if key.is_empty() {
                section.into()
            } else {
                format!("{section}.{key}")
            },
            message: message.into(),
        }
    }
}
