//! `EXPLAIN (ROUTE)` prepared as a named statement, as asyncpg sends every
//! statement: Parse, Describe statement and Flush first, then Bind,
//! Execute and Sync. PostgreSQL has no ROUTE option, so the statement is
//! never prepared on a server: the router answers both batches and
//! remembers the name until it is parsed again or the client's statements
//! are discarded. A statement with parameters (`$n`) is answered when its
//! Parse comes alone (psycopg prepares with Parse and Sync): the route is
//! planned from each Bind's values. Described first (asyncpg, which then
//! encodes its arguments by their types), it needs the parameters' types,
//! which only PostgreSQL infers: one shard is asked, with a Parse of the
//! explained statement (`shards/parse_check.rs`, nothing runs), and the
//! batch is answered with them — or with PostgreSQL's error for a statement
//! it rejects, in answer to the Parse. When no connection is free to ask
//! on (the router never waits for one there), the statement goes to a
//! server as it is, as before the router learnt this.

use bytes::{Buf, BytesMut};

use super::error::SessionEnd;
use super::session::Session;
use crate::protocol::backend;
use crate::protocol::frontend::{parse_bind_names, parse_parse};
use crate::protocol::next_frame;

impl Session {
    /// A named Parse of `EXPLAIN (ROUTE) ...` at the front of the buffer,
    /// with Describe of that statement, up to a Flush or Sync. `Ok(false)`
    /// when the buffer holds anything else (or not all of it yet).
    pub(super) fn try_prepare_explain_route(&mut self) -> Result<bool, SessionEnd> {
        let Some(frame) = next_frame(&self.cbuf, self.max_message)? else {
            return Ok(false);
        };
        let body = frame.body(&self.cbuf);
        if body.first().is_none_or(|&b| b == 0) {
            return Ok(false); // the unnamed statement: `try_answer_explain_route_batch`
        }
        let analysis = self.analyze_parse(body)?;
        if analysis.explain_route.is_none() || !self.is_quiet() || self.flow.in_tx() {
            return Ok(false);
        }
        let p = parse_parse(body)?;
        let params = p.sql.contains('$');
        let (name, sql, types) = (p.name.to_string(), p.sql.to_string(), p.param_types.clone());
        let mut answer = BytesMut::new();
        backend::parse_complete(&mut answer);
        let mut at = frame.total_len;
        let mut declared = types.clone();
        let mut rejected = None;
        let synced = loop {
            let Some(f) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)? else {
                return Ok(false); // wait for the rest of the batch
            };
            let body = f.body(&self.cbuf[at..]);
            at += f.total_len;
            match f.tag {
                b'D' if body.first() == Some(&b'S')
                    && body[1..].strip_suffix(&[0]) == Some(name.as_bytes()) =>
                {
                    let inferred = if params {
                        let learnt = self
                            .explain_params
                            .as_ref()
                            .filter(|l| l.sql == sql && l.declared == types)
                            .map(|l| l.answer.clone());
                        match learnt {
                            Some(Some(answer)) => answer,
                            Some(None) => {
                                // No shard could be asked without waiting
                                // for a connection: the statement goes on
                                // as it is (asked again next time).
                                self.explain_params = None;
                                return Ok(false);
                            }
                            None => {
                                // Asked of a shard (an await), then again.
                                self.explain_wants_params = Some((sql, types));
                                return Ok(false);
                            }
                        }
                    } else {
                        Ok(Vec::new())
                    };
                    match inferred {
                        Ok(oids) => {
                            super::shards::parse_check::put_parameter_description(
                                &mut answer,
                                &oids,
                            );
                            declared = oids.iter().map(|&t| t as i32).collect();
                        }
                        Err(error) => {
                            rejected = Some(error);
                            continue;
                        }
                    }
                    self.explain_route_description(&mut answer, &[]);
                }
                b'H' => break false,
                b'S' => break true,
                _ => return Ok(false),
            }
        };
        if let Some(error) = rejected {
            return self.explain_route_rejected(name, error, at, synced);
        }
        if synced {
            backend::ready_for_query(&mut answer, self.idle_status());
        }
        self.statements.remove(&name);
        // The types PostgreSQL inferred read the Bind's binary values.
        self.local_explains.insert(name, (sql, declared));
        self.to_client.extend_from_slice(&answer);
        self.cbuf.advance(at);
        Ok(true)
    }

    /// The explained statement is one PostgreSQL rejects: its error answers
    /// the Parse, as PostgreSQL's would, and the batch (up to `at`, its
    /// Flush or Sync) is skipped up to its Sync; the name is not kept.
    fn explain_route_rejected(
        &mut self,
        name: String,
        error: bytes::Bytes,
        at: usize,
        synced: bool,
    ) -> Result<bool, SessionEnd> {
        self.statements.remove(&name);
        self.local_explains.remove(&name);
        self.state.metrics.record_error(
            &crate::protocol::backend::parse_error_fields(error.get(5..).unwrap_or(&[]))
                .map(|f| f.code)
                .unwrap_or_default(),
        );
        self.to_client.extend_from_slice(&error);
        if synced {
            let status = self.idle_status();
            backend::ready_for_query(&mut self.to_client, status);
        } else {
            self.flow.batch_failed();
        }
        self.cbuf.advance(at);
        Ok(true)
    }

    /// A Bind of a statement [`Self::try_prepare_explain_route`] answered,
    /// with Describe portal, Execute and Sync (Flush ignored).
    pub(super) fn try_execute_explain_route(&mut self) -> Result<bool, SessionEnd> {
        if self.local_explains.is_empty() || self.flow.in_tx() || !self.is_quiet() {
            return Ok(false);
        }
        let Some(frame) = next_frame(&self.cbuf, self.max_message)? else {
            return Ok(false);
        };
        if frame.tag != b'B' {
            return Ok(false);
        }
        let b = parse_bind_names(frame.body(&self.cbuf))?;
        let Some((sql, types)) = self.local_explains.get(b.statement).cloned() else {
            return Ok(false);
        };
        let rest = b.rest.to_vec();
        let Some(formats) = super::explain_route::bind_result_formats(b.rest) else {
            return Ok(false); // malformed: PostgreSQL's error, via the usual path
        };
        let analysis = self.analyze(&sql);
        let writes = analysis.explain_route.unwrap_or(false);
        let mut answer = BytesMut::new();
        backend::put_message(&mut answer, b'2', |_| {});
        let Some((tags, at)) = self.batch_to_sync(frame.total_len)? else {
            return Ok(false); // wait for the rest of the batch
        };
        for tag in tags {
            match tag {
                b'D' => self.explain_route_description(&mut answer, &formats),
                b'E' => {
                    let bind = sql.contains('$').then_some((&rest[..], &types[..]));
                    self.explain_route_execute(&analysis, &sql, writes, bind, &formats, &mut answer)
                }
                b'H' | b'S' => {}
                _ => return Ok(false),
            }
        }
        backend::ready_for_query(&mut answer, self.idle_status());
        self.to_client.extend_from_slice(&answer);
        self.cbuf.advance(at);
        Ok(true)
    }
}
