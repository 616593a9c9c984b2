//! PostgreSQL's own verdict on a statement, asked of one shard: the text
//! is sent as a Parse of the unnamed statement, closed again, and synced.
//! A Parse runs PostgreSQL's parse analysis and rewrite only — nothing is
//! planned or executed, so no write ever happens as a side effect — and
//! fails exactly where the statement itself would fail at its Parse
//! (42P01, 42703, 42P10, 42803, ...).
//!
//! Used where the router would otherwise answer for a statement that
//! PostgreSQL rejects anyway: a read the merge planner refuses with 0A000
//! gets PostgreSQL's error when there is one (`read.rs`), and `EXPLAIN
//! (ROUTE)` prepared with `$n` learns its parameters' types
//! (`explain_route_prepared.rs`).

use bytes::{Bytes, BytesMut};

use super::held::Leg;
use super::ShardError;
use crate::client::session::Session;
use crate::protocol::{backend, frontend};
use crate::router::Role;

/// What PostgreSQL said of a Parse (see [`parse_on_leg`]).
pub(in crate::client) struct Parsed {
    /// The parameter types it inferred (a ParameterDescription).
    pub param_types: Vec<u32>,
}

/// What one shard said of an `EXPLAIN (ROUTE)` prepared with `$n`
/// (see [`Session::learn_explain_params`]).
pub(in crate::client) struct LearntParams {
    /// The whole text, `EXPLAIN (ROUTE)` included.
    pub sql: String,
    /// The types the client declared in its Parse.
    pub declared: Vec<i32>,
    /// The parameter types PostgreSQL inferred for the explained
    /// statement, or its ErrorResponse (the whole message).
    pub answer: Result<Vec<u32>, Bytes>,
}

/// Parses `sql` (with the client's declared `types`) as the unnamed
/// statement on `leg` and closes it. `Err(ShardError::Server)`: PostgreSQL's
/// ErrorResponse, whole. Inside a transaction block a failure fails the
/// leg's transaction, as the statement's own Parse would.
pub(in crate::client) async fn parse_on_leg(
    leg: &mut Leg,
    sql: &str,
    types: &[i32],
) -> Result<Parsed, ShardError> {
    let mut request = BytesMut::new();
    frontend::write_parse(&mut request, "", sql, types);
    frontend::write_target(&mut request, b'D', b'S', "");
    frontend::write_target(&mut request, b'C', b'S', "");
    frontend::sync(&mut request);
    let conn = &mut leg.held.conn;
    if let Err(e) = conn.send(&request).await {
        conn.tx_status = b'E';
        return Err(ShardError::lost(leg.shard, &e));
    }
    let mut error: Option<Bytes> = None;
    let mut param_types = Vec::new();
    loop {
        let (tag, body) = match conn.read_message().await {
            Ok(m) => m,
            Err(e) => {
                conn.tx_status = b'E';
                return Err(ShardError::lost(leg.shard, &e));
            }
        };
        match tag {
            b'Z' => {
                conn.tx_status = body.first().copied().unwrap_or(b'I');
                break;
            }
            b'S' => conn.note_parameter_status(&body),
            b'E' if error.is_none() => error = Some(body),
            b't' => param_types = parameter_types(&body),
            _ => {}
        }
    }
    match error {
        Some(body) => Err(ShardError::Server(body)),
        None => Ok(Parsed { param_types }),
    }
}

impl Session {
    /// Whether PostgreSQL accepts the Parse of each statement (text,
    /// declared types), asked on a connection of the session's shard (else
    /// shard 0) taken for that only: the router answers a client's
    /// `PQprepare` itself on a sharded database only then. Not asked
    /// (true) on an unsharded database, or with legs of a transaction
    /// held (waiting for another connection then could stall clients that
    /// wait for these); true too when no connection comes (the Bind
    /// reports what PostgreSQL says, as before).
    pub(in crate::client) async fn postgres_accepts(
        &mut self,
        statements: &[(&str, &[i32])],
    ) -> bool {
        if self.shard_map.is_none() || self.tx_legs.is_some() || self.server.is_some() {
            return true;
        }
        let shard = self.session_routing().shard_override.unwrap_or(0) as usize;
        let role = if self.policy.read_only {
            Role::Replica
        } else {
            Role::Primary
        };
        let Ok(mut legs) = self.take_legs(&[shard], role).await else {
            return true;
        };
        let mut accepted = true;
        if let Some(leg) = legs.first_mut() {
            for (sql, types) in statements {
                if let Err(ShardError::Server(_)) = parse_on_leg(leg, sql, types).await {
                    accepted = false;
                    break;
                }
            }
        }
        self.give_back(legs);
        accepted
    }

    /// Asks one shard (the session's, else shard 0) for the parameter
    /// types of the statement an `EXPLAIN (ROUTE)` prepared with `$n`
    /// explains (see [`Session::explain_wants_params`]): only PostgreSQL
    /// infers them, and a client that describes the statement (asyncpg)
    /// encodes its arguments by them. What PostgreSQL said — the types, or
    /// its error — is kept for the answer.
    pub(in crate::client) async fn learn_explain_params(&mut self) {
        let Some((sql, types)) = self.explain_wants_params.take() else {
            return;
        };
        let inner = pgrouter_parser::explained_statement(&sql).unwrap_or(&sql);
        let shard = self.session_routing().shard_override.unwrap_or(0) as usize;
        let role = if self.policy.read_only {
            Role::Replica
        } else {
            Role::Primary
        };
        let parsed = match self.take_legs(&[shard], role).await {
            Ok(mut legs) => {
                let parsed = match legs.first_mut() {
                    Some(leg) => parse_on_leg(leg, inner, &types).await,
                    None => Err(ShardError::router("XX000", "no shard")),
                };
                self.give_back(legs);
                parsed
            }
            Err(e) => Err(e),
        };
        let answer = parsed.map(|p| p.param_types).map_err(|e| {
            let mut m = BytesMut::new();
            e.write(&mut m);
            m.freeze()
        });
        self.explain_params = Some(LearntParams {
            sql,
            declared: types,
            answer,
        });
    }
}

/// The OIDs of a ParameterDescription's body.
fn parameter_types(body: &[u8]) -> Vec<u32> {
    let n = body
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
    (0..n)
        .filter_map(|i| {
            let at = 2 + 4 * i;
            Some(u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?))
        })
        .collect()
}

/// A ParameterDescription of `types`, for the client.
pub(in crate::client) fn put_parameter_description(out: &mut BytesMut, types: &[u32]) {
    backend::put_message(out, b't', |b| {
        b.extend_from_slice(&(types.len() as u16).to_be_bytes());
        for t in types {
            b.extend_from_slice(&t.to_be_bytes());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_descriptions_read_back() {
        let mut out = BytesMut::new();
        put_parameter_description(&mut out, &[20, 25]);
        assert_eq!(parameter_types(&out[5..]), vec![20, 25]);
        assert_eq!(parameter_types(&[0, 0]), Vec::<u32>::new());
    }
}
