use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// One server address as one user. Checkouts are bounded by a fair (FIFO)
/// semaphore of `size` permits, so a waiting client is served in arrival order
/// and an idle connection is never handed to two clients.
pub struct Pool {
    /// "user@database/shard/host:port", for logs.
    pub name: String,
    pub target: ServerTarget,
    pub settings: PoolSettings,
    /// The size in force (a reload may change it in place).
    size: std::sync::atomic::AtomicU32,
    pub metrics: Arc<PoolMetrics>,
    pub labels: PoolLabels,
    /// When the longest-waiting client started waiting (for maxwait).
    oldest_wait: Mutex<Option<Instant>>,
    permits: Arc<Semaphore>,
    /// Idle connections; the most recently used last (LIFO keeps the rest
    /// idle long enough to be closed by the idle timeout).
    /// Boxed: a connection changes hands (pool, client, pool) every
    /// transaction, and moving a pointer is cheaper than moving the struct.
    idle: Mutex<Vec<Box<ServerConn>>>,
    open: AtomicUsize,
    waiting: AtomicUsize,
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
    _permit: OwnedSemaphorePermit,
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
            oldest_wait: Mutex::new(None),
            permits: Arc::new(Semaphore::new(settings.size as usize)),
            settings,
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            default_params: Mutex::new(None),
        })
    }

    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, PoolError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => {
                self.metrics.record_checkout_wait(Duration::ZERO);
                p
            }
            Err(_) => {
                let started = Instant::now();
                if self.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
                    *self.oldest_wait.lock() = Some(started);
                }
                let acquired = tokio::time::timeout(
                    self.settings.checkout_timeout,
                    self.permits.clone().acquire_owned(),
                )
                .await;
                if self.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
                    *self.oldest_wait.lock() = None;
                }
                self.metrics.record_checkout_wait(started.elapsed());
                match acquired {
                    Ok(Ok(p)) => p,
                    _ => return Err(PoolError::CheckoutTimeout),
                }
            }
        };
        while let Some(conn) = self.take_idle() {
            if self.is_reusable(&conn) {
                return Ok(PooledConn {
                    conn: Some(conn),
                    pool: self.clone(),
                    _permit: permit,
                });
            }
            self.close(conn);
        }
        let conn = self.connect().await?;
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
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
        if conn.tx_status != b'I' || !conn.read_buf.is_empty() {
            pool.close(conn);
            return;
        }
        conn.last_used = last_used;
        pool.idle.lock().push(conn);
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

    fn take_idle(&self) -> Option<Box<ServerConn>> {
        self.idle.lock().pop()
    }

    fn is_reusable(&self, conn: &ServerConn) -> bool {
        let s = &self.settings;
        let now = Instant::now();
        // A zero limit means never.
        let past = |since: Instant, limit: Duration| {
            !limit.is_zero() && now.saturating_duration_since(since) >= limit
        };
        if past(conn.created, s.lifetime) || past(conn.last_used, s.idle_timeout) {
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
            let mut idle = self.idle.lock();
            let (keep, expired): (Vec<_>, Vec<_>) =
                idle.drain(..).partition(|c| self.is_reusable(c));
            *idle = keep;
            expired
        };
        for conn in expired {
            self.close(conn);
        }
        // A pool that shrank closes its extra idle connections.
        let excess: Vec<Box<ServerConn>> = {
            let mut idle = self.idle.lock();
            let open = self.open.load(Ordering::Relaxed);
            let extra = open.saturating_sub(self.size() as usize).min(idle.len());
            idle.drain(..extra).collect()
        };
        for conn in excess {
            self.close(conn);
        }
        let min = self.settings.min_size.min(self.size()) as usize;
        while self.open.load(Ordering::Relaxed) < min {
            match self.connect().await {
                Ok(mut conn) => {
                    conn.last_used = Instant::now();
                    self.idle.lock().push(conn);
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

    /// Changes the pool's size in place (reload): more permits at once, or
    /// fewer as checked-out connections come back.
    pub fn resize(self: &Arc<Self>, new_size: u32) {
        let old = self.size.swap(new_size, Ordering::Relaxed);
        if new_size > old {
            self.permits.add_permits((new_size - old) as usize);
        } else if new_size < old {
            let permits = self.permits.clone();
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(old - new_size).await {
                    p.forget();
                }
            });
        }
    }

    /// (backend pid, connected at, last used, tls) of each idle connection.
    pub fn idle_snapshot(&self) -> Vec<(i32, std::time::SystemTime, std::time::SystemTime, bool)> {
        let now_sys = std::time::SystemTime::now();
        let now = Instant::now();
        self.idle
            .lock()
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
        (self.size() as usize).saturating_sub(self.permits.available_permits())
    }

    /// How long the longest-waiting client has waited.
    pub fn max_wait(&self) -> Duration {
        self.oldest_wait
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> PoolStats {
        let idle = self.idle.lock().len();
        let open = self.open.load(Ordering::Relaxed);
        PoolStats {
            idle,
            active: open.saturating_sub(idle),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Closes every idle connection (shutdown).
    pub fn close_idle(&self) {
        let drained: Vec<Box<ServerConn>> = self.idle.lock().drain(..).collect();
        for conn in drained {
            self.close(conn);
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub idle: usize,
    pub active: usize,
    pub waiting: usize,
}

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("a PooledConn holds its connection until checkin or drop")
    }
}

impl std::ops::DerefMut for PooledConn {
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
    }
}
