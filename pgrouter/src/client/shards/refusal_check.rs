//! A statement the router's shard planner refuses (0A000: a join not on
//! the keys, a row moving shards, `INSERT ... SELECT` across shards, a
//! subquery across shards, ...) may be one PostgreSQL rejects anyway — a
//! missing column, a bad `FOR UPDATE OF`. One PostgreSQL holding all rows
//! would answer with its own error, so the client gets that one: the
//! statement is Parsed on one shard first (`parse_check.rs`: analysis
//! only, nothing runs or is written), and the router's refusal stands
//! only when PostgreSQL accepts the statement.
//!
//! Asked without waiting for a connection (`check_leg.rs`; when none is
//! free the refusal stands), so only outside a transaction block that has
//! run anything: inside one, the statement may name what the
//! transaction created, which another connection cannot see. The first
//! statement after a `BEGIN` (which the router defers, psycopg's
//! transactions) is checked before the BEGIN is sent, and refused inside
//! the transaction with the answer found then.

use super::parse_check::Verdict;
use crate::client::session::Session;
use crate::protocol::frontend::{parse_parse, parse_query};
use crate::protocol::{backend, next_frame};
use crate::router::Refusal;

impl Session {
    /// `refusal`, or PostgreSQL's error for the statement it refuses when
    /// PostgreSQL rejects that statement at its Parse.
    pub(in crate::client) async fn prefer_postgres_error(&mut self, refusal: Refusal) -> Refusal {
        let at = self.front_offset();
        if let Some((checked_at, checked)) = self.refusal_checked.take() {
            if checked_at == at && refusal.sqlstate == "0A000" {
                return checked;
            }
        }
        if refusal.sqlstate != "0A000" || (self.flow.in_tx() && self.deferred_begin.is_none()) {
            return refusal;
        }
        let Some((sql, types)) = self.first_statement() else {
            return refusal;
        };
        let verdict = self.parse_verdicts(&[(&sql, &types)]).await;
        let answer = match verdict.into_iter().next() {
            Some(Verdict::Rejected(body)) => postgres_refusal(&body).unwrap_or(refusal),
            _ => refusal,
        };
        if self.deferred_begin.is_some() {
            self.refusal_checked = Some((at, answer.clone()));
        }
        answer
    }

    /// The text and declared types of the first statement of the unit at
    /// the front of the buffer: a Query of one statement, or the Parse
    /// that begins an extended batch (PostgreSQL analyses it before
    /// anything after it runs).
    fn first_statement(&self) -> Option<(String, Vec<i32>)> {
        let frame = next_frame(&self.cbuf, self.max_message).ok()??;
        let body = frame.body(&self.cbuf);
        match frame.tag {
            b'Q' => {
                let sql = parse_query(body).ok()?;
                (self.analyze(sql).statements.len() == 1).then(|| (sql.to_string(), Vec::new()))
            }
            b'P' => {
                let p = parse_parse(body).ok()?;
                Some((p.sql.to_string(), p.param_types))
            }
            _ => None,
        }
    }
}

/// PostgreSQL's ErrorResponse as the router's refusal (which carries a
/// static SQLSTATE): for the SQLSTATEs a statement's analysis gives.
fn postgres_refusal(body: &[u8]) -> Option<Refusal> {
    let f = backend::parse_error_fields(body).ok()?;
    let sqlstate = ANALYSIS_CODES.iter().find(|c| **c == f.code)?;
    Some(Refusal {
        sqlstate,
        message: f.message,
    })
}

/// SQLSTATEs of PostgreSQL's parse analysis (class 42 and the few others
/// it raises): a refusal takes PostgreSQL's only when it is one of these.
const ANALYSIS_CODES: &[&str] = &[
    "42601", "42501", "42602", "42622", "42703", "42704", "42702", "42725", "42803", "42804",
    "42809", "42830", "42846", "42883", "42939", "42P01", "42P02", "42P09", "42P10", "42P18",
    "42P19", "42P20", "42P21", "42P22", "42P08", "42710", "42712", "42701", "0A000", "22P02",
    "22023", "3F000", "2BP01", "55000",
];
