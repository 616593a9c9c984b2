//! A session moving to another worker thread between its transactions.
//!
//! `worker_balance.rs` asks a worker to shed clients when fewer or more
//! workers should take them. A session of that worker that holds no server
//! connection and owes nothing to anyone (between transactions in
//! transaction mode) stops its task, takes its client's socket off this
//! worker's event loop and continues as a task on the other worker, with
//! the socket registered there. Everything else it keeps (prepared
//! statements, tracked settings, the bytes of a request that has begun to
//! arrive) is plain data that travels with it; server connections it
//! would use there come from that worker's part of each pool.
//!
//! A TLS client moves with its TLS state; its socket is registered there as
//! a duplicate descriptor swapped into the TLS layer (`MovingClient`).
//! Not moved: a session holding a server connection or with work in
//! flight. It stays where it is, which is always correct, only dearer.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;
use tracing::Instrument;

use super::session::{Ran, Session};
use super::SessionEnd;
use crate::net::ClientStream;

/// How a session ended: the client's socket, to tell it why.
pub(super) type Finished = (ClientStream, SessionEnd);

/// Runs `session` (as a task of its own: spawn what this returns); if it
/// is to move, continues it on the other worker. Its end goes to `done`
/// (dropped unsent if the session panicked: the socket closes with it).
/// The task is its own, so each of its wake-ups polls it directly instead
/// of through the login's and the accept loop's futures (~240 instructions
/// per -S transaction).
pub(super) async fn drive(session: Session, done: oneshot::Sender<Finished>) {
    match session.run().await {
        Ran::Ended(stream, end) => {
            let _ = done.send((stream, end));
        }
        Ran::Moving(session, to) => move_to(*session, to, done),
    }
}

/// Takes the client's socket off this event loop and continues the
/// session on worker `to`, where the socket is registered again.
fn move_to(mut session: Session, to: usize, done: oneshot::Sender<Finished>) {
    let span = tracing::Span::current();
    let Some(moving) =
        std::mem::replace(&mut session.client, ClientStream::Detached).start_moving()
    else {
        // `may_move` lets no detached stream go.
        let _ = done.send((ClientStream::Detached, SessionEnd::ClientGone));
        return;
    };
    if let Some(seat) = session.seat.as_mut() {
        seat.relocate(to);
    }
    session.registered.info.worker.store(to, Ordering::Relaxed);
    tracing::debug!(to, "client moves to another worker");
    crate::worker::spawn_on(
        to,
        async move {
            match moving.register() {
                Ok(stream) => {
                    session.client = stream;
                    drive(session, done).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot register a moving client's socket");
                    let _ = done.send((ClientStream::Detached, SessionEnd::ClientIo(e)));
                }
            }
        }
        .instrument(span),
    );
}

impl Session {
    /// Whether this session can move now, and where to, taking one of the
    /// clients its worker is to shed (`worker::leave_for`). Asked between
    /// transactions, with no server held, when the worker sheds clients.
    pub(super) fn may_move(&self) -> Option<usize> {
        let holds_nothing = self.server.is_none()
            && self.kept.is_empty()
            && self.tx_legs.is_none()
            && self.pipeline.is_none()
            && self.deferred_begin.is_none()
            && self.replay.is_none()
            && self.shard_portals.is_empty()
            && self.query_cancelled.is_none();
        let owes_nothing = self.at_boundary()
            && !self.flow.blocked()
            && self.unsent.is_empty()
            && self.to_client.is_empty()
            && self.held_notices.is_empty();
        let attached = !matches!(self.client, ClientStream::Detached);
        if holds_nothing && owes_nothing && attached && self.seat.is_some() {
            crate::worker::leave_for()
        } else {
            None
        }
    }

    /// Gives the session its place on its worker (see [`crate::worker::Seat`]).
    pub fn take_seat(&mut self, seat: Option<crate::worker::Seat>) {
        self.seat = seat;
    }
}
