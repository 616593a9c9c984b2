//! Opening a server connection: the socket (TCP with optional TLS, or a
//! Unix-domain socket), then the login (`login.rs`) on the new connection.
//! Kept apart from `connection.rs` so that the connection knows nothing of
//! how it was logged in to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::connection::{ServerConn, ServerError, ServerTarget};
use crate::net::ServerStream;

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// One shared `Arc` per server address, for every connection to it. The
/// session tells the readers of its current server (`CancelSlot`, SHOW
/// CLIENTS: `client/current_server.rs`) at every checkout, and the address
/// is replaced (a lock and an `Arc` clone) only when its pointer differs:
/// with an `Arc` per connection it differed at almost every checkout of a
/// pool. Addresses come from the configuration, so the set stays small.
fn shared_addr(addr: String) -> std::sync::Arc<str> {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex, OnceLock};
    static ADDRS: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    let mut addrs = ADDRS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = addrs.get(addr.as_str()) {
        return known.clone();
    }
    let shared: Arc<str> = addr.into();
    addrs.insert(shared.clone());
    shared
}

impl ServerConn {
    pub async fn connect(
        target: &ServerTarget,
        timeout: Duration,
    ) -> Result<ServerConn, ServerError> {
        match crate::timer::timeout(timeout, Self::connect_inner(target)).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::Timeout),
        }
    }

    async fn connect_inner(target: &ServerTarget) -> Result<ServerConn, ServerError> {
        let addr = target.addr();
        // TLS is never used over a Unix-domain socket (as in libpq): the
        // bytes do not leave the machine.
        let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{addr}: {e}"));
        let stream = if target.unix_socket().is_some() {
            ServerStream::unix(
                tokio::net::UnixStream::connect(&addr)
                    .await
                    .map_err(named)?,
            )?
        } else {
            let tcp = TcpStream::connect(&addr).await.map_err(named)?;
            tcp.set_nodelay(true)?;
            crate::net::tls::connect_server(tcp, &target.host, &target.tls).await?
        };
        let mut conn = ServerConn {
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            stream,
            read_buf: BytesMut::with_capacity(16 * 1024),
            write_buf: BytesMut::new(),
            text_codec: None,
            addr: shared_addr(addr),
            backend_pid: 0,
            backend_secret: 0,
            params: HashMap::new(),
            reported: HashMap::new(),
            router_set: HashMap::new(),
            created: crate::clock::Tick::now(),
            last_used: crate::clock::Tick::now(),
            tx_status: b'I',
            statements: super::ServerStatements::new(super::STATEMENTS_PER_SERVER),
            params_fingerprint: 0,
            startup_params: HashMap::new(),
            needs_reset: false,
            needs_discard: false,
            last_client: 0,
            wrote: false,
            discard_due: false,
            permits: Vec::new(),
            caps_epoch: 0,
            low_water: Default::default(),
        };
        super::login::login(&mut conn, target).await?;
        conn.startup_params = conn.params.clone();
        conn.reported = conn.params.clone();
        Ok(conn)
    }
}
