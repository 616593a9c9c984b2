//! Worker threads, one event loop each.
//!
//! With `workers = N` (N > 1), N threads each run a single-threaded tokio
//! runtime, and the accepting thread deals clients out to them in turn. Each
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

/// The workers' runtimes, once started.
static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();
/// Which worker gets the next client.
static NEXT: AtomicUsize = AtomicUsize::new(0);

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
                    .enable_all()
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
        handles.push(handle);
    }
    WORKERS
        .set(handles)
        .map_err(|_| std::io::Error::other("workers already started"))
}

/// The worker that takes the next client, round-robin; None without
/// worker threads (the client runs where it was accepted).
pub fn next() -> Option<&'static Handle> {
    let workers = WORKERS.get()?;
    let i = NEXT.fetch_add(1, Ordering::Relaxed) % workers.len();
    workers.get(i)
}

/// Runs `future` on worker `i`, so that sockets it opens belong to that
/// worker's event loop; on the current runtime without worker threads.
pub fn spawn_on<F>(i: usize, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match WORKERS.get().and_then(|w| w.get(i)) {
        Some(handle) => handle.spawn(future),
        None => tokio::spawn(future),
    }
}
