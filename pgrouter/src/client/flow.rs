//! Where the client's conversation stands, as the router follows it: the
//! flow state machine of a session, with no I/O.
//!
//! The session forwards messages and relays answers; every change of the
//! flow (a batch opened or synced, a transaction predicted, COPY started, a
//! batch skipped to its Sync after a refusal, the client paused while a
//! role guard or another server is awaited) is one of the named transitions
//! below, so the flow can be followed — and tested — without a socket.
//!
//! What the server still owes (the queue of expected answers) is kept by
//! [`super::expect::Expectations`]; where the flow needs it, it is passed in
//! as `answers_due`.

/// A JWT session's role set in a round trip of its own (see
/// `policy_guard::needs_guard_round_trip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GuardState {
    Idle,
    /// Sent; the client's request waits in the buffer.
    Waiting,
    Passed,
    Failed,
}

/// The flow's state as a whole, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The server asked for COPY data and has not ended the command.
    CopyIn,
    /// A complete request (a Query, or a batch up to its Sync) is out and
    /// not yet answered: nothing the client sends can go before the answer.
    WaitingForAnswers,
    /// A batch failed (a refusal or a failed checkout): the client's
    /// messages are dropped up to its next Sync (or simple Query).
    SkippingToSync,
    /// An extended-protocol batch is open (no Sync yet).
    InBatch,
    /// Inside a transaction block the server reported as failed.
    FailedTransaction,
    /// Inside a transaction block.
    InTransaction,
    Idle,
}

/// What to do with the client's next message while a role guard sent on
/// its own round trip is pending or has just failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GuardGate {
    /// Go on as usual.
    Pass,
    /// The guard's answer is not in: stop reading the client.
    Hold,
    /// The guard failed: the held message never runs. A simple Query gets
    /// its ReadyForQuery at once (`answer_query`); an extended batch is
    /// skipped to its Sync.
    Drop { answer_query: bool },
}

#[derive(Debug)]
pub(super) struct Flow {
    /// A transaction block is open, as predicted from the statements sent
    /// (ReadyForQuery confirms it later).
    in_tx: bool,
    /// The last ReadyForQuery of a whole request said the transaction failed.
    tx_failed: bool,
    /// An extended-protocol message was sent since the last Sync.
    unsynced: bool,
    /// An Execute was sent since the last Sync (a batch that only prepared
    /// and described may still move to another shard at its Bind).
    executed_unsynced: bool,
    /// The next message forwarded starts a new unit of work (after a Sync or
    /// a Query, or on a fresh checkout).
    batch_start: bool,
    /// A batch failed: drop client messages up to the next Sync.
    skip_to_sync: bool,
    /// The server asked for COPY data (CopyInResponse or CopyBothResponse)
    /// and has not ended the command yet.
    copy_in: bool,
    /// The next client message needs something not there yet (another
    /// server, the guard's answer, every answer due): stop reading the
    /// client until it is.
    blocked: bool,
    /// Blocked until every answer due has arrived (then the next unit of
    /// a transaction on several shards may move to another leg).
    wait_quiet: bool,
    guard: GuardState,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            in_tx: false,
            tx_failed: false,
            unsynced: false,
            executed_unsynced: false,
            batch_start: true,
            skip_to_sync: false,
            copy_in: false,
            blocked: false,
            wait_quiet: false,
            guard: GuardState::Idle,
        }
    }
}

/// Reading the flow.
impl Flow {
    pub(super) fn in_tx(&self) -> bool {
        self.in_tx
    }
    pub(super) fn unsynced(&self) -> bool {
        self.unsynced
    }
    pub(super) fn executed_unsynced(&self) -> bool {
        self.executed_unsynced
    }
    pub(super) fn batch_start(&self) -> bool {
        self.batch_start
    }
    pub(super) fn skip_to_sync(&self) -> bool {
        self.skip_to_sync
    }
    pub(super) fn copy_in(&self) -> bool {
        self.copy_in
    }
    pub(super) fn blocked(&self) -> bool {
        self.blocked
    }
    pub(super) fn guard(&self) -> GuardState {
        self.guard
    }

    /// Nothing of the client's is in the server's current transaction
    /// (a replay the next message needs may commit on its own).
    pub(super) fn at_unit_boundary(&self) -> bool {
        !self.unsynced && !self.in_tx
    }

    pub(super) fn phase(&self, answers_due: bool) -> Phase {
        if self.copy_in {
            Phase::CopyIn
        } else if answers_due && !self.unsynced {
            Phase::WaitingForAnswers
        } else if self.skip_to_sync {
            Phase::SkippingToSync
        } else if self.unsynced {
            Phase::InBatch
        } else if self.in_tx && self.tx_failed {
            Phase::FailedTransaction
        } else if self.in_tx {
            Phase::InTransaction
        } else {
            Phase::Idle
        }
    }

    /// Whether the client's socket is read now: not while the flow is
    /// blocked, nor while a complete request awaits its answer and the
    /// server wants no COPY data (what the client sends next could not be
    /// forwarded before that answer anyway; pipelined requests wait in the
    /// socket).
    pub(super) fn reads_client(&self, answers_due: bool) -> bool {
        !self.blocked && self.phase(answers_due) != Phase::WaitingForAnswers
    }
}

/// What the router sends.
impl Flow {
    pub(super) fn query_sent(&mut self) {
        self.batch_start = true;
    }
    /// Parse, Bind, Describe or Close.
    pub(super) fn extended_sent(&mut self) {
        self.unsynced = true;
    }
    pub(super) fn execute_sent(&mut self) {
        self.unsynced = true;
        self.executed_unsynced = true;
    }
    pub(super) fn sync_sent(&mut self) {
        self.unsynced = false;
        self.executed_unsynced = false;
        self.batch_start = true;
    }
    /// The router closed the client's open batch with a Sync of its own
    /// (nothing ran in it; it moves to another server).
    pub(super) fn batch_closed_by_router(&mut self) {
        self.unsynced = false;
    }
    /// A server (or a transaction's leg) was taken for the next unit.
    pub(super) fn attached(&mut self) {
        self.batch_start = true;
        self.executed_unsynced = false;
    }
    /// A statement sent opens (`true`) or ends (`false`) a transaction block.
    pub(super) fn predict_tx(&mut self, open: bool) {
        self.in_tx = open;
        if !open {
            self.tx_failed = false;
        }
    }
    /// The unit's role guard was pipelined ahead of its first message.
    pub(super) fn role_guard_pipelined(&mut self) {
        self.batch_start = false;
    }
    /// The role guard was sent in a transaction of its own: the client's
    /// request waits for its answer.
    pub(super) fn role_guard_sent_alone(&mut self) {
        self.batch_start = false;
        self.guard = GuardState::Waiting;
        self.blocked = true;
    }
    /// The role guard's pass was used by the request it held back.
    pub(super) fn guard_used(&mut self) {
        if self.guard == GuardState::Passed {
            self.guard = GuardState::Idle;
        }
    }
}

/// Refusals and waiting.
impl Flow {
    /// The current extended batch cannot run: skip to its Sync.
    pub(super) fn batch_failed(&mut self) {
        self.skip_to_sync = true;
    }
    /// The router answered the Sync (or simple Query) that ends the skip.
    pub(super) fn sync_answered_here(&mut self) {
        self.skip_to_sync = false;
    }
    /// The next message needs another server than the one held.
    pub(super) fn wait_for_release(&mut self) {
        self.blocked = true;
    }
    /// The next message may move to another leg once every answer is in.
    pub(super) fn wait_until_quiet(&mut self) {
        self.blocked = true;
        self.wait_quiet = true;
    }
    /// The client's next message, while a role guard sent alone is pending
    /// or failed.
    pub(super) fn guard_gate(&mut self, tag: u8) -> GuardGate {
        match self.guard {
            GuardState::Waiting => {
                self.blocked = true;
                GuardGate::Hold
            }
            GuardState::Failed => {
                self.guard = GuardState::Idle;
                let answer_query = tag == b'Q';
                if !answer_query {
                    self.skip_to_sync = true;
                }
                GuardGate::Drop { answer_query }
            }
            GuardState::Passed | GuardState::Idle => GuardGate::Pass,
        }
    }
}

/// What the server answers.
impl Flow {
    pub(super) fn copy_started(&mut self) {
        self.copy_in = true;
    }
    /// A ReadyForQuery. True when it answers the client's whole request
    /// (`answers_due`: the queue after this one): then its status is the
    /// transaction's.
    pub(super) fn ready_for_query(&mut self, status: u8, answers_due: bool) -> bool {
        self.copy_in = false;
        let whole = !answers_due && !self.unsynced;
        if whole {
            self.in_tx = status != b'I';
            self.tx_failed = status == b'E';
        }
        whole
    }
    /// The role guard sent alone failed.
    pub(super) fn guard_refused(&mut self) {
        if self.guard == GuardState::Waiting {
            self.guard = GuardState::Failed;
        }
    }
    /// Answers were relayed; `answers_due`: some are still owed, `quiet`:
    /// none owed and no batch open.
    pub(super) fn answers_relayed(&mut self, answers_due: bool, quiet: bool) {
        if self.wait_quiet && quiet {
            self.wait_quiet = false;
            self.blocked = false;
        }
        if !answers_due {
            match self.guard {
                GuardState::Waiting => {
                    self.guard = GuardState::Passed;
                    self.blocked = false;
                }
                GuardState::Failed => self.blocked = false,
                GuardState::Passed | GuardState::Idle => {}
            }
        }
    }
}

/// The server goes.
impl Flow {
    /// The server (or every leg) went back to its pool, or was dropped
    /// between transactions.
    pub(super) fn server_released(&mut self) {
        self.in_tx = false;
        self.tx_failed = false;
        self.blocked = false;
    }
    /// The server was lost mid-request and the client told so: an open
    /// batch is skipped to its Sync.
    pub(super) fn server_lost(&mut self) {
        if self.unsynced {
            self.unsynced = false;
            self.skip_to_sync = true;
        }
        self.server_released();
    }
    /// A replayable request is sent again on another server: the batch
    /// starts afresh there. Returns the flow's batch state, for
    /// [`Flow::replay_failed`].
    pub(super) fn replay_started(&mut self) -> bool {
        std::mem::take(&mut self.unsynced)
    }
    pub(super) fn replay_failed(&mut self, unsynced: bool) {
        self.unsynced = unsynced;
    }
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
