//! A pool's capacity and the clients waiting for it.
//!
//! A returned connection goes straight to the longest-waiting client (as in
//! PgBouncer) instead of back to the idle list for the waiter to fetch: no
//! semaphore permit is released and re-acquired, no idle-list round trip,
//! and the connection is not checked again (it was in use a moment ago).
//! Waiters do not arm a timer each: one task per pool sleeps until the
//! oldest waiter's deadline (see [`super::Pool`]'s expiry task), so a
//! checkout that waits costs a queue entry and a channel, not a timer-wheel
//! insert and removal.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::server::ServerConn;

/// What a waiting client is given: a connection, or the right to open one
/// (a lease whose connection was closed, or capacity added by a reload),
/// with the pool part whose lease it is (another worker's part when that
/// one had capacity to spare).
pub(super) enum Grant {
    Conn(Box<ServerConn>, usize),
    Open(usize),
}

pub(super) struct Waiter {
    /// Identifies the entry, for a client that stops waiting.
    pub id: u64,
    pub since: Instant,
    pub grant: oneshot::Sender<Grant>,
}

/// Guarded by the pool's lock.
#[derive(Default)]
pub(super) struct Slots {
    /// Idle connections; the most recently used last (LIFO keeps the rest
    /// idle long enough to be closed by the idle timeout).
    // Boxed on purpose: a ServerConn is large and moves between the
    // pool and sessions many times; a box moves as one pointer.
    #[allow(clippy::vec_box)]
    pub idle: Vec<Box<ServerConn>>,
    /// Checkouts outstanding: a connection in use or being opened. At most
    /// the pool's size, except after a reload shrank it.
    pub leased: usize,
    /// Clients waiting for a lease, oldest first.
    pub waiters: VecDeque<Waiter>,
    pub next_waiter_id: u64,
    /// The task that fails waiters past their deadline is running.
    pub expiry_running: bool,
}

impl Slots {
    /// Passes a lease of part `part` (with `conn`, or the right to open
    /// one) to the oldest client still waiting. Gives `conn` back when
    /// nobody took it.
    pub fn hand_over(
        &mut self,
        mut conn: Option<Box<ServerConn>>,
        part: usize,
    ) -> Result<(), Option<Box<ServerConn>>> {
        while let Some(waiter) = self.waiters.pop_front() {
            let grant = match conn.take() {
                Some(c) => Grant::Conn(c, part),
                None => Grant::Open(part),
            };
            match waiter.grant.send(grant) {
                Ok(()) => return Ok(()),
                // That client stopped waiting: try the next one.
                Err(Grant::Conn(c, _)) => conn = Some(c),
                Err(Grant::Open(_)) => {}
            }
        }
        Err(conn)
    }

    /// Ends a lease nobody took: its connection, if any, goes idle.
    pub fn put_back(&mut self, conn: Option<Box<ServerConn>>) {
        self.leased -= 1;
        if let Some(conn) = conn {
            self.idle.push(conn);
        }
    }

    /// Takes a client out of the queue; false if it was no longer there
    /// (served or timed out meanwhile).
    pub fn remove_waiter(&mut self, id: u64) -> bool {
        match self.waiters.iter().position(|w| w.id == id) {
            Some(at) => {
                self.waiters.remove(at);
                true
            }
            None => false,
        }
    }
}
