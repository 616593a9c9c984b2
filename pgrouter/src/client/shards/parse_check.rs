//! PostgreSQL's own verdict on a statement, asked of one shard: the text
//! is sent as a Parse of a statement of the router's, described, closed
//! again and synced, so the connection is left as it was. A Parse runs
//! PostgreSQL's parse analysis and rewrite only — nothing is planned or
//! executed, so no write ever happens as a side effect — and fails exactly
//! where the statement itself would fail at its Parse (42P01, 42703,
//! 42P10, 42803, ...).
//!
//! Used where the router would otherwise answer for a statement that
//! PostgreSQL rejects anyway: a `PQprepare` the router answers itself
//! (`local_answers.rs`), a refusal of the shard planner (`read.rs`,
//! `refusal_check.rs`), and `EXPLAIN (ROUTE)` prepared with `$n`, which
//! learns its parameters' types (`explain_route_prepared.rs`). Where the
//! check runs is `check_leg.rs` (never a wait for a connection); accepted
//! statements are remembered for every client (`crate::parse_verdicts`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::held::Leg;
use super::ShardError;
use crate::client::session::Session;
use crate::protocol::{backend, frontend};

/// The statement a check prepares, closed again at once: not a name the
/// router gives the statements it shares (`pgrouter_<n>`), and one a
/// client is most unlikely to use (if it did, on its own connection, the
/// check is simply not answered: 42P05).
const CHECK_NAME: &str = "pgrouter_parse_check";

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
    /// statement, or its ErrorResponse (the whole message); `None`: not
    /// asked (no connection free), the statement goes on as it is.
    pub answer: Option<Result<Vec<u32>, Bytes>>,
}

/// PostgreSQL's verdict on one statement's Parse.
pub(in crate::client) enum Verdict {
    /// Accepted, with the parameter types it inferred.
    Accepted(Arc<[u32]>),
    /// Rejected: PostgreSQL's ErrorResponse (its body).
    Rejected(Bytes),
    /// Not asked: no connection to ask on without waiting, or it was lost.
    Unknown,
}

/// Parses `sql` (with the client's declared `types`) as the router's
/// statement on `leg`, describes it and closes it, then syncs.
/// `Err(ShardError::Server)`: PostgreSQL's ErrorResponse (body). Inside a
/// transaction block a failure fails the leg's transaction, as the
/// statement's own Parse would.
pub(in crate::client) async fn parse_on_leg(
    leg: &mut Leg,
    sql: &str,
    types: &[i32],
) -> Result<Parsed, ShardError> {
    let mut request = BytesMut::new();
    frontend::write_parse(&mut request, CHECK_NAME, sql, types);
    frontend::write_target(&mut request, b'D', b'S', CHECK_NAME);
    frontend::write_target(&mut request, b'C', b'S', CHECK_NAME);
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
    /// PostgreSQL's verdicts on the Parse of each statement (text, declared
    /// types), in order: remembered ones first, the others asked of the
    /// session's shard (else shard 0) on a connection `check_leg.rs` finds
    /// without waiting. After a rejection the rest are not asked. All
    /// `Unknown` on an unsharded database, and when no connection is free.
    pub(in crate::client) async fn parse_verdicts(
        &mut self,
        statements: &[(&str, &[i32])],
    ) -> Vec<Verdict> {
        let context = self.verdict_context();
        let mut verdicts: Vec<Verdict> = statements
            .iter()
            .map(
                |(sql, types)| match self.rt.parse_verdicts.accepted(context, sql, types) {
                    Some(params) => Verdict::Accepted(params),
                    None => Verdict::Unknown,
                },
            )
            .collect();
        let asked = verdicts.iter().any(|v| matches!(v, Verdict::Unknown));
        if self.shard_map.is_none() || !asked {
            return verdicts;
        }
        let Some(mut check) = self.check_leg().await else {
            return verdicts;
        };
        for ((sql, types), verdict) in statements.iter().zip(verdicts.iter_mut()) {
            if matches!(verdict, Verdict::Accepted(_)) {
                continue;
            }
            match parse_on_leg(check.leg(), sql, types).await {
                Ok(parsed) => {
                    let params: Arc<[u32]> = parsed.param_types.into();
                    self.rt.parse_verdicts.accept(context, sql, types, &params);
                    *verdict = Verdict::Accepted(params);
                }
                // The router's own statement name is taken: not an answer
                // about the client's statement.
                Err(ShardError::Server(body)) if sqlstate_of(&body) != "42P05" => {
                    *verdict = Verdict::Rejected(body);
                    break;
                }
                Err(_) => break,
            }
        }
        self.return_check_leg(check);
        verdicts
    }

    /// Whether the router may answer the Parse of each statement itself (a
    /// client's `PQprepare`): false when PostgreSQL rejects one, and the
    /// batch then goes to a server the usual way, which gives PostgreSQL's
    /// error at the Parse. True when it accepts them all, on an unsharded
    /// database, and when it could not be asked without waiting for a
    /// connection (the Bind then reports what PostgreSQL says).
    pub(in crate::client) async fn postgres_accepts(
        &mut self,
        statements: &[(&str, &[i32])],
    ) -> bool {
        if self.shard_map.is_none() {
            return true;
        }
        let verdicts = self.parse_verdicts(statements).await;
        !verdicts.iter().any(|v| matches!(v, Verdict::Rejected(_)))
    }

    /// Asks one shard (the session's, else shard 0) for the parameter
    /// types of the statement an `EXPLAIN (ROUTE)` prepared with `$n`
    /// explains (see [`Session::explain_wants_params`]): only PostgreSQL
    /// infers them, and a client that describes the statement (asyncpg)
    /// encodes its arguments by them. What PostgreSQL said — the types, or
    /// its error — is kept for the answer; nothing when it could not be
    /// asked without waiting (the statement then goes to a server as it
    /// is).
    pub(in crate::client) async fn learn_explain_params(&mut self) {
        let Some((sql, types)) = self.explain_wants_params.take() else {
            return;
        };
        let inner = pgrouter_parser::explained_statement(&sql).unwrap_or(&sql);
        let verdict = self.parse_verdicts(&[(inner, &types)]).await;
        let answer = match verdict.into_iter().next() {
            Some(Verdict::Accepted(params)) => Some(Ok(params.to_vec())),
            Some(Verdict::Rejected(body)) => {
                let mut m = BytesMut::new();
                ShardError::Server(body).write(&mut m);
                Some(Err(m.freeze()))
            }
            _ => None,
        };
        self.explain_params = Some(LearntParams {
            sql,
            declared: types,
            answer,
        });
    }
}

/// The SQLSTATE of an ErrorResponse's body.
fn sqlstate_of(body: &[u8]) -> String {
    backend::parse_error_fields(body)
        .map(|f| f.code)
        .unwrap_or_default()
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
