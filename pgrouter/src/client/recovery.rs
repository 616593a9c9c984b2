//! When the held server fails mid-request.
//!
//! A read outside a transaction that has not yet sent a byte to the client
//! is replayed once on another server (the failed replica is banned), so a
//! replica dying under a read load costs the client nothing. Otherwise the
//! client's outstanding requests fail with 08006 and, outside a transaction,
//! the session goes on with another server; inside one, the transaction is
//! gone and the session ends with a FATAL.

use super::error::SessionEnd;
use super::replay_buffer::Replay;
use super::session::Session;
use crate::protocol::backend::{self, Severity};
use crate::router::{Role, Route};

impl Session {
    /// Starts keeping the request about to be sent (a replica read).
    pub(super) fn start_replay(&mut self) {
        let mut frames = std::mem::take(&mut self.replay_spare);
        frames.clear();
        self.replay = Some(Replay::in_buffer(frames));
    }

    /// Stops keeping it, saving the buffer for the next request.
    pub(super) fn stop_replay(&mut self) {
        super::replay_buffer::stop_replay(&mut self.replay, &mut self.replay_spare);
    }
}

impl Session {
    pub(super) async fn recover_server_loss(&mut self) -> Result<(), SessionEnd> {
        let Some(held) = self.server.take() else {
            return Ok(());
        };
        self.cancel.slot.set(None);
        // The failed request's clock stops here: a replay (or the next
        // request) is timed afresh by `query_timeout_ms`.
        self.request_started = None;
        self.query_cancelled = None;
        let in_tx = self.flow.in_tx() || held.conn.tx_status != b'I';
        tracing::warn!(server = %held.conn.addr, pid = held.conn.backend_pid, in_tx, "server connection lost");
        let replay = self.replay.take();
        // The lost server's notice of its own end, held back while the read
        // could still be replayed (see `inbound.rs`).
        let notices = std::mem::take(&mut self.held_notices);
        if !held.is_primary {
            // Found by its pool (a held server keeps no `Arc` of its health:
            // one clone per transaction of an object every worker shares).
            // A server a reload dropped meanwhile is no longer picked.
            let slot = self.pools.shards.get(held.shard).and_then(|s| {
                s.servers
                    .iter()
                    .find(|slot| std::sync::Arc::as_ptr(&slot.pool) as usize == held.pool_id)
            });
            if let Some(slot) = slot {
                slot.health.ban("connection lost mid-request");
            }
        }
        let failed_pool = held.pool_id;
        // Whatever session state the client had there is gone with it.
        self.pins.forget();
        self.temps.forget_all();
        self.registered.info.set_pinned(Default::default());
        let shard = held.shard;
        // ReadyForQuery messages the lost server owed the client (one per
        // Sync or Query sent), counted before its queue goes with it: each
        // one the client waits for must come, or a pipelining client hangs.
        let mut owed = held.expect.outstanding_ready();
        drop(held);
        // Requests are numbered anew (see `PendingPrepares`).
        self.pending_prepares = Default::default();
        self.drop_unsent();

        if let (Some(replay), false) = (replay, in_tx) {
            let unsynced = self.flow.replay_started();
            if self
                .attach(
                    Route {
                        shard,
                        role: Role::Replica,
                    },
                    &[failed_pool],
                )
                .await
                .is_ok()
            {
                tracing::info!("replaying the request on another server");
                for (tag, msg) in replay.messages() {
                    self.forward_message(tag, msg, None)?;
                }
                let sent = match self.server.as_mut() {
                    Some(h) => h.flush().await.is_ok(),
                    None => false,
                };
                if sent {
                    return Ok(());
                }
                // Requests sent in the attempt are owed too.
                if let Some(failed) = self.server.take() {
                    owed = owed.max(failed.expect.outstanding_ready());
                }
                self.cancel.slot.set(None);
            }
            self.flow.replay_failed(unsynced);
        }
        // No replay: the client learns what the server said before failing.
        self.to_client.extend_from_slice(&notices);
        if in_tx {
            self.flush_client().await?;
            return Err(SessionEnd::fatal(
                "08006",
                "pgrouter: the server connection was lost during a transaction",
            ));
        }
        self.state.metrics.record_error("08006");
        backend::error_response(
            &mut self.to_client,
            Severity::Error,
            "08006",
            "pgrouter: the server connection was lost; the request failed",
        );
        for _ in 0..owed.max(if self.flow.unsynced() { 0 } else { 1 }) {
            backend::ready_for_query(&mut self.to_client, b'I');
        }
        self.flow.server_lost();
        // The transaction's other shards are rolled back with it (their
        // connections close).
        self.tx_legs = None;
        self.flush_client().await
    }
}
