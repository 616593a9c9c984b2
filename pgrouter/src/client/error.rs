//! Why a client session ended, and what (if anything) the client is told.

use crate::protocol::ProtocolError;

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
