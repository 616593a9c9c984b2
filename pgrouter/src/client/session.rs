//! The per-client loop after login: read client messages, hold a server for
//! exactly as long as the pool mode says, relay answers, give the server back.
//!
//! The loop itself only waits and dispatches. What goes to the server (and
//! where) is in `outbound.rs`; what comes back is in `inbound.rs`. A server
//! goes back to its pool (transaction mode) only when every request sent has
//! been answered ([`Expectations`] is empty), no extended-protocol batch waits
//! for its Sync, and the server says it is outside a transaction.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use pgrouter_config::PoolMode;
use pgrouter_parser::Analysis;
use tokio::io::AsyncWriteExt;

use super::cancel::CancelKey;
use super::cleanup::release_after_session;
use super::error::SessionEnd;
use super::expect::Expectations;
use super::params::ClientParams;
use super::prepared::{SessionStatement, SqlPrepared};
use super::registry::{ClientState, Registered};
use super::replay_buffer::Replay;
use super::tracking::SetTracker;
use crate::net::ClientStream;
use crate::pool::{Pool, UserPools};
use crate::router::Policy;
use crate::state::{Runtime, State};

pub(super) use super::flow::GuardState;
pub(super) use super::lease::Held;

/// Everything a session needs from login.
pub struct SessionSetup {
    pub cbuf: BytesMut,
    pub pools: Arc<UserPools>,
    /// The users.toml entry whose pools serve the session.
    pub pools_user: String,
    pub database: String,
    pub rt: Arc<Runtime>,
    pub registered: Registered,
    pub params: ClientParams,
    pub cancel: CancelKey,
    pub state: Arc<State>,
    pub policy: Policy,
}

pub struct Session {
    pub(super) client: ClientStream,
    pub(super) cbuf: BytesMut,
    pub(super) pools: Arc<UserPools>,
    pub(super) pools_user: String,
    pub(super) database: String,
    /// The runtime (config, pools, cache) this session uses; replaced at a
    /// transaction boundary after a reload.
    pub(super) rt: Arc<Runtime>,
    pub(super) registered: Registered,
    /// When the request now in flight was sent (query duration metric).
    pub(super) request_started: Option<crate::clock::Tick>,
    pub(super) mode: PoolMode,
    pub(super) params: ClientParams,
    pub(super) cancel: CancelKey,
    pub(super) state: Arc<State>,
    pub(super) policy: Policy,
    pub(super) max_message: usize,
    idle_timeout: Option<Duration>,
    /// `idle_transaction_timeout_ms`: a client idle inside a transaction
    /// this long is closed (25P03).
    idle_tx_timeout: Option<Duration>,
    /// `query_timeout_ms`: a request the server has not answered by then
    /// is cancelled on the server (it answers 57014).
    query_timeout: Option<Duration>,
    /// When the request now in flight was cancelled for `query_timeout`.
    /// A server that has not answered another `query_timeout` later (frozen,
    /// or cut off by the network: the cancel cannot reach it either) is
    /// given up on like a lost connection, so the client is not held.
    pub(super) query_cancelled: Option<std::time::Instant>,
    pub(super) shutdown: super::shutdown::ShutdownListener,
    pub(super) shutdown_seen: bool,

    pub(super) server: Option<Held>,
    /// Connections this session keeps between transactions besides the
    /// held one (sharded databases, in shard order; see `kept.rs`).
    pub(super) kept: Vec<Held>,
    /// A transaction on several shards: its legs other than `server`.
    pub(super) tx_legs: Option<super::shards::held::TxLegs>,
    /// SAVEPOINTs sent in the transaction of the held server (identified
    /// by its `attached_at`), for legs that join it later.
    pub(super) tx_savepoints: (Option<crate::clock::Tick>, Vec<String>),
    /// Named portals bound in the client's transaction block on a sharded
    /// database (see `shard_portals.rs`); emptied at the next unit of work
    /// outside a transaction.
    pub(super) shard_portals: Vec<(String, bool)>,
    /// A bare BEGIN answered without a server (sharded databases): sent
    /// ahead of the next unit of work, on the shard that unit needs.
    pub(super) deferred_begin: Option<String>,
    /// A batch on several shards between its first part and its Sync.
    pub(super) pipeline: Option<super::shards::held::Pipeline>,
    /// Answers recorded while no server is held: dropped with `unsent`
    /// (see `Session::expect`, `Session::drop_unsent`).
    pub(super) unsent_expect: Expectations,
    /// An emptied answer queue kept for the next server held (its
    /// allocation reused).
    pub(super) spare_expect: Expectations,
    pub(super) sets: SetTracker,
    /// Where the conversation stands (see `flow.rs`).
    pub(super) flow: super::flow::Flow,
    /// Session state that ties the client to its server connection
    /// (transaction mode; see `pinning.rs`).
    pub(super) pins: super::pinning::Pins,
    /// Where the session's writes are (`read_your_writes`).
    pub(super) ryw: super::read_your_writes::ReadYourWrites,
    /// `session_state = "refuse"` in transaction mode: statements creating
    /// such state are refused with 0A000 instead of pinning.
    pub(super) refuse_session_state: bool,
    /// With `refuse_session_state`: this transaction called `nextval` /
    /// `setval` (allowed inside a transaction block, where `currval` works
    /// on the same connection). Its sequence state is discarded before the
    /// connection serves anything that could read it again.
    pub(super) sequence_state_in_tx: bool,
    /// The client may have put the temporary schema on its search_path
    /// (at login or since): its unqualified CREATEs may then make temporary
    /// objects (see `Analysis::creates_by_search_path`). Never cleared.
    pub(super) temp_search_path: bool,
    /// Sharded databases: the temporary relations the session created and
    /// their shard, where DDL naming them runs (see `temp_objects.rs`).
    pub(super) temps: super::temp_objects::TempObjects,

    /// The client's named statements (protocol level).
    pub(super) statements: ahash::AHashMap<String, Arc<SessionStatement>>,
    /// The client's SQL-level PREPAREd statements.
    pub(super) sql_prepared: HashMap<String, SqlPrepared>,
    /// Named statements of `EXPLAIN (ROUTE) ...` the router answers itself
    /// (name → text and the Parse's declared parameter types; see
    /// `explain_route_prepared.rs`).
    pub(super) local_explains: HashMap<String, (String, Vec<i32>)>,
    /// The client's PREPAREs not answered yet.
    pub(super) pending_prepares: super::sql_prepared::PendingPrepares,
    /// Analysis of the last unnamed Parse, for routing the Bind after it.
    pub(super) unnamed: Option<Arc<Analysis>>,
    /// The client's last unnamed Parse message, to parse it again on another
    /// server connection (see `outbound::parse_unnamed_here`).
    pub(super) unnamed_parse: BytesMut,
    /// The server held now has that unnamed statement.
    pub(super) unnamed_here: bool,
    /// A merged read on several shards answered the unnamed portal's
    /// Execute with PortalSuspended: until the next Bind, an Execute that
    /// continues that portal is refused (the shards' portals ran to the
    /// end; see `shards/read.rs`).
    pub(super) unnamed_portal_suspended_on_shards: bool,
    /// An `EXPLAIN (ROUTE)` of an INSERT without a column list into a
    /// sharded table whose columns are not known yet: learnt, then the
    /// EXPLAIN is answered (see `learn_columns_for_explain`).
    pub(super) explain_wants_columns: Option<Arc<Analysis>>,
    /// An `EXPLAIN (ROUTE)` with `$n` prepared and described (asyncpg):
    /// its text and declared types, whose parameter types one shard is
    /// asked for, then it is answered (`explain_route_prepared.rs`).
    pub(super) explain_wants_params: Option<(String, Vec<i32>)>,
    /// A refusal checked with PostgreSQL (`shards/refusal_check.rs`) just
    /// before a deferred BEGIN was sent, by the statement's offset in the
    /// client's stream: the same statement, refused again inside the
    /// transaction it began, gets the same answer.
    pub(super) refusal_checked: Option<(u64, crate::router::Refusal)>,
    /// What PostgreSQL said of the last such statement.
    pub(super) explain_params: Option<super::shards::parse_check::LearntParams>,
    /// Analysis of the statement bound by the last Bind, for SET tracking at Execute.
    pub(super) last_bound: Option<Arc<Analysis>>,

    /// The request to replay elsewhere if the held replica fails before
    /// answering (see `recovery.rs`).
    pub(super) replay: Option<Replay>,
    /// The buffer of the last replay, kept for the next one.
    pub(super) replay_spare: BytesMut,
    /// Notices announcing the held server's end (an immediate shutdown's
    /// WARNING 57P01) that came before any answer to a replayable read:
    /// relayed ahead of the next answer, dropped if the read is replayed
    /// elsewhere (see `inbound.rs`, `recovery.rs`).
    pub(super) held_notices: BytesMut,

    /// Where messages meant for a server go while none is held: dropped at
    /// the next flush, as nothing can be sent (see `Session::to_server`).
    pub(super) unsent: BytesMut,
    pub(super) to_client: BytesMut,
    /// The last statement analysed and its analysis (see `memo.rs`).
    pub(super) memo: super::memo::Memo,
    /// Counts client messages taken from the buffer (for the memo's hit count).
    pub(super) message_seq: std::cell::Cell<u64>,
    /// (params version, routing settings derived from it).
    pub(super) routing_cache: std::cell::Cell<(u64, crate::router::SessionRouting)>,
    /// The last shard plan and its inputs (see `shard_routing.rs`).
    pub(super) plan_memo: super::shard_routing::PlanMemo,
    /// Bytes of client messages read so far, the buffer's own included:
    /// `client_bytes_in - cbuf.len()` is where in the client's stream the
    /// front of the buffer is, however messages were taken from it. Every
    /// read into `cbuf` adds to it (`note_client_read`).
    pub(super) client_bytes_in: u64,
    /// Where in the client's stream the messages checked on arrival end
    /// (see `check_arrived_messages`).
    pub(super) checked_to: u64,
    /// Where in the client's stream the last message checked on arrival
    /// whose strings are not all ASCII ends: none of the messages from
    /// there on needs a look for unreadable text (`unreadable_text.rs`).
    pub(super) non_ascii_to: u64,
    /// The configuration generation the session's login was last found
    /// still valid for (see `check_login_still_valid`).
    pub(super) vetted_generation: u64,
    /// The batch the routing planned whole (see `shard_routing.rs`,
    /// `VettedBatch`).
    pub(super) vetted: std::cell::Cell<Option<super::shard_routing::VettedBatch>>,
    /// The database's shard map in `rt` (None: not sharded), looked up once
    /// per runtime instead of by name for every message.
    pub(super) shard_map: Option<Arc<crate::router::ShardMap>>,
    /// The client's place on its worker thread (None without worker
    /// threads); it moves with the session (`moving.rs`).
    pub(super) seat: Option<crate::worker::Seat>,
}

/// Why [`Session::serve`] returned.
enum Stop {
    End(SessionEnd),
    /// Its worker sheds clients: the session continues on worker `.0`
    /// (see `moving.rs`).
    Move(usize),
}

impl From<SessionEnd> for Stop {
    fn from(end: SessionEnd) -> Stop {
        Stop::End(end)
    }
}

/// How [`Session::run`] returned.
pub enum Ran {
    /// The session is over: the client's socket and why.
    Ended(ClientStream, SessionEnd),
    /// The session is to continue on another worker (see `moving.rs`).
    Moving(Box<Session>, usize),
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Shutdown,
    IdleTimeout,
    /// The client sat idle inside a transaction too long.
    IdleInTransaction,
    /// The server has not answered the request in flight in time.
    QueryTimeout,
    /// Nor the cancel sent for it: the server is unresponsive.
    ServerUnresponsive,
}

impl Session {
    pub fn new(client: ClientStream, setup: SessionSetup) -> Session {
        let g = &setup.rt.config.general;
        let refuse_session_state = setup.pools.mode == PoolMode::Transaction
            && g.session_state == pgrouter_config::SessionStateMode::Refuse;
        let max_message = g.max_message_size as usize;
        let (idle_timeout, idle_tx_timeout, query_timeout) = session_timeouts(g);
        let client_bytes_in = setup.cbuf.len() as u64;
        let shard_map = setup.rt.shard_maps.get(&setup.database).cloned();
        let vetted_generation = setup.rt.generation;
        let temp_search_path = setup
            .params
            .get("search_path")
            .is_some_and(pgrouter_parser::mentions_temp_schema);
        Session {
            client,
            cbuf: setup.cbuf,
            mode: setup.pools.mode,
            pools: setup.pools,
            pools_user: setup.pools_user,
            database: setup.database,
            registered: setup.registered,
            request_started: None,
            params: setup.params,
            cancel: setup.cancel,
            max_message,
            idle_timeout,
            idle_tx_timeout,
            query_timeout,
            query_cancelled: None,
            shutdown: setup.state.session_shutdown.subscribe(),
            state: setup.state,
            rt: setup.rt,
            policy: setup.policy,
            shutdown_seen: false,
            server: None,
            kept: Vec::new(),
            tx_legs: None,
            tx_savepoints: (None, Vec::new()),
            shard_portals: Vec::new(),
            deferred_begin: None,
            pipeline: None,
            unsent_expect: Expectations::default(),
            spare_expect: Expectations::default(),
            sets: SetTracker::default(),
            flow: Default::default(),
            pins: Default::default(),
            ryw: Default::default(),
            refuse_session_state,
            sequence_state_in_tx: false,
            temp_search_path,
            temps: Default::default(),
            statements: ahash::AHashMap::new(),
            local_explains: HashMap::new(),
            sql_prepared: HashMap::new(),
            pending_prepares: Default::default(),
            unnamed: None,
            unnamed_parse: BytesMut::new(),
            unnamed_portal_suspended_on_shards: false,
            explain_wants_columns: None,
            explain_wants_params: None,
            explain_params: None,
            refusal_checked: None,
            unnamed_here: false,
            last_bound: None,
            replay: None,
            replay_spare: BytesMut::new(),
            held_notices: BytesMut::new(),
            unsent: BytesMut::new(),
            to_client: BytesMut::new(),
            routing_cache: Default::default(),
            plan_memo: Default::default(),
            client_bytes_in,
            checked_to: 0,
            non_ascii_to: 0,
            vetted_generation,
            vetted: Default::default(),
            shard_map,
            memo: Default::default(),
            message_seq: Default::default(),
            seat: None,
        }
    }

    /// Runs until the client leaves or the router ends the session. The
    /// server held at that point is cleaned up and returned, or discarded.
    /// Returns early, holding nothing, when the session is to move to
    /// another worker.
    pub async fn run(mut self) -> Ran {
        let end = match self.serve().await {
            Stop::End(end) => end,
            Stop::Move(to) => return Ran::Moving(Box::new(self), to),
        };
        // Asked before the server is taken: with none held, nothing is due.
        let quiet = self.is_quiet() && !self.flow.copy_in();
        if let Some(held) = self.server.take() {
            self.cancel.slot.set(None);
            self.registered.info.set_state(ClientState::Idle);
            let pinned = self.pins.is_pinned() || held.kept;
            release_after_session(held.conn, quiet, self.mode, pinned);
        }
        self.release_kept();
        Ran::Ended(self.client, end)
    }

    async fn serve(&mut self) -> Stop {
        loop {
            if !self.flow.blocked() {
                if let Err(end) = self.handle_client_messages().await {
                    return end.into();
                }
            }
            if self.server.is_none() && self.shutdown.is_fired() {
                return SessionEnd::fatal("57P01", "pgrouter is shutting down").into();
            }
            if self.server.is_none() && crate::worker::asked_to_shed() {
                if let Some(to) = self.may_move() {
                    return Stop::Move(to);
                }
            }
            match self.wait().await {
                Event::Client(Ok(0)) => return SessionEnd::ClientGone.into(),
                Event::Client(Ok(n)) => self.note_client_read(n),
                Event::Client(Err(e)) => return SessionEnd::ClientIo(e).into(),
                Event::Server(Ok(0)) | Event::Server(Err(_)) => {
                    if let Err(end) = self.recover_server_loss().await {
                        return end.into();
                    }
                }
                Event::Server(Ok(_)) => {
                    if let Err(end) = self.handle_server_messages().await {
                        return end.into();
                    }
                }
                Event::Shutdown => self.shutdown_seen = true,
                Event::IdleTimeout => {
                    return SessionEnd::fatal(
                        "57P05",
                        "terminating connection due to client_idle_timeout",
                    )
                    .into()
                }
                Event::IdleInTransaction => {
                    return SessionEnd::fatal(
                        "25P03",
                        "pgrouter: terminating connection due to idle-in-transaction timeout (idle_transaction_timeout_ms)",
                    )
                    .into()
                }
                Event::QueryTimeout => self.cancel_for_timeout(),
                Event::ServerUnresponsive => {
                    tracing::warn!(
                        "the server answered neither a request nor its cancel within query_timeout_ms: closing its connection"
                    );
                    self.query_cancelled = None;
                    if let Err(end) = self.recover_server_loss().await {
                        return end.into();
                    }
                }
            }
            if self.shutdown.is_fired() && self.at_boundary() {
                return SessionEnd::fatal("57P01", "pgrouter is shutting down").into();
            }
        }
    }

    /// Between transactions with nothing in flight.
    pub(super) fn at_boundary(&self) -> bool {
        match &self.server {
            None => true,
            Some(held) => self.is_quiet() && held.conn.tx_status == b'I',
        }
    }

    /// The queue of messages for the held server (its connection's
    /// `write_buf`, sent by `Held::flush`). With no server held, a scratch
    /// buffer dropped at the next flush: nothing can be sent.
    // "to the server", not a conversion: the name reads as the direction.
    #[allow(clippy::wrong_self_convention)]
    pub(super) fn to_server(&mut self) -> &mut BytesMut {
        match self.server.as_mut() {
            Some(held) => &mut held.conn.write_buf,
            None => &mut self.unsent,
        }
    }

    /// The answers the held server owes (`Held::expect`). With no server
    /// held, a queue for what is dropped with `unsent`.
    pub(super) fn expect(&mut self) -> &mut Expectations {
        match self.server.as_mut() {
            Some(held) => &mut held.expect,
            None => &mut self.unsent_expect,
        }
    }

    /// Drops what was queued while no server was held (nothing can send
    /// it); returns whether there was anything.
    pub(super) fn drop_unsent(&mut self) -> bool {
        if self.unsent.is_empty() && self.unsent_expect.is_empty() {
            return false;
        }
        self.unsent.clear();
        self.unsent_expect = Default::default();
        true
    }

    /// Queues a client's `msg` for the held server and the answer it owes
    /// (`owed`): one look-up of the held server for both (a forwarded
    /// message's usual path).
    #[inline]
    pub(super) fn queue_for_server(&mut self, msg: &[u8], owed: Option<super::expect::Reply>) {
        let (out, expect) = match self.server.as_mut() {
            Some(held) => (&mut held.conn.write_buf, &mut held.expect),
            None => (&mut self.unsent, &mut self.unsent_expect),
        };
        out.extend_from_slice(msg);
        if let Some(reply) = owed {
            expect.forward(reply);
        }
    }

    /// The held server owes answers to requests sent to it.
    pub(super) fn answers_due(&self) -> bool {
        self.server.as_ref().is_some_and(|h| !h.expect.is_empty())
    }

    pub(super) fn is_quiet(&self) -> bool {
        !self.answers_due() && !self.flow.unsynced()
    }

    async fn wait(&mut self) -> Event {
        let watch_shutdown = !self.shutdown_seen;
        // Not read while a complete request awaits its answer (see
        // `Flow::reads_client`): the client is read when the answer has been
        // relayed (saves a poll and a waker registration per request).
        let blocked = !self.flow.reads_client(self.answers_due());
        let deadline = self.server_deadline();
        // Nothing owed and the client may send: the client's next request
        // is what wakes the session (in a transaction, between statements),
        // so it is polled first, sparing a poll of the quiet server.
        let client_first = !blocked && !self.answers_due();
        // Between the statements of a transaction the server sends nothing
        // unasked that cannot wait for the client's next request:
        // notifications wait for the transaction's end, and a FATAL (a
        // terminated backend, its own idle timeout) or a closed socket is
        // read with the next answer, when a client of PostgreSQL itself
        // would learn of it. Not watching it then spares a poll and a
        // waker registration per statement (6 of 34 socket polls of a
        // TPC-B transaction).
        let watch_server = !(client_first && self.flow.in_tx());
        // One hand-written poll rather than `tokio::select!`: no future is
        // made (and dropped) per source at each wait, and a timer only when
        // a deadline is set (none with the default configuration).
        let shutdown = &mut self.shutdown;
        let client = &mut self.client;
        let cbuf = &mut self.cbuf;
        let Some(held) = self.server.as_mut() else {
            // A BEGIN the router answered itself (sharded databases,
            // `deferred_begin.rs`) holds no server, but the client is
            // inside a transaction: `idle_transaction_timeout_ms` holds.
            let (idle, timed_out) = match self.idle_tx_timeout {
                Some(t) if self.deferred_begin.is_some() => (Some(t), Event::IdleInTransaction),
                _ => (self.idle_timeout, Event::IdleTimeout),
            };
            let mut timer = idle.map(|d| (crate::timer::sleep(d), timed_out));
            return std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = client.poll_read_into(cx, cbuf) {
                    return Poll::Ready(Event::Client(r));
                }
                poll_shutdown_or_timer(cx, watch_shutdown.then_some(&mut *shutdown), &mut timer)
            })
            .await;
        };
        let server = &mut *held.conn;
        let (stream, read_buf) = (&mut server.stream, &mut server.read_buf);
        let mut timer = deadline.map(|(at, event)| (crate::timer::sleep_until(at), event));
        std::future::poll_fn(|cx| {
            if client_first {
                // Nothing owed: the client's next request is what wakes
                // the session, so it is polled first.
                if let Poll::Ready(r) = client.poll_read_into(cx, cbuf) {
                    return Poll::Ready(Event::Client(r));
                }
                if watch_server {
                    if let Poll::Ready(r) = stream.poll_read_into(cx, read_buf) {
                        return Poll::Ready(Event::Server(r));
                    }
                }
            } else {
                // The server first: while a request is out its answer is
                // what wakes the session, and the client need not be
                // polled (and re-registered) again to find that out.
                if let Poll::Ready(r) = stream.poll_read_into(cx, read_buf) {
                    return Poll::Ready(Event::Server(r));
                }
                if !blocked {
                    if let Poll::Ready(r) = client.poll_read_into(cx, cbuf) {
                        return Poll::Ready(Event::Client(r));
                    }
                }
            }
            poll_shutdown_or_timer(cx, watch_shutdown.then_some(&mut *shutdown), &mut timer)
        })
        .await
    }

    /// Transaction mode: the server goes back to its pool as soon as the
    /// client's transaction is over and nothing is in flight.
    pub(super) fn release_if_done(&mut self) {
        if self.mode != PoolMode::Transaction
            || !self.at_boundary()
            || self.flow.guard() != GuardState::Idle
        {
            return;
        }
        let elsewhere = self.shard_map.is_some() && self.server.as_ref().is_some_and(|h| !h.kept);
        if self.pins.is_pinned() && !elsewhere {
            // Kept: the client's session state lives on this connection.
            self.registered.info.set_pinned(self.pins.held());
            return;
        }
        if let Some(mut held) = self.server.take() {
            // Released only once what was queued is sent (a connection
            // given back with unsent bytes is closed, see `Pool::checkin_at`).
            debug_assert!(held.conn.write_buf.is_empty());
            if !held.conn.read_buf.is_empty() {
                self.server = Some(held);
                return;
            }
            if std::mem::take(&mut self.sequence_state_in_tx) {
                held.conn.discard_due = true;
            }
            self.cancel.slot.set(None);
            self.flow.server_released();
            self.stop_replay();
            if !held.tx_counted {
                held.record_transaction();
            }
            if held.for_writes && self.rt.config.general.read_your_writes {
                self.ryw.wrote(held.shard, held.last_answer.instant());
            }
            self.registered.info.set_state(ClientState::Idle);
            self.registered.info.clear_server();
            self.registered.info.set_pinned(Default::default());
            // Empty here (at a boundary): kept for the next server.
            std::mem::swap(&mut self.spare_expect, &mut held.expect);
            if held.kept {
                // Its session state is gone, but it was not cleaned (the
                // server was lost meanwhile?): closed, never shared.
                drop(held);
            } else {
                Pool::checkin_at(held.conn, held.last_answer);
            }
            // A pinned session on a sharded database holds its pinned
            // connection again (see `kept.rs`).
            self.restore_kept();
        }
    }

    /// Sends what was queued for the client (router-made answers).
    pub(super) async fn flush_client(&mut self) -> Result<(), SessionEnd> {
        if self.to_client.is_empty() {
            return Ok(());
        }
        let r = self.client.write_all(&self.to_client).await;
        self.to_client.clear();
        r.map_err(SessionEnd::ClientIo)
    }
}

/// The session's timeouts from `[general]`: `client_idle_timeout_ms`,
/// `idle_transaction_timeout_ms`, `query_timeout_ms` (0 = none).
fn session_timeouts(
    g: &pgrouter_config::General,
) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
    let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    (
        millis(g.client_idle_timeout_ms),
        millis(g.idle_transaction_timeout_ms),
        millis(g.query_timeout_ms),
    )
}

impl Session {
    /// A reload's timeouts apply to open sessions too, from their next
    /// transaction, as PgBouncer's do after RELOAD: a client connected
    /// before `query_timeout_ms` or `idle_transaction_timeout_ms` was set
    /// (or lowered) is bound by it like one connecting afterwards.
    pub(super) fn apply_reloaded_timeouts(&mut self, g: &pgrouter_config::General) {
        (self.idle_timeout, self.idle_tx_timeout, self.query_timeout) = session_timeouts(g);
    }

    /// When a statement sent now is due to be cancelled for
    /// `query_timeout_ms` (None: never). For statements on several shards,
    /// which wait on their servers outside [`Session::wait`].
    pub(in crate::client) fn query_deadline(&self) -> Option<std::time::Instant> {
        self.query_timeout.map(|t| std::time::Instant::now() + t)
    }

    /// The next timeout while a server is held, and what it means: the
    /// query timeout while the server owes an answer, the idle-in-transaction
    /// timeout while the client owes the next statement of its transaction,
    /// the client idle timeout between transactions (session mode).
    fn server_deadline(&self) -> Option<(std::time::Instant, Event)> {
        if self.idle_tx_timeout.is_none()
            && self.query_timeout.is_none()
            && self.idle_timeout.is_none()
        {
            return None;
        }
        let held = self.server.as_ref()?;
        if self.answers_due() {
            let (timeout, started) = (self.query_timeout?, self.request_started?);
            if self.flow.copy_in() {
                return None;
            }
            return Some(match self.query_cancelled {
                None => (started.plus(timeout).instant(), Event::QueryTimeout),
                Some(cancelled) => (cancelled + timeout, Event::ServerUnresponsive),
            });
        }
        if self.flow.unsynced() {
            return None;
        }
        let in_tx = self.flow.in_tx() || held.conn.tx_status != b'I';
        if in_tx {
            let idle_tx = self.idle_tx_timeout?;
            return Some((
                held.last_answer.plus(idle_tx).instant(),
                Event::IdleInTransaction,
            ));
        }
        // Between transactions with a server held (session mode, a pinned
        // client): `client_idle_timeout_ms` as without one.
        let idle = self.idle_timeout?;
        Some((held.last_answer.plus(idle).instant(), Event::IdleTimeout))
    }

    /// `query_timeout_ms` ran out: the server is asked to cancel the
    /// request (it answers 57014, which reaches the client as usual).
    fn cancel_for_timeout(&mut self) {
        self.query_cancelled = Some(std::time::Instant::now());
        if let Some(held) = &self.server {
            tracing::info!(server = %held.conn.addr, "query_timeout_ms reached: cancelling the request");
            let target = held.conn.cancel_target();
            // Registered while the session holds the server: it goes to
            // nobody else before PostgreSQL has acted on the cancel.
            let registered = super::cancel_in_flight::register(&target);
            tokio::spawn(async move {
                let _ = super::cancel::send_cancel(&target).await;
                drop(registered);
            });
        }
    }
}

/// The last sources of a session's wait: the router's shutdown (when
/// watched), then the timer, whose event it is. The timer exists only with
/// a deadline: without one (no timeouts configured, the usual case) it is
/// neither made nor polled at the session's wake-ups.
fn poll_shutdown_or_timer(
    cx: &mut std::task::Context<'_>,
    shutdown: Option<&mut super::shutdown::ShutdownListener>,
    timer: &mut Option<(crate::timer::Sleep, Event)>,
) -> Poll<Event> {
    if let Some(shutdown) = shutdown {
        if std::pin::Pin::new(shutdown).poll(cx).is_ready() {
            return Poll::Ready(Event::Shutdown);
        }
    }
    if let Some((sleep, _)) = timer.as_mut() {
        if std::pin::Pin::new(sleep).poll(cx).is_ready() {
            if let Some((_, event)) = timer.take() {
                return Poll::Ready(event);
            }
        }
    }
    Poll::Pending
}
