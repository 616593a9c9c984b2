//! Temporary relations of a session on a sharded database.
//!
//! `CREATE TEMP TABLE t` runs on one shard (shard 0 or the hinted one) and
//! pins the session there. DDL is otherwise sent to every shard, where `t`
//! does not exist (42P01) or, worse, names an ordinary table of the same
//! name that the temporary one hides on its own shard. So the session
//! remembers the names of the temporary relations it created and where;
//! a statement naming only those runs on that shard, and DDL naming them
//! together with other tables is refused (it would have to run on one
//! shard and on every shard at once).
//!
//! A name counts once the transaction that created it has committed
//! (a rolled-back CREATE made nothing, and the name may be an ordinary
//! table's). It is forgotten as soon as a `DROP` naming it is sent (if
//! that DROP then fails, the table is still there, but DDL on it runs on
//! every shard again and fails there: an error, never a wrong change),
//! and all are forgotten when the session's connections are reset.

use pgrouter_parser::{Analysis, StatementKind};

use crate::router::Refusal;

/// The session's temporary relations and the shard holding them.
#[derive(Debug, Default)]
pub(super) struct TempObjects {
    shard: usize,
    names: Vec<String>,
    /// Created by statements whose transaction has not committed yet.
    pending: Vec<String>,
    /// An error or a rollback since `pending` began.
    failed: bool,
}

/// What the session's temporary relations decide about a statement.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TempRoute {
    /// It names none of them: routed as usual.
    NotTemp,
    /// It names only temporary relations: it runs on this shard.
    Shard(usize),
}

impl TempObjects {
    /// `analysis` was sent to `shard`: remembers the temporary relations it
    /// creates there (the session then holds that shard's connection).
    pub(super) fn created(&mut self, analysis: &Analysis, shard: usize) {
        if analysis.temp_relations.is_empty() {
            return;
        }
        if self.shard != shard {
            // Temporary objects live on one shard per session (the first
            // ones pinned it): names made elsewhere are not followed.
            if !self.names.is_empty() || !self.pending.is_empty() {
                return;
            }
            self.shard = shard;
        }
        self.pending.extend(analysis.temp_relations.iter().cloned());
    }

    /// Nothing is being tracked (the usual case: no per-answer work).
    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// The server reported an error, or a transaction rolled back.
    pub(super) fn on_error(&mut self) {
        self.failed = true;
    }

    /// ReadyForQuery: outside a transaction, names created by a committed
    /// one take effect.
    pub(super) fn on_ready(&mut self, status: u8) {
        if status != b'I' {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if !std::mem::take(&mut self.failed) {
            for name in pending {
                if !self.names.contains(&name) {
                    self.names.push(name);
                }
            }
        }
    }

    /// The session's connections were reset (DISCARD, a lost server): it
    /// holds no temporary objects any more.
    pub(super) fn forget_all(&mut self) {
        *self = TempObjects::default();
    }

    /// Where `analysis` must run because of the temporary relations it
    /// names; a refusal for DDL mixing them with other tables.
    pub(super) fn route(&self, analysis: &Analysis) -> Result<TempRoute, Refusal> {
        if self.names.is_empty() || analysis.tables.is_empty() {
            return Ok(TempRoute::NotTemp);
        }
        let temp = |t: &String| self.temp_name(t).is_some();
        if !analysis.tables.iter().any(temp) {
            return Ok(TempRoute::NotTemp);
        }
        if analysis.tables.iter().all(temp) {
            return Ok(TempRoute::Shard(self.shard));
        }
        let ddl = analysis
            .statements
            .iter()
            .any(|s| matches!(s.kind, StatementKind::Ddl));
        if !ddl {
            return Ok(TempRoute::NotTemp);
        }
        Err(Refusal {
            sqlstate: "0A000",
            message: "pgrouter: DDL naming temporary and regular tables together is not supported on a \
                      sharded database (temporary tables live on one shard, the others on every shard); \
                      HINT: send them as separate statements"
                .into(),
        })
    }

    /// `analysis` is being sent: names it drops are forgotten.
    pub(super) fn sent(&mut self, analysis: &Analysis) {
        use pgrouter_parser::SessionState;
        if analysis.session_state.ends.intersects(SessionState::TEMP) {
            // DISCARD TEMP / ALL: even if it fails, forgetting is safe.
            self.forget_all();
            return;
        }
        if self.names.is_empty()
            || !analysis
                .session_state
                .may_end
                .intersects(SessionState::TEMP)
        {
            return; // not a DROP
        }
        let dropped: Vec<String> = analysis
            .tables
            .iter()
            .filter_map(|t| self.temp_name(t).map(str::to_owned))
            .collect();
        self.names.retain(|n| !dropped.contains(n));
    }

    /// The temporary relation `table` (as `Analysis::tables` writes it:
    /// `t` or `pg_temp.t`) names, if any.
    fn temp_name<'a>(&self, table: &'a str) -> Option<&'a str> {
        let name = match table.rsplit_once('.') {
            None => table,
            Some((schema, name)) if pgrouter_parser::is_temp_schema(schema) => name,
            Some(_) => return None,
        };
        self.names.iter().any(|n| n == name).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgrouter_parser::analyze;

    fn committed(temps: &mut TempObjects, sql: &str, shard: usize) {
        let a = analyze(sql, &[]);
        temps.sent(&a);
        temps.created(&a, shard);
        temps.on_ready(b'I');
    }

    fn route(temps: &TempObjects, sql: &str) -> Result<TempRoute, Refusal> {
        temps.route(&analyze(sql, &[]))
    }

    #[test]
    fn ddl_naming_only_committed_temp_tables_runs_on_their_shard() {
        let mut temps = TempObjects::default();
        committed(&mut temps, "CREATE TEMP TABLE t (a int)", 2);
        committed(&mut temps, "CREATE TABLE pg_temp.u (a int)", 2);
        committed(
            &mut temps,
            "CREATE TEMP TABLE gone (a int) ON COMMIT DROP",
            2,
        );
        assert_eq!(
            route(&temps, "ALTER TABLE t ADD b int").unwrap(),
            TempRoute::Shard(2)
        );
        assert_eq!(
            route(&temps, "DROP TABLE t, pg_temp.u").unwrap(),
            TempRoute::Shard(2)
        );
        assert_eq!(
            route(&temps, "DROP TABLE public.t").unwrap(),
            TempRoute::NotTemp
        );
        assert_eq!(
            route(&temps, "DROP TABLE gone").unwrap(),
            TempRoute::NotTemp
        );
        assert_eq!(
            route(&temps, "SELECT * FROM t JOIN other USING (a)").unwrap(),
            TempRoute::NotTemp
        );
        let mixed = route(&temps, "DROP TABLE t, other").unwrap_err();
        assert_eq!(mixed.sqlstate, "0A000");
    }

    #[test]
    fn rolled_back_creates_and_sent_drops_leave_no_name() {
        let mut temps = TempObjects::default();
        let a = analyze("CREATE TEMP TABLE t (a int)", &[]);
        temps.created(&a, 0);
        temps.on_ready(b'T');
        temps.on_error();
        temps.on_ready(b'I');
        assert_eq!(route(&temps, "DROP TABLE t").unwrap(), TempRoute::NotTemp);
        committed(&mut temps, "CREATE TEMP TABLE t (a int)", 0);
        temps.sent(&analyze("DROP TABLE t", &[]));
        assert_eq!(route(&temps, "DROP TABLE t").unwrap(), TempRoute::NotTemp);
        committed(&mut temps, "CREATE TEMP TABLE t (a int)", 0);
        temps.sent(&analyze("DISCARD TEMP", &[]));
        assert_eq!(
            route(&temps, "ALTER TABLE t ADD b int").unwrap(),
            TempRoute::NotTemp
        );
    }
}
