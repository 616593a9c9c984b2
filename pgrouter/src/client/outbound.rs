//! Client to server: route each unit of work, check out a server, and
//! forward the client's messages — rewriting prepared-statement names and
//! preparing statements the server lacks — while recording what answers the
//! server owes in [`Expectations`].

use std::sync::Arc;

use bytes::{Buf, Bytes};
use pgrouter_config::PoolMode;
use pgrouter_parser::{Analysis, StatementKind};

use super::error::SessionEnd;
use super::expect::{Reply, CLOSE_COMPLETE, PARSE_COMPLETE};
use super::prepared::SharedStatement;
use super::registry::ClientState;
use super::session::{GuardState, Held, Session};
use super::sql_prepared::touches_sql_prepared;
use crate::pool::PoolError;
use crate::protocol::backend::{self, Severity};
use crate::protocol::frontend::{self, parse_bind_names, parse_parse, parse_query, parse_target};
use crate::protocol::next_frame;
use crate::router::{self, Refusal, Role, Route, SessionRouting};
use crate::server::ServerError;

impl Session {
    /// After a reload, a session moves to the new runtime at its next
    /// transaction boundary: same user and database, new pools. If its user
    /// or database was removed, the session ends here with a clear FATAL.
    fn refresh_runtime(&mut self) -> Result<(), SessionEnd> {
        if self.state.generation() == self.rt.generation {
            return Ok(());
        }
        let rt = self.state.rt();
        match rt.cluster.pools_for(&self.pools_user, &self.database) {
            Some(pools) => {
                self.pools = pools.clone();
                self.rt = rt;
                // Analyses depend on the configuration (`write_functions`).
                self.memo.borrow_mut().clear();
                Ok(())
            }
            None => Err(SessionEnd::fatal(
                "08006",
                format!(
                    "pgrouter: user \"{}\" or database \"{}\" was removed from the configuration",
                    self.pools_user, self.database
                ),
            )),
        }
    }

    /// Admin PAUSE: new transactions wait until RESUME.
    async fn wait_while_paused(&mut self) -> Result<(), SessionEnd> {
        while self.state.is_paused(&self.database) {
            let resumed = self.state.resumed.notified();
            if !self.state.is_paused(&self.database) {
                break;
            }
            self.registered.info.set_state(ClientState::Waiting);
            resumed.await;
        }
        Ok(())
    }
}

/// How much of an unfinished extended batch is buffered before routing it
/// anyway.
const MAX_LOOKAHEAD: usize = 1 << 20;

impl Session {
    /// Forwards every complete client message in the buffer, checking out a
    /// server first when one is needed. Stops early (`blocked`) when the next
    /// unit of work needs a different server than the one still held.
    pub(super) async fn handle_client_messages(&mut self) -> Result<(), SessionEnd> {
        while let Some(frame) = next_frame(&self.cbuf, self.max_message)? {
            let tag = frame.tag;
            self.message_seq.set(self.message_seq.get().wrapping_add(1));
            if tag == b'X' {
                self.flush_server().await?;
                return Err(SessionEnd::ClientGone);
            }
            if self.skip_to_sync
                || (self.server.is_none() && matches!(tag, b'S' | b'H' | b'd' | b'c' | b'f'))
            {
                self.cbuf.advance(frame.total_len);
                self.answer_without_server(tag);
                continue;
            }
            match self.guard {
                GuardState::Waiting => {
                    self.blocked = true;
                    break;
                }
                GuardState::Failed => {
                    // The role could not be set: the held request never runs.
                    self.guard = GuardState::Idle;
                    self.cbuf.advance(frame.total_len);
                    if tag == b'Q' {
                        let status = self.server.as_ref().map_or(b'I', |h| h.conn.tx_status);
                        backend::ready_for_query(&mut self.to_client, status);
                    } else {
                        self.skip_to_sync = true;
                    }
                    continue;
                }
                GuardState::Passed | GuardState::Idle => {}
            }
            if let Err(refusal) = self.check_policy(tag, frame.total_len)? {
                self.refuse(tag, frame.total_len, refusal);
                continue;
            }
            if self.batch_start && !self.in_tx {
                self.check_token_expiry()?;
            }
            if self.server.is_none() || (self.is_quiet() && !self.in_tx) {
                if self.try_answer_locally(frame.total_len)? {
                    continue;
                }
            }
            if self.server.is_none() {
                if self.try_prepare_locally()? {
                    continue;
                }
                self.refresh_runtime()?;
                self.wait_while_paused().await?;
                let Some(route) = self.route_arrived_batch(tag) else {
                    break; // route the batch once its Sync (or Flush) is here
                };
                if let Err(e) = self.attach(route, &[]).await {
                    self.cbuf.advance(frame.total_len);
                    self.refuse_after_checkout_error(tag, e);
                    continue;
                }
                let replayable = route.role == Role::Replica
                    && !self.in_tx
                    && self.mode == PoolMode::Transaction;
                if replayable {
                    self.start_replay();
                } else {
                    self.stop_replay();
                }
            } else if self.needs_other_server(tag) {
                self.blocked = true;
                break;
            }
            if self.guard == GuardState::Idle
                && self.needs_guard_round_trip(tag, frame.total_len)?
            {
                self.inject_role_guard_synced();
                break;
            }
            if self.guard == GuardState::Passed {
                self.guard = GuardState::Idle;
            }
            // The message is read in place: the buffer is set aside while
            // it is forwarded (nothing on that path reads `cbuf`).
            let cbuf = std::mem::take(&mut self.cbuf);
            let msg = cbuf.get(..frame.total_len).unwrap_or(&[]);
            let forwarded = self.forward_message(tag, msg);
            let keep = match self.replay.as_mut() {
                Some(replay) => !self.in_tx && replay.keep(msg),
                None => true,
            };
            self.cbuf = cbuf;
            self.cbuf.advance(frame.total_len);
            forwarded?;
            if !keep {
                self.stop_replay();
            }
        }
        self.flush_server().await?;
        self.flush_client().await
    }

    /// The session's policy (JWT role, read-only) applied to a Query or Parse.
    /// Inline: for most sessions there is no policy, and this runs for every
    /// client message.
    #[inline]
    fn check_policy(&self, tag: u8, len: usize) -> Result<Result<(), Refusal>, SessionEnd> {
        if self.policy.jwt.is_none() && !self.policy.read_only {
            return Ok(Ok(()));
        }
        self.check_policy_now(tag, len)
    }

    fn check_policy_now(&self, tag: u8, len: usize) -> Result<Result<(), Refusal>, SessionEnd> {
        let body = self.cbuf.get(5..len).unwrap_or(&[]);
        let analysis = match tag {
            b'Q' => self.query_analysis(self.analyze_query(body)?),
            b'P' => self.analyze_parse(body)?,
            _ => return Ok(Ok(())),
        };
        Ok(self.policy.check(&analysis))
    }

    /// A refused statement never reaches a server as written. With no
    /// server held the router answers; with one held (a transaction or a
    /// batch in progress) the refusal is raised through the server, so the
    /// transaction and the batch fail exactly as if PostgreSQL had refused it.
    fn refuse(&mut self, tag: u8, len: usize, refusal: Refusal) {
        tracing::warn!(sqlstate = refusal.sqlstate, reason = %refusal.message, "statement refused");
        self.cbuf.advance(len);
        if self.server.is_none() {
            self.state.metrics.record_error(refusal.sqlstate);
            backend::error_response(
                &mut self.to_client,
                Severity::Error,
                refusal.sqlstate,
                &refusal.message,
            );
            if tag == b'Q' {
                backend::ready_for_query(&mut self.to_client, b'I');
            } else {
                self.skip_to_sync = true;
            }
            return;
        }
        let raise = format!(
            "DO $pgrouter$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}; END$pgrouter$",
            refusal.sqlstate,
            super::params::quote_literal(&refusal.message)
        );
        self.inject_role_guard_if_due(tag);
        if tag == b'Q' {
            frontend::query(&mut self.to_server, &raise);
            self.expect.forward(Reply::Query);
            self.batch_start = true;
        } else {
            self.unsynced = true;
            frontend::write_parse(&mut self.to_server, "", &raise, &[]);
            frontend::bind_execute_unnamed(&mut self.to_server);
            self.expect.swallow(Reply::Parse(None));
            self.expect.swallow(Reply::Bind);
            self.expect.guard(Reply::Execute);
        }
    }

    /// `disconnect_on_expiry`: a JWT session whose token has expired ends at
    /// its next transaction boundary.
    fn check_token_expiry(&self) -> Result<(), SessionEnd> {
        let Some(jwt) = &self.policy.jwt else {
            return Ok(());
        };
        let Some(cfg) = self.rt.config.jwt.as_ref() else {
            return Ok(());
        };
        let leeway = std::time::Duration::from_secs(cfg.leeway_s);
        if cfg.disconnect_on_expiry
            && jwt
                .expires_at
                .is_some_and(|t| t + leeway <= std::time::SystemTime::now())
        {
            return Err(SessionEnd::fatal(
                "28P01",
                "pgrouter: the session's JWT has expired; log in again with a new token",
            ));
        }
        Ok(())
    }

    /// JWT sessions: every unit of work outside a transaction block starts
    /// with `SET ROLE` of the token's role, pipelined ahead of the client's
    /// messages without a Sync. If it fails, PostgreSQL skips the client's
    /// messages up to the Sync, so nothing ever runs under another role — and
    /// no earlier client's role (or a RESET ROLE inside a function) carries over.
    #[inline]
    fn inject_role_guard_if_due(&mut self, tag: u8) {
        if !self.batch_start || self.in_tx || matches!(tag, b'S' | b'H' | b'd' | b'c' | b'f') {
            return;
        }
        self.batch_start = false;
        if self.policy.jwt.is_some() {
            self.inject_role_guard();
        }
    }

    fn inject_role_guard(&mut self) {
        let Some(jwt) = &self.policy.jwt else { return };
        let sql = format!("SET ROLE {}", super::params::quote_ident(&jwt.role));
        frontend::write_parse(&mut self.to_server, "", &sql, &[]);
        frontend::bind_execute_unnamed(&mut self.to_server);
        self.expect.swallow(Reply::Parse(None));
        self.expect.swallow(Reply::Bind);
        self.expect.guard(Reply::Execute);
    }

    /// A message that needs no server while none is held: Sync gets its
    /// ReadyForQuery from the router; Flush and stray COPY data are dropped.
    fn answer_without_server(&mut self, tag: u8) {
        if tag == b'S' || (self.skip_to_sync && tag == b'Q') {
            self.skip_to_sync = false;
            let status = match &self.server {
                Some(held) if self.is_quiet() => held.conn.tx_status,
                Some(_) if self.in_tx => b'T',
                _ => b'I',
            };
            backend::ready_for_query(&mut self.to_client, status);
        }
    }

    /// An extended batch is routed as a whole (one implicit transaction up
    /// to its Sync): wait until its Sync or a Flush has arrived, unless it
    /// is already large.
    fn batch_has_arrived(&self, tag: u8) -> bool {
        if !matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C') || self.cbuf.len() > MAX_LOOKAHEAD {
            return true;
        }
        let mut at = 0;
        while let Ok(Some(frame)) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)
        {
            if matches!(frame.tag, b'S' | b'H') {
                return true;
            }
            at += frame.total_len;
        }
        false
    }

    /// JWT sessions: statements PostgreSQL refuses to run in a pipeline or
    /// transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...) cannot
    /// share an implicit transaction with the pipelined SET ROLE, so for them
    /// the role is set in its own transaction first, and the statement is
    /// sent only once that succeeded.
    #[inline]
    fn needs_guard_round_trip(&self, tag: u8, len: usize) -> Result<bool, SessionEnd> {
        if self.policy.jwt.is_none()
            || !self.batch_start
            || self.in_tx
            || !matches!(tag, b'Q' | b'P')
        {
            return Ok(false);
        }
        self.statement_needs_guard_round_trip(tag, len)
    }

    fn statement_needs_guard_round_trip(&self, tag: u8, len: usize) -> Result<bool, SessionEnd> {
        let body = self.cbuf.get(5..len).unwrap_or(&[]);
        let sql = if tag == b'Q' {
            parse_query(body)?
        } else {
            parse_parse(body)?.sql
        };
        let analysis = self.analyze(sql);
        Ok(router::runs_outside_transactions(&analysis, sql))
    }

    /// Sets the role in a transaction of its own and holds the client's
    /// request until the answer is in (see `needs_guard_round_trip`).
    fn inject_role_guard_synced(&mut self) {
        let Some(jwt) = &self.policy.jwt else { return };
        let sql = format!("SET ROLE {}", super::params::quote_ident(&jwt.role));
        frontend::write_parse(&mut self.to_server, "", &sql, &[]);
        frontend::bind_execute_unnamed(&mut self.to_server);
        frontend::sync(&mut self.to_server);
        self.expect.swallow(Reply::Parse(None));
        self.expect.swallow(Reply::Bind);
        self.expect.guard(Reply::Execute);
        self.expect.swallow(Reply::Sync);
        self.batch_start = false;
        self.guard = GuardState::Waiting;
        self.blocked = true;
    }

    /// The session's routing settings, recomputed only when its parameters change.
    fn session_routing(&self) -> SessionRouting {
        let (version, cached) = self.routing_cache.get();
        if version == self.params.version() {
            return cached;
        }
        let routing = SessionRouting::from_params(|k| self.params.get(k).map(str::to_string));
        self.routing_cache.set((self.params.version(), routing));
        routing
    }

    /// Routes the unit of work at the front of the buffer. An extended batch
    /// runs as one implicit transaction up to its Sync, so it goes to the
    /// primary if any statement in it (as far as it has arrived) needs to.
    fn route_next_batch(&self) -> Route {
        self.route_batch().0
    }

    /// The route of the batch at the front of the buffer once it has
    /// arrived (see [`Self::batch_has_arrived`]): one scan of the buffer
    /// usually answers both.
    fn route_arrived_batch(&self, tag: u8) -> Option<Route> {
        let (route, ended) = self.route_batch();
        (ended || self.batch_has_arrived(tag)).then_some(route)
    }

    /// The route, and whether the scan saw the batch's Sync or a Flush.
    fn route_batch(&self) -> (Route, bool) {
        let (mut route, ended) = self.route_by_statements();
        if self.policy.read_only {
            route.role = Role::Replica;
        }
        (route, ended)
    }

    fn route_by_statements(&self) -> (Route, bool) {
        let session = self.session_routing();
        if self.mode == PoolMode::Session {
            let role = match session.role_override {
                Some(pgrouter_parser::RoleHint::Replica) => Role::Replica,
                _ if session.default_read_only => Role::Replica,
                _ => Role::Primary,
            };
            let route = Route {
                shard: session.shard_override.unwrap_or(0) as usize,
                role,
            };
            return (route, false);
        }
        let mut ended = false;
        let mut route: Option<Route> = None;
        let mut unnamed = self.unnamed.clone();
        let mut at = 0;
        while let Ok(Some(frame)) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)
        {
            let body = frame.body(&self.cbuf[at..]);
            at += frame.total_len;
            let analysis = match frame.tag {
                b'Q' => self
                    .analyze_query(body)
                    .ok()
                    .map(|a| self.query_analysis(a)),
                b'P' => self.analyze_parse(body).ok().inspect(|a| {
                    if body.first() == Some(&0) {
                        unnamed = Some(a.clone()); // the unnamed statement
                    }
                }),
                b'B' => parse_bind_names(body)
                    .ok()
                    .and_then(|b| self.statement_analysis(b.statement, &unnamed)),
                b'F' => {
                    let route = Route {
                        shard: 0,
                        role: Role::Primary,
                    };
                    return (route, false);
                }
                b'S' | b'H' => {
                    ended = true;
                    None
                }
                _ => None,
            };
            if let Some(a) = analysis {
                let r = router::route(&a, &session);
                route = Some(match route {
                    None => r,
                    Some(first) if r.role == Role::Primary => Route {
                        role: Role::Primary,
                        ..first
                    },
                    Some(first) => first,
                });
            }
            if matches!(frame.tag, b'Q' | b'S') {
                break;
            }
        }
        let route = route.unwrap_or(Route {
            shard: session.shard_override.unwrap_or(0) as usize,
            role: Role::Primary,
        });
        (route, ended)
    }

    /// The analysis that decides a simple query's route: for a lone
    /// `EXECUTE name`, the prepared statement's.
    fn query_analysis(&self, analysis: Arc<Analysis>) -> Arc<Analysis> {
        if let [s] = analysis.statements.as_slice() {
            if let StatementKind::Execute { name } = &s.kind {
                if let Some(p) = self.sql_prepared.get(name) {
                    return p.analysis.clone();
                }
            }
        }
        analysis
    }

    fn statement_analysis(
        &self,
        name: &str,
        unnamed: &Option<Arc<Analysis>>,
    ) -> Option<Arc<Analysis>> {
        if name.is_empty() {
            unnamed.clone()
        } else {
            self.statements.get(name).map(|s| s.analysis.clone())
        }
    }

    /// A server is held but not inside a transaction (its last answers are
    /// still coming): a new unit of work that needs the primary, or another
    /// shard, must wait for it to be released.
    fn needs_other_server(&self, tag: u8) -> bool {
        let Some(held) = &self.server else {
            return false;
        };
        if self.mode == PoolMode::Session
            || self.in_tx
            || self.unsynced
            || held.conn.tx_status != b'I'
        {
            return false;
        }
        if !matches!(tag, b'Q' | b'P' | b'B' | b'F') {
            return false;
        }
        let route = self.route_next_batch();
        route.shard != held.shard || (route.role == Role::Primary && !held.is_primary)
    }

    /// Checks out a server for `route`. A replica that cannot be reached is
    /// banned and the next candidate is tried: nothing was sent yet, so the
    /// client does not notice.
    pub(super) async fn attach(
        &mut self,
        route: Route,
        exclude: &[usize],
    ) -> Result<(), PoolError> {
        let pools = self.pools.clone();
        let shard = pools
            .shards
            .get(route.shard)
            .ok_or(PoolError::NoSuchShard {
                shard: route.shard,
                shards: pools.shards.len(),
            })?;
        let mut tried = exclude.to_vec();
        self.registered.info.set_state(ClientState::Waiting);
        let (conn, slot) = loop {
            let Some(slot) = shard.pick(route.role, pools.balancing, &tried) else {
                self.registered.info.set_state(ClientState::Idle);
                return Err(PoolError::NoServer);
            };
            match slot.pool.checkout().await {
                Ok(conn) => break (conn, slot),
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
        let now = std::time::Instant::now();
        self.registered.info.set_state(ClientState::Active);
        self.registered.info.set_server(Some((
            conn.addr.clone(),
            conn.backend_pid,
            conn.stream.is_tls(),
        )));
        self.state
            .metrics
            .record_routed(if slot.health.is_primary() {
                Role::Primary
            } else {
                Role::Replica
            });
        self.cancel.slot.set(Some(conn.cancel_target()));
        let mut held = Held {
            conn,
            is_primary: slot.health.is_primary(),
            shard: route.shard,
            health: slot.health.clone(),
            pool_id: Arc::as_ptr(&slot.pool) as usize,
            attached_at: now,
            last_answer: now,
        };
        // The request about to be sent starts now (saves a clock read).
        self.request_started.get_or_insert(now);
        let mut reset = if held.conn.needs_reset {
            held.conn.forget_session_state();
            "RESET ALL;".to_string()
        } else {
            String::new()
        };
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
                reset.push_str(&format!(
                    "DEALLOCATE {};",
                    super::params::quote_ident(&name)
                ));
                held.conn.statements.sql_prepared.remove(&name);
            }
        }
        let sync = self.params.sync_sql(&held.conn);
        if !reset.is_empty() || sync.is_some() {
            let sql = format!("{reset}{}", sync.unwrap_or_default());
            tracing::debug!(%sql, server = held.conn.id, "bringing session parameters in line");
            frontend::query(&mut self.to_server, &sql);
            self.params.mark_synced(&mut held.conn);
            self.expect.swallow(Reply::Query);
        }
        self.server = Some(held);
        self.batch_start = true;
        Ok(())
    }

    /// The client's statement cannot run: tell it why, in the protocol's
    /// terms (a simple query ends with ReadyForQuery; an extended batch is
    /// skipped up to its Sync, as PostgreSQL does after an error).
    fn refuse_after_checkout_error(&mut self, tag: u8, e: PoolError) {
        let (code, message) = match &e {
            PoolError::CheckoutTimeout => ("57014", e.to_string()),
            // The value of the client's hint or setting is out of range.
            PoolError::NoSuchShard { .. } => ("22023", e.to_string()),
            PoolError::NoServer => ("08006", e.to_string()),
            PoolError::Connect(ServerError::Postgres(fields)) => (
                known_code(&fields.code),
                format!(
                    "pgrouter: server refused the connection: {}",
                    fields.message
                ),
            ),
            PoolError::Connect(other) => (
                "08006",
                format!("pgrouter: could not connect to the server: {other}"),
            ),
        };
        tracing::warn!(error = %message, "could not get a server connection");
        self.state.metrics.record_error(code);
        backend::error_response(&mut self.to_client, Severity::Error, code, &message);
        if tag == b'Q' || tag == b'F' {
            backend::ready_for_query(&mut self.to_client, b'I');
        } else {
            self.skip_to_sync = true;
        }
    }

    /// Sends what was queued for the server.
    async fn flush_server(&mut self) -> Result<(), SessionEnd> {
        if self.to_server.is_empty() {
            return Ok(());
        }
        let Some(held) = self.server.as_mut() else {
            self.to_server.clear();
            return Ok(());
        };
        use tokio::io::AsyncWriteExt;
        held.conn
            .pool()
            .metrics
            .add_bytes_received(self.to_server.len() as u64);
        if self.request_started.is_none() {
            self.request_started = Some(std::time::Instant::now());
        }
        let result = held.conn.stream.write_all(&self.to_server).await;
        self.to_server.clear();
        if result.is_err() {
            self.recover_server_loss().await?;
        }
        Ok(())
    }

    /// Queues one client message for the held server, rewritten as needed.
    pub(super) fn forward_message(&mut self, tag: u8, msg: &[u8]) -> Result<(), SessionEnd> {
        self.inject_role_guard_if_due(tag);
        let body = msg.get(5..).unwrap_or(&[]);
        let skipping = self.expect.server_skipping();
        match tag {
            b'Q' => self.forward_query(msg)?,
            b'P' => {
                self.unsynced = true;
                let analysis = self.analyze_parse(body)?;
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
                    self.inject_fixups_extended(&analysis, p.sql);
                }
                match p.filter(|p| !p.name.is_empty()) {
                    Some(p) => {
                        let stmt = self
                            .state
                            .statements
                            .intern(p.sql, &p.param_types, analysis);
                        self.statements.insert(p.name.to_string(), stmt.clone());
                        if !skipping {
                            self.prepare_on_server(&stmt, true);
                        }
                    }
                    None => {
                        self.unnamed = Some(analysis);
                        self.to_server.extend_from_slice(msg);
                        if !skipping {
                            self.expect.forward(Reply::Parse(None));
                        }
                    }
                }
            }
            b'B' => {
                self.unsynced = true;
                let b = parse_bind_names(body)?;
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
                            self.inject_fixups_extended(&stmt.analysis, &stmt.sql);
                        }
                        if !skipping {
                            self.prepare_on_server(&stmt, false);
                        }
                        frontend::write_bind(
                            &mut self.to_server,
                            b.portal,
                            &stmt.server_name,
                            b.rest,
                        );
                    }
                    None => self.to_server.extend_from_slice(msg),
                }
                if !skipping {
                    self.expect.forward(Reply::Bind);
                }
            }
            b'D' | b'C' => {
                self.unsynced = true;
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
                            self.expect.synthesize(Bytes::from_static(CLOSE_COMPLETE))
                        {
                            self.to_client.extend_from_slice(&made);
                        }
                        return Ok(());
                    }
                    (b'D', Some(stmt)) => {
                        if !skipping {
                            self.prepare_on_server(&stmt, false);
                        }
                        frontend::write_target(&mut self.to_server, b'D', b'S', &stmt.server_name);
                    }
                    _ => self.to_server.extend_from_slice(msg),
                }
                if !skipping {
                    self.expect.forward(match (tag, kind) {
                        (b'C', _) => Reply::Close,
                        (_, b'S') => Reply::DescribeStatement,
                        _ => Reply::DescribePortal,
                    });
                }
            }
            b'E' => {
                self.unsynced = true;
                if let Some(a) = self.last_bound.take() {
                    self.track_session_changes(&a);
                }
                self.to_server.extend_from_slice(msg);
                if !skipping {
                    self.expect.forward(Reply::Execute);
                }
            }
            b'S' => {
                self.unsynced = false;
                self.batch_start = true;
                self.to_server.extend_from_slice(msg);
                self.expect.forward(Reply::Sync);
            }
            b'F' => {
                self.to_server.extend_from_slice(msg);
                self.expect.forward(Reply::FunctionCall);
            }
            b'H' | b'd' | b'c' | b'f' => self.to_server.extend_from_slice(msg),
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
    fn forward_query(&mut self, msg: &[u8]) -> Result<(), SessionEnd> {
        let body = msg.get(5..).unwrap_or(&[]);
        let analysis = self.analyze_query(body)?;
        self.predict_tx(&analysis);
        self.note_untracked_changes(&analysis);
        self.track_session_changes(&analysis);
        let fixups = if touches_sql_prepared(&analysis) {
            self.sql_prepared_fixups(&analysis, parse_query(body)?)
        } else {
            Vec::new()
        };
        if !fixups.is_empty() {
            frontend::query(&mut self.to_server, &fixups.join(";"));
            self.expect.swallow(Reply::Query);
        }
        self.to_server.extend_from_slice(msg);
        self.expect.forward(Reply::Query);
        self.batch_start = true;
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
                if let Some(made) = self.expect.synthesize(Bytes::from_static(PARSE_COMPLETE)) {
                    self.to_client.extend_from_slice(&made);
                }
            }
            return;
        }
        let evicted = held.conn.statements.insert(stmt.id);
        frontend::write_parse(
            &mut self.to_server,
            &stmt.server_name,
            &stmt.sql,
            &stmt.param_types,
        );
        if client_parse {
            self.expect.forward(Reply::Parse(Some(stmt.id)));
        } else {
            self.expect.swallow(Reply::Parse(Some(stmt.id)));
        }
        if let Some(old) = evicted {
            frontend::write_target(&mut self.to_server, b'C', b'S', &format!("pgrouter_{old}"));
            self.expect.swallow(Reply::Close);
        }
    }
}

/// Keeps PostgreSQL's SQLSTATE for common login failures of the server;
/// anything else is reported as a connection failure.
fn known_code(code: &str) -> &'static str {
    match code {
        "3D000" => "3D000",
        "28P01" => "28P01",
        "28000" => "28000",
        "53300" => "53300",
        "57P03" => "57P03",
        _ => "08006",
    }
}
