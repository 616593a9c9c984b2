//! `INSERT INTO t VALUES (...)` names no columns: which value is the shard
//! key depends on the table's column order, learnt from shard 0's catalog
//! (every shard has the table alike) before the statement is routed.

use std::sync::Arc;

use pgrouter_parser::shard::Relation;
use pgrouter_parser::{Analysis, StatementKind};

use super::super::params::{quote_ident, quote_literal};
use crate::client::routing::Routed;
use crate::client::session::Session;
use crate::pool::Pool;
use crate::protocol::frontend::parse_bind_names;
use crate::protocol::next_frame;
use crate::router::{self, Refusal, Role};

impl Session {
    /// Learns the column lists of sharded tables a simple Query inserts
    /// into or copies without naming columns (a failure leaves the planner
    /// to refuse the statement, asking for a column list). Extended-protocol
    /// statements learn them only when the planner asks
    /// ([`Self::route_learning_columns`]): looking at every Bind would cost
    /// every point query a statement lookup.
    pub(in crate::client) async fn learn_insert_columns(&mut self, tag: u8, len: usize) {
        if tag != b'Q' || self.shard_map.as_ref().is_none() {
            return;
        }
        let Some(analysis) = self.peek_analysis(tag, len) else {
            return;
        };
        if wants_columns(&analysis) {
            self.learn_columns_for(&[analysis]).await;
        }
    }

    /// [`Self::route_arrived_batch`], learning the columns of tables the
    /// batch inserts into without a column list when the planner needs
    /// them, and routing it again.
    pub(in crate::client) async fn route_learning_columns(
        &mut self,
        tag: u8,
    ) -> Option<Result<Routed, Refusal>> {
        let routed = self.route_arrived_batch(tag);
        let routed = match routed {
            Some(Err(r)) if r.message.contains(router::COLUMNS_UNKNOWN) => {
                let analyses = self.batch_analyses();
                self.learn_columns_for(&analyses).await;
                self.route_arrived_batch(tag)
            }
            routed => routed,
        };
        match routed {
            // PostgreSQL's own error, when it rejects the statement anyway
            // (`refusal_check.rs`).
            // Boxed: a large future on a rare path, kept out of the state
            // of this one, which every batch polls.
            Some(Err(r)) => Some(Err(Box::pin(self.prefer_postgres_error(r)).await)),
            routed => routed,
        }
    }

    /// The analyses of the statements of the batch at the front of the
    /// buffer (up to its Sync, or its Query).
    fn batch_analyses(&self) -> Vec<Arc<Analysis>> {
        let mut out = Vec::new();
        let mut unnamed = self.unnamed.clone();
        let mut at = 0;
        while let Ok(Some(frame)) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)
        {
            let body = frame.body(&self.cbuf[at..]);
            let start = at;
            at += frame.total_len;
            let analysis = match frame.tag {
                b'Q' => self.message_analysis(b'Q', start, frame.total_len).ok(),
                b'P' => self
                    .message_analysis(b'P', start, frame.total_len)
                    .ok()
                    .inspect(|a| {
                        if body.first() == Some(&0) {
                            unnamed = Some(a.clone());
                        }
                    }),
                b'B' => parse_bind_names(body)
                    .ok()
                    .and_then(|b| self.statement_analysis(b.statement, &unnamed)),
                _ => None,
            };
            out.extend(analysis);
            if matches!(frame.tag, b'Q' | b'S') {
                break;
            }
        }
        out
    }

    /// Whether `analysis` inserts into (or copies) a sharded table without
    /// a column list whose columns the router does not know yet.
    pub(in crate::client) fn columns_unknown(&self, analysis: &Analysis) -> bool {
        let Some(map) = self.shard_map.as_ref() else {
            return false;
        };
        wants_columns(analysis)
            && columns_wanted(analysis)
                .iter()
                .any(|r| map.relation(r).is_some() && map.known_columns(r).is_none())
    }

    /// Learns the columns `analyses` need and the router does not know.
    pub(in crate::client) async fn learn_columns_for(&mut self, analyses: &[Arc<Analysis>]) {
        let Some(map) = self.shard_map.as_ref().cloned() else {
            return;
        };
        let mut wanted = Vec::new();
        for analysis in analyses {
            wanted.extend(columns_wanted(analysis));
        }
        for r in &wanted {
            if map.relation(r).is_none() || map.known_columns(r).is_some() {
                continue;
            }
            let name = match &r.schema {
                Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&r.name)),
                None => quote_ident(&r.name),
            };
            let sql = format!(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass({}) AND attnum > 0 \
                 AND NOT attisdropped ORDER BY attnum",
                quote_literal(&name)
            );
            let Some(slot) =
                self.pools.shards.first().and_then(|s| {
                    s.pick(Role::Primary, self.pools.balancing, &[], Default::default())
                })
            else {
                return;
            };
            let Ok(mut conn) = slot.pool.checkout().await else {
                return;
            };
            match conn.query_rows(&sql).await {
                Ok(rows) => {
                    let list: Vec<String> = rows
                        .into_iter()
                        .filter_map(|r| r.into_iter().next().flatten())
                        .collect();
                    Pool::checkin(conn);
                    if !list.is_empty() {
                        map.learn_columns(r, list);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not learn a table's columns"),
            }
        }
    }
}

/// Tables whose column order decides where `analysis`'s rows go: INSERTs
/// without a column list, and COPY of a whole table (without one, its rows
/// follow the table's columns too).
/// Whether [`columns_wanted`] has any, without building the list (asked
/// for every simple query on a sharded database).
fn wants_columns(analysis: &Analysis) -> bool {
    let inserts_without_columns = analysis
        .keys
        .iter()
        .flat_map(|k| k.insert.iter().chain(&k.nested_inserts))
        .any(|i| i.columns.is_empty());
    let copies = matches!(analysis.statements.as_slice(),
        [s] if matches!(s.kind, StatementKind::Copy { .. }) && !analysis.tables.is_empty());
    inserts_without_columns || copies
}

fn columns_wanted(analysis: &Analysis) -> Vec<Relation> {
    let mut wanted: Vec<Relation> = analysis
        .keys
        .iter()
        .flat_map(|k| k.insert.iter().chain(&k.nested_inserts))
        .filter(|i| i.columns.is_empty())
        .map(|i| i.relation.clone())
        .collect();
    if let [s] = analysis.statements.as_slice() {
        if matches!(s.kind, StatementKind::Copy { .. }) {
            for t in &analysis.tables {
                let (schema, name) = match t.rsplit_once('.') {
                    Some((s, n)) => (Some(s.to_string()), n.to_string()),
                    None => (None, t.clone()),
                };
                wanted.push(Relation {
                    schema,
                    name,
                    alias: None,
                });
            }
        }
    }
    wanted
}
