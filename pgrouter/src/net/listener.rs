use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

use super::tls::{ClientTlsHandle, ClientTlsSetup};
use super::ClientStream;
use crate::state::State;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Accepts clients until shutdown starts, with the client TLS set-up loaded
/// now from the config in force. A certificate that cannot be loaded is
/// logged and TLS is then not offered (`client_tls = require` refuses every
/// client); callers that want startup to fail instead load it themselves
/// and use [`serve_with_tls`].
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let config = state.runtime.load().config.clone();
    let setup = match ClientTlsSetup::from_general(&config.general) {
        Ok(setup) => setup,
        Err(e) => {
            tracing::error!(error = %e, "client TLS is not available");
            ClientTlsSetup {
                mode: config.general.client_tls,
                config: None,
                end_point: None,
            }
        }
    };
    serve_with_tls(listener, state, ClientTlsHandle::new(setup)).await
}

/// Accepts clients until shutdown starts; each client runs in its own task
/// with the TLS set-up current when it was accepted.
pub async fn serve_with_tls(listener: TcpListener, state: Arc<State>, tls: Arc<ClientTlsHandle>) {
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
                crate::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // On a dual-stack listener (`listen = "[::]:6432"`) an IPv4 client
        // shows as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`), which
        // is not a loopback address to `is_loopback`: loopback clients would
        // lose what only loopback allows without TLS (JWT and JIT tokens),
        // and the JIT API, SHOW CLIENTS and the log would see the mapped
        // form. The client's own IPv4 address is what it is.
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.current();
        state.clients.fetch_add(1, Ordering::Relaxed);
        let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        // The socket moves to the event loop its session runs on (a
        // worker's, if any): taken off this one here, registered with that
        // one when its task starts there (`ClientStream::plain`).
        let moved = stream.into_std();
        // The client's place on its worker travels with its session (which
        // may move to another worker between transactions).
        let (worker, seat) = crate::worker::next().unzip();
        let session = async move {
            match moved.and_then(ClientStream::plain) {
                Ok(stream) => serve_client(stream, peer, state, id, tls, seat).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register a client's socket");
                    state.clients.fetch_sub(1, Ordering::Relaxed);
                }
            }
        };
        match worker {
            Some(worker) => {
                worker.spawn(session);
            }
            None => {
                tokio::spawn(session);
            }
        }
    }
    tracing::info!("stopped accepting new clients");
}

/// One client from its first byte to its last, counted in `state.clients`
/// (incremented when it was accepted).
async fn serve_client(
    stream: ClientStream,
    peer: std::net::SocketAddr,
    state: Arc<State>,
    id: u64,
    tls: ClientTlsSetup,
    seat: Option<crate::worker::Seat>,
) {
    crate::client::handle(stream, peer, state.clone(), id, tls, seat).await;
    state.clients.fetch_sub(1, Ordering::Relaxed);
}
