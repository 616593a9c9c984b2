//! Statements PostgreSQL has accepted at their Parse on a sharded
//! database, shared by every client of the runtime.
//!
//! On a sharded database the router answers a client's `PQprepare` itself
//! once one shard accepted the statement's Parse (`client/shards/
//! parse_check.rs`). Asking a shard costs a server connection for a round
//! trip; with many clients preparing the same few statements (pgbench -M
//! prepared) that would be one check per client and statement, each
//! competing with the clients' own transactions for the pool. Remembering
//! the accepted ones makes it about one check per statement.
//!
//! Only acceptances are kept: a rejection is answered once, by PostgreSQL,
//! and the client usually fixes the statement. A verdict is keyed by what
//! PostgreSQL's answer depends on: the logical database, the pool user,
//! the session's settings (`search_path` decides what a name means), the
//! text and the declared parameter types. An accepted statement that fails
//! later (a table dropped meanwhile) fails at its Bind, with PostgreSQL's
//! error, as it did before the check existed. DDL sent through the router
//! clears the memo (`client/shards/write.rs`). The memo belongs to the
//! [`crate::state::Runtime`], so a reload starts an empty one (a reload
//! that changes nothing clears it).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;

/// How many verdicts are kept; past it the memo starts again empty (a
/// workload with more distinct statements than this gains little from it).
const CAPACITY: usize = 4096;

/// What a session's verdict depends on besides the statement itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VerdictContext(u64);

impl VerdictContext {
    /// The context of a session: its logical database, pool user and a
    /// fingerprint of its settings (with the role it runs as, if any).
    pub fn new(database: &str, user: &str, settings: u64, role: Option<&str>) -> VerdictContext {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (database, user, settings, role).hash(&mut h);
        VerdictContext(h.finish())
    }
}

struct Accepted {
    context: VerdictContext,
    sql: Box<str>,
    types: Box<[i32]>,
    /// The parameter types PostgreSQL inferred (its ParameterDescription).
    params: Arc<[u32]>,
}

/// The accepted statements, by a hash of (context, text, types); the entry
/// is compared in full, so a hash collision is only a miss.
#[derive(Default)]
pub struct ParseVerdicts {
    accepted: Mutex<HashMap<u64, Accepted>>,
}

fn key(context: VerdictContext, sql: &str, types: &[i32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (context, sql, types).hash(&mut h);
    h.finish()
}

impl ParseVerdicts {
    /// The parameter types of a statement PostgreSQL accepted, or `None`
    /// when it has not been asked (or the memo was reset since).
    pub fn accepted(
        &self,
        context: VerdictContext,
        sql: &str,
        types: &[i32],
    ) -> Option<Arc<[u32]>> {
        let map = self.accepted.lock();
        let a = map.get(&key(context, sql, types))?;
        (a.context == context && &*a.sql == sql && &*a.types == types).then(|| a.params.clone())
    }

    /// Remembers that PostgreSQL accepted the statement.
    pub fn accept(&self, context: VerdictContext, sql: &str, types: &[i32], params: &[u32]) {
        let mut map = self.accepted.lock();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(
            key(context, sql, types),
            Accepted {
                context,
                sql: sql.into(),
                types: types.into(),
                params: params.into(),
            },
        );
    }

    /// Forgets every verdict: a reload that changes nothing keeps the
    /// runtime (and its memo), and is the operator's way to have
    /// statements asked about again after a schema change.
    pub fn clear(&self) {
        self.accepted.lock().clear();
    }

    /// How many verdicts are kept (the tests' view of the cap).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.accepted.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_statement_is_remembered_in_its_context_only() {
        let v = ParseVerdicts::default();
        let app = VerdictContext::new("app", "u", 1, None);
        let other = VerdictContext::new("app", "u", 2, None);
        assert!(v.accepted(app, "SELECT $1", &[]).is_none());
        v.accept(app, "SELECT $1", &[], &[20]);
        assert_eq!(
            v.accepted(app, "SELECT $1", &[]).as_deref(),
            Some(&[20u32][..])
        );
        // Other settings, other declared types, other text: not known.
        assert!(v.accepted(other, "SELECT $1", &[]).is_none());
        assert!(v.accepted(app, "SELECT $1", &[25]).is_none());
        assert!(v.accepted(app, "SELECT $2", &[]).is_none());
    }

    #[test]
    fn the_memo_is_bounded() {
        let v = ParseVerdicts::default();
        let c = VerdictContext::new("app", "u", 1, None);
        for i in 0..CAPACITY + 10 {
            v.accept(c, &format!("SELECT {i}"), &[], &[]);
        }
        assert!(v.len() <= CAPACITY);
        assert!(v
            .accepted(c, &format!("SELECT {}", CAPACITY + 9), &[])
            .is_some());
    }
}
