//! One PostgreSQL server connection: startup, authentication, the parameters
//! the server reported, and the few queries the router runs on its own.

mod connection;
mod login;

pub use connection::{ServerConn, ServerError, ServerTarget};

/// How to reach a server's backend to cancel what it is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: std::sync::Arc<str>,
    pub pid: i32,
    pub secret: i32,
}

/// Servers send rows as large as 1 GB; the router bounds what clients send,
/// not what PostgreSQL answers.
pub const MAX_SERVER_MESSAGE: usize = 1 << 30;
