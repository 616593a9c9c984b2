//! Sockets: the listener that accepts clients and the stream type they use.

mod listener;

pub use listener::serve;

/// A client's connection. A plain TCP stream until TLS arrives.
pub type ClientStream = tokio::net::TcpStream;
