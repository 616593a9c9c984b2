//! Two-phase commit for transactions that write on several shards (SPEC §5
//! "Sharding", Atomicity; issue 17 item 5).
//!
//! - `gid.rs`: transaction ids that never collide across instances and restarts;
//! - `decide.rs`: the rules (pure) — the decision table as the one arbiter;
//! - `store.rs`: the decision records in `coordinator_database`;
//! - `coordinator.rs`: [`Coordinator::commit`], PREPARE → record → COMMIT PREPARED;
//! - `recovery.rs`: finishing what a crash left, by any router instance;
//! - `checks.rs`: start-up report of shards without `max_prepared_transactions`;
//! - `hooks.rs`: pauses for crash tests.
//!
//! A session reaches its database's coordinator through the runtime:
//! `rt.twophase.coordinator(database)`.

mod checks;
mod coordinator;
pub mod decide;
pub mod gid;
mod hooks;
mod recovery;
pub mod selftest;
mod store;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use pgrouter_config::{AuthMethod, Config, User};

pub use checks::prepared_transactions_findings;
pub use coordinator::{CommitError, Coordinator};
pub use recovery::{Recovery, RECOVERY_INTERVAL};

use crate::metrics::Metrics;
use crate::pool::Cluster;
use crate::state::State;

/// What outlives a reload: the ids of commits running in this process (so
/// its own recovery leaves them alone, whichever runtime started them) and
/// the transaction counter.
#[derive(Default)]
pub struct Shared {
    in_flight: parking_lot::Mutex<HashSet<String>>,
    next: AtomicU64,
}

impl Shared {
    /// Marks `gid` as being committed here until the guard is dropped
    /// (also when the commit's future is dropped half-way: recovery then
    /// finishes the transaction from the record).
    fn enter(self: &Arc<Self>, gid: &str) -> InFlight {
        self.in_flight.lock().insert(gid.to_string());
        InFlight {
            shared: self.clone(),
            gid: gid.to_string(),
        }
    }

    fn is_in_flight(&self, gid: &str) -> bool {
        self.in_flight.lock().contains(gid)
    }
}

struct InFlight {
    shared: Arc<Shared>,
    gid: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.lock().remove(&self.gid);
    }
}

/// The coordinators of a runtime: one per logical database with several
/// shards.
#[derive(Default)]
pub struct Coordinators {
    by_database: HashMap<String, Arc<Coordinator>>,
    /// Sharded databases with no coordinator, and why.
    unavailable: HashMap<String, String>,
    shared: Arc<Shared>,
}

impl Coordinators {
    /// Builds them for `config` over `cluster`'s pools; `previous` (the
    /// runtime being replaced) passes on what must outlive a reload.
    pub fn build(
        config: &Config,
        cluster: &Cluster,
        metrics: &Arc<Metrics>,
        previous: Option<&Coordinators>,
    ) -> Coordinators {
        let shared = previous.map(|p| p.shared.clone()).unwrap_or_default();
        let instance = gid::instance_name(
            &config.sharding.instance_id,
            &gid::host_name(),
            &config.general.listen,
        );
        let timeout = Duration::from_millis(config.general.connect_timeout_ms);
        let mut by_database = HashMap::new();
        let mut unavailable = HashMap::new();
        for db in config.logical_databases() {
            if config.shard_count(db) < 2 {
                continue;
            }
            let pools = coordinator_user(config, db).and_then(|u| cluster.pools_for(&u.name, db));
            let Some(pools) = pools else {
                unavailable.insert(
                    db.to_string(),
                    format!("two-phase commit for database \"{db}\" needs a users.toml entry for it with server credentials (server_password, or a plain password)"),
                );
                continue;
            };
            let store = Arc::new(store::DecisionStore::new(
                pools.clone(),
                db.to_string(),
                config.sharding.coordinator_database.clone(),
                timeout,
            ));
            let recovery = Recovery::new(
                db.to_string(),
                store.clone(),
                pools,
                shared.clone(),
                metrics.clone(),
                timeout,
            );
            let c = Coordinator::new(
                db.to_string(),
                store,
                instance.clone(),
                shared.clone(),
                metrics.clone(),
                recovery,
            );
            by_database.insert(db.to_string(), Arc::new(c));
        }
        Coordinators {
            by_database,
            unavailable,
            shared,
        }
    }

    /// The coordinator of `database`, or the error a multi-shard commit on
    /// it gets (55000).
    pub fn coordinator(&self, database: &str) -> Result<&Arc<Coordinator>, CommitError> {
        if let Some(c) = self.by_database.get(database) {
            return Ok(c);
        }
        let why = self.unavailable.get(database).cloned().unwrap_or_else(|| {
            format!("database \"{database}\" has a single shard: two-phase commit does not apply")
        });
        Err(CommitError::new("55000", why))
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Coordinator>> {
        self.by_database.values()
    }

    /// Why a sharded database has no coordinator (for start-up checks).
    pub fn problems(&self) -> impl Iterator<Item = &String> {
        self.unavailable.values()
    }
}

/// The users.toml entry whose server logins the coordinator uses: `[jwt]
/// connect_as` when JWT applies to the database (it can SET ROLE to the
/// roles JWT sessions run as), else the first entry with a server password,
/// else one that logs in without any (trust).
fn coordinator_user<'c>(config: &'c Config, db: &str) -> Option<&'c User> {
    let has_server_login = |u: &&User| {
        u.server_password.is_some()
            || (u.password.is_none()
                && !matches!(u.auth, AuthMethod::Jwt | AuthMethod::PasswordOrJwt))
    };
    let jwt_user = config
        .jwt
        .as_ref()
        .filter(|j| j.applies_to(db))
        .and_then(|j| config.user(&j.connect_as, db))
        .filter(has_server_login);
    let of_db = || config.users.iter().filter(|u| u.database == db);
    jwt_user
        .or_else(|| of_db().find(|u| u.server_password.is_some()))
        .or_else(|| of_db().find(has_server_login))
}

/// A pass stuck on a server that stopped answering is abandoned after
/// this (its connections are dropped) and tried again at the next interval.
const PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// Recovery for every sharded database, at start-up and then every
/// [`RECOVERY_INTERVAL`] (with the runtime in force at each pass). Runs on
/// the accepting thread, like the health checks.
pub async fn run_recovery(state: Arc<State>) {
    let mut first = true;
    loop {
        if *state.shutdown.borrow() {
            return;
        }
        let rt = state.rt();
        for c in rt.twophase.all() {
            if first && rt.config.sharding.two_phase_commit {
                if let Err(e) = c.start().await {
                    tracing::warn!(database = c.database(), error = %e, "two-phase commit not ready yet");
                }
            }
            c.recovery()
                .pass_within(&rt.config, &rt.cluster, PASS_TIMEOUT)
                .await;
        }
        first = false;
        drop(rt);
        crate::timer::sleep(RECOVERY_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::coordinator_user;

    const ROUTER: &str = r#"
[[databases]]
name = "app"
host = "h0"
shard = 0

[[databases]]
name = "app"
host = "h1"
shard = 1
"#;

    fn config(router_extra: &str, users: &str) -> pgrouter_config::Config {
        let router = format!("{router_extra}\n{ROUTER}");
        match pgrouter_config::parse(
            Path::new("router.toml"),
            &router,
            Path::new("users.toml"),
            users,
        ) {
            Ok(c) => c,
            Err(p) => panic!("{p:?}"),
        }
    }

    const USERS: &str = r#"
[[users]]
name = "hashed"
database = "app"
auth = "md5"
password = "md5a3556571e93b0d20722ba62be61e8c2d"

[[users]]
name = "first"
database = "app"
password = "secret"

[[users]]
name = "authenticator"
database = "app"
password = "s2"
login = false
"#;

    #[test]
    fn coordinator_logs_in_with_server_credentials() {
        let c = config("", USERS);
        let u = coordinator_user(&c, "app").map(|u| u.name.as_str());
        assert_eq!(
            u,
            Some("first"),
            "the first entry with a server password (an md5 secret is none)"
        );
    }

    #[test]
    fn jwt_connect_as_is_preferred() {
        let jwt = "[jwt]\npublic_key_file = \"k.pem\"\nconnect_as = \"authenticator\"\n";
        let c = config(jwt, USERS);
        let u = coordinator_user(&c, "app").map(|u| u.name.as_str());
        assert_eq!(u, Some("authenticator"));
    }

    #[test]
    fn no_server_credentials_no_coordinator() {
        let users = "[[users]]\nname = \"jwtonly\"\ndatabase = \"app\"\nauth = \"jwt\"\n";
        let jwt = "[jwt]\npublic_key_file = \"k.pem\"\nconnect_as = \"jwtonly\"\n";
        let c = config(jwt, users);
        assert!(coordinator_user(&c, "app").is_none());
    }
}
