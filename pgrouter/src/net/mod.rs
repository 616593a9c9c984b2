//! Sockets: the listener that accepts clients, the stream types clients and
//! servers are reached through (plain TCP or TLS), and the TLS set-up.

mod listener;
pub mod low_water;
mod read_interest;
mod stream;
pub mod tls;

pub use listener::{serve, serve_with_tls};
pub use stream::{ClientStream, MovingClient, PlainTcp, PlainUnix, ServerStream, WriteThrough};
