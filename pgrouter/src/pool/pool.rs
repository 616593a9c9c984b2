use std::hint::cold_path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::queue::{Grant, Slots, Waiter};

use crate::clock::Tick;
use crate::metrics::snapshot::PoolLabels;
use crate::metrics::PoolMetrics;
use crate::server::{ServerConn, ServerError, ServerTarget};

/// Name-value pairs a server reports at login, shared by every client
/// that logs in through the pool.
type ServerParams = Arc<Vec<(String, String)>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: u32,
    pub min_size: u32,
    pub connect_timeout: Duration,
    pub checkout_timeout: Duration,
    /// Zero means never.
    pub idle_timeout: Duration,
    /// Zero means never.
    pub lifetime: Duration,
    /// After the server refuses a login (wrong password, unknown role or
    /// database), new connections are not attempted for this long: waiting
    /// clients get the server's error at once (`ban_time_ms`; zero = no
    /// back-off).
    pub login_backoff: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pgrouter: timed out waiting for a server connection")]
    CheckoutTimeout,
    #[error(transparent)]
    Connect(#[from] ServerError),
    /// A hint or `SET pgrouter.shard` named a shard the database lacks
    /// (`shard` is [`pgrouter_parser::NO_SUCH_SHARD`] when the value was
    /// not a shard number at all).
    #[error("pgrouter: shard {} does not exist (the database has {shards} shard(s), numbered from 0)", shard_name(*shard))]
    NoSuchShard { shard: usize, shards: usize },
    /// Every server that could take the statement is left out.
    #[error("pgrouter: no server is available for this statement")]
    NoServer,
    /// The client cancelled (CancelRequest) while it waited for a
    /// connection: PostgreSQL's own words for a cancelled statement.
    #[error("canceling statement due to user request")]
    Cancelled,
    /// Admin PAUSE came while the client waited for a connection it had
    /// not got yet: it waits for RESUME instead (never shown to a client).
    #[error("pgrouter: the database was paused")]
    Paused,
    /// The router began shutting down while the client waited for a
    /// connection: nothing of its statement ran (the session ends, 57P01).
    #[error("pgrouter is shutting down")]
    ShuttingDown,
}

/// How an error names a shard: its number, or what a value that was not
/// a shard number stands for.
fn shard_name(shard: usize) -> String {
    if shard == pgrouter_parser::NO_SUCH_SHARD as usize {
        "named by the hint or pgrouter.shard (not a shard number)".into()
    } else {
        shard.to_string()
    }
}

/// One server address as one user. At most `size` checkouts are outstanding;
/// clients beyond that wait in arrival order, and a returned connection goes
/// straight to the longest-waiting one (see `queue.rs`).
///
/// With several worker threads a pool of at least that many connections is
/// split into one part per worker, the size shared out among them (20 over
/// 2 workers: 10 each). A client checks out from its own worker's part, so
/// the server connections it uses belong to its own thread's event loop
/// (see `worker.rs`). A smaller pool is one part that every worker uses.
// Aligned to a cache line pair: every checkout clones the pool's `Arc`
// (the lease holds it), so its reference count changes hands between the
// workers' cores at every transaction; the fields each transaction reads
// live on lines of their own, past the count.
#[repr(align(128))]
pub struct Pool {
    /// "user@database/shard/host:port", for logs.
    pub name: String,
    pub target: ServerTarget,
    /// Timeouts and `min_size` in force: a reload replaces them in place
    /// (see [`Pool::reconfigure`]). The `size` here is the one the pool was
    /// made with; the size in force is `size` below.
    settings: arc_swap::ArcSwap<PoolSettings>,
    /// `settings`' lifetime and idle timeout, read at every checkout and
    /// check-in: two plain loads instead of an `ArcSwap` load each.
    reuse: ReuseLimits,
    /// The size in force (a reload may change it in place).
    size: std::sync::atomic::AtomicU32,
    pub metrics: Arc<PoolMetrics>,
    pub labels: PoolLabels,
    /// One per worker, or one in all (see above).
    parts: Box<[Part]>,
    /// One lending between parts at a time (lending and a reload's
    /// resizing), so that two never trade the same leases back and forth.
    coord: Mutex<()>,
    /// Parameters a fresh server reports (server_version, encodings, ...),
    /// sent to clients at login.
    default_params: Mutex<Option<ServerParams>>,
    /// The server's last login refusal and until when it stands (see
    /// `PoolSettings::login_backoff`).
    refused: Mutex<Option<Standing>>,
    /// Caps shared with other pools (see `cap.rs`); set by each cluster build.
    caps: Mutex<Vec<Arc<super::ConnectionCap>>>,
    /// Bumped when `caps` changes: a connection whose `caps_epoch` differs
    /// has its permits matched to the caps when it comes back (one atomic
    /// load per check-in otherwise).
    caps_epoch: AtomicU64,
    /// Some part with no share may have clients waiting in it (see
    /// [`Pool::serve_stranded`]); one load per check-in otherwise.
    stranded: AtomicBool,
}

/// How long a client of a split pool waits in its own part before it may
/// borrow any lease another part has room for (see `Pool::lend_to_waiters`).
const LEND_AFTER: Duration = Duration::from_millis(50);

/// A part whose least recently used idle connection has not been used for
/// this long (or whose room was never opened) has more than its own clients
/// need: it lends at once. Under load every connection of a part is back in
/// use within a transaction's time, far below this.
const SPARE_AFTER: Duration = Duration::from_millis(10);

/// How soon a split pool's expiry task looks again when another part has
/// room it could not reason about (room with no idle connection, which is
/// lent at once, so seen only when handing it over failed).
const LEND_CHECK_EVERY: Duration = Duration::from_millis(10);

/// A worker's share of a pool. On cache lines of its own: the parts sit
/// side by side, and each worker locks its own part at every checkout and
/// check-in; sharing a line, two workers would pass it back and forth.
#[repr(align(128))]
struct Part {
    /// Idle connections, leases and waiters. Connections are boxed: one
    /// changes hands (pool, client, pool) every transaction, and moving a
    /// pointer is cheaper than moving the struct.
    slots: Mutex<Slots>,
    /// Connections open, idle or not.
    open: AtomicUsize,
    /// This part's share of the pool's size.
    size: AtomicUsize,
    /// Set while this part's expiry task sleeps with waiters that only
    /// room in another part could serve: that part's next check-in wakes
    /// it through `room_elsewhere` (see `Pool::spawn_expiry`). Under even
    /// load every part has waiters, no part has room, and nothing wakes.
    lend_watch: AtomicBool,
    room_elsewhere: Arc<Notify>,
}

impl Part {
    /// Room for one more lease, and nobody queued ahead for it.
    fn has_room(&self, slots: &Slots) -> bool {
        slots.waiters.is_empty() && slots.leased < self.size.load(Ordering::Relaxed)
    }

    /// Takes a lease if the part has room; with `spare_only`, only if its
    /// own clients do not need it either: its least recently used idle
    /// connection has been idle for `SPARE_AFTER`, or it has none (the room
    /// was never opened).
    fn take_lease(&self, spare_only: bool) -> bool {
        let mut slots = self.slots.lock();
        let room = self.has_room(&slots)
            && (!spare_only
                || slots
                    .idle
                    .first()
                    .is_none_or(|c| c.last_used.elapsed() >= SPARE_AFTER));
        if room {
            slots.leased += 1;
        }
        room
    }
}

/// Part `k`'s share of `total` over `parts` parts: an even split, the
/// remainder to the first parts (a pool a reload shrank below its number of
/// parts leaves the last ones without a share).
fn share(total: u32, parts: usize, k: usize) -> usize {
    let (total, parts) = (total as usize, parts.max(1));
    total / parts + usize::from(k < total % parts)
}

/// Part `k`'s share of `total` when only the first `active` of `parts`
/// parts' workers take clients (`worker_balance.rs`): the others get none,
/// so that the connections are opened on the event loops that serve
/// clients.
fn active_share(total: u32, parts: usize, active: usize, k: usize) -> usize {
    let active = active.clamp(1, parts.max(1));
    if k < active {
        share(total, active, k)
    } else {
        0
    }
}

/// A server connection checked out of its pool. Give it back with
/// [`Pool::checkin`]; dropping it instead closes the connection, which is the
/// safe default when its state is unknown.
pub struct PooledConn {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
    /// The pool's part it came from, and goes back to.
    part: usize,
    /// Holds one of the pool's leases (released on checkin or drop).
    leased: bool,
}

impl Pool {
    pub fn new(
        name: String,
        target: ServerTarget,
        settings: PoolSettings,
        metrics: Arc<PoolMetrics>,
        labels: PoolLabels,
    ) -> Arc<Pool> {
        let workers = crate::worker::count();
        let count = if settings.size as usize >= workers {
            workers
        } else {
            1
        };
        let parts = (0..count)
            .map(|k| Part {
                slots: Mutex::new(Slots::default()),
                open: AtomicUsize::new(0),
                size: AtomicUsize::new(active_share(
                    settings.size,
                    count,
                    crate::worker::active(),
                    k,
                )),
                lend_watch: AtomicBool::new(false),
                room_elsewhere: Arc::new(Notify::new()),
            })
            .collect();
        Arc::new(Pool {
            name,
            target,
            size: std::sync::atomic::AtomicU32::new(settings.size),
            metrics,
            labels,
            reuse: ReuseLimits::new(&settings),
            settings: arc_swap::ArcSwap::from_pointee(settings),
            parts,
            coord: Mutex::new(()),
            default_params: Mutex::new(None),
            refused: Mutex::new(None),
            caps: Mutex::new(Vec::new()),
            caps_epoch: AtomicU64::new(0),
            stranded: AtomicBool::new(false),
        })
    }

    /// The part the current thread's clients use.
    /// A pool shrunk below its number of parts, or whose last parts'
    /// workers take no clients now, leaves those parts with no share:
    /// their workers' clients (on their way to another worker) use the
    /// first parts.
    #[inline]
    fn my_part(&self) -> usize {
        match self.parts.len() {
            1 => 0,
            n => {
                let shared = (self.size() as usize).min(crate::worker::active());
                crate::worker::index() % shared.clamp(1, n)
            }
        }
    }

    /// Part `k`'s share of `total` among the parts whose workers take
    /// clients now.
    fn active_share(&self, total: u32, k: usize) -> usize {
        active_share(total, self.parts.len(), crate::worker::active(), k)
    }

    /// Shares the pool out again among the parts whose workers take
    /// clients now (after `worker_balance.rs` changed how many do), as a
    /// reload's resize would.
    pub fn reshare(&self) {
        self.resize(self.size());
    }

    fn part(&self, k: usize) -> &Part {
        &self.parts[k]
    }

    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, PoolError> {
        let k = self.my_part();
        let part = self.part(k);
        let (waiting, first_waiter) = {
            let mut slots = part.slots.lock();
            if part.has_room(&slots) {
                slots.leased += 1;
                (Ok(k), false)
            } else {
                (Err(self.enqueue(k, &mut slots)), slots.waiters.len() == 1)
            }
        };
        // Only a client that starts a queue asks the other parts: behind
        // others, it is served when they are (or by the expiry task's
        // lending), and under load the queues are seldom empty, so the
        // other parts' locks are seldom touched.
        if first_waiter && self.parts.len() > 1 {
            self.lend_to_waiters(k);
        }
        let granted = match waiting {
            Ok(j) => {
                self.metrics.record_checkout_wait(Duration::ZERO);
                Grant::Open(j)
            }
            Err((id, started, rx)) => {
                let granted = WaitingClient {
                    pool: self,
                    part: k,
                    id,
                    rx: Some(rx),
                }
                .granted()
                .await;
                self.metrics.record_checkout_wait(started.elapsed());
                granted.ok_or(PoolError::CheckoutTimeout)?
            }
        };
        // The lease is this client's from here on (no await since it was
        // granted): dropping the PooledConn gives it back.
        let (conn, k) = match granted {
            Grant::Conn(conn, k) => (Some(conn), k),
            Grant::Open(k) => (None, k),
        };
        let mut lease = PooledConn {
            conn,
            pool: self.clone(),
            part: k,
            leased: true,
        };
        if lease.conn.is_none() {
            lease.conn = self.take_reusable_idle(k);
        }
        if lease.conn.is_none() {
            lease.conn = Some(self.connect(k).await?);
        }
        Ok(lease)
    }

    /// A lease only if one is free right now, without queueing: for the
    /// router's own work (health checks), which must count against the
    /// pool's size like any client (so `pool_size` is what PostgreSQL sees)
    /// but must never make a client wait. `None`: every lease is taken.
    pub async fn try_checkout(self: &Arc<Self>) -> Option<Result<PooledConn, PoolError>> {
        let mine = self.my_part();
        let order = std::iter::once(mine).chain((0..self.parts.len()).filter(|&j| j != mine));
        let k = order.into_iter().find(|&j| {
            let part = self.part(j);
            let mut slots = part.slots.lock();
            let room = part.has_room(&slots);
            if room {
                slots.leased += 1;
            }
            room
        })?;
        let mut lease = PooledConn {
            conn: self.take_reusable_idle(k),
            pool: self.clone(),
            part: k,
            leased: true,
        };
        if lease.conn.is_none() {
            match self.connect(k).await {
                Ok(conn) => lease.conn = Some(conn),
                Err(e) => return Some(Err(e.into())),
            }
        }
        Some(Ok(lease))
    }

    /// Lends other parts' leases to the clients waiting in part `k`, so no
    /// client waits long while the pool as a whole has room. A part lends
    /// at once what its own clients do not need (see `Part::take_lease`);
    /// any room it has (and nobody waiting) goes to a client that waited
    /// `LEND_AFTER`. Lending every momentary room at once was measured:
    /// under load the leases went back and forth between the workers and
    /// cost more than the wait. A lent connection belongs to the other
    /// worker's event loop, which costs wake-ups between threads while it
    /// is lent but is otherwise the same.
    fn lend_to_waiters(&self, k: usize) {
        let _coord = self.coord.lock();
        let mine = self.part(k);
        for j in (0..self.parts.len()).filter(|&j| j != k) {
            loop {
                let waited = mine.slots.lock().waiters.front().map(|w| w.since.elapsed());
                let Some(waited) = waited else { break };
                if !self.part(j).take_lease(waited < LEND_AFTER) {
                    break;
                }
                if mine.slots.lock().hand_over(None, j).is_err() {
                    self.part(j).slots.lock().put_back(None);
                    break;
                }
            }
        }
    }

    /// When lending to part `k`'s waiters (the oldest waiting since
    /// `oldest`) may next succeed with no other part's check-in: the
    /// oldest reaching `LEND_AFTER`, or another part's idle connection
    /// becoming spare, whichever comes first among parts with room. None
    /// when no other part has room: then `lend_watch` is left set, and the
    /// check-in that makes room wakes the expiry task. Set before looking,
    /// so a check-in racing the look either is seen or sees the flag.
    fn next_lend_time(&self, k: usize, oldest: Instant, now: Instant) -> Option<Instant> {
        let mine = self.part(k);
        mine.lend_watch.store(true, Ordering::SeqCst);
        let mut next: Option<Instant> = None;
        for j in (0..self.parts.len()).filter(|&j| j != k) {
            let slots = self.part(j).slots.lock();
            if !self.part(j).has_room(&slots) {
                continue;
            }
            let when = match slots.idle.first() {
                Some(c) => (oldest + LEND_AFTER)
                    .min(now + SPARE_AFTER.saturating_sub(c.last_used.elapsed())),
                None => now + LEND_CHECK_EVERY,
            };
            next = Some(next.map_or(when, |n| n.min(when)));
        }
        if next.is_some() {
            mine.lend_watch.store(false, Ordering::Relaxed);
        }
        // Never sooner than a millisecond: the rules compare with "now"
        // again when the task wakes, and must find their time passed.
        next.map(|t| t.max(now + Duration::from_millis(1)))
    }

    /// Part `k` just gained room: wakes the expiry task of any other part
    /// whose waiters wait for such room (see `Part::lend_watch`).
    fn wake_lenders(&self, k: usize) {
        for (j, part) in self.parts.iter().enumerate() {
            if j != k && part.lend_watch.load(Ordering::SeqCst) {
                part.lend_watch.store(false, Ordering::Relaxed);
                part.room_elsewhere.notify_one();
            }
        }
    }

    /// Queues a client for the next lease and makes sure the expiry task
    /// runs. Returns the entry's id, when it started waiting, and where the
    /// grant will arrive.
    fn enqueue(
        self: &Arc<Self>,
        k: usize,
        slots: &mut Slots,
    ) -> (u64, Instant, oneshot::Receiver<Grant>) {
        let (tx, rx) = oneshot::channel();
        let since = Instant::now();
        let id = slots.next_waiter_id;
        slots.next_waiter_id += 1;
        slots.waiters.push_back(Waiter {
            id,
            since,
            grant: tx,
        });
        // A checkout that chose this part just before it lost its share.
        if self.part(k).size.load(Ordering::Relaxed) == 0 {
            self.stranded.store(true, Ordering::SeqCst);
        }
        if !slots.expiry_running {
            slots.expiry_running = true;
            self.spawn_expiry(k);
        }
        (id, since, rx)
    }

    /// One task per pool part with waiters: sleeps until the oldest
    /// waiter's deadline and drops the entries past theirs (their clients
    /// get `CheckoutTimeout`). Waiters join at the back with the same
    /// timeout, so the front always has the earliest deadline. In a split
    /// pool it also lends the waiters other parts' leases (see
    /// `Pool::lend_to_waiters`), waking when a lending rule comes true or
    /// another part gains room (`Pool::next_lend_time`). It does not wake
    /// on a fixed tick: under load a 10 ms tick cost each transaction 0.2
    /// futex calls and 0.16 eventfd wake-ups (the timer thread waking a
    /// worker). Ends when the queue is empty; the next waiter starts it
    /// again (both under the part's lock).
    fn spawn_expiry(self: &Arc<Self>, k: usize) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let wake = {
                    let Some(pool) = pool.upgrade() else { return };
                    let timeout = pool.settings.load().checkout_timeout;
                    let now = Instant::now();
                    let oldest = {
                        let mut slots = pool.part(k).slots.lock();
                        while slots
                            .waiters
                            .front()
                            .is_some_and(|w| deadline(w.since, timeout) <= now)
                        {
                            slots.waiters.pop_front();
                        }
                        match slots.waiters.front() {
                            Some(oldest) => oldest.since,
                            None => {
                                slots.expiry_running = false;
                                pool.part(k).lend_watch.store(false, Ordering::Relaxed);
                                return;
                            }
                        }
                    };
                    let expires = deadline(oldest, timeout);
                    if pool.parts.len() == 1 {
                        (expires, None)
                    } else {
                        pool.lend_to_waiters(k);
                        match pool.next_lend_time(k, oldest, now) {
                            Some(lend) => (expires.min(lend), None),
                            None => (expires, Some(pool.part(k).room_elsewhere.clone())),
                        }
                    }
                };
                match wake {
                    (at, None) => crate::timer::sleep_until(at).await,
                    (at, Some(room)) => {
                        tokio::select! {
                            _ = crate::timer::sleep_until(at) => {}
                            _ = room.notified() => {}
                        }
                    }
                }
            }
        });
    }

    /// An idle connection fit for reuse, closing the unfit ones found first.
    fn take_reusable_idle(&self, k: usize) -> Option<Box<ServerConn>> {
        loop {
            let conn = self.part(k).slots.lock().idle.pop()?;
            if self.is_reusable(&conn) {
                return Some(conn);
            }
            self.close(k, conn);
        }
    }

    /// Opens a new connection counted against part `k`, on the event loop
    /// of the worker whose clients use that part: a client that borrowed
    /// the lease uses it across threads this once, the part's own clients
    /// from then on without. (A pool of one part opens on any worker.)
    async fn connect(&self, k: usize) -> Result<Box<ServerConn>, ServerError> {
        if let Some(refusal) = self.refusal_standing() {
            return Err(refusal.into_error());
        }
        let (caps, epoch) = {
            let caps = self.caps.lock();
            (caps.clone(), self.caps_epoch.load(Ordering::Acquire))
        };
        let mut permits = Vec::with_capacity(caps.len());
        for cap in caps {
            match cap.acquire(self.settings.load().checkout_timeout).await {
                Some(permit) => permits.push(permit),
                None => {
                    tracing::warn!(pool = %self.name, cap = %cap.name, "server connection cap reached");
                    return Err(ServerError::CapReached(cap.name.clone()));
                }
            }
        }
        let credentials = self.credential_generation();
        let result = self.open(k).await;
        self.note_login_outcome(&result, credentials);
        let mut conn = result?;
        conn.permits = permits;
        conn.caps_epoch = epoch;
        Ok(conn)
    }

    /// Puts the pool under these caps (replacing any earlier ones). Its
    /// open connections count against a cap new to it (a reload set
    /// `max_db_connections` / `max_user_connections` from 0): idle ones
    /// now, those in use when they come back.
    pub fn set_caps(&self, caps: Vec<Arc<super::ConnectionCap>>) {
        let mut current = self.caps.lock();
        let same = current.len() == caps.len()
            && current.iter().zip(&caps).all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return;
        }
        *current = caps;
        let epoch = self.caps_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        for part in &self.parts {
            for conn in part.slots.lock().idle.iter_mut() {
                super::cap::match_permits(&mut conn.permits, &current);
                conn.caps_epoch = epoch;
            }
        }
    }

    /// A connection back from a client after the pool's caps changed
    /// shares exactly the current caps.
    fn match_caps(&self, conn: &mut ServerConn) {
        let caps = self.caps.lock();
        super::cap::match_permits(&mut conn.permits, &caps);
        conn.caps_epoch = self.caps_epoch.load(Ordering::Acquire);
    }

    /// Closes one idle connection, if the pool has one: a cap shared with
    /// another pool needs the room. True if one was closed.
    pub fn close_one_idle(&self) -> bool {
        for (k, part) in self.parts.iter().enumerate() {
            let conn = part.slots.lock().idle.pop();
            if let Some(mut conn) = conn {
                // Its shares of the caps are given back now, not when the
                // terminating task ends.
                conn.permits.clear();
                self.close(k, conn);
                return true;
            }
        }
        false
    }

    /// The server's login refusal, while the back-off after it lasts and
    /// the credentials it refused are still the ones the pool logs in
    /// with: credentials learnt from clients' logins (`[auth_query]`,
    /// `[jit]`, users.toml secrets) that a later login changed (a new token,
    /// a new password) get their own try at once.
    fn refusal_standing(&self) -> Option<Refusal> {
        let mut refused = self.refused.lock();
        match &*refused {
            Some(s)
                if Instant::now() < s.until && s.credentials == self.credential_generation() =>
            {
                Some(s.refusal.clone())
            }
            Some(_) => {
                *refused = None;
                None
            }
            None => None,
        }
    }

    /// Which credentials a login uses now (see `CredentialSlot::generation`);
    /// 0 for a pool whose credentials come from the files only.
    fn credential_generation(&self) -> u64 {
        self.target
            .pass_through
            .as_ref()
            .map_or(0, |slot| slot.generation())
    }

    /// A refused login starts the back-off (so 200 clients arriving while
    /// the router's server password is wrong cost the server one failed
    /// login per `ban_time_ms`, not 200); a successful one ends it.
    /// `credentials`: the credential generation the login started with.
    fn note_login_outcome(&self, result: &Result<Box<ServerConn>, ServerError>, credentials: u64) {
        let refusal = match result {
            Ok(_) => {
                *self.refused.lock() = None;
                return;
            }
            Err(e @ ServerError::Postgres(f)) if e.is_login_refusal() => Refusal::Server(f.clone()),
            Err(ServerError::Auth(message)) => Refusal::Router(message.clone()),
            Err(_) => return,
        };
        let backoff = self.settings.load().login_backoff;
        if backoff.is_zero() {
            return;
        }
        tracing::warn!(pool = %self.name, error = %refusal, backoff_ms = backoff.as_millis() as u64, "server refused the login; backing off");
        *self.refused.lock() = Some(Standing {
            until: Instant::now() + backoff,
            refusal,
            credentials,
        });
    }

    /// Opens the connection (see [`Self::connect`]).
    async fn open(&self, k: usize) -> Result<Box<ServerConn>, ServerError> {
        let timeout = self.settings.load().connect_timeout;
        let here = match crate::worker::current() {
            Some(w) => self.parts.len() == 1 || w == k,
            None => crate::worker::count() == 1,
        };
        let conn = if here {
            ServerConn::connect(&self.target, timeout).await?
        } else {
            let target = self.target.clone();
            crate::worker::spawn_on(
                k,
                async move { ServerConn::connect(&target, timeout).await },
            )
            .await
            .map_err(|e| ServerError::Io(std::io::Error::other(e)))??
        };
        let conn = Box::new(conn);
        self.part(k).open.fetch_add(1, Ordering::Relaxed);
        let mut defaults = self.default_params.lock();
        if defaults.is_none() {
            let mut params: Vec<_> = conn
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            params.sort();
            *defaults = Some(Arc::new(params));
        }
        Ok(conn)
    }

    /// Returns a connection for reuse. Only a connection that is outside any
    /// transaction and has nothing left to read is kept; anything else is closed.
    pub fn checkin(pooled: PooledConn) {
        Pool::checkin_at(pooled, Tick::now());
    }

    /// [`Pool::checkin`] with the time of the connection's last use, for a
    /// caller that has just read the clock.
    pub fn checkin_at(mut pooled: PooledConn, last_used: Tick) {
        let Some(mut conn) = pooled.conn.take() else {
            return;
        };
        // Borrowed, not cloned: every worker's clients share the pool's
        // reference count.
        let pool = &*pooled.pool;
        let expired = conn.created.past(pool.reuse.lifetime(), last_used);
        let k = pooled.part;
        // Bytes left unread or unsent: what the server was asked and
        // answered is not known, so the connection is not reused.
        let in_flight = !conn.read_buf.is_empty() || !conn.write_buf.is_empty();
        // A fan-out that ended early may leave its socket's SO_RCVLOWAT
        // raised (`net/low_water.rs`): the next client's small answers
        // would never wake it.
        let stuck = conn.low_water.lower(&conn.stream).is_err();
        // A cancel on its way to this backend would stop the next client's
        // query (see `client/cancel_in_flight.rs`).
        let cancelling =
            crate::client::cancel_in_flight::is_cancelling(&conn.addr, conn.backend_pid);
        if expired || conn.tx_status != b'I' || in_flight || stuck || cancelling {
            pool.close(k, conn);
            return; // dropping `pooled` passes its lease on
        }
        if conn.caps_epoch != pool.caps_epoch.load(Ordering::Relaxed) {
            pool.match_caps(&mut conn);
        }
        conn.last_used = last_used;
        pooled.leased = false;
        pool.release(k, Some(conn));
    }

    /// Ends a lease: it passes (with `conn`, if any) to the oldest waiter,
    /// unless a reload shrank the pool below the leases outstanding; a
    /// connection nobody takes goes idle.
    fn release(&self, k: usize, conn: Option<Box<ServerConn>>) {
        let part = self.part(k);
        let mut slots = part.slots.lock();
        if slots.leased > part.size.load(Ordering::Relaxed) {
            slots.put_back(conn);
            return;
        }
        let conn = if self.stranded.load(Ordering::Relaxed) {
            cold_path();
            drop(slots);
            match self.serve_stranded(k, conn) {
                Ok(()) => return,
                Err(conn) => {
                    slots = part.slots.lock();
                    conn
                }
            }
        } else {
            conn
        };
        // Nobody waits in this part: the lease goes idle here, and another
        // part's waiters may borrow it (see `lend_to_waiters`).
        if let Err(conn) = slots.hand_over(conn, k) {
            slots.put_back(conn);
            drop(slots);
            if self.parts.len() > 1 {
                self.wake_lenders(k);
            }
        }
    }

    /// Passes part `k`'s lease to a client waiting in a part with no share,
    /// oldest part first. A part loses its share when its worker stops
    /// taking clients (`worker_balance.rs`); clients already queued there
    /// would otherwise wait out `checkout_timeout_ms`, since a part over
    /// its share keeps what comes back (see [`Pool::release`]). They are
    /// served before part `k`'s own waiters: they waited longer. The flag
    /// is cleared before looking, so a client queued meanwhile sets it
    /// again (`enqueue`) or is seen.
    fn serve_stranded(
        &self,
        k: usize,
        mut conn: Option<Box<ServerConn>>,
    ) -> Result<(), Option<Box<ServerConn>>> {
        self.stranded.store(false, Ordering::SeqCst);
        for (j, part) in self.parts.iter().enumerate() {
            if j == k || part.size.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let mut slots = part.slots.lock();
            match slots.hand_over(conn, k) {
                Ok(()) => {
                    // Others may still wait there.
                    self.stranded.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                Err(back) => conn = back,
            }
        }
        Err(conn)
    }

    /// Passes part `k`'s lease to a client waiting in another part (a
    /// reload that grew part `k`).
    fn hand_to_other_part(
        &self,
        k: usize,
        mut conn: Option<Box<ServerConn>>,
    ) -> Result<(), Option<Box<ServerConn>>> {
        for j in (0..self.parts.len()).filter(|&j| j != k) {
            match self.part(j).slots.lock().hand_over(conn, k) {
                Ok(()) => return Ok(()),
                Err(back) => conn = back,
            }
        }
        Err(conn)
    }

    /// The parameters a server of this pool reports at login, connecting once
    /// if no server has been seen yet.
    pub async fn default_params(self: &Arc<Self>) -> Result<Arc<Vec<(String, String)>>, PoolError> {
        if let Some(p) = self.default_params.lock().clone() {
            return Ok(p);
        }
        let conn = self.checkout().await?;
        Pool::checkin(conn);
        Ok(self.default_params.lock().clone().unwrap_or_default())
    }

    fn is_reusable(&self, conn: &ServerConn) -> bool {
        let now = Tick::now();
        if conn.created.past(self.reuse.lifetime(), now)
            || conn.last_used.past(self.reuse.idle_timeout(), now)
        {
            return false;
        }
        // A server that closed (or said anything) while idle is dead to us: a
        // non-blocking read must find nothing to read.
        conn.stream.is_idle_and_open()
    }

    fn close(&self, k: usize, conn: Box<ServerConn>) {
        self.part(k).open.fetch_sub(1, Ordering::Relaxed);
        tokio::spawn((*conn).terminate());
    }

    /// Closes idle connections past their idle timeout or lifetime and opens
    /// connections up to `min_size`. Called periodically by the maintenance task.
    pub async fn maintain(self: &Arc<Self>) {
        for k in 0..self.parts.len() {
            self.maintain_part(k).await;
        }
    }

    async fn maintain_part(self: &Arc<Self>, k: usize) {
        let part = self.part(k);
        let lifetime = self.settings.load().lifetime;
        let min = self
            .active_share(self.settings.load().min_size, k)
            .min(part.size.load(Ordering::Relaxed));
        let expired: Vec<Box<ServerConn>> = {
            let mut slots = part.slots.lock();
            let now = Tick::now();
            let mut open = part.open.load(Ordering::Relaxed);
            let (mut keep, mut expired) = (Vec::new(), Vec::new());
            // Oldest first: the least recently used go before the others.
            for conn in slots.idle.drain(..) {
                // Idle past server_idle_timeout, but min_pool_size wants it:
                // kept, rather than closed and opened again at once.
                let spared = open <= min
                    && !conn.created.past(lifetime, now)
                    && conn.stream.is_idle_and_open();
                if self.is_reusable(&conn) || spared {
                    keep.push(conn);
                } else {
                    open = open.saturating_sub(1);
                    expired.push(conn);
                }
            }
            slots.idle = keep;
            expired
        };
        for conn in expired {
            self.close(k, conn);
        }
        // A pool that shrank closes its extra idle connections.
        let excess: Vec<Box<ServerConn>> = {
            let mut slots = part.slots.lock();
            let open = part.open.load(Ordering::Relaxed);
            let extra = open
                .saturating_sub(part.size.load(Ordering::Relaxed))
                .min(slots.idle.len());
            slots.idle.drain(..extra).collect()
        };
        for conn in excess {
            self.close(k, conn);
        }
        while part.open.load(Ordering::Relaxed) < min {
            match self.connect(k).await {
                Ok(mut conn) => {
                    conn.last_used = Tick::now();
                    part.slots.lock().idle.push(conn);
                }
                Err(e) => {
                    tracing::warn!(pool = %self.name, error = %e, "could not open a min_pool_size connection");
                    break;
                }
            }
        }
    }

    /// A reload's settings for a pool it keeps: the size is applied as by
    /// [`Pool::resize`], the timeouts and `min_size` from now on (a waiter
    /// already queued gets the new `checkout_timeout` too, counted from
    /// when it started waiting). Changing them keeps the pool's server
    /// connections: reopening every connection of every pool because
    /// `checkout_timeout_ms` was raised would cost each pool a reconnection
    /// storm for nothing.
    pub fn reconfigure(&self, settings: PoolSettings) {
        self.resize(settings.size);
        self.reuse.set(&settings);
        self.settings.store(Arc::new(settings));
    }

    pub fn size(&self) -> u32 {
        self.size.load(Ordering::Relaxed)
    }

    /// Changes the pool's size in place (reload), shared out among its
    /// parts as at creation. Added capacity goes to waiting clients at once;
    /// removed capacity is taken back as checked-out connections return
    /// (see [`Pool::release`]).
    pub fn resize(&self, new_size: u32) {
        self.size.store(new_size, Ordering::Relaxed);
        for (k, part) in self.parts.iter().enumerate() {
            let size = self.active_share(new_size, k);
            part.size.store(size, Ordering::Relaxed);
            if size == 0 {
                // Its waiters are served by the other parts' check-ins.
                self.stranded.store(true, Ordering::SeqCst);
            }
            let mut slots = part.slots.lock();
            while slots.leased < size && !slots.waiters.is_empty() {
                slots.leased += 1;
                if slots.hand_over(None, k).is_err() {
                    slots.leased -= 1;
                }
            }
        }
        // Capacity left over in one part serves the clients waiting in another.
        let _coord = self.coord.lock();
        for (k, part) in self.parts.iter().enumerate() {
            while part.take_lease(false) {
                if self.hand_to_other_part(k, None).is_err() {
                    part.slots.lock().leased -= 1;
                    break;
                }
            }
        }
    }

    /// (backend pid, connected at, last used, tls) of each idle connection.
    pub fn idle_snapshot(&self) -> Vec<(i32, std::time::SystemTime, std::time::SystemTime, bool)> {
        let now_sys = std::time::SystemTime::now();
        let now = Tick::now();
        let mut out = Vec::new();
        for part in self.parts.iter() {
            out.extend(part.slots.lock().idle.iter().map(|c| {
                (
                    c.backend_pid,
                    now_sys - now.since(c.created),
                    now_sys - now.since(c.last_used),
                    c.stream.is_tls(),
                )
            }));
        }
        out
    }

    /// Connections checked out now.
    pub fn checked_out(&self) -> usize {
        self.parts.iter().map(|p| p.slots.lock().leased).sum()
    }

    /// How long the longest-waiting client has waited.
    pub fn max_wait(&self) -> Duration {
        self.parts
            .iter()
            .filter_map(|p| p.slots.lock().waiters.front().map(|w| w.since.elapsed()))
            .max()
            .unwrap_or_default()
    }

    pub fn stats(&self) -> PoolStats {
        let mut stats = PoolStats::default();
        for part in self.parts.iter() {
            let slots = part.slots.lock();
            let open = part.open.load(Ordering::Relaxed);
            stats.idle += slots.idle.len();
            stats.active += open.saturating_sub(slots.idle.len());
            stats.waiting += slots.waiters.len();
        }
        stats
    }

    /// No connection open (idle, in use or being opened), none checked out
    /// and nobody waiting for one: a pool that could go away unnoticed.
    pub fn is_unused(&self) -> bool {
        self.parts.iter().all(|part| {
            let slots = part.slots.lock();
            part.open.load(Ordering::Relaxed) == 0 && slots.leased == 0 && slots.waiters.is_empty()
        })
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) {
        for (k, part) in self.parts.iter().enumerate() {
            let drained: Vec<Box<ServerConn>> = part.slots.lock().idle.drain(..).collect();
            for conn in drained {
                self.close(k, conn);
            }
        }
    }
}

/// Whether `limit` has run out at `now` since `since`; a zero limit never does.
/// A pool's `server_lifetime` and `server_idle_timeout`, in nanoseconds
/// (a reload replaces them in place, as it does `settings`).
struct ReuseLimits {
    lifetime_ns: AtomicU64,
    idle_timeout_ns: AtomicU64,
}

impl ReuseLimits {
    fn new(settings: &PoolSettings) -> ReuseLimits {
        let limits = ReuseLimits {
            lifetime_ns: AtomicU64::new(0),
            idle_timeout_ns: AtomicU64::new(0),
        };
        limits.set(settings);
        limits
    }

    fn set(&self, settings: &PoolSettings) {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.lifetime_ns
            .store(ns(settings.lifetime), Ordering::Relaxed);
        self.idle_timeout_ns
            .store(ns(settings.idle_timeout), Ordering::Relaxed);
    }

    fn lifetime(&self) -> Duration {
        Duration::from_nanos(self.lifetime_ns.load(Ordering::Relaxed))
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.idle_timeout_ns.load(Ordering::Relaxed))
    }
}

/// When a wait that began at `since` times out (a timeout too large to add
/// is as good as forever: a century).
fn deadline(since: Instant, timeout: Duration) -> Instant {
    since
        .checked_add(timeout)
        .or_else(|| since.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(since)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub idle: usize,
    pub active: usize,
    pub waiting: usize,
}

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    #[inline]
    fn deref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("a PooledConn holds its connection until checkin or drop")
    }
}

impl std::ops::DerefMut for PooledConn {
    #[inline]
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("a PooledConn holds its connection until checkin or drop")
    }
}

impl PooledConn {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .part(self.part)
                .open
                .fetch_sub(1, Ordering::Relaxed);
            drop(conn);
        }
        if self.leased {
            self.pool.release(self.part, None);
        }
    }
}

/// A client in a pool's queue. Dropped before its grant arrives (its
/// session's task ended), it leaves the queue, and a grant that did arrive
/// meanwhile is passed on, so no lease is lost.
struct WaitingClient<'a> {
    pool: &'a Arc<Pool>,
    part: usize,
    id: u64,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl WaitingClient<'_> {
    /// The grant, or None when the wait timed out.
    async fn granted(mut self) -> Option<Grant> {
        let rx = self.rx.as_mut().expect("a waiting client has its receiver");
        let granted = rx.await.ok();
        self.rx = None;
        granted
    }
}

impl Drop for WaitingClient<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        if self
            .pool
            .part(self.part)
            .slots
            .lock()
            .remove_waiter(self.id)
        {
            return;
        }
        rx.close();
        match rx.try_recv() {
            Ok(Grant::Conn(conn, k)) => self.pool.release(k, Some(conn)),
            Ok(Grant::Open(k)) => self.pool.release(k, None),
            Err(_) => {}
        }
    }
}

/// A refused login's back-off: until when, the refusal, and the
/// credential generation it was made with (see `Pool::refusal_standing`).
struct Standing {
    until: Instant,
    refusal: Refusal,
    credentials: u64,
}

/// A login refusal that stands during the back-off. Clients arriving then
/// get the very error the first one got (same SQLSTATE, same words).
#[derive(Clone)]
enum Refusal {
    /// PostgreSQL refused the login with this error.
    Server(crate::protocol::backend::ErrorFields),
    /// The router could not complete the server's authentication
    /// (`ServerError::Auth`: no password configured, a method it cannot
    /// answer...).
    Router(String),
}

impl Refusal {
    fn into_error(self) -> ServerError {
        match self {
            Refusal::Server(fields) => ServerError::Postgres(fields),
            Refusal::Router(message) => ServerError::Auth(message),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Server(fields) => f.write_str(&fields.message),
            Refusal::Router(message) => f.write_str(message),
        }
    }
}

#[cfg(test)]
mod share_tests {
    use super::{active_share, share};

    #[test]
    fn parts_share_the_whole_size_evenly() {
        for total in 0..40u32 {
            for parts in 1..5usize {
                let shares: Vec<usize> = (0..parts).map(|k| share(total, parts, k)).collect();
                assert_eq!(
                    shares.iter().sum::<usize>(),
                    total as usize,
                    "{total} over {parts}"
                );
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{shares:?}");
            }
        }
        assert_eq!((share(20, 2, 0), share(20, 2, 1)), (10, 10));
        assert_eq!((share(3, 2, 0), share(3, 2, 1)), (2, 1));
        // Shrunk below its number of parts: the last part has no share.
        assert_eq!((share(1, 2, 0), share(1, 2, 1)), (1, 0));
    }

    #[test]
    fn parts_of_workers_taking_no_clients_get_no_share() {
        let shares = |total, active| {
            (0..3)
                .map(|k| active_share(total, 3, active, k))
                .collect::<Vec<_>>()
        };
        assert_eq!(shares(20, 1), vec![20, 0, 0]);
        assert_eq!(shares(20, 2), vec![10, 10, 0]);
        assert_eq!(shares(20, 3), vec![7, 7, 6]);
        // Never fewer than one part, never more than there are.
        assert_eq!(shares(20, 0), vec![20, 0, 0]);
        assert_eq!(shares(20, 9), vec![7, 7, 6]);
    }
}
