//! Session-level SET/RESET tracking for transaction mode.
//!
//! A SET is transactional in PostgreSQL: it is undone when its transaction
//! rolls back, and a failed statement undoes its implicit transaction. So a
//! change only becomes part of the client's session once the server reports
//! the transaction ended well: ReadyForQuery 'I' after a COMMIT (explicit
//! block) or after an error-free implicit transaction.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetChange {
    Set { name: String, value: String },
    Reset { name: String },
    ResetAll,
}

/// A pending change, or the point a SAVEPOINT marks among them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Change(SetChange),
    Savepoint,
}

#[derive(Debug, Default)]
pub struct SetTracker {
    pending: Vec<Pending>,
    saw_error: bool,
    explicit_tx: bool,
    rolled_back: bool,
}

impl SetTracker {
    /// A session-level change was sent to the server.
    pub fn sent(&mut self, change: SetChange) {
        self.pending.push(Pending::Change(change));
    }

    /// SAVEPOINT: later changes can be rolled back to here.
    pub fn savepoint(&mut self) {
        self.pending.push(Pending::Savepoint);
    }

    /// ROLLBACK TO SAVEPOINT: drops the changes made since the latest
    /// savepoint (which stays). Savepoint names are matched by nesting order.
    pub fn rollback_to_savepoint(&mut self) {
        match self.pending.iter().rposition(|p| *p == Pending::Savepoint) {
            Some(at) => self.pending.truncate(at + 1),
            None => self.pending.clear(),
        }
    }

    /// RELEASE SAVEPOINT: its changes now belong to the enclosing level.
    pub fn release_savepoint(&mut self) {
        if let Some(at) = self.pending.iter().rposition(|p| *p == Pending::Savepoint) {
            self.pending.remove(at);
        }
    }

    /// True when nothing is waiting for its transaction's outcome; the relay
    /// then skips the bookkeeping below. An error seen with nothing pending
    /// still counts: it must be forgotten at the next ReadyForQuery 'I', or
    /// it would discard the next transaction's changes.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && !self.saw_error && !self.explicit_tx && !self.rolled_back
    }

    pub fn on_error(&mut self) {
        self.saw_error = true;
    }

    /// CommandComplete: remembers whether a transaction block ended in ROLLBACK
    /// (COMMIT of a failed block also reports "ROLLBACK").
    pub fn on_command_complete(&mut self, tag: &[u8]) {
        self.rolled_back = tag.starts_with(b"ROLLBACK");
    }

    /// ReadyForQuery: returns the changes that took effect, if the
    /// transaction they belong to is over.
    pub fn on_ready(&mut self, status: u8) -> Vec<SetChange> {
        if status != b'I' {
            self.explicit_tx = true;
            return Vec::new();
        }
        let kept = if self.explicit_tx {
            !self.rolled_back
        } else {
            !self.saw_error
        };
        let changes: Vec<SetChange> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|p| match p {
                Pending::Change(c) => Some(c),
                Pending::Savepoint => None,
            })
            .collect();
        self.saw_error = false;
        self.explicit_tx = false;
        self.rolled_back = false;
        if kept {
            changes
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &str) -> SetChange {
        SetChange::Set {
            name: "search_path".into(),
            value: v.into(),
        }
    }

    #[test]
    fn autocommit_set_applies_unless_it_failed() {
        let mut t = SetTracker::default();
        t.sent(set("a"));
        t.on_command_complete(b"SET");
        assert_eq!(t.on_ready(b'I'), vec![set("a")]);
        t.sent(set("b"));
        t.on_error();
        assert!(t.on_ready(b'I').is_empty());
        assert!(t.is_idle());
    }

    /// `SELECT 1/0` alone, then `SET` in the next implicit transaction: the
    /// error belongs to the first transaction and must not undo the SET.
    #[test]
    fn an_error_with_nothing_pending_does_not_undo_the_next_set() {
        let mut t = SetTracker::default();
        t.on_error();
        assert!(!t.is_idle(), "the error must reach the next ReadyForQuery");
        assert!(t.on_ready(b'I').is_empty());
        assert!(t.is_idle());
        t.sent(set("a"));
        t.on_command_complete(b"SET");
        assert_eq!(t.on_ready(b'I'), vec![set("a")]);
    }

    /// A failed explicit block with nothing pending, then a SET: kept.
    #[test]
    fn a_rolled_back_block_does_not_undo_the_next_set() {
        let mut t = SetTracker::default();
        t.on_error();
        assert!(t.on_ready(b'E').is_empty());
        t.on_command_complete(b"ROLLBACK");
        assert!(t.on_ready(b'I').is_empty());
        assert!(t.is_idle());
        t.sent(set("b"));
        assert_eq!(t.on_ready(b'I'), vec![set("b")]);
    }

    #[test]
    fn savepoints_scope_changes() {
        let mut t = SetTracker::default();
        t.sent(set("a"));
        t.savepoint();
        t.sent(set("b"));
        t.rollback_to_savepoint();
        t.savepoint();
        t.sent(set("c"));
        t.release_savepoint();
        assert!(t.on_ready(b'T').is_empty());
        t.on_command_complete(b"COMMIT");
        assert_eq!(t.on_ready(b'I'), vec![set("a"), set("c")]);
    }

    #[test]
    fn transaction_outcome_decides() {
        let mut t = SetTracker::default();
        t.sent(set("a"));
        assert!(t.on_ready(b'T').is_empty());
        t.on_command_complete(b"COMMIT");
        assert_eq!(t.on_ready(b'I'), vec![set("a")]);

        t.sent(set("b"));
        assert!(t.on_ready(b'T').is_empty());
        t.on_error();
        assert!(t.on_ready(b'E').is_empty());
        t.on_command_complete(b"ROLLBACK");
        assert!(t.on_ready(b'I').is_empty());
    }
}
