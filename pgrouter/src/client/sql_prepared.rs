//! SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE` in transaction mode: a
//! client's SQL prepared statements are re-created on whichever server
//! connection it gets, and other clients' are dropped from it first.

use std::sync::Arc;

use pgrouter_parser::{Analysis, DiscardKind, StatementKind};

use super::expect::GuardFor;
use super::prepared::SqlPrepared;
use super::session::Session;

impl Session {
    /// Runs the fixups a statement needs (see [`Self::sql_prepared_fixups`])
    /// ahead of it, as guards: should one fail, its error is the client's
    /// statement's (see `replay.rs`). `boundary`: nothing of the client's is
    /// in the server's current transaction, so the fixups commit on their own.
    pub(super) fn inject_fixups(&mut self, analysis: &Analysis, sql: &str, boundary: bool) {
        let fixups = self.sql_prepared_fixups(analysis, sql);
        if fixups.is_empty() {
            return;
        }
        self.replay_sql_prepared(fixups);
        if boundary {
            self.commit_replay();
        }
    }

    /// SQL-level prepared statements keep the client's names on the server,
    /// so the router keeps each server's set in line with the client's:
    /// re-creates the client's statement where it is missing or different,
    /// removes another client's statement of the same name before an EXECUTE
    /// (PostgreSQL then reports 26000 as it would), and lets a duplicate
    /// PREPARE fail with 42P05. Returns statements to run first, each with
    /// what it changes on the server (to take back should it not run).
    pub(super) fn sql_prepared_fixups(
        &mut self,
        analysis: &Analysis,
        sql: &str,
    ) -> Vec<(String, GuardFor)> {
        let mut inject = Vec::new();
        if !touches_sql_prepared(analysis) {
            return inject;
        }
        let mut prepare_texts = self.prepare_texts(analysis, sql);
        let Some(held) = self.server.as_mut() else {
            return inject;
        };
        let server = &mut held.conn.statements;
        let deallocate = |name: &str| format!("DEALLOCATE {}", super::params::quote_ident(name));
        let undo = |name: &str, before: &Option<Arc<str>>| GuardFor::SqlPrepared {
            name: name.into(),
            before: before.clone(),
        };
        let mut discarded = false;
        for (index, s) in analysis.statements.iter().enumerate() {
            match &s.kind {
                StatementKind::Prepare { name } => {
                    let on_server = server.sql_prepared.get(name).cloned();
                    if let Some(mine) = self.sql_prepared.get(name) {
                        // The client already has this name: make sure the
                        // server has the client's statement, so PostgreSQL
                        // reports the duplicate (42P05) as it would.
                        if on_server.as_deref() != Some(&*mine.prepare_sql) {
                            if on_server.is_some() {
                                inject.push((deallocate(name), undo(name, &on_server)));
                            }
                            inject.push((mine.prepare_sql.to_string(), undo(name, &on_server)));
                            server
                                .sql_prepared
                                .insert(name.clone(), mine.prepare_sql.clone());
                        }
                        continue;
                    }
                    if on_server.is_some() {
                        inject.push((deallocate(name), undo(name, &on_server)));
                    }
                    match prepare_texts.get_mut(index).and_then(Option::take) {
                        Some(prepared) => {
                            server
                                .sql_prepared
                                .insert(name.clone(), prepared.prepare_sql.clone());
                            self.sql_prepared.insert(name.clone(), prepared);
                        }
                        None => {
                            server.sql_prepared.remove(name);
                        }
                    }
                }
                StatementKind::Execute { name } => {
                    let on_server = server.sql_prepared.get(name).cloned();
                    let Some(p) = self.sql_prepared.get(name) else {
                        // Not this client's: another client's statement of
                        // that name must not run; PostgreSQL reports 26000.
                        if on_server.is_some() {
                            inject.push((deallocate(name), undo(name, &on_server)));
                            server.sql_prepared.remove(name);
                        }
                        continue;
                    };
                    if on_server.as_deref() != Some(&*p.prepare_sql) {
                        if on_server.is_some() {
                            inject.push((deallocate(name), undo(name, &on_server)));
                        }
                        inject.push((p.prepare_sql.to_string(), undo(name, &on_server)));
                        server
                            .sql_prepared
                            .insert(name.clone(), p.prepare_sql.clone());
                    }
                }
                StatementKind::Deallocate { name: Some(n) } => {
                    self.sql_prepared.remove(n);
                    server.sql_prepared.remove(n);
                }
                StatementKind::Deallocate { name: None } => {
                    self.sql_prepared.clear();
                    server.clear();
                }
                StatementKind::Discard(DiscardKind::All) => {
                    self.sql_prepared.clear();
                    self.statements.clear();
                    server.clear();
                    discarded = true;
                }
                _ => {}
            }
        }
        if discarded {
            // DISCARD ALL takes every setting back to the server's login
            // value (reported ones arrive again in ParameterStatus).
            held.conn.forget_session_state();
        }
        inject
    }

    /// For each PREPARE in the string (by statement index), its own text and
    /// analysis: the whole string when it is the only statement, else its
    /// share as PostgreSQL's parser splits the string.
    fn prepare_texts(&self, analysis: &Analysis, sql: &str) -> Vec<Option<SqlPrepared>> {
        let is_prepare =
            |s: &pgrouter_parser::StatementInfo| matches!(s.kind, StatementKind::Prepare { .. });
        if !analysis.statements.iter().any(is_prepare) {
            return Vec::new();
        }
        if analysis.statements.len() == 1 {
            return vec![Some(SqlPrepared {
                prepare_sql: sql.into(),
                analysis: Arc::new(analysis.clone()),
            })];
        }
        let parts = pgrouter_parser::split_statements(sql).unwrap_or_default();
        if parts.len() != analysis.statements.len() {
            return Vec::new(); // not tracked; the server's copy is forgotten
        }
        analysis
            .statements
            .iter()
            .zip(parts)
            .map(|(s, text)| {
                is_prepare(s).then(|| SqlPrepared {
                    prepare_sql: text.trim().into(),
                    analysis: self.analyze(text),
                })
            })
            .collect()
    }
}

/// Whether a statement of `analysis` creates, runs or drops SQL prepared
/// statements (the only ones [`Session::sql_prepared_fixups`] looks at).
pub(super) fn touches_sql_prepared(analysis: &Analysis) -> bool {
    analysis.statements.iter().any(|s| {
        matches!(
            s.kind,
            StatementKind::Prepare { .. }
                | StatementKind::Execute { .. }
                | StatementKind::Deallocate { .. }
                | StatementKind::Discard(DiscardKind::All)
        )
    })
}
