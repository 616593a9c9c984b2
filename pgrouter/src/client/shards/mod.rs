//! Statements that need several shards (SPEC §5 "Sharding"): the session
//! takes one server connection ("leg") per shard, in shard order, runs the
//! statement on all of them concurrently and answers the client as one
//! PostgreSQL holding all the rows would — or with a clear error.
//!
//! - reads: results merged as they stream in (`read.rs`);
//! - DDL, reference-table writes, keyless UPDATE/DELETE: the same statement
//!   everywhere, in one transaction per shard committed together (`write.rs`);
//! - statements that cannot run in a transaction block (`CREATE INDEX
//!   CONCURRENTLY`, `VACUUM`): shard by shard, naming the shards that failed.

mod check_leg;
mod collation;
mod columns;
mod copy_in;
mod copy_out;
mod deferred_begin;
pub(in crate::client) mod held;
mod insert_split;
mod legs;
pub(in crate::client) mod parse_check;
mod pipeline;
mod read;
mod refusal_check;
mod returning_order;
mod tx_legs;
mod unit;
mod write;

use unit::{Taken, Unit};

use bytes::{Buf, Bytes};

use super::error::SessionEnd;
use super::session::Session;
use crate::pool::PoolError;
use crate::protocol::backend::{self, ErrorFields, Severity};
use crate::router::{ManyKind, Refusal, Role, ShardChoice};
use crate::server::ServerError;

pub(in crate::client) use deferred_begin::Deferred;
pub(in crate::client) use held::Leg;
pub(in crate::client) use held::Pipeline;
pub(in crate::client) use legs::give_back_to_pools;
pub(in crate::client) use tx_legs::TxStep;

/// Why a statement on several shards failed: a server's own error
/// (forwarded as it was sent) or the router's.
pub(in crate::client) enum ShardError {
    Server(Bytes),
    Router {
        sqlstate: &'static str,
        message: String,
    },
}

impl ShardError {
    fn router(sqlstate: &'static str, message: impl Into<String>) -> ShardError {
        ShardError::Router {
            sqlstate,
            message: message.into(),
        }
    }

    fn from_pool(e: PoolError) -> ShardError {
        let sqlstate = match &e {
            PoolError::CheckoutTimeout
            | PoolError::Cancelled
            | PoolError::Paused
            | PoolError::Connect(ServerError::CapReached(_)) => "57014",
            PoolError::NoSuchShard { .. } => "22023",
            _ => "08006",
        };
        ShardError::router(sqlstate, format!("pgrouter: {e}"))
    }

    /// An error of the router's own work on a leg (its prologue, its
    /// BEGIN): the server's SQLSTATE where it is a common one.
    fn from_fields(shard: usize, f: ErrorFields) -> ShardError {
        ShardError::router(
            known_code(&f.code),
            format!("pgrouter: shard {shard}: {}", f.message),
        )
    }

    fn lost(shard: usize, e: &dyn std::fmt::Display) -> ShardError {
        ShardError::router(
            "08006",
            format!("pgrouter: lost the connection to shard {shard}: {e}"),
        )
    }

    /// Appends the ErrorResponse.
    fn write(&self, out: &mut bytes::BytesMut) {
        match self {
            ShardError::Server(body) => {
                backend::put_message(out, b'E', |b| b.extend_from_slice(body))
            }
            ShardError::Router { sqlstate, message } => {
                backend::error_response(out, Severity::Error, sqlstate, message)
            }
        }
    }

    pub(super) fn parts(&self) -> (&'static str, String) {
        match self {
            ShardError::Server(body) => {
                let f = backend::parse_error_fields(body).unwrap_or_default();
                (known_code(&f.code), f.message)
            }
            ShardError::Router { sqlstate, message } => (sqlstate, message.clone()),
        }
    }

    fn sqlstate(&self) -> String {
        match self {
            ShardError::Server(body) => backend::parse_error_fields(body)
                .map(|f| f.code)
                .unwrap_or_default(),
            ShardError::Router { sqlstate, .. } => sqlstate.to_string(),
        }
    }
}

impl Session {
    /// Runs the unit of work at the front of the client's buffer — a Query,
    /// or an extended batch up to its Sync — on the shards `choice` names.
    /// False: the batch's Sync has not arrived yet (nothing was taken).
    pub(super) async fn run_on_shards(
        &mut self,
        tag: u8,
        role: Role,
        choice: ShardChoice,
    ) -> Result<bool, SessionEnd> {
        let Some(many) = choice.many.clone() else {
            return Ok(true);
        };
        if many.kind == ManyKind::Pipeline {
            self.pipeline_step(role).await?;
            return self.flush_client().await.map(|_| true);
        }
        let unit = match self.take_unit(tag)? {
            Taken::Unit(unit) => unit,
            Taken::Refused(e) => {
                let len = crate::protocol::next_frame(&self.cbuf, self.max_message)?
                    .map_or(0, |f| f.total_len);
                let (sqlstate, message) = e.parts();
                self.refuse(tag, len, Refusal { sqlstate, message });
                return self.flush_client().await.map(|_| true);
            }
            Taken::Failed(e) => {
                self.state.metrics.record_error(&e.sqlstate());
                e.write(&mut self.to_client);
                backend::ready_for_query(&mut self.to_client, b'I');
                return self.flush_client().await.map(|_| true);
            }
        };
        if let Some(e) = row_limit_refusal(&unit, many.kind) {
            self.state.metrics.record_error("0A000");
            e.write(&mut self.to_client);
            backend::ready_for_query(&mut self.to_client, b'I');
            return self.flush_client().await.map(|_| true);
        }
        self.state.metrics.record_shards(many.shards.len());
        let result = match many.kind {
            ManyKind::Read => self.read_on_shards(&unit, role, &many.shards).await,
            ManyKind::Ddl | ManyKind::Replicate | ManyKind::Write => {
                self.write_on_shards(&unit, many.kind, &many.shards).await
            }
            ManyKind::InsertSplit => self.insert_on_shards(&unit).await,
            ManyKind::CopyIn if unit.extended.is_none() => self.copy_in_on_shards(&unit, &many.shards).await,
            ManyKind::CopyOut if unit.extended.is_none() => {
                self.copy_out_on_shards(&unit, role, &many.shards).await
            }
            ManyKind::CopyIn | ManyKind::CopyOut => Err(extended_copy_refusal(many.shards.len())),
            ManyKind::Pipeline => Err(ShardError::router(
                "0A000",
                format!(
                    "pgrouter: this statement needs {} shards ({}): not supported yet; HINT: send the rows \
                     of each shard separately",
                    many.shards.len(),
                    choice.reason
                ),
            )),
        };
        if let Err(e) = result {
            self.state.metrics.record_error(&e.sqlstate());
            e.write(&mut self.to_client);
        }
        backend::ready_for_query(&mut self.to_client, b'I');
        self.registered
            .info
            .set_state(super::registry::ClientState::Idle);
        self.flush_client().await.map(|_| true)
    }
}

/// An Execute with a row limit on the unnamed portal (asyncpg's
/// `fetchrow`/`fetchval` ask for one row) is answered on a merged read as
/// PostgreSQL answers it: that many rows, then PortalSuspended. A named
/// portal read in parts (a cursor: asyncpg's `cursor()`, JDBC's fetch
/// size) would need the merge kept open between Executes, and a write's
/// RETURNING rows are not cut so: both are refused.
fn row_limit_refusal(unit: &Unit, kind: ManyKind) -> Option<ShardError> {
    let e = unit.extended.as_ref().filter(|e| e.max_rows > 0)?;
    let what = if kind != ManyKind::Read {
        "a write on several shards executed with a row limit"
    } else if e.named_portal {
        CURSOR_READ
    } else {
        return None;
    };
    Some(row_limit_error(what))
}

/// What a cursor on several shards is, for its refusal.
const CURSOR_READ: &str =
    "reading a result on several shards in parts (a cursor: Execute of a named portal with a row limit)";

fn row_limit_error(what: &str) -> ShardError {
    ShardError::router(
        "0A000",
        format!(
            "pgrouter: {what} is not supported; HINT: fetch all rows at once, or add the shard key"
        ),
    )
}

/// The refusal of a cursor read on several shards whose batch ends with
/// Flush (asyncpg's `cursor()`: Bind, Execute with a row limit, Flush).
pub(super) fn cursor_refusal() -> ShardError {
    row_limit_error(CURSOR_READ)
}

/// COPY of a sharded table sent through the extended query protocol: the
/// rows are split only for a COPY sent as a simple Query (as psql,
/// psycopg, asyncpg, pgx and JDBC's CopyManager send it).
fn extended_copy_refusal(shards: usize) -> ShardError {
    ShardError::router(
        "0A000",
        format!(
            "pgrouter: COPY on {shards} shards through the extended query protocol is not supported; \
             HINT: send the COPY as a simple Query"
        ),
    )
}

/// A server's SQLSTATE as a static string (the common ones; else XX000).
fn known_code(code: &str) -> &'static str {
    const CODES: &[&str] = &[
        "0A000", "22P02", "22003", "22023", "23505", "23503", "23502", "23514", "25P02", "40001",
        "40P01", "42501", "42601", "42703", "42P01", "42P07", "42710", "55000", "57014", "58000",
        "25000", "08006", "08007", "22P04", "08P01", "42704", "3F000",
    ];
    CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("XX000")
}

/// `SELECT 5` → ("SELECT", Some(5)); `INSERT 0 5` → ("INSERT 0", Some(5)).
fn split_tag(tag: &[u8]) -> (&[u8], Option<u64>) {
    let tag = tag.strip_suffix(&[0]).unwrap_or(tag);
    match tag.iter().rposition(|&b| b == b' ') {
        Some(at) => match std::str::from_utf8(&tag[at + 1..])
            .ok()
            .and_then(|n| n.parse().ok())
        {
            Some(n) => (&tag[..at], Some(n)),
            None => (tag, None),
        },
        None => (tag, None),
    }
}

/// The client-bound CommandComplete of a tag with its count replaced.
fn put_tag(out: &mut bytes::BytesMut, head: &[u8], count: Option<u64>) {
    backend::put_message(out, b'C', |b| {
        b.extend_from_slice(head);
        if let Some(n) = count {
            b.extend_from_slice(format!(" {n}").as_bytes());
        }
        b.extend_from_slice(&[0]);
    });
}

/// Takes the next whole message of a leg's read buffer.
fn next_message(leg: &mut Leg) -> Result<Option<(u8, Bytes)>, SessionEnd> {
    let Some(frame) = crate::protocol::next_frame(&leg.held.conn.read_buf, 1 << 30)? else {
        return Ok(None);
    };
    let mut msg = leg.held.conn.read_buf.split_to(frame.total_len).freeze();
    msg.advance(5);
    Ok(Some((frame.tag, msg)))
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn tags_split_into_head_and_count() {
        assert_eq!(split_tag(b"SELECT 5\0"), (&b"SELECT"[..], Some(5)));
        assert_eq!(split_tag(b"INSERT 0 12\0"), (&b"INSERT 0"[..], Some(12)));
        assert_eq!(split_tag(b"CREATE TABLE\0"), (&b"CREATE TABLE"[..], None));
        assert_eq!(split_tag(b"BEGIN"), (&b"BEGIN"[..], None));
    }
}
