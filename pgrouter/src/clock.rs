//! Monotonic time as one integer of nanoseconds, for the timestamps the
//! relay path takes and compares on every transaction.
//!
//! Why not `std::time::Instant`: it is a (seconds, nanoseconds) pair, and
//! each subtraction or comparison of two normalises the pair (~37
//! instructions, about five per `-S` transaction: a connection's age and
//! idle time at checkout, its age at checkin, the query and transaction
//! durations). A [`Tick`] is read from the same clock (`CLOCK_MONOTONIC`)
//! and is subtracted in one instruction. Deadlines handed to
//! [`crate::timer`] are converted with [`Tick::instant`].

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in monotonic time, in nanoseconds since an unspecified start
/// (the system's boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(u64);

impl Tick {
    /// Now, read from `CLOCK_MONOTONIC` (through the vDSO: no system call).
    #[inline]
    pub fn now() -> Tick {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is
        // always available on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Tick((ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64)
    }

    /// The time from `earlier` to `self` (zero if `earlier` is later).
    #[inline]
    pub fn since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// The time from `self` to now.
    pub fn elapsed(self) -> Duration {
        Tick::now().since(self)
    }

    /// Whether `limit` (zero: no limit) has passed from `self` to `now`.
    #[inline]
    pub fn past(self, limit: Duration, now: Tick) -> bool {
        !limit.is_zero() && u128::from(now.0.saturating_sub(self.0)) >= limit.as_nanos()
    }

    /// `self + d`, saturating (a deadline that far out never comes).
    pub fn plus(self, d: Duration) -> Tick {
        Tick(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// The same point as an `Instant` (for a deadline of
    /// [`crate::timer`]): both come from `CLOCK_MONOTONIC`, so one pair of
    /// readings taken together relates them, to within the time between
    /// the two reads.
    pub fn instant(self) -> Instant {
        static ANCHOR: OnceLock<(Instant, Tick)> = OnceLock::new();
        let (instant, tick) = *ANCHOR.get_or_init(|| (Instant::now(), Tick::now()));
        if self >= tick {
            crate::timer::after_instant(instant, self.since(tick))
        } else {
            instant.checked_sub(tick.since(self)).unwrap_or(instant)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_instant_clock() {
        let (i0, t0) = (Instant::now(), Tick::now());
        std::thread::sleep(Duration::from_millis(5));
        let (i1, t1) = (Instant::now(), Tick::now());
        let by_ticks = t1.since(t0).as_micros() as i128;
        let by_instants = i1.duration_since(i0).as_micros() as i128;
        assert!(
            (by_ticks - by_instants).abs() < 1_000,
            "{by_ticks} vs {by_instants}"
        );
        assert!(t1 > t0);
        assert_eq!(t0.since(t1), Duration::ZERO);
    }

    #[test]
    fn past_counts_a_zero_limit_as_none() {
        let t = Tick(1_000);
        assert!(!t.past(Duration::ZERO, Tick(u64::MAX)));
        assert!(t.past(Duration::from_nanos(500), Tick(1_500)));
        assert!(!t.past(Duration::from_nanos(501), Tick(1_500)));
        assert!(!t.past(Duration::MAX, Tick(u64::MAX)));
    }

    #[test]
    fn instant_of_a_tick_matches_the_clock() {
        let later = Tick::now().plus(Duration::from_secs(10));
        let got = later.instant().saturating_duration_since(Instant::now());
        assert!(
            got > Duration::from_millis(9_900) && got <= Duration::from_secs(10),
            "{got:?}"
        );
        assert!(Tick::now().plus(Duration::MAX) > later);
    }
}
