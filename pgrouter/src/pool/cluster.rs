use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrouter_config::{
    AuthMethod, Config, LoadBalancing, PoolMode, ReadWriteSplit, ServerEntry, User,
};

use super::health::ServerHealth;
use super::{Pool, PoolSettings};
use crate::auth::pass_through::{CredentialSlot, PassThrough};
use crate::metrics::snapshot::PoolLabels;
use crate::metrics::Metrics;
use crate::router::Role;
use crate::server::ServerTarget;

/// The pools of one user on one logical database, shard by shard.
pub struct UserPools {
    /// The role its server connections log in as.
    pub server_user: String,
    pub mode: PoolMode,
    pub shards: Vec<ShardPools>,
    pub balancing: Balancing,
    /// What its server connections log in with when the files have no
    /// password for that: learnt users, and users.toml entries whose
    /// `password` is a SCRAM secret or md5 hash with no `server_password`
    /// (filled by their clients' logins, as PgBouncer does with an
    /// auth_file of secrets).
    pub credential: Option<Arc<CredentialSlot>>,
    /// Made at a login (`[auth_query]`, `[jit]`), not from a users.toml
    /// entry. A session on such pools never moves to an entry's pools that
    /// a reload gave the same name (see `client/outbound.rs`).
    pub learnt: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Balancing {
    pub split: ReadWriteSplit,
    pub method: LoadBalancing,
}

/// One server of a shard as seen by one user: that user's pool to it, and
/// the server's shared health.
pub struct ServerSlot {
    pub pool: Arc<Pool>,
    pub health: Arc<ServerHealth>,
}

/// Which replicas may take a read (SPEC §5 Routing: replica lag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadLimits {
    /// `max_replica_lag_ms`: replicas further behind by their last health
    /// check are left out; 0 = no limit.
    pub max_lag_ms: u64,
    /// Read-your-writes: only replicas that have replayed this WAL position
    /// (`u64::MAX`: none qualifies yet, the read goes to the primary).
    pub min_lsn: Option<u64>,
}

impl ReadLimits {
    fn allow(&self, health: &ServerHealth) -> bool {
        (self.max_lag_ms == 0 || health.lag_ms() <= self.max_lag_ms)
            && self
                .min_lsn
                .is_none_or(|min| health.lsn().is_some_and(|lsn| lsn >= min))
    }
}

/// One shard: its primary and its replicas.
pub struct ShardPools {
    pub servers: Vec<ServerSlot>,
    next: AtomicUsize,
}

impl ShardPools {
    /// Chooses a server for `role`. Reads go to healthy replicas (and the
    /// primary too with `include_primary`), or to the primary when none is
    /// left. `exclude` skips servers that just failed.
    pub fn pick(
        &self,
        role: Role,
        balancing: Balancing,
        exclude: &[usize],
        limits: ReadLimits,
    ) -> Option<&ServerSlot> {
        let usable = |s: &&ServerSlot| !exclude.contains(&(Arc::as_ptr(&s.pool) as usize));
        // Several may claim it after a failover (see `health.rs`): the
        // strongest claim wins, the first listed among equals.
        let primary = || {
            self.servers
                .iter()
                .filter(usable)
                .filter(|s| s.health.is_primary())
                .min_by_key(|s| std::cmp::Reverse(s.health.primary_rank()))
        };
        if role == Role::Primary {
            return primary();
        }
        // Counted, then indexed: no list is built on this per-transaction path.
        let is_candidate = |s: &&ServerSlot| {
            usable(s)
                && if s.health.is_primary() {
                    balancing.split == ReadWriteSplit::IncludePrimary
                } else {
                    !s.health.is_banned() && limits.allow(&s.health)
                }
        };
        let candidates = || self.servers.iter().filter(is_candidate);
        let count = candidates().count();
        if count == 0 {
            return primary();
        }
        let i = match balancing.method {
            LoadBalancing::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % count,
            LoadBalancing::Random => rand::random::<usize>() % count,
            LoadBalancing::LeastActive => {
                return candidates().min_by_key(|s| {
                    let st = s.pool.stats();
                    st.active + st.waiting
                })
            }
        };
        candidates().nth(i)
    }
}

/// Every pool the router runs, keyed by (user, logical database), and the
/// health of every server.
#[derive(Default)]
pub struct Cluster {
    users: HashMap<(String, String), Arc<UserPools>>,
    pub health: Vec<Arc<ServerHealth>>,
    /// `max_db_connections` / `max_user_connections` caps by what they cap
    /// (kept across reloads, so connections already open stay counted).
    /// Behind a lock: learnt pools, made at logins, join (or add) caps too.
    pub(super) caps: parking_lot::Mutex<HashMap<String, Arc<super::ConnectionCap>>>,
    /// Pools made at login for users the files do not give credentials
    /// for: auth_query users and JIT token logins. Keyed like `users`, by
    /// [`Cluster::learnt_pools`]; kept across reloads, dropped once unused
    /// (see `learnt_sweep.rs`).
    pub(super) learnt: parking_lot::Mutex<HashMap<(String, String), LearntPools>>,
}

/// The pools of one learnt user, and the credentials they log in with.
pub(super) struct LearntPools {
    pub(super) pools: Arc<UserPools>,
    pub(super) credential: Arc<CredentialSlot>,
    /// The last login that took these pools (kept across reloads): they are
    /// dropped only once unused for a while after it.
    pub(super) last_login: Instant,
}

/// Whether a users.toml entry gets pools of its own. A JWT-only entry
/// (`auth = "jwt"`) does not: its sessions run on the connect_as user's
/// pools (`client/login.rs`), and it has no server credentials, so pools
/// of its own would only show as SHOW POOLS rows and metric series that
/// never move. `password_or_jwt` entries keep theirs (for password logins).
fn has_own_pools(config: &Config, user: &User) -> bool {
    user.auth != AuthMethod::Jwt
        || config
            .jwt
            .as_ref()
            .is_some_and(|j| j.connect_as == user.name)
}

/// The name learnt pools would rather go by (in SHOW POOLS, metrics, and
/// sessions' `pools_user`): the user's own name, or `"<name> (jit)"` for JIT
/// logins of a user that also has a users.toml entry (whose pools keep the
/// name). A PostgreSQL role may itself be called `"<name> (jit)"`, so the
/// name is only a wish: [`Cluster::learnt_pools`] settles the real one.
fn learnt_pools_name(config: &Config, user: &str, database: &str) -> String {
    match config.user(user, database) {
        Some(_) => format!("{user} (jit)"),
        None => user.to_string(),
    }
}

/// How many names [`Cluster::learnt_pools`] tries before giving up (only a
/// crowd of roles named `"x (jit)"`, `"x (jit) #2"`... gets that far).
const LEARNT_NAME_TRIES: usize = 100;

impl Cluster {
    /// One pool per (user, database, shard, server) for every users.toml
    /// entry; pools connect lazily (or up to `min_pool_size` in maintenance).
    /// On a reload, `previous` lends its pools and health records: a pool
    /// whose server and settings did not change is kept with its
    /// connections (resized in place when only its size changed), so a
    /// reload costs the clients nothing.
    pub fn build(config: &Config, previous: Option<&Cluster>, metrics: &Arc<Metrics>) -> Cluster {
        let mut health: HashMap<String, Arc<ServerHealth>> = HashMap::new();
        let mut health_list = Vec::new();
        for server in &config.databases {
            let key = health_key(server);
            // Health checks log in with server credentials that exist: an
            // entry with a server password first, else one without any
            // password (trust); JWT-only entries have no server credentials.
            let of_db = || config.users.iter().filter(|u| u.database == server.name);
            let check_target = of_db()
                .find(|u| u.server_password.is_some())
                .or_else(|| {
                    of_db().find(|u| {
                        u.password.is_none()
                            && !matches!(u.auth, AuthMethod::Jwt | AuthMethod::PasswordOrJwt)
                    })
                })
                .map(|u| target_for(server, u, &config.general));
            let ban_time = Duration::from_millis(config.general.ban_time_ms);
            let reused = previous
                .and_then(|p| p.health.iter().find(|h| h.name == key))
                .filter(|h| {
                    h.configured == server.role
                        && h.check_target == check_target
                        && h.ban_time == ban_time
                });
            let h = match reused {
                Some(h) => h.clone(),
                None => Arc::new(ServerHealth::new(
                    key.clone(),
                    server.role,
                    check_target,
                    ban_time,
                    metrics.clone(),
                )),
            };
            health_list.push(h.clone());
            health.insert(key, h);
        }
        let mut users = HashMap::new();
        let mut caps = HashMap::new();
        for user in config.users.iter().filter(|u| has_own_pools(config, u)) {
            let credential = secret_credential(user, previous);
            let pools = user_pools(
                config,
                user,
                &health,
                previous,
                metrics,
                credential.as_ref(),
            );
            put_under_caps(&pools, config, previous, &mut caps);
            users.insert((user.name.clone(), user.database.clone()), Arc::new(pools));
        }
        let mut learnt = HashMap::new();
        let learning = config.auth_query.is_some() || config.jit.is_some();
        let databases = config.logical_databases();
        // Copied out first: reusing their pools locks the previous map again.
        let carried: Vec<_> = previous
            .map(|p| {
                p.learnt
                    .lock()
                    .iter()
                    .map(|(k, l)| {
                        let server_user = l.pools.server_user.clone();
                        (k.clone(), server_user, l.credential.clone(), l.last_login)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for ((name, db), server_user, credential, last_login) in carried {
            let key = (name, db);
            if !learning || !databases.contains(&key.1.as_str()) || users.contains_key(&key) {
                continue;
            }
            let user = learnt_user(config, &key.0, &key.1, &server_user);
            let mut pools =
                user_pools(config, &user, &health, previous, metrics, Some(&credential));
            pools.learnt = true;
            put_under_caps(&pools, config, previous, &mut caps);
            let pools = Arc::new(pools);
            learnt.insert(
                key,
                LearntPools {
                    pools,
                    credential,
                    last_login,
                },
            );
        }
        Cluster {
            users,
            health: health_list,
            caps: parking_lot::Mutex::new(caps),
            learnt: parking_lot::Mutex::new(learnt),
        }
    }

    /// The pools of a user who just logged in with credentials the files
    /// do not have (`[auth_query]`, `[jit]`), made at the first login, sized
    /// by `default_pool_size`, and the name they go by. `credential` (what
    /// this login proved) becomes what new server connections of these
    /// pools log in with.
    ///
    /// Pools are found by name, but a name alone does not say whose they
    /// are: the JIT pools of entry `app` are named `app (jit)`, which is
    /// also a valid PostgreSQL role name. Pools are only ever shared by
    /// logins of the role they log in as (`server_user`); a name taken by
    /// another role, or by a users.toml entry, is passed over for
    /// `"<name> #2"`, `"<name> #3"`... `None` when every try is taken.
    pub fn learnt_pools(
        &self,
        config: &Config,
        metrics: &Arc<Metrics>,
        server_user: &str,
        database: &str,
        credential: PassThrough,
    ) -> Option<(String, Arc<UserPools>)> {
        let base = learnt_pools_name(config, server_user, database);
        let mut learnt = self.learnt.lock();
        for n in 1..=LEARNT_NAME_TRIES {
            let name = match n {
                1 => base.clone(),
                _ => format!("{base} #{n}"),
            };
            let key = (name, database.to_string());
            if self.users.contains_key(&key) {
                continue;
            }
            if let Some(l) = learnt.get_mut(&key) {
                if l.pools.server_user != server_user {
                    continue;
                }
                l.credential.update(credential);
                l.last_login = Instant::now();
                return Some((key.0, l.pools.clone()));
            }
            let slot = Arc::new(CredentialSlot::default());
            slot.update(credential);
            let health: HashMap<String, Arc<ServerHealth>> = self
                .health
                .iter()
                .map(|h| (h.name.clone(), h.clone()))
                .collect();
            let user = learnt_user(config, &key.0, database, server_user);
            let mut pools = user_pools(config, &user, &health, None, metrics, Some(&slot));
            pools.learnt = true;
            // Their server connections count against `max_db_connections` /
            // `max_user_connections` like those of users.toml entries.
            put_under_caps(&pools, config, None, &mut self.caps.lock());
            let pools = Arc::new(pools);
            learnt.insert(
                key.clone(),
                LearntPools {
                    pools: pools.clone(),
                    credential: slot,
                    last_login: Instant::now(),
                },
            );
            return Some((key.0, pools));
        }
        None
    }

    /// A pool of the previous cluster for the same user, database and server.
    fn find_pool(&self, user: &str, database: &str, target: &ServerTarget) -> Option<Arc<Pool>> {
        let key = (user.to_string(), database.to_string());
        let find = |pools: &UserPools| {
            pools
                .shards
                .iter()
                .flat_map(|s| s.servers.iter())
                .map(|s| &s.pool)
                .find(|p| p.target == *target)
                .cloned()
        };
        match self.users.get(&key) {
            Some(pools) => find(pools),
            None => self.learnt.lock().get(&key).and_then(|l| find(&l.pools)),
        }
    }

    /// Every (user, database) pair served, learnt users included.
    pub fn entries(&self) -> Vec<((String, String), Arc<UserPools>)> {
        let mut out: Vec<_> = self
            .users
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.extend(
            self.learnt
                .lock()
                .iter()
                .map(|(k, l)| (k.clone(), l.pools.clone())),
        );
        out
    }

    /// The pools of a users.toml entry, else of a learnt user (by its
    /// [`Cluster::learnt_pools`]).
    pub fn pools_for(&self, user: &str, database: &str) -> Option<Arc<UserPools>> {
        let key = (user.to_string(), database.to_string());
        match self.users.get(&key) {
            Some(pools) => Some(pools.clone()),
            None => self.learnt.lock().get(&key).map(|l| l.pools.clone()),
        }
    }

    pub fn all_pools(&self) -> Vec<Arc<Pool>> {
        self.entries()
            .iter()
            .flat_map(|(_, u)| u.shards.iter())
            .flat_map(|s| s.servers.iter().map(|slot| slot.pool.clone()))
            .collect()
    }
}

/// Puts every pool of `pools` under the caps it belongs to (see [`caps_of`]).
fn put_under_caps(
    pools: &UserPools,
    config: &Config,
    previous: Option<&Cluster>,
    caps: &mut HashMap<String, Arc<super::ConnectionCap>>,
) {
    for pool in pools
        .shards
        .iter()
        .flat_map(|s| s.servers.iter().map(|s| &s.pool))
    {
        pool.set_caps(caps_of(pool, config, previous, caps));
    }
}

/// The caps `pool` is under, made (or taken from the previous cluster) as
/// needed: per database and server, and per server user and server.
fn caps_of(
    pool: &Arc<Pool>,
    config: &Config,
    previous: Option<&Cluster>,
    caps: &mut HashMap<String, Arc<super::ConnectionCap>>,
) -> Vec<Arc<super::ConnectionCap>> {
    let g = &config.general;
    let t = &pool.target;
    let wanted = [
        (
            g.max_db_connections,
            format!("database {} on {}", t.database, t.addr()),
        ),
        (
            g.max_user_connections,
            format!("user {} on {}", t.user, t.addr()),
        ),
    ];
    let mut out = Vec::new();
    for (max, key) in wanted {
        if max == 0 {
            continue;
        }
        let cap = caps
            .entry(key.clone())
            .or_insert_with(|| {
                previous
                    .and_then(|p| p.caps.lock().get(&key).cloned())
                    .unwrap_or_else(|| super::ConnectionCap::new(key.clone(), max as usize))
            })
            .clone();
        cap.set_max(max as usize);
        cap.add_pool(pool);
        out.push(cap);
    }
    out
}

fn health_key(server: &ServerEntry) -> String {
    format!(
        "{}/{}/{}:{}/{}",
        server.name, server.shard, server.host, server.port, server.database_name
    )
}

/// A stand-in users.toml entry for a learnt user: no password in the files,
/// every setting from `[general]`, except for the JIT logins of a user that
/// has an entry: its `pool_size` and `pool_mode` are the entry's (a user
/// whose entry says `pool_mode = "session"` gets session pooling however
/// it logs in).
fn learnt_user(config: &Config, name: &str, database: &str, server_user: &str) -> User {
    let entry = config.user(server_user, database);
    User {
        name: name.to_string(),
        database: database.to_string(),
        password: None,
        auth: AuthMethod::Scram,
        server_user: server_user.to_string(),
        server_password: None,
        pool_size: entry.and_then(|e| e.pool_size),
        pool_mode: entry.and_then(|e| e.pool_mode),
        read_only: false,
        login: true,
        line: 0,
    }
}

fn target_for(
    server: &ServerEntry,
    user: &User,
    general: &pgrouter_config::General,
) -> ServerTarget {
    ServerTarget {
        host: server.host.clone(),
        port: server.port,
        database: server.database_name.clone(),
        user: user.server_user.clone(),
        password: user.server_password.clone(),
        pass_through: None,
        tls: crate::net::tls::ServerTlsPolicy::from_general(general),
    }
}

fn user_pools(
    config: &Config,
    user: &User,
    health: &HashMap<String, Arc<ServerHealth>>,
    previous: Option<&Cluster>,
    metrics: &Arc<Metrics>,
    learnt: Option<&Arc<CredentialSlot>>,
) -> UserPools {
    let g = &config.general;
    let settings = PoolSettings {
        size: config.pool_size_for(user),
        min_size: g.min_pool_size,
        connect_timeout: Duration::from_millis(g.connect_timeout_ms),
        checkout_timeout: Duration::from_millis(g.checkout_timeout_ms),
        idle_timeout: Duration::from_millis(g.server_idle_timeout_ms),
        lifetime: Duration::from_millis(g.server_lifetime_ms),
        login_backoff: Duration::from_millis(g.ban_time_ms),
    };
    let shard_count = config.shard_count(&user.database) as usize;
    let mut shards: Vec<ShardPools> = (0..shard_count)
        .map(|_| ShardPools {
            servers: Vec::new(),
            next: AtomicUsize::new(0),
        })
        .collect();
    for server in config.servers_of(&user.database) {
        let Some(shard) = shards.get_mut(server.shard as usize) else {
            continue;
        };
        let Some(h) = health.get(&health_key(server)) else {
            continue;
        };
        let mut target = target_for(server, user, g);
        target.pass_through = learnt.cloned();
        // A pool for the same server and credentials is kept whatever its
        // sizes and timeouts: they change in place.
        let kept = previous.and_then(|p| p.find_pool(&user.name, &user.database, &target));
        let pool = match kept {
            Some(pool) => {
                pool.reconfigure(settings.clone());
                pool
            }
            None => {
                let name = format!(
                    "{}@{}/{}/{}",
                    user.name,
                    user.database,
                    server.shard,
                    target.addr()
                );
                let labels = PoolLabels {
                    database: user.database.clone(),
                    user: user.name.clone(),
                    shard: server.shard,
                    role: server.role.as_str().to_string(),
                    host: server.host.clone(),
                    port: server.port,
                };
                Pool::new(
                    name,
                    target,
                    settings.clone(),
                    metrics.pool(&labels),
                    labels,
                )
            }
        };
        if h.check_target.as_ref() == Some(&pool.target) {
            h.set_check_pool(&pool);
        }
        shard.servers.push(ServerSlot {
            pool,
            health: h.clone(),
        });
    }
    UserPools {
        server_user: user.server_user.clone(),
        mode: config.pool_mode_for(user),
        shards,
        balancing: Balancing {
            split: g.read_write_split,
            method: g.load_balancing,
        },
        credential: learnt.cloned(),
        learnt: false,
    }
}

/// The credential slot of a users.toml entry whose servers are logged in to
/// with what its clients prove (see [`UserPools::credential`]): the one of
/// the previous cluster when there is one, so a reload keeps what was
/// learnt. An md5 hash answers md5 challenges from the start.
fn secret_credential(user: &User, previous: Option<&Cluster>) -> Option<Arc<CredentialSlot>> {
    if user.server_password.is_some() || user.auth == AuthMethod::Jwt {
        return None;
    }
    let stored = crate::auth::StoredPassword::parse(user.password.as_deref()?);
    let md5_hash = match stored {
        crate::auth::StoredPassword::Plain(_) => return None,
        crate::auth::StoredPassword::Md5(hash) => Some(hash),
        crate::auth::StoredPassword::Scram(_) => None,
    };
    let slot = previous
        .and_then(|p| p.users.get(&(user.name.clone(), user.database.clone())))
        .and_then(|pools| pools.credential.clone())
        .unwrap_or_default();
    slot.update(PassThrough {
        md5_hash,
        ..PassThrough::default()
    });
    Some(slot)
}
