//! SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE` in transaction mode: a
//! client's SQL prepared statements are re-created on whichever server
//! connection it gets, and other clients' are dropped from it first.

use std::sync::Arc;

use pgrouter_parser::{Analysis, DiscardKind, StatementKind};

use super::expect::GuardFor;
use super::prepared::SqlPrepared;
use super::session::Session;
use crate::server::ServerStatements;

impl Session {
    /// Runs the fixups a statement needs (see [`Self::sql_prepared_fixups`])
    /// ahead of it, as guards: should one fail, its error is the client's
    /// statement's (see `replay.rs`). `boundary`: nothing of the client's is
    /// in the server's current transaction, so the fixups commit on their own.
    /// `executes`: the statement runs now (a Query, a Bind); a Parse only
    /// prepares it, and may run on another server than its Bind (asyncpg
    /// parses and binds in two round trips).
    pub(super) fn inject_fixups(
        &mut self,
        analysis: &Analysis,
        sql: &str,
        boundary: bool,
        executes: bool,
    ) {
        let fixups = self.sql_prepared_fixups(analysis, sql, executes);
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
    ///
    /// Only an `EXECUTE` needs its statement at Parse (a Describe of it
    /// describes that statement's result); PREPARE, DEALLOCATE and DISCARD
    /// ALL change the client's set when they run (`executes`), on the
    /// server that runs them.
    pub(super) fn sql_prepared_fixups(
        &mut self,
        analysis: &Analysis,
        sql: &str,
        executes: bool,
    ) -> Vec<(String, GuardFor)> {
        let mut inject = Vec::new();
        if !touches_sql_prepared(analysis) {
            return inject;
        }
        let discard_all_runs = self.discard_all_runs(analysis);
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
                StatementKind::Execute { name } => {
                    executable_here(name, self.sql_prepared.get(name), server, &mut inject);
                }
                _ if !executes => {}
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
                            self.pending_prepares
                                .sent(name, held.expect.outstanding_ready());
                        }
                        None => {
                            server.sql_prepared.remove(name);
                        }
                    }
                }
                StatementKind::Deallocate { name: Some(n) } => {
                    let mine = self.sql_prepared.remove(n);
                    if let Some(mine) = &mine {
                        // Gone from this server since (another client had
                        // it): made again, so that the DEALLOCATE succeeds
                        // as on the client's own connection.
                        executable_here(n, Some(mine), server, &mut inject);
                    }
                    server.sql_prepared.remove(n);
                    if mine.is_none() && server.take_shared_named(n) {
                        // Another client's protocol-level statement: gone
                        // before the client's DEALLOCATE, which then fails
                        // (26000) as the client never prepared it.
                        inject.push((deallocate(n), GuardFor::Policy));
                    }
                }
                StatementKind::Deallocate { name: None } => {
                    self.sql_prepared.clear();
                    self.statements.clear();
                    self.local_explains.clear();
                    server.clear();
                }
                StatementKind::Discard(DiscardKind::All) if discard_all_runs => {
                    self.sql_prepared.clear();
                    self.statements.clear();
                    self.local_explains.clear();
                    server.clear();
                    discarded = true;
                }
                _ => {}
            }
        }
        // `CREATE TABLE t AS EXECUTE p`, `EXPLAIN EXECUTE p`: as `EXECUTE p`.
        for name in &analysis.nested_executes {
            executable_here(name, self.sql_prepared.get(name), server, &mut inject);
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

/// The client's own `PREPARE`s not yet answered. A PREPARE that fails (or
/// is skipped after an earlier error of its request) creates nothing, as
/// in PostgreSQL: the router forgets it, so that a later `EXECUTE` gets
/// 26000 and a corrected `PREPARE` of the same name runs, instead of the
/// failed text being replayed.
#[derive(Debug, Default)]
pub(super) struct PendingPrepares {
    /// (number of the request it is part of, name), in the order sent.
    queue: std::collections::VecDeque<(u64, String)>,
    /// Requests answered (ReadyForQuery messages the client got).
    answered: u64,
}

impl PendingPrepares {
    /// A PREPARE of `name` is sent; `owed`: ReadyForQuery messages the
    /// client awaits for requests sent before this one.
    pub fn sent(&mut self, name: &str, owed: usize) {
        let request = self.answered + owed as u64 + 1;
        self.queue.push_back((request, name.to_string()));
    }

    /// CommandComplete of the client's request: a `PREPARE` tag confirms
    /// the oldest one.
    pub fn on_command_complete(&mut self, tag: &[u8]) {
        if !self.queue.is_empty() && tag.starts_with(b"PREPARE") {
            self.queue.pop_front();
        }
    }

    /// An error answers the current request: its PREPAREs not confirmed
    /// yet did not happen. Returns their names.
    pub fn on_error(&mut self) -> Vec<String> {
        let current = self.answered + 1;
        let mut failed = Vec::new();
        while let Some((request, _)) = self.queue.front() {
            if *request != current {
                break;
            }
            if let Some((_, name)) = self.queue.pop_front() {
                failed.push(name);
            }
        }
        failed
    }

    /// ReadyForQuery: the current request is over.
    pub fn on_ready(&mut self) {
        self.answered += 1;
        while self.queue.front().is_some_and(|(r, _)| *r <= self.answered) {
            self.queue.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl Session {
    /// Whether a `DISCARD ALL` of `analysis` will discard anything.
    /// PostgreSQL runs it only alone in its query string and outside a
    /// transaction block (`PreventInTransactionBlock`); anywhere else it
    /// fails (25001, or 25P02 in a failed transaction) and changes nothing,
    /// so the router must keep the client's statements and settings too.
    /// (A `BEGIN` the router answered itself on a sharded database, see
    /// `deferred_begin.rs`, opened a block as well.)
    pub(super) fn discard_all_runs(&self, analysis: &Analysis) -> bool {
        analysis.statements.len() == 1 && !self.flow.in_tx() && self.deferred_begin.is_none()
    }
}

/// Whether a statement of `analysis` creates, runs or drops SQL prepared
/// statements (the only ones [`Session::sql_prepared_fixups`] looks at).
/// Makes `EXECUTE name` on the held server run the client's own statement
/// (`mine`): re-created there when missing or different. Not the client's,
/// another client's statement of that name (its SQL PREPARE, or a
/// protocol-level statement the router named `pgrouter_<n>`) must not run:
/// it is removed first, and PostgreSQL reports 26000 as it would.
fn executable_here(
    name: &str,
    mine: Option<&SqlPrepared>,
    server: &mut ServerStatements,
    inject: &mut Vec<(String, GuardFor)>,
) {
    let deallocate = format!("DEALLOCATE {}", super::params::quote_ident(name));
    let on_server = server.sql_prepared.get(name).cloned();
    let undo = GuardFor::SqlPrepared {
        name: name.into(),
        before: on_server.clone(),
    };
    let Some(p) = mine else {
        if on_server.is_some() {
            inject.push((deallocate, undo));
            server.sql_prepared.remove(name);
        } else if server.take_shared_named(name) {
            inject.push((deallocate, GuardFor::Policy));
        }
        return;
    };
    if on_server.as_deref() != Some(&*p.prepare_sql) {
        if on_server.is_some() {
            inject.push((deallocate, undo.clone()));
        }
        inject.push((p.prepare_sql.to_string(), undo));
        server
            .sql_prepared
            .insert(name.to_string(), p.prepare_sql.clone());
    }
}

pub(super) fn touches_sql_prepared(analysis: &Analysis) -> bool {
    !analysis.nested_executes.is_empty()
        || analysis.statements.iter().any(|s| {
            matches!(
                s.kind,
                StatementKind::Prepare { .. }
                    | StatementKind::Execute { .. }
                    | StatementKind::Deallocate { .. }
                    | StatementKind::Discard(DiscardKind::All)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::PendingPrepares;

    #[test]
    fn a_failed_prepare_is_forgotten_a_confirmed_one_kept() {
        let mut p = PendingPrepares::default();
        // "PREPARE a ...; SELECT 1/0": a is confirmed before the error.
        p.sent("a", 0);
        p.on_command_complete(b"PREPARE");
        assert!(p.on_error().is_empty());
        p.on_ready();
        // "PREPARE b AS <error>".
        p.sent("b", 0);
        assert_eq!(p.on_error(), vec!["b".to_string()]);
        p.on_ready();
        assert!(p.is_empty());
    }

    #[test]
    fn an_error_of_an_earlier_request_spares_later_prepares() {
        let mut p = PendingPrepares::default();
        // Two queries in flight: "SELECT 1/0", then "PREPARE c ...".
        p.sent("c", 1);
        assert!(p.on_error().is_empty(), "the error is the first request's");
        p.on_ready();
        p.on_command_complete(b"PREPARE");
        p.on_ready();
        assert!(p.is_empty());
    }
}
