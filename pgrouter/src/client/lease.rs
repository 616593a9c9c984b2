//! The server connection a session holds (a lease from its pool), and what
//! the session knows of it.

use std::sync::Arc;

use crate::pool::{PooledConn, ServerHealth};

/// The server a session holds, and what it is.
pub(super) struct Held {
    pub conn: PooledConn,
    pub is_primary: bool,
    pub shard: usize,
    pub health: Arc<ServerHealth>,
    /// Identifies the pool, to leave it out when retrying elsewhere.
    pub pool_id: usize,
    /// Routed to the primary (a write, or a transaction that may write).
    pub for_writes: bool,
    pub attached_at: std::time::Instant,
    /// When the server's last answer to the client's request arrived.
    pub last_answer: std::time::Instant,
    /// The transaction that ends this lease is counted already (at its
    /// ReadyForQuery, before the answer reaches the client, so a client
    /// that reads the metrics next sees it).
    pub tx_counted: bool,
}

impl Held {
    /// Counts the transaction of this lease in its pool's metrics.
    pub fn record_transaction(&mut self) {
        self.tx_counted = true;
        let took = self.last_answer.saturating_duration_since(self.attached_at);
        self.conn.pool().metrics.record_transaction(took);
    }
}
