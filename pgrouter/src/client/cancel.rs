//! CancelRequest forwarding. Each client gets a (pid, secret) key of the
//! router's making; the key maps to whichever server the client is using at
//! that moment, so a cancel reaches the right backend and nobody else's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::cancel_in_flight as in_flight;
use super::current_server::CurrentServer;
use crate::protocol::frontend;
use crate::server::CancelTarget;

/// The servers a client is using right now: none, one, or one per shard
/// of a statement on several shards.
#[derive(Default)]
pub struct CancelSlot {
    /// The usual case, changed every transaction: one server.
    one: CurrentServer,
    /// A statement on several shards: each leg's server.
    many: Mutex<Vec<CancelTarget>>,
    /// `many` is not empty (saves its lock when it is).
    has_many: AtomicBool,
    /// Woken by a cancel that finds no server: a client waiting for one
    /// (queued for a busy pool, or held by PAUSE) gives up its statement,
    /// as PostgreSQL would cancel it. Only sessions waiting at that moment
    /// are woken: a cancel of an idle client is dropped, as before.
    waiting: tokio::sync::Notify,
}

impl CancelSlot {
    pub fn set(&self, target: Option<CancelTarget>) {
        match target {
            Some(t) => self.set_server(&t.addr, t.pid, t.secret),
            None => {
                self.one.clear();
                self.clear_many();
            }
        }
    }

    /// The client now uses the backend `pid` (secret `secret`) at `addr`.
    pub fn set_server(&self, addr: &Arc<str>, pid: i32, secret: i32) {
        self.clear_many();
        self.one.set(addr, pid, secret, false);
    }

    /// Every leg of a statement on several shards.
    pub fn set_many(&self, targets: Vec<CancelTarget>) {
        self.one.clear();
        self.has_many.store(!targets.is_empty(), Ordering::Release);
        *self.many.lock() = targets;
    }

    fn clear_many(&self) {
        // A load first: the usual answer, no, needs no locked instruction.
        if self.has_many.load(Ordering::Acquire) && self.has_many.swap(false, Ordering::AcqRel) {
            self.many.lock().clear();
        }
    }

    /// Resolves when a cancel arrives while no server is in use. Create it
    /// before checking whether the wait is needed: a cancel in between is
    /// not lost.
    pub fn cancelled(&self) -> tokio::sync::futures::Notified<'_> {
        self.waiting.notified()
    }

    /// Where a cancel goes now.
    fn targets(&self) -> Vec<CancelTarget> {
        let mut targets: Vec<CancelTarget> = self
            .one
            .get()
            .map(|s| CancelTarget {
                addr: s.addr,
                pid: s.pid,
                secret: s.secret,
            })
            .into_iter()
            .collect();
        if self.has_many.load(Ordering::Acquire) {
            targets.extend(self.many.lock().iter().cloned());
        }
        targets
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
}

/// A client's registration; dropping it forgets the key.
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry.keys.lock().remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Hands out an unused pid and a random secret.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let mut rng = rand::thread_rng();
        let slot = Arc::new(CancelSlot::default());
        let mut keys = self.keys.lock();
        loop {
            let pid = rng.gen_range(1..i32::MAX);
            if keys.contains_key(&pid) {
                continue;
            }
            let secret = rng.gen::<i32>();
            keys.insert(pid, (secret, slot.clone()));
            return CancelKey {
                pid,
                secret,
                slot,
                registry: self.clone(),
            };
        }
    }

    /// Forwards a cancel for a client key. Wrong keys are ignored silently, as
    /// PostgreSQL does, so keys cannot be probed. A cancel is sent only to a
    /// server the client still uses once the cancel is registered, and the
    /// server is not given to anyone else until PostgreSQL has acted on it
    /// (see `cancel_in_flight.rs`).
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let slot = {
            let keys = self.keys.lock();
            match keys.get(&pid) {
                Some((s, slot)) if *s == secret => Some(slot.clone()),
                _ => None,
            }
        };
        let Some(slot) = slot else {
            tracing::debug!(pid, "cancel request for an unknown key");
            return;
        };
        let seen = slot.targets();
        if seen.is_empty() {
            // No server has the statement yet: end its wait, if it waits.
            slot.waiting.notify_waiters();
            return;
        }
        let registered: Vec<_> = seen.iter().map(in_flight::register).collect();
        let still = slot.targets();
        if !seen.iter().any(|t| still.contains(t)) {
            tracing::debug!(pid, "cancel request for an idle client");
        }
        for (target, registered) in seen.into_iter().zip(registered) {
            if still.contains(&target) {
                if let Err(e) = send_cancel(&target).await {
                    tracing::warn!(server = %target.addr, error = %e, "could not forward a cancel request");
                }
            }
            drop(registered);
        }
    }
}

/// Sends a CancelRequest to a server backend.
pub async fn send_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frontend::cancel_request(&mut out, target.pid, target.secret);
    // A server reached over a Unix-domain socket has its path as address.
    if target.addr.starts_with('/') {
        send_all(tokio::net::UnixStream::connect(&*target.addr).await?, &out).await
    } else {
        send_all(TcpStream::connect(&*target.addr).await?, &out).await
    }
}

/// Writes the request, then waits (at most `CANCEL_ACTED_ON`) for
/// PostgreSQL to close the connection, which it does once it has signalled
/// the backend: until then the backend may still be interrupted.
async fn send_all<S: tokio::io::AsyncWrite + tokio::io::AsyncRead + Unpin>(
    mut stream: S,
    bytes: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    stream.write_all(bytes).await?;
    let mut sink = [0u8; 64];
    let closed = async {
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    match crate::timer::timeout(CANCEL_ACTED_ON, closed).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// How long a forwarded cancel keeps its server from other clients at
/// most, should PostgreSQL not close the cancel connection.
const CANCEL_ACTED_ON: std::time::Duration = std::time::Duration::from_secs(5);
