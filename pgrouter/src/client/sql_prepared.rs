//! SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE` in transaction mode: a
//! client's SQL prepared statements are re-created on whichever server
//! connection it gets, and other clients' are dropped from it first.

use std::sync::Arc;

use pgrouter_parser::{Analysis, DiscardKind, StatementKind};

use super::expect::Reply;
use super::prepared::SqlPrepared;
use super::session::Session;
use crate::protocol::frontend;

impl Session {
    /// The same fixups for SQL sent through Parse: run as unnamed extended
    /// statements ahead of the client's own Parse, answers dropped.
    pub(super) fn inject_fixups_extended(&mut self, analysis: &Analysis, sql: &str) {
        for statement in self.sql_prepared_fixups(analysis, sql) {
            frontend::write_parse(&mut self.to_server, "", &statement, &[]);
            frontend::bind_execute_unnamed(&mut self.to_server);
            self.expect.swallow(Reply::Parse(None));
            self.expect.swallow(Reply::Bind);
            self.expect.swallow(Reply::Execute);
        }
    }

    /// SQL-level prepared statements keep the client's names on the server,
    /// so the router keeps each server's set in line with the client's:
    /// re-creates the client's statement where it is missing or different,
    /// removes another client's statement of the same name before an EXECUTE
    /// (PostgreSQL then reports 26000 as it would), and lets a duplicate
    /// PREPARE fail with 42P05. Returns statements to run first.
    pub(super) fn sql_prepared_fixups(&mut self, analysis: &Analysis, sql: &str) -> Vec<String> {
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
                                inject.push(deallocate(name));
                            }
                            inject.push(mine.prepare_sql.to_string());
                            server
                                .sql_prepared
                                .insert(name.clone(), mine.prepare_sql.clone());
                        }
                        continue;
                    }
                    if on_server.is_some() {
                        inject.push(deallocate(name));
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
                            inject.push(deallocate(name));
                            server.sql_prepared.remove(name);
                        }
                        continue;
                    };
                    if on_server.as_deref() != Some(&*p.prepare_sql) {
                        if on_server.is_some() {
                            inject.push(deallocate(name));
                        }
                        inject.push(p.prepare_sql.to_string());
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
