//! The logical databases an admin PAUSE holds (`*` for all).
//!
//! Every client asks "is my database paused?" before each new transaction
//! takes a server: usually nothing is paused, and that answer comes from one
//! atomic load instead of a lock shared by every worker thread (a lock's
//! cache line moving between cores on every transaction costs more than the
//! look-up itself).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

#[derive(Default)]
pub struct PausedDatabases {
    names: Mutex<HashSet<String>>,
    /// `names` is not empty. Written under the lock, read without it.
    any: AtomicBool,
}

impl PausedDatabases {
    /// Whether `database` (or every database) is paused.
    pub fn is_paused(&self, database: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let names = self.names.lock();
        names.contains(database) || names.contains("*")
    }

    /// Whether exactly this entry (`*` included) is in force.
    pub fn contains(&self, key: &str) -> bool {
        self.names.lock().contains(key)
    }

    pub fn insert(&self, key: String) {
        let mut names = self.names.lock();
        names.insert(key);
        self.any.store(true, Ordering::Release);
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&self, key: &str) -> bool {
        let mut names = self.names.lock();
        let removed = names.remove(key);
        self.any.store(!names.is_empty(), Ordering::Release);
        removed
    }

    pub fn clear(&self) {
        let mut names = self.names.lock();
        names.clear();
        self.any.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pausing_one_database_or_all() {
        let p = PausedDatabases::default();
        assert!(!p.is_paused("app"));
        p.insert("app".into());
        assert!(p.is_paused("app") && !p.is_paused("other"));
        p.insert("*".into());
        assert!(p.is_paused("other"));
        assert!(p.remove("*"));
        assert!(!p.is_paused("other") && p.is_paused("app"));
        assert!(!p.remove("other"));
        assert!(p.remove("app"));
        assert!(!p.is_paused("app"));
        p.insert("x".into());
        p.clear();
        assert!(!p.is_paused("x") && !p.contains("x"));
    }
}
