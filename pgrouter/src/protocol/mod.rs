//! The PostgreSQL v3 wire protocol as plain data: framing, typed views of the
//! messages the router inspects, and writers for the messages it makes.
//!
//! Nothing here does I/O. Readers take a byte slice that came from a socket and
//! never panic on it: every malformed input becomes a [`ProtocolError`] that
//! ends only that one connection with SQLSTATE 08P01.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod reader;
pub mod startup;

pub use frame::{next_frame, next_frame_within, Frame};

/// A protocol violation by the peer. It carries the SQLSTATE the client sees.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn violation(message: impl Into<String>) -> Self {
        ProtocolError {
            sqlstate: "08P01",
            message: message.into(),
        }
    }
}
