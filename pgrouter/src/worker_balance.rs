//! How many workers take clients, decided from how busy they are.
//!
//! With several worker threads (`worker.rs`), one worker serves everyone
//! while it is not busy: on a machine whose cores the router shares with
//! PostgreSQL and the clients, two half-busy threads cost 5–11 % more CPU
//! per transaction than one (each sleeps and is woken more often), and
//! bought no more transactions per second (bench/README.md, session 42).
//! Once an active worker stays busier than `worker_spread_percent` of a
//! core, one more worker takes clients, and clients move to it between
//! their transactions until the active workers have as many each. When the
//! whole load would fit on one worker fewer at half that, the last active
//! worker sheds its clients and stops taking new ones.
//!
//! `worker_spread_percent = 0` spreads clients over every worker at once
//! (the placement before this module); 100 never spreads them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::State;
use crate::worker::Load;

/// How often the workers' CPU time is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Samples in a row an active worker must be that busy before another
/// worker is brought in (one second): a burst does not spread clients.
const SPREAD_AFTER: u32 = 4;
/// Samples in a row the load must fit on one worker fewer before one is
/// let go (two seconds).
const FOLD_AFTER: u32 = 8;

/// The balancer's memory between samples.
#[derive(Debug)]
pub struct Balance {
    /// Workers taking clients (the first ones).
    pub active: usize,
    /// Samples in a row that asked for one more worker.
    over: u32,
    /// Samples in a row that allowed one fewer.
    under: u32,
}

impl Balance {
    /// Where a router with `workers` workers starts: one worker, or all of
    /// them when clients are spread at once.
    pub fn new(workers: usize, spread_percent: u32) -> Balance {
        Balance {
            active: if spread_percent == 0 { workers } else { 1 },
            over: 0,
            under: 0,
        }
    }

    /// Takes one sample: `busy[i]` is the share of one core worker `i`
    /// used since the last sample. Returns the number of workers that
    /// should take clients from now on.
    pub fn sample(&mut self, busy: &[f64], spread_percent: u32) -> usize {
        let workers = busy.len().max(1);
        if spread_percent == 0 {
            self.active = workers;
            return self.active;
        }
        let spread = f64::from(spread_percent.min(100)) / 100.0;
        let active = self.active.min(workers);
        let busiest = busy[..active].iter().copied().fold(0.0, f64::max);
        let total: f64 = busy.iter().sum();
        let wants_more = spread_percent < 100 && active < workers && busiest >= spread;
        let fits_fewer = active > 1 && total < spread / 2.0 * (active - 1) as f64;
        self.over = if wants_more { self.over + 1 } else { 0 };
        self.under = if fits_fewer { self.under + 1 } else { 0 };
        if self.over >= SPREAD_AFTER {
            self.active = active + 1;
            (self.over, self.under) = (0, 0);
        } else if self.under >= FOLD_AFTER {
            self.active = active - 1;
            (self.over, self.under) = (0, 0);
        } else {
            self.active = active;
        }
        self.active
    }
}

/// How many clients each worker should shed so that the first `active`
/// workers have about as many each and the others none. A worker within
/// one client of its share keeps them all (no moves for nothing).
pub fn shed_counts(clients: &[usize], active: usize) -> Vec<usize> {
    let active = active.clamp(1, clients.len().max(1));
    let total: usize = clients.iter().sum();
    let share = total.div_ceil(active);
    clients
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            if i < active {
                n.saturating_sub(share)
            } else {
                n
            }
        })
        .collect()
}

/// The share of one core each worker used between two samples.
fn busy_between(before: &[Load], after: &[Load], elapsed: Duration) -> Vec<f64> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    before
        .iter()
        .zip(after)
        .map(|(b, a)| a.cpu.saturating_sub(b.cpu).as_secs_f64() / secs)
        .collect()
}

/// Samples the workers for as long as the router runs (with worker
/// threads only), applying what [`Balance`] decides: which workers take
/// new clients, which shed theirs, and how every pool is shared out among
/// the workers.
pub async fn run(state: Arc<State>) {
    let workers = crate::worker::count();
    if workers < 2 {
        return;
    }
    let percent = || state.rt().config.general.worker_spread_percent;
    let mut balance = Balance::new(workers, percent());
    apply(&state, balance.active, &crate::worker::loads());
    let (mut before, mut at) = (crate::worker::loads(), Instant::now());
    loop {
        crate::timer::sleep(SAMPLE_EVERY).await;
        if *state.shutdown.borrow() {
            return;
        }
        let (after, now) = (crate::worker::loads(), Instant::now());
        let busy = busy_between(&before, &after, now - at);
        crate::worker::set_busy(&busy);
        let was = balance.active;
        let active = balance.sample(&busy, percent());
        if active != was {
            tracing::info!(
                active,
                busy = ?busy.iter().map(|b| (b * 100.0).round() as u32).collect::<Vec<_>>(),
                "workers taking clients changed"
            );
        }
        apply(&state, active, &after);
        (before, at) = (after, now);
    }
}

/// Makes `active` workers take clients and shares every pool out among
/// them (only when the number changed), and asks workers with more than
/// their share of clients to shed some.
fn apply(state: &State, active: usize, loads: &[Load]) {
    if active != crate::worker::active() {
        crate::worker::set_active(active);
        for pool in state.rt().cluster.all_pools() {
            pool.reshare();
        }
    }
    let clients: Vec<usize> = loads.iter().map(|l| l.clients).collect();
    crate::worker::set_shed(&shed_counts(&clients, active));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_samples(balance: &mut Balance, busy: &[f64], n: u32, percent: u32) -> usize {
        (0..n)
            .map(|_| balance.sample(busy, percent))
            .last()
            .unwrap_or(balance.active)
    }

    #[test]
    fn starts_on_one_worker_or_on_all_when_spreading_at_once() {
        assert_eq!(Balance::new(4, 70).active, 1);
        assert_eq!(Balance::new(4, 0).active, 4);
    }

    #[test]
    fn a_worker_busy_for_a_second_brings_in_another() {
        let mut b = Balance::new(2, 70);
        // Three busy samples are a burst.
        assert_eq!(run_samples(&mut b, &[0.9, 0.0], 3, 70), 1);
        assert_eq!(b.sample(&[0.2, 0.0], 70), 1);
        assert_eq!(run_samples(&mut b, &[0.9, 0.0], 3, 70), 1);
        assert_eq!(b.sample(&[0.9, 0.0], 70), 2);
        // No more than there are.
        assert_eq!(run_samples(&mut b, &[0.9, 0.9], 10, 70), 2);
    }

    #[test]
    fn the_last_worker_goes_once_the_load_fits_on_fewer_at_half_the_threshold() {
        let mut b = Balance::new(3, 70);
        b.active = 3;
        // 0.8 in all does not fit on two workers at 0.35 each (0.7).
        assert_eq!(run_samples(&mut b, &[0.3, 0.3, 0.2], 20, 70), 3);
        // 0.5 in all does, after two seconds.
        assert_eq!(run_samples(&mut b, &[0.2, 0.2, 0.1], 7, 70), 3);
        assert_eq!(b.sample(&[0.2, 0.2, 0.1], 70), 2);
        // Then 0.5 over two does not fit on one at 0.35.
        assert_eq!(run_samples(&mut b, &[0.3, 0.2, 0.0], 20, 70), 2);
        assert_eq!(run_samples(&mut b, &[0.1, 0.1, 0.0], 8, 70), 1);
    }

    #[test]
    fn what_is_brought_in_is_not_let_go_at_the_same_load() {
        // A worker at 0.75 spreads; the same load over two (with the
        // second thread's overhead) must not fold back.
        let mut b = Balance::new(2, 70);
        assert_eq!(run_samples(&mut b, &[0.75, 0.0], 4, 70), 2);
        assert_eq!(run_samples(&mut b, &[0.42, 0.40], 40, 70), 2);
    }

    #[test]
    fn zero_spreads_at_once_and_a_hundred_never_spreads() {
        let mut b = Balance::new(3, 70);
        assert_eq!(b.sample(&[0.0, 0.0, 0.0], 0), 3);
        // 100: folds back as the load allows, never spreads again.
        // 0.9 fits on two workers at half a core each.
        assert_eq!(run_samples(&mut b, &[0.9, 0.0, 0.0], 8, 100), 2);
        assert_eq!(run_samples(&mut b, &[0.9, 0.0, 0.0], 30, 100), 2);
        assert_eq!(run_samples(&mut b, &[0.3, 0.0, 0.0], 8, 100), 1);
        assert_eq!(run_samples(&mut b, &[1.0, 0.0, 0.0], 30, 100), 1);
    }

    #[test]
    fn clients_are_shed_down_to_an_even_share_of_the_active_workers() {
        assert_eq!(shed_counts(&[10, 0], 2), vec![5, 0]);
        assert_eq!(shed_counts(&[11, 0], 2), vec![5, 0]);
        assert_eq!(shed_counts(&[5, 6], 1), vec![0, 6]);
        assert_eq!(shed_counts(&[6, 5], 2), vec![0, 0]);
        assert_eq!(shed_counts(&[0, 0, 9], 2), vec![0, 0, 9]);
        assert_eq!(shed_counts(&[], 1), Vec::<usize>::new());
    }

    #[test]
    fn busy_is_cpu_time_over_elapsed_time() {
        let at = |ms| Load {
            cpu: Duration::from_millis(ms),
            clients: 0,
        };
        let busy = busy_between(
            &[at(100), at(0)],
            &[at(300), at(50)],
            Duration::from_millis(400),
        );
        assert_eq!(busy, vec![0.5, 0.125]);
    }
}
