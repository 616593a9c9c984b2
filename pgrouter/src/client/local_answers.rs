//! Requests the router answers itself, without a server: `DEALLOCATE`,
//! `DISCARD ALL` and `RESET ALL` when no server is held (also a JWT
//! session's extended-protocol form of them), and batches of named Parse
//! messages, which are prepared on a server only when a Bind needs them.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use pgrouter_config::PoolMode;
use pgrouter_parser::{Analysis, DiscardKind, ResetTarget, StatementKind};

use super::error::SessionEnd;
use super::session::Session;
use super::tracking::SetChange;
use crate::protocol::backend;
use crate::protocol::frontend::parse_parse;
use crate::protocol::next_frame;

impl Session {
    /// Statements that only change the client's own state are answered by
    /// the router when no server is held: DEALLOCATE and DISCARD ALL (which
    /// must not touch the shared server's statements).
    pub(super) fn try_answer_locally(&mut self, len: usize) -> Result<bool, SessionEnd> {
        if self.cbuf.first() == Some(&b'B') {
            return self.try_execute_explain_route();
        }
        if self.cbuf.first() == Some(&b'P') {
            // Most Parses are no EXPLAIN (ROUTE): one look at the analysis
            // spares both readers of the batch.
            if self.parse_explains_route(len)?
                && (self.try_answer_explain_route_batch()? || self.try_prepare_explain_route()?)
            {
                return Ok(true);
            }
            return self.try_answer_batch_locally();
        }
        if self.cbuf.first() != Some(&b'Q') {
            return Ok(false);
        }
        let analysis = self.message_analysis(b'Q', 0, len)?;
        let [statement] = analysis.statements.as_slice() else {
            return Ok(false);
        };
        if let Some(writes) = analysis.explain_route {
            if self.explain_needs_columns(&analysis) {
                return Ok(false);
            }
            self.answer_explain_route(len, &analysis, writes);
            return Ok(true);
        }
        let jwt = self.policy.jwt.is_some();
        // Session mode: the client's statements live on its own server
        // connection, where DEALLOCATE must really run.
        // A held server (session mode, or a pinned client) has the client's
        // statements: DEALLOCATE runs there, as the client expects.
        let on_held_server = self.server.is_some();
        let tag = match &statement.kind {
            StatementKind::Deallocate { .. } if on_held_server => return Ok(false),
            // In a transaction block (BEGIN answered without a server on a
            // sharded database) PostgreSQL refuses it: it reports 25001 or
            // 25P02 and nothing is discarded.
            StatementKind::Discard(DiscardKind::All) if !self.discard_all_runs(&analysis) => {
                return Ok(false)
            }
            StatementKind::Deallocate { name: Some(name) } => {
                // SQL and protocol-level statements share one namespace.
                if self.sql_prepared.remove(name).is_none()
                    && self.statements.remove(name.as_str()).is_none()
                    && self.local_explains.remove(name.as_str()).is_none()
                {
                    return Ok(false); // let PostgreSQL report the unknown name
                }
                "DEALLOCATE"
            }
            StatementKind::Deallocate { name: None } => {
                self.sql_prepared.clear();
                self.statements.clear();
                self.local_explains.clear();
                "DEALLOCATE ALL"
            }
            // The shared server keeps its statements and (for JWT sessions)
            // its role: the router resets the client's own state instead.
            // A pinned client's session state lives on its connection: its
            // DISCARD ALL must run there (and unpins it).
            StatementKind::Discard(DiscardKind::All) if jwt => {
                self.reset_client_state("DISCARD ALL");
                "DISCARD ALL"
            }
            StatementKind::Reset(ResetTarget::All) if jwt => {
                self.reset_client_state("RESET");
                "RESET"
            }
            StatementKind::Discard(DiscardKind::All)
                if self.mode == PoolMode::Transaction && !self.pins.is_pinned() =>
            {
                self.sql_prepared.clear();
                self.statements.clear();
                self.local_explains.clear();
                self.params.apply(SetChange::ResetAll);
                "DISCARD ALL"
            }
            _ => return Ok(false),
        };
        self.cbuf.advance(len);
        let status = match &self.server {
            Some(held) if !self.flow.in_tx() => held.conn.tx_status,
            Some(_) => b'T',
            None => b'I',
        };
        let mut answer = BytesMut::new();
        backend::command_complete(&mut answer, tag);
        backend::ready_for_query(&mut answer, status);
        if let Some(made) = self.expect().synthesize(answer.freeze()) {
            self.to_client.extend_from_slice(&made);
        }
        Ok(true)
    }

    /// The extended-protocol form of a JWT session's `DISCARD ALL` / `RESET
    /// ALL` (what Npgsql sends on connection reuse): an unnamed Parse, Bind,
    /// optional Describe, Execute, Sync — answered by the router, which
    /// resets the client's own state and keeps its role.
    pub(super) fn try_answer_batch_locally(&mut self) -> Result<bool, SessionEnd> {
        if self.policy.jwt.is_none() {
            return Ok(false);
        }
        let LoneReset::Answerable { tag, tags, at } = self.jwt_lone_reset()? else {
            return Ok(false);
        };
        let mut answer = BytesMut::new();
        backend::parse_complete(&mut answer);
        for f in tags {
            match f {
                b'B' => backend::put_message(&mut answer, b'2', |_| {}),
                b'D' => backend::put_message(&mut answer, b'n', |_| {}),
                b'E' => backend::command_complete(&mut answer, tag),
                _ => {}
            }
        }
        self.reset_client_state(tag);
        let status = self.server.as_ref().map_or(b'I', |h| h.conn.tx_status);
        backend::ready_for_query(&mut answer, status);
        if let Some(made) = self.expect().synthesize(answer.freeze()) {
            self.to_client.extend_from_slice(&made);
        }
        self.cbuf.advance(at);
        Ok(true)
    }

    /// Whether the Parse at the buffer's start (`len` bytes) holds an
    /// EXPLAIN (ROUTE).
    fn parse_explains_route(&self, len: usize) -> Result<bool, SessionEnd> {
        Ok(self.message_analysis(b'P', 0, len)?.explain_route.is_some())
    }

    /// Whether the buffer starts with a JWT session's `DISCARD ALL` / `RESET
    /// ALL` batch, and whether the router can answer it. A `DISCARD ALL`
    /// it cannot answer is refused (see `check_policy_now`): on the server
    /// it would end the `SET ROLE`, and the statements after it in the same
    /// batch would run as the `connect_as` user.
    pub(super) fn jwt_lone_reset(&self) -> Result<LoneReset, SessionEnd> {
        if self.policy.jwt.is_none() {
            return Ok(LoneReset::NotOne);
        }
        let Some(frame) = next_frame(&self.cbuf, self.max_message)? else {
            return Ok(LoneReset::NotOne);
        };
        if frame.tag != b'P' {
            return Ok(LoneReset::NotOne);
        }
        let p = parse_parse(frame.body(&self.cbuf))?;
        let analysis = self.analyze(p.sql);
        let (tag, discard) = match analysis.statements.as_slice() {
            [s] if matches!(s.kind, StatementKind::Discard(DiscardKind::All)) => {
                ("DISCARD ALL", true)
            }
            [s] if matches!(s.kind, StatementKind::Reset(ResetTarget::All)) => ("RESET", false),
            _ => return Ok(LoneReset::NotOne),
        };
        let Some((tags, at)) = self.batch_to_sync(frame.total_len)? else {
            return Ok(LoneReset::Incomplete);
        };
        let alone = tags
            .iter()
            .all(|t| matches!(t, b'B' | b'D' | b'E' | b'H' | b'S'))
            && tags.iter().filter(|t| **t == b'E').count() <= 1;
        if !p.name.is_empty() || !alone || !self.is_quiet() || self.flow.in_tx() {
            return Ok(LoneReset::Unanswerable { discard });
        }
        Ok(LoneReset::Answerable { tag, tags, at })
    }

    /// A JWT session's `DISCARD ALL` (`tag`) or `RESET ALL`, performed by
    /// the router: the client's own settings go back to its startup values
    /// (its role and read-only state stay), and for `DISCARD ALL` its
    /// prepared statements go. A server held for the client (session mode,
    /// or pinned) is reset too, with the parts of `DISCARD ALL` that keep
    /// the role: its temporary objects, cursors, LISTENs, advisory locks and
    /// sequence state are the client's.
    fn reset_client_state(&mut self, tag: &str) {
        let discard = tag == "DISCARD ALL";
        if discard {
            self.sql_prepared.clear();
            self.statements.clear();
            self.local_explains.clear();
        }
        self.params.apply(SetChange::ResetAll);
        let Some(held) = self.server.as_mut() else {
            return;
        };
        if discard {
            held.queue_own_query(
                "CLOSE ALL;DEALLOCATE ALL;UNLISTEN *;SELECT pg_advisory_unlock_all();DISCARD PLANS;DISCARD TEMP;DISCARD SEQUENCES",
            );
            held.conn.statements.clear();
            self.pins.forget();
            self.temps.forget_all();
            self.registered.info.set_pinned(self.pins.held());
            self.unnamed_here = false;
        }
        // The settings: the server is brought in line with the client's
        // (now its startup values, and a read-only session's pinned
        // setting) before its next statement, by the settings replay.
        held.conn.params_fingerprint = 0;
        held.resync_params = true;
    }

    /// The tags of the messages from `from` in the buffer up to its Sync
    /// (included), and where the batch ends; None until the Sync is here.
    pub(super) fn batch_to_sync(
        &self,
        from: usize,
    ) -> Result<Option<(Vec<u8>, usize)>, SessionEnd> {
        let mut tags = Vec::new();
        let mut at = from;
        loop {
            let Some(f) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)? else {
                return Ok(None);
            };
            at += f.total_len;
            tags.push(f.tag);
            if f.tag == b'S' {
                return Ok(Some((tags, at)));
            }
        }
    }

    /// A batch of named Parse messages and its Sync (what `PQprepare` sends)
    /// needs no server: the statements are recorded for the client, answered
    /// here, and prepared on a server when a Bind first needs them. Holding a
    /// server for it would stall clients that prepare inside their
    /// transactions while every server is busy (pgbench -M prepared).
    /// Statements pg_query cannot parse still go to a server, so PostgreSQL
    /// reports their errors where the client expects them. On a sharded
    /// database each statement is first Parsed on a shard
    /// (`shards/parse_check.rs`), so that what PostgreSQL's analysis
    /// rejects (a missing table or column) answers the Parse, as PostgreSQL
    /// answers it, and not the Bind after it (SPEC §5): such a batch goes
    /// to a server the usual way. The check never waits for a connection
    /// (`shards/check_leg.rs`) and each accepted statement is asked about
    /// once for all clients; unchecked, the batch is answered here as on an
    /// unsharded database.
    ///
    /// This half reads the batch: `None` when it is not such a batch (or
    /// has not arrived whole). [`Self::answer_prepares`] answers it.
    pub(super) fn local_prepares(&mut self) -> Result<Option<LocalPrepares>, SessionEnd> {
        let mut at = 0;
        let mut parses = Vec::new();
        loop {
            let Some(frame) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)?
            else {
                return Ok(None); // the batch has not arrived whole
            };
            let body = frame.body(&self.cbuf[at..]);
            at += frame.total_len;
            match frame.tag {
                b'P' => {
                    if body.first() == Some(&0) {
                        return Ok(None); // the unnamed statement
                    }
                    // Text that is not UTF-8 is refused when its turn comes
                    // (`unreadable_text`), after the statements before it.
                    let Ok(p) = parse_parse(body) else {
                        return Ok(None);
                    };
                    let analysis = self.analyze(p.sql);
                    if analysis.parse_error.is_some() || self.policy.check(&analysis).is_err() {
                        return Ok(None);
                    }
                    parses.push((
                        p.name.to_string(),
                        p.sql.to_string(),
                        p.param_types,
                        analysis,
                    ));
                }
                b'H' => {}
                b'S' if !parses.is_empty() => break,
                _ => return Ok(None),
            }
        }
        Ok(Some(LocalPrepares { parses, len: at }))
    }

    /// On a sharded database, whether a shard accepts every statement of
    /// `batch` (see above); always on an unsharded one. Boxed where it is
    /// awaited: its future is large and rarely made.
    pub(super) async fn shards_accept(&mut self, batch: &LocalPrepares) -> bool {
        let checks: Vec<(&str, &[i32])> = batch
            .parses
            .iter()
            .map(|(_, sql, types, _)| (sql.as_str(), types.as_slice()))
            .collect();
        self.postgres_accepts(&checks).await
    }

    /// Records the batch's statements for the client and answers it.
    pub(super) fn answer_prepares(&mut self, batch: LocalPrepares) {
        for (name, sql, types, analysis) in batch.parses {
            let stmt = self.state.statements.intern(&sql, &types, analysis);
            self.local_explains.remove(&name);
            self.statements
                .insert(name, super::prepared::SessionStatement::new(stmt));
            backend::parse_complete(&mut self.to_client);
        }
        let status = if self.deferred_begin.is_some() {
            b'T'
        } else {
            b'I'
        };
        backend::ready_for_query(&mut self.to_client, status);
        self.cbuf.advance(batch.len);
    }
}

/// A `PQprepare` batch the router answers (see
/// [`Session::local_prepares`]): each statement's name, text, declared
/// types and analysis, and the batch's length up to its Sync.
pub(super) struct LocalPrepares {
    parses: Vec<(String, String, Vec<i32>, Arc<Analysis>)>,
    len: usize,
}

/// A JWT session's `DISCARD ALL` / `RESET ALL` sent with the extended
/// protocol (see `Session::jwt_lone_reset`).
pub(super) enum LoneReset {
    /// The batch does not start with one.
    NotOne,
    /// It does; the rest of the batch is not here yet.
    Incomplete,
    /// Alone in its batch, between transactions: the router answers it.
    Answerable {
        tag: &'static str,
        tags: Vec<u8>,
        at: usize,
    },
    /// Named, in a batch with other statements, or inside a transaction.
    Unanswerable { discard: bool },
}
