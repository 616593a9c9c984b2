//! The unit of work a statement on several shards is: a simple Query, or
//! an extended batch of one statement (`[Parse] Bind [Describe portal]
//! Execute Sync`, what psycopg, asyncpg and libpq send). Each leg gets the
//! same shape of request with the shard's SQL; the client gets the answers
//! its own messages ask for, once.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pgrouter_parser::Analysis;

use super::ShardError;
use crate::client::error::SessionEnd;
use crate::client::session::Session;
use crate::protocol::frontend::{self, parse_bind_names, parse_parse, parse_query};
use crate::protocol::{backend, next_frame};

/// What [`Session::take_unit`] found.
pub(super) enum Taken {
    Unit(Unit),
    /// A batch of another shape: nothing taken (it is refused whole).
    Refused(ShardError),
    /// Taken, but it cannot run.
    Failed(ShardError),
}

pub(super) struct Unit {
    pub sql: String,
    pub analysis: Arc<Analysis>,
    /// None for a simple Query.
    pub extended: Option<Extended>,
}

pub(super) struct Extended {
    /// The batch had a Parse (it gets its ParseComplete).
    pub parsed: bool,
    /// The client asked for the portal's RowDescription.
    pub describe: bool,
    pub param_types: Vec<i32>,
    /// The Bind after its portal and statement names: parameter formats,
    /// values, result formats.
    pub bind_rest: Bytes,
    /// The Execute's row limit (0 = all).
    pub max_rows: i32,
    /// The Execute names a portal (a cursor a client reads in parts), not
    /// the unnamed one.
    pub named_portal: bool,
}

impl Unit {
    /// The request for one leg, running `sql` (the shard's version of the
    /// statement) with the client's parameters.
    pub fn request(&self, sql: &str, out: &mut BytesMut) {
        let rest = self.extended.as_ref().map_or(&[][..], |e| &e.bind_rest[..]);
        self.request_with_bind(sql, rest, out)
    }

    /// Like [`Self::request`] with another Bind body (result formats for
    /// hidden columns, or a part's parameters).
    pub fn request_with_bind(&self, sql: &str, bind_rest: &[u8], out: &mut BytesMut) {
        match &self.extended {
            None => frontend::query(out, sql),
            Some(e) => {
                frontend::write_parse(out, "", sql, &e.param_types);
                frontend::write_bind(out, "", "", bind_rest);
                frontend::write_target(out, b'D', b'P', "");
                execute_all(out);
                frontend::sync(out);
            }
        }
    }

    /// The answers owed before the results: ParseComplete, BindComplete.
    pub fn preamble(&self, out: &mut BytesMut) {
        if let Some(e) = &self.extended {
            if e.parsed {
                backend::parse_complete(out);
            }
            backend::put_message(out, b'2', |_| {});
        }
    }

    /// The preamble of a merged read, said when a leg has said it: a Bind
    /// the shards refuse (wrong parameter count, a bad value) gets the
    /// ErrorResponse alone, as from PostgreSQL, not a BindComplete first.
    pub fn owed_preamble(&self) -> OwedPreamble {
        OwedPreamble {
            parse: self.extended.as_ref().is_some_and(|e| e.parsed),
            bind: self.extended.is_some(),
        }
    }

    /// Whether a leg's RowDescription/NoData reaches the client.
    pub fn describes(&self) -> bool {
        self.extended.as_ref().is_none_or(|e| e.describe)
    }
}

/// ParseComplete / BindComplete still owed to the client (see
/// [`Unit::owed_preamble`]).
pub(super) struct OwedPreamble {
    parse: bool,
    bind: bool,
}

impl OwedPreamble {
    /// A leg's ParseComplete or BindComplete, before any failure: the
    /// client gets it once, from the first leg to send it.
    pub fn on_leg_message(&mut self, tag: u8, out: &mut BytesMut) {
        let owed = match tag {
            b'1' => &mut self.parse,
            b'2' => &mut self.bind,
            _ => return,
        };
        if std::mem::take(owed) {
            backend::put_message(out, tag, |_| {});
        }
    }
}

impl Session {
    /// Records a Parse the router answers itself (the statement runs on
    /// legs it prepares there): the unnamed statement, or a named one in
    /// the session's statements, as a server would keep it.
    pub(super) fn note_parse(&mut self, msg: &[u8]) -> Result<(), SessionEnd> {
        let p = parse_parse(msg.get(5..).unwrap_or(&[]))?;
        let analysis = self.analyze(p.sql);
        if p.name.is_empty() {
            self.unnamed = Some(analysis);
            self.unnamed_parse.clear();
            self.unnamed_parse.extend_from_slice(msg);
            self.unnamed_here = false;
        } else {
            let stmt = self
                .state
                .statements
                .intern(p.sql, &p.param_types, analysis);
            self.statements.insert(
                p.name.to_string(),
                crate::client::prepared::SessionStatement::new(stmt),
            );
        }
        Ok(())
    }

    /// Takes the unit of work at the front of the client's buffer.
    pub(super) fn take_unit(&mut self, tag: u8) -> Result<Taken, SessionEnd> {
        let Some(frame) = next_frame(&self.cbuf, self.max_message)? else {
            return Ok(Taken::Refused(unsupported_shape()));
        };
        if tag == b'Q' {
            let msg = self.cbuf.split_to(frame.total_len).freeze();
            let body = &msg[5..];
            let analysis = self.query_analysis(self.analyze_query(body)?);
            let sql = parse_query(body)?.to_string();
            return Ok(Taken::Unit(Unit {
                sql,
                analysis,
                extended: None,
            }));
        }
        // The batch, up to its Sync.
        let mut at = 0;
        let mut frames = Vec::new();
        loop {
            let Some(f) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)? else {
                return Ok(Taken::Refused(unsupported_shape()));
            };
            if f.tag == b'E' {
                let body = f.body(&self.cbuf[at..]);
                if body.first().is_some_and(|&b| b != 0) && execute_max_rows(body) > 0 {
                    return Ok(Taken::Refused(super::cursor_refusal()));
                }
            }
            // Its kind only: a name that is not UTF-8 fails in turn.
            if f.tag == b'D' && f.body(&self.cbuf[at..]).first() != Some(&b'P') {
                return Ok(Taken::Refused(unsupported_shape()));
            }
            frames.push((f.tag, at, f.total_len));
            at += f.total_len;
            if f.tag == b'S' {
                break;
            }
        }
        let shape: Vec<u8> = frames.iter().map(|f| f.0).collect();
        let ok = matches!(
            shape.as_slice(),
            [b'P', b'B', b'E', b'S']
                | [b'P', b'B', b'D', b'E', b'S']
                | [b'B', b'E', b'S']
                | [b'B', b'D', b'E', b'S']
        );
        if !ok {
            // A named portal bound now and executed in parts later
            // (asyncpg's `cursor()` sends Bind + Sync): a cursor.
            let binds_portal = frames.iter().any(|&(tag, start, _)| {
                tag == b'B' && self.cbuf.get(start + 5).is_some_and(|&b| b != 0)
            });
            if binds_portal && !shape.contains(&b'E') {
                return Ok(Taken::Refused(super::cursor_refusal()));
            }
            return Ok(Taken::Refused(unsupported_shape()));
        }
        let batch = self.cbuf.split_to(at).freeze();
        let mut parsed = false;
        let mut describe = false;
        let mut max_rows = 0;
        let mut named_portal = false;
        let mut bind = None;
        for (n, &(tag, start, len)) in frames.iter().enumerate() {
            let body = &batch[start + 5..start + len];
            // Text or a name that is not UTF-8: the batch fails at it, as
            // PostgreSQL's would, after the completions of what came before.
            if let Some(r) = self.unreadable_text_in(tag, body) {
                let before: Vec<u8> = frames[..n].iter().map(|f| f.0).collect();
                return Ok(self.fails_after(&before, ShardError::router(r.sqlstate, r.message)));
            }
            match tag {
                b'P' => {
                    parsed = true;
                    self.note_parse(&batch[start..start + len])?;
                }
                b'B' => bind = Some((start, len)),
                b'D' => describe = true,
                b'E' => {
                    max_rows = execute_max_rows(body);
                    named_portal = body.first().is_some_and(|&b| b != 0);
                }
                _ => {}
            }
        }
        let Some((start, len)) = bind else {
            return Ok(Taken::Failed(unsupported_shape()));
        };
        self.unnamed_portal_suspended_on_shards = false;
        let b = parse_bind_names(&batch[start + 5..start + len])?;
        if let Some(r) = self.bound_again(b.portal) {
            let before: &[u8] = if parsed { b"P" } else { b"" };
            return Ok(self.fails_after(before, ShardError::router(r.sqlstate, r.message)));
        }
        self.note_portal(b.portal, false);
        let (sql, param_types, analysis) = if b.statement.is_empty() {
            let Ok(p) = parse_parse(self.unnamed_parse.get(5..).unwrap_or(&[])) else {
                return Ok(Taken::Failed(ShardError::router(
                    "26000",
                    "unnamed prepared statement does not exist",
                )));
            };
            let Some(analysis) = self.unnamed.clone() else {
                return Ok(Taken::Failed(unsupported_shape()));
            };
            (p.sql.to_string(), p.param_types, analysis)
        } else {
            let Some(stmt) = self.statements.get(b.statement) else {
                return Ok(Taken::Failed(ShardError::router(
                    "26000",
                    format!("prepared statement \"{}\" does not exist", b.statement),
                )));
            };
            (
                stmt.sql.to_string(),
                stmt.param_types.clone(),
                stmt.analysis.clone(),
            )
        };
        let rest_at = b.rest.as_ptr() as usize - batch.as_ptr() as usize;
        let bind_rest = batch.slice(rest_at..start + len);
        Ok(Taken::Unit(Unit {
            sql,
            analysis,
            extended: Some(Extended {
                parsed,
                describe,
                param_types,
                bind_rest,
                max_rows,
                named_portal,
            }),
        }))
    }
}

impl Session {
    /// A batch that fails at a message after `before` (their tags): the
    /// client gets their completions first, as from PostgreSQL — a Parse's
    /// and a Bind's (a description asked for needs a server: not sent).
    fn fails_after(&mut self, before: &[u8], e: ShardError) -> Taken {
        for &tag in before {
            match tag {
                b'P' => backend::parse_complete(&mut self.to_client),
                b'B' => backend::put_message(&mut self.to_client, b'2', |_| {}),
                _ => {}
            }
        }
        Taken::Failed(e)
    }
}

/// An Execute of the unnamed portal for all its rows.
pub(super) fn execute_all(out: &mut BytesMut) {
    backend::put_message(out, b'E', |b| {
        b.extend_from_slice(&[0]);
        b.extend_from_slice(&0i32.to_be_bytes());
    });
}

/// The row limit of an Execute message (0 = all rows).
pub(super) fn execute_max_rows(body: &[u8]) -> i32 {
    let rows = body
        .iter()
        .position(|&b| b == 0)
        .and_then(|nul| body.get(nul + 1..nul + 5));
    rows.map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl Unit {
    /// Keeps of one leg's answer what reaches the client: not the Parse and
    /// Bind completions (the preamble says them once), nor the description
    /// unless the client asked for it.
    pub fn client_part(&self, answer: &mut super::write::Answer) {
        let describes = self.describes();
        answer
            .retain(|(t, _)| !matches!(t, b'1' | b'2') && (describes || !matches!(t, b'T' | b'n')));
    }
}

fn unsupported_shape() -> ShardError {
    ShardError::router(
        "0A000",
        "pgrouter: an extended-protocol batch on several shards must be one statement: \
         [Parse] Bind [Describe portal] Execute Sync; HINT: add the shard key, or Sync after each statement",
    )
}
