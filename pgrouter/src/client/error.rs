//! Why a client session ended, and what (if anything) the client is told.

use crate::pool::PoolError;
use crate::protocol::ProtocolError;
use crate::server::ServerError;

#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    /// The client said goodbye or closed its socket.
    #[error("client disconnected")]
    ClientGone,
    /// The router ends the session and tells the client why with a FATAL.
    #[error("{message}")]
    Fatal {
        sqlstate: &'static str,
        message: String,
    },
    /// The client's socket failed; nobody to tell.
    #[error("client i/o error: {0}")]
    ClientIo(std::io::Error),
}

impl SessionEnd {
    pub fn fatal(sqlstate: &'static str, message: impl Into<String>) -> Self {
        SessionEnd::Fatal {
            sqlstate,
            message: message.into(),
        }
    }
}

impl From<ProtocolError> for SessionEnd {
    fn from(e: ProtocolError) -> Self {
        SessionEnd::Fatal {
            sqlstate: e.sqlstate,
            message: e.message,
        }
    }
}

/// What a client is told when no server connection could be had for it,
/// at login (a pool's first connection, for the server's parameters) and
/// for a statement alike: (SQLSTATE, message). Waiting too long — for a
/// pool's connection or for room under `max_db_connections` /
/// `max_user_connections` — is SPEC's `pgrouter: timed out waiting for a
/// server connection` (57014); a server refusing the router's login passes
/// on its own SQLSTATE (28P01, 3D000, 53300...) and message.
pub(super) fn checkout_refusal(e: &PoolError) -> (&'static str, String) {
    match e {
        PoolError::CheckoutTimeout | PoolError::Cancelled | PoolError::Paused => {
            ("57014", e.to_string())
        }
        PoolError::ShuttingDown => ("57P01", e.to_string()),
        // The value of the client's hint or setting is out of range.
        PoolError::NoSuchShard { .. } => ("22023", e.to_string()),
        PoolError::NoServer => ("08006", e.to_string()),
        PoolError::Connect(ServerError::CapReached(cap)) => (
            "57014",
            format!(
                "pgrouter: timed out waiting for a server connection ({cap} is at max_db_connections / max_user_connections)"
            ),
        ),
        PoolError::Connect(ServerError::Postgres(fields)) => (
            known_login_code(&fields.code),
            format!(
                "pgrouter: server refused the connection: {}",
                fields.message
            ),
        ),
        PoolError::Connect(other) => (
            "08006",
            format!("pgrouter: could not connect to the server: {other}"),
        ),
    }
}

/// Keeps PostgreSQL's SQLSTATE for common login failures of the server;
/// anything else is reported as a connection failure.
fn known_login_code(code: &str) -> &'static str {
    match code {
        "3D000" => "3D000",
        "28P01" => "28P01",
        "28000" => "28000",
        "53300" => "53300",
        "57P03" => "57P03",
        _ => "08006",
    }
}
