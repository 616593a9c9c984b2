//! Pinning (transaction mode, `session_state = "pin"`): a client that
//! creates session-scoped state the router cannot carry to another server
//! connection — temp objects, LISTEN, session advisory locks, WITH HOLD
//! cursors, SET SESSION AUTHORIZATION, sequence state, whatever a DO block
//! did — keeps its server connection until that state is gone, then goes
//! back to transaction pooling. A connection a client leaves while pinned
//! is reset (`DISCARD ALL`) before anyone else gets it (`cleanup.rs`).
//!
//! State is taken as created as soon as a statement that may create it is
//! sent (even if it then fails: staying pinned is the safe mistake). It is
//! taken as gone only once the statement that ends it (`DISCARD`, `UNLISTEN
//! *`, `pg_advisory_unlock_all()`, `CLOSE ALL`, `RESET SESSION
//! AUTHORIZATION`) has committed: ended in a transaction that failed or
//! rolled back, the state is still there.

use pgrouter_parser::{SessionState, SessionStateChange};

#[derive(Debug, Default)]
pub struct Pins {
    /// Kinds of state the client's server connection holds.
    held: SessionState,
    /// Kinds ended by statements whose transaction has not ended yet.
    ending: SessionState,
    /// An error since those statements were sent.
    failed: bool,
    /// The last ending statement's transaction block rolled back.
    rolled_back: bool,
}

impl Pins {
    /// A statement with these effects was sent.
    pub fn sent(&mut self, change: SessionStateChange) {
        self.held |= change.creates;
        self.ending |= change.ends;
    }

    /// The server reported an error for the client's request.
    pub fn on_error(&mut self) {
        if !self.ending.is_empty() {
            self.failed = true;
        }
    }

    /// CommandComplete: a COMMIT of a failed block reports ROLLBACK.
    pub fn on_command_complete(&mut self, tag: &[u8]) {
        if !self.ending.is_empty() {
            self.rolled_back = tag.starts_with(b"ROLLBACK");
        }
    }

    /// ReadyForQuery: outside a transaction, endings that committed take effect.
    pub fn on_ready(&mut self, status: u8) {
        if status != b'I' || self.ending.is_empty() {
            return;
        }
        if !self.failed && !self.rolled_back {
            self.held = self.held.without(self.ending);
        }
        self.ending = SessionState::NONE;
        self.failed = false;
        self.rolled_back = false;
    }

    /// The server connection is gone, and its state with it.
    pub fn forget(&mut self) {
        *self = Pins::default();
    }

    pub fn is_pinned(&self) -> bool {
        !self.held.is_empty()
    }

    /// What is held (why the client is pinned).
    pub fn held(&self) -> SessionState {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creates(s: SessionState) -> SessionStateChange {
        SessionStateChange {
            creates: s,
            ends: SessionState::NONE,
        }
    }

    fn ends(s: SessionState) -> SessionStateChange {
        SessionStateChange {
            creates: SessionState::NONE,
            ends: s,
        }
    }

    #[test]
    fn created_state_pins_until_its_end_commits() {
        let mut p = Pins::default();
        p.sent(creates(SessionState::LISTEN | SessionState::TEMP));
        p.on_ready(b'I');
        assert!(p.is_pinned());
        p.sent(ends(SessionState::LISTEN));
        assert_eq!(
            p.held(),
            SessionState::LISTEN | SessionState::TEMP,
            "not gone before it ran"
        );
        p.on_command_complete(b"UNLISTEN");
        p.on_ready(b'I');
        assert_eq!(p.held(), SessionState::TEMP);
        p.sent(ends(SessionState::ALL));
        p.on_ready(b'I');
        assert!(!p.is_pinned());
    }

    #[test]
    fn an_end_that_failed_or_rolled_back_keeps_the_pin() {
        let mut p = Pins::default();
        p.sent(creates(SessionState::TEMP));
        p.sent(ends(SessionState::TEMP));
        p.on_error();
        p.on_ready(b'I');
        assert!(p.is_pinned(), "a failed DISCARD TEMP discards nothing");

        p.sent(ends(SessionState::TEMP));
        p.on_ready(b'T');
        assert!(p.is_pinned(), "inside the block nothing is decided");
        p.on_command_complete(b"ROLLBACK");
        p.on_ready(b'I');
        assert!(p.is_pinned(), "rolled back");

        p.sent(ends(SessionState::TEMP));
        p.on_ready(b'T');
        p.on_command_complete(b"COMMIT");
        p.on_ready(b'I');
        assert!(!p.is_pinned());
    }

    #[test]
    fn an_error_before_any_end_is_not_held_against_it() {
        let mut p = Pins::default();
        p.sent(creates(SessionState::ADVISORY_LOCK));
        p.on_error();
        p.on_ready(b'I');
        p.sent(ends(SessionState::ADVISORY_LOCK));
        p.on_ready(b'I');
        assert!(!p.is_pinned());
    }

    #[test]
    fn losing_the_server_loses_the_state() {
        let mut p = Pins::default();
        p.sent(creates(SessionState::DO_BLOCK));
        p.forget();
        assert!(!p.is_pinned());
    }
}
