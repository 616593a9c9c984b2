//! The router's own replay onto a server connection, ahead of the client's
//! statement that needs it: the client's settings (a new connection, or one
//! a RESET took back to its defaults) and its SQL prepared statements
//! (`EXECUTE` on a connection that lacks them).
//!
//! Each replayed statement is pipelined as a *guard* (Parse/Bind/Execute
//! without a Sync, see `policy_guard.rs`): should it fail, PostgreSQL skips
//! the client's messages up to their Sync, and its error reaches the client
//! as the error of the statement that needed it — same SQLSTATE, same
//! message. Inside a transaction block the block fails, as PostgreSQL would
//! fail it had the client's statement failed. Between transactions the
//! replay ends with a `COMMIT` of its own (PostgreSQL warns that no
//! transaction is in progress, and commits the implicit one): what it did
//! then stays done whatever the client's statement does, and the client's
//! statement starts a transaction of its own (VACUUM and the like refuse to
//! run inside a pipeline).
//!
//! When a guard fails (or is skipped after another one failed), what the
//! router recorded about the connection is taken back; a setting the server
//! refused is dropped from the session (`ClientParams::drop_failed`), so the
//! client's next statement runs.
//!
//! Protocol-level prepared statements need no guard: the router's Parse of
//! one the connection lacks (`outbound::prepare_on_server`) already has its
//! error passed to the client, and the server skips the client's Bind after
//! it (see `Expectations::on_server_message`).
//!
//! The settings replay shares its ReadyForQuery with the client's statement,
//! and PostgreSQL reports a parameter (ParameterStatus) only there and only
//! when it differs from the last value it reported — perhaps to another
//! client. So the value of a reported setting is taken from the server's
//! last report (`ServerConn::reported`), and the client is told of its own
//! SET by the router when the server does not tell it (`inbound.rs`).

use std::collections::HashMap;

use super::expect::{GuardFor, Reply};
use super::params::ClientParams;
use super::session::Session;
use crate::protocol::frontend;
use crate::server::ServerConn;

/// A server connection's parameter bookkeeping from before a settings
/// replay: the replay runs in one implicit transaction, so when any of its
/// steps fails none of them took effect.
#[derive(Debug, Default)]
pub(super) struct SyncUndo {
    params: HashMap<String, String>,
    router_set: HashMap<String, String>,
    fingerprint: u64,
}

impl Session {
    /// Pipelines the statements that bring the held server's settings in
    /// line with the client's, each one a guard. Returns whether anything
    /// was sent (the caller ends the replay with [`Self::commit_replay`]
    /// when outside a transaction).
    pub(super) fn replay_settings(&mut self) -> bool {
        let Some(held) = self.server.as_mut() else {
            return false;
        };
        let Some(steps) = self.params.sync_steps(&held.conn) else {
            return false;
        };
        tracing::debug!(
            ?steps,
            server = held.conn.id,
            "bringing session parameters in line"
        );
        held.sync_undo = Some(Box::new(SyncUndo {
            params: held.conn.params.clone(),
            router_set: held.conn.router_set.clone(),
            fingerprint: held.conn.params_fingerprint,
        }));
        // A connection left with a SERIALIZABLE session default by another
        // client (being reset by these very steps) cannot take a snapshot
        // on a hot standby, which each set_config's SELECT needs: the
        // replay's own transaction, which reads nothing, runs READ
        // COMMITTED. Only between transactions: inside one, the client's
        // transaction is not the router's to change.
        let reset_isolation = !self.flow.in_tx() && serializable_default(&held.conn);
        self.params.mark_synced(&mut held.conn);
        held.settings_replayed = true;
        if reset_isolation {
            self.pipeline_guard_for(
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
                GuardFor::Setting("default_transaction_isolation".into()),
            );
        }
        for step in steps {
            let sql = step.sql();
            self.pipeline_guard_for(&sql, GuardFor::Setting(step.name.into()));
        }
        true
    }

    /// Pipelines the statements that re-create (or drop) SQL prepared
    /// statements on the held server ahead of the client's statement, each
    /// one a guard (see `sql_prepared.rs` for which).
    pub(super) fn replay_sql_prepared(&mut self, fixups: Vec<(String, GuardFor)>) {
        for (sql, purpose) in fixups {
            self.pipeline_guard_for(&sql, purpose);
        }
    }

    /// Ends a replay sent between transactions with a COMMIT of its own (its
    /// warning, that no transaction is in progress, is dropped with the rest
    /// of its answer). Skipped by the server, like the client's messages,
    /// when a guard before it failed.
    pub(super) fn commit_replay(&mut self) {
        frontend::write_parse(self.to_server(), "", "COMMIT", &[]);
        frontend::bind_execute_unnamed(self.to_server());
        self.expect().swallow(Reply::Parse(None));
        self.expect().swallow(Reply::Bind);
        self.expect().swallow(Reply::Execute);
    }
}

/// Whether `conn`'s session default isolation, as last known, is
/// SERIALIZABLE.
fn serializable_default(conn: &ServerConn) -> bool {
    conn.params
        .get("default_transaction_isolation")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("serializable"))
}

/// A guard failed (`failed`) and the server skipped the guards after it
/// (`skipped`): what the router recorded about the connection for them is
/// taken back. A setting the server refused leaves the session.
pub(super) fn undo_replay(
    conn: &mut ServerConn,
    params: &mut ClientParams,
    sync_undo: &mut Option<Box<SyncUndo>>,
    failed: Option<&GuardFor>,
    skipped: &[GuardFor],
) {
    let settings_undone = failed
        .into_iter()
        .chain(skipped)
        .any(|g| matches!(g, GuardFor::Setting(_)));
    if settings_undone {
        if let Some(undo) = sync_undo.take() {
            conn.params = undo.params;
            conn.router_set = undo.router_set;
            conn.params_fingerprint = undo.fingerprint;
        } else {
            // Nothing to go back to: the connection's settings are unknown,
            // so it is reset before its next use.
            conn.params_fingerprint = 0;
            conn.needs_reset = true;
        }
    }
    if failed
        .into_iter()
        .chain(skipped)
        .any(|g| matches!(g, GuardFor::Sequences))
    {
        conn.discard_due = true;
    }
    // Guards after the failed one never ran: the server still has what it
    // had under those names.
    for g in skipped {
        if let GuardFor::SqlPrepared { name, before } = g {
            let map = &mut conn.statements.sql_prepared;
            match before {
                Some(text) => map.insert(name.to_string(), text.clone()),
                None => map.remove(&**name),
            };
        }
    }
    match failed {
        Some(GuardFor::Setting(name)) => {
            tracing::info!(setting = %name, "the server refused a setting of the session on another connection: the client was told, the setting is dropped");
            params.drop_failed(name);
        }
        // The failed PREPARE (the DEALLOCATE before it, if any, ran) or
        // DEALLOCATE: the server has nothing under that name now.
        Some(GuardFor::SqlPrepared { name, .. }) => {
            conn.statements.sql_prepared.remove(&**name);
        }
        Some(GuardFor::Policy | GuardFor::Refusal | GuardFor::Sequences) | None => {}
    }
}
