//! Sleeps and timeouts served by one timer thread, so that the runtimes
//! that relay clients' messages run without tokio's time driver.
//!
//! Why: with the time driver enabled, every park of a runtime (about
//! seven per TPC-B transaction) locks the driver, reads the clock and
//! polls its timer wheel, even though the default configuration sets no
//! timer on the relay path: about 5 % of the instructions of a TPC-B
//! transaction (`bench/README.md`, session 39). The router's timers are
//! few and mostly cancelled before they fire (login deadlines, checkout
//! and connect timeouts, the maintenance tick), so they live here instead:
//! in one ordered map under a lock, watched by a thread that sleeps until
//! the earliest deadline and wakes the tasks whose deadline passed.
//!
//! Setting a timer costs a lock and a map insertion; the thread is woken
//! only when the new deadline is earlier than the one it sleeps until,
//! which deadlines a fixed timeout past "now" seldom are. Cancelling (a
//! dropped [`Sleep`]) removes the entry and never wakes the thread.
//!
//! The API mirrors the part of `tokio::time` the router uses, with
//! `std::time::Instant` deadlines, and works on any runtime (tests run
//! with tokio's own).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The timers, ordered by deadline (then by a sequence number, so that
/// equal deadlines are distinct keys), and the deadline the timer thread
/// sleeps until (None: it waits for a first timer).
struct Timers {
    waiting: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
    thread_wakes_at: Option<Instant>,
}

struct Wheel {
    timers: Mutex<Timers>,
    changed: Condvar,
}

fn wheel() -> &'static Wheel {
    static WHEEL: OnceLock<&'static Wheel> = OnceLock::new();
    WHEEL.get_or_init(|| {
        let wheel: &'static Wheel = Box::leak(Box::new(Wheel {
            timers: Mutex::new(Timers {
                waiting: BTreeMap::new(),
                next_id: 0,
                thread_wakes_at: None,
            }),
            changed: Condvar::new(),
        }));
        // Without its thread no timer would ever fire: that is not a state
        // the router can run in.
        std::thread::Builder::new()
            .name("pgrouter-timer".into())
            .spawn(move || wheel.run())
            .expect("cannot start the timer thread");
        wheel
    })
}

impl Wheel {
    fn lock(&self) -> MutexGuard<'_, Timers> {
        // A panic while the lock was held leaves the map consistent (each
        // change is one insertion or removal).
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The timer thread: wakes the tasks whose deadline passed, then
    /// sleeps until the next deadline or until an earlier one is set.
    fn run(&self) {
        let mut timers = self.lock();
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = timers.waiting.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            if !due.is_empty() {
                drop(timers);
                due.into_iter().for_each(Waker::wake);
                timers = self.lock();
                continue;
            }
            let next = timers.waiting.first_key_value().map(|(k, _)| k.0);
            timers.thread_wakes_at = next;
            timers = match next {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(timers, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(timers).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    fn insert(&self, at: Instant, waker: Waker) -> (Instant, u64) {
        let mut timers = self.lock();
        let key = (at, timers.next_id);
        timers.next_id += 1;
        timers.waiting.insert(key, waker);
        if timers.thread_wakes_at.is_none_or(|t| at < t) {
            // The thread would sleep past this deadline.
            timers.thread_wakes_at = Some(at);
            self.changed.notify_one();
        }
        key
    }

    /// Replaces the waker of a timer still waiting; false when it fired.
    fn rewake(&self, key: (Instant, u64), waker: &Waker) -> bool {
        match self.lock().waiting.get_mut(&key) {
            Some(w) => {
                w.clone_from(waker);
                true
            }
            None => false,
        }
    }

    fn remove(&self, key: (Instant, u64)) {
        self.lock().waiting.remove(&key);
    }
}

/// A future that completes at its deadline (see [`sleep_until`]).
#[must_use = "a Sleep does nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    /// Its entry in the wheel and the waker given there, once polled.
    armed: Option<((Instant, u64), Waker)>,
}

/// Completes at `deadline` (at once when it has passed).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        armed: None,
    }
}

/// Completes after `duration` (a duration too long to add to now is a
/// century: as good as never).
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(after(duration))
}

/// `now + duration`, or a century from now when that does not fit.
pub fn after(duration: Duration) -> Instant {
    after_instant(Instant::now(), duration)
}

/// `start + duration`, or a century after `start` when that does not fit.
pub fn after_instant(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(start)
}

impl Sleep {
    /// When it completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            if let Some((key, _)) = this.armed.take() {
                wheel().remove(key);
            }
            return Poll::Ready(());
        }
        match &mut this.armed {
            None => {
                let key = wheel().insert(this.deadline, cx.waker().clone());
                this.armed = Some((key, cx.waker().clone()));
            }
            Some((key, given)) if !given.will_wake(cx.waker()) => {
                if !wheel().rewake(*key, cx.waker()) {
                    // Fired between the clock read above and now.
                    this.armed = None;
                    return Poll::Ready(());
                }
                given.clone_from(cx.waker());
            }
            Some(_) => {}
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((key, _)) = self.armed.take() {
            wheel().remove(key);
        }
    }
}

/// A future's time ran out (see [`timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// `future`, unless `sleep` completes first (see [`timeout`]).
    #[must_use = "a Timeout does nothing unless awaited"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        Pin::new(this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

/// Runs `future` until `deadline`: its output, or [`Elapsed`].
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep_until(deadline),
    }
}

/// Runs `future` for at most `duration`: its output, or [`Elapsed`].
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    timeout_at(after(duration), future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_waits_until_its_deadline() {
        let start = Instant::now();
        sleep(Duration::from_millis(30)).await;
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_later_timer_set_first_does_not_delay_an_earlier_one() {
        let long = tokio::spawn(sleep(Duration::from_secs(30)));
        tokio::task::yield_now().await;
        let start = Instant::now();
        sleep(Duration::from_millis(20)).await;
        assert!(start.elapsed() < Duration::from_secs(5));
        long.abort();
    }

    #[tokio::test]
    async fn timeout_gives_the_output_or_elapsed() {
        assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
        let never = std::future::pending::<()>();
        let start = Instant::now();
        assert_eq!(
            timeout(Duration::from_millis(20), never).await,
            Err(Elapsed)
        );
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_dropped_timer_leaves_the_wheel() {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut s = Box::pin(sleep_until(deadline));
        assert!(futures_poll_once(s.as_mut()).is_pending());
        let key = s.armed.as_ref().map(|(k, _)| *k).unwrap();
        assert!(wheel().lock().waiting.contains_key(&key));
        drop(s);
        assert!(!wheel().lock().waiting.contains_key(&key));
    }

    #[test]
    fn timers_fire_without_any_runtime_driver() {
        // A runtime without the time driver, as the router's are.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Instant::now();
            let got = timeout(Duration::from_millis(20), std::future::pending::<()>()).await;
            assert_eq!(got, Err(Elapsed));
            assert!(start.elapsed() >= Duration::from_millis(20));
        });
    }

    #[test]
    fn a_huge_duration_is_far_in_the_future() {
        assert!(after(Duration::MAX) > Instant::now() + Duration::from_secs(3600));
    }

    fn futures_poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        f.poll(&mut cx)
    }
}
