//! Client to server: route each unit of work, check out a server, and
//! forward the client's messages — rewriting prepared-statement names and
//! preparing statements the server lacks — while recording what answers the
//! server owes in [`Expectations`].

use std::hint::cold_path;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use pgrouter_config::PoolMode;
use pgrouter_parser::Analysis;
use tokio::io::AsyncReadExt;

use super::error::SessionEnd;
use super::expect::{Reply, CLOSE_COMPLETE, PARSE_COMPLETE};
use super::flow::GuardGate;
use super::prepared::{SessionStatement, SharedStatement};
use super::registry::ClientState;
use super::routing::Routed;
use super::session::{GuardState, Held, Session};
use super::shards::{Deferred, TxStep};
use super::sql_prepared::touches_sql_prepared;
use crate::pool::PoolError;
use crate::protocol::backend::{self, Severity};
use crate::protocol::frontend::{self, parse_bind_names, parse_parse, parse_query, parse_target};
use crate::protocol::next_frame;
use crate::router::{Refusal, Role, Route};

impl Session {
    /// After a reload, a session moves to the new runtime at its next
    /// transaction boundary: same user and database, new pools (unless
    /// `check_login_still_valid` ends it first).
    fn refresh_runtime(&mut self) -> Result<(), SessionEnd> {
        if self.state.generation() == self.rt.generation {
            return Ok(());
        }
        self.check_login_still_valid()?;
        let rt = self.state.rt();
        let Some(pools) = self.own_pools_in(&rt) else {
            return Err(self.removed_from_configuration());
        };
        self.pools = pools;
        self.shard_map = rt.shard_maps.get(&self.database).cloned();
        self.rt = rt;
        // Analyses depend on the configuration (`write_functions`).
        self.memo.borrow_mut().clear();
        Ok(())
    }

    /// Ends the session (FATAL 08006) when a reload removed its user or
    /// database, or changed a setting it was logged in with (see
    /// `changed_login_settings`): the client reconnects under the new
    /// configuration. A JWT session whose login would now be refused ends
    /// with 28000 instead (see `check_jwt_still_accepted`). Checked at each
    /// transaction boundary, once per configuration generation (an atomic
    /// load otherwise), whether or not a server is held: session mode and
    /// pinned clients keep theirs.
    pub(super) fn check_login_still_valid(&mut self) -> Result<(), SessionEnd> {
        if self.state.generation() == self.vetted_generation {
            return Ok(());
        }
        let rt = self.state.rt();
        // First: a JWT session whose token is now refused cannot reconnect.
        let jwt_changed = self.check_jwt_still_accepted(&rt)?;
        let Some(pools) = self.own_pools_in(&rt) else {
            return Err(self.removed_from_configuration());
        };
        if let Some(changed) = self.changed_login_settings(&rt, &pools).or(jwt_changed) {
            return Err(SessionEnd::fatal(
                "08006",
                format!(
                    "pgrouter: the configuration of user \"{}\" for database \"{}\" changed ({changed}); reconnect to use it",
                    self.registered.info.user, self.database
                ),
            ));
        }
        self.vetted_generation = rt.generation;
        self.apply_reloaded_timeouts(&rt.config.general);
        Ok(())
    }

    /// The session's pools in `rt`, found by name. A session on learnt
    /// pools (`[auth_query]`, `[jit]`) only takes learnt pools of the same
    /// server role: a reload may have added a users.toml entry with the
    /// same name (e.g. `"app (jit)"`), whose pools log in as someone else.
    fn own_pools_in(
        &self,
        rt: &crate::state::Runtime,
    ) -> Option<std::sync::Arc<crate::pool::UserPools>> {
        let pools = rt.cluster.pools_for(&self.pools_user, &self.database)?;
        let same_kind =
            !self.pools.learnt || (pools.learnt && pools.server_user == self.pools.server_user);
        same_kind.then_some(pools)
    }

    fn removed_from_configuration(&self) -> SessionEnd {
        SessionEnd::fatal(
            "08006",
            format!(
                "pgrouter: user \"{}\" or database \"{}\" was removed from the configuration",
                self.pools_user, self.database
            ),
        )
    }

    /// The settings fixed at login that a reload changed, which an open
    /// session cannot take on: its users.toml entry's `read_only` (a
    /// read-only session pins `default_transaction_read_only` and is routed
    /// to replicas from login on) and `login`, the entry itself (added or
    /// removed: the login would have been checked otherwise), or its pool
    /// mode. Compared with the runtime the session is on. None when the
    /// session can move on.
    fn changed_login_settings(
        &self,
        rt: &crate::state::Runtime,
        pools: &crate::pool::UserPools,
    ) -> Option<&'static str> {
        let user = &self.registered.info.user;
        let before = self.rt.config.user(user, &self.database);
        let after = rt.config.user(user, &self.database);
        match (before, after) {
            (Some(b), Some(a)) if b.read_only != a.read_only => Some("read_only"),
            (Some(b), Some(a)) if b.login != a.login => Some("login"),
            (Some(_), None) | (None, Some(_)) => Some("its users.toml entry was added or removed"),
            _ if pools.mode != self.mode => Some("pool_mode"),
            _ => None,
        }
    }

    /// Admin PAUSE: new transactions wait until RESUME. A shutdown ends
    /// the wait (nothing of the client's runs): the client gets 57P01 at
    /// once, like an idle one, instead of waiting out the shutdown timeout.
    /// A cancel ends it too: `Err(PoolError::Cancelled)` inside `Ok`, for
    /// the caller to answer (the statement never runs, as PostgreSQL
    /// would have cancelled it). The client is read meanwhile, so that one
    /// that leaves is gone at once (`ClientGone`) instead of having the
    /// statement it gave up on run at RESUME (see `read_while_held`).
    async fn wait_while_paused(&mut self) -> Result<Result<(), PoolError>, SessionEnd> {
        let mut held = false;
        let mut outcome = Ok(());
        while self.state.is_paused(&self.database) {
            let resumed = self.state.resumed.notified();
            let cancel_slot = self.cancel.slot.clone();
            let cancelled = cancel_slot.cancelled();
            if !self.state.is_paused(&self.database) {
                break;
            }
            self.registered.info.set_state(ClientState::Waiting);
            self.registered.info.set_paused(true);
            held = true;
            if self.shutdown.is_fired() {
                return Err(SessionEnd::fatal("57P01", "pgrouter is shutting down"));
            }
            let watch_shutdown = !self.shutdown_seen;
            let read_client = self.cbuf.len() < HELD_READ_LIMIT;
            let read = tokio::select! {
                _ = resumed => None,
                _ = cancelled => {
                    self.registered.info.set_state(ClientState::Idle);
                    outcome = Err(PoolError::Cancelled);
                    break;
                }
                _ = &mut self.shutdown, if watch_shutdown => {
                    self.shutdown_seen = true;
                    None
                }
                r = self.client.read_buf(&mut self.cbuf), if read_client => Some(r),
            };
            if let Some(read) = read {
                self.read_while_held(read)?;
            }
        }
        if held {
            self.registered.info.set_paused(false);
        }
        Ok(outcome)
    }

    /// What the client sent while its statement was held: more messages
    /// (kept, and checked like any that arrive), or its leaving.
    fn read_while_held(&mut self, read: std::io::Result<usize>) -> Result<(), SessionEnd> {
        match read {
            Ok(0) => Err(SessionEnd::ClientGone),
            Ok(n) => {
                self.note_client_read(n);
                self.check_arrived_messages()
            }
            Err(e) => Err(SessionEnd::ClientIo(e)),
        }
    }

    /// Checks out a server for a new unit of work, as `attach` does, but a
    /// client queued for a busy pool does not stay queued through an admin
    /// PAUSE (it waits for RESUME, then queues again: PAUSE lets only
    /// transactions already running finish, as in PgBouncer) nor through a
    /// cancel of its statement (57014 at once instead of waiting out
    /// `checkout_timeout_ms`, and the statement never runs).
    async fn attach_new_unit(&mut self, route: Route) -> Result<Result<(), PoolError>, SessionEnd> {
        // Inside a transaction nothing waits for RESUME (PAUSE waits for
        // the transaction to end).
        let watched = !self.flow.in_tx();
        Ok(loop {
            match self.attach_watched(route, &[], watched).await {
                Err(PoolError::Paused) => {
                    if let Err(e) = self.wait_while_paused().await? {
                        break Err(e);
                    }
                    self.refresh_runtime()?;
                }
                // Nothing of the statement ran: the session ends as an
                // idle one does at shutdown.
                Err(PoolError::ShuttingDown) => {
                    self.shutdown_seen = true;
                    return Err(SessionEnd::fatal("57P01", "pgrouter is shutting down"));
                }
                other => break other,
            }
        })
    }
}

/// CopyData, CopyDone and CopyFail continue the COPY statement in progress:
/// they are never the start of a unit of work, so a session is not ended
/// between them (an expired token, a changed login) — the end comes at the
/// next transaction boundary, after the COPY, as it would for any other
/// statement already running.
fn is_copy_data(tag: u8) -> bool {
    matches!(tag, b'd' | b'c' | b'f')
}

impl Session {
    /// Forwards every complete client message in the buffer, checking out a
    /// server first when one is needed. Stops early (`blocked`) when the next
    /// unit of work needs a different server than the one still held.
    pub(super) async fn handle_client_messages(&mut self) -> Result<(), SessionEnd> {
        self.check_arrived_messages()?;
        while let Some(frame) = next_frame(&self.cbuf, self.max_message)? {
            let tag = frame.tag;
            self.message_seq.set(self.message_seq.get().wrapping_add(1));
            if tag == b'X' {
                cold_path();
                self.flush_server().await?;
                return Err(SessionEnd::ClientGone);
            }
            if self.pipeline.is_some() {
                cold_path();
                // A batch on several shards: its next part, once it is here.
                if !self.batch_has_arrived(tag) {
                    break;
                }
                self.pipeline_step(crate::router::Role::Primary).await?;
                continue;
            }
            if self.flow.skip_to_sync()
                || (self.server.is_none() && matches!(tag, b'S' | b'H' | b'd' | b'c' | b'f'))
            {
                cold_path();
                self.cbuf.advance(frame.total_len);
                self.answer_without_server(tag);
                continue;
            }
            match self.flow.guard_gate(tag) {
                GuardGate::Hold => {
                    cold_path();
                    break;
                }
                GuardGate::Drop { answer_query } => {
                    cold_path();
                    // The role could not be set: the held request never runs.
                    self.cbuf.advance(frame.total_len);
                    if answer_query {
                        let status = self.server.as_ref().map_or(b'I', |h| h.conn.tx_status);
                        backend::ready_for_query(&mut self.to_client, status);
                    }
                    continue;
                }
                GuardGate::Pass => {}
            }
            if self.continues_batch(tag) {
                if let Some(refusal) = self.unreadable_text(tag, frame.total_len) {
                    cold_path();
                    self.refuse_in_turn(tag, frame.total_len, refusal).await?;
                    continue;
                }
                self.flow.guard_used();
                self.forward_front(tag, frame.total_len)?;
                continue;
            }
            let unit_boundary = self.flow.batch_start() && !self.flow.in_tx() && !is_copy_data(tag);
            if unit_boundary {
                // Before the policy: it may be the one that changed.
                self.check_login_still_valid()?;
                self.shard_portals.clear();
            }
            if let Some(refusal) = self.unreadable_text(tag, frame.total_len) {
                cold_path();
                self.refuse_in_turn(tag, frame.total_len, refusal).await?;
                continue;
            }
            if tag == b'P'
                && self.policy.jwt.is_some()
                && matches!(
                    self.jwt_lone_reset()?,
                    super::local_answers::LoneReset::Incomplete
                )
            {
                cold_path();
                break; // a DISCARD ALL / RESET ALL is judged on its whole batch
            }
            if let Err(refusal) = self.check_policy(tag, frame.total_len)? {
                cold_path();
                self.refuse_in_turn(tag, frame.total_len, refusal).await?;
                continue;
            }
            if tag == b'P' {
                if let Some(refusal) = self.duplicate_statement(frame.total_len)? {
                    cold_path();
                    self.refuse_in_turn(tag, frame.total_len, refusal).await?;
                    continue;
                }
            }
            if let Some(refusal) = self.portal_exists(tag, frame.total_len) {
                cold_path();
                self.refuse_in_turn(tag, frame.total_len, refusal).await?;
                continue;
            }
            if unit_boundary {
                self.check_token_expiry()?;
            }
            // A connection kept between transactions (sharded: session
            // mode, pinned state) does not decide where the next unit runs.
            self.set_aside_if_elsewhere(tag);
            if (self.server.is_none() || (self.is_quiet() && !self.flow.in_tx()))
                && self.try_answer_locally(frame.total_len)?
            {
                cold_path();
                continue;
            }
            if let Some(analysis) = self.explain_wants_columns.clone() {
                cold_path();
                self.learn_columns_for(&[analysis]).await;
                if self.try_answer_locally(frame.total_len)? {
                    continue;
                }
            }
            let question = if self.explain_wants_params.is_some() {
                Some(ShardQuestion::ExplainParams)
            } else if self.server.is_none() {
                match self.local_prepares()? {
                    Some(batch) if self.shard_map.is_none() => {
                        self.answer_prepares(batch);
                        continue;
                    }
                    Some(batch) => Some(ShardQuestion::Prepares(batch)),
                    None => None,
                }
            } else {
                None
            };
            if let Some(question) = question {
                cold_path();
                // Boxed: a large future, rarely made, kept out of this
                // loop's own state (and code).
                if Box::pin(self.ask_shard_first(question, frame.total_len)).await? {
                    continue;
                }
            }
            if self.server.is_none() {
                self.refresh_runtime()?;
                if let Err(e) = self.wait_while_paused().await? {
                    cold_path();
                    self.cbuf.advance(frame.total_len);
                    self.refuse_after_checkout_error(tag, e);
                    continue;
                }
                // PAUSE, edit, RELOAD, RESUME (a failover): the statement
                // held meanwhile goes where the configuration now says.
                self.refresh_runtime()?;
                self.learn_insert_columns(tag, frame.total_len).await;
                match self.deferred_begin_step(tag, frame.total_len).await? {
                    Deferred::No => {}
                    Deferred::Answered | Deferred::Attached => {
                        cold_path();
                        continue;
                    }
                    Deferred::NeedMore => {
                        cold_path();
                        break;
                    }
                }
                let route = match self.route_learning_columns(tag).await {
                    None => break, // route the batch once its Sync (or Flush) is here
                    Some(Ok(Routed::One(route) | Routed::Keyed(route))) => {
                        if self.shard_map.as_ref().is_some() {
                            self.state.metrics.record_shards(1);
                        }
                        route
                    }
                    Some(Ok(Routed::Many(route, choice))) => {
                        cold_path();
                        if self.run_on_shards(tag, route.role, choice).await? {
                            continue;
                        }
                        break; // the rest of the batch is still coming
                    }
                    Some(Err(refusal)) => {
                        cold_path();
                        self.refuse(tag, frame.total_len, refusal);
                        continue;
                    }
                };
                if let Err(e) = self.attach_new_unit(route).await? {
                    cold_path();
                    self.cbuf.advance(frame.total_len);
                    self.refuse_after_checkout_error(tag, e);
                    continue;
                }
                let replayable = route.role == Role::Replica
                    && !self.flow.in_tx()
                    && self.mode == PoolMode::Transaction;
                if replayable {
                    self.start_replay();
                } else {
                    self.stop_replay();
                }
            } else if self.flow.in_tx() && self.shard_map.as_ref().is_some() {
                match self.step_in_sharded_tx(tag, frame.total_len).await? {
                    TxStep::Forward => {}
                    TxStep::Answered => continue,
                    TxStep::NeedMore => break,
                    TxStep::Wait => {
                        self.flow.wait_until_quiet();
                        break;
                    }
                }
            } else if self.needs_other_server(tag) {
                cold_path();
                self.flow.wait_for_release();
                break;
            }
            if self.flow.guard() == GuardState::Idle
                && self.needs_guard_round_trip(tag, frame.total_len)?
            {
                self.inject_role_guard_synced();
                break;
            }
            self.flow.guard_used();
            let resync = self.server.as_ref().is_some_and(|h| h.resync_params);
            if resync && self.flow.batch_start() && !self.flow.unsynced() {
                self.resync_held_params();
            }
            self.forward_front(tag, frame.total_len)?;
        }
        self.restore_kept();
        self.flush_server().await?;
        self.flush_client().await
    }

    /// A Bind, Describe, Execute, Sync or Flush inside an extended batch
    /// already on the held server of an unsharded session: of the checks a
    /// message passes on its way, only the UTF-8 of its names applies to
    /// it. The policy checks SQL (in the Parse before it), a local answer
    /// or a new route begins a batch, an unsharded batch's Bind never moves
    /// it (`unsynced_batch_moves`), and the role guard and parameter sync
    /// come before a batch's first message.
    #[inline]
    fn continues_batch(&self, tag: u8) -> bool {
        matches!(tag, b'B' | b'D' | b'E' | b'S' | b'H')
            && self.flow.unsynced()
            && !self.flow.batch_start()
            && self.server.is_some()
            && self.shard_map.is_none()
            && !self.unnamed_portal_suspended_on_shards
            && self.shard_portals.is_empty()
            && self.explain_wants_columns.is_none()
            && self.explain_wants_params.is_none()
    }

    /// Forwards the message of `len` bytes at the front of the buffer to the
    /// held server and takes it from the buffer. It is read in place: the
    /// buffer is set aside while it is forwarded (nothing on that path reads
    /// `cbuf`).
    fn forward_front(&mut self, tag: u8, len: usize) -> Result<(), SessionEnd> {
        let analysis = match tag {
            b'Q' | b'P' => Some(self.message_analysis(tag, 0, len)?),
            _ => None,
        };
        let cbuf = std::mem::take(&mut self.cbuf);
        let msg = cbuf.get(..len).unwrap_or(&[]);
        let forwarded = self.forward_message(tag, msg, analysis);
        let keep = match self.replay.as_mut() {
            Some(replay) => !self.flow.in_tx() && replay.keep(msg),
            None => true,
        };
        self.cbuf = cbuf;
        self.cbuf.advance(len);
        forwarded?;
        if !keep {
            self.stop_replay();
        }
        Ok(())
    }

    /// Checks each client message once, when it has arrived whole, before
    /// any of the paths that take messages from the buffer (one at a time,
    /// or a batch at once for several shards) sees it: a malformed one ends
    /// the session with 08P01 instead of reaching a server, which would
    /// answer with an ERROR and keep the connection. Messages already
    /// checked are not looked at again (`checked_to`).
    fn check_arrived_messages(&mut self) -> Result<(), SessionEnd> {
        let front = self.front_offset();
        let mut at = (self.checked_to.max(front) - front) as usize;
        if let Some(codec) = self.text_codec() {
            cold_path();
            return self.check_and_transcode_arrived(codec, front, at);
        }
        while let Some(frame) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)? {
            let msg = &self.cbuf[at..at + frame.total_len];
            let ascii = frontend::check_message_text(frame.tag, &msg[5..])?;
            at += frame.total_len;
            if !ascii {
                self.non_ascii_to = front + at as u64;
            }
        }
        self.checked_to = front + at as u64;
        Ok(())
    }

    /// [`Self::check_arrived_messages`] for a session in a client encoding
    /// the router transcodes: each message is put into UTF-8 once checked.
    #[inline(never)]
    fn check_and_transcode_arrived(
        &mut self,
        codec: &'static crate::encoding::ClientCodec,
        front: u64,
        mut at: usize,
    ) -> Result<(), SessionEnd> {
        while let Some(frame) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)? {
            let msg = &self.cbuf[at..at + frame.total_len];
            frontend::check_message(frame.tag, &msg[5..])?;
            at += self.transcode_arrived(codec, at, frame.tag, frame.total_len);
            // Transcoded text: looked at closely, whatever its bytes.
            self.non_ascii_to = front + at as u64;
        }
        self.checked_to = front + at as u64;
        Ok(())
    }

    /// A message that needs no server while none is held: Sync gets its
    /// ReadyForQuery from the router; Flush and stray COPY data are dropped.
    fn answer_without_server(&mut self, tag: u8) {
        if tag == b'S' || (self.flow.skip_to_sync() && tag == b'Q') {
            self.flow.sync_answered_here();
            let status = match &self.server {
                Some(held) if self.is_quiet() => held.conn.tx_status,
                Some(_) if self.flow.in_tx() => b'T',
                None if self.deferred_begin.is_some() => b'T',
                _ => b'I',
            };
            backend::ready_for_query(&mut self.to_client, status);
        }
    }

    /// Checks out a server for `route`. A replica that cannot be reached is
    /// banned and the next candidate is tried: nothing was sent yet, so the
    /// client does not notice. A replica that refuses this user's login is
    /// not banned (other users' logins there succeed): the next candidate
    /// is tried all the same.
    pub(super) async fn attach(
        &mut self,
        route: Route,
        exclude: &[usize],
    ) -> Result<(), PoolError> {
        self.attach_watched(route, exclude, false).await
    }

    /// `attach`; with `watched`, a wait for a busy pool also ends at a
    /// cancel (`PoolError::Cancelled`) or an admin PAUSE
    /// (`PoolError::Paused`), see `attach_new_unit`.
    async fn attach_watched(
        &mut self,
        route: Route,
        exclude: &[usize],
        watched: bool,
    ) -> Result<(), PoolError> {
        if self.attach_kept(route.shard) {
            return Ok(());
        }
        // Fields borrowed apart, no `Arc` cloned: the pools, the state and
        // the cancel slot are shared by every client of both workers, and
        // each clone and drop would move a cache line between cores.
        let pools = &*self.pools;
        let shard = pools
            .shards
            .get(route.shard)
            .ok_or(PoolError::NoSuchShard {
                shard: route.shard,
                shards: pools.shards.len(),
            })?;
        let mut tried = exclude.to_vec();
        self.registered.info.set_state(ClientState::Waiting);
        let g = &self.rt.config.general;
        let limits = if route.role == Role::Replica {
            let ryw = g.read_your_writes.then_some(&mut self.ryw);
            super::read_your_writes::read_limits(g.max_replica_lag_ms, ryw, route.shard, shard)
        } else {
            Default::default()
        };
        // A replica's refusal of this user's login, reported if no other
        // server takes the statement either.
        let mut refused = None;
        let (conn, slot) = loop {
            let Some(slot) = shard.pick(route.role, pools.balancing, &tried, limits) else {
                self.registered.info.set_state(ClientState::Idle);
                return Err(refused.unwrap_or(PoolError::NoServer));
            };
            let checkout = if watched {
                let shutdown = (!self.shutdown_seen).then_some(&mut self.shutdown);
                watched_checkout(
                    &slot.pool,
                    &self.state,
                    &self.database,
                    &self.cancel.slot,
                    shutdown,
                )
                .await
            } else {
                slot.pool.checkout().await
            };
            match checkout {
                Ok(conn) => break (conn, slot),
                // The server answered and refused this user's login (its
                // pg_hba.conf, a role not yet replayed there): only this
                // pool backs off (`Pool::note_login_outcome`); the server
                // stays in for everyone else.
                Err(PoolError::Connect(e)) if !slot.health.is_primary() && e.is_login_refusal() => {
                    tried.push(Arc::as_ptr(&slot.pool) as usize);
                    refused = Some(PoolError::Connect(e));
                }
                Err(PoolError::Connect(e)) if !slot.health.is_primary() => {
                    slot.health.ban(&format!("connect failed: {e}"));
                    tried.push(Arc::as_ptr(&slot.pool) as usize);
                }
                Err(e) => {
                    self.registered.info.set_state(ClientState::Idle);
                    return Err(e);
                }
            }
        };
        let now = crate::clock::Tick::now();
        self.registered.info.set_state(ClientState::Active);
        self.registered.info.set_server(
            &conn.addr,
            conn.backend_pid,
            conn.stream.is_tls(),
            route.shard,
        );
        self.state
            .metrics
            .record_routed(if slot.health.is_primary() {
                Role::Primary
            } else {
                Role::Replica
            });
        self.cancel
            .slot
            .set_server(&conn.addr, conn.backend_pid, conn.backend_secret);
        let mut held = Held::new(
            conn,
            slot,
            route.shard,
            route.role == Role::Primary,
            now,
            std::mem::take(&mut self.spare_expect),
        );
        // The request about to be sent starts now (saves a clock read).
        self.request_started.get_or_insert(now);
        // Nothing another client queued travels with the connection, and
        // nothing is queued for a server before one is held.
        held.conn.write_buf.clear();
        held.conn.text_codec = self.text_codec();
        if self.drop_unsent() {
            tracing::warn!("dropped messages queued with no server held");
        }
        // Sequence state another client's writes may have left (`lastval`,
        // `currval` after a serial default) is not this client's to read:
        // it is discarded before this client's first statement (see
        // `discard_sequences`), pipelined with it where it can be.
        let me = self.registered.info.id;
        if held.conn.last_client != me {
            held.conn.discard_due |= held.conn.wrote;
            held.conn.wrote = false;
            held.conn.last_client = me;
        }
        // The connection's hygiene, each query on its own (a simple query of
        // several statements is one transaction: a DEALLOCATE that failed
        // would take the RESETs before it back).
        if held.conn.needs_discard {
            // A function the router does not know ran here (see
            // `note_untracked_changes`). DISCARD ALL resets the session
            // authorization, and the role with it; RESET ROLE makes sure.
            held.conn.needs_discard = false;
            held.conn.statements.clear();
            held.conn.forget_session_state();
            held.conn.discard_due = false;
            held.queue_own_query("DISCARD ALL");
            held.queue_own_query("RESET ROLE");
        }
        if held.conn.needs_reset {
            held.conn.forget_session_state();
            held.conn.discard_due = false;
            // RESET ALL leaves the role and the session authorization alone.
            held.queue_own_query(
                "RESET ALL;RESET SESSION AUTHORIZATION;RESET ROLE;DISCARD SEQUENCES",
            );
        }
        // Another client's SQL-level prepared statements are not visible to
        // this one, as on a connection of its own.
        if !held.conn.statements.sql_prepared.is_empty() {
            let foreign: Vec<String> = held
                .conn
                .statements
                .sql_prepared
                .iter()
                .filter(|(name, text)| {
                    self.sql_prepared.get(*name).map(|p| &*p.prepare_sql) != Some(&***text)
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in foreign {
                held.queue_own_query(&format!("DEALLOCATE {}", super::params::quote_ident(&name)));
                held.conn.statements.sql_prepared.remove(&name);
            }
        }
        self.server = Some(held);
        // Between transactions: the settings replay commits on its own.
        if self.replay_settings() {
            self.commit_replay();
        }
        self.unnamed_here = false;
        self.flow.attached();
        Ok(())
    }

    /// Brings the held server's parameters in line with the client's (after
    /// a RESET took the server to its own defaults), ahead of the client's
    /// next statement (see `replay.rs`).
    fn resync_held_params(&mut self) {
        if let Some(held) = self.server.as_mut() {
            held.resync_params = false;
        }
        if self.replay_settings() {
            if !self.flow.in_tx() {
                self.commit_replay();
            }
            self.unnamed_here = false;
        }
    }

    /// The client's statement cannot run: tell it why, in the protocol's
    /// terms (a simple query ends with ReadyForQuery; an extended batch is
    /// skipped up to its Sync, as PostgreSQL does after an error).
    fn refuse_after_checkout_error(&mut self, tag: u8, e: PoolError) {
        let (code, message) = super::error::checkout_refusal(&e);
        tracing::warn!(error = %message, "could not get a server connection");
        self.state.metrics.record_error(code);
        backend::error_response(&mut self.to_client, Severity::Error, code, &message);
        if tag == b'Q' || tag == b'F' {
            backend::ready_for_query(&mut self.to_client, b'I');
        } else {
            self.flow.batch_failed();
        }
    }

    /// Sends what was queued for the server.
    async fn flush_server(&mut self) -> Result<(), SessionEnd> {
        let Some(held) = self.server.as_mut() else {
            self.drop_unsent();
            return Ok(());
        };
        if held.conn.write_buf.is_empty() {
            return Ok(());
        }
        // The session's encoding may have changed while it held the server.
        held.conn.text_codec = self.params.codec();
        if self.request_started.is_none() {
            self.request_started = Some(crate::clock::Tick::now());
        }
        if held.flush().await.is_err() {
            self.recover_server_loss().await?;
        }
        Ok(())
    }

    /// Refuses the message at the front of the buffer before it is routed.
    /// Right after a deferred BEGIN (no server held yet), the BEGIN is sent
    /// first and the message is left to be handled again: its refusal is
    /// then raised through the server, so the transaction fails.
    async fn refuse_in_turn(
        &mut self,
        tag: u8,
        len: usize,
        refusal: Refusal,
    ) -> Result<(), SessionEnd> {
        if !self.begin_before_refusal(tag).await? {
            self.refuse(tag, len, refusal);
        }
        Ok(())
    }

    /// A Parse of a named statement the client already has (no Close in
    /// between): PostgreSQL answers 42P05 and keeps the old statement, so
    /// the router refuses it the same way (error, then skip to Sync). The
    /// unnamed statement may be parsed again freely.
    fn duplicate_statement(&self, len: usize) -> Result<Option<Refusal>, SessionEnd> {
        let body = self.cbuf.get(5..len).unwrap_or(&[]);
        if body.first() == Some(&0) {
            return Ok(None);
        }
        let name = parse_parse(body)?.name;
        if !self.statements.contains_key(name) && !self.local_explains.contains_key(name) {
            return Ok(None);
        }
        Ok(Some(Refusal {
            sqlstate: "42P05",
            message: format!("prepared statement \"{name}\" already exists"),
        }))
    }

    /// Queues one client message for the held server, rewritten as needed.
    /// `analysis`: a Query's or Parse's, when its reader already has it
    /// (else it is looked up here).
    pub(super) fn forward_message(
        &mut self,
        tag: u8,
        msg: &[u8],
        analysis: Option<Arc<Analysis>>,
    ) -> Result<(), SessionEnd> {
        let body = msg.get(5..).unwrap_or(&[]);
        if self.server.as_ref().is_some_and(|h| h.conn.discard_due)
            && !matches!(tag, b'S' | b'H' | b'd' | b'c' | b'f')
        {
            cold_path();
            self.discard_sequences(tag, body)?;
        }
        self.inject_role_guard_if_due(tag);
        let skipping = self.expect().server_skipping();
        // Nothing of the client's is in the server's current transaction: a
        // replay the message needs can commit on its own (see `replay.rs`).
        let boundary = self.flow.at_unit_boundary();
        match tag {
            b'Q' => self.forward_query(msg, boundary, analysis)?,
            b'P' => {
                self.flow.extended_sent();
                let analysis = match analysis {
                    Some(analysis) => analysis,
                    None => self.analyze_parse(body)?,
                };
                self.predict_tx(&analysis);
                self.note_untracked_changes(&analysis);
                // The common case (unnamed, no SQL PREPARE/EXECUTE) does not
                // read the message further.
                let unnamed = body.first() == Some(&0);
                let p = if unnamed && !touches_sql_prepared(&analysis) {
                    None
                } else {
                    Some(parse_parse(body)?)
                };
                if let (Some(p), false) = (&p, skipping) {
                    self.inject_fixups(&analysis, p.sql, boundary, false);
                }
                match p.filter(|p| !p.name.is_empty()) {
                    // The server skips it after an error: PostgreSQL does
                    // not create the statement.
                    Some(_) if skipping => {}
                    Some(p) => {
                        let stmt = self
                            .state
                            .statements
                            .intern(p.sql, &p.param_types, analysis);
                        self.local_explains.remove(p.name);
                        self.statements
                            .insert(p.name.to_string(), SessionStatement::new(stmt.clone()));
                        // Should this Parse fail (or be skipped after an
                        // error), the name is forgotten again (`inbound.rs`).
                        let index = self.expect().next_index();
                        self.prepare_on_server(&stmt, true);
                        self.expect().client_parse(index, p.name);
                    }
                    None => {
                        self.unnamed = Some(analysis);
                        self.queue_for_server(msg, (!skipping).then_some(Reply::Parse(None)));
                        self.unnamed_parse.clear();
                        self.unnamed_parse.extend_from_slice(msg);
                        self.unnamed_here = true;
                    }
                }
            }
            b'B' => {
                self.flow.extended_sent();
                self.unnamed_portal_suspended_on_shards = false;
                let b = parse_bind_names(body)?;
                self.note_portal(b.portal, true);
                let stmt = if b.statement.is_empty() {
                    None
                } else {
                    self.statements.get(b.statement).cloned()
                };
                self.last_bound = match &stmt {
                    Some(s) => Some(s.analysis.clone()),
                    None if b.statement.is_empty() => self.unnamed.clone(),
                    None => None,
                };
                match stmt {
                    Some(stmt) => {
                        self.note_untracked_changes(&stmt.analysis);
                        if !skipping {
                            self.inject_fixups(&stmt.analysis, &stmt.sql, boundary, true);
                        }
                        if !skipping {
                            self.prepare_on_server(&stmt, false);
                        }
                        frontend::write_bind(self.to_server(), b.portal, &stmt.server_name, b.rest);
                    }
                    None => {
                        if b.statement.is_empty() && !skipping {
                            self.unnamed_runs(boundary)?;
                            self.parse_unnamed_here(boundary);
                        }
                        self.to_server().extend_from_slice(msg)
                    }
                }
                if !skipping {
                    self.expect().forward(Reply::Bind);
                }
            }
            b'D' | b'C' => {
                self.flow.extended_sent();
                let (kind, name) = parse_target(body)?;
                let stmt = if kind == b'S' && !name.is_empty() {
                    self.statements.get(name).cloned()
                } else {
                    None
                };
                match (tag, stmt) {
                    (b'C', Some(_)) => {
                        // Shared statements stay on the server for other clients.
                        self.statements.remove(name);
                        if let Some(made) =
                            self.expect().synthesize(Bytes::from_static(CLOSE_COMPLETE))
                        {
                            self.to_client.extend_from_slice(&made);
                        }
                        return Ok(());
                    }
                    (b'D', Some(stmt)) => {
                        if !skipping {
                            self.prepare_on_server(&stmt, false);
                        }
                        frontend::write_target(self.to_server(), b'D', b'S', &stmt.server_name);
                    }
                    _ => {
                        if tag == b'D' && kind == b'S' && name.is_empty() && !skipping {
                            self.parse_unnamed_here(boundary);
                        }
                        self.to_server().extend_from_slice(msg)
                    }
                }
                if !skipping {
                    self.expect().forward(match (tag, kind) {
                        (b'C', _) => Reply::Close,
                        (_, b'S') => Reply::DescribeStatement,
                        _ => Reply::DescribePortal,
                    });
                }
            }
            b'E' => {
                self.flow.execute_sent();
                if let Some(a) = self.last_bound.take() {
                    self.track_session_changes(&a);
                    self.note_session_state(&a);
                }
                self.queue_for_server(msg, (!skipping).then_some(Reply::Execute));
            }
            b'S' => {
                self.flow.sync_sent();
                self.queue_for_server(msg, Some(Reply::Sync));
            }
            b'F' => self.queue_for_server(msg, Some(Reply::FunctionCall)),
            b'c' | b'f' => {
                self.expect().copy_data_ended();
                self.queue_for_server(msg, None);
            }
            b'H' | b'd' => self.queue_for_server(msg, None),
            other => {
                return Err(SessionEnd::fatal(
                    "08P01",
                    format!("invalid frontend message type {}", other),
                ));
            }
        }
        Ok(())
    }

    /// A simple query: track what it changes in the session, make sure the
    /// statements it EXECUTEs exist on this server, then send it.
    fn forward_query(
        &mut self,
        msg: &[u8],
        boundary: bool,
        analysis: Option<Arc<Analysis>>,
    ) -> Result<(), SessionEnd> {
        let body = msg.get(5..).unwrap_or(&[]);
        let analysis = match analysis {
            Some(analysis) => analysis,
            None => self.analyze_query(body)?,
        };
        self.predict_tx(&analysis);
        self.note_untracked_changes(&analysis);
        self.track_session_changes(&analysis);
        self.note_session_state(&analysis);
        if touches_sql_prepared(&analysis) {
            self.inject_fixups(&analysis, parse_query(body)?, boundary, true);
        }
        self.to_server().extend_from_slice(msg);
        self.expect().forward(Reply::Query);
        self.flow.query_sent();
        // A simple query destroys the server's unnamed statement.
        self.unnamed_here = false;
        Ok(())
    }

    /// The client's unnamed statement, parsed in an earlier unit of work, is
    /// used again (psql's `\gdesc`: Parse + Sync, then Describe + Sync): the
    /// server held now may be another one, or a simple query may have
    /// destroyed it since, so the router parses it again (answer swallowed).
    fn parse_unnamed_here(&mut self, boundary: bool) {
        if self.unnamed_here || self.unnamed_parse.is_empty() {
            return;
        }
        let parse = std::mem::take(&mut self.unnamed_parse);
        // `EXECUTE name` as the unnamed statement (psql's `EXECUTE p \gdesc`)
        // needs the SQL prepared statement on this server first.
        if let (Some(analysis), Ok(p)) = (
            self.unnamed.clone(),
            parse_parse(parse.get(5..).unwrap_or(&[])),
        ) {
            if touches_sql_prepared(&analysis) {
                self.inject_fixups(&analysis, p.sql, boundary, false);
            }
        }
        self.to_server().extend_from_slice(&parse);
        self.unnamed_parse = parse;
        self.expect().swallow(Reply::Parse(None));
        self.unnamed_here = true;
    }

    /// The client's unnamed statement is bound, so it runs: a PREPARE,
    /// DEALLOCATE or DISCARD ALL in it changes the client's SQL prepared
    /// statements now (see `sql_prepared_fixups`; its Parse only prepared
    /// it). The fixups replace the server's unnamed statement, which
    /// `parse_unnamed_here` then parses again.
    #[inline]
    fn unnamed_runs(&mut self, boundary: bool) -> Result<(), SessionEnd> {
        // Checked before the clone: this runs for every unnamed Bind.
        match &self.unnamed {
            Some(a) if touches_sql_prepared(a) => self.unnamed_runs_fixups(a.clone(), boundary),
            _ => Ok(()),
        }
    }

    /// [`Self::unnamed_runs`] of a statement that uses SQL prepared ones.
    fn unnamed_runs_fixups(
        &mut self,
        analysis: Arc<Analysis>,
        boundary: bool,
    ) -> Result<(), SessionEnd> {
        let parse = std::mem::take(&mut self.unnamed_parse);
        let sql = parse_parse(parse.get(5..).unwrap_or(&[])).map(|p| p.sql.to_string());
        self.unnamed_parse = parse;
        self.inject_fixups(&analysis, &sql?, boundary, true);
        Ok(())
    }

    /// Makes sure the held server has `stmt` prepared. For the client's own
    /// Parse, the server's ParseComplete answers it (or the router makes one
    /// up when the server already has it); for a Bind or Describe, the
    /// router's Parse is swallowed.
    fn prepare_on_server(&mut self, stmt: &SharedStatement, client_parse: bool) {
        let held = self
            .server
            .as_mut()
            .expect("a server is held when forwarding");
        if held.conn.statements.touch(stmt.id) {
            if client_parse {
                if let Some(made) = self.expect().synthesize(Bytes::from_static(PARSE_COMPLETE)) {
                    self.to_client.extend_from_slice(&made);
                }
            }
            return;
        }
        let evicted = held.conn.statements.insert(stmt.id);
        frontend::write_parse(
            self.to_server(),
            &stmt.server_name,
            &stmt.sql,
            &stmt.param_types,
        );
        if client_parse {
            self.expect().forward(Reply::Parse(Some(stmt.id)));
        } else {
            self.expect().swallow(Reply::Parse(Some(stmt.id)));
        }
        if let Some(old) = evicted {
            frontend::write_target(self.to_server(), b'C', b'S', &format!("pgrouter_{old}"));
            self.expect().swallow(Reply::Close);
        }
    }
}

/// While a statement is held by PAUSE, the client is read (to notice it
/// leave) only while its buffer is below this: a client that keeps
/// sending is not buffered without bound, as when it waits for an answer.
const HELD_READ_LIMIT: usize = 1 << 20;

/// A checkout that gives up when the client's statement is cancelled or
/// its database paused (dropping the checkout leaves the pool's queue,
/// handing on a connection granted meanwhile). A free function: a
/// `&Session` held across the wait would make the session's future need
/// `Sync`.
async fn watched_checkout(
    pool: &Arc<crate::pool::Pool>,
    state: &crate::state::State,
    database: &str,
    cancel: &super::cancel::CancelSlot,
    mut shutdown: Option<&mut super::shutdown::ShutdownListener>,
) -> Result<crate::pool::PooledConn, PoolError> {
    if state.session_shutdown.is_fired() {
        return Err(PoolError::ShuttingDown);
    }
    let checkout = pool.checkout();
    tokio::pin!(checkout);
    // The usual case, a connection free now: taken with one poll, before
    // the PAUSE and cancel notifications are armed (making and dropping
    // them and the `select!` cost ~100 instructions per transaction).
    // Polled without a waker (a no-op one): should it wait, the loop below
    // polls it again with the task's, which every future on the way to a
    // connection (the pool's queue, a connect, a login) then keeps, as the
    // `Future` contract asks.
    if state.is_paused(database) {
        return Err(PoolError::Paused);
    }
    if let std::task::Poll::Ready(granted) = poll_once_without_waker(checkout.as_mut()) {
        return granted;
    }
    loop {
        // Both armed before the check: a PAUSE or cancel in between is
        // not missed.
        let pausing = state.pausing.notified();
        let cancelled = cancel.cancelled();
        if state.is_paused(database) {
            return Err(PoolError::Paused);
        }
        // `biased`, the checkout first: when a connection is free (the
        // usual case) the other futures are never polled, so they never
        // register with their notifiers (the PAUSE one is shared by all
        // sessions; registering takes its lock).
        tokio::select! {
            biased;
            granted = &mut checkout => return granted,
            _ = cancelled => return Err(PoolError::Cancelled),
            // Another database's PAUSE wakes everyone: look again.
            _ = pausing => {}
            _ = shutdown_fired(shutdown.as_deref_mut()) => return Err(PoolError::ShuttingDown),
        }
    }
}

/// Polls `future` once with a no-op waker (see `watched_checkout`). A
/// function of its own: a `Context` held across an `.await` would make the
/// session's future not `Send`.
fn poll_once_without_waker<F: std::future::Future>(
    future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// Completes at shutdown; never without a listener (one that has already
/// completed must not be polled again).
async fn shutdown_fired(listener: Option<&mut super::shutdown::ShutdownListener>) {
    match listener {
        Some(l) => l.await,
        None => std::future::pending().await,
    }
}

/// What a sharded session asks a shard before the router may answer a
/// batch itself (see [`Session::ask_shard_first`]).
enum ShardQuestion {
    /// The parameter types of an `EXPLAIN (ROUTE)` prepared with `$n`.
    ExplainParams,
    /// Whether PostgreSQL accepts each Parse of a `PQprepare` batch.
    Prepares(super::local_answers::LocalPrepares),
}

impl Session {
    /// Asks a shard `question` (`shards/parse_check.rs`), then answers the
    /// batch when the answer allows; true when it was answered.
    async fn ask_shard_first(
        &mut self,
        question: ShardQuestion,
        len: usize,
    ) -> Result<bool, SessionEnd> {
        let batch = match question {
            ShardQuestion::ExplainParams => {
                self.learn_explain_params().await;
                if self.try_answer_locally(len)? {
                    return Ok(true);
                }
                match self.server.is_none().then(|| self.local_prepares()) {
                    Some(batch) => batch?,
                    None => None,
                }
            }
            ShardQuestion::Prepares(batch) => Some(batch),
        };
        match batch {
            Some(batch) if self.shards_accept(&batch).await => {
                self.answer_prepares(batch);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
