//! Counters split per thread. Every query adds to its pool's counters; with
//! one shared atomic per counter the worker threads (`worker.rs`) take turns
//! owning its cache line, and each add waits for the line to move between
//! cores. Each thread adds to its own stripe (a cache line of its own) and
//! a scrape sums the stripes.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Hands each thread a stripe index once; the counter is a stripe picker,
/// not metric state.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    /// This thread's index (`UNSET` until first asked), and its stripe
    /// among the number of stripes last asked for. Every query's counters
    /// ask (a dozen times per TPC-B transaction), almost always with the
    /// same number: a `const` thread-local (no lazy set-up to check) and
    /// the remembered stripe spare a check and a division each time.
    static THREAD_STRIPE: Cell<(usize, usize, usize)> = const { Cell::new((UNSET, 0, 0)) };
}

const UNSET: usize = usize::MAX;

/// This thread's stripe among `n`.
#[inline]
pub fn thread_stripe(n: usize) -> usize {
    let n = n.max(1);
    THREAD_STRIPE.with(|cell| {
        let (index, last_n, stripe) = cell.get();
        if last_n == n {
            return stripe;
        }
        let index = if index == UNSET {
            NEXT_THREAD.fetch_add(1, Ordering::Relaxed)
        } else {
            index
        };
        let stripe = index % n;
        cell.set((index, n, stripe));
        stripe
    })
}

/// Stripes per counter set: one per core, at most 8.
pub fn stripes_for_this_machine() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
}

/// `T` alone on its cache lines (128 bytes: adjacent-line prefetching
/// pairs 64-byte lines on x86).
#[repr(align(128))]
#[derive(Default)]
pub struct Padded<T>(pub T);

/// One `T` per stripe.
pub struct Striped<T> {
    stripes: Box<[Padded<T>]>,
}

impl<T: Default> Striped<T> {
    pub fn new(stripes: usize) -> Striped<T> {
        Striped {
            stripes: (0..stripes.max(1)).map(|_| Padded::default()).collect(),
        }
    }

    pub fn for_this_machine() -> Striped<T> {
        Striped::new(stripes_for_this_machine())
    }
}

impl<T> Striped<T> {
    /// The calling thread's stripe.
    #[inline]
    pub fn mine(&self) -> &T {
        &self.stripes[thread_stripe(self.stripes.len())].0
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|p| &p.0)
    }

    /// The sum over the stripes of the counter `field` picks.
    pub fn sum(&self, field: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Two {
        a: AtomicU64,
        b: AtomicU64,
    }

    #[test]
    fn adds_from_several_threads_are_all_summed() {
        let s = std::sync::Arc::new(Striped::<Two>::new(3));
        let threads: Vec<_> = (0..5)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.mine().a.fetch_add(1, Ordering::Relaxed);
                        s.mine().b.fetch_add(2, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.sum(|t| &t.a), 5000);
        assert_eq!(s.sum(|t| &t.b), 10000);
        assert!(std::mem::align_of::<Padded<Two>>() >= 128);
    }
}
