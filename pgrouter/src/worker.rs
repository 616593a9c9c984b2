//! Worker threads, one event loop each.
//!
//! With `workers = N` (N > 1), N threads each run a single-threaded tokio
//! runtime, and the accepting thread deals each new client to the worker
//! with the fewest clients (in turn when they have as many). Each
//! pool is split into one part per worker (see [`crate::pool::Pool`]), so a
//! client's server connections are registered with its own thread's event
//! loop. A message then goes from client to server and back without waking
//! any other thread. On a 2-core machine shared with PostgreSQL this got
//! about 1.2× the transactions per second of a single thread. Tokio's
//! work-stealing runtime, which hands sockets and tasks between threads,
//! got less than a single thread there.
//!
//! The accepting thread keeps everything that is not a client session:
//! accepting, health checks, pool maintenance, reloads, metrics.
//!
//! Not every worker takes clients: only the first [`active`] ones do. When
//! load is light one worker serves everyone, like PgBouncer's one process;
//! half-busy threads each sleep and wake more often than one busier thread
//! (measured: 9.5 context switches per TPC-B transaction over two workers,
//! 6.7 over one, and 5–11 % more CPU per transaction). As a worker gets
//! busy, clients are spread over one more (`worker_balance.rs` decides,
//! from the workers' CPU time); a client moves between its transactions
//! (see [`leave_for`]).

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

thread_local! {
    /// This thread's worker number; None on every other thread.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The workers, once started.
static WORKERS: OnceLock<Vec<Worker>> = OnceLock::new();
/// Where the search for the least busy worker starts: it moves on with
/// every client, so workers with as many clients take turns.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// How many workers (the first ones) take clients; set by
/// `worker_balance.rs`.
static ACTIVE: AtomicUsize = AtomicUsize::new(1);
/// Clients moved from one worker to another since the start (metrics).
static MOVES: AtomicU64 = AtomicU64::new(0);

struct Worker {
    runtime: Handle,
    /// Clients on this worker and not yet gone.
    clients: AtomicUsize,
    /// How many of its clients should move to another worker: each one
    /// that reaches a point where it can move takes one (see [`leave_for`]).
    shed: AtomicUsize,
    /// The share of a core its thread used in the balancer's last sample,
    /// in thousandths (metrics).
    busy_permille: AtomicU32,
    /// The thread's CPU-time clock, for how busy it is (None if the
    /// system gave none: the worker then looks idle and is never a reason
    /// to spread clients).
    cpu_clock: Option<libc::clockid_t>,
}

/// A client's place on a worker: counts it there until dropped (when the
/// client's session ends), and moves with it.
pub struct Seat(usize);

impl Seat {
    /// Counts the client on worker `to` from now on.
    pub fn relocate(&mut self, to: usize) {
        if let Some(workers) = WORKERS.get() {
            workers[to].clients.fetch_add(1, Ordering::Relaxed);
            workers[self.0].clients.fetch_sub(1, Ordering::Relaxed);
            MOVES.fetch_add(1, Ordering::Relaxed);
        }
        self.0 = to;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(worker) = WORKERS.get().and_then(|w| w.get(self.0)) {
            worker.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// How many parts a pool is split into: the number of workers (1 without
/// worker threads).
pub fn count() -> usize {
    WORKERS.get().map_or(1, Vec::len)
}

/// The worker running the current thread (0 outside the workers).
pub fn index() -> usize {
    current().unwrap_or(0)
}

/// The worker running the current thread; None outside the workers (the
/// accepting thread, or every thread without worker threads).
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// Starts `n` worker threads (`n` > 1), each with its own single-threaded
/// runtime, and returns once all of them run. The threads live as long as
/// the process.
pub fn start(n: usize) -> std::io::Result<()> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("pgrouter-worker-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(Some(i)));
                let cpu_clock = this_thread_cpu_clock();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = tx.send(Ok((runtime.handle().clone(), cpu_clock)));
                        runtime.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let (handle, cpu_clock) = rx
            .recv()
            .map_err(|_| std::io::Error::other("a worker thread ended at start"))??;
        handles.push(Worker {
            runtime: handle,
            clients: AtomicUsize::new(0),
            shed: AtomicUsize::new(0),
            busy_permille: AtomicU32::new(0),
            cpu_clock,
        });
    }
    WORKERS
        .set(handles)
        .map_err(|_| std::io::Error::other("workers already started"))
}

/// The worker that takes the next client: the active one with the fewest
/// clients, so that clients that left one worker more than another do not
/// leave it idle while the other is busy (its pool part lends only what it
/// does not need). None without worker threads (the client runs where it
/// was accepted). Called by the accepting thread only.
pub fn next() -> Option<(&'static Handle, Seat)> {
    let workers = WORKERS.get()?;
    let i = fewest_clients(workers, None)?;
    workers[i].clients.fetch_add(1, Ordering::Relaxed);
    Some((&workers[i].runtime, Seat(i)))
}

/// The active worker with the fewest clients, other than `not`; workers
/// with as many take turns.
fn fewest_clients(workers: &[Worker], not: Option<usize>) -> Option<usize> {
    let active = active().min(workers.len());
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    (0..active)
        .map(|k| (start + k) % active)
        .filter(|&i| Some(i) != not)
        .min_by_key(|&i| workers[i].clients.load(Ordering::Relaxed))
}

/// How many workers (the first ones) take clients (1 without worker
/// threads).
pub fn active() -> usize {
    WORKERS
        .get()
        .map_or(1, |w| ACTIVE.load(Ordering::Relaxed).clamp(1, w.len()))
}

/// Whether the current thread's worker is asked to shed clients: one
/// load, asked by every session between its transactions.
#[inline]
pub fn asked_to_shed() -> bool {
    match (current(), WORKERS.get()) {
        (Some(i), Some(workers)) => workers[i].shed.load(Ordering::Relaxed) > 0,
        _ => false,
    }
}

/// The worker a client of the current thread's worker should move to, if
/// this worker is to shed one more client: the active worker with the
/// fewest clients. Counts the client as shed (the caller moves it).
pub fn leave_for() -> Option<usize> {
    let (i, workers) = (current()?, WORKERS.get()?);
    let me = &workers[i];
    me.shed
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .ok()?;
    let to = fewest_clients(workers, Some(i));
    if to.is_none() {
        me.shed.fetch_add(1, Ordering::Relaxed);
    }
    to
}

/// One worker as the balancer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// CPU time its thread has used since the start.
    pub cpu: Duration,
    pub clients: usize,
}

/// Every worker's CPU time and clients (empty without worker threads).
pub fn loads() -> Vec<Load> {
    WORKERS.get().map_or_else(Vec::new, |workers| {
        workers
            .iter()
            .map(|w| Load {
                cpu: cpu_time(w.cpu_clock),
                clients: w.clients.load(Ordering::Relaxed),
            })
            .collect()
    })
}

/// Sets how many workers (the first ones) take clients.
pub fn set_active(active: usize) {
    ACTIVE.store(active.max(1), Ordering::Relaxed);
}

/// Sets how many clients each worker should shed (see
/// `worker_balance.rs`).
pub fn set_shed(shed: &[usize]) {
    if let Some(workers) = WORKERS.get() {
        for (w, &n) in workers.iter().zip(shed) {
            w.shed.store(n, Ordering::Relaxed);
        }
    }
}

/// Records each worker's share of a core in the balancer's last sample.
pub fn set_busy(busy: &[f64]) {
    if let Some(workers) = WORKERS.get() {
        for (w, &b) in workers.iter().zip(busy) {
            w.busy_permille.store(
                (b * 1000.0).round().clamp(0.0, 1e6) as u32,
                Ordering::Relaxed,
            );
        }
    }
}

/// Each worker's clients now and share of a core in the balancer's last
/// sample (empty without worker threads).
pub fn snapshot() -> Vec<(usize, f64)> {
    WORKERS.get().map_or_else(Vec::new, |workers| {
        workers
            .iter()
            .map(|w| {
                let busy = f64::from(w.busy_permille.load(Ordering::Relaxed)) / 1000.0;
                (w.clients.load(Ordering::Relaxed), busy)
            })
            .collect()
    })
}

/// Clients moved between workers since the start.
pub fn moves() -> u64 {
    MOVES.load(Ordering::Relaxed)
}

/// The calling thread's CPU-time clock, readable from other threads.
fn this_thread_cpu_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread, and
    // `clock` is a valid place for the answer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (rc == 0).then_some(clock)
}

/// CPU time on `clock` (zero if there is none or it cannot be read).
fn cpu_time(clock: Option<libc::clockid_t>) -> Duration {
    let Some(clock) = clock else {
        return Duration::ZERO;
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid place for the answer; the worker threads
    // live as long as the process, so their clocks stay valid.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Runs `future` on worker `i`, so that sockets it opens belong to that
/// worker's event loop; on the current runtime without worker threads.
pub fn spawn_on<F>(i: usize, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match WORKERS.get().and_then(|w| w.get(i)) {
        Some(worker) => worker.runtime.spawn(future),
        None => tokio::spawn(future),
    }
}
