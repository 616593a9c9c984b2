//! The TCP connector of the router's HTTP clients (JWKS fetches, `[jit]`
//! API calls).

use hyper_util::client::legacy::connect::HttpConnector;

/// A connector that needs no timer: the router's runtimes run without
/// tokio's time driver (see `timer.rs`), and hyper-util's connect timeout
/// and its "happy eyeballs" fallback (300 ms, then the other address
/// family) both sleep with `tokio::time`, which would panic there. The
/// callers bound the whole request with [`crate::timer::timeout`], which
/// covers the connect; the addresses of a name are tried in turn.
/// No Nagle: a request is small and waits for its answer, so a delayed
/// ACK would add tens of milliseconds to it.
pub fn connector() -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_happy_eyeballs_timeout(None);
    tcp.set_connect_timeout(None);
    tcp
}
