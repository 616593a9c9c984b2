//! Caps on server connections shared by several pools: `max_db_connections`
//! (per database and server, whatever the user) and `max_user_connections`
//! (per server user and server, whatever the database), as PgBouncer has
//! them. A pool opening a connection takes a permit from each cap it is
//! under; the permit lives in the connection and is given back when the
//! connection closes, however it closes.
//!
//! When a cap is reached, an idle connection of another pool under the same
//! cap is closed to make room (idle ones are of no use to anyone), else the
//! opening waits, up to the checkout timeout, for one to close or go idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::Pool;

/// How often a waiting opener looks for idle connections to close again.
const RETRY_EVERY: Duration = Duration::from_millis(10);

pub struct ConnectionCap {
    /// What is capped, for logs ("db app on 127.0.0.1:5432").
    pub name: String,
    max: AtomicUsize,
    open: AtomicUsize,
    /// The pools under this cap, whose idle connections may be closed.
    pools: Mutex<Vec<Weak<Pool>>>,
}

/// One connection's share of a cap; dropping it gives the share back.
pub struct CapPermit {
    cap: Arc<ConnectionCap>,
}

impl CapPermit {
    /// Whether this is a share of `cap`.
    pub fn is_of(&self, cap: &Arc<ConnectionCap>) -> bool {
        Arc::ptr_eq(&self.cap, cap)
    }
}

/// Makes `permits` the shares of exactly `caps`: those of other caps are
/// given back, missing ones adopted ([`ConnectionCap::adopt`]).
pub fn match_permits(permits: &mut Vec<CapPermit>, caps: &[Arc<ConnectionCap>]) {
    permits.retain(|p| caps.iter().any(|c| p.is_of(c)));
    for cap in caps {
        if !permits.iter().any(|p| p.is_of(cap)) {
            permits.push(cap.adopt());
        }
    }
}

impl Drop for CapPermit {
    fn drop(&mut self) {
        self.cap.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCap {
    pub fn new(name: String, max: usize) -> Arc<ConnectionCap> {
        Arc::new(ConnectionCap {
            name,
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
            pools: Mutex::new(Vec::new()),
        })
    }

    /// A reload changed the cap; connections over a lowered cap stay until
    /// they close.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// No connection holds a share of it and every pool it covered is gone:
    /// a cluster may forget it (see `learnt_sweep.rs`).
    pub fn is_unused(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
            && self.pools.lock().iter().all(|p| p.strong_count() == 0)
    }

    /// Puts `pool` under this cap.
    pub fn add_pool(&self, pool: &Arc<Pool>) {
        let mut pools = self.pools.lock();
        pools.retain(|p| p.strong_count() > 0);
        if !pools
            .iter()
            .any(|p| std::ptr::eq(p.as_ptr(), Arc::as_ptr(pool)))
        {
            pools.push(Arc::downgrade(pool));
        }
    }

    /// Connections open under the cap.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A permit for a connection already open when its pool came under
    /// this cap (a reload set the cap): it is counted even over the cap,
    /// since it exists on the server either way.
    pub fn adopt(self: &Arc<Self>) -> CapPermit {
        self.open.fetch_add(1, Ordering::AcqRel);
        CapPermit { cap: self.clone() }
    }

    fn try_acquire(self: &Arc<Self>) -> Option<CapPermit> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| CapPermit { cap: self.clone() })
    }

    /// A permit, closing another pool's idle connection for room if need
    /// be, waiting at most `timeout`. `None`: the cap stayed full.
    pub async fn acquire(self: &Arc<Self>, timeout: Duration) -> Option<CapPermit> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(permit) = self.try_acquire() {
                return Some(permit);
            }
            let pools: Vec<Arc<Pool>> =
                self.pools.lock().iter().filter_map(Weak::upgrade).collect();
            if pools.iter().any(|p| p.close_one_idle()) {
                // The closed connection's permit is back once it is dropped.
                tokio::task::yield_now().await;
                continue;
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            crate::timer::sleep(RETRY_EVERY.min(deadline - std::time::Instant::now())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_are_counted_and_given_back() {
        let cap = ConnectionCap::new("test".into(), 2);
        let a = cap.acquire(Duration::ZERO).await.expect("room");
        let b = cap.acquire(Duration::ZERO).await.expect("room");
        assert_eq!(cap.open(), 2);
        assert!(
            cap.acquire(Duration::from_millis(30)).await.is_none(),
            "full"
        );
        drop(a);
        let c = cap.acquire(Duration::ZERO).await.expect("room again");
        cap.set_max(1);
        drop(b);
        assert!(cap.acquire(Duration::ZERO).await.is_none(), "lowered cap");
        drop(c);
        assert!(cap.acquire(Duration::ZERO).await.is_some());
    }

    #[test]
    fn permits_match_the_caps_a_reload_set() {
        let old = ConnectionCap::new("old".into(), 1);
        let new = ConnectionCap::new("new".into(), 1);
        let mut permits = vec![old.adopt()];
        match_permits(&mut permits, std::slice::from_ref(&new));
        assert_eq!(
            (old.open(), new.open()),
            (0, 1),
            "old given back, new adopted"
        );
        match_permits(&mut permits, std::slice::from_ref(&new));
        assert_eq!(new.open(), 1, "matched already: nothing more taken");
        let _over = new.adopt();
        assert_eq!(new.open(), 2, "adopted over the cap: it exists either way");
        drop(permits);
        assert_eq!(new.open(), 1);
    }

    #[tokio::test]
    async fn a_waiting_opener_gets_the_next_permit_given_back() {
        let cap = ConnectionCap::new("test".into(), 1);
        let held = cap.acquire(Duration::ZERO).await.expect("room");
        let waiter = {
            let cap = cap.clone();
            tokio::spawn(async move { cap.acquire(Duration::from_secs(5)).await.is_some() })
        };
        crate::timer::sleep(Duration::from_millis(30)).await;
        drop(held);
        assert!(waiter.await.expect("joined"));
    }
}
