//! Lease accounting of a pool when waits end early. The server here is a
//! socket that accepts and never answers, so a checkout that opens a
//! connection holds its lease for as long as the test wants (these tests are
//! about the queue, not about PostgreSQL: the integration suite covers that).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::test_support::pool_of_one;
use super::{Pool, PoolError};

/// A listener that accepts connections and keeps them open in silence.
async fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

/// Starts a checkout that takes the pool's only lease and keeps it (its
/// connection never finishes logging in).
async fn hold_the_only_lease(pool: &Arc<Pool>) -> tokio::task::JoinHandle<()> {
    let holder = pool.clone();
    let task = tokio::spawn(async move {
        let _ = holder.checkout().await;
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.checked_out() != 1 {
        assert!(
            Instant::now() < deadline,
            "the first checkout never took its lease"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task
}

#[tokio::test]
async fn a_client_that_stops_waiting_frees_no_lease_it_never_had() {
    let pool = pool_of_one(silent_server().await, Duration::from_secs(30));
    let holder = hold_the_only_lease(&pool).await;

    let gave_up = tokio::time::timeout(Duration::from_millis(100), pool.checkout()).await;
    assert!(
        gave_up.is_err(),
        "the second checkout should still be waiting"
    );
    assert_eq!(pool.stats().waiting, 0, "it left the queue");
    assert_eq!(pool.checked_out(), 1, "the holder's lease is still counted");

    holder.abort();
    let _ = holder.await;
    assert_eq!(
        pool.checked_out(),
        0,
        "the holder's lease came back when it gave up"
    );
}

#[tokio::test]
async fn a_waiting_client_times_out_after_checkout_timeout() {
    let pool = pool_of_one(silent_server().await, Duration::from_millis(200));
    let holder = hold_the_only_lease(&pool).await;

    let started = Instant::now();
    let result = pool.checkout().await;
    let waited = started.elapsed();
    assert!(matches!(result, Err(PoolError::CheckoutTimeout)));
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(pool.stats().waiting, 0);
    assert_eq!(pool.checked_out(), 1);
    holder.abort();
}
