//! The few statements two-phase commit sends, run on a server connection
//! with the answer the caller needs: the command tag (PREPARE TRANSACTION
//! answers `ROLLBACK` when the transaction had failed), the error, or rows.

use bytes::BytesMut;

use crate::protocol::backend::{parse_error_fields, ErrorFields};
use crate::protocol::frontend;
use crate::server::{ServerConn, ServerError};

/// What a connection's `tx_status` is set to when it failed mid-statement:
/// anything but `b'I'` makes the pool close it instead of reusing it.
pub const BROKEN: u8 = b'E';

/// The answer to one simple-query statement.
#[derive(Debug)]
pub struct Reply {
    /// The last CommandComplete tag ("" if none).
    pub tag: String,
    pub error: Option<ErrorFields>,
}

/// Runs `sql` (one statement) and reads up to ReadyForQuery. An I/O or
/// protocol failure leaves the connection marked [`BROKEN`]: whether the
/// server ran the statement is then unknown.
pub async fn run(conn: &mut ServerConn, sql: &str) -> Result<Reply, ServerError> {
    let r = run_inner(conn, sql).await;
    if r.is_err() {
        conn.tx_status = BROKEN;
    }
    r
}

async fn run_inner(conn: &mut ServerConn, sql: &str) -> Result<Reply, ServerError> {
    let mut out = BytesMut::new();
    frontend::query(&mut out, sql);
    conn.send(&out).await?;
    let mut reply = Reply {
        tag: String::new(),
        error: None,
    };
    loop {
        let (tag, body) = conn.read_message().await?;
        match tag {
            b'C' => {
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                reply.tag = String::from_utf8_lossy(&body[..end]).into_owned();
            }
            b'E' if reply.error.is_none() => reply.error = Some(parse_error_fields(&body)?),
            b'S' => conn.note_parameter_status(&body),
            b'Z' => {
                conn.tx_status = body.first().copied().unwrap_or(b'I');
                return Ok(reply);
            }
            _ => {}
        }
    }
}

/// Runs COMMIT/ROLLBACK PREPARED on a leg. If the role now in force may not
/// finish it (42501: a role set only for the transaction was undone by
/// PREPARE), it runs again as `owner` (`SET ROLE`, then `RESET ROLE` back
/// to the session's own role).
pub async fn finish_on_leg(
    conn: &mut ServerConn,
    sql: &str,
    owner: &str,
) -> Result<Reply, ServerError> {
    let reply = run(conn, sql).await?;
    let denied = reply.error.as_ref().is_some_and(|e| e.code == "42501");
    if !denied || owner.is_empty() {
        return Ok(reply);
    }
    let set = format!("SET ROLE {}", crate::client::params::quote_ident(owner));
    let switched = run(conn, &set).await?;
    if switched.error.is_some() {
        return Ok(reply);
    }
    let again = run(conn, sql).await;
    let reset = run(conn, "RESET ROLE").await;
    if !matches!(reset, Ok(ref r) if r.error.is_none()) {
        conn.tx_status = BROKEN;
    }
    again
}

/// Runs a query for its rows (text, NULL as None); a PostgreSQL error is
/// `ServerError::Postgres`. Marks the connection [`BROKEN`] on I/O failure.
pub async fn rows(
    conn: &mut ServerConn,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, ServerError> {
    let r = conn.query_rows(sql).await;
    if matches!(r, Err(ref e) if !matches!(e, ServerError::Postgres(_))) {
        conn.tx_status = BROKEN;
    }
    r
}

/// Whether a connection can still be used (no failure seen, outside a
/// transaction, nothing unread).
pub fn reusable(conn: &ServerConn) -> bool {
    conn.tx_status == b'I' && conn.read_buf.is_empty()
}

/// A statement's future on one leg.
pub type LegFuture<'a, T = Result<Reply, ServerError>> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Runs one future per leg at once (the shards work in parallel: each
/// PREPARE and COMMIT PREPARED waits for its own WAL flush) and returns the
/// results in leg order.
pub async fn on_every_leg<T>(mut futures: Vec<LegFuture<'_, T>>) -> Vec<T> {
    use std::task::Poll;
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => *slot = Some(r),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn legs_run_at_once_and_answer_in_leg_order() {
        // Leg 0 can only finish after leg 1 has run: one after the other
        // would never end.
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let first: LegFuture<'_, u32> = Box::pin(async move { rx.await.unwrap_or(0) + 1 });
        let second: LegFuture<'_, u32> = Box::pin(async move {
            let _ = tx.send(10);
            20
        });
        let both = on_every_leg(vec![first, second]);
        let answers = crate::timer::timeout(Duration::from_secs(10), both).await;
        assert_eq!(answers.ok(), Some(vec![11, 20]));
    }

    #[tokio::test]
    async fn no_legs_no_answers() {
        assert!(on_every_leg::<u8>(Vec::new()).await.is_empty());
    }
}
