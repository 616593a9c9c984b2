//! What a server connection has prepared on behalf of the router's clients.

use std::collections::HashMap;
use std::sync::Arc;

/// Shared statements (`pgrouter_<id>`) prepared on one server, least
/// recently used first out, so a long-lived connection does not accumulate
/// every statement any client ever used.
#[derive(Debug)]
pub struct ServerStatements {
    last_use: ahash::AHashMap<u64, u64>,
    tick: u64,
    capacity: usize,
    /// SQL-level `PREPARE name AS ...` statements by name, with the PREPARE
    /// text that made them (names are the client's own; see client::prepared).
    pub sql_prepared: HashMap<String, Arc<str>>,
}

impl ServerStatements {
    pub fn new(capacity: usize) -> Self {
        ServerStatements {
            last_use: ahash::AHashMap::new(),
            tick: 0,
            capacity: capacity.max(1),
            sql_prepared: HashMap::new(),
        }
    }

    /// True if prepared there; marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.last_use.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a new statement; returns the one evicted to make room, if any.
    pub fn insert(&mut self, id: u64) -> Option<u64> {
        self.tick += 1;
        let mut evicted = None;
        if !self.last_use.contains_key(&id) && self.last_use.len() >= self.capacity {
            if let Some((&old, _)) = self.last_use.iter().min_by_key(|(_, &t)| t) {
                self.last_use.remove(&old);
                evicted = Some(old);
            }
        }
        self.last_use.insert(id, self.tick);
        evicted
    }

    pub fn remove(&mut self, id: u64) {
        self.last_use.remove(&id);
    }

    /// Forgets the shared statement a client named in SQL (`EXECUTE
    /// pgrouter_7`, `DEALLOCATE pgrouter_7`), if the server has it: the
    /// router then deallocates it first, so that the client gets what
    /// PostgreSQL gives for a statement it never prepared (26000), and the
    /// statement's owners prepare it again when they next use it.
    pub fn take_shared_named(&mut self, name: &str) -> bool {
        let id = name
            .strip_prefix("pgrouter_")
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok());
        id.is_some_and(|id| self.last_use.remove(&id).is_some())
    }

    /// After DISCARD ALL / DEALLOCATE ALL the server has nothing prepared.
    pub fn clear(&mut self) {
        self.last_use.clear();
        self.sql_prepared.clear();
    }

    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut s = ServerStatements::new(2);
        assert_eq!(s.insert(1), None);
        assert_eq!(s.insert(2), None);
        assert!(s.touch(1));
        assert_eq!(s.insert(3), Some(2));
        assert!(!s.touch(2));
        assert!(s.touch(1) && s.touch(3));
    }
}
