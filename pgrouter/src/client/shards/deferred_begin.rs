//! A bare `BEGIN` on a sharded database names no shard: answering it
//! without a server and sending it ahead of the transaction's first
//! statement lets that statement's key pick the shard, so a transaction on
//! one shard holds that shard only (and commits in one phase).

use pgrouter_config::PoolMode;
use pgrouter_parser::{StatementKind, TxEffect};

use super::ShardError;
use crate::client::error::SessionEnd;
use crate::client::expect::Reply;
use crate::client::routing::Routed;
use crate::client::session::Session;
use crate::protocol::{backend, frontend, next_frame};
use crate::router::{self, Role, Route};

/// What [`Session::deferred_begin_step`] did.
pub(in crate::client) enum Deferred {
    /// Nothing deferred: go on as usual.
    No,
    /// The unit was answered here.
    Answered,
    /// A server is held now, with the BEGIN queued: handle the unit again.
    Attached,
    /// The unit has not arrived whole.
    NeedMore,
}

impl Session {
    /// With no server held: a lone `BEGIN`/`START TRANSACTION` query on a
    /// sharded database is answered here and remembered; the unit after it
    /// attaches the server its keys need and the BEGIN goes first.
    pub(in crate::client) async fn deferred_begin_step(
        &mut self,
        tag: u8,
        len: usize,
    ) -> Result<Deferred, SessionEnd> {
        if self.mode != PoolMode::Transaction || self.shard_map.as_ref().is_none() {
            return Ok(Deferred::No);
        }
        let Some(begin) = self.deferred_begin.clone() else {
            if tag == b'P' && !self.pins.is_pinned() {
                return self.defer_extended_begin();
            }
            if tag != b'Q' || self.pins.is_pinned() {
                return Ok(Deferred::No);
            }
            let analysis = self.message_analysis(tag, 0, len)?;
            if !is_lone_begin(&analysis) {
                return Ok(Deferred::No);
            }
            let body = self.cbuf.get(5..len).unwrap_or(&[]);
            let sql = crate::protocol::frontend::parse_query(body)?.to_string();
            self.skip_query(len);
            self.deferred_begin = Some(sql);
            backend::command_complete(&mut self.to_client, "BEGIN");
            backend::ready_for_query(&mut self.to_client, b'T');
            return Ok(Deferred::Answered);
        };
        // COMMIT or ROLLBACK of a transaction that ran nothing.
        if tag == b'Q' {
            let analysis = self.message_analysis(tag, 0, len)?;
            if let [s] = analysis.statements.as_slice() {
                let ends = match &s.kind {
                    StatementKind::Transaction(TxEffect::Commit) => Some("COMMIT"),
                    StatementKind::Transaction(TxEffect::Rollback) => Some("ROLLBACK"),
                    _ => None,
                };
                if let Some(tag) = ends {
                    self.skip_query(len);
                    self.deferred_begin = None;
                    backend::command_complete(&mut self.to_client, tag);
                    backend::ready_for_query(&mut self.to_client, b'I');
                    return Ok(Deferred::Answered);
                }
            }
        }
        let mut many = false;
        let route = match self.route_learning_columns(tag).await {
            None => return Ok(Deferred::NeedMore),
            Some(Ok(Routed::One(r) | Routed::Keyed(r))) => r,
            Some(Ok(Routed::Many(r, _))) => {
                many = true;
                r
            }
            // Refused through the server, inside the transaction.
            Some(Err(_)) => Route {
                shard: 0,
                role: Role::Primary,
            },
        };
        self.send_deferred_begin(tag, begin, route, many).await
    }

    /// A statement the router refuses before routing it (policy, text that
    /// is not UTF-8, a duplicate statement name) right after a deferred
    /// BEGIN: the BEGIN goes to the first shard now, so that the refusal
    /// is raised through the server inside the transaction, which fails as
    /// PostgreSQL's would (25P02 until ROLLBACK). False: no BEGIN is
    /// deferred.
    pub(in crate::client) async fn begin_before_refusal(
        &mut self,
        tag: u8,
    ) -> Result<bool, SessionEnd> {
        let Some(begin) = self
            .deferred_begin
            .clone()
            .filter(|_| self.server.is_none())
        else {
            return Ok(false);
        };
        let route = Route {
            shard: 0,
            role: Role::Primary,
        };
        self.send_deferred_begin(tag, begin, route, false).await?;
        Ok(true)
    }

    /// Attaches the server of `route` and queues the deferred `begin`
    /// ahead of the unit at the front of the buffer.
    async fn send_deferred_begin(
        &mut self,
        tag: u8,
        begin: String,
        route: Route,
        many: bool,
    ) -> Result<Deferred, SessionEnd> {
        // The BEGIN's own role, as on an unsharded database: `BEGIN READ
        // ONLY` (or `default_transaction_read_only`) runs on a replica of
        // each shard it joins, a role hint or `pgrouter.role` is followed.
        let begin_role = router::route(&self.analyze(&begin), &self.session_routing()).role;
        let route = Route {
            role: if self.policy.read_only || begin_role == Role::Replica {
                Role::Replica
            } else {
                Role::Primary
            },
            ..route
        };
        self.deferred_begin = None;
        if let Err(e) = self.attach(route, &[]).await {
            let e = ShardError::from_pool(e);
            self.state.metrics.record_error(&e.sqlstate());
            e.write(&mut self.to_client);
            // The transaction could not start: it is over.
            while let Ok(Some(f)) = next_frame(&self.cbuf, self.max_message) {
                use bytes::Buf;
                self.cbuf.advance(f.total_len);
                if tag == b'Q' || f.tag == b'S' {
                    break;
                }
            }
            backend::ready_for_query(&mut self.to_client, b'I');
            return Ok(Deferred::Answered);
        }
        self.stop_replay();
        // A JWT session's role first (as for any unit of work outside a
        // transaction), then the BEGIN, pipelined without a Sync: should
        // either fail, PostgreSQL skips the client's messages with it.
        self.inject_role_guard_if_due(tag);
        frontend::write_parse(self.to_server(), "", &begin, &[]);
        frontend::bind_execute_unnamed(self.to_server());
        self.unnamed_here = false;
        self.expect().swallow(Reply::Parse(None));
        self.expect().swallow(Reply::Bind);
        self.expect().swallow(Reply::Execute);
        if many {
            // The statement runs on legs of the transaction, not through
            // this server: its BEGIN needs a Sync of its own to be answered.
            frontend::sync(self.to_server());
            self.expect().swallow(Reply::Sync);
        }
        self.flow.predict_tx(true);
        Ok(Deferred::Attached)
    }

    /// The extended form of a lone BEGIN, as psycopg sends it in pipeline
    /// mode: `Parse("BEGIN") Bind [Describe portal] Execute Sync` on the
    /// unnamed statement and portal, answered here and deferred like the
    /// simple one.
    fn defer_extended_begin(&mut self) -> Result<Deferred, SessionEnd> {
        // Most batches are not a BEGIN: a look at the unnamed Parse's text
        // tells before any scan (a BEGIN after a comment is not deferred,
        // which costs a leg, never correctness).
        let looks_like_begin = |body: &[u8]| {
            let Some(sql) = body.strip_prefix(&[0u8][..]) else {
                return false;
            };
            let start = sql
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(sql.len());
            let word = &sql[start..sql.len().min(start + 5)];
            word.eq_ignore_ascii_case(b"begin") || word.eq_ignore_ascii_case(b"start")
        };
        match next_frame(&self.cbuf, self.max_message)? {
            Some(f) if looks_like_begin(f.body(&self.cbuf)) => {}
            _ => return Ok(Deferred::No),
        }
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some(f) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)? {
            frames.push((f.tag, at + 5, at + f.total_len));
            at += f.total_len;
            if f.tag == b'S' || frames.len() > 4 {
                break;
            }
        }
        let tags: Vec<u8> = frames.iter().map(|f| f.0).collect();
        let describe = match tags.as_slice() {
            [b'P', b'B', b'E', b'S'] => false,
            [b'P', b'B', b'D', b'E', b'S'] => true,
            _ => return Ok(Deferred::No),
        };
        let body = |i: usize| &self.cbuf[frames[i].1..frames[i].2];
        let parse = frontend::parse_parse(body(0))?;
        let bind = frontend::parse_bind_names(body(1))?;
        // No parameters: format-code count and parameter count both zero.
        let no_params = bind.rest.get(..4) == Some(&[0, 0, 0, 0][..]);
        let describes_portal = !describe || body(2).first() == Some(&b'P');
        if !parse.name.is_empty()
            || !bind.statement.is_empty()
            || !bind.portal.is_empty()
            || !parse.param_types.is_empty()
            || !no_params
            || !describes_portal
        {
            return Ok(Deferred::No);
        }
        let sql = parse.sql.to_string();
        if !is_lone_begin(&self.analyze(&sql)) {
            return Ok(Deferred::No);
        }
        // The unnamed statement is the BEGIN now, as on a server.
        let parse_msg = self.cbuf[frames[0].1 - 5..frames[0].2].to_vec();
        self.note_parse(&parse_msg)?;
        self.skip_query(at);
        self.deferred_begin = Some(sql);
        backend::parse_complete(&mut self.to_client);
        backend::put_message(&mut self.to_client, b'2', |_| {});
        if describe {
            backend::put_message(&mut self.to_client, b'n', |_| {});
        }
        backend::command_complete(&mut self.to_client, "BEGIN");
        backend::ready_for_query(&mut self.to_client, b'T');
        Ok(Deferred::Answered)
    }

    fn skip_query(&mut self, len: usize) {
        use bytes::Buf;
        self.cbuf.advance(len);
    }
}

/// A text that is one BEGIN / START TRANSACTION and names no shard.
fn is_lone_begin(analysis: &pgrouter_parser::Analysis) -> bool {
    matches!(
        analysis.statements.as_slice(),
        [s] if matches!(s.kind, StatementKind::Transaction(TxEffect::Begin { .. }))
    ) && analysis.hint.shard.is_none()
}
