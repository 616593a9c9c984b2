//! Dropping the pools of learnt users (`[auth_query]`, `[jit]`) once they
//! are unused, so that a router serving many distinct such users does not
//! keep a set of pools (SHOW POOLS rows, metric series, caps) for every
//! user that ever logged in.
//!
//! The rule, checked by the maintenance task every second: a learnt user's
//! pools go when no client session is on them, none of their pools has a
//! server connection (open, being opened, checked out or waited for), and
//! no login took them for [`learnt_keep_for`] (`server_idle_timeout_ms`).
//! With a non-zero idle timeout an idle connection is closed after that
//! long unused anyway, so the pools go about when their last connection
//! does; pools whose connections are kept (`server_idle_timeout_ms = 0`,
//! `min_pool_size`) stay with them.
//!
//! Race-free by construction: every way to reach a learnt user's pools
//! (a login's [`Cluster::learnt_pools`], `pools_for`, SHOW POOLS, the
//! maintenance task) takes them out of the map under its lock, and the
//! sweep decides under that same lock, only when the map holds the sole
//! reference to the user's pools and to each pool in them (no session, no
//! lease, no connection being opened, no pools of a configuration before a
//! reload still in use). A login at that moment either came first (the
//! pools are kept) or comes after and makes new pools, fully working.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cluster::LearntPools;
use super::Cluster;
use crate::metrics::snapshot::PoolLabels;
use crate::metrics::Metrics;

/// How long after their last login unused learnt pools are kept: the
/// server idle timeout (after which their idle connections are closed
/// too), or a minute when that is 0 ("never close"), since pools with no
/// connection at all then have nothing to keep.
pub fn learnt_keep_for(general: &pgrouter_config::General) -> Duration {
    match general.server_idle_timeout_ms {
        0 => Duration::from_secs(60),
        ms => Duration::from_millis(ms),
    }
}

/// Whether `learnt` can go at `now` (see the module doc). `in_use` says
/// whether a registered client session is on these pools: a session that
/// logged in before a reload may hold pools of the previous configuration
/// that share none of these pools, yet moves to these at its next
/// transaction, by name.
fn unused(learnt: &LearntPools, in_use: bool, now: Instant, keep_for: Duration) -> bool {
    !in_use
        && now.saturating_duration_since(learnt.last_login) >= keep_for
        && Arc::strong_count(&learnt.pools) == 1
        && learnt
            .pools
            .shards
            .iter()
            .flat_map(|s| s.servers.iter())
            .all(|slot| Arc::strong_count(&slot.pool) == 1 && slot.pool.is_unused())
}

impl Cluster {
    /// Drops the learnt pools unused at `now` (see the module doc) and
    /// forgets their metric series and the connection caps only they were
    /// under. `sessions` lists the (pools user, database) of the client
    /// sessions; it is asked only when some learnt pools exist. Returns the
    /// (user, database) dropped.
    pub fn drop_unused_learnt(
        &self,
        sessions: impl FnOnce() -> HashSet<(String, String)>,
        metrics: &Metrics,
        now: Instant,
        keep_for: Duration,
    ) -> Vec<(String, String)> {
        let mut learnt = self.learnt.lock();
        if learnt.is_empty() {
            return Vec::new();
        }
        let sessions = sessions();
        let gone: Vec<(String, String)> = learnt
            .iter()
            .filter(|(key, l)| unused(l, sessions.contains(*key), now, keep_for))
            .map(|(key, _)| key.clone())
            .collect();
        if gone.is_empty() {
            return gone;
        }
        for key in &gone {
            let Some(l) = learnt.remove(key) else {
                continue;
            };
            let labels: Vec<PoolLabels> = l
                .pools
                .shards
                .iter()
                .flat_map(|s| s.servers.iter().map(|slot| slot.pool.labels.clone()))
                .collect();
            // The pools (and their metric handles) are freed here, before
            // the series are forgotten.
            drop(l);
            for labels in &labels {
                metrics.forget_pool(labels);
            }
        }
        self.caps.lock().retain(|_, cap| !cap.is_unused());
        gone
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::auth::pass_through::PassThrough;
    use crate::metrics::Metrics;

    fn config() -> pgrouter_config::Config {
        let router = "[general]\nmax_user_connections = 5\nserver_idle_timeout_ms = 1000\n\n\
            [[databases]]\nname = \"app\"\nhost = \"127.0.0.1\"\nport = 1\n\n\
            [auth_query]\nuser = \"lookup\"\n";
        let users = "[[users]]\nname = \"lookup\"\ndatabase = \"app\"\n\
            server_password = \"x\"\nlogin = false\n";
        pgrouter_config::parse(Path::new("r.toml"), router, Path::new("u.toml"), users)
            .unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn login(
        cluster: &Cluster,
        config: &pgrouter_config::Config,
        m: &Arc<Metrics>,
    ) -> Arc<super::super::UserPools> {
        let (name, pools) = cluster
            .learnt_pools(config, m, "alice", "app", PassThrough::default())
            .expect("pools");
        assert_eq!(name, "alice");
        pools
    }

    fn listed(cluster: &Cluster) -> bool {
        cluster.pools_for("alice", "app").is_some()
    }

    /// Alice's metric series and caps (the lookup user has its own).
    fn series(metrics: &Metrics) -> usize {
        metrics
            .pool_list()
            .iter()
            .filter(|p| p.labels.user == "alice")
            .count()
    }

    fn caps(cluster: &Cluster) -> usize {
        cluster
            .caps
            .lock()
            .keys()
            .filter(|k| k.contains("alice"))
            .count()
    }

    #[test]
    fn unused_learnt_pools_go_after_the_idle_period_and_come_back_at_a_login() {
        let config = config();
        let metrics = Arc::new(Metrics::new());
        let cluster = Cluster::build(&config, None, &metrics);
        let keep = learnt_keep_for(&config.general);
        assert_eq!(keep, Duration::from_secs(1));
        let none = HashSet::new;

        let session = login(&cluster, &config, &metrics);
        let later = Instant::now() + Duration::from_secs(5);
        // A session holds them: kept, however long ago it logged in.
        assert!(cluster
            .drop_unused_learnt(none, &metrics, later, keep)
            .is_empty());
        drop(session);
        // Too soon after the login.
        assert!(cluster
            .drop_unused_learnt(none, &metrics, Instant::now(), keep)
            .is_empty());
        // A session registered on them (e.g. from before a reload).
        let on_them = || HashSet::from([("alice".to_string(), "app".to_string())]);
        assert!(cluster
            .drop_unused_learnt(on_them, &metrics, later, keep)
            .is_empty());
        assert!(listed(&cluster));
        assert_eq!(series(&metrics), 1);
        assert_eq!(caps(&cluster), 1, "user alice's cap");

        let gone = cluster.drop_unused_learnt(none, &metrics, later, keep);
        assert_eq!(gone, vec![("alice".to_string(), "app".to_string())]);
        assert!(!listed(&cluster), "gone from SHOW POOLS");
        assert_eq!(series(&metrics), 0, "gone from the metrics");
        assert_eq!(caps(&cluster), 0, "its cap with it");
        assert_eq!(cluster.caps.lock().len(), 1, "the lookup user's cap stays");

        // The next login gets new pools, under a new cap.
        let again = login(&cluster, &config, &metrics);
        assert!(listed(&cluster));
        assert_eq!(caps(&cluster), 1);
        assert_eq!(
            again.shards[0].servers[0].pool.size(),
            config.general.default_pool_size
        );
    }

    #[test]
    fn a_pool_held_elsewhere_is_kept() {
        let config = config();
        let metrics = Arc::new(Metrics::new());
        let cluster = Cluster::build(&config, None, &metrics);
        let pools = login(&cluster, &config, &metrics);
        // A lease, a connection being opened or a previous configuration's
        // pools hold the pool itself.
        let pool = pools.shards[0].servers[0].pool.clone();
        drop(pools);
        let later = Instant::now() + Duration::from_secs(5);
        let keep = Duration::from_secs(1);
        assert!(cluster
            .drop_unused_learnt(HashSet::new, &metrics, later, keep)
            .is_empty());
        drop(pool);
        assert_eq!(
            cluster
                .drop_unused_learnt(HashSet::new, &metrics, later, keep)
                .len(),
            1
        );
    }

    #[test]
    fn keep_for_is_the_idle_timeout_or_a_minute() {
        let mut general = config().general;
        general.server_idle_timeout_ms = 0;
        assert_eq!(learnt_keep_for(&general), Duration::from_secs(60));
        general.server_idle_timeout_ms = 250;
        assert_eq!(learnt_keep_for(&general), Duration::from_millis(250));
    }
}
