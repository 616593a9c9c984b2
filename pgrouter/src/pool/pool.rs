use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::queue::{Grant, Slots, Waiter};

use crate::metrics::snapshot::PoolLabels;
use crate::metrics::PoolMetrics;
use crate::server::{ServerConn, ServerError, ServerTarget};

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
}

impl PoolSettings {
    /// Everything but the size: what must match for a reload to keep a pool.
    pub fn without_size(&self) -> PoolSettings {
        PoolSettings {
            size: 0,
            ..self.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pgrouter: timed out waiting for a server connection")]
    CheckoutTimeout,
    #[error(transparent)]
    Connect(#[from] ServerError),
    /// A hint or `SET pgrouter.shard` named a shard the database lacks.
    #[error("pgrouter: shard {shard} does not exist (the database has {shards} shard(s), numbered from 0)")]
    NoSuchShard { shard: usize, shards: usize },
    /// Every server that could take the statement is left out.
    #[error("pgrouter: no server is available for this statement")]
    NoServer,
}

/// One server address as one user. At most `size` checkouts are outstanding;
/// clients beyond that wait in arrival order, and a returned connection goes
/// straight to the longest-waiting one (see `queue.rs`).
pub struct Pool {
    /// "user@database/shard/host:port", for logs.
    pub name: String,
    pub target: ServerTarget,
    pub settings: PoolSettings,
    /// The size in force (a reload may change it in place).
    size: std::sync::atomic::AtomicU32,
    pub metrics: Arc<PoolMetrics>,
    pub labels: PoolLabels,
    /// Idle connections, leases and waiters. Connections are boxed: one
    /// changes hands (pool, client, pool) every transaction, and moving a
    /// pointer is cheaper than moving the struct.
    slots: Mutex<Slots>,
    open: AtomicUsize,
    /// Parameters a fresh server reports (server_version, encodings, ...),
    /// sent to clients at login.
    default_params: Mutex<Option<Arc<Vec<(String, String)>>>>,
}

/// A server connection checked out of its pool. Give it back with
/// [`Pool::checkin`]; dropping it instead closes the connection, which is the
/// safe default when its state is unknown.
pub struct PooledConn {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
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
        Arc::new(Pool {
            name,
            target,
            size: std::sync::atomic::AtomicU32::new(settings.size),
            metrics,
            labels,
            settings,
            slots: Mutex::new(Slots::default()),
            open: AtomicUsize::new(0),
            default_params: Mutex::new(None),
        })
    }

    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, PoolError> {
        let waiting = {
            let mut slots = self.slots.lock();
            if slots.waiters.is_empty() && slots.leased < self.size() as usize {
                slots.leased += 1;
                None
            } else {
                Some(self.enqueue(&mut slots))
            }
        };
        let granted = match waiting {
            None => {
                self.metrics.record_checkout_wait(Duration::ZERO);
                Grant::Open
            }
            Some((id, started, rx)) => {
                let granted = WaitingClient {
                    pool: self,
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
        let mut lease = PooledConn {
            conn: None,
            pool: self.clone(),
            leased: true,
        };
        lease.conn = match granted {
            Grant::Conn(conn) => Some(conn),
            Grant::Open => self.take_reusable_idle(),
        };
        if lease.conn.is_none() {
            lease.conn = Some(self.connect().await?);
        }
        Ok(lease)
    }

    /// Queues a client for the next lease and makes sure the expiry task
    /// runs. Returns the entry's id, when it started waiting, and where the
    /// grant will arrive.
    fn enqueue(self: &Arc<Self>, slots: &mut Slots) -> (u64, Instant, oneshot::Receiver<Grant>) {
        let (tx, rx) = oneshot::channel();
        let since = Instant::now();
        let id = slots.next_waiter_id;
        slots.next_waiter_id += 1;
        slots.waiters.push_back(Waiter {
            id,
            since,
            grant: tx,
        });
        if !slots.expiry_running {
            slots.expiry_running = true;
            self.spawn_expiry();
        }
        (id, since, rx)
    }

    /// One task per pool with waiters: sleeps until the oldest waiter's
    /// deadline and drops the entries past theirs (their clients get
    /// `CheckoutTimeout`). Waiters join at the back with the same timeout,
    /// so the front always has the earliest deadline. Ends when the queue is
    /// empty; the next waiter starts it again (both under the pool's lock).
    fn spawn_expiry(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let deadline = {
                    let Some(pool) = pool.upgrade() else { return };
                    let timeout = pool.settings.checkout_timeout;
                    let now = Instant::now();
                    let mut slots = pool.slots.lock();
                    while slots
                        .waiters
                        .front()
                        .is_some_and(|w| deadline(w.since, timeout) <= now)
                    {
                        slots.waiters.pop_front();
                    }
                    match slots.waiters.front() {
                        Some(oldest) => deadline(oldest.since, timeout),
                        None => {
                            slots.expiry_running = false;
                            return;
                        }
                    }
                };
                tokio::time::sleep_until(deadline.into()).await;
            }
        });
    }

    /// An idle connection fit for reuse, closing the unfit ones found first.
    fn take_reusable_idle(&self) -> Option<Box<ServerConn>> {
        loop {
            let conn = self.slots.lock().idle.pop()?;
            if self.is_reusable(&conn) {
                return Some(conn);
            }
            self.close(conn);
        }
    }

    /// Opens a new connection counted against this pool.
    async fn connect(&self) -> Result<Box<ServerConn>, ServerError> {
        let conn =
            Box::new(ServerConn::connect(&self.target, self.settings.connect_timeout).await?);
        self.open.fetch_add(1, Ordering::Relaxed);
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
        Pool::checkin_at(pooled, Instant::now());
    }

    /// [`Pool::checkin`] with the time of the connection's last use, for a
    /// caller that has just read the clock.
    pub fn checkin_at(mut pooled: PooledConn, last_used: Instant) {
        let Some(mut conn) = pooled.conn.take() else {
            return;
        };
        let pool = pooled.pool.clone();
        let expired = past(conn.created, pool.settings.lifetime, last_used);
        if expired || conn.tx_status != b'I' || !conn.read_buf.is_empty() {
            pool.close(conn);
            return; // dropping `pooled` passes its lease on
        }
        conn.last_used = last_used;
        pooled.leased = false;
        pool.release(Some(conn));
    }

    /// Ends a lease: it passes (with `conn`, if any) to the oldest waiter,
    /// unless a reload shrank the pool below the leases outstanding; a
    /// connection nobody takes goes idle.
    fn release(&self, conn: Option<Box<ServerConn>>) {
        let mut slots = self.slots.lock();
        let conn = if slots.leased <= self.size() as usize {
            match slots.hand_over(conn) {
                Ok(()) => return,
                Err(conn) => conn,
            }
        } else {
            conn
        };
        slots.leased -= 1;
        if let Some(conn) = conn {
            slots.idle.push(conn);
        }
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
        let s = &self.settings;
        let now = Instant::now();
        if past(conn.created, s.lifetime, now) || past(conn.last_used, s.idle_timeout, now) {
            return false;
        }
        // A server that closed (or said anything) while idle is dead to us: a
        // non-blocking read must find nothing to read.
        conn.stream.is_idle_and_open()
    }

    fn close(&self, conn: Box<ServerConn>) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        tokio::spawn((*conn).terminate());
    }

    /// Closes idle connections past their idle timeout or lifetime and opens
    /// connections up to `min_size`. Called periodically by the maintenance task.
    pub async fn maintain(self: &Arc<Self>) {
        let expired: Vec<Box<ServerConn>> = {
            let mut slots = self.slots.lock();
            let (keep, expired): (Vec<_>, Vec<_>) =
                slots.idle.drain(..).partition(|c| self.is_reusable(c));
            slots.idle = keep;
            expired
        };
        for conn in expired {
            self.close(conn);
        }
        // A pool that shrank closes its extra idle connections.
        let excess: Vec<Box<ServerConn>> = {
            let mut slots = self.slots.lock();
            let open = self.open.load(Ordering::Relaxed);
            let extra = open
                .saturating_sub(self.size() as usize)
                .min(slots.idle.len());
            slots.idle.drain(..extra).collect()
        };
        for conn in excess {
            self.close(conn);
        }
        let min = self.settings.min_size.min(self.size()) as usize;
        while self.open.load(Ordering::Relaxed) < min {
            match self.connect().await {
                Ok(mut conn) => {
                    conn.last_used = Instant::now();
                    self.slots.lock().idle.push(conn);
                }
                Err(e) => {
                    tracing::warn!(pool = %self.name, error = %e, "could not open a min_pool_size connection");
                    break;
                }
            }
        }
    }

    /// Settings other than the size (see [`PoolSettings::without_size`]).
    pub fn settings_except_size(&self) -> PoolSettings {
        self.settings.without_size()
    }

    pub fn size(&self) -> u32 {
        self.size.load(Ordering::Relaxed)
    }

    /// Changes the pool's size in place (reload). Added capacity goes to
    /// waiting clients at once; removed capacity is taken back as
    /// checked-out connections return (see [`Pool::release`]).
    pub fn resize(&self, new_size: u32) {
        self.size.store(new_size, Ordering::Relaxed);
        let mut slots = self.slots.lock();
        while slots.leased < new_size as usize && !slots.waiters.is_empty() {
            slots.leased += 1;
            if slots.hand_over(None).is_err() {
                slots.leased -= 1;
            }
        }
    }

    /// (backend pid, connected at, last used, tls) of each idle connection.
    pub fn idle_snapshot(&self) -> Vec<(i32, std::time::SystemTime, std::time::SystemTime, bool)> {
        let now_sys = std::time::SystemTime::now();
        let now = Instant::now();
        self.slots
            .lock()
            .idle
            .iter()
            .map(|c| {
                (
                    c.backend_pid,
                    now_sys - (now - c.created),
                    now_sys - (now - c.last_used),
                    c.stream.is_tls(),
                )
            })
            .collect()
    }

    /// Connections checked out now.
    pub fn checked_out(&self) -> usize {
        self.slots.lock().leased
    }

    /// How long the longest-waiting client has waited.
    pub fn max_wait(&self) -> Duration {
        let slots = self.slots.lock();
        slots
            .waiters
            .front()
            .map(|w| w.since.elapsed())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> PoolStats {
        let slots = self.slots.lock();
        let open = self.open.load(Ordering::Relaxed);
        PoolStats {
            idle: slots.idle.len(),
            active: open.saturating_sub(slots.idle.len()),
            waiting: slots.waiters.len(),
        }
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) {
        let drained: Vec<Box<ServerConn>> = self.slots.lock().idle.drain(..).collect();
        for conn in drained {
            self.close(conn);
        }
    }
}

/// Whether `limit` has run out at `now` since `since`; a zero limit never does.
fn past(since: Instant, limit: Duration, now: Instant) -> bool {
    !limit.is_zero() && now.saturating_duration_since(since) >= limit
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
            self.pool.open.fetch_sub(1, Ordering::Relaxed);
            drop(conn);
        }
        if self.leased {
            self.pool.release(None);
        }
    }
}

/// A client in a pool's queue. Dropped before its grant arrives (its
/// session's task ended), it leaves the queue, and a grant that did arrive
/// meanwhile is passed on, so no lease is lost.
struct WaitingClient<'a> {
    pool: &'a Arc<Pool>,
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
        if self.pool.slots.lock().remove_waiter(self.id) {
            return;
        }
        rx.close();
        match rx.try_recv() {
            Ok(Grant::Conn(conn)) => self.pool.release(Some(conn)),
            Ok(Grant::Open) => self.pool.release(None),
            Err(_) => {}
        }
    }
}
