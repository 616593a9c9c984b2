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
//! taken as gone once the statement that ends it for good (`DISCARD`,
//! `UNLISTEN *`, `pg_advisory_unlock_all()`, `CLOSE ALL`, `RESET SESSION
//! AUTHORIZATION`) has committed: ended in a transaction that failed or
//! rolled back, the state is still there. A statement that may end it or
//! not (`DROP` of one of two temp tables, `UNLISTEN ch`, one
//! `pg_advisory_unlock()` of a lock taken twice, `CLOSE c`), and a
//! transaction that created state but failed or rolled back, leave the
//! answer to the server: once the transaction is over, the router asks it
//! what the session still holds ([`check_sql`]) — exact where counting by
//! parsing would not be. When the last of it is gone, the connection is
//! cleaned before it goes back to the pool ([`Session::clean_after_pin`]).

use pgrouter_parser::{SessionState, SessionStateChange};

use super::error::SessionEnd;
use super::session::{GuardState, Session};
use crate::server::ServerError;

/// How long the router waits for the server's answer to its check.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// Kinds that statements sent since the last check may have ended.
    unsure: SessionState,
    /// Kinds created since the server was last outside a transaction.
    fresh: SessionState,
    /// An error, or a rollback, since the server was last outside a
    /// transaction: what was created meanwhile may be gone.
    undone: bool,
    /// The last of the state is gone: the connection is to be cleaned
    /// before it goes back to the pool (see [`Session::clean_after_pin`]).
    unpinned: bool,
}

impl Pins {
    /// A statement with these effects was sent.
    pub fn sent(&mut self, change: SessionStateChange) {
        if !change.creates.is_empty() {
            self.unpinned = false; // pinned again: nothing to clean
        }
        self.held |= change.creates;
        self.fresh |= change.creates;
        self.ending |= change.ends;
        self.unsure |= change.may_end;
    }

    /// The server reported an error for the client's request.
    pub fn on_error(&mut self) {
        if !self.ending.is_empty() {
            self.failed = true;
        }
        self.undone |= !self.fresh.is_empty();
    }

    /// CommandComplete: a COMMIT of a failed block reports ROLLBACK.
    pub fn on_command_complete(&mut self, tag: &[u8]) {
        let rolled_back = tag.starts_with(b"ROLLBACK");
        if !self.ending.is_empty() {
            self.rolled_back = rolled_back;
        }
        self.undone |= rolled_back && !self.fresh.is_empty();
    }

    /// ReadyForQuery: outside a transaction, endings that committed take effect.
    pub fn on_ready(&mut self, status: u8) {
        if status != b'I' {
            return;
        }
        if self.undone {
            self.unsure |= self.fresh;
        }
        self.fresh = SessionState::NONE;
        self.undone = false;
        if self.ending.is_empty() {
            return;
        }
        if !self.failed && !self.rolled_back {
            self.set_held(self.held.without(self.ending));
        }
        self.ending = SessionState::NONE;
        self.failed = false;
        self.rolled_back = false;
    }

    /// Kinds held that may be gone: the router asks the server (see
    /// [`check_sql`]) before it lets the connection go or keeps it.
    pub fn to_check(&self) -> SessionState {
        self.unsure.intersection(self.held)
    }

    /// The server's answer: of the kinds checked, those still there.
    pub fn checked(&mut self, checked: SessionState, still_there: SessionState) {
        self.set_held(self.held.without(checked.without(still_there)));
        self.unsure = SessionState::NONE;
    }

    fn set_held(&mut self, held: SessionState) {
        self.unpinned |= !self.held.is_empty() && held.is_empty();
        self.held = held;
    }

    /// The client was pinned and is no longer: its connection is cleaned
    /// once (true once, then false).
    pub fn take_unpinned(&mut self) -> bool {
        std::mem::take(&mut self.unpinned) && self.held.is_empty()
    }

    /// See [`Self::take_unpinned`], without taking it.
    pub fn is_unpinned(&self) -> bool {
        self.unpinned
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

impl Session {
    /// Transaction mode, between transactions: asks the held server which
    /// kinds of state that may have ended (see [`Pins::to_check`]) the
    /// session still holds, before the connection is kept or let go. The
    /// client's next request waits meanwhile (one short query).
    pub(super) async fn check_pins(&mut self) -> Result<(), SessionEnd> {
        let kinds = self.pins.to_check();
        if kinds.is_empty() || !self.at_boundary() || self.flow.guard() != GuardState::Idle {
            return Ok(());
        }
        let Some(held) = self.server.as_mut() else {
            return Ok(());
        };
        if !held.conn.read_buf.is_empty() {
            return Ok(()); // more to relay first; checked at the next boundary
        }
        let Some((sql, columns)) = check_sql(kinds) else {
            self.pins.checked(kinds, kinds);
            return Ok(());
        };
        let rows = match crate::timer::timeout(CHECK_TIMEOUT, held.conn.query_rows(&sql)).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(ServerError::Postgres(e))) => {
                // Staying pinned is the safe mistake.
                tracing::warn!(code = %e.code, error = %e.message, "could not ask the server what session state is left; the client stays pinned");
                self.pins.checked(kinds, kinds);
                return Ok(());
            }
            Ok(Err(_)) | Err(_) => {
                self.drop_idle_server();
                return Ok(());
            }
        };
        let row = rows.first().map(Vec::as_slice).unwrap_or(&[]);
        let mut still_there = SessionState::NONE;
        for (i, kind) in columns.iter().enumerate() {
            // Anything but a clear "false" keeps the pin.
            if row.get(i).and_then(Option::as_deref) != Some("f") {
                still_there |= *kind;
            }
        }
        let checked = columns.iter().fold(SessionState::NONE, |a, k| a | *k);
        self.pins.checked(checked, still_there);
        tracing::debug!(
            ?checked,
            ?still_there,
            "asked the server what session state is left"
        );
        self.registered.info.set_pinned(self.pins.held());
        Ok(())
    }

    /// The client's last pinned state is gone: before its connection goes
    /// back to the pool it is cleaned as if the client had left (`DISCARD
    /// ALL`, `RESET ROLE`), so that state the router cannot see — `lastval`
    /// after an INSERT that took a serial default, anything a function did —
    /// does not reach the next client either. The client's own settings and
    /// prepared statements are replayed as on any other connection.
    pub(super) async fn clean_after_pin(&mut self) -> Result<(), SessionEnd> {
        if !self.pins.is_unpinned() || !self.at_boundary() || self.flow.guard() != GuardState::Idle
        {
            return Ok(());
        }
        let Some(held) = self.server.as_mut() else {
            return Ok(());
        };
        if !held.conn.read_buf.is_empty() || !self.pins.take_unpinned() {
            return Ok(());
        }
        for sql in ["DISCARD ALL", "RESET ROLE"] {
            match crate::timer::timeout(CHECK_TIMEOUT, held.conn.query_rows(sql)).await {
                Ok(Ok(_)) => {}
                Ok(Err(ServerError::Postgres(e))) => {
                    // Not clean: the client stays pinned (its connection is
                    // reset when it leaves).
                    tracing::warn!(code = %e.code, error = %e.message, "could not clean a connection after its client's pin ended; the client stays pinned");
                    self.pins.sent(SessionStateChange {
                        creates: SessionState::DO_BLOCK,
                        ..Default::default()
                    });
                    self.registered.info.set_pinned(self.pins.held());
                    return Ok(());
                }
                Ok(Err(_)) | Err(_) => {
                    self.drop_idle_server();
                    return Ok(());
                }
            }
        }
        held.conn.statements.clear();
        held.conn.forget_session_state();
        held.conn.needs_discard = false;
        held.kept = false;
        self.unnamed_here = false;
        Ok(())
    }

    /// The held connection failed while nothing of the client's was in
    /// flight: it is dropped without a word to the client, whose next
    /// statement gets another one.
    fn drop_idle_server(&mut self) {
        if let Some(held) = self.server.take() {
            tracing::warn!(server = %held.conn.addr, pid = held.conn.backend_pid, "server connection lost between transactions");
            self.cancel.slot.set(None);
            self.pins.forget();
            self.temps.forget_all();
            self.registered.info.set_pinned(Default::default());
            self.registered.info.clear_server();
            self.registered
                .info
                .set_state(super::registry::ClientState::Idle);
            self.flow.server_released();
        }
    }
}

/// What the server is asked for each kind that can be checked, one boolean
/// column each (true: the session still holds some of it). Outside a
/// transaction only session-level advisory locks and WITH HOLD cursors are
/// left, so the catalogs answer exactly. The session is someone else's
/// while its user is not the one that logged in (`pg_stat_activity` keeps
/// the login user; `session_user` is a keyword, not a function a client
/// could shadow).
const CHECKS: [(SessionState, &str); 5] = [
    (
        SessionState::TEMP,
        "pg_catalog.pg_my_temp_schema() <> 0 AND (\
         EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
         OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema()) \
         OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()) \
         OR EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oprnamespace = pg_catalog.pg_my_temp_schema()) \
         OR EXISTS (SELECT FROM pg_catalog.pg_collation WHERE collnamespace = pg_catalog.pg_my_temp_schema()) \
         OR EXISTS (SELECT FROM pg_catalog.pg_statistic_ext WHERE stxnamespace = pg_catalog.pg_my_temp_schema()))",
    ),
    (
        SessionState::LISTEN,
        "EXISTS (SELECT FROM pg_catalog.pg_listening_channels())",
    ),
    (
        SessionState::ADVISORY_LOCK,
        "EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())",
    ),
    (
        SessionState::HOLD_CURSOR,
        "EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)",
    ),
    (
        SessionState::SESSION_AUTHORIZATION,
        "session_user IS DISTINCT FROM (SELECT usename FROM pg_catalog.pg_stat_activity \
         WHERE pid = pg_catalog.pg_backend_pid())",
    ),
];

/// The query that asks the server which of `kinds` the session still
/// holds, and the kinds it checks (in column order); `None` when none of
/// them can be checked.
pub fn check_sql(kinds: SessionState) -> Option<(String, Vec<SessionState>)> {
    let checked: Vec<&(SessionState, &str)> = CHECKS
        .iter()
        .filter(|(k, _)| kinds.intersects(*k))
        .collect();
    if checked.is_empty() {
        return None;
    }
    let columns: Vec<&str> = checked.iter().map(|(_, sql)| *sql).collect();
    Some((
        format!("SELECT {}", columns.join(", ")),
        checked.iter().map(|(k, _)| *k).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creates(s: SessionState) -> SessionStateChange {
        SessionStateChange {
            creates: s,
            ..Default::default()
        }
    }

    fn ends(s: SessionState) -> SessionStateChange {
        SessionStateChange {
            ends: s,
            ..Default::default()
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

    fn may_end(s: SessionState) -> SessionStateChange {
        SessionStateChange {
            may_end: s,
            ..Default::default()
        }
    }

    #[test]
    fn what_may_have_ended_is_checked_once_the_transaction_is_over() {
        let mut p = Pins::default();
        p.sent(creates(SessionState::TEMP | SessionState::LISTEN));
        p.on_ready(b'I');
        assert!(p.to_check().is_empty());
        p.sent(may_end(SessionState::TEMP | SessionState::ADVISORY_LOCK));
        assert_eq!(p.to_check(), SessionState::TEMP, "only what is held");
        p.checked(SessionState::TEMP, SessionState::TEMP);
        assert_eq!(p.held(), SessionState::TEMP | SessionState::LISTEN);
        assert!(p.to_check().is_empty());
        p.sent(may_end(SessionState::TEMP));
        p.checked(SessionState::TEMP, SessionState::NONE);
        assert_eq!(p.held(), SessionState::LISTEN);
    }

    #[test]
    fn state_created_in_a_transaction_that_rolled_back_is_checked() {
        let mut p = Pins::default();
        p.sent(creates(SessionState::TEMP));
        p.on_ready(b'T');
        p.on_command_complete(b"ROLLBACK");
        p.on_ready(b'I');
        assert_eq!(p.to_check(), SessionState::TEMP);
        let mut p = Pins::default();
        p.sent(creates(SessionState::ADVISORY_LOCK));
        p.on_error();
        p.on_ready(b'I');
        assert_eq!(p.to_check(), SessionState::ADVISORY_LOCK);
        let mut p = Pins::default();
        p.sent(creates(SessionState::LISTEN));
        p.on_command_complete(b"LISTEN");
        p.on_ready(b'I');
        assert!(p.to_check().is_empty(), "committed: nothing to ask");
    }

    #[test]
    fn check_queries_name_their_columns_in_order() {
        let (sql, kinds) = check_sql(SessionState::LISTEN | SessionState::TEMP).unwrap();
        assert_eq!(kinds, vec![SessionState::TEMP, SessionState::LISTEN]);
        assert!(sql.starts_with("SELECT pg_catalog.pg_my_temp_schema()"));
        assert!(sql.contains("pg_listening_channels"));
        assert!(check_sql(SessionState::DO_BLOCK | SessionState::SEQUENCE).is_none());
    }

    #[test]
    fn the_end_of_the_last_state_asks_for_a_clean_once() {
        let mut p = Pins::default();
        assert!(!p.take_unpinned(), "never pinned: nothing to clean");
        p.sent(creates(SessionState::TEMP | SessionState::LISTEN));
        p.on_ready(b'I');
        p.sent(may_end(SessionState::TEMP));
        p.checked(SessionState::TEMP, SessionState::NONE);
        assert!(!p.take_unpinned(), "still listening");
        p.sent(ends(SessionState::LISTEN));
        p.on_ready(b'I');
        assert!(p.take_unpinned());
        assert!(!p.take_unpinned(), "once");
        p.sent(creates(SessionState::LISTEN));
        p.sent(ends(SessionState::LISTEN));
        p.on_ready(b'I');
        p.sent(creates(SessionState::TEMP));
        assert!(!p.take_unpinned(), "pinned again before the clean");
    }

    #[test]
    fn losing_the_server_loses_the_state() {
        let mut p = Pins::default();
        p.sent(creates(SessionState::DO_BLOCK));
        p.forget();
        assert!(!p.is_pinned());
    }
}
