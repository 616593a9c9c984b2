//! The connection a Parse check (`parse_check.rs`) runs on, chosen so that
//! the check can never make a session wait for a server while it holds
//! one.
//!
//! A check is the router's own errand: a client that prepares a statement
//! inside a transaction the router has not sent yet (a deferred BEGIN), or
//! while it keeps connections between transactions, must not queue for a
//! pool connection then — two sessions each holding a connection and
//! waiting for the other's would wait until the checkout timeout (pgbench
//! -M prepared with more clients than connections did just that). So:
//!
//! - the session's own connection to the checked shard, when it has one
//!   idle between transactions (the held server, or a kept one), is used;
//! - else a pool connection is taken only if one is free right now;
//! - else there is no check: the router answers as it did without one,
//!   and PostgreSQL's error, if any, comes at the Bind.
//!
//! Connections in a transaction (the client's, or legs of one) are never
//! used: a rejected Parse there would fail a transaction the client has not
//! seen fail.

use super::held::Leg;
use crate::client::session::Session;
use crate::parse_verdicts::VerdictContext;
use crate::router::Role;

/// Where a check runs (see [`Session::check_leg`]).
pub(super) enum CheckLeg {
    /// The session's held server, taken out for the check and put back.
    Server(Leg),
    /// A kept connection, or one from the pool: given back as legs are.
    Leg(Leg),
}

impl CheckLeg {
    pub(super) fn leg(&mut self) -> &mut Leg {
        match self {
            CheckLeg::Server(leg) | CheckLeg::Leg(leg) => leg,
        }
    }
}

impl Session {
    /// The shard a check asks: the session's (a shard hint), else shard 0,
    /// where unsharded tables live — another shard could reject a statement
    /// that names one.
    pub(super) fn check_shard(&self) -> usize {
        self.session_routing().shard_override.unwrap_or(0) as usize
    }

    /// What a verdict of this session depends on (`parse_verdicts.rs`).
    pub(super) fn verdict_context(&self) -> VerdictContext {
        VerdictContext::new(
            &self.database,
            &self.pools_user,
            self.params.fingerprint(),
            self.policy.jwt.as_ref().map(|j| j.role.as_str()),
        )
    }

    /// A connection to [`Self::check_shard`] for a check, without waiting
    /// (see the module's comment); `None`: no check now.
    pub(super) async fn check_leg(&mut self) -> Option<CheckLeg> {
        let shard = self.check_shard();
        let role = if self.policy.read_only {
            Role::Replica
        } else {
            Role::Primary
        };
        if self.server.as_ref().is_some_and(|h| h.shard == shard) {
            return self.held_server_for_check().await;
        }
        if self.pipeline.is_some() {
            return None; // its legs are inside a transaction block
        }
        if self.flow.in_tx() && self.deferred_begin.is_none() {
            // Another connection would not see what the transaction
            // created: its verdict could be wrong.
            return None;
        }
        // A kept connection of that shard comes first (no pool involved).
        match self.take_leg_if_free(shard, role).await {
            Ok(Some(leg)) => Some(CheckLeg::Leg(leg)),
            _ => None,
        }
    }

    /// The held server, when it is idle between transactions with nothing
    /// owed, taken out of the session (and brought in line with it) for a
    /// check. `None` otherwise: the session does not wait for another
    /// connection while it holds this one.
    async fn held_server_for_check(&mut self) -> Option<CheckLeg> {
        let idle = self.server.as_ref().is_some_and(|h| {
            h.expect.is_empty() && h.conn.tx_status == b'I' && h.conn.read_buf.is_empty()
        });
        if !idle
            || !self.is_quiet()
            || self.flow.in_tx()
            || self.tx_legs.is_some()
            || self.pipeline.is_some()
        {
            return None;
        }
        let mut held = self.server.take()?;
        let sql = self.leg_prologue(&mut held.conn);
        let ok = sql.is_empty() || matches!(held.conn.run_simple(&sql).await, Ok(Ok(())));
        let leg = Leg {
            shard: held.shard,
            held,
            ready: true,
            cancelled: false,
        };
        if !ok {
            self.return_check_leg(CheckLeg::Server(leg));
            return None;
        }
        Some(CheckLeg::Server(leg))
    }

    /// The check is done: the connection goes back where it came from. A
    /// check leaves nothing on it (its statement is closed and synced).
    pub(super) fn return_check_leg(&mut self, leg: CheckLeg) {
        match leg {
            // Lost meanwhile: the session finds out at its next use, as
            // with any held server.
            CheckLeg::Server(leg) => self.server = Some(leg.held),
            CheckLeg::Leg(leg) => self.give_back(vec![leg]),
        }
    }
}
