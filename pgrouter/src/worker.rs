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

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

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

struct Worker {
    runtime: Handle,
    /// Clients dealt to this worker and not yet gone.
    clients: AtomicUsize,
}

/// A client's place on a worker: counts it there until dropped (when the
/// client's task ends).
pub struct Seat(usize);

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
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("a worker thread ended at start"))??;
        handles.push(Worker {
            runtime: handle,
            clients: AtomicUsize::new(0),
        });
    }
    WORKERS
        .set(handles)
        .map_err(|_| std::io::Error::other("workers already started"))
}

/// The worker that takes the next client: the one with the fewest clients,
/// so that clients that left one worker more than another do not leave it
/// idle while the other is busy (its pool part lends only what it does not
/// need). None without worker threads (the client runs where it was
/// accepted). Called by the accepting thread only.
pub fn next() -> Option<(&'static Handle, Seat)> {
    let workers = WORKERS.get()?;
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    let i = (0..workers.len())
        .map(|k| (start + k) % workers.len())
        .min_by_key(|&i| workers[i].clients.load(Ordering::Relaxed))?;
    workers[i].clients.fetch_add(1, Ordering::Relaxed);
    Some((&workers[i].runtime, Seat(i)))
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
