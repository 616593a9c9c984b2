use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::state::State;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Accepts clients until shutdown starts; each client runs in its own task.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        state.clients.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
            crate::client::handle(stream, peer, state.clone(), id).await;
            state.clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tracing::info!("stopped accepting new clients");
}
