//! pgrouter: a PostgreSQL connection pooler and query router.
//!
//! The path of one statement: [`net`] accepts the socket, [`client`] logs the
//! client in and runs its session loop, [`pool`] lends it a [`server`]
//! connection, and [`protocol`] knows every byte layout on the way.

pub mod admin;
pub mod auth;
pub mod client;
pub mod clock;
pub mod encoding;
pub mod fanout;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod parse_verdicts;
pub mod paused;
pub mod pool;
pub mod preflight;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod run;
pub mod server;
pub mod signals;
pub mod state;
pub mod timer;
pub mod twophase;
pub mod worker;
pub mod worker_balance;
