//! A transaction on several shards. It starts as any transaction, on the
//! one server the session holds; when a statement needs another shard, the
//! held server becomes the first of the transaction's legs and the session
//! moves between legs statement by statement: a statement with a key runs
//! on its shard's leg through the usual forwarding (prepared statements,
//! SET tracking and all), a statement needing several shards runs on all
//! of them (`read.rs`, `write.rs`). Every leg joins in the same isolation
//! level and access mode, and with the transaction's savepoints, so
//! `ROLLBACK TO SAVEPOINT` means the same everywhere. COMMIT commits the
//! legs together: two-phase commit across the legs that wrote (when more
//! than one did), a plain COMMIT for the others. Once any leg failed, the
//! transaction is failed everywhere, as in PostgreSQL.

use std::sync::Arc;

use pgrouter_parser::{Analysis, StatementKind, TxEffect};

use super::held::{Leg, TxLegs};
use super::legs::cancel_targets;
use super::unit::{Taken, Unit};
use super::ShardError;
use crate::client::error::SessionEnd;
use crate::client::routing::Routed;
use crate::client::session::Session;
use crate::protocol::backend;
use crate::protocol::frontend::{parse_bind_names, parse_parse, parse_query};
use crate::router::{ManyKind, Role, ShardChoice};

/// What the session does with the unit of work at the front of its buffer.
pub(in crate::client) enum TxStep {
    /// Forward it to the held server as usual.
    Forward,
    /// Answered here (queued for the client).
    Answered,
    /// Answers to earlier requests are still due: wait for them first.
    Wait,
    /// The batch has not arrived whole yet.
    NeedMore,
}

impl Session {
    /// Inside a transaction on a sharded database (transaction pooling):
    /// whether the next unit of work stays on the held server, moves to
    /// another shard's leg, or runs on several.
    pub(in crate::client) async fn step_in_sharded_tx(
        &mut self,
        tag: u8,
        len: usize,
    ) -> Result<TxStep, SessionEnd> {
        if !matches!(tag, b'Q' | b'P' | b'B') || self.shard_map.as_ref().is_none() {
            return Ok(TxStep::Forward);
        }
        if self.flow.unsynced() {
            // A batch that only prepared and described so far (asyncpg:
            // Parse, Describe, Flush, then its Bind) may still move: it is
            // closed with a Sync of the router's own first.
            if tag != b'B' || self.flow.executed_unsynced() || self.answers_due() {
                return Ok(TxStep::Forward);
            }
            let held_shard = self.server.as_ref().map(|h| h.shard);
            let (moves, counts) = match self.route_learning_columns(tag).await {
                None => return Ok(TxStep::NeedMore),
                Some(Ok(Routed::Keyed(r))) => (Some(r.shard) != held_shard, true),
                Some(Ok(Routed::Many(..))) => (true, false),
                Some(Ok(_)) => (false, true),
                Some(Err(_)) => (false, false),
            };
            if !moves {
                if counts {
                    self.state.metrics.record_shards(1);
                }
                return Ok(TxStep::Forward);
            }
            crate::protocol::frontend::sync(self.to_server());
            self.expect().swallow(crate::client::expect::Reply::Sync);
            self.flow.batch_closed_by_router();
            return Ok(TxStep::Wait);
        }
        if tag == b'P' {
            match self.batch_only_prepares() {
                None => return Ok(TxStep::NeedMore),
                // Nothing runs (libpq's PQprepare: Parse, Sync): the held
                // server prepares it; a later Bind moves it as it needs,
                // even for a COMMIT or SAVEPOINT of several legs.
                Some(true) => return Ok(TxStep::Forward),
                Some(false) => {}
            }
        }
        self.learn_insert_columns(tag, len).await;
        let Some(analysis) = self.peek_analysis(tag, len) else {
            return Ok(TxStep::Forward);
        };
        let effect = tx_effect(&analysis);
        // A SET (LOCAL) inside the transaction holds on every shard of it,
        // as on one PostgreSQL: sent to every leg, and replayed on legs
        // that join later, like a savepoint.
        let setting = tag == b'Q' && is_setting(&analysis);
        if self.tx_legs.is_none() {
            // In either protocol: drivers such as JDBC and psycopg's
            // pipeline mode send SAVEPOINT and SET as Parse/Bind/Execute.
            if (effect == Some(TxEffect::Savepoint) || is_setting(&analysis))
                && !self.note_savepoint(tag, len)
            {
                return Ok(TxStep::NeedMore);
            }
            if effect.is_some() {
                return Ok(TxStep::Forward);
            }
        }
        let Some(routed) = self.route_learning_columns(tag).await else {
            return Ok(TxStep::NeedMore);
        };
        let routed = match routed {
            Ok(r) => r,
            Err(refusal) => {
                // Raised through the held server: the transaction fails
                // as PostgreSQL would fail it.
                self.refuse(tag, len, refusal);
                return Ok(TxStep::Answered);
            }
        };
        // A statement that runs on one shard's leg is counted here, as one
        // outside a transaction is when routed (those on several shards,
        // where they run).
        let one_shard = !matches!(routed, Routed::Many(..)) && effect.is_none();
        let held_shard = self.server.as_ref().map(|h| h.shard);
        let wanted = match &routed {
            Routed::Keyed(route) if Some(route.shard) != held_shard => Some(route.shard),
            Routed::Many(..) => None,
            // Unsharded tables, sequences, a hint: their shard (0 unless a
            // hint says otherwise), as outside a transaction — not the
            // shard the transaction used last.
            Routed::One(route)
                if Some(route.shard) != held_shard
                    && effect.is_none()
                    && !setting
                    && self.follows_its_shard(&analysis) =>
            {
                Some(route.shard)
            }
            // A BEGIN inside the transaction: the held leg answers it as
            // PostgreSQL does (WARNING 25001, or 25P02 once failed).
            _ if self.tx_legs.is_some() && effect.is_some() && !is_begin(effect.as_ref()) => None,
            _ if self.tx_legs.is_some() && setting => None,
            _ => {
                // A failed leg answers everything but the transaction's end.
                if let Some(failed) = self.failed_parked_leg() {
                    if !self.is_quiet() {
                        return Ok(TxStep::Wait);
                    }
                    let _ = self.swap_to(failed).await?;
                }
                if one_shard {
                    self.state.metrics.record_shards(1);
                }
                return Ok(TxStep::Forward);
            }
        };
        if !self.is_quiet() {
            return Ok(TxStep::Wait);
        }
        let ends_legs = self.tx_legs.is_some() && effect.is_some() && !is_begin(effect.as_ref());
        if !ends_legs
            && self
                .server
                .as_ref()
                .is_some_and(|h| h.conn.tx_status == b'E')
        {
            return Ok(TxStep::Forward); // PostgreSQL answers 25P02
        }
        if self.tx_legs.is_none() {
            if let Err(e) = self.enter_legs_mode().await {
                self.answer_unit_error(tag, len, e).await;
                return Ok(TxStep::Answered);
            }
        }
        if let Some(shard) = wanted {
            if let Err(e) = self.swap_to(shard).await? {
                self.answer_unit_error(tag, len, e).await;
                return Ok(TxStep::Answered);
            }
            self.state.metrics.record_shards(1);
            return Ok(TxStep::Forward);
        }
        match (routed, effect) {
            (Routed::Many(route, choice), _) => self.many_in_tx(tag, route.role, choice).await?,
            (_, Some(effect)) => self.end_or_mark(tag, effect).await?,
            _ if setting => {
                let unit = match self.take_unit(tag)? {
                    Taken::Unit(u) => u,
                    Taken::Refused(e) => {
                        self.skip_unit(tag);
                        return self
                            .answer_in_tx(Err(e), None)
                            .await
                            .map(|_| TxStep::Answered);
                    }
                    // Taken from the buffer already: nothing to skip.
                    Taken::Failed(e) => {
                        return self
                            .answer_in_tx(Err(e), None)
                            .await
                            .map(|_| TxStep::Answered);
                    }
                };
                self.on_every_leg(unit, true).await?;
            }
            _ => {}
        }
        Ok(TxStep::Answered)
    }

    /// Whether the batch at the front of the buffer only prepares and
    /// describes statements (no Bind or Execute before its Sync or Flush);
    /// None while it has not arrived whole (a batch longer than the
    /// router looks ahead counts as one that runs something).
    fn batch_only_prepares(&self) -> Option<bool> {
        if self.cbuf.len() > crate::client::routing::MAX_LOOKAHEAD {
            return Some(false);
        }
        let mut at = 0;
        while let Ok(Some(frame)) =
            crate::protocol::next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)
        {
            match frame.tag {
                b'B' | b'E' => return Some(false),
                b'S' | b'H' => return Some(true),
                _ => at += frame.total_len,
            }
        }
        None
    }

    /// The analysis of the unit at the front of the buffer.
    pub(in crate::client) fn peek_analysis(&self, tag: u8, len: usize) -> Option<Arc<Analysis>> {
        let body = self.cbuf.get(5..len)?;
        match tag {
            b'Q' => self
                .message_analysis(tag, 0, len)
                .ok()
                .map(|a| self.query_analysis(a)),
            b'P' => self.message_analysis(tag, 0, len).ok(),
            b'B' => {
                let b = parse_bind_names(body).ok()?;
                self.statement_analysis(b.statement, &self.unnamed)
            }
            _ => None,
        }
    }

    /// Remembers the SAVEPOINTs and SETs of the unit at the front, sent on
    /// the held server (legs joining later get them too): a Query's text,
    /// or those of the statements an extended batch executes (a pipeline
    /// may hold several; such statements take no parameters). False: the
    /// batch has not arrived up to its Sync or Flush yet (a driver may
    /// write a pipeline in several pieces), nothing noted.
    fn note_savepoint(&mut self, tag: u8, len: usize) -> bool {
        let Some(held) = self.server.as_ref() else {
            return true;
        };
        let attached_at = held.attached_at;
        let texts = match tag {
            b'Q' => parse_query(self.cbuf.get(5..len).unwrap_or(&[]))
                .map(|sql| vec![sql.to_string()])
                .unwrap_or_default(),
            _ => match self.batch_texts() {
                Some(texts) => texts,
                None => return false,
            }
            .into_iter()
            .filter(|sql| {
                let a = self.analyze(sql);
                tx_effect(&a) == Some(TxEffect::Savepoint) || is_setting(&a)
            })
            .collect(),
        };
        if self.tx_savepoints.0 != Some(attached_at) {
            self.tx_savepoints = (Some(attached_at), Vec::new());
        }
        self.tx_savepoints.1.extend(texts);
        true
    }

    /// The statement text of each Bind of the extended batch at the front
    /// of the buffer (up to its Sync or Flush), in order: from a Parse of
    /// the same batch, else the session's prepared (or unnamed) statement.
    /// `None` while the batch has not arrived that far (and fits the
    /// router's look-ahead; a longer one counts as ending there).
    fn batch_texts(&self) -> Option<Vec<String>> {
        let mut texts = Vec::new();
        let mut parsed: Vec<(&str, &str)> = Vec::new();
        let mut at = 0;
        loop {
            let rest = self.cbuf.get(at..).unwrap_or(&[]);
            let f = match crate::protocol::next_frame(rest, self.max_message) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                // Malformed: whoever forwards it reports that.
                Err(_) => return Some(texts),
            };
            let body = self.cbuf.get(at + 5..at + f.total_len).unwrap_or(&[]);
            at += f.total_len;
            match f.tag {
                b'P' => {
                    if let Ok(p) = parse_parse(body) {
                        parsed.retain(|(name, _)| *name != p.name);
                        parsed.push((p.name, p.sql));
                    }
                }
                b'B' => {
                    let Ok(b) = parse_bind_names(body) else {
                        continue;
                    };
                    let text = match parsed.iter().find(|(name, _)| *name == b.statement) {
                        Some((_, sql)) => Some(sql.to_string()),
                        None if b.statement.is_empty() => self
                            .unnamed_parse
                            .get(5..)
                            .and_then(|p| parse_parse(p).ok())
                            .map(|p| p.sql.to_string()),
                        None => self.statements.get(b.statement).map(|s| s.sql.to_string()),
                    };
                    texts.extend(text);
                }
                b'S' | b'H' => return Some(texts),
                _ => {}
            }
        }
        (self.cbuf.len() > crate::client::routing::MAX_LOOKAHEAD).then_some(texts)
    }

    /// The held server becomes the transaction's first leg.
    async fn enter_legs_mode(&mut self) -> Result<(), ShardError> {
        let held = self
            .server
            .as_mut()
            .ok_or_else(|| ShardError::router("XX000", "no server"))?;
        let rows = held
            .conn
            .query_rows(
                "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')",
            )
            .await
            .map_err(|e| ShardError::lost(held.shard, &e))?;
        let (iso, ro) = match rows.first().map(|r| r.as_slice()) {
            Some([Some(iso), Some(ro)]) => (iso.to_uppercase(), ro == "on"),
            _ => ("READ COMMITTED".to_string(), false),
        };
        let mut begin = format!(
            "BEGIN ISOLATION LEVEL {iso} {};",
            if ro { "READ ONLY" } else { "READ WRITE" }
        );
        if self.tx_savepoints.0 == Some(held.attached_at) {
            for sp in &self.tx_savepoints.1 {
                begin.push_str(sp.trim_end_matches(';'));
                begin.push(';');
            }
        }
        self.tx_savepoints = (None, Vec::new());
        self.tx_legs = Some(TxLegs {
            parked: Vec::new(),
            begin,
        });
        Ok(())
    }

    /// A parked leg whose transaction failed.
    fn failed_parked_leg(&self) -> Option<usize> {
        let legs = self.tx_legs.as_ref()?;
        legs.parked
            .iter()
            .find(|l| l.held.conn.tx_status == b'E')
            .map(|l| l.shard)
    }

    /// Makes `shard`'s leg the held server, joining it to the transaction
    /// first if it is new.
    async fn swap_to(&mut self, shard: usize) -> Result<Result<(), ShardError>, SessionEnd> {
        let role = self.tx_role();
        let leg = match self.take_parked(shard) {
            Some(leg) => leg,
            None => match self.join_leg(shard, role).await {
                Ok(leg) => leg,
                Err(e) => return Ok(Err(e)),
            },
        };
        if let Some(current) = self.server.take() {
            // Parked only between units of work: it owes nothing.
            debug_assert!(current.expect.is_empty());
            self.park(Leg {
                shard: current.shard,
                held: current,
                ready: true,
                cancelled: false,
            });
        }
        self.cancel.slot.set(Some(leg.held.conn.cancel_target()));
        self.registered.info.set_server(
            &leg.held.conn.addr,
            leg.held.conn.backend_pid,
            leg.held.conn.stream.is_tls(),
            leg.held.shard,
        );
        self.server = Some(leg.held);
        self.unnamed_here = false;
        self.flow.attached();
        Ok(Ok(()))
    }

    /// Whether a statement without shard keys runs on the shard its route
    /// names rather than on the leg held now: one that names a table other
    /// than a reference table (unsharded tables live on shard 0), a SELECT
    /// of no table at all (sequences: `nextval`, `currval`), or one a hint
    /// routes. Reads of reference tables stay where they are (every leg of
    /// the transaction sees its writes to them), and so do statements on
    /// the leg's own objects (FETCH of a cursor, ...).
    fn follows_its_shard(&self, analysis: &Analysis) -> bool {
        let Some(map) = self.shard_map.as_ref() else {
            return false;
        };
        analysis.hint.shard.is_some()
            || self.session_routing().has_shard_setting
            || (analysis.tables.is_empty()
                && analysis
                    .statements
                    .iter()
                    .all(|s| s.kind == StatementKind::Select))
            || analysis.tables.iter().any(|t| !map.is_reference(t))
    }

    /// The role the transaction's legs are taken for: the one its first
    /// server was routed for (`for_writes`), not what that server turned
    /// out to be — a read-only transaction whose first shard has no replica
    /// (its primary stood in) still reads from the replicas of the others.
    fn tx_role(&self) -> Role {
        let primary = self.server.as_ref().is_none_or(|h| h.for_writes);
        if primary {
            Role::Primary
        } else {
            Role::Replica
        }
    }

    fn take_parked(&mut self, shard: usize) -> Option<Leg> {
        let legs = self.tx_legs.as_mut()?;
        let at = legs.parked.iter().position(|l| l.shard == shard)?;
        Some(legs.parked.remove(at))
    }

    fn park(&mut self, leg: Leg) {
        if let Some(legs) = self.tx_legs.as_mut() {
            let at = legs.parked.partition_point(|l| l.shard < leg.shard);
            legs.parked.insert(at, leg);
        }
    }

    /// A new leg, in the transaction's isolation level and savepoints.
    pub(super) async fn join_leg(&mut self, shard: usize, role: Role) -> Result<Leg, ShardError> {
        let begin = self
            .tx_legs
            .as_ref()
            .map(|l| l.begin.clone())
            .unwrap_or_else(|| "BEGIN".into());
        let mut legs = self.take_legs(&[shard], role).await?;
        let mut leg = legs.remove(0);
        match leg.held.conn.run_simple(&begin).await {
            Ok(Ok(())) => Ok(leg),
            Ok(Err(fields)) => {
                leg.held.conn.tx_status = b'E';
                self.give_back(vec![leg]);
                Err(ShardError::from_fields(shard, fields))
            }
            Err(e) => Err(ShardError::lost(shard, &e)),
        }
    }

    /// Every leg of the transaction, the held one first taken out.
    fn all_legs(&mut self) -> Vec<Leg> {
        let mut legs = self
            .tx_legs
            .as_mut()
            .map(|l| std::mem::take(&mut l.parked))
            .unwrap_or_default();
        if let Some(held) = self.server.take() {
            debug_assert!(held.expect.is_empty());
            let at = legs.partition_point(|l| l.shard < held.shard);
            legs.insert(
                at,
                Leg {
                    shard: held.shard,
                    held,
                    ready: true,
                    cancelled: false,
                },
            );
        }
        legs
    }

    /// A statement needing several shards inside the transaction.
    async fn many_in_tx(
        &mut self,
        tag: u8,
        role: Role,
        choice: ShardChoice,
    ) -> Result<(), SessionEnd> {
        let Some(many) = choice.many.clone() else {
            return Ok(());
        };
        if many.kind == ManyKind::Pipeline {
            // Statements on different shards in one batch: each on its
            // shard's leg of the transaction (joining new ones).
            let held = self.server.as_ref().map(|h| h.shard);
            let legs = self.all_legs();
            let role = if legs.iter().all(|l| l.held.for_writes) {
                Role::Primary
            } else {
                Role::Replica
            };
            self.pipeline = Some(super::Pipeline::in_tx(legs, role, held));
            return self.pipeline_step(role).await;
        }
        let unit = match self.take_unit(tag)? {
            Taken::Unit(u) => u,
            Taken::Refused(e) => {
                self.skip_unit(tag);
                return self.answer_in_tx(Err(e), None).await;
            }
            // Taken from the buffer already: nothing to skip.
            Taken::Failed(e) => return self.answer_in_tx(Err(e), None).await,
        };
        if let Some(e) = super::row_limit_refusal(&unit, many.kind) {
            return self.answer_in_tx(Err(e), Some(&unit)).await;
        }
        let copy = matches!(many.kind, ManyKind::CopyIn | ManyKind::CopyOut);
        if copy && unit.extended.is_some() {
            return self
                .answer_in_tx(
                    Err(super::extended_copy_refusal(many.shards.len())),
                    Some(&unit),
                )
                .await;
        }
        if !matches!(
            many.kind,
            ManyKind::Read
                | ManyKind::Write
                | ManyKind::Replicate
                | ManyKind::Ddl
                | ManyKind::InsertSplit
                | ManyKind::CopyIn
                | ManyKind::CopyOut
        ) || crate::router::runs_outside_transactions(&unit.analysis, &unit.sql)
        {
            let e = ShardError::router(
                "0A000",
                format!(
                    "pgrouter: this statement on {} shards cannot run inside a transaction block (yet); \
                     HINT: run it outside the transaction",
                    many.shards.len()
                ),
            );
            return self.answer_in_tx(Err(e), Some(&unit)).await;
        }
        let _ = role;
        self.state.metrics.record_shards(many.shards.len());
        // Join the shards not in the transaction yet, in shard order.
        let current = self.server.as_ref().map(|h| h.shard);
        let mut legs = self.all_legs();
        let role = if legs.iter().all(|l| l.held.for_writes) {
            Role::Primary
        } else {
            Role::Replica
        };
        for &shard in &many.shards {
            if legs.iter().any(|l| l.shard == shard) {
                continue;
            }
            match self.join_leg(shard, role).await {
                Ok(leg) => {
                    let at = legs.partition_point(|l| l.shard < shard);
                    legs.insert(at, leg);
                }
                Err(e) => {
                    self.restore_legs(legs, current);
                    return self.answer_in_tx(Err(e), Some(&unit)).await;
                }
            }
        }
        self.cancel.slot.set_many(cancel_targets(&legs));
        let (mut used, rest): (Vec<Leg>, Vec<Leg>) = legs
            .into_iter()
            .partition(|l| many.shards.contains(&l.shard));
        let result = match many.kind {
            ManyKind::Read => self.read_with_legs(&unit, &mut used).await,
            ManyKind::InsertSplit => self.insert_with_legs_in_tx(&unit, &mut used).await,
            ManyKind::CopyIn => self.copy_in_with_legs_in_tx(&unit, &mut used).await,
            ManyKind::CopyOut => self.copy_out_with_legs_in_tx(&unit, &mut used).await,
            kind => self.write_with_legs_in_tx(&unit, kind, &mut used).await,
        };
        let mut legs = rest;
        legs.extend(used);
        legs.sort_by_key(|l| l.shard);
        self.restore_legs(legs, current);
        self.answer_in_tx(result.map(|_| ()), Some(&unit)).await
    }

    /// Puts legs back: `current` held again, the others parked.
    pub(super) fn restore_legs(&mut self, legs: Vec<Leg>, current: Option<usize>) {
        for leg in legs {
            if Some(leg.shard) == current && self.server.is_none() {
                self.cancel.slot.set(Some(leg.held.conn.cancel_target()));
                self.server = Some(leg.held);
            } else {
                self.park(leg);
            }
        }
    }

    /// Queues an answer inside the transaction: the error (if any) and a
    /// ReadyForQuery saying whether the transaction failed. An error fails
    /// the transaction, as any error fails a PostgreSQL transaction.
    pub(super) async fn answer_in_tx(
        &mut self,
        result: Result<(), ShardError>,
        unit: Option<&Unit>,
    ) -> Result<(), SessionEnd> {
        if let Err(e) = &result {
            self.fail_transaction(e).await;
        }
        if let Err(e) = result {
            if let Some(unit) = unit.filter(|u| u.extended.is_some()) {
                let _ = unit; // ParseComplete/BindComplete were not sent
            }
            self.state.metrics.record_error(&e.sqlstate());
            e.write(&mut self.to_client);
        }
        let failed = self
            .server
            .as_ref()
            .is_some_and(|h| h.conn.tx_status == b'E')
            || self.failed_parked_leg().is_some();
        backend::ready_for_query(&mut self.to_client, if failed { b'E' } else { b'T' });
        Ok(())
    }

    /// The router's own refusal (a statement it cannot run exactly, a
    /// shard it cannot reach) is raised on one leg of the transaction, so
    /// that the transaction is failed there as PostgreSQL would fail it:
    /// later statements get 25P02 and COMMIT answers ROLLBACK, and nothing
    /// written before the refusal commits. A server's own error failed its
    /// leg already.
    pub(super) async fn fail_transaction(&mut self, e: &ShardError) {
        let ShardError::Router { sqlstate, message } = e else {
            return;
        };
        let failed = self
            .server
            .as_ref()
            .is_some_and(|h| h.conn.tx_status == b'E')
            || self.failed_parked_leg().is_some();
        if failed || !self.is_quiet() {
            return;
        }
        let raise = crate::client::policy_guard::raise_sql(sqlstate, message);
        let current = self.server.as_ref().map(|h| h.shard);
        let mut legs = self.all_legs();
        // A leg between statements (nothing unread or unsent).
        let idle = legs.iter_mut().find(|l| {
            let c = &l.held.conn;
            c.tx_status == b'T' && c.read_buf.is_empty() && c.write_buf.is_empty()
        });
        if let Some(leg) = idle {
            // An I/O error loses the leg; its transaction is gone either way.
            let _ = leg.held.conn.run_simple(&raise).await;
            leg.held.conn.tx_status = b'E';
        }
        self.restore_legs(legs, current);
    }

    /// Drops a refused unit from the buffer (a Query, or a batch to its Sync).
    fn skip_unit(&mut self, tag: u8) {
        use bytes::Buf;
        let mut at = 0;
        while let Ok(Some(f)) =
            crate::protocol::next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)
        {
            at += f.total_len;
            if tag == b'Q' || f.tag == b'S' {
                break;
            }
        }
        self.cbuf.advance(at);
    }

    /// An error for the unit at the front of the buffer, which is dropped;
    /// it fails the transaction.
    async fn answer_unit_error(&mut self, tag: u8, _len: usize, e: ShardError) {
        self.fail_transaction(&e).await;
        self.skip_unit(tag);
        self.state.metrics.record_error(&e.sqlstate());
        e.write(&mut self.to_client);
        let status = self.server.as_ref().map_or(b'I', |h| h.conn.tx_status);
        backend::ready_for_query(&mut self.to_client, status);
    }

    /// COMMIT, ROLLBACK and savepoints of a transaction with several legs.
    async fn end_or_mark(&mut self, tag: u8, effect: TxEffect) -> Result<(), SessionEnd> {
        let unit = match self.take_unit(tag)? {
            Taken::Unit(u) => u,
            Taken::Refused(e) => {
                self.skip_unit(tag);
                return self.answer_in_tx(Err(e), None).await;
            }
            // Taken from the buffer already: nothing to skip.
            Taken::Failed(e) => return self.answer_in_tx(Err(e), None).await,
        };
        let sql = unit.sql.trim().to_ascii_uppercase();
        match effect {
            TxEffect::Commit if sql.contains("CHAIN") && !sql.contains("NO CHAIN") => {
                self.answer_in_tx(Err(ShardError::router("0A000", "pgrouter: COMMIT AND CHAIN of a transaction on several shards is not supported")), Some(&unit)).await
            }
            TxEffect::Commit | TxEffect::Rollback => {
                let mut legs = self.all_legs();
                self.tx_legs = None;
                let result = if effect == TxEffect::Commit {
                    self.commit_tx_legs(&mut legs).await
                } else {
                    self.roll_back(&mut legs).await;
                    Ok("ROLLBACK")
                };
                self.give_back(legs);
                self.leave_transaction();
                match result {
                    Ok(tag) => {
                        unit.preamble(&mut self.to_client);
                        backend::command_complete(&mut self.to_client, tag);
                    }
                    Err(e) => {
                        self.state.metrics.record_error(&e.sqlstate());
                        e.write(&mut self.to_client);
                    }
                }
                backend::ready_for_query(&mut self.to_client, b'I');
                Ok(())
            }
            TxEffect::Savepoint | TxEffect::Release | TxEffect::RollbackTo => {
                self.on_every_leg(unit, effect == TxEffect::Savepoint).await
            }
            _ => self.answer_in_tx(
                Err(ShardError::router(
                    "0A000",
                    "pgrouter: PREPARE TRANSACTION and COMMIT/ROLLBACK PREPARED inside a transaction on several \
                     shards are not supported (the router commits such transactions with two-phase commit itself)",
                )),
                Some(&unit),
            ).await,
        }
    }

    /// Runs `unit` (a savepoint command or a SET) on every leg of the
    /// transaction, answering with the first leg's answer; with `remember`,
    /// legs that join later run it too.
    async fn on_every_leg(&mut self, unit: Unit, remember: bool) -> Result<(), SessionEnd> {
        let current = self.server.as_ref().map(|h| h.shard);
        let mut legs = self.all_legs();
        let mut request = bytes::BytesMut::new();
        unit.request(&unit.sql, &mut request);
        let result = match self.ask_all(&mut legs, &request, 1).await? {
            Ok(answers) => {
                let failed = answers
                    .iter()
                    .flatten()
                    .find(|(t, _)| *t == b'E')
                    .map(|(_, b)| ShardError::Server(b.clone()));
                match failed {
                    Some(e) => Err(e),
                    None => {
                        let mut first = answers.into_iter().next().unwrap_or_default();
                        // NoData stays when the client described the portal.
                        unit.client_part(&mut first);
                        first.retain(|(t, _)| !matches!(t, b'Z' | b'S'));
                        unit.preamble(&mut self.to_client);
                        for (t, b) in first {
                            backend::put_message(&mut self.to_client, t, |o| {
                                o.extend_from_slice(&b)
                            });
                        }
                        Ok(())
                    }
                }
            }
            Err(e) => Err(e),
        };
        if remember && result.is_ok() {
            if let Some(l) = self.tx_legs.as_mut() {
                l.begin.push_str(unit.sql.trim_end().trim_end_matches(';'));
                l.begin.push(';');
            }
        }
        self.restore_legs(legs, current);
        self.answer_in_tx(result, Some(&unit)).await
    }

    /// Commits a transaction's legs: those that wrote together (two-phase
    /// when more than one did), the others plainly. A failed transaction is
    /// rolled back ("ROLLBACK", as PostgreSQL answers COMMIT then).
    async fn commit_tx_legs(&mut self, legs: &mut [Leg]) -> Result<&'static str, ShardError> {
        if legs.iter().any(|l| l.held.conn.tx_status != b'T') {
            self.roll_back(legs).await;
            return Ok("ROLLBACK");
        }
        let mut wrote = Vec::new();
        for (i, leg) in legs.iter_mut().enumerate() {
            let rows = leg
                .held
                .conn
                .query_rows("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
                .await
                .map_err(|e| ShardError::lost(leg.shard, &e))?;
            if rows
                .first()
                .and_then(|r| r.first())
                .and_then(|v| v.as_deref())
                == Some("t")
            {
                wrote.push(i);
            }
        }
        // The legs that only read can commit first: they change nothing.
        for (i, leg) in legs.iter_mut().enumerate() {
            if !wrote.contains(&i) {
                let _ = leg.held.conn.run_simple("COMMIT").await;
            }
        }
        self.commit_written(legs, &wrote).await.map(|_| "COMMIT")
    }

    /// The transaction is over: nothing held, nothing pending.
    fn leave_transaction(&mut self) {
        self.flow.server_released();
        self.server = None;
        self.cancel.slot.set(None);
        self.registered
            .info
            .set_state(crate::client::registry::ClientState::Idle);
        self.registered.info.clear_server();
    }
}

/// A SET or RESET of a server setting (not the router's own `pgrouter.*`,
/// not SET TRANSACTION, which a joining leg gets from its BEGIN).
fn is_setting(analysis: &Analysis) -> bool {
    let name = match analysis.statements.as_slice() {
        [s] => match &s.kind {
            StatementKind::Set(set) => set.name.as_str(),
            StatementKind::Reset(pgrouter_parser::ResetTarget::Name(name)) => name.as_str(),
            StatementKind::Reset(pgrouter_parser::ResetTarget::All) => "all",
            _ => return false,
        },
        _ => return false,
    };
    !name.starts_with("pgrouter.")
        && !name.starts_with("transaction")
        && name != "session characteristics"
}

fn is_begin(effect: Option<&TxEffect>) -> bool {
    matches!(effect, Some(TxEffect::Begin { .. }))
}

/// The one transaction-control effect of a unit, if it is one.
fn tx_effect(analysis: &Analysis) -> Option<TxEffect> {
    match analysis.statements.as_slice() {
        [s] => match &s.kind {
            StatementKind::Transaction(t) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    }
}
