//! Server to client: relay answers in order, drop the answers to the
//! router's own messages, insert the answers the router makes up, and keep
//! the session's bookkeeping (transaction status, parameters, SET outcomes).

use std::hint::cold_path;

use bytes::{Buf, BytesMut};
use pgrouter_config::PoolMode;

use super::error::SessionEnd;
use super::expect::Reply;
use super::session::Session;
use super::tracking::SetChange;
use crate::protocol::backend::{parse_error_fields, parse_parameter_status, remake_raised_error};
use crate::protocol::frontend;
use crate::protocol::next_frame;
use crate::server::MAX_SERVER_MESSAGE;

impl Session {
    /// Handles every complete message the held server has sent. When all of
    /// them go to the client unchanged (the usual case) they are written
    /// straight from the read buffer in one write; otherwise the relay
    /// switches to copying into `to_client` from the first exception on.
    pub(super) async fn handle_server_messages(&mut self) -> Result<(), SessionEnd> {
        let Some(held) = self.server.as_mut() else {
            return Ok(());
        };
        let mut pos = 0; // bytes of read_buf handled
                         // Everything in `start..pos` is forwarded as is. Answers dropped
                         // ahead of the first forwarded one (those of the router's own
                         // queries at checkout) only move `start`: no copy.
        let mut start = 0;
        let mut verbatim = true;
        loop {
            let buf = &held.conn.read_buf;
            let Some(frame) = next_frame(buf.get(pos..).unwrap_or(&[]), MAX_SERVER_MESSAGE)
                .map_err(|_| {
                    SessionEnd::fatal("08P01", "pgrouter: malformed message from the server")
                })?
            else {
                break;
            };
            let tag = frame.tag;
            let msg_range = pos..pos + frame.total_len;
            let body_range = pos + 5..pos + frame.total_len;
            if tag == b'E'
                && self.replay.is_some()
                && is_fatal(&held.conn.read_buf[pos + 5..pos + frame.total_len])
            {
                cold_path();
                // The server is going away before answering a replayable
                // read: keep quiet, the replay on another server answers.
                held.conn.read_buf.truncate(pos);
                break;
            }
            if tag == b'N'
                && self.replay.is_some()
                && announces_end(&held.conn.read_buf[body_range.clone()])
            {
                cold_path();
                // The server says it is going away (an immediate shutdown
                // sends a WARNING, not a FATAL, before closing): not yet an
                // answer, or the read could not be replayed. Relayed ahead
                // of the next answer should the server go on after all.
                self.held_notices
                    .extend_from_slice(&held.conn.read_buf[msg_range]);
                if verbatim && pos == start {
                    start = pos + frame.total_len;
                } else if verbatim {
                    verbatim = false;
                    self.to_client
                        .extend_from_slice(&held.conn.read_buf[start..pos]);
                }
                pos += frame.total_len;
                continue;
            }
            // None: the usual case, forwarded as is (see `Expectations::pass`);
            // `dropped`: the answer to a message of the router's own.
            let mut dropped = false;
            let verdict = if held.expect.pass(tag) {
                None
            } else if held.expect.drop_quietly(tag) {
                dropped = true;
                None
            } else {
                Some(held.expect.on_server_message(tag))
            };

            // Bookkeeping first; it needs only the body. Messages answering the
            // router's own queries only update the server's state: SET outcomes
            // and the transaction prediction belong to the client's requests.
            let body = &held.conn.read_buf[body_range.clone()];
            let clients = !dropped && verdict.as_ref().is_none_or(|v| v.forward);
            // ParameterStatus the router owes the client before this message.
            // Made only when there is something to announce (rare): a
            // buffer made and dropped for each server message cost more.
            let mut announce: Option<bytes::BytesMut> = None;
            match tag {
                b'G' | b'W' if clients => {
                    self.flow.copy_started();
                    if tag == b'G' {
                        held.expect.copy_in_started();
                    }
                }
                b'Z' => {
                    let status = body.first().copied().unwrap_or(b'I');
                    let whole_request = self.flow.ready_for_query(status, !held.expect.is_empty());
                    held.conn.tx_status = status;
                    if clients {
                        if let Some(started) = self.request_started.take() {
                            // One clock read serves the query duration, the
                            // transaction duration and the pool's last use.
                            let now = crate::clock::Tick::now();
                            held.last_answer = now;
                            held.conn.pool().metrics.record_query(now.since(started));
                            // Requests pipelined behind this one (several
                            // Syncs sent at once) now run: `query_timeout_ms`
                            // times the next from here, not never.
                            if !held.expect.is_empty() {
                                self.request_started = Some(now);
                            }
                        }
                    }
                    if clients {
                        self.pins.on_ready(status);
                        if !self.temps.is_idle() {
                            self.temps.on_ready(status);
                        }
                        self.query_cancelled = None;
                        if !self.pending_prepares.is_empty() {
                            self.pending_prepares.on_ready();
                        }
                    }
                    // The first answer after a settings replay: the server
                    // reports what changed since its last report, which may
                    // have been to another client (see `replay.rs`).
                    let replayed = clients && std::mem::take(&mut held.settings_replayed);
                    if clients && !self.sets.is_idle() {
                        cold_path();
                        for change in self.sets.on_ready(status) {
                            // A reported setting is carried as the server
                            // reported it: `SET datestyle TO ymd` changes
                            // only the order ("ISO, YMD"), which the literal
                            // alone would lose on another connection.
                            let change = match change {
                                SetChange::Set { name, value } => {
                                    let canonical = self.params.canonical(&name);
                                    let value = match held.conn.reported.get(&canonical) {
                                        Some(reported) if self.params.is_reported(&canonical) => {
                                            reported.clone()
                                        }
                                        _ => value,
                                    };
                                    SetChange::Set { name, value }
                                }
                                other => other,
                            };
                            // The server went back to its own default, not
                            // to the client's startup value: set that again
                            // before the client's next statement.
                            let to_startup = match &change {
                                SetChange::Reset { name } => self.params.has_initial(name),
                                SetChange::ResetAll => true,
                                SetChange::Set { .. } => false,
                            };
                            note_change_on_server(&mut held.conn, &self.params, &change);
                            let names = if replayed {
                                reported_names(&self.params, &change)
                            } else {
                                Vec::new()
                            };
                            self.params.apply(change);
                            for name in names {
                                if let Some(value) = self.params.get(&name) {
                                    crate::protocol::backend::parameter_status(
                                        announce.get_or_insert_with(Default::default),
                                        &name,
                                        value,
                                    );
                                }
                            }
                            if to_startup {
                                held.conn.params_fingerprint = 0;
                                held.resync_params = true;
                            }
                        }
                    }
                    if whole_request {
                        if status == b'I' && self.mode == PoolMode::Transaction && !held.tx_counted
                        {
                            held.record_transaction();
                        }
                        if status == b'I'
                            && self.pins.is_pinned()
                            && self.pins.to_check().is_empty()
                        {
                            // Known before the client reads this answer:
                            // SHOW CLIENTS and the metric it may ask for
                            // next already say so.
                            self.registered.info.set_pinned(self.pins.held());
                        }
                    }
                }
                b'S' => {
                    cold_path();
                    let status = match parse_parameter_status(body) {
                        Ok((name, value)) => Some((name.to_string(), value.to_string())),
                        // A value in the session's encoding (`application_name`).
                        Err(_) => held
                            .conn
                            .text_codec
                            .and_then(|codec| crate::encoding::parameter_status(codec, body)),
                    };
                    if let Some((name, value)) = status {
                        if held.conn.params.get(&name) != Some(&value) {
                            held.conn.params_fingerprint = 0;
                        }
                        self.params.note(&name, &value);
                        held.conn.reported.insert(name.clone(), value.clone());
                        held.conn.params.insert(name, value);
                    }
                }
                b'E' => {
                    cold_path();
                    if clients {
                        self.sets.on_error();
                        self.pins.on_error();
                        self.temps.on_error();
                        if let Ok(f) = parse_error_fields(body) {
                            self.state.metrics.record_error(&f.code);
                            if is_stale_plan(&f) {
                                self.state.statements.forget_texts();
                            }
                        }
                        if !self.pending_prepares.is_empty() {
                            // PREPAREs of the failed request did not happen.
                            for name in self.pending_prepares.on_error() {
                                self.sql_prepared.remove(&name);
                                held.conn.statements.sql_prepared.remove(&name);
                            }
                        }
                    } else if let Ok(f) = parse_error_fields(body) {
                        tracing::warn!(code = %f.code, error = %f.message, "a query of the router's failed");
                        // What it set may not be in force (a failed
                        // set_config list sets nothing): the bookkeeping of
                        // this connection can no longer be trusted, so it is
                        // reset and synced again before its next use.
                        held.conn.params_fingerprint = 0;
                        held.conn.needs_reset = true;
                    }
                }
                b'C' if clients => {
                    if !self.sets.is_idle() {
                        self.sets.on_command_complete(body);
                    }
                    self.pins.on_command_complete(body);
                    if !self.temps.is_idle() && body.starts_with(b"ROLLBACK") {
                        self.temps.on_error();
                    }
                    if !self.pending_prepares.is_empty() {
                        self.pending_prepares.on_command_complete(body);
                    }
                }
                _ => {}
            }
            if clients {
                // The client has seen an answer: no replay now.
                super::replay_buffer::stop_replay(&mut self.replay, &mut self.replay_spare);
                if !self.held_notices.is_empty() {
                    // The server went on after its notice: the client gets
                    // it, in the order it was sent.
                    let mut ahead = std::mem::take(&mut self.held_notices);
                    if let Some(owed) = &announce {
                        ahead.extend_from_slice(owed);
                    }
                    announce = Some(ahead);
                }
            }
            if let Some(announce) = announce.filter(|a| !a.is_empty()) {
                cold_path();
                if verbatim {
                    verbatim = false;
                    self.to_client
                        .extend_from_slice(&held.conn.read_buf[start..pos]);
                }
                self.to_client.extend_from_slice(&announce);
            }
            match verdict {
                None if dropped => {
                    if verbatim && pos == start {
                        start = pos + frame.total_len;
                    } else if verbatim {
                        verbatim = false;
                        self.to_client
                            .extend_from_slice(&held.conn.read_buf[start..pos]);
                    }
                }
                None if verbatim => {}
                None => self
                    .to_client
                    .extend_from_slice(&held.conn.read_buf[msg_range]),
                Some(verdict) => {
                    cold_path();
                    if let Some(id) = verdict.failed_parse {
                        held.conn.statements.remove(id);
                    }
                    // PostgreSQL did not create them: the client may parse
                    // these names again.
                    for name in &verdict.failed_names {
                        self.statements.remove(&**name);
                    }
                    if verdict.guard_failed.is_some() || !verdict.guards_skipped.is_empty() {
                        super::replay::undo_replay(
                            &mut held.conn,
                            &mut self.params,
                            &mut held.sync_undo,
                            verdict.guard_failed.as_ref(),
                            &verdict.guards_skipped,
                        );
                    }
                    // Only a guard sent on its own round trip holds the
                    // client's request back; a pipelined one (a refusal
                    // raised through the server) failed the client's batch
                    // already, and the next request must run.
                    if verdict.guard_failed.is_some() {
                        self.flow.guard_refused();
                    }
                    if verdict.inject_sync {
                        frontend::sync(&mut held.conn.write_buf);
                        held.expect.forward(Reply::Sync);
                    }
                    // The router's refusal raised through the server: the
                    // client gets it as the router makes its own errors.
                    let mut own_error = bytes::BytesMut::new();
                    let remade = verdict.forward
                        && verdict.refusal
                        && remake_raised_error(&mut own_error, &held.conn.read_buf[body_range]);
                    let made_up = !verdict.synthesize_before.is_empty()
                        || !verdict.synthesize_after.is_empty();
                    let plain = verdict.forward && !made_up && !remade;
                    if verbatim && !verdict.forward && !made_up && pos == start {
                        start = pos + frame.total_len;
                    } else if verbatim && !plain {
                        verbatim = false;
                        self.to_client
                            .extend_from_slice(&held.conn.read_buf[start..pos]);
                    }
                    if !verbatim {
                        for made in &verdict.synthesize_before {
                            self.to_client.extend_from_slice(made);
                        }
                        if remade {
                            self.to_client.extend_from_slice(&own_error);
                        } else if verdict.forward {
                            self.to_client
                                .extend_from_slice(&held.conn.read_buf[msg_range]);
                        }
                        for made in &verdict.synthesize_after {
                            self.to_client.extend_from_slice(made);
                        }
                    }
                }
            }
            pos += frame.total_len;
        }
        // State that may have ended with these answers (a temp table
        // dropped, an UNLISTEN) is asked about before the client has them:
        // once it has its answer, SHOW CLIENTS and the metrics say whether
        // it is still pinned.
        let check_first = !self.pins.to_check().is_empty();
        if pos > 0 {
            let result = if verbatim && pos > start {
                use tokio::io::AsyncWriteExt;
                held.conn
                    .pool()
                    .metrics
                    .add_bytes_sent((pos - start) as u64);
                if check_first {
                    cold_path();
                    let mut answers = BytesMut::from(&held.conn.read_buf[start..pos]);
                    answers.extend_from_slice(&self.to_client);
                    self.to_client = answers;
                    Ok(())
                } else {
                    self.client.write_all(&held.conn.read_buf[start..pos]).await
                }
            } else {
                Ok(())
            };
            held.conn.read_buf.advance(pos);
            result.map_err(SessionEnd::ClientIo)?;
        }
        let quiet = self.is_quiet();
        self.flow.answers_relayed(self.answers_due(), quiet);
        if !check_first {
            self.flush_client().await?;
        }
        let held = self.server.as_mut().expect("held while relaying");
        if !held.conn.write_buf.is_empty() && held.flush().await.is_err() {
            self.flush_client().await?;
            return self.recover_server_loss().await;
        }
        if !self.pins.to_check().is_empty() {
            self.check_pins().await?;
        }
        if self.pins.is_unpinned() {
            self.clean_after_pin().await?;
        }
        self.flush_client().await?;
        self.release_if_done();
        Ok(())
    }
}

/// Reported parameters a committed SET/RESET changed in the client's
/// session: after a settings replay the server may not report them to the
/// client (it had reported that value already, to an earlier client), so the
/// router does.
fn reported_names(params: &super::params::ClientParams, change: &SetChange) -> Vec<String> {
    let name = match change {
        SetChange::Set { name, .. } | SetChange::Reset { name } => params.canonical(name),
        SetChange::ResetAll => return params.reported_names(),
    };
    if params.is_reported(&name) {
        vec![name]
    } else {
        Vec::new()
    }
}

/// A FATAL or PANIC error: the server closes the connection after it.
fn is_fatal(body: &[u8]) -> bool {
    parse_error_fields(body).is_ok_and(|f| f.severity == "FATAL" || f.severity == "PANIC")
}

/// A notice announcing that the server ends the connection: an immediate
/// shutdown (57P01), another backend's crash (57P02) or a cannot-connect-now
/// (57P03) come as a WARNING before the server closes the socket.
fn announces_end(body: &[u8]) -> bool {
    parse_error_fields(body).is_ok_and(|f| matches!(f.code.as_str(), "57P01" | "57P02" | "57P03"))
}

/// A session change the client made on this server: later clients of the
/// server must not inherit it, so the server's bookkeeping learns of it (a
/// SET is RESET for the next client that did not ask for it).
fn note_change_on_server(
    server: &mut crate::server::ServerConn,
    params: &super::params::ClientParams,
    change: &SetChange,
) {
    server.params_fingerprint = 0;
    match change {
        SetChange::Set { name, value } => {
            let name = params.canonical(name);
            server.params.insert(name.clone(), value.clone());
            server.router_set.insert(name, value.clone());
        }
        SetChange::Reset { name } => {
            // A reported parameter's new value came in a ParameterStatus;
            // any other is back at a default the router does not know.
            let name = params.canonical(name);
            server.router_set.remove(&name);
            if !params.is_reported(&name) {
                server.params.remove(&name);
            }
        }
        SetChange::ResetAll => {
            let names: Vec<String> = server.router_set.drain().map(|(k, _)| k).collect();
            for name in names.into_iter().filter(|n| !params.is_reported(n)) {
                server.params.remove(&name);
            }
        }
    }
}

/// PostgreSQL's error for a prepared statement whose result columns changed
/// since it was planned (`RevalidateCachedQuery`, 0A000).
fn is_stale_plan(f: &crate::protocol::backend::ErrorFields) -> bool {
    f.code == "0A000"
        && (f.routine == "RevalidateCachedQuery"
            || f.message == "cached plan must not change result type")
}
