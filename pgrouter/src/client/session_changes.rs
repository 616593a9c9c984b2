//! What a statement changes in the client's session, noted as it is sent:
//! the predicted transaction state, session-level SET/RESET (and plain
//! `set_config` calls) as pending changes, and changes the router cannot
//! follow, which get the server connection reset.

use pgrouter_parser::{
    Analysis, DiscardKind, ResetTarget, SessionState, SessionStateChange, SetKind, StatementKind,
    TxEffect,
};

use super::session::Session;
use super::tracking::SetChange;
use crate::router;

/// One SELECT/INSERT/UPDATE/DELETE/MERGE that calls no `set_config` and no
/// function of unknown effect, creates no temporary object and no other
/// session state (advisory lock, sequence state, ...) and sets nothing:
/// the usual statement, for which the bookkeeping below has nothing to do.
/// Asked first so that such a statement skips it (~100 instructions per
/// statement on the relay path), with the same outcome.
#[inline]
fn leaves_session_alone(a: &Analysis) -> bool {
    matches!(
        a.statements.as_slice(),
        [s] if matches!(
            s.kind,
            StatementKind::Select
                | StatementKind::Insert
                | StatementKind::Update
                | StatementKind::Delete
                | StatementKind::Merge
        )
    ) && !a.calls_set_config
        && !a.calls_unknown_function
        && !a.creates_by_search_path
        && !a.temp_search_path
        && a.temp_relations.is_empty()
        && a.nested_executes.is_empty()
        && a.session_settings.is_empty()
        && a.session_state.is_empty()
}

impl Session {
    /// A `set_config()` call the router cannot follow (see
    /// `Analysis::session_settings` for those it can) may change any
    /// setting, so the server is reset before its next client.
    /// That includes SQL `EXECUTE` of a statement PREPAREd with such a call.
    ///
    /// A call of a function that is not one of PostgreSQL's own may leave
    /// any session state at all (`set_config`, a temporary table, an
    /// advisory lock, LISTEN): the connection is cleaned with `DISCARD ALL`
    /// before its next statement, whoever sends it.
    pub(super) fn note_untracked_changes(&mut self, analysis: &Analysis) {
        if leaves_session_alone(analysis) {
            return;
        }
        // Most clients have no SQL-level prepared statements: no scan then.
        let executes = |unseen: fn(&Analysis) -> bool| {
            !self.sql_prepared.is_empty()
                && analysis.statements.iter().any(|s| match &s.kind {
                    StatementKind::Execute { name } => self
                        .sql_prepared
                        .get(name)
                        .is_some_and(|p| unseen(&p.analysis)),
                    _ => false,
                })
        };
        let reset = analysis.calls_set_config || executes(|a| a.calls_set_config);
        let discard = analysis.calls_unknown_function || executes(|a| a.calls_unknown_function);
        if reset || discard {
            if let Some(held) = self.server.as_mut() {
                held.conn.needs_reset |= reset;
                held.conn.needs_discard |= discard;
            }
        }
    }

    /// Session state the statement creates or ends (transaction mode): see
    /// `pinning.rs`. A lone SQL `EXECUTE` counts as its prepared statement.
    /// Inline up to the usual outcome (a plain statement changes nothing).
    #[inline]
    pub(super) fn note_session_state(&mut self, analysis: &std::sync::Arc<Analysis>) {
        if self.shard_map.is_some() {
            self.temps.sent(analysis);
            if !analysis.temp_relations.is_empty() {
                let shard = self.server.as_ref().map_or(0, |held| held.shard);
                self.temps.created(analysis, shard);
            }
        }
        if self.mode != pgrouter_config::PoolMode::Transaction {
            return;
        }
        if analysis.is_write {
            if let Some(held) = self.server.as_mut() {
                held.conn.wrote = true;
            }
        }
        if leaves_session_alone(analysis) {
            return;
        }
        self.note_session_state_changes(analysis);
    }

    /// [`Self::note_session_state`] of a statement that may change it.
    fn note_session_state_changes(&mut self, analysis: &std::sync::Arc<Analysis>) {
        self.temp_search_path |= analysis.temp_search_path;
        let mut change = self.session_state_of(analysis);
        if !self.sql_prepared.is_empty() {
            let executed = self.query_analysis(analysis.clone());
            change.merge(self.session_state_of(&executed));
        }
        if self.refuse_session_state && change.creates.intersects(SessionState::SEQUENCE) {
            // Allowed only inside a transaction block (`check_policy_now`):
            // discarded after it instead of pinning.
            change.creates = change.creates.without(SessionState::SEQUENCE);
            self.sequence_state_in_tx = true;
        }
        if !change.creates.is_empty() && self.shard_map.is_some() {
            // Its shard's connection comes back to the session (`kept.rs`).
            if let Some(held) = self.server.as_mut() {
                held.kept = true;
            }
        }
        if !change.is_empty() {
            self.pins.sent(change);
        }
    }

    /// The session state `analysis` creates or ends in this session: its
    /// own, plus a temporary object for an unqualified CREATE once the
    /// client may have put `pg_temp` on its search_path. Whether it did is
    /// then asked of the server after the transaction (`may_end`), so a
    /// CREATE that made an ordinary table does not keep the client pinned.
    pub(super) fn session_state_of(&self, analysis: &Analysis) -> SessionStateChange {
        let mut change = analysis.session_state;
        if analysis.creates_by_search_path && (self.temp_search_path || analysis.temp_search_path) {
            change.creates |= SessionState::TEMP;
            change.may_end |= SessionState::TEMP;
        }
        change
    }

    /// Keeps the predicted transaction state current as statements are sent.
    pub(super) fn predict_tx(&mut self, analysis: &Analysis) {
        if let Some(open) = router::transaction_effect(analysis) {
            self.flow.predict_tx(open);
        }
    }

    /// Session-level SET/RESET statements become pending changes; they take
    /// effect for the session when their transaction ends well.
    /// `set_config(name, value, false)` calls known to run count as `SET`.
    #[inline]
    pub(super) fn track_session_changes(&mut self, analysis: &Analysis) {
        if leaves_session_alone(analysis) {
            return;
        }
        self.track_statement_changes(analysis);
    }

    /// [`Self::track_session_changes`] of a statement that may make some.
    fn track_statement_changes(&mut self, analysis: &Analysis) {
        for (i, s) in analysis.statements.iter().enumerate() {
            for setting in analysis
                .session_settings
                .iter()
                .filter(|c| c.statement == i)
            {
                self.sets.sent(SetChange::Set {
                    name: setting.name.clone(),
                    value: setting.value.clone(),
                });
            }
            if let StatementKind::Set(set) = &s.kind {
                if set.kind == SetKind::SessionCharacteristics {
                    for (name, value) in characteristics_settings(set.value.as_deref()) {
                        self.sets.sent(SetChange::Set {
                            name: name.into(),
                            value,
                        });
                    }
                    continue;
                }
            }
            let change = match &s.kind {
                StatementKind::Set(set) if !set.local => match (&set.kind, &set.value) {
                    (SetKind::Value | SetKind::TimeZone, Some(v)) => SetChange::Set {
                        name: set.name.clone(),
                        value: v.clone(),
                    },
                    (SetKind::Role, Some(v)) if !v.eq_ignore_ascii_case("none") => SetChange::Set {
                        name: "role".into(),
                        value: v.clone(),
                    },
                    // PostgreSQL: a new session user has no SET ROLE of
                    // the old one (its `role` reads "none" again).
                    (SetKind::Role | SetKind::SessionAuthorization, _) => SetChange::Reset {
                        name: "role".into(),
                    },
                    (SetKind::Default, _) | (SetKind::Value | SetKind::TimeZone, None) => {
                        SetChange::Reset {
                            name: set.name.clone(),
                        }
                    }
                    _ => continue,
                },
                StatementKind::Reset(ResetTarget::Name(name)) => {
                    SetChange::Reset { name: name.clone() }
                }
                StatementKind::Reset(ResetTarget::All) => SetChange::ResetAll,
                StatementKind::Discard(DiscardKind::All) if self.discard_all_runs(analysis) => {
                    SetChange::ResetAll
                }
                StatementKind::Transaction(TxEffect::Savepoint) if self.flow.in_tx() => {
                    self.sets.savepoint();
                    continue;
                }
                StatementKind::Transaction(TxEffect::RollbackTo) => {
                    self.sets.rollback_to_savepoint();
                    continue;
                }
                StatementKind::Transaction(TxEffect::Release) => {
                    self.sets.release_savepoint();
                    continue;
                }
                _ => continue,
            };
            self.sets.sent(change);
        }
    }
}

/// The settings `SET SESSION CHARACTERISTICS AS TRANSACTION <modes>` sets,
/// as PostgreSQL stores them: it is another spelling of SET
/// `default_transaction_isolation` / `_read_only` / `_deferrable`, so it is
/// carried to other server connections (and reset before another client
/// gets this one) like those. `modes` is the parser's text, e.g.
/// `ISOLATION LEVEL SERIALIZABLE, READ ONLY, NOT DEFERRABLE`.
fn characteristics_settings(modes: Option<&str>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for mode in modes.unwrap_or_default().split(", ") {
        let setting = match mode {
            "READ ONLY" => ("default_transaction_read_only", "on".to_string()),
            "READ WRITE" => ("default_transaction_read_only", "off".to_string()),
            "DEFERRABLE" => ("default_transaction_deferrable", "on".to_string()),
            "NOT DEFERRABLE" => ("default_transaction_deferrable", "off".to_string()),
            _ => match mode.strip_prefix("ISOLATION LEVEL ") {
                Some(level) => ("default_transaction_isolation", level.to_ascii_lowercase()),
                None => continue,
            },
        };
        out.push(setting);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{characteristics_settings, leaves_session_alone};

    /// The skip is taken by plain DML only: every statement that leaves
    /// anything in the session (or might) goes through the bookkeeping.
    #[test]
    fn only_plain_statements_leave_the_session_alone() {
        let alone = |sql: &str| leaves_session_alone(&pgrouter_parser::analyze(sql, &[]));
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "INSERT INTO t VALUES (1)",
            "DELETE FROM t WHERE id = 1",
            "SELECT now(), lower('A')",
        ] {
            assert!(alone(sql), "{sql}");
        }
        for sql in [
            "SET search_path = a",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT pg_advisory_lock(1)",
            "SELECT nextval('s')",
            "SELECT my_function()",
            "CREATE TEMP TABLE t (a int)",
            "SELECT 1; SELECT 2",
            "EXECUTE q",
            "PREPARE q AS SELECT 1",
            "LISTEN c",
            "BEGIN",
            "SAVEPOINT s",
            "DISCARD ALL",
        ] {
            assert!(!alone(sql), "{sql}");
        }
    }

    #[test]
    fn session_characteristics_are_the_default_transaction_settings() {
        assert_eq!(
            characteristics_settings(Some(
                "ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE"
            )),
            vec![
                (
                    "default_transaction_isolation",
                    "repeatable read".to_string()
                ),
                ("default_transaction_read_only", "on".to_string()),
                ("default_transaction_deferrable", "on".to_string()),
            ]
        );
        assert_eq!(
            characteristics_settings(Some("READ WRITE, NOT DEFERRABLE")),
            vec![
                ("default_transaction_read_only", "off".to_string()),
                ("default_transaction_deferrable", "off".to_string()),
            ]
        );
        assert!(characteristics_settings(None).is_empty());
    }
}
