//! Request quotas with GCRA (the generic cell rate algorithm): one atomic "theoretical
//! arrival time" per (quota, caller), updated with compare-and-swap. No lock is shared
//! by all connections: the map is sharded and each cell is a single atomic.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;

/// The limit of one quota: `requests` per `period`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub requests: u64,
    pub period: Duration,
    pub burst: u64,
}

impl Limit {
    /// Nanoseconds between two requests at the sustained rate.
    fn emission_ns(&self) -> u64 {
        (self.period.as_nanos() / u128::from(self.requests.max(1))).max(1) as u64
    }

    fn capacity_ns(&self) -> u64 {
        self.emission_ns().saturating_mul(self.burst.max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u64,
    /// Until the budget is whole again (allowed), or until the next request may pass
    /// (denied).
    pub reset: Duration,
}

/// Identifies one budget: the quota rule (by a hash of its name and limit, so a
/// policy update that keeps the quota keeps its state) and the caller.
pub type CellKey = (u64, u64);

#[derive(Debug)]
pub struct QuotaStore {
    cells: DashMap<CellKey, AtomicU64>,
    epoch: Instant,
}

impl Default for QuotaStore {
    fn default() -> Self {
        Self {
            cells: DashMap::new(),
            epoch: Instant::now(),
        }
    }
}

impl QuotaStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Takes one request from the budget if it has room.
    pub fn check(&self, key: CellKey, limit: &Limit) -> Outcome {
        self.check_at(key, limit, self.now_ns())
    }

    fn check_at(&self, key: CellKey, limit: &Limit, now: u64) -> Outcome {
        let emission = limit.emission_ns();
        let capacity = limit.capacity_ns();
        if let Some(cell) = self.cells.get(&key) {
            return gcra(&cell, now, emission, capacity);
        }
        let cell = self.cells.entry(key).or_insert_with(|| AtomicU64::new(0));
        gcra(&cell, now, emission, capacity)
    }

    /// Forgets budgets that are whole again (equivalent to a fresh cell), so that
    /// callers who went away do not hold memory.
    pub fn sweep(&self) {
        let now = self.now_ns();
        self.cells
            .retain(|_, tat| tat.load(Ordering::Relaxed) > now);
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

fn gcra(cell: &AtomicU64, now: u64, emission: u64, capacity: u64) -> Outcome {
    let mut stored = cell.load(Ordering::Acquire);
    loop {
        let tat = stored.max(now);
        let next = tat.saturating_add(emission);
        if next - now > capacity {
            return Outcome {
                allowed: false,
                remaining: 0,
                reset: Duration::from_nanos(next - capacity - now),
            };
        }
        match cell.compare_exchange_weak(stored, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                return Outcome {
                    allowed: true,
                    remaining: (capacity - (next - now)) / emission,
                    reset: Duration::from_nanos(next - now),
                }
            }
            Err(current) => stored = current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        let store = QuotaStore::default();
        let limit = Limit {
            requests: 3,
            period: Duration::from_secs(1),
            burst: 3,
        };
        let key = (1, 1);
        let remaining: Vec<u64> = (0..3)
            .map(|_| store.check_at(key, &limit, 0))
            .map(|o| {
                assert!(o.allowed);
                o.remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let denied = store.check_at(key, &limit, 0);
        assert!(!denied.allowed);
        assert_eq!(denied.reset, Duration::from_nanos(SEC / 3));
        // One emission interval later exactly one more passes.
        assert!(store.check_at(key, &limit, SEC / 3).allowed);
        assert!(!store.check_at(key, &limit, SEC / 3).allowed);
        // After a full period the budget is whole again.
        let later = store.check_at(key, &limit, 3 * SEC);
        assert!(later.allowed);
        assert_eq!(later.remaining, 2);
    }

    #[test]
    fn callers_and_quotas_are_independent_and_sweep_forgets_whole_budgets() {
        let store = QuotaStore::default();
        let limit = Limit {
            requests: 1,
            period: Duration::from_secs(60),
            burst: 1,
        };
        assert!(store.check_at((1, 1), &limit, 0).allowed);
        assert!(!store.check_at((1, 1), &limit, 0).allowed);
        assert!(store.check_at((1, 2), &limit, 0).allowed);
        assert!(store.check_at((2, 1), &limit, 0).allowed);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn month_windows_do_not_overflow() {
        let store = QuotaStore::default();
        let limit = Limit {
            requests: 1_000_000,
            period: Duration::from_secs(30 * 24 * 3600),
            burst: 1_000_000,
        };
        let outcome = store.check_at((1, 1), &limit, u64::MAX / 4);
        assert!(outcome.allowed);
        assert_eq!(outcome.remaining, 999_999);
    }

    #[test]
    fn concurrent_callers_never_exceed_the_budget() {
        let store = Arc::new(QuotaStore::default());
        let limit = Limit {
            requests: 1000,
            period: Duration::from_secs(3600),
            burst: 1000,
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| store.check_at((7, 7), &limit, 5).allowed)
                        .count()
                })
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 1000);
    }
}
