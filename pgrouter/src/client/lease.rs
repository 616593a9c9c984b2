//! The server connection a session holds (a lease from its pool), and what
//! belongs to that connection alone: the answers it owes (`expect`), its
//! settings-replay bookkeeping, and the one write path (`Held::flush`, of
//! the connection's own queue, `ServerConn::write_buf`). A transaction on
//! several shards parks and swaps whole `Held`s, so each server's state
//! travels with it.

use std::sync::Arc;

use super::expect::Expectations;
use super::replay::SyncUndo;
use crate::pool::{PooledConn, ServerSlot};

/// The server a session holds, and what it is.
pub(super) struct Held {
    pub conn: PooledConn,
    pub is_primary: bool,
    pub shard: usize,
    /// Identifies the pool, to leave it out when retrying elsewhere.
    pub pool_id: usize,
    /// Routed to the primary (a write, or a transaction that may write).
    pub for_writes: bool,
    pub attached_at: crate::clock::Tick,
    /// When the server's last answer to the client's request arrived.
    pub last_answer: crate::clock::Tick,
    /// The transaction that ends this lease is counted already (at its
    /// ReadyForQuery, before the answer reaches the client, so a client
    /// that reads the metrics next sees it).
    pub tx_counted: bool,
    /// The answers this server owes for what was sent to it, in order:
    /// each one the client's, the router's own, or one to make up.
    pub expect: Expectations,
    /// Its parameter bookkeeping before the last settings replay, to go
    /// back to should the replay fail (see `replay.rs`).
    /// (Boxed: rarely there, and `Held` is moved on every attach.)
    pub sync_undo: Option<Box<SyncUndo>>,
    /// Settings were replayed here since its last answer to the client.
    pub settings_replayed: bool,
    /// A RESET took it back to its own defaults: the client's startup
    /// values are set again before the client's next statement.
    pub resync_params: bool,
    /// Session state the router cannot carry elsewhere was created on this
    /// connection (sharded databases: it comes back to the session, see
    /// `kept.rs`).
    pub kept: bool,
}

impl Held {
    /// A lease of `conn`, taken from `slot` at `now` for a statement on
    /// `shard`, with `expect` (empty) as its answer queue.
    pub fn new(
        conn: PooledConn,
        slot: &ServerSlot,
        shard: usize,
        for_writes: bool,
        now: crate::clock::Tick,
        expect: Expectations,
    ) -> Held {
        debug_assert!(expect.is_empty());
        Held {
            conn,
            is_primary: slot.health.is_primary(),
            shard,
            pool_id: Arc::as_ptr(&slot.pool) as usize,
            for_writes,
            attached_at: now,
            last_answer: now,
            tx_counted: false,
            expect,
            sync_undo: None,
            settings_replayed: false,
            resync_params: false,
            kept: false,
        }
    }

    /// Sends the messages queued for the server (`conn.write_buf`) in one
    /// write, counted in the pool's metrics: the one way a session writes
    /// to the server it holds. The queue is empty afterwards, sent or not
    /// (a failed write loses the connection).
    pub async fn flush(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let queued = self.conn.write_buf.len();
        if queued == 0 {
            return Ok(());
        }
        self.conn.pool().metrics.add_bytes_received(queued as u64);
        let conn = &mut *self.conn;
        if let Some(codec) = conn.text_codec {
            crate::encoding::encode_messages(codec, &mut conn.write_buf);
        }
        let sent = conn.stream.write_all(&conn.write_buf).await;
        conn.write_buf.clear();
        sent
    }

    /// Queues a simple query of the router's own (connection hygiene at
    /// checkout) whose answer the client never sees.
    pub fn queue_own_query(&mut self, sql: &str) {
        tracing::debug!(%sql, server = self.conn.id, "resetting the connection");
        crate::protocol::frontend::query(&mut self.conn.write_buf, sql);
        self.expect.swallow(super::expect::Reply::Query);
    }

    /// Counts the transaction of this lease in its pool's metrics.
    pub fn record_transaction(&mut self) {
        self.tx_counted = true;
        let took = self.last_answer.since(self.attached_at);
        self.conn.pool().metrics.record_transaction(took);
    }
}
