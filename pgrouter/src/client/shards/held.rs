//! What a session holds of several shards between its messages: the legs
//! of a statement or transaction, and a pipeline in progress. Data only, so
//! that the session (`session.rs`) can hold them without depending on the
//! code that runs them.

use bytes::Bytes;

use crate::client::lease::Held;
use crate::router::Role;

/// One shard's server connection for the statement in progress.
pub(in crate::client) struct Leg {
    pub shard: usize,
    pub held: Held,
    /// Its ReadyForQuery has arrived for the request in flight.
    pub ready: bool,
    /// A cancel was sent to it: it may hit the next request on this
    /// connection, so the connection is closed rather than reused.
    pub cancelled: bool,
}

/// The legs of a transaction on several shards other than the one held
/// now (`Session::server`), in shard order.
pub(in crate::client) struct TxLegs {
    pub parked: Vec<Leg>,
    /// How a leg joining later begins: the first leg's isolation level
    /// and access mode, then the transaction's savepoints.
    pub begin: String,
}

/// A pipeline between its first part and its Sync: the legs it runs on,
/// each inside its transaction block.
pub(in crate::client) struct Pipeline {
    pub(super) legs: Vec<Leg>,
    pub(super) role: Role,
    /// A statement failed: the rest up to the Sync is skipped.
    pub(super) failed: Option<Bytes>,
    /// The router's own error that failed it, inside a transaction block:
    /// raised on a leg at the Sync, so that the transaction fails as
    /// PostgreSQL's would (no server saw an error).
    pub(super) refusal: Option<super::ShardError>,
    /// Inside the client's transaction block: the legs are the
    /// transaction's (`Some(shard held before)`); its Sync commits nothing.
    pub(super) in_tx: Option<Option<usize>>,
}

impl Pipeline {
    /// A pipeline inside a transaction on several shards, on its legs.
    pub(super) fn in_tx(legs: Vec<Leg>, role: Role, held: Option<usize>) -> Pipeline {
        Pipeline {
            legs,
            role,
            failed: None,
            refusal: None,
            in_tx: Some(held),
        }
    }
}
