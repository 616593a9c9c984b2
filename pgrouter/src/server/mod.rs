//! One PostgreSQL server connection: startup, authentication, the parameters
//! the server reported, and the few queries the router runs on its own.

mod connection;
mod login;
mod open;
mod statements;

pub use connection::{ServerConn, ServerError, ServerTarget};
pub use statements::ServerStatements;

/// Shared statements kept prepared per server connection before the least
/// recently used is closed.
pub const STATEMENTS_PER_SERVER: usize = 1000;

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
