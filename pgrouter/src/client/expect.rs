//! The answers a server still owes, in order.
//!
//! When the router rewrites a client's extended-protocol stream it sends some
//! messages the client did not (a Parse of a statement this server lacks, a
//! Close to evict one), and skips some the client did send (a Parse the server
//! already has, a Close of a shared statement). Their answers must be dropped
//! or made up at exactly the right place in the reply stream. This queue holds
//! one entry per message sent (or answered by the router), and says for each
//! server message whether it goes to the client.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

/// The kind of message an answer belongs to; each ends with a known message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `Some(id)` when the Parse prepares the shared statement `id`.
    Parse(Option<u64>),
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    Query,
    FunctionCall,
}

impl Reply {
    /// True when `tag` is the last message of this reply.
    fn ends_with(self, tag: u8) -> bool {
        match self {
            Reply::Parse(_) => tag == b'1',
            Reply::Bind => tag == b'2',
            Reply::DescribeStatement | Reply::DescribePortal => tag == b'T' || tag == b'n',
            Reply::Execute => matches!(tag, b'C' | b'I' | b's'),
            Reply::Close => tag == b'3',
            Reply::Sync | Reply::Query | Reply::FunctionCall => tag == b'Z',
        }
    }

    /// Extended-protocol messages after an error are skipped by the server
    /// up to the next Sync.
    fn is_extended(self) -> bool {
        !matches!(self, Reply::Sync | Reply::Query | Reply::FunctionCall)
    }
}

/// Small and `Copy`: the usual entry (`Forward`) is queued and taken off
/// for every message, so it carries no payload to move and drop. The
/// payloads of the rare kinds wait in queues of their own, in the same
/// order (`Expectations::made`, `Expectations::guards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// The client sent it; the server's answer goes to the client.
    Forward(Reply),
    /// The client sent it, and the router sent its refusal of it, raised
    /// through the server (`raise_sql`), in its place: answered as
    /// `Forward`, but the error in the answer is the router's.
    Refused(Reply),
    /// The router sent it; the answer is dropped.
    Swallow(Reply),
    /// The router did not send the client's message and answers it itself
    /// with bytes of its own (ParseComplete, CloseComplete, or a whole
    /// answer), the next of `Expectations::made`.
    Synthesize,
    /// The router sent it and the client's work depends on it (SET ROLE of
    /// a JWT session, a refusal raised through the server, the replay of the
    /// client's settings or SQL prepared statements): the answer is dropped,
    /// but an error goes to the client. What it is for is the next of
    /// `Expectations::guards`.
    Guard(Reply),
    /// A client Sync the server read while in COPY FROM STDIN mode: it
    /// ignores Sync (and Flush) there, so no ReadyForQuery answers it (see
    /// [`Expectations::copy_in_started`]).
    Unanswered,
}

impl Entry {
    /// The reply whose answer goes to the client, if it does.
    fn to_client(self) -> Option<Reply> {
        match self {
            Entry::Forward(r) | Entry::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// What a guarded message of the router's is for: when it fails, or is
/// skipped because something before it failed, the router's bookkeeping of
/// what it did must be taken back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardFor {
    /// The session's policy (the JWT role): nothing to take back.
    Policy,
    /// The router's refusal of the client's message, raised through the
    /// server: nothing to take back, and its error is the router's.
    Refusal,
    /// `DISCARD SEQUENCES` owed on this connection: still owed if it did not
    /// run.
    Sequences,
    /// Carries the client's setting `name` to this server connection.
    Setting(Arc<str>),
    /// Re-creates (or drops) the SQL prepared statement `name` on this
    /// server connection, which had `before` under that name.
    SqlPrepared {
        name: Arc<str>,
        before: Option<Arc<str>>,
    },
}

/// What to do with one server message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub forward: bool,
    /// Router-made messages to send to the client before this one.
    pub synthesize_before: Vec<Bytes>,
    /// Router-made messages to send right after this one.
    pub synthesize_after: Vec<Bytes>,
    /// A shared statement whose Parse failed: the server does not have it.
    pub failed_parse: Option<u64>,
    /// Client statement names whose Parse failed or was skipped after the
    /// error: PostgreSQL did not create them, so the client may parse them
    /// again (see [`Expectations::client_parse`]).
    pub failed_names: Vec<Arc<str>>,
    /// A guard failed before a simple query the server now ignores while it
    /// waits for a Sync: the router must send one, whose ReadyForQuery
    /// answers the client's query.
    pub inject_sync: bool,
    /// The error is a guard's: the client's request behind it must not run.
    pub guard_failed: Option<GuardFor>,
    /// Guards that did not run: the server skipped them after the error.
    pub guards_skipped: Vec<GuardFor>,
    /// The error answers the router's refusal raised through the server:
    /// the client gets it as the router makes its errors, as it would
    /// outside a transaction (not with the raise's PL/pgSQL context).
    pub refusal: bool,
}

#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Entry>,
    /// The answers of the queued `Synthesize` entries, in order.
    made: VecDeque<Bytes>,
    /// The purposes of the queued `Guard` entries, in order.
    guards: VecDeque<GuardFor>,
    /// Swallow and Synthesize entries queued; zero lets the relay take its
    /// fast path (every message forwarded verbatim).
    special: usize,
    /// The server hit an error in an extended batch and ignores everything up
    /// to the next Sync it receives.
    server_skipping: bool,
    /// Entries ever queued and ever taken off the queue: an entry's index
    /// is the value of `pushed` when it was queued.
    pushed: u64,
    popped: u64,
    /// Client Parses of named statements still unanswered: (index of the
    /// entry that answers it, the client's name).
    named_parses: VecDeque<(u64, Arc<str>)>,
    /// The server is in COPY FROM STDIN mode for the entry at the head and
    /// the client has not ended the data yet: a Sync it sends now is
    /// ignored by the server.
    copy_data_open: bool,
    /// `pushed` when the client last sent CopyDone or CopyFail: entries
    /// queued from that index on were read by the server after the COPY.
    copy_end_at: u64,
}

impl Expectations {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Nothing will be dropped or made up: relay verbatim.
    #[cfg(test)]
    pub fn is_plain(&self) -> bool {
        self.special == 0
    }

    /// True while the server ignores extended messages after an error.
    pub fn server_skipping(&self) -> bool {
        self.server_skipping
    }

    #[inline]
    pub fn forward(&mut self, reply: Reply) {
        if reply == Reply::Sync {
            if self.copy_data_open {
                self.special += 1;
                self.pushed += 1;
                self.queue.push_back(Entry::Unanswered);
                return;
            }
            self.server_skipping = false;
        }
        self.pushed += 1;
        self.queue.push_back(Entry::Forward(reply));
    }

    /// The server answered the head entry with CopyInResponse: it now reads
    /// COPY data and ignores Sync until the client's CopyDone or CopyFail.
    /// Clients that send COPY through the extended protocol (libpq's
    /// `PQexecParams`, tokio-postgres) pipeline a Sync behind the Execute
    /// and send another after CopyDone; only the second is answered. Syncs
    /// already queued behind the head and sent before the client ended the
    /// data get no answer, nor do those sent until it does.
    pub fn copy_in_started(&mut self) {
        let head = self.popped;
        // The client may have sent its CopyDone already (data pipelined
        // without waiting for CopyInResponse): Syncs after it are answered.
        let ended_at = (self.copy_end_at > head).then_some(self.copy_end_at);
        for (k, entry) in self.queue.iter_mut().enumerate().skip(1) {
            if ended_at.is_some_and(|end| head + k as u64 >= end) {
                break;
            }
            if *entry != Entry::Forward(Reply::Sync) {
                break;
            }
            *entry = Entry::Unanswered;
            self.special += 1;
        }
        self.copy_data_open = ended_at.is_none() && !self.queue.is_empty();
    }

    /// The client sent CopyDone or CopyFail: a Sync from now on is answered.
    pub fn copy_data_ended(&mut self) {
        self.copy_data_open = false;
        self.copy_end_at = self.pushed;
    }

    /// Index the next queued entry will have (see [`Self::client_parse`]).
    pub fn next_index(&self) -> u64 {
        self.pushed
    }

    /// The client's Parse of statement `name` is answered by the entry
    /// queued at `index` (taken from [`Self::next_index`] before queuing it);
    /// nothing when it was answered at once. Should that Parse fail, or be
    /// skipped after an earlier error, the name comes back in
    /// [`Verdict::failed_names`].
    pub fn client_parse(&mut self, index: u64, name: &str) {
        while self
            .named_parses
            .front()
            .is_some_and(|&(i, _)| i < self.popped)
        {
            self.named_parses.pop_front();
        }
        if index >= self.popped && index < self.pushed {
            self.named_parses.push_back((index, Arc::from(name)));
        }
    }

    pub fn swallow(&mut self, reply: Reply) {
        if reply == Reply::Sync {
            self.server_skipping = false;
        }
        self.special += 1;
        self.pushed += 1;
        self.queue.push_back(Entry::Swallow(reply));
    }

    /// The router's refusal of the client's message is sent in its place
    /// and answers it (see [`Entry::Refused`]).
    pub fn refused(&mut self, reply: Reply) {
        self.special += 1;
        self.pushed += 1;
        self.queue.push_back(Entry::Refused(reply));
    }

    pub fn guard(&mut self, reply: Reply, purpose: GuardFor) {
        self.special += 1;
        self.pushed += 1;
        self.queue.push_back(Entry::Guard(reply));
        self.guards.push_back(purpose);
    }

    /// Queues a router-made answer. Returns it at once (to send now) when
    /// nothing is in flight ahead of it; nothing when the server is skipping
    /// (PostgreSQL would not answer either).
    pub fn synthesize(&mut self, answer: Bytes) -> Option<Bytes> {
        if self.server_skipping {
            return None;
        }
        if self.queue.is_empty() {
            return Some(answer);
        }
        self.special += 1;
        self.pushed += 1;
        self.queue.push_back(Entry::Synthesize);
        self.made.push_back(answer);
        None
    }

    /// Router-made answers now at the head of the queue, to send right away.
    pub fn take_ready_synthesized(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.special == 0 {
            return out; // no Synthesize entry queued (the usual case)
        }
        while let Some(Entry::Synthesize) = self.queue.front() {
            self.queue.pop_front();
            self.special -= 1;
            self.popped += 1;
            out.extend(self.made.pop_front());
        }
        out
    }

    /// ReadyForQuery messages the client still expects (one per Sync, Query
    /// or FunctionCall it sent), for answering them when the server is lost.
    pub fn outstanding_ready(&self) -> usize {
        self.queue
            .iter()
            .filter(|e| {
                matches!(
                    e.to_client(),
                    Some(Reply::Sync | Reply::Query | Reply::FunctionCall)
                )
            })
            .count()
    }

    /// The usual case, decided without a [`Verdict`]: true when only
    /// Forward entries are queued and `tag` is not an error, so the message
    /// simply goes to the client (the queue advanced past it); false when
    /// [`Self::on_server_message`] must decide.
    #[inline]
    pub fn pass(&mut self, tag: u8) -> bool {
        if self.special != 0 || tag == b'E' {
            return false;
        }
        if let Some(Entry::Forward(reply)) = self.queue.front() {
            if !matches!(tag, b'N' | b'A' | b'S') && reply.ends_with(tag) {
                self.queue.pop_front();
                self.popped += 1;
                // The head's COPY (if any) is over.
                self.copy_data_open = false;
            }
        }
        true
    }

    /// The second most usual case, decided without a [`Verdict`]: true
    /// when `tag` (not an error) answers a message of the router's own at
    /// the head of the queue and is simply dropped (the queue advanced past
    /// it); false when [`Self::on_server_message`] must decide. Nothing
    /// router-made may wait right behind the answer's end.
    pub fn drop_quietly(&mut self, tag: u8) -> bool {
        if tag == b'E' {
            return false;
        }
        let reply = match self.queue.front() {
            Some(Entry::Swallow(r) | Entry::Guard(r)) => *r,
            _ => return false,
        };
        if matches!(tag, b'N' | b'A' | b'S') || !reply.ends_with(tag) {
            return true;
        }
        if let Some(Entry::Synthesize) = self.queue.get(1) {
            return false;
        }
        self.pop_head();
        true
    }

    /// Decides the fate of one server message and advances the queue.
    pub fn on_server_message(&mut self, tag: u8) -> Verdict {
        if self.pass(tag) {
            return Verdict {
                forward: true,
                ..Verdict::default()
            };
        }
        let mut verdict = Verdict {
            synthesize_before: self.take_ready_synthesized(),
            ..Verdict::default()
        };
        let Some(&head) = self.queue.front() else {
            verdict.forward = true; // unsolicited (e.g. a FATAL before close)
            return verdict;
        };
        verdict.refusal = tag == b'E' && matches!(head, Entry::Refused(_));
        let (reply, swallowing, guard) = match head {
            Entry::Forward(r) | Entry::Refused(r) => (r, false, None),
            Entry::Swallow(r) => (r, true, None),
            Entry::Guard(r) => (r, true, self.guards.front().cloned()),
            Entry::Synthesize => unreachable!("synthesized entries were taken above"),
            Entry::Unanswered => unreachable!("unanswered entries never stay at the head"),
        };
        // Asynchronous messages belong to no request.
        if matches!(tag, b'N' | b'A' | b'S') {
            verdict.forward = !swallowing;
            return verdict;
        }
        if tag == b'E' && reply.is_extended() {
            let failed_from = self.popped;
            self.pop_head();
            if let Reply::Parse(id) = reply {
                verdict.failed_parse = id;
            }
            self.skip_to_sync(&mut verdict);
            if !self.named_parses.is_empty() {
                let failed = failed_from..self.popped;
                self.named_parses.retain(|(i, name)| {
                    if failed.contains(i) {
                        verdict.failed_names.push(name.clone());
                    }
                    *i >= failed.end
                });
            }
            verdict.synthesize_after = self.take_ready_synthesized();
            // An error the client would have got from its own message had the
            // router not rewritten the stream: it must see it.
            verdict.forward = !swallowing
                || guard.is_some()
                || matches!(
                    reply,
                    Reply::Parse(_) | Reply::Bind | Reply::DescribeStatement
                );
            verdict.refusal |= guard == Some(GuardFor::Refusal);
            verdict.guard_failed = guard;
            return verdict;
        }
        verdict.forward = !swallowing
            || (tag == b'E'
                && (guard.is_some() || (reply != Reply::Query && reply != Reply::Close)));
        if reply.ends_with(tag) {
            self.pop_head();
            verdict.synthesize_after = self.take_ready_synthesized();
        }
        verdict
    }

    fn pop_head(&mut self) {
        let Some(entry) = self.queue.pop_front() else {
            return;
        };
        self.popped += 1;
        self.copy_data_open = false;
        match entry {
            Entry::Forward(_) => {}
            Entry::Synthesize => {
                self.made.pop_front();
                self.special -= 1;
            }
            Entry::Guard(_) => {
                self.guards.pop_front();
                self.special -= 1;
            }
            Entry::Swallow(_) | Entry::Refused(_) => self.special -= 1,
            // Never at the head (taken below, with the entry before it).
            Entry::Unanswered => {}
        }
        // Syncs the server ignored during the head's COPY: nothing will
        // answer them, so they never wait at the head.
        while self.queue.front() == Some(&Entry::Unanswered) {
            self.queue.pop_front();
            self.popped += 1;
            self.special -= 1;
        }
    }

    /// After an extended-protocol error the server skips to the next Sync:
    /// those entries get no answer (and made-up answers are not sent).
    fn skip_to_sync(&mut self, verdict: &mut Verdict) {
        let mut skipped_simple = false;
        loop {
            match self.queue.front().copied() {
                None if skipped_simple => {
                    verdict.inject_sync = true;
                    return;
                }
                None => {
                    self.server_skipping = true;
                    return;
                }
                Some(
                    Entry::Forward(Reply::Query | Reply::FunctionCall)
                    | Entry::Refused(Reply::Query),
                ) => {
                    skipped_simple = true;
                    self.pop_head();
                }
                Some(Entry::Forward(Reply::Sync) | Entry::Swallow(Reply::Sync)) => return,
                Some(entry) => {
                    if let (Entry::Guard(_), Some(purpose)) = (entry, self.guards.front()) {
                        verdict.guards_skipped.push(purpose.clone());
                    }
                    if let Entry::Forward(Reply::Parse(Some(id)))
                    | Entry::Swallow(Reply::Parse(Some(id)))
                    | Entry::Guard(Reply::Parse(Some(id))) = entry
                    {
                        // Only the first failed parse is reported; later ones never ran.
                        verdict.failed_parse.get_or_insert(id);
                    }
                    self.pop_head();
                }
            }
        }
    }
}

/// ParseComplete, as the router makes it up.
pub const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
/// CloseComplete, as the router makes it up.
pub const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

#[cfg(test)]
mod tests {
    use super::*;

    fn made(tag: u8) -> Bytes {
        Bytes::from(vec![tag, 0, 0, 0, 4])
    }

    /// `drop_quietly` decides exactly what `on_server_message` would for
    /// the answers of the router's own messages, and leaves the rest to it.
    #[test]
    fn own_answers_are_dropped_quietly_as_on_server_message_would() {
        let build = || {
            let mut e = Expectations::default();
            e.swallow(Reply::Parse(None));
            e.swallow(Reply::Bind);
            e.guard(Reply::Execute, GuardFor::Policy);
            e.forward(Reply::Query);
            e
        };
        let (mut quiet, mut full) = (build(), build());
        for tag in [b'1', b'2', b'N', b'C'] {
            assert!(!quiet.pass(tag));
            assert!(quiet.drop_quietly(tag), "{}", tag as char);
            assert!(!full.on_server_message(tag).forward);
        }
        assert!(quiet.is_plain() && full.is_plain());
        for tag in [b'T', b'D', b'C', b'Z'] {
            assert!(quiet.pass(tag));
            assert!(full.on_server_message(tag).forward);
        }
        assert!(quiet.is_empty() && full.is_empty());

        // An error, or something made up right behind: the full decision.
        let mut e = build();
        assert!(!e.drop_quietly(b'E'));
        let mut e = Expectations::default();
        e.swallow(Reply::Query);
        assert!(e.synthesize(made(b'1')).is_none());
        assert!(e.drop_quietly(b'C'));
        assert!(!e.drop_quietly(b'Z'));
        let v = e.on_server_message(b'Z');
        assert!(!v.forward);
        assert_eq!(v.synthesize_after, vec![made(b'1')]);
    }

    #[test]
    fn plain_batches_forward_everything() {
        let mut e = Expectations::default();
        for r in [Reply::Parse(None), Reply::Bind, Reply::Execute, Reply::Sync] {
            e.forward(r);
        }
        assert!(e.is_plain());
        for tag in [b'1', b'2', b'D', b'D', b'C'] {
            assert!(e.on_server_message(tag).forward);
        }
        assert!(!e.is_empty());
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty());
    }

    #[test]
    fn injected_parse_is_swallowed_and_skipped_parse_is_made_up() {
        let mut e = Expectations::default();
        // Client: Parse s1 (server already has it) -> made up now.
        assert_eq!(e.synthesize(made(b'1')), Some(made(b'1')));
        // Client: Bind s2 needs an injected Parse first.
        e.swallow(Reply::Parse(Some(7)));
        e.forward(Reply::Bind);
        e.forward(Reply::Execute);
        // Client: Close s2 -> made up, but only after Execute's answer.
        assert_eq!(e.synthesize(made(b'3')), None);
        e.forward(Reply::Sync);
        assert!(!e.on_server_message(b'1').forward);
        assert!(e.on_server_message(b'2').forward);
        let v = e.on_server_message(b'C');
        assert!(v.forward);
        assert_eq!(v.synthesize_after, vec![made(b'3')]);
        let v = e.on_server_message(b'Z');
        assert!(v.forward && v.synthesize_before.is_empty());
        assert!(e.is_empty() && e.is_plain());
    }

    #[test]
    fn failed_and_skipped_client_parses_give_their_names_back() {
        let mut e = Expectations::default();
        // Batch 1: Parse ok (answered), Parse bad (fails), Parse skipped
        // (made up: the server has it), Sync. Batch 2: Parse, Sync.
        let i = e.next_index();
        e.forward(Reply::Parse(Some(1)));
        e.client_parse(i, "ok");
        let i = e.next_index();
        e.forward(Reply::Parse(Some(2)));
        e.client_parse(i, "bad");
        e.forward(Reply::Bind);
        let i = e.next_index();
        assert_eq!(e.synthesize(made(b'1')), None);
        e.client_parse(i, "skipped");
        e.forward(Reply::Sync);
        let i = e.next_index();
        e.forward(Reply::Parse(Some(3)));
        e.client_parse(i, "later");
        e.forward(Reply::Sync);
        assert!(e.on_server_message(b'1').forward);
        let v = e.on_server_message(b'E');
        assert!(v.forward);
        assert_eq!(v.failed_parse, Some(2));
        let names: Vec<&str> = v.failed_names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["bad", "skipped"]);
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.on_server_message(b'1').forward);
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty());
        // Answered at once: nothing to track.
        let i = e.next_index();
        assert_eq!(e.synthesize(made(b'1')), Some(made(b'1')));
        e.client_parse(i, "now");
        e.forward(Reply::Bind);
        e.forward(Reply::Sync);
        let v = e.on_server_message(b'E');
        assert!(v.failed_names.is_empty());
    }

    #[test]
    fn error_skips_to_sync_and_drops_made_up_answers() {
        let mut e = Expectations::default();
        e.forward(Reply::Parse(Some(3)));
        e.forward(Reply::Bind);
        assert_eq!(e.synthesize(made(b'3')), None);
        e.forward(Reply::Sync);
        let v = e.on_server_message(b'E');
        assert!(v.forward);
        assert_eq!(v.failed_parse, Some(3));
        let v = e.on_server_message(b'Z');
        assert!(v.forward && v.synthesize_before.is_empty());
        assert!(e.is_empty() && e.is_plain());
    }

    #[test]
    fn error_before_the_sync_arrives_marks_skipping() {
        let mut e = Expectations::default();
        e.forward(Reply::Parse(None));
        assert!(e.on_server_message(b'E').forward);
        assert!(e.server_skipping());
        assert_eq!(e.synthesize(made(b'1')), None);
        e.forward(Reply::Sync);
        assert!(!e.server_skipping());
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty());
    }

    #[test]
    fn failed_guard_reaches_the_client_and_gets_a_sync_for_a_simple_query() {
        let mut e = Expectations::default();
        e.swallow(Reply::Parse(None));
        e.swallow(Reply::Bind);
        e.guard(Reply::Execute, GuardFor::Policy);
        e.forward(Reply::Query);
        assert!(!e.on_server_message(b'1').forward);
        assert!(!e.on_server_message(b'2').forward);
        let v = e.on_server_message(b'E');
        assert!(v.forward && v.inject_sync);
        e.forward(Reply::Sync);
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty() && e.is_plain());
    }

    /// The error answering a refusal raised through the server is marked
    /// (the relay remakes it as the router's own); nothing else is.
    #[test]
    fn a_refusal_raised_through_the_server_is_marked() {
        let mut e = Expectations::default();
        e.refused(Reply::Query);
        let v = e.on_server_message(b'E');
        assert!(v.forward && v.refusal);
        let v = e.on_server_message(b'Z');
        assert!(v.forward && !v.refusal);
        assert!(e.is_empty() && e.is_plain());
        // Extended: the raise is a guard of its own kind.
        e.swallow(Reply::Parse(None));
        e.swallow(Reply::Bind);
        e.guard(Reply::Execute, GuardFor::Refusal);
        e.forward(Reply::Sync);
        assert!(!e.on_server_message(b'1').forward);
        assert!(!e.on_server_message(b'2').forward);
        let v = e.on_server_message(b'E');
        assert!(v.forward && v.refusal && v.guard_failed == Some(GuardFor::Refusal));
        assert!(!e.on_server_message(b'Z').refusal);
        // A failed role guard ahead of a refused query: the role's error is
        // the server's, and the refused query is skipped (a Sync answers it).
        e.guard(Reply::Execute, GuardFor::Policy);
        e.refused(Reply::Query);
        let v = e.on_server_message(b'E');
        assert!(v.forward && !v.refusal && v.inject_sync);
        e.forward(Reply::Sync);
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty() && e.is_plain());
    }

    #[test]
    fn passed_guard_is_silent() {
        let mut e = Expectations::default();
        e.swallow(Reply::Parse(None));
        e.swallow(Reply::Bind);
        e.guard(Reply::Execute, GuardFor::Policy);
        e.forward(Reply::Parse(None));
        e.forward(Reply::Sync);
        for tag in [b'1', b'2', b'C'] {
            assert!(!e.on_server_message(tag).forward);
        }
        assert!(e.on_server_message(b'1').forward);
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty());
    }

    #[test]
    fn failed_synced_guard_stops_at_its_own_sync() {
        let mut e = Expectations::default();
        e.swallow(Reply::Parse(None));
        e.swallow(Reply::Bind);
        e.guard(Reply::Execute, GuardFor::Policy);
        e.swallow(Reply::Sync);
        assert!(!e.on_server_message(b'1').forward);
        assert!(!e.on_server_message(b'2').forward);
        let v = e.on_server_message(b'E');
        assert!(v.forward && v.guard_failed == Some(GuardFor::Policy) && !v.inject_sync);
        assert!(!e.server_skipping());
        assert!(!e.on_server_message(b'Z').forward);
        assert!(e.is_empty());
    }

    #[test]
    fn a_failed_replay_names_what_failed_and_what_never_ran() {
        let setting = |n: &str| GuardFor::Setting(n.into());
        let prepared = GuardFor::SqlPrepared {
            name: "s".into(),
            before: None,
        };
        let mut e = Expectations::default();
        for purpose in [setting("a"), setting("b"), prepared.clone()] {
            e.swallow(Reply::Parse(None));
            e.swallow(Reply::Bind);
            e.guard(Reply::Execute, purpose);
        }
        // The replay's own COMMIT, then the client's query.
        e.swallow(Reply::Parse(None));
        e.swallow(Reply::Bind);
        e.swallow(Reply::Execute);
        e.forward(Reply::Query);
        for tag in [b'1', b'2', b'D', b'C', b'1', b'2'] {
            assert!(!e.on_server_message(tag).forward);
        }
        let v = e.on_server_message(b'E');
        assert!(v.forward, "the client sees the replay's error");
        assert_eq!(v.guard_failed, Some(setting("b")));
        assert_eq!(v.guards_skipped, vec![prepared]);
        assert!(
            v.inject_sync,
            "the client's query was skipped: a Sync answers it"
        );
        e.forward(Reply::Sync);
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty() && e.is_plain());
    }

    #[test]
    fn simple_query_errors_do_not_skip() {
        let mut e = Expectations::default();
        e.swallow(Reply::Query);
        e.forward(Reply::Query);
        assert!(!e.on_server_message(b'E').forward);
        assert!(!e.on_server_message(b'Z').forward);
        assert!(e.on_server_message(b'E').forward);
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty());
    }

    /// COPY FROM STDIN through the extended protocol (libpq, tokio-postgres):
    /// Parse/Bind/Execute/Sync, then data, CopyDone and a second Sync. The
    /// server ignores the first Sync (it is in COPY mode when it reads it)
    /// and answers only the second.
    fn extended_copy() -> Expectations {
        let mut e = Expectations::default();
        for r in [Reply::Parse(None), Reply::Bind, Reply::Execute, Reply::Sync] {
            e.forward(r);
        }
        for tag in [b'1', b'2'] {
            assert!(e.on_server_message(tag).forward);
        }
        assert!(e.on_server_message(b'G').forward);
        e.copy_in_started();
        e
    }

    #[test]
    fn a_sync_read_during_copy_in_gets_no_ready_for_query() {
        let mut e = extended_copy();
        e.forward(Reply::Sync); // sent in COPY mode too: ignored as well
        e.copy_data_ended();
        e.forward(Reply::Sync);
        assert_eq!(e.outstanding_ready(), 1);
        assert!(e.on_server_message(b'C').forward);
        assert!(!e.is_empty(), "the Sync after CopyDone is answered");
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty());
        // The queue is plain again.
        e.forward(Reply::Query);
        assert!(e.pass(b'Z') && e.is_empty() && e.is_plain());
    }

    #[test]
    fn an_error_in_the_copy_data_waits_for_the_sync_after_copy_done() {
        let mut e = extended_copy();
        let v = e.on_server_message(b'E');
        assert!(v.forward);
        assert!(e.is_empty() && e.server_skipping());
        e.copy_data_ended();
        e.forward(Reply::Sync);
        assert!(!e.server_skipping());
        assert!(e.on_server_message(b'Z').forward);
        assert!(e.is_empty() && e.is_plain());
    }

    #[test]
    fn syncs_after_a_copy_done_sent_before_copy_in_response_are_answered() {
        let mut e = Expectations::default();
        e.forward(Reply::Query);
        e.copy_data_ended(); // data and CopyDone pipelined behind the COPY
        e.forward(Reply::Sync);
        assert!(e.on_server_message(b'G').forward);
        e.copy_in_started();
        assert_eq!(e.outstanding_ready(), 2);
        for tag in [b'C', b'Z', b'Z'] {
            assert!(e.on_server_message(tag).forward);
        }
        assert!(e.is_empty());
    }

    #[test]
    fn simple_copy_without_syncs_is_unchanged() {
        let mut e = Expectations::default();
        e.forward(Reply::Query);
        assert!(e.pass(b'G'));
        e.copy_in_started();
        e.copy_data_ended();
        assert!(e.is_plain());
        for tag in [b'C', b'Z'] {
            assert!(e.pass(tag));
        }
        assert!(e.is_empty());
    }
}
