//! The leg's one write path (`Held::flush`), `ServerConn::send` after
//! messages were queued, and what a connection takes back to its pool.
//! The server is a stand-in that logs every client in and records the bytes
//! it gets: these tests are about the router's buffers, not about
//! PostgreSQL (the integration suite runs against PostgreSQL).

use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::lease::Held;
use crate::pool::test_support::pool_of_one;
use crate::pool::{Pool, ServerSlot};
use crate::protocol::frontend;

/// A server that logs in every connection (AuthenticationOk,
/// BackendKeyData, ReadyForQuery) and then passes on each read's bytes.
async fn recording_server() -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let len = socket.read_i32().await.expect("startup length");
                let mut startup = vec![0; len as usize - 4];
                socket.read_exact(&mut startup).await.expect("startup");
                let mut hello = Vec::new();
                hello.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
                hello.extend_from_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0, 7, 0, 0, 0, 9]);
                hello.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
                socket.write_all(&hello).await.expect("login answer");
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, rx)
}

/// The next `len` bytes the server got (from any number of reads).
async fn received(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let more = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the server got the bytes in time")
            .expect("the server is up");
        got.extend_from_slice(&more);
    }
    got
}

async fn leg(pool: &Arc<Pool>) -> Held {
    let slot = ServerSlot {
        pool: pool.clone(),
        health: Arc::new(crate::pool::health::ServerHealth::new(
            "test".into(),
            pgrouter_config::ServerRole::Primary,
            None,
            Duration::from_secs(1),
            Arc::new(crate::metrics::Metrics::new()),
        )),
    };
    let conn = pool.checkout().await.expect("checkout");
    Held::new(
        conn,
        &slot,
        0,
        true,
        crate::clock::Tick::now(),
        Default::default(),
    )
}

#[tokio::test]
async fn flush_sends_the_queue_in_one_write_and_counts_it() {
    let (port, mut rx) = recording_server().await;
    let pool = pool_of_one(port, Duration::from_secs(5));
    let mut held = leg(&pool).await;
    assert!(held.expect.is_empty() && held.sync_undo.is_none() && !held.resync_params);

    frontend::query(&mut held.conn.write_buf, "SELECT 1");
    frontend::sync(&mut held.conn.write_buf);
    let queued = held.conn.write_buf.to_vec();
    held.flush().await.expect("flush");
    assert!(held.conn.write_buf.is_empty(), "the queue is emptied");
    assert_eq!(received(&mut rx, queued.len()).await, queued);
    assert_eq!(pool.metrics.bytes_received(), queued.len() as u64);

    // Nothing queued: nothing written, nothing counted.
    held.flush().await.expect("flush");
    assert_eq!(pool.metrics.bytes_received(), queued.len() as u64);
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn send_writes_what_was_queued_first() {
    let (port, mut rx) = recording_server().await;
    let pool = pool_of_one(port, Duration::from_secs(5));
    let mut held = leg(&pool).await;
    held.conn.write_buf.put_slice(&[b'H', 0, 0, 0, 4]);
    let mut request = Vec::new();
    request.put_slice(&[b'S', 0, 0, 0, 4]);
    held.conn.send(&request).await.expect("send");
    assert!(held.conn.write_buf.is_empty());
    assert_eq!(
        received(&mut rx, 10).await,
        [b'H', 0, 0, 0, 4, b'S', 0, 0, 0, 4]
    );
}

#[tokio::test]
async fn a_connection_given_back_with_unsent_bytes_is_not_lent_again() {
    let (port, _rx) = recording_server().await;
    let pool = pool_of_one(port, Duration::from_secs(5));

    let held = leg(&pool).await;
    let first = held.conn.id;
    Pool::checkin(held.conn);
    let held = leg(&pool).await;
    assert_eq!(held.conn.id, first, "a clean connection is lent again");

    let mut held = held;
    frontend::sync(&mut held.conn.write_buf);
    Pool::checkin(held.conn);
    let held = leg(&pool).await;
    assert_ne!(
        held.conn.id, first,
        "closed: what the server was asked is unknown"
    );
}
