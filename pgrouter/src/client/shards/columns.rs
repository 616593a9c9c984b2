//! `INSERT INTO t VALUES (...)` names no columns: which value is the shard
//! key depends on the table's column order, learnt from shard 0's catalog
//! (every shard has the table alike) before the statement is routed.

use super::super::params::{quote_ident, quote_literal};
use crate::client::session::Session;
use crate::pool::Pool;
use crate::router::Role;

impl Session {
    /// Learns the column lists of sharded tables the next unit of work
    /// inserts into without naming columns (a failure leaves the planner to
    /// refuse the INSERT, asking for a column list).
    pub(in crate::client) async fn learn_insert_columns(&mut self, tag: u8, len: usize) {
        let Some(map) = self.rt.shard_maps.get(&self.database).cloned() else {
            return;
        };
        if !matches!(tag, b'Q' | b'P' | b'B') {
            return;
        }
        let Some(analysis) = self.peek_analysis(tag, len) else {
            return;
        };
        // INSERTs without a column list, and COPY of a whole sharded table
        // (without one, its rows follow the table's columns too).
        let mut wanted: Vec<pgrouter_parser::shard::Relation> = analysis
            .keys
            .iter()
            .filter_map(|k| k.insert.as_ref())
            .filter(|i| i.columns.is_empty())
            .map(|i| i.relation.clone())
            .collect();
        if let [s] = analysis.statements.as_slice() {
            if matches!(s.kind, pgrouter_parser::StatementKind::Copy { .. }) {
                for t in &analysis.tables {
                    let (schema, name) = match t.rsplit_once('.') {
                        Some((s, n)) => (Some(s.to_string()), n.to_string()),
                        None => (None, t.clone()),
                    };
                    wanted.push(pgrouter_parser::shard::Relation {
                        schema,
                        name,
                        alias: None,
                    });
                }
            }
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
