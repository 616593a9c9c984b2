//! Telling every session that the router is shutting down.
//!
//! A session waits on its client and its server in one `select!`, and the
//! shutdown signal must be a branch of it so that an idle session hears it.
//! A `watch` channel would make every one of those waits — two or more per
//! transaction — register with (and lock) a notifier shared by all sessions.
//! Here each session has a oneshot receiver of its own instead: polling it
//! touches only that session's channel, and the shared lock is taken once per
//! session start, end and shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::sync::oneshot;

#[derive(Default)]
pub struct ShutdownFanout {
    fired: AtomicBool,
    next_id: AtomicU64,
    listeners: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl ShutdownFanout {
    /// A listener for one session. One made after `fire` is already fired.
    pub fn subscribe(self: &Arc<Self>) -> ShutdownListener {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut listeners = self.listeners.lock();
        if self.fired.load(Ordering::Relaxed) {
            drop(tx); // the receiver completes at once
        } else {
            listeners.insert(id, tx);
        }
        ShutdownListener {
            rx,
            registered: false,
            id,
            fanout: self.clone(),
        }
    }

    /// Wakes every listener, now and to come.
    pub fn fire(&self) {
        let mut listeners = self.listeners.lock();
        self.fired.store(true, Ordering::Release);
        for (_, tx) in listeners.drain() {
            let _ = tx.send(());
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

/// One session's end of the fanout: a future that completes at shutdown
/// (poll it again only if it has not completed), and `is_fired` for checks.
pub struct ShutdownListener {
    rx: oneshot::Receiver<()>,
    /// The receiver has been polled once: it holds the session task's
    /// waker, and the fanout's flag tells whether polling it again is useful.
    registered: bool,
    id: u64,
    fanout: Arc<ShutdownFanout>,
}

impl ShutdownListener {
    pub fn is_fired(&self) -> bool {
        self.fanout.is_fired()
    }
}

impl Future for ShutdownListener {
    type Output = ();

    /// A session's waits poll this twice or more per transaction; after the
    /// first poll a flag check is enough (a session always runs in the same
    /// task, so the waker the receiver holds stays the right one).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && !self.fanout.is_fired() {
            return Poll::Pending;
        }
        self.registered = true;
        // Sent or dropped: either way the router is shutting down.
        Pin::new(&mut self.rx).poll(cx).map(|_| ())
    }
}

impl Drop for ShutdownListener {
    fn drop(&mut self) {
        self.fanout.listeners.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fire_wakes_listeners_made_before_and_after() {
        let fanout = Arc::new(ShutdownFanout::default());
        let before = fanout.subscribe();
        let dropped = fanout.subscribe();
        drop(dropped);
        assert_eq!(fanout.listeners.lock().len(), 1);
        assert!(!before.is_fired());
        let waiter = tokio::spawn(before);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        fanout.fire();
        crate::timer::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        let after = fanout.subscribe();
        assert!(after.is_fired());
        crate::timer::timeout(std::time::Duration::from_secs(5), after)
            .await
            .expect("completes at once");
        assert!(fanout.listeners.lock().is_empty());
    }
}
