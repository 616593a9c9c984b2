//! The session's side of shard-key routing: hand the router the values of
//! this execution (the query text's literals, the Bind's parameters and the
//! statement's declared parameter types), and keep a transaction (or a
//! session-mode session) on the one shard it started on — a statement whose
//! key needs another shard is refused (0A000) rather than run where its
//! rows are not.

use std::sync::Arc;

use pgrouter_config::PoolMode;
use pgrouter_parser::{Analysis, StatementKind};

use super::session::Session;
use crate::protocol::frontend::{parse_bind_names, parse_parse, parse_query, BindNames};
use crate::protocol::next_frame;
use crate::router::{self, BindParams, Refusal, ShardChoice, Values};

type Planned = Result<Option<ShardChoice>, Refusal>;

impl Session {
    /// The shard a simple query's keys need (`None`: no sharded table, or
    /// a hint or `SET pgrouter.shard` decides).
    pub(super) fn plan_query(&self, analysis: &Arc<Analysis>, body: &[u8]) -> Planned {
        let Some(map) = self.rt.shard_maps.get(&self.database) else {
            return Ok(None);
        };
        if self.shard_hinted(analysis) {
            return Ok(None);
        }
        let Ok(sql) = parse_query(body) else {
            return Ok(None);
        };
        // `EXECUTE name(...)` of a SQL-level PREPARE: its values are in the
        // EXECUTE's text, where the prepared statement's keys are not.
        let prepared = self.query_analysis(analysis.clone());
        if !Arc::ptr_eq(&prepared, analysis)
            && prepared.tables.iter().any(|t| map.table(t).is_some())
        {
            return Err(Refusal {
                sqlstate: "0A000",
                message: "pgrouter: EXECUTE of a SQL-level prepared statement on a sharded table is not \
                          supported; HINT: use the extended protocol (driver-prepared statements) or add \
                          /* pgrouter: shard=N */ to the EXECUTE"
                    .into(),
            });
        }
        router::plan_shard(
            analysis,
            &Values::Text(sql),
            map,
            self.sharding_key(analysis),
        )
    }

    /// The shard a Bind's execution needs. `unnamed` is the unnamed Parse of
    /// the same batch (its text and declared types), when there is one.
    pub(super) fn plan_bind(
        &self,
        analysis: &Arc<Analysis>,
        bind: &BindNames,
        unnamed: &Option<(&str, Vec<i32>)>,
    ) -> Planned {
        let Some(map) = self.rt.shard_maps.get(&self.database) else {
            return Ok(None);
        };
        if self.shard_hinted(analysis) {
            return Ok(None);
        }
        let Some(params) = BindParams::parse(bind.rest) else {
            return Ok(None); // malformed: the server reports it
        };
        let named = (!bind.statement.is_empty())
            .then(|| self.statements.get(bind.statement))
            .flatten();
        let (sql, types): (&str, &[i32]) = match (named, unnamed) {
            (Some(s), _) => (&s.sql, &s.param_types),
            (None, Some((sql, types))) => (sql, types),
            (None, None) => ("", &[]),
        };
        let values = Values::Bind {
            sql,
            params: &params,
            param_types: types,
        };
        router::plan_shard(analysis, &values, map, self.sharding_key(analysis))
    }

    /// A hint comment or `SET pgrouter.shard` overrides the keys.
    fn shard_hinted(&self, analysis: &Analysis) -> bool {
        analysis.hint.shard.is_some() || self.params.get("pgrouter.shard").is_some()
    }

    /// `SET pgrouter.sharding_key`, for statements other than the router's
    /// own settings (which must stay changeable whatever the key says).
    fn sharding_key(&self, analysis: &Analysis) -> Option<&str> {
        let key = self.params.get("pgrouter.sharding_key")?;
        let settings_only = analysis.statements.iter().all(|s| {
            matches!(
                s.kind,
                StatementKind::Set(_)
                    | StatementKind::Reset(_)
                    | StatementKind::Show
                    | StatementKind::Discard(_)
                    | StatementKind::Deallocate { .. }
            )
        });
        (!settings_only).then_some(key)
    }

    /// With a server held for a transaction (or for the whole session in
    /// session mode, or for an extended batch that cannot move any more): a
    /// statement whose keys need another shard than the held one is refused.
    /// Checked at a Query, at an unnamed Parse (with the Bind that follows it
    /// in the buffer) and at a Bind.
    pub(super) fn held_shard_refusal(&self, tag: u8, len: usize) -> Option<Refusal> {
        let held = self.server.as_ref()?;
        // Mid-batch, a Bind that cannot move the batch (something ran in it
        // already, or answers are still due) must fit the held shard too;
        // otherwise `bind_moves_batch` moves it.
        let mid_batch = self.unsynced && (self.executed_unsynced || !self.expect.is_empty());
        if !(self.in_tx || self.mode == PoolMode::Session || mid_batch) {
            return None;
        }
        // A transaction moves between shards' legs at its statements'
        // boundaries (`shards::tx_legs`).
        if self.in_tx && self.mode == PoolMode::Transaction && !mid_batch {
            return None;
        }
        self.rt.shard_maps.get(&self.database)?;
        let body = self.cbuf.get(5..len)?;
        let planned = match tag {
            b'Q' => {
                let analysis = self.analyze_query(body).ok()?;
                self.plan_query(&analysis, body)
            }
            b'P' if body.first() == Some(&0) => {
                let analysis = self.analyze_parse(body).ok()?;
                let p = parse_parse(body).ok()?;
                let unnamed = Some((p.sql, p.param_types));
                let mut at = len;
                loop {
                    let frame = next_frame(self.cbuf.get(at..)?, self.max_message).ok()??;
                    let fbody = frame.body(&self.cbuf[at..]);
                    at += frame.total_len;
                    match frame.tag {
                        b'B' => {
                            let b = parse_bind_names(fbody).ok()?;
                            if !b.statement.is_empty() {
                                return None;
                            }
                            break self.plan_bind(&analysis, &b, &unnamed);
                        }
                        b'S' | b'P' => return None,
                        _ => {}
                    }
                }
            }
            b'B' => {
                let b = parse_bind_names(body).ok()?;
                let analysis = self.statement_analysis(b.statement, &self.unnamed)?;
                match self.plan_bind(&analysis, &b, &None) {
                    // The unnamed statement's text was checked with its Parse
                    // (this Bind's literals are that text's, not seen here).
                    Err(r)
                        if b.statement.is_empty()
                            && r.message.starts_with(router::UNREADABLE_LITERAL) =>
                    {
                        return None;
                    }
                    planned => planned,
                }
            }
            _ => return None,
        };
        match planned {
            Err(refusal) => Some(refusal),
            Ok(Some(choice)) if choice.many.is_some() => Some(Refusal {
                sqlstate: "0A000",
                message: format!(
                    "pgrouter: this statement needs several shards ({}), which is not supported inside a \
                     transaction block yet; HINT: run it outside the transaction (it is atomic on its own)",
                    choice.reason
                ),
            }),
            Ok(Some(choice)) if choice.shard != held.shard => Some(Refusal {
                sqlstate: "0A000",
                message: format!(
                    "pgrouter: this {} runs on shard {}, but the statement's shard key ({}) is on shard {}; \
                     a transaction on several shards needs two-phase commit, which is not supported yet; \
                     HINT: SET pgrouter.sharding_key to the key before BEGIN, or send the statement outside \
                     the transaction",
                    if self.in_tx {
                        "transaction"
                    } else if self.mode == PoolMode::Session {
                        "session"
                    } else {
                        "batch"
                    },
                    held.shard,
                    choice.reason,
                    choice.shard
                ),
            }),
            Ok(_) => None,
        }
    }
}
