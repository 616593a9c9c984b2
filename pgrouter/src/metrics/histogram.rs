//! A latency histogram cheap enough for every query: an hdrhistogram split
//! into a few shards, each behind its own mutex and on cache lines of its
//! own (with its sum and its count of the fastest values), so that worker
//! threads recording into the same pool neither meet nor share a line
//! (see `striped.rs`). A scrape merges the shards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::striped::{stripes_for_this_machine, thread_stripe, Padded};

/// Largest value kept exactly: one hour, in microseconds. Longer values are
/// recorded as one hour (they still land in the `+Inf` bucket).
const HIGHEST_US: u64 = 3_600_000_000;
/// Two significant figures: a value is off by under 1%; ~26 KiB per shard.
const SIGFIG: u8 = 2;

/// Prometheus bucket upper bounds: the `le` label text and the bound in µs.
pub const BUCKETS: &[(&str, u64)] = &[
    ("0.0001", 100),
    ("0.00025", 250),
    ("0.0005", 500),
    ("0.001", 1_000),
    ("0.0025", 2_500),
    ("0.005", 5_000),
    ("0.01", 10_000),
    ("0.025", 25_000),
    ("0.05", 50_000),
    ("0.1", 100_000),
    ("0.25", 250_000),
    ("0.5", 500_000),
    ("1", 1_000_000),
    ("2.5", 2_500_000),
    ("5", 5_000_000),
    ("10", 10_000_000),
    ("30", 30_000_000),
    ("60", 60_000_000),
];

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).expect("static histogram bounds are valid")
}

pub struct ShardedHistogram {
    shards: Box<[Padded<Shard>]>,
}

#[derive(Default)]
struct Shard {
    /// Allocated on first use, so a pool that never serves costs nothing.
    histogram: Mutex<Option<Histogram<u64>>>,
    /// Exact sum of the recorded values in µs (hdrhistogram keeps no sum).
    sum_us: AtomicU64,
    /// Values of at most 1 µs (recorded as 1 µs), counted apart: a
    /// checkout that found a connection free waits 0, and is most
    /// checkouts; an atomic add is a fraction of a histogram's record.
    lowest: AtomicU64,
}

/// A merged, point-in-time copy.
pub struct HistogramSnapshot {
    /// Cumulative counts per [`BUCKETS`] entry.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_us: u64,
    merged: Option<Histogram<u64>>,
}

impl ShardedHistogram {
    pub fn new(shards: usize) -> ShardedHistogram {
        let shards = shards.clamp(1, 64);
        ShardedHistogram {
            shards: (0..shards).map(|_| Padded::default()).collect(),
        }
    }

    /// One shard per core, at most 8.
    pub fn for_this_machine() -> ShardedHistogram {
        ShardedHistogram::new(stripes_for_this_machine())
    }

    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    pub fn record_us(&self, us: u64) {
        let n = self.shards.len();
        let home = thread_stripe(n);
        let own = &self.shards[home].0;
        own.sum_us.fetch_add(us, Ordering::Relaxed);
        if us <= 1 {
            own.lowest.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Our own shard first; if another thread holds it, any free one.
        for k in 0..n {
            if let Some(mut shard) = self.shards[(home + k) % n].0.histogram.try_lock() {
                shard
                    .get_or_insert_with(new_histogram)
                    .saturating_record(us.clamp(1, HIGHEST_US));
                return;
            }
        }
        own.histogram
            .lock()
            .get_or_insert_with(new_histogram)
            .saturating_record(us.clamp(1, HIGHEST_US));
    }

    /// Merges the shards. Values below 1 µs are counted as 1 µs.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut merged: Option<Histogram<u64>> = None;
        let (mut lowest, mut sum_us) = (0u64, 0u64);
        for Padded(shard) in self.shards.iter() {
            lowest = lowest.wrapping_add(shard.lowest.load(Ordering::Relaxed));
            sum_us = sum_us.wrapping_add(shard.sum_us.load(Ordering::Relaxed));
            let guard = shard.histogram.lock();
            if let Some(h) = guard.as_ref() {
                match merged.as_mut() {
                    Some(m) => {
                        let _ = m.add(h);
                    }
                    None => merged = Some(h.clone()),
                }
            }
        }
        if lowest > 0 {
            let _ = merged.get_or_insert_with(new_histogram).record_n(1, lowest);
        }
        HistogramSnapshot::from_merged(merged, sum_us)
    }
}

impl HistogramSnapshot {
    fn from_merged(merged: Option<Histogram<u64>>, sum_us: u64) -> HistogramSnapshot {
        let mut buckets = vec![0u64; BUCKETS.len()];
        let mut count = 0;
        if let Some(h) = merged.as_ref() {
            count = h.len();
            for v in h.iter_recorded() {
                // Values the histogram cannot tell apart are placed by the
                // lowest of them, so a bound is never undercounted.
                let value = h.lowest_equivalent(v.value_iterated_to());
                let first = BUCKETS.partition_point(|&(_, bound)| bound < value);
                if let Some(b) = buckets.get_mut(first) {
                    *b += v.count_at_value();
                }
            }
            for i in 1..buckets.len() {
                buckets[i] += buckets[i - 1];
            }
        }
        HistogramSnapshot {
            buckets,
            count,
            sum_us,
            merged,
        }
    }

    /// Merges several snapshots (one database's pools).
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a HistogramSnapshot>) -> HistogramSnapshot {
        let mut merged: Option<Histogram<u64>> = None;
        let mut sum_us = 0u64;
        for p in parts {
            sum_us = sum_us.saturating_add(p.sum_us);
            if let Some(h) = p.merged.as_ref() {
                match merged.as_mut() {
                    Some(m) => {
                        let _ = m.add(h);
                    }
                    None => merged = Some(h.clone()),
                }
            }
        }
        HistogramSnapshot::from_merged(merged, sum_us)
    }

    /// The value at quantile `q` (0..=1) in µs; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        match self.merged.as_ref() {
            Some(h) if !h.is_empty() => h.value_at_quantile(q),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_matches() {
        let h = ShardedHistogram::new(3);
        for us in [50, 100, 101, 900, 1_000, 2_000, 70_000_000, 10_000_000_000] {
            h.record_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 8);
        assert_eq!(
            s.sum_us,
            50 + 100 + 101 + 900 + 1_000 + 2_000 + 70_000_000 + 10_000_000_000
        );
        // le=0.0001 holds 50 and 100; le=0.00025 adds 101.
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 3);
        assert_eq!(s.buckets[3], 5); // le=0.001
        assert_eq!(s.buckets[4], 6); // le=0.0025
        assert_eq!(*s.buckets.last().unwrap(), 6); // the two above 60 s only in +Inf
        assert!(s.buckets.windows(2).all(|w| w[0] <= w[1]));
        let p50 = s.quantile_us(0.5);
        assert!((900..=1_010).contains(&p50), "{p50}");
    }

    #[test]
    fn lowest_values_counted_apart_show_in_buckets_and_quantiles() {
        let h = ShardedHistogram::new(2);
        for _ in 0..90 {
            h.record_us(0);
        }
        h.record_us(1);
        for _ in 0..9 {
            h.record_us(5_000);
        }
        let s = h.snapshot();
        assert_eq!((s.count, s.sum_us), (100, 1 + 9 * 5_000));
        assert_eq!(s.buckets[0], 91); // le=0.0001
        assert_eq!(s.buckets[5], 100); // le=0.005
        assert_eq!(s.quantile_us(0.5), 1);
        assert!((4_950..=5_050).contains(&s.quantile_us(0.99)));
        // Taken twice, the count is the same (the snapshot adds, never moves).
        assert_eq!(h.snapshot().count, 100);
    }

    #[test]
    fn empty_and_merged_snapshots() {
        let a = ShardedHistogram::new(1);
        let b = ShardedHistogram::new(2);
        let empty = a.snapshot();
        assert_eq!(
            (empty.count, empty.sum_us, empty.quantile_us(0.99)),
            (0, 0, 0)
        );
        assert!(empty.buckets.iter().all(|&c| c == 0));
        b.record(Duration::from_millis(3));
        a.record(Duration::from_nanos(10)); // counted as 1 µs, sum gets 0
        let m = HistogramSnapshot::merge([&a.snapshot(), &b.snapshot()]);
        assert_eq!((m.count, m.sum_us), (2, 3_000));
        assert_eq!(m.buckets[0], 1);
        assert_eq!(m.buckets[5], 2); // le=0.005
    }

    #[test]
    fn threads_record_concurrently() {
        let h = std::sync::Arc::new(ShardedHistogram::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.record_us(i % 5_000 + 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.snapshot().count, 40_000);
    }
}
