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
use crate::router::{Role, Route};

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
        if self.mode != PoolMode::Transaction || self.rt.shard_maps.get(&self.database).is_none() {
            return Ok(Deferred::No);
        }
        let Some(begin) = self.deferred_begin.clone() else {
            if tag != b'Q' || self.pins.is_pinned() {
                return Ok(Deferred::No);
            }
            let body = self.cbuf.get(5..len).unwrap_or(&[]);
            let analysis = self.analyze_query(body)?;
            let lone_begin = matches!(
                analysis.statements.as_slice(),
                [s] if matches!(s.kind, StatementKind::Transaction(TxEffect::Begin { .. }))
            ) && analysis.hint.shard.is_none();
            if !lone_begin {
                return Ok(Deferred::No);
            }
            let sql = crate::protocol::frontend::parse_query(body)?.to_string();
            self.skip_query(len);
            self.deferred_begin = Some(sql);
            backend::command_complete(&mut self.to_client, "BEGIN");
            backend::ready_for_query(&mut self.to_client, b'T');
            return Ok(Deferred::Answered);
        };
        // COMMIT or ROLLBACK of a transaction that ran nothing.
        if tag == b'Q' {
            let body = self.cbuf.get(5..len).unwrap_or(&[]);
            let analysis = self.analyze_query(body)?;
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
        let route = match self.route_arrived_batch(tag) {
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
        let route = Route {
            role: if self.policy.read_only {
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
        frontend::write_parse(&mut self.to_server, "", &begin, &[]);
        frontend::bind_execute_unnamed(&mut self.to_server);
        self.unnamed_here = false;
        self.expect.swallow(Reply::Parse(None));
        self.expect.swallow(Reply::Bind);
        self.expect.swallow(Reply::Execute);
        if many {
            // The statement runs on legs of the transaction, not through
            // this server: its BEGIN needs a Sync of its own to be answered.
            frontend::sync(&mut self.to_server);
            self.expect.swallow(Reply::Sync);
        }
        self.in_tx = true;
        Ok(Deferred::Attached)
    }

    fn skip_query(&mut self, len: usize) {
        use bytes::Buf;
        self.cbuf.advance(len);
    }
}
