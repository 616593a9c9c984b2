//! `EXPLAIN (ROUTE) <statement>`: the router says where a statement would
//! go — shard, role, server and why — without running anything. PostgreSQL
//! has no such option, so the router answers it, in the simple query
//! protocol and as an extended-protocol batch (Parse, Bind, Describe,
//! Execute, Sync: what psycopg sends), outside a transaction.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use pgrouter_parser::{Analysis, RoleHint};

use super::error::SessionEnd;
use super::session::Session;
use super::shard_routing::UnnamedText;
use crate::admin::wire::{row_description_in, Cell, ColumnType, ResultSet};
use crate::protocol::backend::{self, Severity};
use crate::protocol::frontend::{parse_bind_names, parse_parse, BindNames};
use crate::protocol::next_frame;
use crate::router::{Refusal, Role};

const COLUMNS: &[(&str, ColumnType)] = &[
    ("shard", ColumnType::Int8),
    ("role", ColumnType::Text),
    ("server", ColumnType::Text),
    ("reason", ColumnType::Text),
];

impl Session {
    /// The rows of the answer (one per shard), or the refusal the
    /// statement would get.
    fn explain_route_rows(
        &self,
        analysis: &Arc<Analysis>,
        sql: &str,
        writes: bool,
    ) -> Result<Vec<Vec<Cell>>, Refusal> {
        self.explain_route_rows_bound(analysis, sql, writes, None)
    }

    /// [`Self::explain_route_rows`] with the Bind of an extended-protocol
    /// batch (its parameters after the names, and the Parse's declared
    /// types): keys given as `$n` are routed by the values bound, as the
    /// statement itself would be.
    fn explain_route_rows_bound(
        &self,
        analysis: &Arc<Analysis>,
        sql: &str,
        writes: bool,
        bind: Option<(&[u8], &[i32])>,
    ) -> Result<Vec<Vec<Cell>>, Refusal> {
        let choice = match bind {
            None => {
                let mut body = sql.as_bytes().to_vec();
                body.push(0);
                self.plan_query_as(analysis, &body, true)?
            }
            Some((rest, types)) => {
                let names = BindNames {
                    portal: "",
                    statement: "",
                    rest,
                };
                self.plan_bind_as(analysis, &names, &UnnamedText::Read(sql, types), true)?
            }
        };
        match choice {
            Some(c) if c.many.is_some() => {
                let many = c.many.clone().unwrap_or_else(|| unreachable!());
                let writes = writes
                    || !matches!(
                        many.kind,
                        crate::router::ManyKind::Read | crate::router::ManyKind::CopyOut
                    );
                many.shards
                    .iter()
                    .map(|&s| self.explain_route_row(Some((s, c.reason.clone())), analysis, writes))
                    .collect()
            }
            c => Ok(vec![self.explain_route_row(
                c.map(|c| (c.shard, c.reason)),
                analysis,
                writes,
            )?]),
        }
    }

    /// One row: the shard, its role and server, and why.
    fn explain_route_row(
        &self,
        choice: Option<(usize, String)>,
        analysis: &Arc<Analysis>,
        writes: bool,
    ) -> Result<Vec<Cell>, Refusal> {
        let session = self.session_routing();
        let (shard, reason) = match (choice, analysis.hint.shard, session.shard_override) {
            (Some(c), _, _) => c,
            (None, Some(s), _) => (s as usize, format!("hint shard={s}")),
            (None, None, Some(s)) => (s as usize, format!("SET pgrouter.shard = {s}")),
            (None, None, None) => (0, "no sharded table: shard 0".to_string()),
        };
        let role = match analysis.hint.role.or(session.role_override) {
            _ if self.policy.read_only => Role::Replica,
            Some(RoleHint::Primary) => Role::Primary,
            Some(RoleHint::Replica) => Role::Replica,
            None if writes => Role::Primary,
            None => Role::Replica,
        };
        let slot = self.pools.shards.get(shard).ok_or_else(|| Refusal {
            sqlstate: "22023",
            message: crate::pool::PoolError::NoSuchShard {
                shard,
                shards: self.pools.shards.len(),
            }
            .to_string(),
        })?;
        let picked = slot.pick(role, self.pools.balancing, &[], Default::default());
        let server = picked
            .map(|s| format!("{}:{}", s.pool.target.host, s.pool.target.port))
            .unwrap_or_else(|| "none available".into());
        // A read falls back to the primary where no replica is up: the
        // label names the server the statement would run on.
        let role = match picked {
            Some(s) if s.health.is_primary() => "primary",
            Some(_) => "replica",
            None if role == Role::Primary => "primary",
            None => "replica",
        };
        Ok(vec![
            Cell::Int(shard as i64),
            role.into(),
            server.into(),
            reason.into(),
        ])
    }

    /// The simple-protocol form: the Query at the front of the buffer.
    pub(super) fn answer_explain_route(
        &mut self,
        len: usize,
        analysis: &Arc<Analysis>,
        writes: bool,
    ) {
        let body = self.cbuf.get(5..len).unwrap_or(&[]);
        let sql = std::str::from_utf8(body.strip_suffix(&[0]).unwrap_or(body))
            .unwrap_or("")
            .to_string();
        let mut answer = BytesMut::new();
        match self.explain_route_rows(analysis, &sql, writes) {
            Ok(rows) => {
                let mut rs = ResultSet::new(COLUMNS);
                for row in rows {
                    rs.push(row);
                }
                rs.write(&mut answer, "EXPLAIN");
            }
            Err(refusal) => self.refusal_into(&mut answer, &refusal),
        }
        self.cbuf.advance(len);
        backend::ready_for_query(&mut answer, self.idle_status());
        if let Some(made) = self.expect().synthesize(answer.freeze()) {
            self.to_client.extend_from_slice(&made);
        }
    }

    /// The extended-protocol form: an unnamed Parse of `EXPLAIN (ROUTE)`,
    /// then Bind, Describe, Execute and Sync (Flush ignored). `Ok(false)`
    /// when the buffer does not start with such a batch (or it has not
    /// arrived whole yet).
    pub(super) fn try_answer_explain_route_batch(&mut self) -> Result<bool, SessionEnd> {
        let Some(frame) = next_frame(&self.cbuf, self.max_message)? else {
            return Ok(false);
        };
        let body = frame.body(&self.cbuf);
        // Only the unnamed statement; its text is read whole only for an
        // EXPLAIN (ROUTE) (this runs for every Parse at a batch's start).
        if body.first() != Some(&0) {
            return Ok(false);
        }
        let analysis = self.analyze_parse(body)?;
        let Some(writes) = analysis.explain_route else {
            return Ok(false);
        };
        if !self.is_quiet() || self.flow.in_tx() || self.explain_needs_columns(&analysis) {
            return Ok(false);
        }
        let body = frame.body(&self.cbuf);
        let p = parse_parse(body)?;
        let (sql, types) = (p.sql.to_string(), p.param_types.clone());
        // With parameters the route depends on the Bind's values: planned
        // when the Bind comes (planning the text alone would refuse a key
        // given as `$n`, or take a keyless statement for one on every shard).
        let params = sql.contains('$');
        let mut row = if params {
            Ok(Vec::new())
        } else {
            self.explain_route_rows(&analysis, &sql, writes)
        };
        let mut answer = BytesMut::new();
        let mut at = frame.total_len;
        match &row {
            Ok(_) => backend::parse_complete(&mut answer),
            Err(refusal) => self.refusal_into(&mut answer, refusal),
        }
        let mut formats = Vec::new();
        loop {
            let Some(f) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)? else {
                return Ok(false); // wait for the rest of the batch
            };
            let body = f.body(&self.cbuf[at..]);
            at += f.total_len;
            match (f.tag, &row) {
                (b'S', _) => break,
                (_, Err(_)) | (b'H', _) => {}
                (b'B', Ok(_)) => {
                    let b = parse_bind_names(body)?;
                    let Some(asked) = bind_result_formats(b.rest) else {
                        return Ok(false); // malformed: PostgreSQL's error, via the usual path
                    };
                    formats = asked;
                    if params {
                        row = self.explain_route_rows_bound(
                            &analysis,
                            &sql,
                            writes,
                            Some((b.rest, &types)),
                        );
                        if let Err(refusal) = &row {
                            self.refusal_into(&mut answer, refusal);
                            continue;
                        }
                    }
                    backend::put_message(&mut answer, b'2', |_| {});
                }
                (b'D', Ok(_)) => self.explain_route_description(&mut answer, &formats),
                (b'E', Ok(rows)) => data_rows(&mut answer, rows, &formats),
                _ => return Ok(false),
            }
        }
        backend::ready_for_query(&mut answer, self.idle_status());
        self.to_client.extend_from_slice(&answer);
        self.cbuf.advance(at);
        Ok(true)
    }

    /// An `EXPLAIN (ROUTE)` of an INSERT without a column list into a
    /// sharded table whose columns are not known: not answered yet (the
    /// caller learns them, an await, and asks again; the second time it is
    /// answered, learnt or not).
    pub(super) fn explain_needs_columns(&mut self, analysis: &Arc<Analysis>) -> bool {
        if self.explain_wants_columns.take().is_some() || !self.columns_unknown(analysis) {
            return false;
        }
        self.explain_wants_columns = Some(analysis.clone());
        true
    }

    /// The answer's RowDescription, saying which columns come in binary.
    pub(super) fn explain_route_description(&self, answer: &mut BytesMut, formats: &[i16]) {
        row_description_in(answer, COLUMNS, |i| format_of(formats, i));
    }

    /// What an Execute of `EXPLAIN (ROUTE) <sql>` gets: its rows and
    /// CommandComplete, or the refusal the statement would get.
    pub(super) fn explain_route_execute(
        &self,
        analysis: &Arc<Analysis>,
        sql: &str,
        writes: bool,
        bind: Option<(&[u8], &[i32])>,
        formats: &[i16],
        answer: &mut BytesMut,
    ) {
        match self.explain_route_rows_bound(analysis, sql, writes, bind) {
            Ok(rows) => data_rows(answer, &rows, formats),
            Err(refusal) => self.refusal_into(answer, &refusal),
        }
    }

    fn refusal_into(&self, answer: &mut BytesMut, refusal: &Refusal) {
        self.state.metrics.record_error(refusal.sqlstate);
        backend::error_response(answer, Severity::Error, refusal.sqlstate, &refusal.message);
    }

    pub(super) fn idle_status(&self) -> u8 {
        match &self.server {
            Some(held) if !self.flow.in_tx() => held.conn.tx_status,
            Some(_) => b'T',
            None if self.deferred_begin.is_some() => b'T',
            None => b'I',
        }
    }
}

/// The rows, in the formats the Bind asked for (`shard` is int8; the text
/// columns are the same bytes either way), and CommandComplete.
fn data_rows(answer: &mut BytesMut, rows: &[Vec<Cell>], formats: &[i16]) {
    for cells in rows {
        backend::put_message(answer, b'D', |b| {
            b.extend_from_slice(&(cells.len() as i16).to_be_bytes());
            for (i, cell) in cells.iter().enumerate() {
                let value = match cell {
                    Cell::Int(n) if format_of(formats, i) == 1 => n.to_be_bytes().to_vec(),
                    Cell::Int(n) => n.to_string().into_bytes(),
                    Cell::Text(t) => t.as_bytes().to_vec(),
                    Cell::Bool(v) if format_of(formats, i) == 1 => vec![u8::from(*v)],
                    Cell::Bool(v) => {
                        if *v {
                            b"t".to_vec()
                        } else {
                            b"f".to_vec()
                        }
                    }
                    Cell::Null => {
                        b.extend_from_slice(&(-1i32).to_be_bytes());
                        continue;
                    }
                };
                b.extend_from_slice(&(value.len() as i32).to_be_bytes());
                b.extend_from_slice(&value);
            }
        });
    }
    backend::command_complete(answer, "EXPLAIN");
}

/// Column `i`'s format under a Bind's result format codes: none = all
/// text, one = all columns, else one per column.
fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [f] => *f,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// The result format codes at the end of a Bind, after its names
/// (`parse_bind_names(..).rest`); None when the message is malformed.
pub(super) fn bind_result_formats(rest: &[u8]) -> Option<Vec<i16>> {
    let i16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| i16::from_be_bytes([x[0], x[1]]));
    let n = i16_at(rest, 0)?.max(0) as usize;
    let mut at = 2 + 2 * n;
    let params = i16_at(rest, at)?.max(0) as usize;
    at += 2;
    for _ in 0..params {
        let len = rest
            .get(at..at + 4)
            .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))?;
        at += 4 + len.max(0) as usize;
    }
    let results = i16_at(rest, at)?.max(0) as usize;
    (0..results).map(|k| i16_at(rest, at + 2 + 2 * k)).collect()
}

#[cfg(test)]
mod tests {
    use super::{bind_result_formats, format_of};

    #[test]
    fn result_formats_are_read_after_the_parameters() {
        // 1 parameter format (binary), 2 values ("ab", NULL), 2 result formats.
        let mut rest = vec![
            0, 1, 0, 1, 0, 2, 0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff,
        ];
        rest.extend_from_slice(&[0, 2, 0, 1, 0, 0]);
        assert_eq!(bind_result_formats(&rest), Some(vec![1, 0]));
        assert_eq!(bind_result_formats(&[0, 0, 0, 0, 0, 0]), Some(vec![]));
        assert_eq!(bind_result_formats(&[0, 0, 0, 1, 0, 0, 0, 9]), None);
    }

    #[test]
    fn one_format_applies_to_every_column() {
        assert_eq!((format_of(&[], 3), format_of(&[1], 3)), (0, 1));
        assert_eq!((format_of(&[1, 0], 0), format_of(&[1, 0], 1)), (1, 0));
    }
}
