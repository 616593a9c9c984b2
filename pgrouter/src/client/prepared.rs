//! Prepared statements in transaction mode.
//!
//! A client names its statements as it likes ("s1", "__asyncpg_stmt_2__");
//! servers are shared, so names would collide. Every distinct statement
//! (text + parameter types) gets one router-wide name, `pgrouter_<id>`; a
//! client's name maps to it, and each server connection remembers (in a
//! bounded LRU) which of them it has prepared. The router prepares a statement
//! on a server the first time a client needs it there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use pgrouter_parser::Analysis;

/// One distinct statement, shared by every client that prepared the same text.
#[derive(Debug)]
pub struct SharedStatement {
    pub id: u64,
    /// The name it has on every server: `pgrouter_<id>`.
    pub server_name: String,
    pub sql: String,
    pub param_types: Vec<i32>,
    pub analysis: Arc<Analysis>,
}

/// A session's handle on a [`SharedStatement`]: an `Arc` of the session's
/// own (cloned at every Bind and Describe) and its own copy of the
/// analysis (cloned at every Bind). The shared statement's `Arc`s are used
/// by every client of that statement on every worker thread: each clone
/// and drop would move their reference counts between cores.
pub struct SessionStatement {
    pub shared: Arc<SharedStatement>,
    /// Shadows `shared.analysis`: the same analysis, the session's `Arc`.
    pub analysis: Arc<Analysis>,
}

impl SessionStatement {
    pub fn new(shared: Arc<SharedStatement>) -> Arc<SessionStatement> {
        Arc::new(SessionStatement {
            analysis: Arc::new(Analysis::clone(&shared.analysis)),
            shared,
        })
    }
}

impl std::ops::Deref for SessionStatement {
    type Target = SharedStatement;

    fn deref(&self) -> &SharedStatement {
        &self.shared
    }
}

/// A statement's identity: its text and the parameter types its Parse
/// declared.
type StatementKey = (String, Vec<i32>);

/// De-duplicates statements across clients. Holds weak references so a
/// statement no client uses any more is forgotten.
#[derive(Default)]
pub struct StatementRegistry {
    by_text: Mutex<HashMap<StatementKey, Weak<SharedStatement>>>,
    next_id: AtomicU64,
}

impl StatementRegistry {
    pub fn intern(
        &self,
        sql: &str,
        param_types: &[i32],
        analysis: Arc<Analysis>,
    ) -> Arc<SharedStatement> {
        let mut map = self.by_text.lock();
        let key = (sql.to_string(), param_types.to_vec());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let stmt = Arc::new(SharedStatement {
            id,
            server_name: format!("pgrouter_{id}"),
            sql: key.0.clone(),
            param_types: key.1.clone(),
            analysis,
        });
        // Sweep dead entries now and then so the map stays as big as what is in use.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key, Arc::downgrade(&stmt));
        stmt
    }

    /// A server found a statement's plan no longer valid ("cached plan
    /// must not change result type", after DDL changed a table's columns):
    /// statements prepared from now on get new server names, so they are
    /// planned afresh, as a new PREPARE is on PostgreSQL. Those prepared
    /// before keep failing, as they would on PostgreSQL (drivers such as
    /// asyncpg then prepare them again).
    pub fn forget_texts(&self) {
        self.by_text.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.by_text.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A statement prepared with SQL `PREPARE name AS ...`: it keeps its own name
/// on the server; the router re-creates it (from the original PREPARE text)
/// on whichever server runs the client's `EXECUTE`.
#[derive(Debug, Clone)]
pub struct SqlPrepared {
    pub prepare_sql: Arc<str>,
    pub analysis: Arc<Analysis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_deduplicates_by_text_and_types() {
        let reg = StatementRegistry::default();
        let a = Arc::new(pgrouter_parser::analyze("select 1", &[]));
        let s1 = reg.intern("select 1", &[], a.clone());
        let s2 = reg.intern("select 1", &[], a.clone());
        let s3 = reg.intern("select 1", &[23], a.clone());
        assert_eq!(s1.id, s2.id);
        assert_ne!(s1.id, s3.id);
        assert_eq!(s1.server_name, format!("pgrouter_{}", s1.id));
        drop((s1, s2));
        let s4 = reg.intern("select 1", &[], a);
        assert_ne!(s4.id, s3.id);
    }
}
