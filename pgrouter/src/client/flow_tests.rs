//! The flow's transitions, one conversation at a time.

use super::{Flow, GuardGate, GuardState, Phase};

/// Sends the tags of an extended batch the way the session does.
fn send(flow: &mut Flow, tags: &[u8]) {
    for &tag in tags {
        match tag {
            b'P' | b'B' | b'D' | b'C' => flow.extended_sent(),
            b'E' => flow.execute_sent(),
            b'S' => flow.sync_sent(),
            b'Q' => flow.query_sent(),
            other => panic!("no such tag in these tests: {}", other as char),
        }
    }
}

#[test]
fn a_fresh_session_is_idle_at_the_start_of_a_unit() {
    let flow = Flow::default();
    assert_eq!(flow.phase(false), Phase::Idle);
    assert!(flow.batch_start());
    assert!(flow.at_unit_boundary());
    assert!(flow.reads_client(false));
}

#[test]
fn an_extended_batch_is_open_until_its_sync_and_then_waits_for_answers() {
    let mut flow = Flow::default();
    send(&mut flow, b"PB");
    assert_eq!(flow.phase(true), Phase::InBatch);
    assert!(!flow.executed_unsynced());
    // The client may send more of its batch while answers come back.
    assert!(flow.reads_client(true));
    send(&mut flow, b"E");
    assert!(flow.executed_unsynced());
    send(&mut flow, b"S");
    assert!(!flow.unsynced() && !flow.executed_unsynced() && flow.batch_start());
    assert_eq!(flow.phase(true), Phase::WaitingForAnswers);
    assert!(!flow.reads_client(true), "nothing can go before the answer");
    // The ReadyForQuery of the Sync answers the whole request.
    assert!(flow.ready_for_query(b'I', false));
    assert_eq!(flow.phase(false), Phase::Idle);
}

#[test]
fn a_ready_for_query_inside_an_open_batch_does_not_set_the_transaction() {
    let mut flow = Flow::default();
    flow.predict_tx(true);
    send(&mut flow, b"S");
    // Answers of an earlier Sync arrive while the next batch is open.
    send(&mut flow, b"PBE");
    assert!(!flow.ready_for_query(b'I', false));
    assert!(flow.in_tx(), "the open batch's outcome is not known yet");
    send(&mut flow, b"S");
    assert!(flow.ready_for_query(b'I', false));
    assert!(!flow.in_tx());
}

#[test]
fn ready_for_query_with_answers_still_due_is_not_the_whole_request() {
    let mut flow = Flow::default();
    send(&mut flow, b"QQ");
    assert!(!flow.ready_for_query(b'T', true));
    assert!(!flow.in_tx(), "the prediction stands until the last answer");
    assert!(flow.ready_for_query(b'T', false));
    assert_eq!(flow.phase(false), Phase::InTransaction);
}

#[test]
fn a_failed_transaction_is_seen_from_its_ready_for_query_and_ends_with_it() {
    let mut flow = Flow::default();
    flow.predict_tx(true);
    send(&mut flow, b"Q");
    assert!(flow.ready_for_query(b'E', false));
    assert_eq!(flow.phase(false), Phase::FailedTransaction);
    // ROLLBACK predicted, then confirmed.
    flow.predict_tx(false);
    assert_eq!(flow.phase(true), Phase::WaitingForAnswers);
    assert!(flow.ready_for_query(b'I', false));
    assert_eq!(flow.phase(false), Phase::Idle);
}

#[test]
fn copy_in_lasts_until_the_commands_ready_for_query_and_the_client_is_read_meanwhile() {
    let mut flow = Flow::default();
    send(&mut flow, b"Q");
    assert!(!flow.reads_client(true));
    flow.copy_started();
    assert_eq!(flow.phase(true), Phase::CopyIn);
    assert!(flow.reads_client(true), "COPY data comes from the client");
    assert!(flow.ready_for_query(b'I', false));
    assert!(!flow.copy_in());
    assert_eq!(flow.phase(false), Phase::Idle);
}

#[test]
fn answers_still_due_keep_the_client_unread_while_a_batch_is_skipped() {
    let mut flow = Flow::default();
    send(&mut flow, b"Q");
    flow.batch_failed();
    assert_eq!(flow.phase(true), Phase::WaitingForAnswers);
    assert!(!flow.reads_client(true));
    assert_eq!(flow.phase(false), Phase::SkippingToSync);
    assert!(flow.reads_client(false));
}

#[test]
fn a_failed_batch_is_skipped_to_its_sync_answered_by_the_router() {
    let mut flow = Flow::default();
    send(&mut flow, b"P");
    flow.batch_failed();
    assert_eq!(flow.phase(false), Phase::SkippingToSync);
    flow.sync_answered_here();
    assert!(!flow.skip_to_sync());
}

#[test]
fn a_role_guard_sent_alone_holds_the_request_until_its_answer() {
    let mut flow = Flow::default();
    flow.role_guard_sent_alone();
    assert_eq!(flow.guard(), GuardState::Waiting);
    assert!(!flow.batch_start(), "the guard is the unit's start");
    assert!(!flow.reads_client(false));
    assert_eq!(flow.guard_gate(b'Q'), GuardGate::Hold);
    // Its answers come in; while some are due the request stays held.
    flow.answers_relayed(true, false);
    assert!(flow.blocked());
    flow.answers_relayed(false, true);
    assert_eq!(flow.guard(), GuardState::Passed);
    assert!(flow.reads_client(false));
    assert_eq!(flow.guard_gate(b'Q'), GuardGate::Pass);
    flow.guard_used();
    assert_eq!(flow.guard(), GuardState::Idle);
}

#[test]
fn a_failed_role_guard_drops_the_held_query_with_a_ready_for_query() {
    let mut flow = Flow::default();
    flow.role_guard_sent_alone();
    flow.guard_refused();
    assert_eq!(flow.guard(), GuardState::Failed);
    flow.answers_relayed(false, true);
    assert!(!flow.blocked());
    assert_eq!(
        flow.guard_gate(b'Q'),
        GuardGate::Drop { answer_query: true }
    );
    assert_eq!(flow.guard(), GuardState::Idle);
    assert!(!flow.skip_to_sync());
}

#[test]
fn a_failed_role_guard_skips_a_held_extended_batch_to_its_sync() {
    let mut flow = Flow::default();
    flow.role_guard_sent_alone();
    flow.guard_refused();
    flow.answers_relayed(false, true);
    assert_eq!(
        flow.guard_gate(b'P'),
        GuardGate::Drop {
            answer_query: false
        }
    );
    assert_eq!(flow.phase(false), Phase::SkippingToSync);
}

#[test]
fn a_refusal_from_the_server_does_not_fail_a_guard_that_was_pipelined() {
    let mut flow = Flow::default();
    flow.role_guard_pipelined();
    flow.guard_refused();
    assert_eq!(flow.guard(), GuardState::Idle);
    assert!(!flow.batch_start());
    flow.answers_relayed(false, true);
    assert_eq!(flow.guard_gate(b'Q'), GuardGate::Pass);
}

#[test]
fn waiting_until_quiet_unblocks_only_when_every_answer_is_in_and_no_batch_is_open() {
    let mut flow = Flow::default();
    send(&mut flow, b"Q");
    flow.wait_until_quiet();
    flow.answers_relayed(true, false);
    assert!(flow.blocked());
    flow.answers_relayed(false, true);
    assert!(!flow.blocked());
}

#[test]
fn waiting_for_release_unblocks_when_the_server_goes_back() {
    let mut flow = Flow::default();
    flow.predict_tx(false);
    flow.wait_for_release();
    assert!(!flow.reads_client(false));
    flow.server_released();
    assert!(flow.reads_client(false));
}

#[test]
fn a_server_lost_mid_batch_skips_the_rest_of_the_batch() {
    let mut flow = Flow::default();
    flow.predict_tx(true);
    send(&mut flow, b"PB");
    flow.server_lost();
    assert!(!flow.in_tx() && !flow.unsynced());
    assert_eq!(flow.phase(false), Phase::SkippingToSync);
}

#[test]
fn a_server_lost_between_batches_leaves_nothing_to_skip() {
    let mut flow = Flow::default();
    send(&mut flow, b"Q");
    flow.server_lost();
    assert_eq!(flow.phase(false), Phase::Idle);
}

#[test]
fn a_replay_starts_its_batch_afresh_and_a_failed_one_restores_it() {
    let mut flow = Flow::default();
    send(&mut flow, b"PB");
    let saved = flow.replay_started();
    assert!(saved && !flow.unsynced());
    send(&mut flow, b"PB");
    flow.replay_failed(saved);
    assert!(flow.unsynced());
    let mut flow = Flow::default();
    send(&mut flow, b"PBES");
    let saved = flow.replay_started();
    send(&mut flow, b"PBE");
    flow.replay_failed(saved);
    assert!(!flow.unsynced());
}

#[test]
fn a_batch_moved_by_the_router_is_closed_and_the_new_server_starts_a_unit() {
    let mut flow = Flow::default();
    send(&mut flow, b"PD");
    flow.batch_closed_by_router();
    assert!(!flow.unsynced());
    assert!(flow.at_unit_boundary());
    flow.role_guard_pipelined();
    flow.attached();
    assert!(flow.batch_start() && !flow.executed_unsynced());
}
