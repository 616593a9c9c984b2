//! Cancels on their way to a server, so that they never hit another
//! client's query.
//!
//! A CancelRequest reaches PostgreSQL on a connection of its own, opened
//! after the client's server was looked up: by the time PostgreSQL acts on
//! it, the query may have ended and the server (in transaction mode) may
//! run another client's statement, which the cancel would then stop. Two
//! rules close that window (PgBouncer does the same, its pull request 717):
//!
//! 1. A cancel is registered here *before* the client's server is looked
//!    up a second time; it is sent only if the client still uses that
//!    server.
//! 2. A server connection with a cancel registered is not given to
//!    another client when its client lets it go: it is closed instead
//!    ([`crate::pool::Pool::checkin_at`]). A cancel stays registered until
//!    PostgreSQL has acted on it (it closes the cancel connection then).
//!
//! The session clears its server (a sequentially consistent store) before
//! it lets the connection go, and the cancel registers (sequentially
//! consistent) before it looks again: one of the two sees the other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::server::CancelTarget;

/// How many cancels are registered: read without the lock on every
/// check-in, where the answer is almost always none.
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The backends they are for (address, pid).
static TARGETS: Mutex<Vec<(Arc<str>, i32)>> = Mutex::new(Vec::new());

/// A registered cancel; dropping it unregisters it.
pub struct InFlight {
    addr: Arc<str>,
    pid: i32,
}

/// Registers a cancel for `target` (rule 1: before the second look-up).
pub fn register(target: &CancelTarget) -> InFlight {
    TARGETS.lock().push((target.addr.clone(), target.pid));
    COUNT.fetch_add(1, Ordering::SeqCst);
    InFlight {
        addr: target.addr.clone(),
        pid: target.pid,
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut targets = TARGETS.lock();
        if let Some(i) = targets
            .iter()
            .position(|(a, p)| *p == self.pid && **a == *self.addr)
        {
            targets.swap_remove(i);
            COUNT.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Whether a cancel for backend `pid` at `addr` is on its way (rule 2).
pub fn is_cancelling(addr: &str, pid: i32) -> bool {
    if COUNT.load(Ordering::SeqCst) == 0 {
        return false;
    }
    TARGETS
        .lock()
        .iter()
        .any(|(a, p)| *p == pid && &**a == addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_until_dropped() {
        let t = CancelTarget {
            addr: "127.0.0.1:1".into(),
            pid: 4242,
            secret: 1,
        };
        assert!(!is_cancelling("127.0.0.1:1", 4242));
        let a = register(&t);
        let b = register(&t);
        assert!(is_cancelling("127.0.0.1:1", 4242));
        assert!(!is_cancelling("127.0.0.1:2", 4242));
        assert!(!is_cancelling("127.0.0.1:1", 4243));
        drop(a);
        assert!(is_cancelling("127.0.0.1:1", 4242));
        drop(b);
        assert!(!is_cancelling("127.0.0.1:1", 4242));
    }
}
