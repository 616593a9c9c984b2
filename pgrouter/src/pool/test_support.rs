//! A pool for unit tests, here and in the session's (`client/`).

use std::sync::Arc;
use std::time::Duration;

use super::{Pool, PoolSettings};
use crate::metrics::snapshot::PoolLabels;
use crate::metrics::Metrics;
use crate::net::tls::ServerTlsPolicy;
use crate::server::ServerTarget;

/// A pool of one connection to 127.0.0.1:`port`, logging in as "app"
/// without a password.
pub(crate) fn pool_of_one(port: u16, checkout_timeout: Duration) -> Arc<Pool> {
    let labels = PoolLabels {
        database: "app".into(),
        user: "app".into(),
        shard: 0,
        role: "primary".into(),
        host: "127.0.0.1".into(),
        port,
    };
    let target = ServerTarget {
        host: "127.0.0.1".into(),
        port,
        database: "app".into(),
        user: "app".into(),
        password: None,
        pass_through: None,
        tls: ServerTlsPolicy {
            mode: pgrouter_config::ServerTls::Disable,
            ca: String::new(),
        },
    };
    let settings = PoolSettings {
        size: 1,
        min_size: 0,
        connect_timeout: Duration::from_secs(30),
        checkout_timeout,
        idle_timeout: Duration::ZERO,
        lifetime: Duration::ZERO,
        login_backoff: Duration::ZERO,
    };
    let metrics = Metrics::new().pool(&labels);
    Pool::new("test".into(), target, settings, metrics, labels)
}
