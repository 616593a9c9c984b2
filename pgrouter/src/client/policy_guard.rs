//! The session's policy on the wire: statements a JWT or read-only session
//! may not run are refused (by the router, or through the server when one
//! is held so that the transaction fails as PostgreSQL would fail it), an
//! expired token ends the session, and every unit of work of a JWT session
//! starts with `SET ROLE` of the token's role.

use bytes::Buf;

use super::error::SessionEnd;
use super::expect::{GuardFor, Reply};
use super::params::{quote_ident, quote_literal};
use super::session::Session;
use crate::protocol::backend::{self, Severity};
use crate::protocol::frontend::{self, parse_parse, parse_query};
use crate::router::{self, Refusal};
use pgrouter_parser::SessionState;

impl Session {
    /// The session's policy (JWT role, read-only) applied to a Query or Parse.
    /// Inline: for most sessions there is no policy, and this runs for every
    /// client message.
    #[inline]
    pub(super) fn check_policy(
        &self,
        tag: u8,
        len: usize,
    ) -> Result<Result<(), Refusal>, SessionEnd> {
        if self.policy.jwt.is_none() && !self.policy.read_only && !self.refuse_session_state {
            // Unsharded (the usual case, checked for every message): nothing
            // to refuse, without a call.
            if self.shard_map.is_none() && !self.unnamed_portal_suspended_on_shards {
                return Ok(Ok(()));
            }
            return Ok(self.held_shard_refusal(tag, len).map_or(Ok(()), Err));
        }
        self.check_policy_now(tag, len)
    }

    fn check_policy_now(&self, tag: u8, len: usize) -> Result<Result<(), Refusal>, SessionEnd> {
        let analysis = match tag {
            b'Q' => Some(self.query_analysis(self.message_analysis(tag, 0, len)?)),
            b'P' => Some(self.message_analysis(tag, 0, len)?),
            _ => None,
        };
        if let Some(Err(refusal)) = analysis.as_ref().map(|a| self.policy.check(a)) {
            return Ok(Err(refusal));
        }
        if tag == b'P' {
            if let super::local_answers::LoneReset::Unanswerable { discard: true } =
                self.jwt_lone_reset()?
            {
                return Ok(Err(Refusal {
                    sqlstate: "42501",
                    message: "pgrouter: in a JWT session DISCARD ALL must be sent alone: an unnamed statement, the only one of its batch, outside a transaction".into(),
                }));
            }
        }
        if let Some(a) = analysis.as_ref() {
            // Sequence state made inside a transaction block is used there
            // and discarded after it (see `sequence_state_in_tx`).
            let created = self.session_state_of(a).creates;
            let creates = match self.flow.in_tx() {
                true => created.without(SessionState::SEQUENCE),
                false => created,
            };
            if self.refuse_session_state && !creates.is_empty() {
                let kinds: Vec<&str> = creates.names().collect();
                return Ok(Err(Refusal {
                    sqlstate: "0A000",
                    message: format!(
                        "pgrouter: session state ({}) is not supported in transaction pooling mode (session_state = \"refuse\")",
                        kinds.join(", ")
                    ),
                }));
            }
        }
        Ok(self.held_shard_refusal(tag, len).map_or(Ok(()), Err))
    }

    /// A refused statement never reaches a server as written. With no
    /// server held the router answers; with one held (a transaction or a
    /// batch in progress) the refusal is raised through the server, so the
    /// transaction and the batch fail exactly as if PostgreSQL had refused it.
    pub(super) fn refuse(&mut self, tag: u8, len: usize, refusal: Refusal) {
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
                let status = if self.deferred_begin.is_some() {
                    b'T'
                } else {
                    b'I'
                };
                backend::ready_for_query(&mut self.to_client, status);
            } else {
                self.flow.batch_failed();
            }
            return;
        }
        let raise = raise_sql(refusal.sqlstate, &refusal.message);
        self.inject_role_guard_if_due(tag);
        // Its error reaches the client as the router's own (see
        // `Verdict::refusal`), not with the PL/pgSQL context of the raise.
        if tag == b'Q' {
            frontend::query(self.to_server(), &raise);
            self.expect().refused(Reply::Query);
            self.flow.query_sent();
        } else {
            self.flow.extended_sent();
            self.pipeline_guard_for(&raise, GuardFor::Refusal);
        }
    }

    /// `disconnect_on_expiry`: a JWT session whose token has expired ends at
    /// its next transaction boundary.
    pub(super) fn check_token_expiry(&self) -> Result<(), SessionEnd> {
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

    /// After a reload, a JWT session whose login would now be refused
    /// ends (FATAL 28000, the cause in the words login uses): its token is
    /// checked again by the new verifier — `allow_insecure_transport`
    /// turned off for a session on plain TCP from another host, a role taken out of
    /// `allowed_roles`, a replaced PEM key (or a `kid` gone from a fetched
    /// JWKS), a changed `issuer`, `audience`, `algorithms` or
    /// `username_claim` — except for time (see `JwtVerifier::recheck`),
    /// and so are `[jwt]` itself, its `databases`, and whether the user
    /// may still log in with a token (its users.toml entry's `login` and
    /// `auth`, or `auto_provision` for a user without one). A token still accepted
    /// that now maps to another role or read-only state, or a changed
    /// `connect_as`, ends it as a changed setting does (`Ok(Some(what))`,
    /// reported as 08006 by the caller): the same token logs in again
    /// under the new configuration. Called once per configuration
    /// generation, at a transaction boundary.
    pub(super) fn check_jwt_still_accepted(
        &self,
        rt: &crate::state::Runtime,
    ) -> Result<Option<&'static str>, SessionEnd> {
        let Some(jwt) = &self.policy.jwt else {
            return Ok(None);
        };
        let revoked = |cause: &str| {
            tracing::info!(
                user = %jwt.username,
                database = %self.database,
                role = %jwt.role,
                cause,
                "JWT session ended: its login would now be refused"
            );
            SessionEnd::fatal(
                "28000",
                format!("pgrouter: a configuration reload revoked this JWT session: {cause}"),
            )
        };
        let (Some(cfg), Some(verifier)) = (rt.config.jwt.as_ref(), rt.jwt.as_ref()) else {
            return Err(revoked("JWT login is no longer configured"));
        };
        if !cfg.databases.is_empty() && !cfg.databases.contains(&self.database) {
            return Err(revoked(&format!(
                "JWT login is not allowed for database \"{}\"",
                self.database
            )));
        }
        if jwt.insecure_transport && !cfg.allow_insecure_transport {
            return Err(revoked(super::login::JWT_NEEDS_TLS));
        }
        let entry = rt.config.user(&jwt.username, &self.database);
        match entry {
            Some(u) if !u.login => {
                return Err(revoked(&format!(
                    "user \"{}\" cannot log in directly",
                    jwt.username
                )));
            }
            Some(u)
                if !matches!(
                    u.auth,
                    pgrouter_config::AuthMethod::Jwt | pgrouter_config::AuthMethod::PasswordOrJwt
                ) =>
            {
                return Err(revoked(&format!(
                    "user \"{}\" no longer logs in with a JWT",
                    jwt.username
                )));
            }
            None if !cfg.auto_provision => {
                return Err(revoked(&format!(
                    "user \"{}\" has no users.toml entry and auto_provision is off",
                    jwt.username
                )));
            }
            _ => {}
        }
        let verified = match verifier.recheck(jwt.token.expose(), &jwt.username) {
            Ok(v) => v,
            Err(e) => return Err(revoked(&e.to_string())),
        };
        if cfg.connect_as != self.pools_user {
            return Ok(Some("connect_as"));
        }
        if verified.role != jwt.role {
            return Ok(Some("the role its token maps to"));
        }
        let read_only = verified.read_only
            || entry.is_some_and(|u| u.read_only)
            || (entry.is_none() && cfg.auto_provision_read_only);
        if read_only != self.policy.read_only {
            return Ok(Some("read_only"));
        }
        Ok(None)
    }

    /// JWT sessions: every unit of work outside a transaction block starts
    /// with `SET ROLE` of the token's role, pipelined ahead of the client's
    /// messages without a Sync. If it fails, PostgreSQL skips the client's
    /// messages up to the Sync, so nothing ever runs under another role — and
    /// no earlier client's role (or a RESET ROLE inside a function) carries over.
    #[inline]
    pub(super) fn inject_role_guard_if_due(&mut self, tag: u8) {
        if !self.flow.batch_start()
            || self.flow.in_tx()
            || matches!(tag, b'S' | b'H' | b'd' | b'c' | b'f')
        {
            return;
        }
        self.flow.role_guard_pipelined();
        self.inject_role_guard();
    }

    /// Pipelines `SET ROLE` of the token's role; false for a session
    /// without a token.
    fn inject_role_guard(&mut self) -> bool {
        let Some(jwt) = &self.policy.jwt else {
            return false;
        };
        let sql = format!("SET ROLE {}", quote_ident(&jwt.role));
        self.pipeline_guarded(&sql);
        true
    }

    /// Pipelines `sql` as an unnamed Parse/Bind/Execute without a Sync. The
    /// client never sees its ParseComplete and BindComplete; its Execute is
    /// a guard: should it fail, the error reaches the client and PostgreSQL
    /// skips the client's own messages up to their Sync.
    fn pipeline_guarded(&mut self, sql: &str) {
        self.pipeline_guard_for(sql, GuardFor::Policy);
    }

    /// [`Self::pipeline_guarded`] for any purpose: the router's replay of
    /// the client's settings and SQL prepared statements uses it too, so
    /// that their failure is the client's statement's error.
    pub(super) fn pipeline_guard_for(&mut self, sql: &str, purpose: GuardFor) {
        frontend::write_parse(self.to_server(), "", sql, &[]);
        // That replaced the server's unnamed statement.
        self.unnamed_here = false;
        frontend::bind_execute_unnamed(self.to_server());
        self.expect().swallow(Reply::Parse(None));
        self.expect().swallow(Reply::Bind);
        self.expect().guard(Reply::Execute, purpose);
    }

    /// JWT sessions: statements PostgreSQL refuses to run in a pipeline or
    /// transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...) cannot
    /// share an implicit transaction with the pipelined SET ROLE, so for them
    /// the role is set in its own transaction first, and the statement is
    /// sent only once that succeeded.
    #[inline]
    pub(super) fn needs_guard_round_trip(&self, tag: u8, len: usize) -> Result<bool, SessionEnd> {
        if self.policy.jwt.is_none()
            || !self.flow.batch_start()
            || self.flow.in_tx()
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
    pub(super) fn inject_role_guard_synced(&mut self) {
        if !self.inject_role_guard() {
            return;
        }
        frontend::sync(self.to_server());
        self.expect().swallow(Reply::Sync);
        self.flow.role_guard_sent_alone();
    }
}

/// A statement that fails on the server with the router's refusal: the
/// server's transaction then fails as PostgreSQL fails one at an error.
pub(super) fn raise_sql(sqlstate: &str, message: &str) -> String {
    format!(
        "DO $pgrouter$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = {}; END$pgrouter$",
        sqlstate,
        quote_literal(message)
    )
}
