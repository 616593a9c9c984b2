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
        let sent = conn.stream.write_all(&conn.write_buf).await;
        conn.write_buf.clear();
        sent
    }

    /// Counts the transaction of this lease in its pool's metrics.
    pub fn record_transaction(&mut self) {
        self.tx_counted = true;
        let took = self.last_answer.saturating_duration_since(self.attached_at);
        self.conn.pool().metrics.record_transaction(took);
    }
}
